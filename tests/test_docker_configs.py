"""docker/make_configs.py gives each node's container only its own province's folder."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

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


# ------------------------------------------- compose.ha.yaml: Shanghai on PostgreSQL

COMPOSE_HA = REPOSITORY / "docker" / "compose.ha.yaml"


class _Yaml:
    """A reader of the YAML that the compose files are written in (PyYAML is not a
    dependency): block mappings and sequences, flow sequences (over several lines),
    ``{}``, plain and double-quoted scalars, ``>-`` block scalars, anchors, aliases
    and ``<<`` merge keys. Anything else is an error, not a guess."""

    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, str]] = []  # (indent, content) without comments
        self.anchors: dict[str, Any] = {}
        raw = text.splitlines()
        i = 0
        while i < len(raw):
            content = self._strip_comment(raw[i])
            i += 1
            if not content.strip():
                continue
            indent = len(content) - len(content.lstrip(" "))
            assert "\t" not in content[:indent], f"tab indentation: {content!r}"
            body = content.strip()
            while body.count("[") > body.count("]"):  # a flow sequence over several lines
                body += " " + self._strip_comment(raw[i]).strip()
                i += 1
            if body.endswith((">-", "|")):  # a block scalar: the more-indented lines
                block = []
                while i < len(raw) and (
                    not raw[i].strip() or len(raw[i]) - len(raw[i].lstrip(" ")) > indent
                ):
                    block.append(raw[i].strip())
                    i += 1
                joiner = " " if body.endswith(">-") else "\n"
                body = (
                    body[: body.rfind(">-" if joiner == " " else "|")]
                    + "\0"
                    + joiner.join(line for line in block if line)
                )
            self.lines.append((indent, body))
        self.pos = 0

    @staticmethod
    def _strip_comment(line: str) -> str:
        quoted = False
        for index, char in enumerate(line):
            if char == '"' and (index == 0 or line[index - 1] != "\\"):
                quoted = not quoted
            elif char == "#" and not quoted and (index == 0 or line[index - 1] in " \t"):
                return line[:index].rstrip()
        return line.rstrip()

    def parse(self) -> Any:
        value = self._block(self.lines[0][0])
        assert self.pos == len(self.lines), f"left over: {self.lines[self.pos]}"
        return value

    def _block(self, indent: int) -> Any:
        if self.lines[self.pos][1].startswith("- ") or self.lines[self.pos][1] == "-":
            return self._sequence(indent)
        return self._mapping(indent)

    def _sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while self.pos < len(self.lines):
            line_indent, body = self.lines[self.pos]
            if line_indent < indent:
                break
            assert line_indent == indent, f"bad indentation: {body!r}"
            assert body.startswith("-"), f"bad item: {body!r}"
            rest = body[1:].strip()
            self.pos += 1
            assert rest, "nested blocks in sequences are not used"
            assert not re.match(r"^[\w<.-]+:( |$)", rest), f"mapping in a sequence: {rest!r}"
            items.append(self._scalar_or_flow(rest))
        return items

    def _mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        while self.pos < len(self.lines):
            line_indent, body = self.lines[self.pos]
            if line_indent < indent:
                break
            assert line_indent == indent, f"bad indentation: {body!r}"
            match = re.match(r'^(?P<key>[\w<.${}:-]+?|"[^"]*"):(?: +(?P<rest>.*))?$', body)
            assert match, f"not a mapping entry: {body!r}"
            key = match["key"].strip('"')
            rest = (match["rest"] or "").strip()
            self.pos += 1
            anchor = None
            if rest.startswith("&"):
                anchor, _, rest = rest.partition(" ")
                anchor = anchor[1:]
            if rest:
                value = self._scalar_or_flow(rest)
            else:
                assert self.pos < len(self.lines), f"{key}: no value"
                value = self._block(self.lines[self.pos][0])
                assert self.lines[self.pos - 1][0] > indent or isinstance(value, list)
            if anchor:
                self.anchors[anchor] = value
            if key == "<<":
                assert isinstance(value, dict), "<< merges a mapping"
                merged.update(value)
            else:
                assert key not in result, f"duplicate key {key}"
                result[key] = value
        return {**merged, **result}

    def _scalar_or_flow(self, text: str) -> Any:
        if text.startswith("\0"):
            return text[1:]
        if text.startswith("*"):
            name = text[1:]
            assert name in self.anchors, f"unknown alias {name}"
            return self.anchors[name]
        if text == "{}":
            return {}
        if text.startswith("["):
            assert text.endswith("]"), f"flow sequence: {text!r}"
            inner = text[1:-1].strip()
            items = re.findall(r'"(?:[^"\\]|\\.)*"|[^,\s][^,]*', inner)
            return [self._scalar_or_flow(item.strip()) for item in items]
        if text.startswith('"'):
            assert len(text) > 1, f"quoted: {text!r}"
            assert text.endswith('"'), f"quoted: {text!r}"
            return json.loads(text)
        assert not text.startswith(("'", "{", "&", "!", "|", ">")), f"unsupported: {text!r}"
        assert text not in ("null", "~", "yes", "no", "on", "off"), f"ambiguous: {text!r}"
        if text in ("true", "false"):
            return text == "true"
        if re.fullmatch(r"[-+]?[0-9]+", text):
            return int(text)
        return text


def _compose_ha() -> dict[str, Any]:
    data = _Yaml(COMPOSE_HA.read_text(encoding="utf-8")).parse()
    try:
        import yaml  # optional: not a dependency of the project
    except ImportError:
        return data
    assert yaml.safe_load(COMPOSE_HA.read_text(encoding="utf-8")) == data
    return data


def test_the_ha_compose_file_has_postgres_two_shanghai_replicas_and_the_other_provinces() -> None:
    compose = _compose_ha()
    services = compose["services"]
    plain = _Yaml((REPOSITORY / "docker" / "compose.yaml").read_text(encoding="utf-8")).parse()
    expected = (set(plain["services"]) - {"node-shanghai"}) | {
        "postgres",
        "node-shanghai-1",
        "node-shanghai-2",
    }
    assert set(services) == expected
    # every other province's services exactly as in compose.yaml
    for name, service in plain["services"].items():
        if name != "node-shanghai":
            assert services[name] == service, name
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name}: no health check"
        if name != "postgres":
            build = service["build"]
            assert build["args"]["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-python:3.11-slim}", name

    postgres = services["postgres"]
    assert postgres["image"] == "${POSTGRES_IMAGE:-postgres:15}"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${YRD_PG_PASSWORD:?")
    assert "ports" not in postgres, "the database is reached on the compose network only"

    replicas = [services["node-shanghai-1"], services["node-shanghai-2"]]
    assert [r["environment"]["YRD_REPLICA"] for r in replicas] == ["1", "2"]
    for replica in replicas:
        assert replica["image"] == "${YRD_IMAGE:-yrd-gateway}-node-shanghai"
        assert replica["build"]["args"]["PROVINCE"] == "shanghai"
        # one name for both: the alias of Shanghai's certificate and descriptor
        assert "yrd-node-310000" in replica["networks"]["federation"]["aliases"]
        assert replica["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert replica["depends_on"]["sim-shanghai"] == {"condition": "service_healthy"}
        environment = replica["environment"]
        store = environment["YRD_STORE_URL"]
        assert store == "postgresql://yrd@postgres:5432/yrd_shanghai"
        assert ":" not in store.split("//", 1)[1].split("@", 1)[0], "no password in the URL"
        assert environment["PGPASSWORD"].startswith("${YRD_PG_PASSWORD:?")
        # the config this replica writes at start: store URL, replica and local_dir
        script = replica["command"][0]
        assert replica["entrypoint"] == ["/bin/sh", "-c"]
        assert 'store = \\"$${YRD_STORE_URL}\\"' in script
        assert 'replica = \\"$${YRD_REPLICA}\\"' in script
        assert 'local_dir = \\"/var/lib/yrd\\"' in script
        assert (
            script.rstrip()
            .split(";")[-1]
            .strip()
            .startswith("exec yrd-gateway serve --config /tmp/node/310000/province.toml")
        )
        assert [v.split(":", 1)[1] for v in replica["volumes"]] == ["/var/lib/yrd"]
        assert replica["read_only"] is True
    assert replicas[0]["volumes"] != replicas[1]["volumes"], "each replica its own local_dir"
    ports = [p for r in replicas for p in r["ports"]]
    assert len({p.rsplit(":", 2)[1] for p in ports}) == len(ports), "host ports differ"
    other_aliases = [
        alias
        for name, service in services.items()
        if name not in ("node-shanghai-1", "node-shanghai-2")
        and isinstance(service.get("networks"), dict)
        for alias in service["networks"]["federation"].get("aliases", [])
    ]
    assert "yrd-node-310000" not in other_aliases
    assert set(compose["volumes"]) >= {"pg-data", "local-shanghai-1", "local-shanghai-2"}
    text = COMPOSE_HA.read_text(encoding="utf-8")
    assert not re.search(r"postgresql://[^@\s\"]*:[^@\s\"]*@", text), "a password in a URL"
    assert not re.search(
        r"(?i)password\s*[:=]\s*['\"]?[A-Za-z0-9]",
        text.replace("POSTGRES_PASSWORD: ${YRD_PG_PASSWORD", "").replace(
            "PGPASSWORD: ${YRD_PG_PASSWORD", ""
        ),
    ), "a literal password"


def test_the_replica_start_command_writes_the_config_it_promises(tmp_path: Path) -> None:
    """The replicas' shell command, run here on a node folder make_configs.py made."""
    replica = _compose_ha()["services"]["node-shanghai-2"]
    script = replica["command"][0].replace("$$", "$")  # compose's escape of a literal $
    out = tmp_path / "nodes"
    assert _make(out).returncode == 0
    node = tmp_path / "etc" / "yrd" / "node"
    shutil.copytree(out / "shanghai", node)
    script = script.replace("/etc/yrd/node", str(node)).replace(
        "/tmp/node",  # noqa: S108 - the path in the container, replaced by one in tmp_path
        str(tmp_path / "run"),
    )
    script = script.replace("exec yrd-gateway serve", "echo serve")
    environment = {**replica["environment"], "YRD_LOG_LEVEL": "INFO", "PATH": "/usr/bin:/bin"}
    environment["PGPASSWORD"] = "not-in-the-file"
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    written = tmp_path / "run" / "310000" / "province.toml"
    assert result.stdout.split() == ["serve", "--config", str(written), "--log-level", "INFO"]
    text = written.read_text(encoding="utf-8")
    node_table = tomllib.loads(text)["node"]
    assert node_table["store"] == "postgresql://yrd@postgres:5432/yrd_shanghai"
    assert node_table["replica"] == "2"
    assert node_table["local_dir"] == "/var/lib/yrd"
    assert node_table["published_endpoints"] == ["yrd-node-310000:7311"]
    assert "not-in-the-file" not in text
    assert (tmp_path / "run" / "310000" / "keys" / "signing.key.pem").is_file()


def test_the_failover_script_plays_kills_and_plays_again() -> None:
    script = (REPOSITORY / "docker" / "ha_failover.sh").read_text(encoding="utf-8")
    subprocess.run(["/bin/sh", "-n", str(REPOSITORY / "docker" / "ha_failover.sh")], check=True)
    steps = [
        "up -d --build --wait",
        '"$PYTHON" docker/scenarios.py\n',
        "kill -s SIGKILL node-shanghai-1",
        '"$PYTHON" docker/scenarios.py --configs',
    ]
    positions = [script.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "down -v" in script
    assert "trap finish EXIT" in script
