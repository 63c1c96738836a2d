"""The `yrd-gateway` commands as an operator runs them (real processes)."""

from __future__ import annotations

import base64
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.testing.localfed import free_port
from gateway.tools.demo import _payee_account as demo_payee_account
from tests.paths import CONFIG_DIR
from yrd_simulators.fund_centre import FundCentreSimulator
from yrd_simulators.residents import synthetic_residents

CLI = [sys.executable, "-m", "gateway"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def copy_configs(tmp_path: Path) -> Path:
    folder = tmp_path / "province_configs"
    shutil.copytree(CONFIG_DIR, folder, ignore=shutil.ignore_patterns("var"))
    for file in folder.glob("*.toml"):
        text = file.read_text(encoding="utf-8")
        text = re.sub(r'\nendpoint = "[^"]+"', f'\nendpoint = "127.0.0.1:{free_port()}"', text)
        text = re.sub(
            r'federation_endpoint = "[^"]+"',
            f'federation_endpoint = "127.0.0.1:{free_port()}"',
            text,
        )
        text = re.sub(r'store = "[^"]+"', 'store = "var"', text)
        file.write_text(text, encoding="utf-8")
    return folder


class TestHelp:
    """Every command explains itself."""

    def test_help_on_every_command(self) -> None:
        for args in (
            ["--help"],
            ["serve", "--help"],
            ["demo", "--help"],
            ["pki", "init", "--help"],
            ["config", "check", "--help"],
            ["log", "verify", "--help"],
        ):
            result = run(*args)
            assert result.returncode == 0, args
            assert "usage: yrd-gateway" in result.stdout


class TestConfigCheck:
    """`config check` names every problem and exits non-zero."""

    def test_shipped_configs_are_valid(self) -> None:
        result = run("config", "check", *map(str, sorted(CONFIG_DIR.glob("*.toml"))))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "4 file(s) valid" in result.stdout

    def test_broken_config_is_reported_with_file_key_and_expectation(self, tmp_path: Path) -> None:
        folder = copy_configs(tmp_path)
        file = folder / "anhui.toml"
        text = file.read_text(encoding="utf-8").replace('code = "340000"', 'code = "34000"', 1)
        file.write_text(text.replace("[node]", "[node]\nport = 1", 1), encoding="utf-8")
        result = run("config", "check", str(file))
        assert result.returncode == 1
        assert f"{file}: province.code: got '34000'" in result.stdout
        assert f"{file}: node.port:" in result.stdout
        assert "unknown keys are refused" in result.stdout


class TestPki:
    def test_init_creates_every_key(self, tmp_path: Path) -> None:
        result = run("pki", "init", str(tmp_path / "keys"), "--provinces", "310000", "330000")
        assert result.returncode == 0, result.stderr
        for code in ("310000", "330000"):
            for stem in ("signing", "eid-issuer", "seal"):
                assert (tmp_path / "keys" / code / f"{stem}.key.pem").exists()
                assert (tmp_path / "keys" / code / f"{stem}.pub.pem").exists()
        assert (tmp_path / "keys" / "310000" / "signing.key.pem").stat().st_mode & 0o077 == 0
        assert result.stdout.count("sha256:") == 6 + 1 + 4  # keys, the CA, node + client certs
        assert (tmp_path / "keys" / "ca.crt.pem").exists()
        for code in ("310000", "330000"):
            for stem in ("tls", "office"):
                assert (tmp_path / "keys" / code / f"{stem}.crt.pem").exists()


class TestServe:
    """A node served from its config file answers health checks and drains on SIGTERM."""

    def test_serve_health_sigterm_and_log_verify(self, tmp_path: Path) -> None:
        folder = copy_configs(tmp_path)
        config = folder / "shanghai.toml"
        endpoint = re.search(r'\nendpoint = "([^"]+)"', config.read_text(encoding="utf-8"))
        assert endpoint is not None
        process = subprocess.Popen(
            [*CLI, "serve", "--config", str(config), "--grace", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            status = None
            credentials = grpc.ssl_channel_credentials(
                (folder / "keys" / "ca.crt.pem").read_bytes()
            )
            with grpc.secure_channel(endpoint.group(1), credentials) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while time.monotonic() < deadline and status is None:
                    try:
                        status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    except grpc.RpcError:
                        time.sleep(0.2)
            assert status == health_pb2.HealthCheckResponse.SERVING
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert '"event": "node stopped"' in stderr

        database = folder / "var" / "messages.db"
        assert run("log", "verify", str(database)).returncode == 0

    def test_bad_config_refuses_to_start(self, tmp_path: Path) -> None:
        folder = copy_configs(tmp_path)
        (folder / "keys" / "310000" / "signing.key.pem").unlink()
        result = run("serve", "--config", str(folder / "shanghai.toml"), timeout=30)
        assert result.returncode == 2
        assert "signing.private_key" in result.stderr


class TestLogVerify:
    def test_tampering_is_reported(self, tmp_path: Path) -> None:
        database = tmp_path / "node.db"
        with sqlite3.connect(database) as db:
            db.executescript(
                "CREATE TABLE message_log (seq INTEGER PRIMARY KEY, logged_at TEXT, direction TEXT,"
                " kind TEXT, message_id TEXT, correlation_id TEXT, peer TEXT, service TEXT,"
                " envelope BLOB, prev_hash BLOB, row_hash BLOB);"
            )
            db.execute(
                "INSERT INTO message_log VALUES (1, 't', 'in', 'request', 'm', 'c', 'p',"
                " 's', x'00', zeroblob(32), zeroblob(32))"
            )
        result = run("log", "verify", str(database))
        assert result.returncode == 1
        assert "BROKEN" in result.stdout
        assert "row 1" in result.stdout

    def test_missing_file(self, tmp_path: Path) -> None:
        result = run("log", "verify", str(tmp_path / "nope.db"))
        assert result.returncode == 2


class TestDemo:
    def test_demo_plays_every_scenario(self, tmp_path: Path) -> None:
        log_file = tmp_path / "nodes.log"
        result = run("demo", "--log-file", str(log_file), timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "28 of 28 scenarios gave the expected outcome" in result.stdout
        for verdict in (
            "VALID",
            "REPLAYED",
            "FORGED",
            "EXPIRED",
            "REVOKED",
            "UNKNOWN_ISSUER",
            "ISSUER_UNREACHABLE",
        ):
            assert verdict in result.stdout
        logged = log_file.read_text(encoding="utf-8")
        assert logged.count('"event": "rpc"') >= 20
        # Personal data never reaches a log line nor a message shown to a caller
        # (the demo table prints the callers' error messages): no resident's ID
        # number, name or photo, no fund or payee account number.
        shown = logged + result.stdout + result.stderr
        for province in ("310000", "320000", "330000", "340000"):
            for resident in synthetic_residents(province):
                assert resident.id_number not in shown
                assert resident.full_name not in shown
                assert base64.b64encode(resident.photo).decode() not in shown
            for account in FundCentreSimulator(province).accounts:
                assert account not in shown
        assert demo_payee_account() not in shown
