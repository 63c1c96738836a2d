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
import contextlib
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from stdnum import luhn

from gateway.storage.threads import PREFIX as STORE_THREAD_PREFIX
from gateway.testing.procfed import NodeProcess, ProcessFederation
from gateway.tools.benchchain import BaselineChain
from gateway.tools.interrupt import stop_if_cancelled
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd_simulators.residents import synthetic_residents

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
    #: SubmitWithdrawal answers at a fixed open-loop rate (half the accepted rate).
    submit_rate: float = 0.0
    submit_latencies_ms: list[float] = field(default_factory=list)
    submit_failed: int = 0
    rss_mb: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: The baseline chain's saturation in the same run (calls/s).
    baseline_rps: float = 0.0

    def render(self) -> str:
        lines = [
            "withdrawal submission (SubmitWithdrawal answered = durably committed)",
            f"  accepted:            {self.accepted} in {self.accept_seconds:.2f} s at concurrency "
            f"{self.concurrency}",
            f"  accepted per second: {self.accepted / self.accept_seconds:.0f}",
            f"  backlog final at the applicant's node: {self.drained} withdrawals by "
            f"{self.drain_seconds:.1f} s after the first submit "
            f"({self.drained / self.drain_seconds:.0f} per second end to end)",
        ]
        if self.baseline_rps:
            ratio = self.accepted / self.accept_seconds / self.baseline_rps
            lines.append(
                f"  ratio accepted/baseline: {ratio:.2f} "
                f"(baseline chain {self.baseline_rps:.0f} calls/s in this run)"
            )
        if self.submit_rate:
            lines.append(
                f"  at {self.submit_rate:.0f}/s:    p50 "
                f"{percentile(self.submit_latencies_ms, 0.5):6.1f} ms   p99 "
                f"{percentile(self.submit_latencies_ms, 0.99):6.1f} ms   (answered, open loop)"
                + _failed(self.submit_failed)
            )
        lines += [
            f"submit -> PAID at {self.rate:.0f}/s open loop, peer up ({self.paid} cases)",
            f"  median: {statistics.median(self.latencies_ms):.0f} ms",
            f"  p99:    {percentile(self.latencies_ms, 0.99):.0f} ms",
        ]
        if self.rss_mb:
            lines.append("node memory after (RSS now / peak):")
            lines += _memory_lines(self.rss_mb)
        return "\n".join(lines)

    def summary(self) -> dict[str, float]:
        """This run's figures for the ``--runs`` summary table."""
        if not self.baseline_rps:
            return {}
        accepted = self.accepted / self.accept_seconds
        return {"withdrawals accepted / baseline calls per second": accepted / self.baseline_rps}


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


class _FundStubs:
    """FundService over several channels, each call on the next one."""

    def __init__(self, channels: list[grpc.aio.Channel]) -> None:
        self._stubs = itertools.cycle([fund_pb2_grpc.FundServiceStub(c) for c in channels])

    def __getattr__(self, method: str) -> Any:
        return getattr(next(self._stubs), method)


async def _accept(
    stub: _FundStubs,
    apps: _Applications,
    count: int,
    concurrency: int,
    case_ids: list[str],
) -> float:
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            stop_if_cancelled()
            case = await stub.SubmitWithdrawal(
                fund_pb2.SubmitWithdrawalRequest(application=apps.next()),
                metadata=OFFICE,
                timeout=30,
            )
            case_ids.append(case.case_id)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def _wait_final(stub: _FundStubs, case_ids: list[str], seconds: float) -> int:
    """Wait until the applicant's node has recorded a final status for every case."""
    deadline = time.monotonic() + seconds
    done = 0
    for case_id in case_ids:
        while time.monotonic() < deadline:
            stop_if_cancelled()
            case = await stub.GetWithdrawal(
                fund_pb2.GetWithdrawalRequest(case_id=case_id), metadata=OFFICE, timeout=30
            )
            if case.status in (S.PAID, S.REJECTED):
                done += 1
                break
            await asyncio.sleep(0.25)
    return done


async def _to_paid(stub: _FundStubs, apps: _Applications, count: int, rate: float) -> list[float]:
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
    federation: ProcessFederation,
    count: int,
    concurrency: int,
    paid_count: int,
    rate: float,
    seconds: float,
    connections: int,
) -> FundFigures:
    apps = _Applications(federation.simulators[JS].fund_url)
    async with _connections(federation, SH, connections) as channels:
        stub = _FundStubs(channels)
        warm_up: list[str] = []
        await _accept(stub, apps, min(50, count), concurrency, warm_up)
        await _wait_final(stub, warm_up, 600)
        case_ids: list[str] = []
        started = time.perf_counter()
        accept_seconds = await _accept(stub, apps, count, concurrency, case_ids)
        # The accepted backlog is delivered, reviewed, paid and reported back
        # asynchronously; wait for all of it so that the runs below do not
        # queue behind it.
        drained = await _wait_final(stub, case_ids, 600)
        drain_seconds = time.perf_counter() - started

        submitted: list[str] = []

        async def submit() -> bool:
            try:
                case = await stub.SubmitWithdrawal(
                    fund_pb2.SubmitWithdrawalRequest(application=apps.next()),
                    metadata=OFFICE,
                    timeout=10,
                )
            except grpc.aio.AioRpcError:
                return False
            submitted.append(case.case_id)
            return True

        submit_rate = count / accept_seconds / 2
        submit_latencies, submit_failed = await _open_loop(submit, submit_rate, seconds)
        await _wait_final(stub, submitted, 600)
        latencies = await _to_paid(stub, apps, paid_count, rate)
    return FundFigures(
        count,
        accept_seconds,
        concurrency,
        len(latencies),
        rate,
        latencies,
        drained,
        drain_seconds,
        submit_rate,
        submit_latencies,
        submit_failed,
        node_memory(federation),
    )


def bench_fund(
    *,
    count: int = 2000,
    concurrency: int = 64,
    paid_count: int = 200,
    rate: float = 20.0,
    seconds: float = 10.0,
    workers: int = 1,
    baseline_rps: float | None = None,
    configs: Path | None = None,
) -> FundFigures:
    """``baseline_rps``: the baseline chain's saturation measured earlier in the same
    run; without it the chain is started and measured here first. ``configs``: the
    province configs (default ``province_configs_dir()``)."""
    from gateway.testing.localfed import province_configs_dir

    if baseline_rps is None:
        chain = BaselineChain(province_configs_dir(configs))
        try:
            chain.start()
            baseline_rps = asyncio.run(_chain_saturation(chain, concurrency, seconds))
        finally:
            chain.stop()
    with tempfile.TemporaryDirectory(prefix="yrd-bench-") as tmp:
        federation = ProcessFederation(Path(tmp), (SH, JS), configs=configs)
        try:
            federation.start(
                workers={SH: workers, JS: workers}, review_delay=0.0, payment_delay=0.0
            )
            figures = asyncio.run(
                _run_fund(
                    federation,
                    count,
                    concurrency,
                    paid_count,
                    rate,
                    seconds,
                    1 if workers == 1 else 4 * workers,
                )
            )
        finally:
            federation.stop()
    figures.baseline_rps = baseline_rps
    return figures


# ---- hotel verification against the baseline chain ------------------------------------

ZJ = "330000"
HOTEL_METADATA = (("authorization", f"Bearer dev-office-{SH}"),)


@dataclass
class PathFigures:
    name: str
    saturation_rps: float
    errors: int
    rate: float
    p50_ms: float
    p99_ms: float
    #: Calls of the open loop at ``rate`` that failed: refused by an overloaded
    #: node (RESOURCE_EXHAUSTED) or timed out; latencies are of the others.
    failed: int = 0
    #: The open loop at half the path's own saturation (a rate it sustains), if
    #: measured: latencies, busy share, CPU per call, the nodes' series.
    own: OpenLoop | None = None
    #: CPU milliseconds per call of each process during the saturation run.
    cpu_ms: dict[str, float] = field(default_factory=dict)
    #: The same, split by thread group (:data:`THREAD_GROUPS`), per process.
    thread_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Deltas of the nodes' (sum, count) series over the saturation run (see
    #: :func:`_totals`).
    saturation_series: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class OpenLoop:
    """An open-loop run at a fixed rate: latencies of the calls answered."""

    rate: float
    p50_ms: float
    p99_ms: float
    failed: int
    #: Deltas of the nodes' (sum, count) series over the run.
    series: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: The share of the machine's cores busy during the run.
    busy: float = float("nan")
    #: CPU milliseconds per answered call of each process named, over the run.
    cpu_ms: dict[str, float] = field(default_factory=dict)

    def line(self, note: str) -> str:
        return (
            f"  at {self.rate:.0f}/s:    p50 {self.p50_ms:6.1f} ms   p99 {self.p99_ms:6.1f} ms   "
            f"({note})" + _failed(self.failed)
        )


#: The open-loop rate of the low-load run: a lone check-in must not wait for a batch.
LOW_RATE = 10.0


def interpreter() -> str:
    """The Python every process of the bench runs on (nodes, chain, load
    generator): its version, build and executable. How it was built moves the
    figures more than most changes to the code (docs/performance.md section 17):
    compare only figures measured on the same interpreter."""
    return (
        f"{platform.python_implementation()} {platform.python_version()} "
        f"({os.path.realpath(sys.executable)}; built {platform.python_build()[1]} "
        f"with {platform.python_compiler()})"
    )


def build() -> str:
    """Whether the nodes' verification path runs compiled (``make compiled``) or as
    Python: the second thing, after the interpreter, that figures depend on
    (docs/performance.md section 18)."""
    from gateway.compiled import MODULES, compiled_modules

    compiled = compiled_modules()
    if not compiled:
        return "pure Python (make compiled: the verification path compiled with mypyc)"
    return f"{len(compiled)} of {len(MODULES)} modules of the verification path compiled with mypyc"


#: Which hop of the baseline chain each hop of the real path is compared with.
_DO_NOTHING = (
    ("Shanghai node", "proxy 1"),
    ("Zhejiang node", "proxy 2"),
    ("e-ID authority", "echo"),
)


@dataclass
class IdentityFigures:
    concurrency: int
    seconds: float
    baseline: PathFigures
    real: PathFigures
    soak_calls: int
    soak_rps: float
    rss_mb: dict[str, tuple[float, float]]
    rows_per_commit: float
    #: Mean time of each hop (ms) from the nodes' own histograms, at ``hops_rate``.
    hops_ms: dict[str, float] = field(default_factory=dict)
    hops_rate: float = 0.0
    #: The baseline chain open loop at the real path's half saturation.
    baseline_same_rate: OpenLoop | None = None
    #: The real path at a low rate (:data:`LOW_RATE`).
    low: OpenLoop | None = None

    def cpu_above(self) -> dict[str, float]:
        """CPU ms per call of each hop of the real path minus its do-nothing twin's."""
        return {
            real: self.real.cpu_ms[real] - self.baseline.cpu_ms[twin]
            for real, twin in _DO_NOTHING
            if real in self.real.cpu_ms and twin in self.baseline.cpu_ms
        }

    def batch_sizes(self) -> dict[str, dict[str, float]]:
        """Mean envelopes per stream frame at each load, per sending node (nan: none sent)."""
        loads = {"saturation": self.real.saturation_series}
        own = self.real.own
        if own is not None:
            loads[f"half capacity ({own.rate:.0f}/s)"] = own.series
        if self.low is not None:
            loads[f"low load ({self.low.rate:.0f}/s)"] = self.low.series
        return {
            load: {name: _mean(series, name) for name, *_ in _BATCHES}
            for load, series in loads.items()
        }

    def cpu_at_half(self) -> dict[str, float]:
        """CPU ms per call at the real path's half saturation of each node and of its
        do-nothing twin (the baseline chain's open loop at that same rate)."""
        if self.baseline_same_rate is None or self.real.own is None:
            return {}
        mine, theirs = self.real.own.cpu_ms, self.baseline_same_rate.cpu_ms
        pairs = [pair for pair in _DO_NOTHING[:2] if pair[0] in mine and pair[1] in theirs]
        return {name: (mine | theirs)[name] for pair in pairs for name in pair}

    def p99_ratio(self) -> float:
        """The real path's p99 at half its own saturation over the baseline's at that rate."""
        if self.baseline_same_rate is None or self.real.own is None:
            return float("nan")
        return self.real.own.p99_ms / self.baseline_same_rate.p99_ms

    def summary(self) -> dict[str, float]:
        """This run's figures for the ``--runs`` summary table."""
        figures = {
            "throughput ratio real/baseline": self.real.saturation_rps
            / self.baseline.saturation_rps,
        }
        for name, ms in self.cpu_above().items():
            figures[f"CPU ms above do-nothing: {name}"] = ms
        # The window: how fast the machine ran the do-nothing hops in this run.
        for _, twin in _DO_NOTHING[:2]:
            if twin in self.baseline.cpu_ms:
                figures[f"CPU ms per call at saturation: {twin}"] = self.baseline.cpu_ms[twin]
        figures["p99 ratio at half the real capacity"] = self.p99_ratio()
        if self.baseline_same_rate is not None and self.real.own is not None:
            figures["cores busy % there: real path"] = 100 * self.real.own.busy
            figures["cores busy % there: baseline chain"] = 100 * self.baseline_same_rate.busy
            for name, ms in self.cpu_at_half().items():
                figures[f"CPU ms per call there: {name}"] = ms
        if self.low is not None:
            figures[f"p50 ms at {self.low.rate:.0f}/s (real path)"] = self.low.p50_ms
        for load, sizes in self.batch_sizes().items():
            for name, size in sizes.items():
                figures[f"mean batch {name}, {load.partition(' (')[0]}"] = size
        if self.soak_calls:
            figures[f"RSS MB after {self.soak_calls} verifications, largest node"] = max(
                (now for now, _ in self.rss_mb.values()), default=float("nan")
            )
        return figures

    def _by_thread(self, real: str, twin: str) -> str:
        """Where ``real``'s CPU above ``twin``'s is, by thread group (ms per call;
        empty when either was not split)."""
        mine, theirs = self.real.thread_ms.get(real), self.baseline.thread_ms.get(twin)
        if not mine or not theirs:
            return ""
        return ": " + ", ".join(
            f"{group} {mine[group] - theirs[group]:+.2f}" for group in THREAD_GROUPS
        )

    def render(self) -> str:
        b, r = self.baseline, self.real
        lines = [
            f"saturation: closed loop, concurrency {self.concurrency}, {self.seconds:g} s each; "
            f"latency: open loop at {b.rate:.0f}/s (half the baseline's saturation)",
        ]
        for path in (b, r):
            lines += [
                path.name,
                f"  saturation:   {path.saturation_rps:8.0f} calls/s   ({path.errors} errors)",
            ]
            if path.cpu_ms:
                lines.append(
                    "  CPU per call: "
                    + ", ".join(f"{name} {ms:.2f} ms" for name, ms in path.cpu_ms.items())
                    + f"; total {sum(path.cpu_ms.values()):.2f} ms"
                )
            split = [name for name in path.thread_ms if name != "load generator"]
            if split:
                lines.append(
                    f"  by thread ({' / '.join(THREAD_GROUPS)}): "
                    + ", ".join(
                        f"{name} "
                        + " / ".join(f"{path.thread_ms[name][g]:.2f}" for g in THREAD_GROUPS)
                        for name in split
                    )
                    + " ms"
                )
            lines.append(
                f"  at {path.rate:.0f}/s:    p50 {path.p50_ms:6.1f} ms   p99 {path.p99_ms:6.1f} ms"
                + _failed(path.failed)
            )
            if path.own is not None:
                lines.append(path.own.line("half its own saturation"))
            if path is b and self.baseline_same_rate is not None:
                lines.append(
                    self.baseline_same_rate.line("the real path's half saturation, open loop")
                )
        if self.low is not None:
            lines.append(self.low.line("low load, open loop"))
        lines += [
            f"ratio real/baseline: throughput {r.saturation_rps / b.saturation_rps:.2f} "
            f"(target >= 0.5), p99 {r.p99_ms / b.p99_ms:.2f} at the baseline's half saturation",
        ]
        if self.baseline_same_rate is not None and r.own is not None:
            same = self.baseline_same_rate
            lines += [
                f"p99 at half the real path's saturation ({same.rate:.0f}/s): real "
                f"{r.own.p99_ms:.1f} ms, baseline {same.p99_ms:.1f} ms, ratio "
                f"{self.p99_ratio():.2f} (target <= 2)" + _failed(same.failed),
                # What makes that ratio: how loaded the machine is at that rate.
                f"  the machine's cores busy at that rate: real path {r.own.busy:.0%}, "
                f"baseline chain {same.busy:.0%}",
            ]
            at_half = self.cpu_at_half()
            if at_half:
                # Why so busy: a call costs more CPU at that rate than at saturation.
                lines.append(
                    "  CPU ms per call at that rate (at saturation): "
                    + ", ".join(
                        f"{name} {ms:.2f} ({(r.cpu_ms | b.cpu_ms).get(name, float('nan')):.2f})"
                        for name, ms in at_half.items()
                    )
                )
        above = self.cpu_above()
        if above:
            lines.append(
                "gateway CPU per verification above a do-nothing hop (target <= 0.6 ms per node):"
            )
            lines += [
                f"  {real}: {above[real]:.2f} ms ({r.cpu_ms[real]:.2f} - {twin} "
                f"{b.cpu_ms[twin]:.2f})" + self._by_thread(real, twin)
                for real, twin in _DO_NOTHING
                if real in above
            ]
        lines.append("mean batch size (envelopes per stream frame, by sending node):")
        lines += [
            f"  {load}: " + ", ".join(f"{name} {_size(size)}" for name, size in sizes.items())
            for load, sizes in self.batch_sizes().items()
        ]
        lines += [
            f"soak: {self.soak_calls} verifications at {self.soak_rps:.0f}/s; node memory after "
            "(RSS now / peak; target <= 150 MB per node after 100000):",
            *_memory_lines(self.rss_mb),
            f"message log: {self.rows_per_commit:.1f} rows per commit (grouped writes) "
            "at the Shanghai node",
        ]
        if self.hops_ms:
            lines.append(
                f"where a verification's time goes at {self.hops_rate:.0f}/s (means, from the "
                "nodes' histograms):"
            )
            lines += [f"  {name}: {ms:.2f} ms" for name, ms in self.hops_ms.items()]
        low_hops = self.low_hops_ms()
        if low_hops and self.low is not None:
            lines.append(f"where a lone verification's time goes at {self.low.rate:.0f}/s (means):")
            lines += [f"  {name}: {ms:.2f} ms" for name, ms in low_hops.items()]
        return "\n".join(lines)

    def low_hops_ms(self) -> dict[str, float]:
        """Each hop's mean (ms) over the low-load run: what a lone verification waits for."""
        return {} if self.low is None else _hop_means(self.low.series)


def _hop_means(series: dict[str, tuple[float, float]]) -> dict[str, float]:
    """The mean (ms) of each hop of :data:`_HOPS` that has samples in ``series``."""
    return {
        name: _mean(series, name) * 1000
        for name, *_ in _HOPS
        if series.get(name, (0.0, 0.0))[1] > 0
    }


def _memory_lines(rss: dict[str, tuple[float, float]]) -> list[str]:
    return [f"  {name}: {now:.0f} MB / {peak:.0f} MB" for name, (now, peak) in sorted(rss.items())]


def _failed(count: int) -> str:
    return f"   ({count} refused or timed out)" if count else ""


def _mean(series: dict[str, tuple[float, float]], name: str) -> float:
    total, count = series.get(name, (0.0, 0.0))
    return total / count if count else float("nan")


def _size(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f}"  # nan: no sample


def summary_table(runs: list[dict[str, float]]) -> str:
    """min / median / max of each figure over the runs (n/a where a run had none)."""
    names = list(dict.fromkeys(name for run in runs for name in run))
    rows = []
    for name in names:
        values = sorted(v for run in runs if (v := run.get(name, float("nan"))) == v)
        cells = (
            [f"{values[0]:.2f}", f"{statistics.median(values):.2f}", f"{values[-1]:.2f}"]
            if values
            else ["n/a"] * 3
        )
        rows.append((name, *cells))
    width = max((len(row[0]) for row in rows), default=6)
    lines = [
        f"summary of {len(runs)} run(s)",
        f"  {'figure':<{width}}  {'min':>7}  {'median':>7}  {'max':>7}",
    ]
    lines += [f"  {name:<{width}}  {low:>7}  {mid:>7}  {high:>7}" for name, low, mid, high in rows]
    return "\n".join(lines)


def cpu_seconds(*pids: int) -> float:
    """User + system CPU time of processes so far, from /proc (0 for one that is gone)."""
    seconds = 0.0
    for pid in pids:
        try:
            seconds += _stat_seconds(Path(f"/proc/{pid}/stat").read_text())
        except OSError:
            continue
    return seconds


def _stat_seconds(stat: str) -> float:
    """User + system CPU seconds of a /proc ``stat`` line (a process's or a thread's)."""
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """The machine's CPU time so far, all cores: (every tick, idle and iowait
    ticks), from /proc/stat ((0, 0) where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0, 0
    ticks = [int(f) for f in fields]
    return sum(ticks), ticks[3] + ticks[4]


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's cores busy between two :func:`machine_ticks`
    (nan when nothing was counted)."""
    total = after[0] - before[0]
    if total <= 0:
        return float("nan")
    return 1 - (after[1] - before[1]) / total


#: How a process's CPU is split by thread (kernel names, /proc/<pid>/task/<tid>/comm):
#: the main thread, which runs the event loop in every served process; the
#: stores' threads (writers, PostgreSQL readers: gateway.storage.threads); and
#: the rest (gRPC's poller and event engine, libuv's workers, executors).
THREAD_GROUPS = ("event loop", "store threads", "other threads")


def thread_cpu(*pids: int) -> dict[tuple[int, int], tuple[str, float]]:
    """CPU seconds so far of every thread of the processes, by (pid, tid), with
    its group of :data:`THREAD_GROUPS` (threads that are gone are not counted)."""
    threads: dict[tuple[int, int], tuple[str, float]] = {}
    for pid in pids:
        try:
            tids = [int(entry.name) for entry in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            task = Path(f"/proc/{pid}/task/{tid}")
            try:
                name = (task / "comm").read_text().strip()
                seconds = _stat_seconds((task / "stat").read_text())
            except OSError:
                continue
            if tid == pid:
                group = THREAD_GROUPS[0]
            elif name.startswith(STORE_THREAD_PREFIX):
                group = THREAD_GROUPS[1]
            else:
                group = THREAD_GROUPS[2]
            threads[pid, tid] = (group, seconds)
    return threads


def thread_group_ms(
    before: dict[tuple[int, int], tuple[str, float]],
    after: dict[tuple[int, int], tuple[str, float]],
    calls: int,
) -> dict[str, float]:
    """CPU ms per call of each thread group between two :func:`thread_cpu` readings."""
    ms = dict.fromkeys(THREAD_GROUPS, 0.0)
    for key, (group, seconds) in after.items():
        ms[group] += (seconds - before.get(key, (group, 0.0))[1]) * 1000 / max(1, calls)
    return ms


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in values:
            values[key] = float(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class _Tokens:
    """QR tokens as Zhejiang's e-ID authority would issue them (signed here, offline,
    so that making them costs the nodes nothing)."""

    def __init__(self, keys: Path) -> None:
        """``keys``: Zhejiang's keys folder."""
        from gateway.core import crypto

        self._key = crypto.load_private_key(keys / "eid-issuer.key.pem")
        self._credentials = [
            r.credential_id for r in synthetic_residents(ZJ) if r.state == "CREDENTIAL_ACTIVE"
        ]

    def make(self, count: int) -> list[str]:
        from datetime import UTC, datetime, timedelta

        from gateway.core.eid_token import issue_token

        now = datetime.now(UTC)
        return [
            issue_token(
                self._key,
                key_id=f"{ZJ}-eid-2026",
                issuer=ZJ,
                credential_id=self._credentials[i % len(self._credentials)],
                token_id=str(uuid.uuid4()),
                issued_at=now,
                ttl=timedelta(minutes=5),
            )
            for i in range(count)
        ]


async def _saturate(
    call: Callable[[], Awaitable[bool]], concurrency: int, seconds: float
) -> tuple[int, int, float]:
    done = errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, errors
        while time.perf_counter() < stop_at:
            stop_if_cancelled()
            if await call():
                done += 1
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors, time.perf_counter() - started


async def _open_loop(
    call: Callable[[], Awaitable[bool]], rate: float, seconds: float
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        started = time.perf_counter()
        if await call():
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            errors += 1

    tasks = []
    started = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies, errors


async def _measure(
    name: str,
    call: Callable[[], Awaitable[bool]],
    *,
    concurrency: int,
    seconds: float,
    rate: float | None,
    processes: dict[str, list[int]],
    probe: Callable[[], Awaitable[dict[str, tuple[float, float]]]] | None = None,
) -> PathFigures:
    """Saturation (closed loop) with CPU per call of each process, then an open loop
    at ``rate`` and, when ``rate`` is given, one at half the path's own saturation.
    ``probe`` reads the nodes' (sum, count) series around the saturation run and
    the run at half saturation."""
    await _saturate(call, concurrency, min(1.0, seconds))  # warm-up
    processes = {"load generator": [os.getpid()], **processes}
    series_before = await probe() if probe else {}
    before = {name: cpu_seconds(*pids) for name, pids in processes.items()}
    threads_before = {name: thread_cpu(*pids) for name, pids in processes.items()}
    done, errors, elapsed = await _saturate(call, concurrency, seconds)
    cpu_ms = {
        name: (cpu_seconds(*pids) - before[name]) * 1000 / max(1, done)
        for name, pids in processes.items()
    }
    thread_ms = {
        name: thread_group_ms(threads_before[name], thread_cpu(*pids), done)
        for name, pids in processes.items()
    }
    saturation_series = _delta(series_before, await probe()) if probe else {}
    saturation = done / elapsed
    at = rate if rate is not None else saturation / 2
    latencies, failed = await _open_loop(call, at, seconds)
    figures = PathFigures(
        name,
        saturation,
        errors,
        at,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        failed=failed,
        cpu_ms=cpu_ms,
        thread_ms=thread_ms,
        saturation_series=saturation_series,
    )
    if rate is not None:
        # What the path does at a rate it sustains (past its own saturation the
        # fixed rate only measures a queue); the baseline is measured at this
        # same rate afterwards.
        figures.own = await _open_loop_figures(call, saturation / 2, seconds, probe, processes)
    return figures


async def _open_loop_figures(
    call: Callable[[], Awaitable[bool]],
    rate: float,
    seconds: float,
    probe: Callable[[], Awaitable[dict[str, tuple[float, float]]]] | None = None,
    processes: dict[str, list[int]] | None = None,
) -> OpenLoop:
    """An open loop at ``rate``; with ``processes``, the CPU per call of each."""
    before = await probe() if probe else {}
    cpu_before = {name: cpu_seconds(*pids) for name, pids in (processes or {}).items()}
    ticks = machine_ticks()
    latencies, failed = await _open_loop(call, rate, seconds)
    busy = busy_share(ticks, machine_ticks())
    cpu_ms = {
        name: (cpu_seconds(*pids) - cpu_before[name]) * 1000 / max(1, len(latencies))
        for name, pids in (processes or {}).items()
    }
    series = _delta(before, await probe()) if probe else {}
    return OpenLoop(
        rate, percentile(latencies, 0.5), percentile(latencies, 0.99), failed, series, busy, cpu_ms
    )


def _delta(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    return {
        name: (total - before.get(name, (0.0, 0.0))[0], count - before.get(name, (0.0, 0.0))[1])
        for name, (total, count) in after.items()
    }


async def _run_identity(
    chain: BaselineChain,
    federation: ProcessFederation,
    keys: Path,
    *,
    concurrency: int,
    seconds: float,
    soak: int,
    connections: int,
) -> IdentityFigures:
    from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

    async with chain.channel() as base_channel:
        baseline = await _measure(
            "baseline chain: client -> proxy -> proxy -> HTTP echo",
            _chain_call(base_channel),
            concurrency=concurrency,
            seconds=seconds,
            rate=None,
            processes=_chain_processes(chain),
        )

    tokens = _Tokens(keys)
    supply: list[str] = []
    async with _connections(federation, SH, connections) as channels:
        stubs = itertools.cycle([identity_pb2_grpc.IdentityServiceStub(c) for c in channels])

        async def real_call() -> bool:
            if not supply:
                supply.extend(tokens.make(2000))
            try:
                answer = await next(stubs).VerifyIdentity(
                    identity_pb2.VerifyIdentityRequest(
                        qr_payload=supply.pop(), purpose=identity_pb2.HOTEL_CHECK_IN
                    ),
                    metadata=HOTEL_METADATA,
                    timeout=10,
                )
            except grpc.aio.AioRpcError:
                return False  # counted as an error (an overloaded open loop times out)
            return bool(answer.verdict == identity_pb2.VALID)

        async def probe() -> dict[str, tuple[float, float]]:
            return await asyncio.to_thread(_totals, federation, (*_HOPS, *_BATCHES))

        supply.extend(
            tokens.make(int(baseline.saturation_rps * seconds * 2.5 + LOW_RATE * seconds) + 1000)
        )
        real = await _measure(
            "hotel verification: client -> Shanghai node -> Zhejiang node -> e-ID authority",
            real_call,
            concurrency=concurrency,
            seconds=seconds,
            rate=baseline.rate,
            processes={
                "Shanghai node": _pids(federation.nodes[SH]),
                "Zhejiang node": _pids(federation.nodes[ZJ]),
                "e-ID authority": [federation.simulators[ZJ].process.pid],
            },
            probe=probe,
        )
        # Where the time goes, at a rate the path sustains: each hop's mean over
        # the open loop at half its saturation, from the nodes' own histograms.
        assert real.own is not None  # measured: a rate was given
        hops_rate = real.own.rate
        hops_ms = _hop_means(real.own.series)
        # A lone check-in must not wait for a batch.
        low = await _open_loop_figures(real_call, LOW_RATE, max(1.0, seconds), probe)
        soak_done = 0
        soak_started = time.perf_counter()
        while soak_done < soak:
            batch = min(5000, soak - soak_done)
            supply[:] = tokens.make(batch)

            async def soak_worker() -> None:
                nonlocal soak_done
                while supply:
                    stop_if_cancelled()
                    await real_call()
                    soak_done += 1

            await asyncio.gather(*(soak_worker() for _ in range(concurrency)))
        soak_rps = soak_done / max(1e-9, time.perf_counter() - soak_started)

    rss = node_memory(federation)
    rows_per_commit = await asyncio.to_thread(_rows_per_commit, federation.nodes[SH])
    # The baseline at the real path's own half saturation: the fair p99 comparison.
    async with chain.channel() as base_channel:
        baseline_same_rate = await _open_loop_figures(
            _chain_call(base_channel),
            hops_rate,
            seconds,
            processes=_chain_processes(chain),
        )
    return IdentityFigures(
        concurrency,
        seconds,
        baseline,
        real,
        soak_done,
        soak_rps,
        rss,
        rows_per_commit,
        hops_ms,
        hops_rate,
        baseline_same_rate,
        low,
    )


@contextlib.asynccontextmanager
async def _connections(
    federation: ProcessFederation, code: str, count: int
) -> AsyncIterator[list[grpc.aio.Channel]]:
    """``count`` client channels to a node, each on its own connection (so that
    the calls spread over the node's workers, as many clients' would)."""
    channels = [federation.client_channel(code, own_connection=count > 1) for _ in range(count)]
    try:
        yield channels
    finally:
        for channel in channels:
            await channel.close()


def _chain_processes(chain: BaselineChain) -> dict[str, list[int]]:
    """The baseline chain's processes by the names the figures give them."""
    return {
        name: [pid] for name, pid in zip(("echo", "proxy 2", "proxy 1"), chain.pids, strict=True)
    }


def _chain_call(channel: grpc.aio.Channel) -> Callable[[], Awaitable[bool]]:
    """One call through the baseline chain, with a body about a QR token's size."""
    echo = channel.unary_unary(
        "/yrd.bench.v1.Chain/Call", request_serializer=None, response_deserializer=None
    )
    body = b"q" * 420

    async def call() -> bool:
        try:
            await echo(body, timeout=10)
        except grpc.aio.AioRpcError:
            return False
        return True

    return call


async def _chain_saturation(chain: BaselineChain, concurrency: int, seconds: float) -> float:
    async with chain.channel() as channel:
        call = _chain_call(channel)
        await _saturate(call, concurrency, min(1.0, seconds))  # warm-up
        done, _, elapsed = await _saturate(call, concurrency, seconds)
    return done / elapsed


def _pids(node: NodeProcess) -> list[int]:
    """The node's process and, with --workers, its worker processes."""
    assert node.process is not None
    return [node.process.pid, *node.children()]


def node_memory(federation: ProcessFederation) -> dict[str, tuple[float, float]]:
    """(RSS now, peak) of each node process; of each worker with --workers."""
    memory = {}
    for code, node in federation.nodes.items():
        if node.process is None:
            continue
        workers = sorted(node.children())
        if not workers:
            memory[f"{code} node"] = rss_mb(node.process.pid)
        for index, pid in enumerate(workers):
            memory[f"{code} node worker {index}"] = rss_mb(pid)
    return memory


#: A series of (sum, count) read from the nodes' metrics: (label, node, metric, labels).
_Series = tuple[str, str, str, dict[str, str]]

#: The hops of a hotel verification.
_HOPS: tuple[_Series, ...] = (
    (
        "hotel's call at the Shanghai node",
        SH,
        "yrd_rpc_duration_seconds",
        {"method": "/yrd.identity.v1.IdentityService/VerifyIdentity"},
    ),
    (
        "  round trip Shanghai -> Zhejiang",
        SH,
        "yrd_exchange_duration_seconds",
        {"direction": "out", "peer": ZJ, "service": "identity.CheckCredential"},
    ),
    (
        "    handling at the Zhejiang node",
        ZJ,
        "yrd_exchange_duration_seconds",
        {"direction": "in", "peer": SH, "service": "identity.CheckCredential"},
    ),
    (
        "      Zhejiang's e-ID authority",
        ZJ,
        "yrd_backend_duration_seconds",
        {"backend": "eid_authority", "outcome": "ok"},
    ),
)


#: Envelopes per stream frame each node sent (the stream transport's histogram).
_BATCHES: tuple[_Series, ...] = (
    ("Shanghai -> Zhejiang", SH, "yrd_federation_batch_envelopes", {"direction": "out"}),
    ("Zhejiang -> Shanghai", ZJ, "yrd_federation_batch_envelopes", {"direction": "out"}),
)


def _totals(
    federation: ProcessFederation, series: tuple[_Series, ...]
) -> dict[str, tuple[float, float]]:
    """(sum, count) of each series' histogram, over all workers (0, 0 when it has
    no samples yet)."""
    samples = {code: _samples(node) for code, node in federation.nodes.items()}
    totals = {}
    for name, code, metric, labels in series:
        total = count = 0.0
        for sample_name, sample_labels, value in samples[code]:
            if labels.items() <= sample_labels.items():
                if sample_name == metric + "_sum":
                    total += value
                elif sample_name == metric + "_count":
                    count += value
        totals[name] = (total, count)
    return totals


def _samples(node: NodeProcess) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of every worker's metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    host, _, port = node.metrics_url.removeprefix("http://").partition("/")[0].rpartition(":")
    found = []
    for index in range(node.workers):
        url = f"http://{host}:{int(port) + index}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.append((sample.name, dict(sample.labels), sample.value))
    return found


def _rows_per_commit(node: NodeProcess) -> float:
    """Rows per commit of the node's message log, over all its workers."""
    rows = commits = 0.0
    for name, _, value in _samples(node):
        if name == "yrd_message_log_rows":
            rows += value
        elif name == "yrd_message_log_commits":
            commits += value
    return rows / commits if commits else float("nan")


def bench_identity(
    *,
    seconds: float = 10.0,
    concurrency: int = 64,
    soak: int = 100_000,
    workers: int = 1,
    configs: Path | None = None,
) -> IdentityFigures:
    from gateway.testing.localfed import province_configs_dir

    root = province_configs_dir(configs)
    with tempfile.TemporaryDirectory(prefix="yrd-bench-") as tmp:
        chain = BaselineChain(root)
        federation = ProcessFederation(Path(tmp), (SH, ZJ), configs=configs)
        try:
            chain.start()
            federation.start(workers={SH: workers, ZJ: workers})
            return asyncio.run(
                _run_identity(
                    chain,
                    federation,
                    root / ZJ / "keys",
                    concurrency=concurrency,
                    seconds=seconds,
                    soak=soak,
                    connections=1 if workers == 1 else 4 * workers,
                )
            )
        finally:
            federation.stop()
            chain.stop()
