"""The stores' threads carry kernel names (gateway.storage.threads), and
``bench`` splits a process's CPU by them (gateway.tools.bench.thread_cpu); what
else ``bench`` reads from /proc: how busy the machine is, and each process's
CPU per call over an open loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from gateway.storage.threads import NAME_BYTES, PREFIX, kernel_name, store_executor
from gateway.tools.bench import (
    THREAD_GROUPS,
    IdentityFigures,
    OpenLoop,
    PathFigures,
    _open_loop_figures,
    busy_share,
    machine_ticks,
    thread_cpu,
    thread_group_ms,
)

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="per-thread figures come from Linux's /proc"
)


def kernel_name_of(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()


def burn(seconds: float) -> int:
    """Spend about ``seconds`` of CPU in the calling thread; its native id."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(range(1000))
    return threading.get_native_id()


def test_the_kernel_names_fit_and_tell_the_threads_apart() -> None:
    names = {
        kernel_name(store, role) for store in ("message log", "state store") for role in ("w", "r")
    }
    assert names == {"yrd-log-w", "yrd-log-r", "yrd-state-w", "yrd-state-r"}
    long = kernel_name("a store with a very long name", "w")
    assert len(long.encode()) <= NAME_BYTES
    assert long.startswith(PREFIX)
    assert long.endswith("-w")


def test_a_store_thread_names_itself_for_the_kernel() -> None:
    with store_executor("message log", "w") as executor:
        native_id = executor.submit(threading.get_native_id).result()
        assert kernel_name_of(native_id) == "yrd-log-w"
        assert (
            executor.submit(lambda: threading.current_thread().name)
            .result()
            .startswith("message-log-w")
        )
    # The calling thread keeps its own name.
    assert not kernel_name_of(threading.get_native_id()).startswith(PREFIX)


def test_bench_splits_cpu_by_thread_group() -> None:
    pid = os.getpid()
    before = thread_cpu(pid)
    assert before[pid, pid][0] == "event loop"  # the main thread
    with store_executor("state store", "w") as executor:
        store_tid = executor.submit(burn, 0.3).result()
        burnt, measured = threading.Event(), threading.Event()

        def burn_then_wait() -> None:
            burn(0.2)
            burnt.set()
            measured.wait(10)  # alive until read: a thread that is gone is not counted

        other = threading.Thread(target=burn_then_wait, name="not a store's")
        other.start()
        assert burnt.wait(10)
        after = thread_cpu(pid)
        measured.set()
        other.join()
    assert after[pid, store_tid][0] == "store threads"
    assert after[pid, other.native_id][0] == "other threads"  # type: ignore[index]
    ms = thread_group_ms(before, after, calls=10)
    assert set(ms) == set(THREAD_GROUPS)
    # 0.3 s over 10 calls is 30 ms per call, within the clock's ticks (10 ms).
    assert 15 <= ms["store threads"] <= 60, ms
    assert 5 <= ms["other threads"] <= 50, ms


def test_threads_of_a_process_that_is_gone_are_not_counted() -> None:
    assert thread_cpu(2**22 + 12345) == {}
    assert thread_group_ms({}, {}, calls=0) == dict.fromkeys(THREAD_GROUPS, 0.0)


def test_bench_reads_how_busy_the_machine_is() -> None:
    """The share of the machine's cores busy between two readings of /proc/stat:
    a thread spinning for a while shows, and nothing counted is nan."""
    before = machine_ticks()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    share = busy_share(before, machine_ticks())
    assert 0.0 < share <= 1.0
    assert busy_share((100, 40), (200, 90)) == 0.5
    assert busy_share((100, 40), (100, 40)) != busy_share((100, 40), (100, 40))  # nan


def test_open_loop_reads_cpu_per_call_of_the_processes_named() -> None:
    """An open loop at a fixed rate with processes named gives each one's CPU per
    answered call: here this process, whose calls each spin about 2 ms."""

    async def spin() -> bool:
        end = time.thread_time() + 0.002
        while time.thread_time() < end:
            pass
        return True

    loop = asyncio.run(_open_loop_figures(spin, 100.0, 1.0, processes={"me": [os.getpid()]}))
    assert loop.p50_ms >= 2.0
    assert 1.0 <= loop.cpu_ms["me"] < 20.0
    assert asyncio.run(_open_loop_figures(spin, 50.0, 0.2)).cpu_ms == {}


def test_cpu_at_half_capacity_pairs_each_node_with_its_do_nothing_twin() -> None:
    """bench's CPU per call at the real path's half saturation: the two nodes and
    the proxies in their places, none without the baseline's open loop there."""

    def path(name: str) -> PathFigures:
        return PathFigures(name, 500.0, 0, 250.0, 1.0, 2.0)

    real, baseline = path("real"), path("baseline")
    cpu_ms = {"Shanghai node": 2.0, "Zhejiang node": 1.5, "e-ID authority": 0.3}
    real.own = OpenLoop(250.0, 1.0, 2.0, 0, cpu_ms=cpu_ms)
    figures = IdentityFigures(64, 5.0, baseline, real, 0, 0.0, {}, 1.0)
    assert figures.cpu_at_half() == {}
    figures.baseline_same_rate = OpenLoop(
        250.0, 1.0, 3.0, 0, cpu_ms={"proxy 1": 0.7, "proxy 2": 0.6, "echo": 0.2}
    )
    assert figures.cpu_at_half() == {
        "Shanghai node": 2.0,
        "proxy 1": 0.7,
        "Zhejiang node": 1.5,
        "proxy 2": 0.6,
    }
    assert figures.summary()["CPU ms per call there: proxy 2"] == 0.6


def test_the_summary_gives_the_window_beside_the_figures_above_it() -> None:
    """Each do-nothing proxy's own CPU per call at saturation is in the runs'
    summary: the figures above do-nothing are read beside it."""
    real = PathFigures("real", 500.0, 0, 250.0, 1.0, 2.0, cpu_ms={"Shanghai node": 1.3})
    baseline = PathFigures(
        "baseline", 1000.0, 0, 500.0, 1.0, 2.0, cpu_ms={"proxy 1": 0.6, "proxy 2": 0.55}
    )
    summary = IdentityFigures(64, 5.0, baseline, real, 0, 0.0, {}, 1.0).summary()
    assert summary["CPU ms per call at saturation: proxy 1"] == 0.6
    assert summary["CPU ms per call at saturation: proxy 2"] == 0.55
    assert summary["CPU ms above do-nothing: Shanghai node"] == pytest.approx(0.7)
