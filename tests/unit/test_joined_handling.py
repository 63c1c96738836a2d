"""A retry that comes while its request is still handled joins that handling
(``gateway.federation.server._joined``): it gets its answer, it leaves it
running when it is itself cancelled, and it is told to send again (a fault,
UNAVAILABLE) when that handling was cut off."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway.core.errors import PeerUnavailable
from gateway.federation.server import _joined, _Outcome
from yrd.federation.v1 import federation_pb2


def outcome() -> _Outcome:
    return _Outcome(federation_pb2.DeliveryAck(), 0, "")


async def test_the_retry_gets_the_first_handlings_answer() -> None:
    first: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
    retry = asyncio.ensure_future(_joined(first))
    await asyncio.sleep(0)
    answer = outcome()
    first.set_result(answer)
    assert await retry is answer


async def test_a_retry_cancelled_leaves_the_first_handling_running() -> None:
    first: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
    retry = asyncio.ensure_future(_joined(first))
    await asyncio.sleep(0)
    retry.cancel()
    with pytest.raises(asyncio.CancelledError):
        await retry
    assert not first.done()


async def test_a_first_handling_cut_off_is_a_fault_to_send_again() -> None:
    first: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
    retry = asyncio.ensure_future(_joined(first))
    await asyncio.sleep(0)
    # As FederationServicer._handle ends a handling that was cancelled (the node stops).
    first.set_exception(asyncio.CancelledError())
    with pytest.raises(PeerUnavailable) as raised:
        await retry
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert raised.value.retryable
    assert "send it again" in raised.value.message
