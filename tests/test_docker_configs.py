"""docker/make_configs.py gives each node's container only its own province's folder."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from gateway.config.loading import load_federation, load_own
from tests.paths import CA_DIR, CONFIG_DIR, REPOSITORY

SCRIPT = REPOSITORY / "docker" / "make_configs.py"


def _provinces() -> dict[str, str]:
    """{name in lower case: code} of the shipped configs."""
    provinces = {}
    for path in sorted(CONFIG_DIR.glob("*/province.toml")):
        province = tomllib.loads(path.read_text(encoding="utf-8"))["province"]
        provinces[province["name"].lower()] = province["code"]
    return provinces


def _make(out: Path) -> subprocess.CompletedProcess[str]:
    # as the Dockerfile runs it, with the gateway installed: it loads each own file
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(CONFIG_DIR), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_each_node_folder_holds_only_its_own_province(tmp_path: Path) -> None:
    out = tmp_path / "nodes"
    result = _make(out)
    assert result.returncode == 0, result.stderr
    provinces = _provinces()
    assert len(provinces) >= 4
    assert sorted(p.name for p in out.iterdir()) == sorted(provinces)
    ca_key = (CA_DIR / "ca.key.pem").read_bytes()
    other_keys = {
        code: {p.read_bytes() for p in (CONFIG_DIR / code / "keys").glob("*.key.pem")}
        for code in provinces.values()
    }
    for name, code in provinces.items():
        root = out / name
        # one folder, the own province's: no peer's folder, no federation-ca
        assert [p.name for p in root.iterdir()] == [code]
        folder = root / code
        assert sorted(p.name for p in folder.iterdir()) == ["golden", "keys", "province.toml"]
        files = list(root.rglob("*"))
        assert not [p for p in files if p.is_symlink()], "copies, not links out of the folder"
        assert (folder / "keys" / "ca.crt.pem").read_bytes() == (CA_DIR / "ca.crt.pem").read_bytes()
        for path in (p for p in files if p.is_file()):
            content = path.read_bytes()
            assert content != ca_key, f"{path}: the CA's private key"
            for other, keys in other_keys.items():
                if other != code:
                    assert content not in keys, f"{path}: a private key of {other}"
            if path.suffix == ".toml":
                assert path == folder / "province.toml"
        own_keys = {p.read_bytes() for p in (folder / "keys").glob("*.key.pem")}
        assert own_keys == other_keys[code]
        golden = sorted(p.relative_to(folder) for p in (folder / "golden").rglob("*.json"))
        shipped = sorted(
            p.relative_to(CONFIG_DIR / code) for p in (CONFIG_DIR / code / "golden").rglob("*.json")
        )
        assert golden == shipped
        assert golden

        data = tomllib.loads((folder / "province.toml").read_text(encoding="utf-8"))
        assert data["province"]["code"] == code
        assert data["node"]["endpoint"].startswith("0.0.0.0:")
        assert data["node"]["federation_endpoint"].startswith("0.0.0.0:")
        assert data["node"]["store"] == "/var/lib/yrd"
        # Bound to every interface: its descriptor publishes the name peers reach.
        port = data["node"]["federation_endpoint"].rpartition(":")[2]
        assert data["node"]["published_endpoints"] == [f"yrd-node-{code}:{port}"]
        peers = data["peers"]
        assert sorted(p["code"] for p in peers) == sorted(set(provinces.values()) - {code})
        for peer in peers:
            host, _, port = peer["endpoint"].rpartition(":")
            assert host == f"yrd-node-{peer['code']}"
            assert port.isdigit()
        text = (folder / "province.toml").read_text(encoding="utf-8")
        assert "127.0.0.1" not in text
        assert "localhost" not in text
        assert f"sim-{name}" in text

        # the own file loads as `serve` loads it, from the folder alone
        own = load_own(folder / "province.toml")
        assert own.code == code
        assert {p.code for p in own.peers} == set(provinces.values()) - {code}
        assert own.tls is not None
        assert own.tls.ca == folder / "keys" / "ca.crt.pem"
        federation = load_federation(folder / "province.toml")
        assert federation.own == code
        assert set(federation.peer_codes) == set(provinces.values()) - {code}


def test_a_ca_private_key_in_a_province_folder_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "province_configs"
    shutil.copytree(CONFIG_DIR, source, ignore=shutil.ignore_patterns("var"))
    code = next(iter(_provinces().values()))
    (source / code / "keys" / "ca.key.pem").write_bytes((CA_DIR / "ca.key.pem").read_bytes())
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(source), str(tmp_path / "nodes")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "CA private key" in result.stderr
    assert "ca.key.pem" in result.stderr
