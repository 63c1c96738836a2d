"""Stopping a development tool (``bench``, ``soak``) from outside.

Two things stand between Ctrl-C (or a SIGTERM) and a tool that stops at once
with every process it started:

- SIGTERM's default is to end the process where it stands, leaving its node,
  simulator and proxy processes running. :func:`terminated_as_interrupt`
  makes it do what Ctrl-C does: inside ``asyncio.run``, cancel the main task
  (the first time); elsewhere raise :class:`KeyboardInterrupt`. Either way
  the tool's ``finally`` blocks stop what it started.
- ``grpc.aio`` can swallow the cancellation of a task awaiting a unary call:
  when the cancellation meets the call's answer, the call ends in an
  ``AioRpcError`` (or a result) instead of ``CancelledError``. A load loop
  counts that as one call and goes on, so the cancellation ``asyncio.run``
  sends on Ctrl-C was lost in one worker of 64 and the run went on to its
  end. A loop calls :func:`stop_if_cancelled` on each round.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM does what Ctrl-C does (whatever SIGINT's handler
    is at that moment: ``asyncio.run`` installs its own while it runs)."""

    def interrupt(signum: int, frame: Any) -> None:
        on_interrupt = signal.getsignal(signal.SIGINT)
        if not callable(on_interrupt):  # SIG_IGN or SIG_DFL: nothing of Python's
            raise KeyboardInterrupt
        on_interrupt(signum, frame)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_if_cancelled() -> None:
    """Raise :class:`asyncio.CancelledError` if the running task is being
    cancelled, though the call it awaited answered the cancellation with an
    error of its own."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
