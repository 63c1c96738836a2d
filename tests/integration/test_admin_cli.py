"""``yrd-gateway admin``, end to end against a running federation: its output,
its JSON, its exit codes. The command runs as its own process, as an operator
runs it (the nodes serve on this test's event loop meanwhile)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from gateway.testing.localfed import LocalFederation, free_port
from tests.integration.conftest import JS, SH, ZJ
from tests.integration.test_admin_rpcs import correlation_of, free_of, queued_while_fund_node_down
from tests.integration.test_fund_exchange import application, submit, until_final
from tests.paths import CONFIG_DIR, config_file
from yrd.fund.v1 import fund_pb2

S = fund_pb2.WithdrawalStatus


class Admin:
    """Runs ``yrd-gateway admin`` against Shanghai's node with its admin credential."""

    def __init__(self, federation: LocalFederation, tmp_path: Path) -> None:
        self.federation = federation
        self.token = tmp_path / "admin.token"
        self.token.write_text(f"dev-office-{SH}\n", encoding="utf-8")
        tls = federation.provinces[SH].config.tls
        assert tls is not None
        self.ca = str(tls.ca)

    async def __call__(self, *argv: str, token: Path | None = None) -> tuple[int, str, str]:
        connection = [
            "--endpoint",
            self.federation.endpoint(SH),
            "--ca",
            self.ca,
            "--token-file",
            str(token or self.token),
        ]
        return await run("admin", *connection, *argv)


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``yrd-gateway ARGV`` in its own process: (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli.main",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
def admin(federation: LocalFederation, tmp_path: Path) -> Admin:
    return Admin(federation, tmp_path)


async def test_peers_table_and_json(admin: Admin) -> None:
    status, out, err = await admin("peers")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["PEER", "NAME", "REACHABLE", "BREAKER"]
    for code in (JS, ZJ):
        assert any(line.startswith(code) for line in lines)
    assert "DAYS LEFT" in out
    status, out, _ = await admin("peers", "--json")
    assert status == 0
    answer = json.loads(out)
    assert sorted(p["province"] for p in answer["peers"]) == sorted(
        admin.federation.node(SH).federation.peer_codes
    )
    assert answer["own_keys"]


async def test_a_stuck_withdrawal_parked_and_retried_reaches_paid(admin: Admin) -> None:
    federation = admin.federation
    app, case_id = await queued_while_fund_node_down(federation)
    status, out, err = await admin("exchanges", "list", "--peer", JS)
    assert status == 0, err
    assert case_id in out
    assert out.splitlines()[0].split()[:4] == ["REFERENCE", "PEER", "SERVICE", "STATE"]
    assert "1 exchange(s)" in err
    status, out, err = await admin(
        "exchanges", "park", case_id, "--operator", "op-li", "--reason", "fund node down"
    )
    assert status == 0, err
    assert "message log row" in out
    status, out, _ = await admin("exchanges", "list", "--state", "parked", "--json")
    assert [e["reference"] for e in json.loads(out)["exchanges"]] == [case_id]
    assert (await admin("exchanges", "list", "--older-than", "1h"))[1].count("\n") == 1

    await federation.start_node(JS)
    await federation.refresh_directories()
    status, out, err = await admin("exchanges", "retry", case_id, "--operator", "op-li")
    assert status == 0, err
    final, _ = await until_final(federation, case_id, seconds=30)
    assert final.status == S.PAID
    status, _, err = await admin("exchanges", "retry", case_id)
    assert status == 1  # nothing left to retry: the node says so
    assert "NOT_FOUND" in err

    correlation_id = await correlation_of(federation, case_id)
    status, out, err = await admin("log", "search", "--correlation-id", correlation_id)
    assert status == 0, err
    assert "park by op-li (client office-310000-001)" in out
    assert "retry by op-li (client office-310000-001)" in out
    assert "PAID" in out
    free_of(out + err, app)


async def test_log_verify_and_diagnostics(admin: Admin) -> None:
    case = await submit(admin.federation, application(admin.federation, amount_fen=1_200))
    await until_final(admin.federation, case.case_id)
    status, out, err = await admin("log", "verify")
    assert status == 0, err
    assert out.startswith("intact: ")
    status, out, err = await admin("diagnostics")
    assert status == 0, out + err
    assert out.startswith("config: ok\n")
    assert "adapter: ok" in out


async def test_exit_codes(admin: Admin, tmp_path: Path) -> None:
    status, _, err = await admin("exchanges", "retry", "WD-310000-none")
    assert status == 1
    assert "NOT_FOUND" in err
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-a-token", encoding="utf-8")
    status, _, err = await admin("peers", token=wrong)
    assert status == 2
    assert "UNAUTHENTICATED" in err
    status, _, err = await admin("exchanges", "list", "--older-than", "ten minutes")
    assert status == 2
    assert "--older-than" in err
    status, _, err = await admin("exchanges", "list", "--peer", "999999")
    assert status == 2
    assert "INVALID_ARGUMENT" in err
    assert "peer" in err


async def test_no_token_and_unreachable(admin: Admin) -> None:
    env = {k: v for k, v in os.environ.items() if k != "YRD_ADMIN_TOKEN"}
    argv = ["admin", "--endpoint", admin.federation.endpoint(SH), "--ca", admin.ca, "peers"]
    status, _, err = await run(*argv, env=env)
    assert status == 2
    assert "token" in err
    status, out, err = await run(*argv, env={**env, "YRD_ADMIN_TOKEN": f"dev-office-{SH}"})
    assert status == 0, err  # the token from the environment
    assert out.startswith("PEER")
    nowhere = ["admin", "--endpoint", f"127.0.0.1:{free_port()}", "--ca", admin.ca, "peers"]
    status, _, err = await run(*nowhere, env={**env, "YRD_ADMIN_TOKEN": "x"})
    assert status == 2
    assert "UNAVAILABLE" in err


async def test_endpoint_and_ca_from_the_node_config(tmp_path: Path) -> None:
    """`--config FILE` alone says where the node is and which CA signed it."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs, ignore=shutil.ignore_patterns("var"))
    async with LocalFederation(configs, tmp_path / "work") as federation:
        shanghai = config_file(SH, configs)
        text = re.sub(
            r'^endpoint = "[^"]+"',
            f'endpoint = "{federation.endpoint(SH)}"',
            shanghai.read_text("utf-8"),
            count=1,
            flags=re.M,
        )
        shanghai.write_text(text, "utf-8")
        env = {**os.environ, "YRD_ADMIN_TOKEN": f"dev-office-{SH}"}
        status, out, err = await run(
            "admin", "exchanges", "list", "--config", str(shanghai), env=env
        )
        assert status == 0, err
        assert out.startswith("REFERENCE")
        assert "0 exchange(s)" in err
        status, _, err = await run(
            "admin", "--config", str(tmp_path / "none.toml"), "peers", env=env
        )
        assert status == 2
        assert "none.toml" in err
