"""The `yrd-gateway` commands as an operator runs them (real processes)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.cli import audit
from gateway.cli.main import build_parser
from gateway.storage.messagelog import MessageLog
from gateway.storage.records import LogEntry
from gateway.testing.localfed import CONFIG_DIR_SETTING, free_port
from gateway.tools.demo import _payee_account as demo_payee_account
from tests.paths import CONFIG_DIR, config_file, keys_dir
from yrd_simulators.fund_centre import FundCentreSimulator
from yrd_simulators.residents import synthetic_residents

CLI = [sys.executable, "-m", "gateway"]

#: The CLI with the simulators' package hidden, as on a node installed without them.
WITHOUT_SIMULATORS = [
    sys.executable,
    "-c",
    """
import sys

class Hidden:
    def find_spec(self, name, path=None, target=None):
        if name == "yrd_simulators" or name.startswith("yrd_simulators."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hidden())
from gateway.cli.main import main
sys.exit(main(sys.argv[1:]))
""",
]


def run(
    *args: str,
    timeout: float = 120,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    command: list[str] = CLI,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env=env,
    )


def without_config_setting() -> dict[str, str]:
    """This process's environment without YRD_PROVINCE_CONFIGS."""
    return {k: v for k, v in os.environ.items() if k != CONFIG_DIR_SETTING}


def copy_configs(tmp_path: Path) -> Path:
    folder = tmp_path / "province_configs"
    shutil.copytree(CONFIG_DIR, folder, ignore=shutil.ignore_patterns("var"))
    for file in folder.glob("*/province.toml"):
        text = file.read_text(encoding="utf-8")
        text = re.sub(r'\nendpoint = "[^"]+"', f'\nendpoint = "127.0.0.1:{free_port()}"', text)
        text = re.sub(
            r'federation_endpoint = "[^"]+"',
            f'federation_endpoint = "127.0.0.1:{free_port()}"',
            text,
        )
        text = re.sub(r'store = "[^"]+"', 'store = "../var"', text)
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
            ["audit", "verify", "--help"],
            ["log", "verify", "--help"],
        ):
            result = run(*args)
            assert result.returncode == 0, args
            assert "usage: yrd-gateway" in result.stdout


class TestConfigCheck:
    """`config check` names every problem and exits non-zero."""

    def test_shipped_configs_are_valid(self) -> None:
        result = run("config", "check", *map(str, sorted(CONFIG_DIR.glob("*/province.toml"))))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "4 file(s) valid" in result.stdout

    def test_broken_config_is_reported_with_file_key_and_expectation(self, tmp_path: Path) -> None:
        folder = copy_configs(tmp_path)
        file = config_file("340000", folder)
        text = file.read_text(encoding="utf-8").replace('code = "340000"', 'code = "34000"', 1)
        file.write_text(text.replace("[node]", "[node]\nport = 1", 1), encoding="utf-8")
        result = run("config", "check", str(file))
        assert result.returncode == 1
        assert f"{file}: province.code: got '34000'" in result.stdout
        assert f"{file}: node.port:" in result.stdout
        assert "unknown keys are refused" in result.stdout


class TestPki:
    def test_init_creates_every_key(self, tmp_path: Path) -> None:
        configs = tmp_path / "configs"
        result = run("pki", "init", str(configs), "--provinces", "310000", "330000")
        assert result.returncode == 0, result.stderr
        for code in ("310000", "330000"):
            for stem in ("signing", "eid-issuer", "seal"):
                assert (keys_dir(code, configs) / f"{stem}.key.pem").exists()
                assert (keys_dir(code, configs) / f"{stem}.pub.pem").exists()
        assert (keys_dir("310000", configs) / "signing.key.pem").stat().st_mode & 0o077 == 0
        # keys, the CA, its copy in each keys folder, node + client certs
        assert result.stdout.count("sha256:") == 6 + 1 + 2 + 4
        ca = configs / "federation-ca" / "ca.crt.pem"
        assert ca.exists()
        assert (configs / "federation-ca" / "ca.key.pem").exists()
        for code in ("310000", "330000"):
            for stem in ("tls", "office"):
                assert (keys_dir(code, configs) / f"{stem}.crt.pem").exists()
            assert (keys_dir(code, configs) / "ca.crt.pem").read_bytes() == ca.read_bytes()
            assert not (keys_dir(code, configs) / "ca.key.pem").exists()


class TestServe:
    """A node served from its config file answers health checks and drains on SIGTERM."""

    def test_serve_health_sigterm_and_log_verify(self, tmp_path: Path) -> None:
        folder = copy_configs(tmp_path)
        config = config_file("310000", folder)
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
                (folder / "federation-ca" / "ca.crt.pem").read_bytes()
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
        assert '"event":"node stopped"' in stderr

        database = folder / "var" / "messages.db"
        assert run("audit", "verify", str(database)).returncode == 0

    def test_bad_config_refuses_to_start(self, tmp_path: Path) -> None:
        folder = copy_configs(tmp_path)
        (folder / "310000" / "keys" / "signing.key.pem").unlink()
        result = run("serve", "--config", str(config_file("310000", folder)), timeout=30)
        assert result.returncode == 2
        assert "signing.private_key" in result.stderr


def tampered_log(tmp_path: Path) -> Path:
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
    return database


class TestAuditVerify:
    """`audit verify` is the one command that verifies a log; `log verify` is its alias."""

    def test_tampering_is_reported(self, tmp_path: Path) -> None:
        result = run("audit", "verify", str(tampered_log(tmp_path)))
        assert result.returncode == 1
        assert "BROKEN" in result.stdout
        assert "row 1" in result.stdout

    def test_missing_file(self, tmp_path: Path) -> None:
        result = run("audit", "verify", str(tmp_path / "nope.db"))
        assert result.returncode == 2

    def test_a_copy_on_a_read_only_folder(self, tmp_path: Path) -> None:
        # The operator's case: a store copied onto a read-only mount (docker's
        # `:ro`). The folder is made read-only for the command itself: a bind
        # mount remounted read-only in a mount namespace of its own (root is not
        # stopped by a folder's mode), or the folder's mode for another user.
        folder = tmp_path / "copy"
        folder.mkdir()
        database = folder / "messages.db"
        asyncio.run(_write_log(database, rows=3))
        before = database.read_bytes()
        command = _read_only_for_the_command(folder)
        result = run("audit", "verify", str(database), command=[*command, *CLI])
        folder.chmod(0o755)
        assert result.returncode == 0, result.stderr
        assert "intact" in result.stdout
        assert "3 rows" in result.stdout
        assert database.read_bytes() == before
        assert sorted(p.name for p in folder.iterdir()) == ["messages.db"]

    @pytest.mark.parametrize(
        "command",
        [
            ["audit", "verify", "x.db"],
            ["audit", "export", "0190a0b0-0000-7000-8000-000000000000"],
            ["store", "migrate", "--from", "{tmp}", "--to", "postgresql://u@127.0.0.1:1/db"],
        ],
    )
    def test_a_config_that_cannot_be_read_is_named_not_a_traceback(
        self, tmp_path: Path, command: list[str]
    ) -> None:
        missing = tmp_path / "no-such" / "province.toml"
        command = [part.replace("{tmp}", str(tmp_path)) for part in command]
        result = run(*command, "--config", str(missing))
        assert result.returncode == 2
        assert "configuration refused" in result.stderr
        assert f"{missing}: cannot be read" in result.stderr
        assert "Traceback" not in result.stderr

    def test_log_verify_is_the_same_command(self, tmp_path: Path) -> None:
        parser = build_parser()
        for command in (["audit", "verify"], ["log", "verify"]):
            args = parser.parse_args([*command, "x.db", "--config", "c.toml"])
            assert args.func is audit.audit_verify
            assert (args.database, args.config) == ("x.db", "c.toml")
        database = tampered_log(tmp_path)
        one, alias = run("audit", "verify", str(database)), run("log", "verify", str(database))
        assert (alias.returncode, alias.stdout) == (one.returncode, one.stdout)
        assert run("log", "verify", str(tmp_path / "nope.db")).returncode == 2
        shown = run("log", "verify", "--help").stdout
        assert "alias of `yrd-gateway audit verify`" in " ".join(shown.split())


class TestDemo:
    def test_demo_plays_every_scenario(self, tmp_path: Path) -> None:
        """From a folder without province_configs, on a copy named by --configs."""
        configs = tmp_path / "copied-configs"
        shutil.copytree(CONFIG_DIR, configs, ignore=shutil.ignore_patterns("var"))
        log_file = tmp_path / "nodes.log"
        result = run(
            *("demo", "--configs", str(configs), "--log-file", str(log_file)),
            timeout=300,
            cwd=tmp_path,
            env=without_config_setting(),
        )
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
        assert logged.count('"event":"rpc"') >= 20
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


DEVELOPMENT_TOOLS = (["demo"], ["up"], ["bench", "--smoke"], ["soak", "--smoke"])


class TestConfigsFolder:
    """The development tools find the province configs from --configs, else
    YRD_PROVINCE_CONFIGS, else ./province_configs; never beside the installed code."""

    def test_no_configs_is_one_clear_line(self, tmp_path: Path) -> None:
        for command in DEVELOPMENT_TOOLS:
            result = run(*command, cwd=tmp_path, env=without_config_setting(), timeout=60)
            assert result.returncode == 2, (command, result.stderr)
            assert result.stderr == (
                f"yrd-gateway {command[0]}: no province configs at province_configs: run from "
                f"the repository root, pass --configs DIR, or set {CONFIG_DIR_SETTING}\n"
            )
            assert result.stdout == ""

    def test_missing_folder_named_by_option_or_setting(self, tmp_path: Path) -> None:
        missing = tmp_path / "nowhere"
        result = run("bench", "--configs", str(missing), cwd=tmp_path, timeout=60)
        assert result.returncode == 2
        assert f"yrd-gateway bench: no province configs at {missing}:" in result.stderr
        assert "Traceback" not in result.stderr
        env = {**without_config_setting(), CONFIG_DIR_SETTING: str(missing)}
        result = run("up", "--base-port", "7300", cwd=tmp_path, env=env, timeout=60)
        assert result.returncode == 2
        assert f"yrd-gateway up: no province configs at {missing}:" in result.stderr

    def test_setting_and_option_resolve_the_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from gateway.cli.common import tool_configs

        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv(CONFIG_DIR_SETTING, str(CONFIG_DIR))
        assert tool_configs("demo", None) == CONFIG_DIR
        assert tool_configs("demo", str(tmp_path)) == tmp_path  # the option first
        monkeypatch.delenv(CONFIG_DIR_SETTING)
        assert tool_configs("demo", None) is None
        (tmp_path / "province_configs").mkdir()
        assert tool_configs("demo", None) == Path("province_configs")


class TestWithoutSimulators:
    """A node installed without the simulators: the node's commands work, the
    development tools say in one line what to install."""

    def test_tools_say_what_to_install(self, tmp_path: Path) -> None:
        for command in DEVELOPMENT_TOOLS:
            result = run(*command, "--configs", str(CONFIG_DIR), command=WITHOUT_SIMULATORS)
            assert result.returncode == 2, (command, result.stderr)
            assert result.stderr.count("\n") == 1, result.stderr
            assert f"yrd-gateway {command[0]}: needs the simulated back-ends" in result.stderr
            assert "pip install ./simulators" in result.stderr
            assert "`make`" in result.stderr

    def test_node_commands_work(self, tmp_path: Path) -> None:
        result = run(
            "config",
            "check",
            *map(str, sorted(CONFIG_DIR.glob("*/province.toml"))),
            command=WITHOUT_SIMULATORS,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "4 file(s) valid" in result.stdout
        result = run("audit", "verify", str(tampered_log(tmp_path)), command=WITHOUT_SIMULATORS)
        assert result.returncode == 1
        assert "BROKEN" in result.stdout


class TestOutboxStore:
    """The operator's outbox commands on a store they cannot use: one line, exit 2."""

    def test_a_store_from_a_newer_release_is_one_line(self, tmp_path: Path) -> None:
        folder = copy_configs(tmp_path)
        store = folder / "var"
        store.mkdir()
        with sqlite3.connect(store / "state.db") as db:
            db.execute("PRAGMA user_version = 999")
        result = run("outbox", "list", "--config", str(config_file("310000", folder)))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("yrd-gateway outbox: ")
        assert "newer" in line


async def _write_log(database: Path, *, rows: int) -> None:
    """A message log of ``rows`` rows, closed (as a node leaves it when it stops)."""
    async with MessageLog(database) as log:
        for n in range(rows):
            await log.append(
                LogEntry(
                    direction="in",
                    kind="request",
                    message_id=f"m-{n}",
                    correlation_id=f"c-{n}",
                    peer="320000",
                    service="identity.CheckCredential",
                    envelope=bytes([n]) * 8,
                )
            )


def _read_only_for_the_command(folder: Path) -> list[str]:
    """A prefix that runs a command with ``folder`` read-only (checked: a file
    cannot be created in it). Not root: the folder's mode is enough."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    remount = (
        'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && '
        '{ ! touch "$0/.probe" 2>/dev/null; } && exec "$@"'
    )
    for namespace in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        prefix = [*namespace, "sh", "-c", remount, str(folder)]
        if subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode == 0:
            return prefix
    pytest.skip("no mount namespace here to make a folder read-only for a command")
