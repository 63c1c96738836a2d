"""The asker's adaptive batching on a federation stream (issue 16): how long the
writer lingers before a frame (:func:`linger`), and what a StreamLink does with
it against a fake stream call that records the frames written and answers when
told to; and what its writer and its waiting callers do when the stream ends
under them (these run on the compiled build too: tests/integration/test_compiled.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import grpc
import pytest
import structlog
from structlog.testing import capture_logs

from gateway.core import crypto
from gateway.federation import client
from gateway.federation.client import (
    BATCH_LINGER_MAX,
    BATCH_TARGET,
    StreamBroken,
    StreamLink,
    linger,
)
from yrd.federation.v1 import federation_pb2


class TestLinger:
    def test_an_idle_link_writes_at_once(self) -> None:
        # Nothing else awaits an answer: a lone request never waits for a batch.
        assert linger(queued=1, in_flight=1, mean_gap=0.001, round_trip=1.0) == 0.0
        assert linger(queued=3, in_flight=3, mean_gap=0.0001, round_trip=1.0) == 0.0

    def test_a_link_without_a_round_trip_yet_writes_at_once(self) -> None:
        assert linger(queued=1, in_flight=10, mean_gap=0.0001, round_trip=0.0) == 0.0

    def test_requests_too_far_apart_to_gather_two_more_do_not_wait(self) -> None:
        longest = BATCH_LINGER_MAX
        assert linger(queued=1, in_flight=5, mean_gap=longest / 2, round_trip=1.0) == 0.0
        assert linger(queued=1, in_flight=5, mean_gap=0.5, round_trip=1.0) == 0.0
        # A moderate load on a fast link: one more would come within its round
        # trip, not two; the request goes at once.
        assert linger(queued=1, in_flight=2, mean_gap=0.008, round_trip=0.012) == 0.0

    def test_a_frame_full_enough_goes_at_once(self) -> None:
        assert (
            linger(queued=BATCH_TARGET, in_flight=BATCH_TARGET + 1, mean_gap=0.001, round_trip=1.0)
            == 0.0
        )

    def test_under_load_it_waits_for_the_missing_requests_at_their_rate(self) -> None:
        gap = BATCH_LINGER_MAX / (4 * BATCH_TARGET)
        missing = BATCH_TARGET - 2
        assert linger(queued=2, in_flight=10, mean_gap=gap, round_trip=1.0) == pytest.approx(
            missing * gap
        )

    def test_never_longer_than_the_longest_linger(self) -> None:
        gap = BATCH_LINGER_MAX * 0.4
        assert linger(queued=1, in_flight=10, mean_gap=gap, round_trip=1.0) == BATCH_LINGER_MAX

    def test_never_longer_than_the_round_trip(self) -> None:
        # Waiting at most doubles a request's time on the link.
        round_trip = BATCH_LINGER_MAX / 2
        gap = round_trip / 4
        assert linger(queued=1, in_flight=10, mean_gap=gap, round_trip=round_trip) == round_trip


class _FakeCall:
    """A Stream call: frames written are recorded; :meth:`answer` answers them."""

    def __init__(self) -> None:
        self.frames: list[federation_pb2.StreamFrame] = []
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def write(self, frame: federation_pb2.StreamFrame) -> None:
        self.frames.append(frame)

    async def read(self) -> Any:
        return await self._inbox.get()

    async def done_writing(self) -> None:
        await self._inbox.put(grpc.aio.EOF)

    def cancel(self) -> bool:
        self._inbox.put_nowait(grpc.aio.EOF)
        return True

    def answer(self, frame: federation_pb2.StreamFrame) -> None:
        """An (unsigned) response to every request of ``frame``."""
        responses = []
        for request in frame.requests:
            digest = crypto.sha256(request.envelope.header)
            header = federation_pb2.EnvelopeHeader(request_digest=digest)
            responses.append(federation_pb2.SignedEnvelope(header=header.SerializeToString()))
        self._inbox.put_nowait(federation_pb2.StreamFrame(responses=responses))


class _FakeStub:
    def __init__(self) -> None:
        self.call = _FakeCall()

    def Stream(self) -> _FakeCall:  # noqa: N802 - the gRPC method name
        return self.call


def _envelope(n: int) -> federation_pb2.SignedEnvelope:
    header = federation_pb2.EnvelopeHeader(message_id=f"m-{n}", sender="310000")
    return federation_pb2.SignedEnvelope(header=header.SerializeToString())


async def _until(predicate: Any, seconds: float = 2.0) -> None:
    stop = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < stop, "not reached in time"
        await asyncio.sleep(0.001)


@pytest.fixture
def long_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """A longest linger no test would sit out: a frame that goes is one that did not wait."""
    monkeypatch.setattr(client, "BATCH_LINGER_MAX", 30.0)


@pytest.fixture
def stub() -> _FakeStub:
    return _FakeStub()


@pytest.fixture
async def link(stub: _FakeStub) -> Any:
    made = StreamLink("330000", stub, lambda envelopes: None, None)  # type: ignore[arg-type]
    yield made
    await made.close(grace=0.1)


def _request(link: StreamLink, n: int) -> asyncio.Task[Any]:
    """Request ``n`` sent on ``link`` (a minute to be answered)."""
    return asyncio.create_task(link.exchange(_envelope(n), time.monotonic() + 60))


async def _busy(link: StreamLink, stub: _FakeStub) -> asyncio.Task[Any]:
    """One request written and left unanswered: the link is under load."""
    first = _request(link, 0)
    await _until(lambda: len(stub.call.frames) == 1)
    return first


async def _answer_all(stub: _FakeStub, *callers: asyncio.Task[Any]) -> None:
    """Answer every frame written so far; the callers then have their answers."""
    for frame in stub.call.frames:
        stub.call.answer(frame)
    await asyncio.gather(*callers)


class TestStreamLink:
    async def test_a_lone_request_goes_in_a_frame_of_its_own_at_once(
        self, link: StreamLink, stub: _FakeStub
    ) -> None:
        first = await _busy(link, stub)  # written at once, though the link had no history
        assert len(stub.call.frames[0].requests) == 1
        await _answer_all(stub, first)

    async def test_requests_arriving_close_together_under_load_share_a_frame(
        self, link: StreamLink, stub: _FakeStub, long_linger: None
    ) -> None:
        first = await _busy(link, stub)
        # Requests have come 0.1 s apart: the writer lingers over a second for
        # the missing ones, far longer than the four below take to arrive on
        # any machine (a linger of 1.5 ms against sleeps of 0.5 ms failed on a
        # slow one).
        link.mean_gap = 0.1
        link.round_trip = 30.0  # a slow link: the linger is not bounded by it here
        later = []
        for n in range(1, 5):  # a few, less than the target, a moment apart
            later.append(_request(link, n))
            await asyncio.sleep(0.0005)
        await _until(lambda: len(stub.call.frames) == 2, seconds=10.0)
        assert len(stub.call.frames[1].requests) == 4  # one frame, one signature
        await _answer_all(stub, first, *later)

    async def test_a_frame_that_reaches_the_target_goes_without_the_whole_linger(
        self, link: StreamLink, stub: _FakeStub, long_linger: None
    ) -> None:
        first = await _busy(link, stub)
        link.mean_gap = 1.0  # slow arrivals: the whole (long) linger, were it not full
        link.round_trip = 30.0
        started = time.monotonic()
        later = [_request(link, n) for n in range(1, BATCH_TARGET + 1)]
        await _until(lambda: len(stub.call.frames) == 2, seconds=10.0)
        assert time.monotonic() - started < 10.0
        assert len(stub.call.frames[1].requests) == BATCH_TARGET
        await _answer_all(stub, first, *later)

    async def test_requests_far_apart_do_not_wait_though_others_are_in_flight(
        self, link: StreamLink, stub: _FakeStub, long_linger: None
    ) -> None:
        first = await _busy(link, stub)
        link.mean_gap = 40.0  # further apart than the longest linger: nothing would join
        link.round_trip = 30.0  # the round trip does not stop it: the gap does
        second = _request(link, 1)
        await asyncio.sleep(0)
        link.mean_gap = 40.0  # as it was before this request's own gap was counted
        await _until(lambda: len(stub.call.frames) == 2, seconds=10.0)
        await _answer_all(stub, first, second)

    async def test_the_mean_gap_follows_the_requests(
        self, link: StreamLink, stub: _FakeStub
    ) -> None:
        assert link.mean_gap == client.GAP_CAP  # a new link assumes requests far apart
        first = await _busy(link, stub)
        later = [_request(link, n) for n in range(1, 30)]
        await asyncio.sleep(0)
        assert link.mean_gap < BATCH_LINGER_MAX  # a burst: close together
        await _until(lambda: sum(len(f.requests) for f in stub.call.frames) == 30)
        await _answer_all(stub, first, *later)

    async def test_the_round_trip_follows_the_answers(
        self, link: StreamLink, stub: _FakeStub
    ) -> None:
        assert link.round_trip == 0.0  # unknown until the first answer: no linger
        first = await _busy(link, stub)
        written = time.monotonic()
        await asyncio.sleep(0.05)
        await _answer_all(stub, first)
        first_trip = link.round_trip
        assert 0.05 <= first_trip <= time.monotonic() - written + 0.01
        # A fast answer moves the mean by its weight only.
        second = _request(link, 1)
        await _until(lambda: len(stub.call.frames) == 2)
        stub.call.answer(stub.call.frames[1])
        await second
        assert link.round_trip < first_trip
        assert link.round_trip > first_trip * (1 - client.RTT_WEIGHT) - 0.001


class _HeldCall(_FakeCall):
    """A stream call whose writes complete only when :attr:`release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def write(self, frame: federation_pb2.StreamFrame) -> None:
        self.frames.append(frame)
        await self.release.wait()


@pytest.fixture
def debug_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every event logged meanwhile, debug ones included."""
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**before)


class TestTheStreamEndsMeanwhile:
    """The stream ends while a caller or the writer is suspended. A compiled
    build once failed both with TypeError (mypyc kept a check of ``ended``
    from before the ``await``); the Python always took the other branch."""

    async def test_a_request_waiting_for_a_slot_gets_why_the_stream_ended(
        self, monkeypatch: pytest.MonkeyPatch, stub: _FakeStub
    ) -> None:
        monkeypatch.setattr(client, "STREAM_IN_FLIGHT", 1)
        link = StreamLink("330000", stub, lambda envelopes: None, None)  # type: ignore[arg-type]
        try:
            first = await _busy(link, stub)
            second = _request(link, 1)  # no slot free: it waits
            await asyncio.sleep(0.01)
            assert not second.done()
            assert len(stub.call.frames) == 1
            stub.call.cancel()  # the stream ends
            with pytest.raises(StreamBroken):
                await first
            with pytest.raises(StreamBroken):
                await second
            assert len(stub.call.frames) == 1  # the second was never written
        finally:
            await link.close(grace=0.1)

    async def test_the_writer_stops_quietly_when_the_stream_ends_during_a_write(
        self, debug_logs: list[MutableMapping[str, Any]]
    ) -> None:
        stub = _FakeStub()
        held = stub.call = _HeldCall()
        link = StreamLink("330000", stub, lambda envelopes: None, None)  # type: ignore[arg-type]
        try:
            first = _request(link, 0)
            await _until(lambda: len(held.frames) == 1)  # the writer is inside write()
            held.cancel()  # the stream ends
            with pytest.raises(StreamBroken):
                await first
            held.release.set()
            writer = link._tasks[0]
            await asyncio.wait_for(writer, 2.0)
            assert writer.exception() is None
            events = [entry["event"] for entry in debug_logs]
            assert "stream write failed" not in events, debug_logs
        finally:
            await link.close(grace=0.1)
