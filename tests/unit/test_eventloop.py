"""The served processes' runtime settings (gateway.server.eventloop)."""

from __future__ import annotations

import subprocess
import sys

from gateway.server import eventloop


def test_settle_heap_freezes_the_started_heap_and_raises_the_young_threshold() -> None:
    # In a fresh interpreter: freezing this test process's heap would outlive the test.
    script = (
        "import gc\n"
        "from gateway.server.eventloop import settle_heap, GC_YOUNG_THRESHOLD\n"
        "import gateway.server.node  # a served process's imports\n"
        "assert gc.get_freeze_count() == 0\n"
        "settle_heap()\n"
        "print(gc.get_freeze_count(), gc.get_threshold()[0] == GC_YOUNG_THRESHOLD)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    frozen, threshold_set = done.stdout.split()
    # Every object alive at start-up (modules, descriptors) is out of later collections.
    assert int(frozen) > 10_000
    assert threshold_set == "True"


def test_the_loop_is_named() -> None:
    assert eventloop.name() in ("uvloop", "asyncio")
