"""The event loop of every served process: uvloop where it is installed.

Nodes, simulators and the benchmark's baseline chain run on uvloop (libuv),
which runs the same asyncio code with less overhead per callback and per
socket operation than the default loop. ``YRD_EVENT_LOOP=asyncio`` selects the
default loop (to compare, or to rule the loop out when chasing a problem).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def name() -> str:
    """The loop :func:`run` uses: ``uvloop`` or ``asyncio``."""
    if os.environ.get("YRD_EVENT_LOOP", "uvloop") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`name` names."""
    if name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


#: The young generation's threshold once a served process has started: fewer,
#: slightly larger young collections (objects allocated per request die young).
GC_YOUNG_THRESHOLD = 5000


def settle_heap() -> None:
    """Once a served process has started (modules imported, config parsed,
    stores open, keys loaded): collect once, then move every object alive to
    the collector's permanent generation (:func:`gc.freeze`). A full collection
    then walks only what was allocated since, not the hundreds of thousands of
    long-lived objects of the imports and descriptors; without it, a full
    collection under load paused a node for 150-180 ms (issue 16's p99)."""
    import gc

    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
