"""`yrd-gateway directory export|import|show|list` as an operator runs them (real processes)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.config.loading import load_own
from gateway.testing.localfed import LocalFederation
from gateway.trust import descriptor as descriptors
from tests.paths import CONFIG_DIR, config_file, keys_dir

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"
CLI = [sys.executable, "-m", "gateway", "directory"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def province(tmp_path: Path, code: str) -> Path:
    """A copy of a province's folder whose store is in ``tmp_path``: its config file."""
    folder = tmp_path / "configs" / code
    if not folder.exists():
        shutil.copytree(CONFIG_DIR / code, folder)
        file = config_file(code, tmp_path / "configs")
        text = file.read_text(encoding="utf-8")
        file.write_text(
            re.sub(r'\nstore = "[^"]+"', f'\nstore = "../../var/{code}"', text), encoding="utf-8"
        )
    return config_file(code, tmp_path / "configs")


def store(tmp_path: Path, code: str) -> Path:
    return tmp_path / "var" / code / "directory"


def export(tmp_path: Path, code: str, out: str) -> Path:
    result = run("export", "--config", str(province(tmp_path, code)), "--out", str(tmp_path / out))
    assert result.returncode == 0, result.stderr
    return tmp_path / out


def assert_refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"refused: {reason}: "), lines[0]


def forged(
    code: str, signer: str, *, certificate_of: str | None = None, days: tuple[float, float] = (0, 7)
) -> bytes:
    """A descriptor of ``code`` signed with ``signer``'s TLS key (and the certificate of
    ``certificate_of``, by default the signer's), valid over ``days`` from now."""
    me = load_own(config_file(code))
    now = datetime.now(UTC)
    certificate = (keys_dir(certificate_of or signer) / "tls.crt.pem").read_bytes()
    body = descriptors.describe(
        me,
        serial=int(now.timestamp() * 1000),
        issued_at=now + timedelta(days=days[0]),
        not_after=now + timedelta(days=days[1]),
        since={},
        tls_certificate=certificate,
    )
    key = (keys_dir(signer) / "tls.key.pem").read_bytes()
    return descriptors.sign(body, key, certificate).SerializeToString()


def rows(stdout: str) -> list[list[str]]:
    """The table's lines split on runs of two or more spaces, header dropped."""
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["PROVINCE", "NAME", "STATE", "SERVICE"]
    return [re.split(r" {2,}", line.strip()) for line in lines[1:]]


class TestHelp:
    def test_every_command_explains_itself(self) -> None:
        for action in ("export", "import", "show", "list"):
            result = run(action, "--help")
            assert result.returncode == 0, action
            assert "usage: yrd-gateway directory" in result.stdout


class TestExportImport:
    def test_export_from_one_store_import_into_another(self, tmp_path: Path) -> None:
        result = run(
            "export", "--config", str(province(tmp_path, SH)), "--out", str(tmp_path / "sh.d")
        )
        assert result.returncode == 0, result.stderr
        data = (tmp_path / "sh.d").read_bytes()
        # The very descriptor the node serves (the shared own.descriptor), and its digest.
        assert data == (store(tmp_path, SH) / "own.descriptor").read_bytes()
        facts = descriptors.facts_of(descriptors.read(descriptors.parse_signed(data)))
        assert f"310000 Shanghai: serial {facts.serial}, not_after " in result.stdout
        assert hashlib.sha256(data).hexdigest() in result.stdout
        # Exported again: the same descriptor (no new serial without a change).
        again = run("export", "--config", str(province(tmp_path, SH)), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert (tmp_path / "310000.descriptor").read_bytes() == data

        installed = run("import", str(tmp_path / "sh.d"), "--config", str(province(tmp_path, JS)))
        assert installed.returncode == 0, installed.stderr
        assert f"installed 310000 Shanghai: serial {facts.serial}, not_after" in installed.stdout
        assert (store(tmp_path, JS) / "310000.descriptor").read_bytes() == data

    def test_a_province_not_in_peers_is_refused(self, tmp_path: Path) -> None:
        exported = export(tmp_path, SH, "sh.d")
        file = province(tmp_path, JS)
        text = file.read_text(encoding="utf-8")
        text = re.sub(r'\[\[peers\]\]\ncode = "310000"[^\n]*\nendpoint = [^\n]*\n', "", text)
        file.write_text(text, encoding="utf-8")
        assert_refused(run("import", str(exported), "--config", str(file)), "unknown_province")
        assert not (store(tmp_path, JS) / "310000.descriptor").exists()

    def test_an_older_serial_after_a_newer_one_is_refused(self, tmp_path: Path) -> None:
        older = export(tmp_path, SH, "older.d")
        file = province(tmp_path, SH)
        text = file.read_text(encoding="utf-8")
        file.write_text(
            text.replace("gateway-operations@310000", "duty-desk@310000", 1), encoding="utf-8"
        )
        newer = export(tmp_path, SH, "newer.d")
        serial = descriptors.read(descriptors.parse_signed(newer.read_bytes())).serial
        assert serial > descriptors.read(descriptors.parse_signed(older.read_bytes())).serial
        js = str(province(tmp_path, JS))
        assert run("import", str(newer), "--config", js).returncode == 0
        assert_refused(run("import", str(older), "--config", js), "rollback")
        # The newer copy stays.
        assert (store(tmp_path, JS) / "310000.descriptor").read_bytes() == newer.read_bytes()

    def test_a_descriptor_signed_by_another_province_is_refused(self, tmp_path: Path) -> None:
        js = str(province(tmp_path, JS))
        # Zhejiang's key and certificate: the certificate names another province.
        (tmp_path / "zj.d").write_bytes(forged(SH, signer=ZJ))
        assert_refused(run("import", str(tmp_path / "zj.d"), "--config", js), "wrong_province")
        # Zhejiang's key under Shanghai's certificate: the signature does not hold.
        (tmp_path / "sh-cert.d").write_bytes(forged(SH, signer=ZJ, certificate_of=SH))
        assert_refused(run("import", str(tmp_path / "sh-cert.d"), "--config", js), "bad_signature")
        assert not (store(tmp_path, JS) / "310000.descriptor").exists()

    def test_garbage_and_unreadable_files(self, tmp_path: Path) -> None:
        js = str(province(tmp_path, JS))
        (tmp_path / "garbage.d").write_bytes(b"not a descriptor \xff\xff\xff\xff")
        assert_refused(run("import", str(tmp_path / "garbage.d"), "--config", js), "malformed")
        (tmp_path / "huge.d").write_bytes(b"\x00" * (descriptors.MAX_SIGNED_BYTES + 10))
        assert_refused(run("import", str(tmp_path / "huge.d"), "--config", js), "malformed")
        missing = run("import", str(tmp_path / "absent.d"), "--config", js)
        assert missing.returncode == 2
        assert "cannot be read" in missing.stderr
        assert "Traceback" not in missing.stderr
        bad_config = run("import", str(tmp_path / "garbage.d"), "--config", str(tmp_path / "x"))
        assert bad_config.returncode == 2
        assert "Traceback" not in bad_config.stderr


class TestShow:
    def test_facts_without_private_paths_or_urls(self, tmp_path: Path) -> None:
        exported = export(tmp_path, SH, "sh.d")
        result = run("show", str(exported))
        assert result.returncode == 0, result.stderr
        out = result.stdout
        facts = descriptors.facts_of(
            descriptors.read(descriptors.parse_signed(exported.read_bytes()))
        )
        for expected in (
            "province: 310000 Shanghai (上海市)",
            f"serial: {facts.serial}",
            "issued_at: ",
            "not_after: ",
            "contact: gateway-operations@310000.yrd.example",
            f"tls certificate sha256: {facts.tls_certificate_sha256}",
            "signing keys:\n  310000-sig-2026  2026-01-01T00:00:00Z .. 2030-01-01T00:00:00Z",
            "e-ID issuer keys:\n  310000-eid-2026",
            "seal keys:\n  310000-seal-2026",
            "  fund.QueryAccount  v1  since ",
            "  AGE_CHECK: age_over_18",
            f"file sha256: {hashlib.sha256(exported.read_bytes()).hexdigest()}",
        ):
            assert expected in out, expected
        assert f"endpoints: {facts.endpoints[0]}" in out
        for private in ("http", ".pem", "keys/", str(tmp_path), "token", "sfzh", "/api/"):
            assert private not in out, private

    def test_checked_against_a_nodes_ca(self, tmp_path: Path) -> None:
        exported = export(tmp_path, SH, "sh.d")
        js = str(province(tmp_path, JS))
        ok = run("show", str(exported), "--config", js)
        assert ok.returncode == 0, ok.stderr
        assert "check against 320000's federation CA: ok" in ok.stdout
        (tmp_path / "zj.d").write_bytes(forged(SH, signer=ZJ))
        refused = run("show", str(tmp_path / "zj.d"), "--config", js)
        assert refused.returncode == 1
        assert "province: 310000 Shanghai" in refused.stdout
        assert "check against 320000's federation CA: refused (wrong_province)" in refused.stdout
        (tmp_path / "garbage.d").write_bytes(b"not a descriptor \xff\xff\xff\xff")
        assert_refused(run("show", str(tmp_path / "garbage.d")), "malformed")


class TestListOffline:
    def test_own_and_missing_then_held_and_expired(self, tmp_path: Path) -> None:
        js = str(province(tmp_path, JS))
        before = run("list", "--config", js)
        assert before.returncode == 0, before.stderr
        states = {row[0]: row[2] for row in rows(before.stdout)}
        assert states == {JS: "own", SH: "missing", ZJ: "missing", AH: "missing"}
        assert "320000: no own descriptor in the store yet" in before.stderr

        assert run("export", "--config", js, "--out", str(tmp_path / "js.d")).returncode == 0
        assert run("import", str(export(tmp_path, SH, "sh.d")), "--config", js).returncode == 0
        # A copy past its not_after in the store (as a node keeps the last good one).
        (store(tmp_path, JS) / f"{ZJ}.descriptor").write_bytes(forged(ZJ, signer=ZJ, days=(-3, -1)))
        after = run("list", "--config", js)
        assert after.returncode == 0, after.stderr
        table = rows(after.stdout)
        states = {row[0]: row[2] for row in table}
        assert states == {JS: "own", SH: "held", ZJ: "expired", AH: "missing"}
        services = {row[3] for row in table if row[0] == SH}
        assert {"identity.CheckCredential", "fund.QueryAccount", "case.DeliverCase"} <= services
        sh_serial = descriptors.read(
            descriptors.parse_signed((tmp_path / "sh.d").read_bytes())
        ).serial
        assert all(row[6] == str(sh_serial) for row in table if row[0] == SH)
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", row[5]) for row in table if row[0] == SH)

        as_json = run("list", "--config", js, "--json")
        assert as_json.returncode == 0, as_json.stderr
        provinces = {p["province"]: p for p in json.loads(as_json.stdout)["provinces"]}
        assert provinces[SH]["state"] == "held"
        assert provinces[SH]["serial"] == sh_serial
        assert provinces[AH]["state"] == "missing"
        assert provinces[AH]["services"] == []
        assert provinces[JS]["services"], "the own descriptor lists its services"

    def test_a_refused_copy_in_the_store_is_missing_with_its_reason(self, tmp_path: Path) -> None:
        js = str(province(tmp_path, JS))
        store(tmp_path, JS).mkdir(parents=True)
        (store(tmp_path, JS) / f"{SH}.descriptor").write_bytes(forged(SH, signer=ZJ))
        result = run("list", "--config", js)
        assert result.returncode == 0, result.stderr
        sh = [row for row in rows(result.stdout) if row[0] == SH]
        assert sh[0][2] == "missing"
        assert sh[0][-1] == "wrong_province"


async def run_async(*args: str) -> tuple[int, str, str]:
    """The CLI in a subprocess without blocking the event loop the nodes run in."""
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


class TestListEndpoint:
    async def test_a_running_nodes_service_map(self, federation: LocalFederation) -> None:
        remote = (
            "--endpoint",
            federation.endpoint(SH),
            "--ca",
            str(keys_dir(SH) / "ca.crt.pem"),
        )
        code, out, err = await run_async("list", *remote, "--token", f"dev-office-{SH}")
        assert code == 0, err
        table = rows(out)
        assert {row[0]: row[2] for row in table} == {SH: "own", JS: "held", ZJ: "held", AH: "held"}
        for province_code in (SH, JS, ZJ, AH):
            services = {row[3] for row in table if row[0] == province_code}
            assert "identity.CheckCredential" in services, province_code
        code, out, err = await run_async("list", *remote, "--token", f"dev-office-{SH}", "--json")
        assert code == 0, err
        provinces = json.loads(out)["provinces"]
        assert [p["province"] for p in provinces] == [SH, JS, ZJ, AH]
        assert all(p["services"] and p["serial"] > 0 for p in provinces)

        code, out, err = await run_async("list", *remote, "--token", "not-a-token")
        assert code == 1
        assert out == ""
        assert "UNAUTHENTICATED" in err
        assert "Traceback" not in err
        # A client without AdminService access (the hotel desk).
        code, _, err = await run_async("list", *remote, "--token", f"dev-hotel-{SH}")
        assert code == 1
        assert "PERMISSION_DENIED" in err
