"""The benchmark runs end to end in its short mode and prints every figure.

Speed is never asserted here: figures are for people (`make bench`)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def assert_bench_prints(args: list[str], needles: tuple[str, ...]) -> None:
    """Run ``yrd-gateway bench ARGS`` and check that every figure is printed."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "bench", *args],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for needle in needles:
        assert re.search(needle, result.stdout), f"missing figure /{needle}/ in:\n{result.stdout}"


#: A node's CPU above its do-nothing twin, by thread group (gateway.tools.bench.THREAD_GROUPS).
BY_THREAD = r": event loop [+-][\d.]+, store threads [+-][\d.]+, other threads [+-][\d.]+"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_smoke_prints_every_figure() -> None:
    """Every figure of both benchmarks, run with two workers per node: the load
    reaches every worker (its own connections) and each worker's memory is
    printed (one run, to keep the suite short; a single worker prints the same
    figures with "<code> node:" memory lines)."""
    assert_bench_prints(
        ["--smoke", "--workers", "2"],
        (
            r"^interpreter: \w+ \d+\.\d+\.\d+\S* \(.+; built .+ with .+\)\n"
            r"gateway: (pure Python|\d+ of \d+ modules of the verification path compiled)",
            r"baseline chain: .*\n  saturation: +\d+ calls/s",
            r"hotel verification: .*\n  saturation: +\d+ calls/s +\(0 errors\)",
            r"CPU per call: load generator [\d.]+ ms, echo [\d.]+ ms, .*; total [\d.]+ ms",
            r"CPU per call: load generator [\d.]+ ms, Shanghai node [\d.]+ ms, Zhejiang node "
            r"[\d.]+ ms, e-ID authority [\d.]+ ms; total [\d.]+ ms",
            r"at \d+/s: +p50 +[\d.]+ ms +p99 +[\d.]+ ms",
            r"ratio real/baseline: throughput [\d.]+ .*p99 [\d.]+",
            r"310000 node worker 0: \d+ MB / \d+ MB\n  310000 node worker 1: \d+ MB / \d+ MB",
            r"330000 node worker 0: \d+ MB / \d+ MB\n  330000 node worker 1: \d+ MB / \d+ MB",
            r"message log: [\d.]+ rows per commit",
            r"where a verification's time goes at \d+/s .*\n  hotel's call at the Shanghai node: "
            r"[\d.]+ ms\n +round trip Shanghai -> Zhejiang: [\d.]+ ms\n +handling at the Zhejiang "
            r"node: [\d.]+ ms\n +Zhejiang's e-ID authority: [\d.]+ ms",
            r"accepted per second: +\d+",
            r"ratio accepted/baseline: [\d.]+ \(baseline chain \d+ calls/s in this run\)",
            r"at \d+/s: +p50 +[\d.]+ ms +p99 +[\d.]+ ms +\(answered, open loop\)",
            r"node memory after \(RSS now / peak\):\n  310000 node worker 0: \d+ MB / \d+ MB\n"
            r"  310000 node worker 1: \d+ MB / \d+ MB\n  320000 node worker 0: \d+ MB / \d+ MB",
            r"median: +\d+ ms",
            r"p99: +\d+ ms",
            # Issue 16: the figures fair to the design, and the summary of the runs.
            r"at \d+/s: +p50 +[\d.]+ ms +p99 +[\d.]+ ms +\(the real path's half saturation",
            r"at 10/s: +p50 +[\d.]+ ms +p99 +[\d.]+ ms +\(low load, open loop\)",
            r"p99 at half the real path's saturation \(\d+/s\): real [\d.]+ ms, baseline "
            r"[\d.]+ ms, ratio [\d.]+ \(target <= 2\)\n  the machine's cores busy at that "
            r"rate: real path \d+%, baseline chain \d+%\n  CPU ms per call at that rate \(at "
            r"saturation\): Shanghai node [\d.]+ \([\d.]+\), proxy 1 [\d.]+ \([\d.]+\), Zhejiang "
            r"node [\d.]+ \([\d.]+\), proxy 2 [\d.]+ \([\d.]+\)",
            r"gateway CPU per verification above a do-nothing hop .*\n  Shanghai node: -?[\d.]+ ms "
            r"\([\d.]+ - proxy 1 [\d.]+\)" + BY_THREAD + r"\n  Zhejiang node: -?[\d.]+ ms "
            r"\([\d.]+ - proxy 2 [\d.]+\)" + BY_THREAD + r"\n  e-ID authority: -?[\d.]+ ms "
            r"\([\d.]+ - echo [\d.]+\)" + BY_THREAD,
            # Each process's CPU by thread: the nodes' (both workers') and the proxies'.
            r"by thread \(event loop / store threads / other threads\): echo [\d.]+ / [\d.]+ / "
            r"[\d.]+, proxy 2 [\d.]+ / 0.00 / [\d.]+, proxy 1 [\d.]+ / 0.00 / [\d.]+ ms",
            r"by thread \(event loop / store threads / other threads\): Shanghai node [\d.]+ / "
            r"[\d.]+ / [\d.]+, Zhejiang node [\d.]+ / [\d.]+ / [\d.]+, e-ID authority",
            r"mean batch size .*\n  saturation: Shanghai -> Zhejiang (n/a|[\d.]+), Zhejiang -> "
            r"Shanghai (n/a|[\d.]+)\n  half capacity \(\d+/s\): .*\n  low load \(10/s\): ",
            r"summary of 1 run\(s\)\n  figure +min +median +max",
            r"throughput ratio real/baseline( +[\d.]+){3}",
            r"CPU ms above do-nothing: Shanghai node( +-?[\d.]+){3}",
            r"CPU ms above do-nothing: Zhejiang node( +-?[\d.]+){3}",
            r"CPU ms per call at saturation: proxy 1( +[\d.]+){3}\n  CPU ms per call at "
            r"saturation: proxy 2( +[\d.]+){3}",
            r"p99 ratio at half the real capacity( +[\d.]+){3}",
            r"cores busy % there: real path( +[\d.]+){3}\n  cores busy % there: baseline "
            r"chain( +[\d.]+){3}",
            r"CPU ms per call there: Shanghai node( +[\d.]+){3}\n  CPU ms per call there: "
            r"proxy 1( +[\d.]+){3}",
            r"mean batch Shanghai -> Zhejiang, saturation( +(n/a|[\d.]+)){3}",
            r"withdrawals accepted / baseline calls per second( +[\d.]+){3}",
            r"RSS MB after 200 verifications, largest node( +[\d.]+){3}",
        ),
    )


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def chain_cpu(pids: set[int]) -> float:
    """CPU seconds used so far by the baseline chain's hops among ``pids``."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            if b"gateway.tools.benchchain" in Path(f"/proc/{pid}/cmdline").read_bytes():
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_stops_the_bench_and_everything_it_started() -> None:
    """SIGTERM mid-run, while the baseline chain is saturated (64 calls in
    flight): the bench stops within seconds, says so, exits 130, and no proxy,
    node or simulator it started is left running (before, SIGTERM ended the
    bench alone)."""
    bench = subprocess.Popen(
        [sys.executable, "-m", "gateway", "bench", "identity", "--seconds", "30", "--soak", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started: set[int] = set()
    try:
        # The chain's three hops, Shanghai's and Zhejiang's simulators and nodes,
        # then the chain under load (its hops busy: 1 s of CPU between them).
        deadline = time.monotonic() + 60
        while len(started) < 7 and time.monotonic() < deadline:
            started = descendants(bench.pid)
            time.sleep(0.2)
        assert len(started) >= 7, "the chain and the federation did not start"
        idle = chain_cpu(started)
        while chain_cpu(started) < idle + 1.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert chain_cpu(started) >= idle + 1.0, "the baseline chain was not loaded"
        started = descendants(bench.pid)
        bench.send_signal(signal.SIGTERM)
        output, _ = bench.communicate(timeout=30)
        assert bench.returncode == 130, output
        assert "interrupted: every process the bench started is stopped" in output
        assert not descendants(bench.pid)
        assert not [pid for pid in started if Path(f"/proc/{pid}").exists()]
    finally:
        for pid in started | descendants(bench.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
