"""``yrd-gateway bench``: figures, measured on this machine, never asserted.

``bench fund`` starts the Shanghai and Jiangsu nodes and Jiangsu's simulators as
separate processes on loopback, then measures from this process:

- accepted withdrawals per second: ``SubmitWithdrawal`` calls answered (each
  answer means the case and its outbox item are committed to disk), closed loop
  at a fixed concurrency;
- the time from submit to ``PAID`` (median, p99) at a fixed open-loop rate with
  the peer up, as recorded by the applicant's node (``submitted_at`` to the
  ``updated_at`` of the PAID status).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from stdnum import luhn

from adapters.simulators.residents import synthetic_residents
from gateway.procfed import ProcessFederation
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc

SH, JS = "310000", "320000"
OFFICE = (("authorization", f"Bearer dev-office-{SH}"),)
S = fund_pb2.WithdrawalStatus


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class FundFigures:
    accepted: int
    accept_seconds: float
    concurrency: int
    paid: int
    rate: float
    latencies_ms: list[float]
    drained: int
    drain_seconds: float

    def render(self) -> str:
        lines = [
            "withdrawal submission (SubmitWithdrawal answered = durably committed)",
            f"  accepted:            {self.accepted} in {self.accept_seconds:.2f} s at concurrency "
            f"{self.concurrency}",
            f"  accepted per second: {self.accepted / self.accept_seconds:.0f}",
            f"  backlog final at the applicant's node: {self.drained} withdrawals by "
            f"{self.drain_seconds:.1f} s after the first submit "
            f"({self.drained / self.drain_seconds:.0f} per second end to end)",
            f"submit -> PAID at {self.rate:.0f}/s open loop, peer up ({self.paid} cases)",
            f"  median: {statistics.median(self.latencies_ms):.0f} ms",
            f"  p99:    {percentile(self.latencies_ms, 0.99):.0f} ms",
        ]
        return "\n".join(lines)


class _Applications:
    def __init__(self, fund_url: str) -> None:
        with urllib.request.urlopen(fund_url + "/admin/accounts", timeout=10) as response:  # noqa: S310 - loopback simulator
            accounts = json.loads(response.read())
        names = {r.id_number: r.full_name for r in synthetic_residents(SH)}
        self._holders = [
            a for a in accounts if a["id_number"] in names and str(a["status"]).endswith("NORMAL")
        ]
        self._names = names
        self._i = 0
        body = "622202020011223344"
        self._payee = body + luhn.calc_check_digit(body)

    def next(self) -> fund_pb2.WithdrawalApplication:
        holder = self._holders[self._i % len(self._holders)]
        self._i += 1
        return fund_pb2.WithdrawalApplication(
            idempotency_key=f"bench-{uuid.uuid4().hex}",
            applicant=common_pb2.Person(
                id_number=holder["id_number"], full_name=self._names[holder["id_number"]]
            ),
            fund_province=JS,
            fund_account=holder["account"],
            reason=fund_pb2.RENT,
            amount_fen=100,
            payee_account=self._payee,
            payee_bank="Bank of Shanghai",
        )


async def _accept(
    stub: fund_pb2_grpc.FundServiceStub,
    apps: _Applications,
    count: int,
    concurrency: int,
    case_ids: list[str],
) -> float:
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            case = await stub.SubmitWithdrawal(
                fund_pb2.SubmitWithdrawalRequest(application=apps.next()),
                metadata=OFFICE,
                timeout=30,
            )
            case_ids.append(case.case_id)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def _wait_final(
    stub: fund_pb2_grpc.FundServiceStub, case_ids: list[str], seconds: float
) -> int:
    """Wait until the applicant's node has recorded a final status for every case."""
    deadline = time.monotonic() + seconds
    done = 0
    for case_id in case_ids:
        while time.monotonic() < deadline:
            case = await stub.GetWithdrawal(
                fund_pb2.GetWithdrawalRequest(case_id=case_id), metadata=OFFICE, timeout=30
            )
            if case.status in (S.PAID, S.REJECTED):
                done += 1
                break
            await asyncio.sleep(0.25)
    return done


async def _to_paid(
    stub: fund_pb2_grpc.FundServiceStub, apps: _Applications, count: int, rate: float
) -> list[float]:
    """Submit at ``rate`` per second; latency is the applicant node's own record:
    from ``submitted_at`` to the ``updated_at`` at which it recorded PAID. Polling
    for completion is slow (0.2 s) so that it does not load the node it measures."""
    latencies: list[float] = []

    async def one() -> None:
        case = await stub.SubmitWithdrawal(
            fund_pb2.SubmitWithdrawalRequest(application=apps.next()), metadata=OFFICE, timeout=30
        )
        while case.status not in (S.PAID, S.REJECTED):
            await asyncio.sleep(0.2)
            case = await stub.GetWithdrawal(
                fund_pb2.GetWithdrawalRequest(case_id=case.case_id), metadata=OFFICE, timeout=30
            )
        if case.status == S.PAID:
            elapsed = case.updated_at.ToDatetime() - case.submitted_at.ToDatetime()
            latencies.append(elapsed.total_seconds() * 1000)

    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)
    return latencies


async def _run_fund(
    federation: ProcessFederation, count: int, concurrency: int, paid_count: int, rate: float
) -> FundFigures:
    apps = _Applications(federation.simulators[JS].fund_url)
    async with federation.client_channel(SH) as channel:
        stub = fund_pb2_grpc.FundServiceStub(channel)
        case_ids: list[str] = []
        await _accept(stub, apps, min(50, count), concurrency, case_ids)  # warm-up
        started = time.perf_counter()
        seconds = await _accept(stub, apps, count, concurrency, case_ids)
        # The accepted backlog is delivered, reviewed, paid and reported back
        # asynchronously; wait for all of it so that the latency run below does
        # not queue behind it.
        drained = await _wait_final(stub, case_ids, 600)
        drain_seconds = time.perf_counter() - started
        latencies = await _to_paid(stub, apps, paid_count, rate)
    return FundFigures(
        count, seconds, concurrency, len(latencies), rate, latencies, drained, drain_seconds
    )


def bench_fund(
    *, count: int = 2000, concurrency: int = 64, paid_count: int = 200, rate: float = 20.0
) -> FundFigures:
    with tempfile.TemporaryDirectory(prefix="yrd-bench-") as tmp:
        federation = ProcessFederation(Path(tmp), (SH, JS))
        try:
            federation.start(review_delay=0.0, payment_delay=0.0)
            return asyncio.run(
                _run_fund(
                    federation,
                    count,
                    concurrency,
                    paid_count,
                    rate,
                )
            )
        finally:
            federation.stop()
