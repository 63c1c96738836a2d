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
