"""The benchmark runs end to end in its short mode and prints every figure.

Speed is never asserted here: figures are for people (`make bench`)."""

from __future__ import annotations

import re
import subprocess
import sys

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
