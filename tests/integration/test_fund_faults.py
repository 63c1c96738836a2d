"""Withdrawals survive node crashes: ≥ 200 applications while the fund province's
node and the applicant's node are SIGKILLed and restarted at random moments.

Every accepted application reaches a final state, the fund centre pays each at
most once, and balances add up.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.request
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
N = 200
RATE = 20.0  # submissions per second: the run spans about ten seconds of chaos


def admin(url: str, path: str) -> object:
    with urllib.request.urlopen(url + path, timeout=10) as response:  # noqa: S310 - loopback simulator
        return json.loads(response.read())


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessFederation]:
    federation = ProcessFederation(tmp_path, (SH, JS))
    try:
        yield federation.start(review_delay=0.02, payment_delay=0.02)
    finally:
        federation.stop()


def chaos(processes: ProcessFederation, stop: threading.Event, seed: int) -> None:
    """Kill and restart both nodes at random moments until told to stop."""
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(0.5, 1.5)):
        node = processes.nodes[rng.choice([SH, JS, JS])]
        node.kill()
        time.sleep(rng.uniform(0.05, 0.6))
        node.start()
        node.wait_serving()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_withdrawals_survive_sigkill_of_both_nodes(processes: ProcessFederation) -> None:
    fund_url = processes.simulators[JS].fund_url
    accounts = admin(fund_url, "/admin/accounts")
    assert isinstance(accounts, list)
    names = {r.id_number: r.full_name for r in synthetic_residents(SH)}
    holders = [a for a in accounts if a["id_number"] in names and a["status"].endswith("NORMAL")]
    assert holders, "the Jiangsu fund centre should hold accounts of Shanghai residents"
    balances_before = {a["account"]: a["balance_fen"] for a in holders}
    rng = random.Random(20261126)
    applications = []
    for i in range(N):
        holder = holders[i % len(holders)]
        applications.append(
            fund_pb2.WithdrawalApplication(
                idempotency_key=f"chaos-{i}-{uuid.uuid4().hex[:8]}",
                applicant=common_pb2.Person(
                    id_number=holder["id_number"], full_name=names[holder["id_number"]]
                ),
                fund_province=JS,
                fund_account=holder["account"],
                reason=fund_pb2.RENT,
                amount_fen=rng.randint(100, 50_000),
                payee_account=payee_account(i),
                payee_bank="Bank of Shanghai",
            )
        )

    stop = threading.Event()
    killer = threading.Thread(target=chaos, args=(processes, stop, 7), daemon=True)
    killer.start()
    try:
        case_ids = asyncio.run(submit_all(processes, applications))
        # On a loaded machine restarts are slow and the submissions may all be
        # accepted before three kills: keep the chaos going (while deliveries
        # and payments flow) until it has killed three times.
        waited = time.monotonic() + 120
        while processes.nodes[JS].kills + processes.nodes[SH].kills < 3:
            assert time.monotonic() < waited, "the chaos thread should kill three times"
            time.sleep(0.2)
    finally:
        stop.set()
        killer.join(timeout=60)
    for node in processes.nodes.values():
        if node.process is None or node.process.poll() is not None:
            node.start()
        node.wait_serving()
    assert processes.nodes[JS].kills + processes.nodes[SH].kills >= 3

    finals = asyncio.run(wait_final(processes, case_ids, seconds=150))
    not_final = {
        k: S.Name(v.status) for k, v in finals.items() if v.status not in (S.PAID, S.REJECTED)
    }
    assert not_final == {}

    print(
        f"SIGKILLs: Jiangsu node {processes.nodes[JS].kills}, Shanghai node "
        f"{processes.nodes[SH].kills}; {len(finals)} cases final, "
        f"{sum(v.status == S.PAID for v in finals.values())} paid"
    )
    payments = admin(fund_url, "/admin/payments")
    assert isinstance(payments, list)
    references = [p["reference"] for p in payments]
    assert len(references) == len(set(references)), "a reference was paid twice"
    paid = {k: v for k, v in finals.items() if v.status == S.PAID}
    assert len(payments) == len(paid)
    by_key = {a.idempotency_key: a for a in applications}
    for case in paid.values():
        assert case.paid_amount_fen == by_key[case.idempotency_key].amount_fen
    after = {
        a["account"]: a["balance_fen"]
        for a in admin(fund_url, "/admin/accounts")  # type: ignore[union-attr]
        if a["account"] in balances_before
    }
    for account, before in balances_before.items():
        spent = sum(p["amount_fen"] for p in payments if p["account"] == account)
        assert after[account] == before - spent, account


async def submit_all(
    processes: ProcessFederation, applications: list[fund_pb2.WithdrawalApplication]
) -> list[str]:
    """Submit every application, retrying (same key) while the node is down."""
    limit = asyncio.Semaphore(16)
    async with processes.client_channel(SH) as channel:
        stub = fund_pb2_grpc.FundServiceStub(channel)

        async def one(index: int, app: fund_pb2.WithdrawalApplication) -> str:
            # Open loop at RATE per second, so the kills land among the submissions.
            await asyncio.sleep(index / RATE)
            async with limit:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        case = await stub.SubmitWithdrawal(
                            fund_pb2.SubmitWithdrawalRequest(application=app),
                            metadata=OFFICE,
                            timeout=5,
                        )
                        return str(case.case_id)
                    except grpc.aio.AioRpcError as error:
                        if error.code() not in (
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.CANCELLED,
                        ):
                            raise
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)

        return list(await asyncio.gather(*(one(i, a) for i, a in enumerate(applications))))


async def wait_final(
    processes: ProcessFederation, case_ids: list[str], seconds: float
) -> dict[str, fund_pb2.Withdrawal]:
    results: dict[str, fund_pb2.Withdrawal] = {}
    deadline = time.monotonic() + seconds
    async with processes.client_channel(SH) as channel:
        stub = fund_pb2_grpc.FundServiceStub(channel)
        while time.monotonic() < deadline:
            pending = [
                c
                for c in case_ids
                if c not in results or results[c].status not in (S.PAID, S.REJECTED)
            ]
            if not pending:
                break
            for case_id in pending:
                results[case_id] = await stub.GetWithdrawal(
                    fund_pb2.GetWithdrawalRequest(case_id=case_id), metadata=OFFICE, timeout=5
                )
            await asyncio.sleep(0.5)
    return results
