"""Ctrl-C and SIGTERM stop the development tools (``bench``, ``soak``) at once.

grpc.aio can swallow the cancellation of a task awaiting a call (when it
meets the call's answer), which a load loop then counts as one call: without
``stop_if_cancelled`` a bench could go on to the end of its run after Ctrl-C.
And SIGTERM left its nodes, simulators and proxies running."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from gateway.tools.bench import _saturate
from gateway.tools.interrupt import stop_if_cancelled, terminated_as_interrupt


async def swallowing_call() -> bool:
    """A call that, as grpc.aio's can, turns its cancellation into a failed call."""
    try:
        await asyncio.sleep(0.001)
    except asyncio.CancelledError:
        return False
    return True


def test_a_saturating_loop_stops_when_cancelled_though_its_calls_swallow_it() -> None:
    async def scenario() -> None:
        run = asyncio.create_task(_saturate(swallowing_call, 8, 8.0))
        await asyncio.sleep(0.2)
        run.cancel()
        done, _ = await asyncio.wait({run}, timeout=4.0)
        assert run in done, "the loop went on after its cancellation"
        assert run.cancelled()

    asyncio.run(scenario())


def test_stop_if_cancelled_is_silent_until_the_task_is_cancelled() -> None:
    async def loop(rounds: list[int]) -> None:
        while True:
            stop_if_cancelled()
            rounds.append(1)
            await swallowing_call()

    async def scenario() -> None:
        rounds: list[int] = []
        task = asyncio.create_task(loop(rounds))
        await asyncio.sleep(0.05)
        assert rounds
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_sigterm_inside_asyncio_run_cancels_the_main_task_as_ctrl_c_does() -> None:
    reached: list[str] = []

    async def main() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            reached.append("cancelled")  # the finally blocks of a tool run here
            raise

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), terminated_as_interrupt():
        asyncio.run(main())
    assert reached == ["cancelled"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_outside_an_event_loop_raises_keyboard_interrupt() -> None:
    def signalled() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs as the signal interrupts the sleep

    with terminated_as_interrupt(), pytest.raises(KeyboardInterrupt):
        signalled()
