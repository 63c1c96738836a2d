"""A node served by several worker processes on the same ports (SO_REUSEPORT):
exchanges succeed, the workers extend one hash chain, a replay is caught by
whichever worker receives it, and background work runs once."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.testing.procfed import ProcessFederation
from tests.integration.conftest import JS, SH, payee_account
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd_simulators.residents import synthetic_residents

OFFICE = (("authorization", f"Bearer dev-office-{SH}"),)
S = fund_pb2.WithdrawalStatus


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessFederation]:
    federation = ProcessFederation(tmp_path, (SH, JS))
    try:
        yield federation.start(workers={JS: 2}, review_delay=0.01, payment_delay=0.01)
    finally:
        federation.stop()


async def withdraw_all(processes: ProcessFederation, count: int) -> list[fund_pb2.Withdrawal]:
    names = {r.id_number: r.full_name for r in synthetic_residents(SH)}
    async with processes.client_channel(SH) as channel:
        stub = fund_pb2_grpc.FundServiceStub(channel)
        holder = None
        for account in await asyncio.to_thread(_accounts, processes):
            if account["id_number"] in names and account["status"].endswith("NORMAL"):
                holder = account
                break
        assert holder is not None
        cases = []
        for i in range(count):
            app = fund_pb2.WithdrawalApplication(
                idempotency_key=f"workers-{uuid.uuid4().hex}",
                applicant=common_pb2.Person(
                    id_number=holder["id_number"], full_name=names[holder["id_number"]]
                ),
                fund_province=JS,
                fund_account=holder["account"],
                reason=fund_pb2.RENT,
                amount_fen=100 + i,
                payee_account=payee_account(i),
                payee_bank="Bank",
            )
            cases.append(
                await stub.SubmitWithdrawal(
                    fund_pb2.SubmitWithdrawalRequest(application=app), metadata=OFFICE, timeout=5
                )
            )
        finals = []
        deadline = time.monotonic() + 60
        for case in cases:
            while case.status not in (S.PAID, S.REJECTED) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                case = await stub.GetWithdrawal(
                    fund_pb2.GetWithdrawalRequest(case_id=case.case_id), metadata=OFFICE, timeout=5
                )
            finals.append(case)
        return finals


def _accounts(processes: ProcessFederation) -> list[dict[str, str]]:
    import json
    import urllib.request

    url = processes.simulators[JS].fund_url + "/admin/accounts"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback simulator
        result: list[dict[str, str]] = json.loads(response.read())
        return result


async def resend(processes: ProcessFederation, envelope: bytes, times: int) -> list[str]:
    keys = processes.nodes[SH].config.parent / "keys"  # Shanghai's own keys
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(keys / "ca.crt.pem").read_bytes(),
        private_key=(keys / "tls.key.pem").read_bytes(),
        certificate_chain=(keys / "tls.crt.pem").read_bytes(),
    )
    text = processes.nodes[JS].config.read_text(encoding="utf-8")
    endpoint = text.split('federation_endpoint = "', 1)[1].split('"', 1)[0]
    codes = []
    for _ in range(times):  # a fresh connection each time: the kernel spreads them
        async with grpc.aio.secure_channel(endpoint, credentials) as channel:
            call = channel.unary_unary(
                "/yrd.federation.v1.FederationService/Exchange",
                request_serializer=None,
                response_deserializer=None,
            )
            try:
                await call(envelope, timeout=5)
                codes.append("OK")
            except grpc.aio.AioRpcError as error:
                codes.append(error.code().name)
    return codes


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_workers_serve_one_node(processes: ProcessFederation) -> None:
    node = processes.nodes[JS]
    assert len(node.children()) == 2
    finals = asyncio.run(withdraw_all(processes, 30))
    assert [f.status for f in finals] == [S.PAID] * 30

    database = processes.root / "var" / JS / "messages.db"
    with sqlite3.connect(database) as db:
        row = db.execute(
            "SELECT envelope FROM message_log WHERE direction = 'in' AND kind = 'request'"
            " ORDER BY seq LIMIT 1"
        ).fetchone()
    codes = asyncio.run(resend(processes, bytes(row[0]), 6))
    assert codes == ["ALREADY_EXISTS"] * 6

    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "audit",
            "verify",
            str(database),
            "--config",
            str(node.config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "intact" in verify.stdout
    payments = asyncio.run(asyncio.to_thread(_payments, processes))
    assert len(payments) == 30  # background work ran once, not once per worker


def _payments(processes: ProcessFederation) -> list[object]:
    import json
    import urllib.request

    url = processes.simulators[JS].fund_url + "/admin/payments"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback simulator
        result: list[object] = json.loads(response.read())
        return result
