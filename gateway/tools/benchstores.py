"""``yrd-gateway bench stores``: the store and replica dimension, in one run.

The same three provinces (Shanghai the hotel's and the applicant's node,
Zhejiang the e-ID issuer, Jiangsu the fund centre) as processes on loopback,
three times: on SQLite (one node each), on PostgreSQL with one replica each,
and on PostgreSQL with two replicas each (local clients and peers round-robin
over them). Each time: hotel verifications and withdrawals durably accepted,
per second at saturation (closed loop) and p50/p99 at half that rate (open
loop), with the CPU each process spent per call, PostgreSQL's server
processes included. Then the failover figures: two replicas of Shanghai and of
Jiangsu, one SIGKILLed every few seconds under load
(:meth:`gateway.tools.soak.SoakConfig.failover`).

PostgreSQL is a throw-away server of the bench's own (fsync on: the figures
include durable commits), on one machine with the nodes and the load
generator; figures are this machine's, not targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gateway.testing.postgres import PostgresServer, children_of
from gateway.testing.procfed import NodeProcess, ProcessFederation
from gateway.tools.bench import (
    HOTEL_METADATA,
    JS,
    OFFICE,
    SH,
    ZJ,
    PathFigures,
    _Applications,
    _measure,
    _pids,
    _Tokens,
)
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

NAMES = {SH: "Shanghai", JS: "Jiangsu", ZJ: "Zhejiang"}


@dataclass
class StoreRun:
    """One store set-up: its two measured paths."""

    name: str
    verify: PathFigures
    withdraw: PathFigures


@dataclass
class StoreFigures:
    seconds: float
    concurrency: int
    runs: list[StoreRun] = field(default_factory=list)
    failover: str = ""

    def render(self) -> str:
        lines = [
            f"stores and replicas: closed loop at concurrency {self.concurrency}, "
            f"{self.seconds:g} s each; p50/p99 in an open loop at half each path's own saturation",
            f"{'':34} {'verifications':>26}   {'withdrawals accepted':>26}",
            f"{'':34} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8}   "
            f"{'per s':>8} {'p50 ms':>8} {'p99 ms':>8}",
        ]
        for run in self.runs:
            v, w = run.verify, run.withdraw
            lines.append(
                f"{run.name:34} {v.saturation_rps:8.0f} {v.p50_ms:8.1f} {v.p99_ms:8.1f}"
                f"   {w.saturation_rps:8.0f} {w.p50_ms:8.1f} {w.p99_ms:8.1f}" + _failed(v, w)
            )
        lines.append("CPU ms per call, by process (verification / withdrawal):")
        for run in self.runs:
            lines.append(f"  {run.name}:")
            for process in run.verify.cpu_ms:
                lines.append(
                    f"    {process:30} {run.verify.cpu_ms[process]:6.2f} / "
                    f"{run.withdraw.cpu_ms.get(process, float('nan')):6.2f}"
                )
        if self.failover:
            lines += ["failover (two replicas each of Shanghai and Jiangsu):", self.failover]
        return "\n".join(lines)


def _failed(*paths: PathFigures) -> str:
    failed = sum(p.errors + p.failed for p in paths)
    return f"   ({failed} calls failed)" if failed else ""


#: (name, on PostgreSQL, replicas per province)
SETUPS = (
    ("SQLite, one node per province", False, 1),
    ("PostgreSQL, one replica", True, 1),
    ("PostgreSQL, two replicas", True, 2),
)


def bench_stores(
    *,
    seconds: float = 10.0,
    concurrency: int = 64,
    failover_seconds: float = 20.0,
    configs: Path | None = None,
) -> StoreFigures:
    """Measure every set-up of :data:`SETUPS` in one run, then the failover."""
    from gateway.testing.localfed import province_configs_dir
    from gateway.tools.soak import SoakConfig, run_soak

    root = province_configs_dir(configs)
    figures = StoreFigures(seconds, concurrency)
    with PostgresServer() as server:
        for number, (name, on_database, replicas) in enumerate(SETUPS):
            databases = (
                {code: server.create_database(f"bench_{number}_{code}") for code in NAMES}
                if on_database
                else {}
            )
            with tempfile.TemporaryDirectory(prefix="yrd-bench-") as tmp:
                federation = ProcessFederation(
                    Path(tmp),
                    tuple(NAMES),
                    configs=configs,
                    databases=databases,
                    replicas=dict.fromkeys(NAMES, replicas),
                )
                try:
                    federation.start(review_delay=0.0, payment_delay=0.0)
                    run = asyncio.run(
                        _measure_setup(
                            name,
                            federation,
                            root / ZJ / "keys",
                            server if on_database else None,
                            seconds=seconds,
                            concurrency=concurrency,
                        )
                    )
                finally:
                    federation.stop()
            figures.runs.append(run)
            print(f"  measured: {name}", flush=True)
        if failover_seconds > 0:
            report = run_soak(
                SoakConfig.failover(server.url(), seconds=failover_seconds), configs=configs
            )
            figures.failover = report.render()
    return figures


async def _measure_setup(
    name: str,
    federation: ProcessFederation,
    keys: Path,
    server: PostgresServer | None,
    *,
    seconds: float,
    concurrency: int,
) -> StoreRun:
    processes = _processes(federation, server)
    tokens = _Tokens(keys)
    supply: list[str] = []
    async with _channels(federation) as channel:
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        fund = fund_pb2_grpc.FundServiceStub(channel)

        async def verify() -> bool:
            if not supply:
                supply.extend(tokens.make(2000))
            try:
                answer = await identity.VerifyIdentity(
                    identity_pb2.VerifyIdentityRequest(
                        qr_payload=supply.pop(), purpose=identity_pb2.HOTEL_CHECK_IN
                    ),
                    metadata=HOTEL_METADATA,
                    timeout=10,
                )
            except grpc.aio.AioRpcError:
                return False
            return bool(answer.verdict == identity_pb2.VALID)

        verified = await _measure(
            f"{name}: hotel verification",
            verify,
            concurrency=concurrency,
            seconds=seconds,
            rate=None,
            processes=processes(),
        )
        applications = _Applications(federation.simulators[JS].fund_url)

        async def withdraw() -> bool:
            try:
                await fund.SubmitWithdrawal(
                    fund_pb2.SubmitWithdrawalRequest(application=applications.next()),
                    metadata=OFFICE,
                    timeout=10,
                )
            except grpc.aio.AioRpcError:
                return False
            return True

        withdrawn = await _measure(
            f"{name}: withdrawal accepted",
            withdraw,
            concurrency=concurrency,
            seconds=seconds,
            rate=None,
            processes=processes(),
        )
    return StoreRun(name, verified, withdrawn)


def _processes(
    federation: ProcessFederation, server: PostgresServer | None
) -> Callable[[], dict[str, list[int]]]:
    """The processes whose CPU is counted, read when a measurement starts (the
    PostgreSQL server's backends come and go with connections)."""

    def read() -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for code, replicas in federation.replica_nodes.items():
            for node in replicas:
                found[_label(code, node, len(replicas))] = _pids(node)
        for code, simulator in federation.simulators.items():
            if simulator.process is not None:
                found[f"{NAMES.get(code, code)} back-ends"] = [simulator.process.pid]
        if server is not None and server.pid is not None:
            found["PostgreSQL server"] = [server.pid, *children_of(server.pid)]
        return found

    return read


def _label(code: str, node: NodeProcess, replicas: int) -> str:
    name = f"{NAMES.get(code, code)} node"
    return name if replicas == 1 else f"{name} {node.replica}"


@contextlib.asynccontextmanager
async def _channels(federation: ProcessFederation) -> AsyncIterator[grpc.aio.Channel]:
    """A local client's channel to Shanghai (round-robin over its replicas)."""
    channel = federation.client_channel(SH)
    try:
        yield channel
    finally:
        await channel.close()
