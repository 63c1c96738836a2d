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


def _http_json(url: str, body: dict[str, str] | None = None) -> object:
    import json
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback simulator
        url, data=data, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback simulator
        return json.loads(response.read())


def _worker_metrics(processes: ProcessFederation, code: str) -> list[str]:
    """The metrics text of each worker of node ``code`` (worker i: metrics port + i)."""
    import urllib.request

    node = processes.nodes[code]
    text = node.config.read_text(encoding="utf-8")
    host, port = text.split('metrics_endpoint = "', 1)[1].split('"', 1)[0].rsplit(":", 1)
    found = []
    for i in range(len(node.children())):
        url = f"http://{host}:{int(port) + i}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            found.append(response.read().decode())
    return found


def _sample(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_every_worker_holds_peers_and_calls_them(processes: ProcessFederation) -> None:
    """Worker 0 fetches the peers' descriptors; the other workers read the files it
    writes: each worker has Shanghai in force and makes cross-province calls to it."""
    from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

    assert len(processes.nodes[JS].children()) == 2
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            workers = _worker_metrics(processes, JS)
        except OSError:  # a worker still starting (health answered by another one)
            time.sleep(0.2)
            continue
        if all(_sample(m, "yrd_peer_descriptor_current", province=SH) == 1 for m in workers):
            break
        time.sleep(0.2)
    else:
        pytest.fail("a worker of 320000 never held Shanghai's descriptor")

    residents = _http_json(processes.simulators[SH].eid_url + "/residents")
    assert isinstance(residents, list)
    credential = next(r for r in residents if r["state"] == "CREDENTIAL_ACTIVE")["credential_id"]

    async def verify_once() -> int:
        qr = _http_json(
            processes.simulators[SH].eid_url + "/wallet/qr", {"credential_id": credential}
        )
        assert isinstance(qr, dict)
        async with processes.client_channel(JS, own_connection=True) as channel:
            answer = await identity_pb2_grpc.IdentityServiceStub(channel).VerifyIdentity(
                identity_pb2.VerifyIdentityRequest(
                    qr_payload=qr["qr_payload"],
                    relying_party_id=f"hotel-{JS}-001",
                    purpose=identity_pb2.HOTEL_CHECK_IN,
                ),
                metadata=(("authorization", f"Bearer dev-hotel-{JS}"),),
                timeout=10,
            )
        return int(answer.verdict)

    def calls_out(metrics: str) -> float:
        return _sample(metrics, "yrd_exchanges_total", peer=SH, direction="out", outcome="OK")

    verdicts = []
    for _ in range(40):  # fresh connections, spread over the workers by the kernel
        verdicts.append(asyncio.run(verify_once()))
        if all(calls_out(m) > 0 for m in _worker_metrics(processes, JS)):
            break
    assert set(verdicts) == {identity_pb2.VALID}
    per_worker = [calls_out(m) for m in _worker_metrics(processes, JS)]
    assert all(count > 0 for count in per_worker), per_worker
