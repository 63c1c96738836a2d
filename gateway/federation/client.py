"""The federation client: sends signed envelopes to peer nodes.

One retry layer lives here and nowhere else (DESIGN §5): tenacity retries an
exchange only on a transport failure -- a bare (unsigned) UNAVAILABLE /
DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED, a connection error -- never on an
answer the peer signed (its "my back-end is unreachable" is said at once to
the caller), with the gateway's one backoff (:mod:`gateway.core.backoff`), only
while the peer's retry budget lasts, and never into the last fifth of the
caller's deadline, which is kept for the verdict. A circuit breaker per peer fails fast while a
province is down. Every attempt is a freshly signed envelope (new nonce, same
message id) and is logged, as is every response.

``grpc.RpcError`` becomes a domain error here, in one table (:data:`_MAPPED`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import grpc
import structlog
from google.protobuf.message import DecodeError, Message
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
)

from gateway.config.holder import ConfigHolder
from gateway.core import crypto
from gateway.core.backoff import backoff_delay
from gateway.core.channels import balanced_aio_channel
from gateway.core.errors import (
    EnvelopeRejected,
    GatewayError,
    InvalidArgument,
    PeerDown,
    PeerUnavailable,
    RemoteError,
    ResourceExhausted,
    status_from_int,
)
from gateway.core.identifiers import ordered_uuid
from gateway.core.metrics import NodeMetrics
from gateway.core.tokenbucket import TokenBucket
from gateway.federation.breaker import BreakerState, CircuitBreaker
from gateway.federation.payloads import validate_answer
from gateway.storage.interfaces import MessageRecorder
from gateway.storage.records import LogEntry, MessageLogClosed
from gateway.trust.envelope import EnvelopeSigner, EnvelopeVerifier, OpenedEnvelope
from yrd.federation.v1 import federation_pb2, federation_pb2_grpc

M = TypeVar("M", bound=Message)

log = structlog.get_logger("yrd.federation.client")

#: gRPC channel options for every node-to-node and client-to-node channel.
#: Keepalive pings detect a dead peer between calls; message sizes match
#: MAX_ENVELOPE_BYTES plus room for the envelope's own framing.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", 5 * 1024 * 1024),
    ("grpc.max_receive_message_length", 5 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect quickly after a peer comes back (default backoff grows to 120 s):
    # a replica that restarts is connected again within half a second. With 2 s
    # (before 2026-12-03) a restarted replica waited up to 2 s for this node, and
    # its twin killed meanwhile left no replica connected (replica soaks).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 500),
)

#: The share of the caller's time no attempt or retry may use: it is kept for the
#: caller's verdict (ISSUER_UNREACHABLE, a queued delivery) to reach it in time.
VERDICT_RESERVE = 0.2
#: Backoff between retries of one call: base and cap, seconds.
RETRY_BASE, RETRY_CAP = 0.05, 1.0


def transport_failure(exc: BaseException) -> bool:
    """A failure of the transport (retried here), not an answer of the peer."""
    return isinstance(exc, PeerUnavailable | ResourceExhausted) and exc.retryable


def retry_budget() -> TokenBucket:
    """Retries allowed towards one peer: 5 a second, 20 at once. A retry storm
    cannot amplify an outage."""
    return TokenBucket(rate=5.0, capacity=20.0)


#: Requests one stream link holds at once (queued, in a frame, awaiting their
#: answer); past it a caller waits for a slot, within its own deadline.
STREAM_IN_FLIGHT = 4096
#: Envelopes in one frame, and bytes of envelopes in one frame (the receiver's
#: message limit is MAX_ENVELOPE_BYTES plus framing).
FRAME_ENVELOPES = 1024
FRAME_BYTES = 4 * 1024 * 1024
#: Under load the writer lingers before a frame so that the requests arriving
#: meanwhile share it (one signature, one write, one commit at the peer): until
#: the frame would hold BATCH_TARGET requests, for at most the link's round
#: trip and at most BATCH_LINGER_MAX seconds, and only when that wait would
#: gather at least LINGER_GATHERS more requests (see :func:`linger`). An idle
#: link writes at once.
BATCH_TARGET = 16
BATCH_LINGER_MAX = 0.020
LINGER_GATHERS = 2
#: The weight of the newest gap between two requests in a link's moving mean
#: of them, and the longest gap counted (seconds; a pause counts as this).
GAP_WEIGHT = 0.2
GAP_CAP = 0.1
#: The weight of the newest round trip (a request's frame written to its
#: answer read) in a link's moving mean of them.
RTT_WEIGHT = 0.1
#: After a failed write, how long the writer waits for the reader to learn how
#: the stream ended (a drain's OK), seconds.
WRITE_FAILED_READ_WAIT = 1.0
#: Bytes an envelope adds in a frame (its batch proof: root, audit path,
#: framing), for the frame's byte budget (requests here, responses at the
#: answering node).
PROOF_BYTES = 1024
#: How long a peer that answered Stream with UNIMPLEMENTED is called with unary
#: Exchange before the stream is tried again (it may have been upgraded).
UNARY_FALLBACK_SECONDS = 300.0
#: Longest StreamRequest.timeout_ms, milliseconds (1.. this; the receiver
#: refuses others).
MAX_TIMEOUT_MS = 300_000

StreamAnswer = federation_pb2.SignedEnvelope | federation_pb2.StreamRefusal


class StreamBroken(Exception):
    """The stream a request travelled on ended before its answer came: a
    transport failure (the request may or may not have been handled; a retry
    with the same message id gets the same answer)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details

    def again(self) -> StreamBroken:
        """The same failure as a new exception (for another caller: one instance
        raised again and again would grow its traceback)."""
        return type(self)(self.code, self.details)


class StreamUnimplemented(StreamBroken):
    """The peer does not serve Stream: nothing sent on it was read."""


class StreamDraining(StreamBroken):
    """The peer said it drains this stream (``StreamFrame.draining``) before the
    request was written: nothing of it was sent, and a new stream takes it."""


def linger(queued: int, in_flight: int, mean_gap: float, round_trip: float) -> float:
    """How long a stream's writer waits before its next frame, seconds.

    ``queued``: requests waiting for a frame; ``in_flight``: those plus the
    ones written and still awaiting their answer; ``mean_gap``: the moving mean
    of the time between two requests; ``round_trip``: the moving mean of the
    link's round trip, a frame written to its answers (0 before the first).

    The longest linger is the round trip, at most :data:`BATCH_LINGER_MAX`:
    waiting never more than doubles a request's time on the link, and a link
    whose answers come back fast lingers little. The writer does not wait at
    all when the link is idle (nothing else awaits an answer: a lone request
    goes at once), when the frame is already full enough, or when the longest
    linger would gather fewer than :data:`LINGER_GATHERS` more requests at the
    current rate (a moderate load pays no wait for a frame of two). Otherwise
    it waits the time the requests still missing to :data:`BATCH_TARGET` take
    to arrive at that rate, at most the longest linger."""
    longest = min(BATCH_LINGER_MAX, round_trip)
    if in_flight <= queued or queued >= BATCH_TARGET or mean_gap * LINGER_GATHERS >= longest:
        return 0.0
    return min(longest, (BATCH_TARGET - queued) * mean_gap)


@dataclass
class _Queued:
    envelope: federation_pb2.SignedEnvelope
    deadline: float
    future: asyncio.Future[StreamAnswer]
    #: When its frame was written (monotonic; 0 while queued).
    written: float = 0.0


class StreamLink:
    """One long-lived Stream to a peer, carrying every exchange with it.

    Callers put sealed (unsigned, ``batched``) request envelopes on the queue
    and await their answer. The writer takes everything queued (at most
    :data:`FRAME_ENVELOPES` / :data:`FRAME_BYTES`), signs it once as a batch and
    writes one frame: an idle link sends a lone request at once, a busy one
    lingers a moment (:func:`linger`) so that the requests arriving meanwhile
    share the frame. The
    reader resolves each caller's future by the request digest its answer
    names. When the stream ends (the peer drained, died, or refused it) every
    caller still waiting fails with :class:`StreamBroken`; the next request
    opens a new link. A peer that drains says so first (a frame with
    ``draining``): the link then writes nothing more (requests not yet written
    fail with :class:`StreamDraining`, to go on a new stream at once) and reads
    the answers of those it sent until the stream ends.
    """

    def __init__(
        self,
        peer: str,
        stub: federation_pb2_grpc.FederationServiceStub,
        sign: Callable[[list[federation_pb2.SignedEnvelope]], None],
        metrics: NodeMetrics | None,
    ) -> None:
        self.peer = peer
        self._stub = stub
        self._sign = sign
        self._metrics = metrics
        self._queue: deque[_Queued] = deque()
        self._pending: dict[bytes, asyncio.Future[StreamAnswer]] = {}
        self._slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        self._wake = asyncio.Event()
        #: Set when the queue reaches BATCH_TARGET: a lingering writer goes at once.
        self._full = asyncio.Event()
        #: The moving mean of the time between two requests, and the last one's time.
        self.mean_gap = GAP_CAP
        self._last_request = 0.0
        #: The moving mean of the round trip (0 until the first answer).
        self.round_trip = 0.0
        self._call: (
            grpc.aio.StreamStreamCall[federation_pb2.StreamFrame, federation_pb2.StreamFrame] | None
        ) = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Why the link ended (None while it serves).
        self.ended: StreamBroken | None = None
        #: The peer said it drains this stream: nothing more is written on it.
        self.draining = False
        #: Frames and envelopes written (tests, metrics).
        self.frames_sent = 0
        self.envelopes_sent = 0

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _open(self) -> None:
        self._call = self._stub.Stream()
        if self._metrics is not None:
            self._metrics.streams.labels(self.peer, "out").inc()
        self._tasks = [
            asyncio.create_task(self._write(), name=f"stream-writer-{self.peer}"),
            asyncio.create_task(self._read(), name=f"stream-reader-{self.peer}"),
        ]

    async def exchange(
        self, envelope: federation_pb2.SignedEnvelope, deadline: float
    ) -> StreamAnswer:
        """Send ``envelope`` on the stream and return its answer (a response
        envelope or a refusal). Raises TimeoutError past ``deadline``,
        StreamBroken when the stream ends first."""
        self._check_serving()
        if self._slots.locked():  # all in flight: wait for a slot within the deadline
            async with asyncio.timeout_at(_loop_time(deadline)):
                await self._slots.acquire()
        else:
            await self._slots.acquire()  # free: taken at once, no timer needed
        try:
            self._check_serving()  # the stream may have ended while this waited
            if self.draining:
                raise self._drains()
            if self._call is None:
                self._open()
            digest = crypto.sha256(envelope.header)
            future: asyncio.Future[StreamAnswer] = asyncio.get_running_loop().create_future()
            self._pending[digest] = future
            queued = _Queued(envelope, deadline, future)
            self._queue.append(queued)
            now = time.monotonic()
            gap = min(GAP_CAP, now - self._last_request)
            self._last_request = now
            self.mean_gap += GAP_WEIGHT * (gap - self.mean_gap)
            self._wake.set()
            if len(self._queue) >= BATCH_TARGET:
                self._full.set()
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    answer = await future
                if queued.written:  # answered before its frame was written: nothing to count
                    self._count_round_trip(time.monotonic() - queued.written)
                return answer
            finally:
                if self._pending.get(digest) is future:
                    del self._pending[digest]
                future.cancel()  # a queued request not yet written is not sent
        finally:
            self._slots.release()

    # The two checks below are methods, not inline conditions, for a compiled
    # build: mypyc trusts mypy's narrowing of ``self.ended`` past an ``await``,
    # so an inline ``self.ended is None`` checked again after one (the stream
    # ended meanwhile) failed with TypeError instead of taking the other branch.

    def _check_serving(self) -> None:
        """Raise why the link ended, if it has."""
        if self.ended is not None:
            raise self.ended.again()

    def _writable(self) -> bool:
        """True while frames may be written: not ended, not draining."""
        return self.ended is None and not self.draining

    def _count_round_trip(self, seconds: float) -> None:
        if not self.round_trip:
            self.round_trip = seconds
        else:
            self.round_trip += RTT_WEIGHT * (seconds - self.round_trip)

    def _take(self) -> list[_Queued]:
        """What the next frame carries: the queued requests still awaited, up
        to the frame's bounds."""
        taken: list[_Queued] = []
        size = 0
        while self._queue and len(taken) < FRAME_ENVELOPES:
            item = self._queue[0]
            if item.future.done():
                self._queue.popleft()
                continue
            cost = item.envelope.ByteSize() + PROOF_BYTES
            if taken and size + cost > FRAME_BYTES:
                break
            self._queue.popleft()
            taken.append(item)
            size += cost
        return taken

    async def _write(self) -> None:
        call = self._call
        assert call is not None
        try:
            while self._writable():
                await self._wake.wait()
                wait = linger(len(self._queue), len(self._pending), self.mean_gap, self.round_trip)
                if wait > 0:
                    # Under load: the requests arriving meanwhile share this
                    # frame and its one signature (until it is full enough).
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._full.wait()
                else:
                    await asyncio.sleep(0)  # requests of this same loop turn join
                self._wake.clear()
                while self._writable() and (batch := self._take()):
                    envelopes = [item.envelope for item in batch]
                    self._sign(envelopes)
                    now = time.monotonic()
                    frame = federation_pb2.StreamFrame(
                        requests=[
                            federation_pb2.StreamRequest(
                                envelope=item.envelope,
                                timeout_ms=min(
                                    MAX_TIMEOUT_MS, max(1, int((item.deadline - now) * 1000))
                                ),
                            )
                            for item in batch
                        ]
                    )
                    for item in batch:
                        item.written = now
                    await call.write(frame)
                    self.frames_sent += 1
                    self.envelopes_sent += len(batch)
                    if self._metrics is not None:
                        self._metrics.batch_envelopes.labels(self.peer, "out").observe(len(batch))
            if self.draining and self.ended is None:
                # Half-close: the peer's reader sees the end at once and stops
                # waiting (a half-close that fails changes nothing: the peer
                # ends the stream after its drain anyway).
                with contextlib.suppress(Exception):
                    await call.done_writing()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call ended under the writer: the reader says why
            log.debug("stream write failed", peer=self.peer, error_type=type(exc).__name__)
            # The peer may have ended the stream (a drain ends it with OK) just
            # as this frame went: the reader sees how it ended; wait for it a
            # moment before saying only that the write failed.
            reader = [task for task in self._tasks if task is not asyncio.current_task()]
            if reader:
                await asyncio.wait(reader, timeout=WRITE_FAILED_READ_WAIT)
            self._end(StreamBroken(grpc.StatusCode.UNAVAILABLE, "the stream could not be written"))

    async def _read(self) -> None:
        call = self._call
        assert call is not None
        # Ended with OK: the peer drains (every request it read was answered).
        ended = StreamBroken(grpc.StatusCode.OK, f"province {self.peer} ended the stream (drain)")
        try:
            while True:
                frame = await call.read()
                if frame is grpc.aio.EOF:
                    break
                if not isinstance(frame, federation_pb2.StreamFrame):
                    # gRPC could not parse it (and gave None): a broken or hostile
                    # peer. Every pending exchange fails as a fault, retried.
                    log.warning("peer sent a stream frame that does not parse", peer=self.peer)
                    ended = StreamBroken(
                        grpc.StatusCode.INTERNAL,
                        f"province {self.peer} sent a frame that is not a "
                        "yrd.federation.v1.StreamFrame",
                    )
                    break
                carried = len(frame.responses) + len(frame.refusals)
                if self._metrics is not None and carried:  # not a drain notice alone
                    self._metrics.batch_envelopes.labels(self.peer, "in").observe(carried)
                for response in frame.responses:
                    try:
                        header = federation_pb2.EnvelopeHeader.FromString(response.header)
                    except DecodeError:
                        continue  # matches no request; its caller times out and retries
                    self._resolve(bytes(header.request_digest), response)
                for refusal in frame.refusals:
                    self._resolve(bytes(refusal.request_digest), refusal)
                if frame.draining:
                    self._drain()
        except grpc.aio.AioRpcError as error:
            code = error.code()
            kind = StreamUnimplemented if code == grpc.StatusCode.UNIMPLEMENTED else StreamBroken
            ended = kind(code, error.details() or "")
        except asyncio.CancelledError:
            ended = StreamBroken(grpc.StatusCode.CANCELLED, "the stream was closed")
            raise
        finally:
            self._end(ended)

    def _resolve(self, digest: bytes, answer: StreamAnswer) -> None:
        future = self._pending.pop(digest, None)
        if future is not None and not future.done():
            future.set_result(answer)

    def _drain(self) -> None:
        """The peer drains this stream: write nothing more on it. Requests still
        queued (not written) fail with :class:`StreamDraining`, to be sent on a
        new stream; those written keep waiting for their answers here."""
        if self.draining:
            return
        self.draining = True
        log.info("peer drains the stream; new exchanges go on a new one", peer=self.peer)
        queued, self._queue = self._queue, deque()
        for item in queued:
            if not item.future.done():
                item.future.set_exception(self._drains())
                item.future.exception()  # retrieved: the caller re-raises it
        self._wake.set()  # the writer sees it and half-closes

    def _drains(self) -> StreamDraining:
        return StreamDraining(grpc.StatusCode.UNAVAILABLE, f"province {self.peer} drains")

    def _end(self, why: StreamBroken) -> None:
        """The link serves no more: every caller waiting fails with ``why``."""
        if self.ended is not None:
            return
        self.ended = why
        self._wake.set()
        if self._metrics is not None and self._call is not None:
            self._metrics.streams.labels(self.peer, "out").dec()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(why.again())
                future.exception()  # retrieved: the caller re-raises it
        self._queue.clear()
        if self._call is not None:
            self._call.cancel()

    async def close(self, grace: float = 1.0) -> None:
        """End the stream cleanly: no new request, the answers of those sent
        awaited for at most ``grace`` seconds, then the call is cancelled."""
        call = self._call
        if call is not None and self.ended is None:
            with contextlib.suppress(Exception):
                if not self._pending:
                    await call.done_writing()
                reader = self._tasks[1]
                await asyncio.wait_for(asyncio.shield(reader), grace)
        self._end(StreamBroken(grpc.StatusCode.CANCELLED, "the stream was closed"))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def sign_frame(
    signer: EnvelopeSigner, envelopes: list[federation_pb2.SignedEnvelope], *, receiver: str
) -> None:
    """Sign a frame's envelopes as one batch (one signature). Envelopes sealed
    across a key rotation name two keys and cannot share a root: then each is
    signed as a batch of its own."""
    try:
        signer.sign_batch(envelopes, receiver=receiver)
    except ValueError:
        for envelope in envelopes:
            if not envelope.HasField("batch"):
                signer.sign_batch([envelope], receiver=receiver)


def _draining(link: StreamLink | None) -> bool:
    """Whether ``link`` is a stream its peer drains (still open, writing nothing)."""
    return link is not None and link.draining and link.ended is None


def _loop_time(deadline: float) -> float:
    """A time.monotonic() deadline on the event loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


#: Makes the one channel to a peer over all its federation endpoints (in the
#: peer's order of preference): :func:`gateway.core.channels.balanced_aio_channel`.
ChannelFactory = Callable[[tuple[str, ...]], grpc.aio.Channel]


@dataclass
class _Peer:
    code: str
    endpoints: tuple[str, ...]
    channel: grpc.aio.Channel
    stub: federation_pb2_grpc.FederationServiceStub
    breaker: CircuitBreaker
    budget: TokenBucket
    #: When a failure was last counted against the breaker (time.monotonic()).
    failed_at: float = 0.0
    #: The streams carrying this peer's exchanges, one per published endpoint
    #: (a replica each, as the channel's round robin places them; None: not
    #: opened yet); exchanges take them in turn.
    links: list[StreamLink | None] = field(default_factory=list)
    turn: int = 0
    #: With several endpoints, the channel of each (its stream pinned to that
    #: replica); with one, the peer's channel.
    stream_channels: list[grpc.aio.Channel] = field(default_factory=list)
    #: Until when (time.monotonic()) exchanges go unary: the peer answered
    #: Stream with UNIMPLEMENTED.
    unary_until: float = 0.0
    #: Links the peer drains, replaced for new exchanges, kept until they end
    #: (the answers of what was sent on them still come).
    draining: list[StreamLink] = field(default_factory=list)
    #: While the breaker is open, a call found no replica of the peer connected.
    unreachable_seen: bool = False

    def reconnected(self) -> bool:
        """The breaker is open, and a replica of the peer has connected (its
        channel READY) since a call found none connected: one trial call goes
        now instead of after the rest of the breaker's wait. A replica killed
        just after its twin came back would otherwise keep the province marked
        down for the whole wait after this node has reconnected to the twin.
        A peer whose channel stayed READY while its calls failed gets no early
        trial (it is reachable, not well)."""
        channels = self.stream_channels or [self.channel]
        if not any(
            channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY
            for channel in channels
        ):
            self.unreachable_seen = True
            return False
        if self.unreachable_seen and self.breaker.trial_now():
            self.unreachable_seen = False
            return True
        return False

    async def close_streams(self) -> None:
        for link in [*self.links, *self.draining]:
            if link is not None:
                await link.close()
        for channel in self.stream_channels:
            if channel is not self.channel:
                await channel.close(grace=1.0)

    def failed(self, started: float) -> None:
        """Count the failure of an attempt begun at ``started`` against the breaker,
        once per event: attempts already in flight when a failure was counted add
        nothing (a replica that dies fails every call on its connection at once,
        while the others serve), those begun after it do (a peer really down
        fails them too, and the breaker opens as before)."""
        if started < self.failed_at:
            return
        self.failed_at = time.monotonic()
        self.breaker.record_failure()


@dataclass(frozen=True)
class PeerHealth:
    """How the last calls to a peer went, as an operator asks after it."""

    #: The last call (exchange or descriptor fetch) got an answer; False after a
    #: failure or before any call since start.
    reachable: bool = False
    #: When a call last got an answer (UTC); None when none since start.
    last_success: datetime | None = None
    #: Why the last failed call failed (gRPC status name and a line, free of
    #: personal data); "" when the last call got an answer.
    last_error: str = ""


_MAPPED: dict[grpc.StatusCode, Callable[[str, str], GatewayError]] = {
    grpc.StatusCode.UNAVAILABLE: lambda peer, d: PeerUnavailable(
        f"province {peer} unavailable: {d}"
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: lambda peer, d: PeerUnavailable(
        f"province {peer} did not answer in time"
    ),
    grpc.StatusCode.RESOURCE_EXHAUSTED: lambda peer, d: ResourceExhausted(
        f"province {peer} is overloaded: {d}"
    ),
}


def contact_error(error: grpc.aio.AioRpcError) -> str:
    """A failed call as peer health keeps it: the status name and the first
    line of gRPC's details (transport text: addresses, no payload), bounded."""
    return contact_status(error.code(), error.details() or "")


def contact_status(code: grpc.StatusCode, details: str) -> str:
    """:func:`contact_error` for a status code and its details."""
    lines = details.splitlines()
    line = peer_text(lines[0][:200]) if lines else ""
    return f"{code.name}: {line}" if line else code.name


def map_rpc_error(peer: str, error: grpc.aio.AioRpcError) -> GatewayError:
    """The one place a peer's grpc error becomes a domain error."""
    return map_status(peer, error.code(), error.details() or "")


#: Control characters (C0, DEL, C1) in a peer's text.
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")
#: Longest peer text passed on (the bound of a signed status message).
PEER_TEXT_MAX = 1024


def peer_text(text: str) -> str:
    """Text a peer sent (a status message, a refusal, gRPC details) as this node
    passes it on to its callers, check details and logs: control characters as
    spaces, at most :data:`PEER_TEXT_MAX` characters."""
    text = _CONTROL_CHARS.sub(" ", text)
    return text if len(text) <= PEER_TEXT_MAX else text[: PEER_TEXT_MAX - 1] + "…"


def unusable_answer(peer: str, service: str, what: str, why: str) -> RemoteError:
    """A signed answer this node cannot use (its envelope does not verify, its
    payload does not validate): a fault of the peer, not its decision about the
    request, so unsigned UNAVAILABLE (retried by the outbox; a verification says
    the issuer gave no usable answer), never the caller's error it would read as."""
    return RemoteError(
        grpc.StatusCode.UNAVAILABLE,
        f"province {peer} answered {service} with {what}: {why}",
        signed=False,
    )


def map_status(peer: str, code: grpc.StatusCode, details: str) -> GatewayError:
    """A peer's bare status (a unary call's gRPC error, a stream's refusal of
    one request) as a domain error, by the one table :data:`_MAPPED`."""
    details = peer_text(details)
    factory = _MAPPED.get(code)
    if factory is not None:
        return factory(peer, details)
    return RemoteError(code, f"province {peer} refused the envelope: {details}")


class FederationClient:
    """Sends requests to peer nodes; one channel, breaker and retry budget per peer.

    Peers and their endpoints are those of the config in force (``config``):
    when a reload moves a peer or drops it, its channel is closed and the next
    call opens one to where the config now says (:meth:`follow_config`, which a
    reload calls at once and every call runs first when the config changed).
    """

    def __init__(
        self,
        config: ConfigHolder,
        signer: EnvelopeSigner,
        verifier: EnvelopeVerifier,
        message_log: MessageRecorder,
        *,
        channel_factory: ChannelFactory | None = None,
        metrics: NodeMetrics | None = None,
        stream: bool = True,
    ) -> None:
        self._metrics = metrics
        #: Exchanges travel on one Stream per peer (False: unary Exchange only).
        self.stream = stream
        self._config = config
        #: The config version the open channels were checked against.
        self._followed = config.version
        self._signer = signer
        self._verifier = verifier
        self._log = message_log
        self._peers: dict[str, _Peer] = {}
        self._channel_factory = channel_factory or (
            lambda endpoints: balanced_aio_channel(endpoints, None, options=CHANNEL_OPTIONS)
        )
        self._closing = asyncio.Event()
        self.retries = 0
        #: By peer code; kept across channel changes (a reload, a move).
        self._health: dict[str, PeerHealth] = {}

    def peer_health(self, code: str) -> PeerHealth:
        """Whether the last call to ``code`` got an answer, the last success, the last error."""
        return self._health.get(code, PeerHealth())

    def contact(self, code: str, error: str = "") -> None:
        """Record the outcome of a call to ``code`` (an exchange attempt, a
        descriptor fetch): answered (``error`` empty), or failed and why."""
        if len(self._health) > 1024 and code not in self._health:
            return  # bounded: peers are a handful; a stray code is not kept
        if error:
            self._health[code] = PeerHealth(False, self.peer_health(code).last_success, error)
        else:
            self._health[code] = PeerHealth(True, datetime.now(UTC), "")

    def _peer(self, code: str) -> _Peer:
        peer = self._peers.get(code)
        if peer is None:
            federation = self._config.federation
            config = federation.peer(code)
            if config is None:
                raise PeerUnavailable(
                    f"province {code} has no current descriptor (the directory has not "
                    "reached it, or its descriptor expired)"
                    if code in federation.peer_codes
                    else f"province {code} is not a peer of this node"
                )
            channel = self._channel_factory(config.endpoints)
            peer = _Peer(
                code,
                config.endpoints,
                channel,
                federation_pb2_grpc.FederationServiceStub(channel),
                CircuitBreaker(),
                retry_budget(),
            )
            self._peers[code] = peer
        return peer

    async def follow_config(self) -> None:
        """Close the channels to peers that moved or left since the config last
        changed (the set of their endpoints changed, or their order, which says
        the TLS name checked); the next call to such a peer opens one over its
        new endpoints."""
        if self._followed == self._config.version:
            return
        self._followed = self._config.version
        federation = self._config.federation
        gone = [
            self._peers.pop(code)
            for code in list(self._peers)
            if (config := federation.peer(code)) is None
            or config.endpoints != self._peers[code].endpoints
        ]
        for peer in gone:
            await peer.close_streams()
            await peer.channel.close(grace=1.0)

    def breaker_state(self, code: str) -> BreakerState:
        peer = self._peers.get(code)
        return peer.breaker.state if peer else BreakerState.CLOSED

    async def call(
        self,
        peer_code: str,
        service: str,
        payload: Message,
        response_type: type[M],
        *,
        correlation_id: str,
        timeout: float,
        idempotency_key: str = "",
        message_id: str | None = None,
        retry: bool = True,
    ) -> tuple[M, OpenedEnvelope]:
        """Exchange one request with a peer; return its parsed response and envelope.

        ``retry=False`` makes one attempt only: the outbox, which owns the retries
        of asynchronous deliveries, uses it so that retry layers never stack.

        Raises PeerUnavailable when the peer cannot be reached before the deadline,
        RemoteError for a refusal (signed or not), and an unsigned UNAVAILABLE
        RemoteError for an answer that does not verify or whose payload is
        unusable (a fault of the peer, not its decision).
        """
        if self._followed != self._config.version:
            await self.follow_config()
        peer = self._peer(peer_code)
        deadline = time.monotonic() + max(0.0, timeout) * (1.0 - VERDICT_RESERVE)
        message_id = message_id or ordered_uuid()

        def wait(state: RetryCallState) -> float:
            delay = backoff_delay(state.attempt_number, base=RETRY_BASE, cap=RETRY_CAP)
            return max(0.0, min(delay, deadline - time.monotonic() - 0.01))

        def retryable(exc: BaseException) -> bool:
            if not retry or not transport_failure(exc):
                return False
            if deadline - time.monotonic() <= 0.02 or self._closing.is_set():
                return False
            if not peer.budget.try_take():
                log.warning("retry budget exhausted", peer=peer_code, service=service)
                return False
            self.retries += 1
            if self._metrics is not None:
                self._metrics.retries.labels(peer_code).inc()
            return True

        async def attempt() -> tuple[M, OpenedEnvelope]:
            started = time.monotonic()
            try:
                result = await self._attempt(
                    peer,
                    service,
                    payload,
                    response_type,
                    correlation_id=correlation_id,
                    deadline=deadline,
                    idempotency_key=idempotency_key,
                    message_id=message_id,
                )
            except GatewayError as exc:
                self._observe(peer_code, service, exc.code.name, started, correlation_id)
                raise
            self._observe(peer_code, service, "OK", started, correlation_id)
            return result

        # The first attempt goes straight out: most calls succeed, and building
        # the retry machinery for each of them costs measurable time under load.
        try:
            return await attempt()
        except GatewayError as exc:
            if not retryable(exc):
                raise
        retrying = AsyncRetrying(
            retry=retry_if_exception(retryable),
            wait=wait,
            stop=stop_after_delay(max(0.0, deadline - time.monotonic())),
            reraise=True,
        )
        # The backoff tenacity would have waited before its second attempt.
        await asyncio.sleep(
            max(
                0.0,
                min(
                    backoff_delay(0, base=RETRY_BASE, cap=RETRY_CAP),
                    deadline - time.monotonic() - 0.01,
                ),
            )
        )
        async for retry_attempt in retrying:
            with retry_attempt:
                return await attempt()
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _observe(
        self, peer: str, service: str, outcome: str, started: float, correlation_id: str
    ) -> None:
        """One JSON log line and the metrics of one exchange attempt (sender's side)."""
        if self._metrics is not None:
            self._metrics.observe_exchange(peer, service, "out", outcome, started)
        # An exchange that went well is a debug line: at info, one line per
        # exchange was a measurable share of the hot path (issue 16).
        (log.debug if outcome == "OK" else log.info)(
            "exchange",
            direction="out",
            peer=peer,
            service=service,
            outcome=outcome,
            correlation_id=correlation_id,
            duration_ms=round((time.monotonic() - started) * 1000, 2),
        )

    async def _attempt(
        self,
        peer: _Peer,
        service: str,
        payload: Message,
        response_type: type[M],
        *,
        correlation_id: str,
        deadline: float,
        idempotency_key: str,
        message_id: str,
    ) -> tuple[M, OpenedEnvelope]:
        if not peer.breaker.allow() and not peer.reconnected():
            raise PeerDown(
                f"province {peer.code} is marked down (circuit open, next try in "
                f"{peer.breaker.retry_in():.1f} s)"
            )
        started = time.monotonic()
        remaining = deadline - started
        if remaining <= 0:
            peer.breaker.record_failure()
            self.contact(peer.code, "DEADLINE_EXCEEDED: no time left for an attempt")
            raise PeerUnavailable(f"province {peer.code} did not answer in time")

        def seal(batched: bool) -> federation_pb2.SignedEnvelope:
            return self._signer.seal(
                receiver=peer.code,
                service=service,
                payload=payload,
                correlation_id=correlation_id,
                message_id=message_id,
                idempotency_key=idempotency_key,
                batched=batched,
            )

        link = self._link(peer)
        if link is not None:
            request = seal(batched=True)
            try:
                answer = await self._on_stream(
                    peer, link, request, message_id, correlation_id, service, started, deadline
                )
            except StreamUnimplemented:
                # The peer does not serve Stream (nothing sent on it was read):
                # unary Exchange for a while, this exchange at once.
                log.info("peer does not serve Stream; exchanges go unary", peer=peer.code)
                peer.unary_until = time.monotonic() + UNARY_FALLBACK_SECONDS
            else:
                return await self._finish(
                    peer, request, answer, response_type, message_id, correlation_id, service
                )
        request = seal(batched=False)
        sent = self._sent(request, message_id, correlation_id, peer.code, service)
        try:
            signed = await peer.stub.Exchange(
                request, timeout=max(0.001, deadline - time.monotonic())
            )
        except asyncio.CancelledError:
            with contextlib.suppress(MessageLogClosed):
                self._log.enqueue(sent)  # committed by the writer (at the latest on close)
            peer.failed(started)  # the outcome is unknown: count it against the peer
            raise
        except grpc.aio.AioRpcError as error:
            await self._log.append(sent)
            raise self._refused(peer, started, error.code(), error.details() or "") from error
        return await self._finish(
            peer, request, signed, response_type, message_id, correlation_id, service
        )

    @staticmethod
    def _sent(
        request: federation_pb2.SignedEnvelope,
        message_id: str,
        correlation_id: str,
        peer: str,
        service: str,
    ) -> LogEntry:
        """The row of a request as it went out (with its signature or batch proof)."""
        return LogEntry(
            "out",
            "request",
            message_id,
            correlation_id,
            peer,
            service,
            request.SerializeToString(),
        )

    async def _on_stream(
        self,
        peer: _Peer,
        link: StreamLink,
        request: federation_pb2.SignedEnvelope,
        message_id: str,
        correlation_id: str,
        service: str,
        started: float,
        deadline: float,
    ) -> federation_pb2.SignedEnvelope:
        """Send ``request`` on the peer's stream; its signed response, or the
        domain error its refusal, a stream break or the deadline means. The
        request's row is logged here unless a response came (then with it)."""

        def sent() -> LogEntry | None:
            # Only a request signed in a frame went out; one still queued did not.
            if not request.HasField("batch") and not request.signature:
                return None
            return self._sent(request, message_id, correlation_id, peer.code, service)

        try:
            try:
                answer = await link.exchange(request, deadline)
            except StreamDraining:
                # Not sent: the peer began draining that stream. A new stream
                # (another replica's, or a new one to this peer) takes it at once.
                again = self._link(peer)
                if again is None:
                    raise
                answer = await again.exchange(request, deadline)
        except asyncio.CancelledError:
            row = sent()
            if row is not None:
                with contextlib.suppress(MessageLogClosed):
                    self._log.enqueue(row)  # committed by the writer (at the latest on close)
            peer.failed(started)  # the outcome is unknown: count it against the peer
            raise
        except StreamUnimplemented:
            raise
        except (StreamBroken, TimeoutError) as exc:
            row = sent()
            if row is not None:
                await self._log.append(row)
            if isinstance(exc, TimeoutError):
                code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "no answer on the stream in time"
            elif exc.code in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                code, details = exc.code, exc.details  # said of the stream: as unary says it
            else:
                # Ended under the request (drained, killed, cut): a transport
                # failure, retried with the same message id (the receiver's
                # dedupe answers a handled request again).
                code, details = grpc.StatusCode.UNAVAILABLE, f"stream ended: {exc.details}"
            raise self._refused(peer, started, code, details) from exc
        if isinstance(answer, federation_pb2.StreamRefusal):
            row = sent()
            if row is not None:
                await self._log.append(row)
            raise self._refused(peer, started, status_from_int(answer.code), answer.message[:1024])
        return answer

    def _refused(
        self, peer: _Peer, started: float, code: grpc.StatusCode, details: str
    ) -> GatewayError:
        """A bare status from the peer (unary error, stream refusal or break):
        the breaker and peer health updated, the domain error to raise."""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            peer.failed(started)
            self.contact(peer.code, contact_status(code, details))
        else:
            peer.breaker.record_success()  # the peer is up; it refused this envelope
            self.contact(peer.code)
        return map_status(peer.code, code, details)

    async def _finish(
        self,
        peer: _Peer,
        request: federation_pb2.SignedEnvelope,
        signed: federation_pb2.SignedEnvelope,
        response_type: type[M],
        message_id: str,
        correlation_id: str,
        service: str,
    ) -> tuple[M, OpenedEnvelope]:
        """Verify a signed response, log request and response together, act on it."""
        sent = self._sent(request, message_id, correlation_id, peer.code, service)
        peer.breaker.record_success()
        self.contact(peer.code)
        try:
            try:
                opened = self._verifier.open_response(
                    signed, peer=peer.code, request_header=request.header, service=service
                )
            except EnvelopeRejected as rejected:
                # Signed with a key published moments ago: fetch the peer's descriptor.
                if not await self._verifier.refreshed_for(signed, rejected):
                    raise
                opened = self._verifier.open_response(
                    signed, peer=peer.code, request_header=request.header, service=service
                )
        except EnvelopeRejected as rejected:
            await self._log.append(sent)
            log.warning(
                "peer's answer does not verify",
                peer=peer.code,
                service=service,
                reason=rejected.reason,
            )
            raise unusable_answer(
                peer.code, service, "an envelope that does not verify", rejected.message
            ) from rejected
        except BaseException:
            await self._log.append(sent)
            raise
        # The request and its answer are committed together, in one group, before
        # anyone acts on the answer.
        await self._log.append_all(
            (
                sent,
                LogEntry(
                    "in",
                    "response",
                    message_id,  # rows of one exchange share the request's message id
                    correlation_id,
                    peer.code,
                    service,
                    signed.SerializeToString(),
                ),
            )
        )
        if opened.header.status_code != 0:
            # The peer signed this status: its decision, or a fault it vouches for
            # (ends_exchange tells which); never retried here.
            raise RemoteError(
                status_from_int(opened.header.status_code),
                peer_text(opened.header.status_message),
                signed=True,
            )
        try:
            response = opened.parse(response_type)
            validate_answer(response)
        except (EnvelopeRejected, InvalidArgument) as exc:
            # Named by field, never by value.
            log.warning("peer's answer does not validate", peer=peer.code, service=service)
            raise unusable_answer(peer.code, service, "an unusable payload", exc.message) from exc
        return response, opened  # type: ignore[return-value]  # parse built a response_type

    def stream_link(self, code: str) -> StreamLink | None:
        """The (first) stream carrying exchanges with ``code`` (None if none)."""
        peer = self._peers.get(code)
        return None if peer is None or not peer.links else peer.links[0]

    def _link(self, peer: _Peer) -> StreamLink | None:
        """The stream for an exchange with ``peer``: the open one, a new one
        when it ended, None for unary (streams off, or the peer lacks Stream)."""
        if not self.stream or self._closing.is_set() or peer.unary_until > time.monotonic():
            return None
        # One stream per endpoint, each on a channel to that endpoint alone: a
        # peer's replicas share its exchanges as they share unary calls, taken
        # in turn, skipping a replica whose channel is not READY (down, or its
        # health NOT_SERVING) while another is.
        if not peer.stream_channels:
            peer.stream_channels = (
                [peer.channel]
                if len(peer.endpoints) <= 1
                else [self._channel_factory((endpoint,)) for endpoint in peer.endpoints]
            )
            peer.links = [None] * len(peer.stream_channels)
        count = len(peer.links)
        index = peer.turn % count
        if count > 1:
            for step in range(count):
                candidate = (peer.turn + step) % count
                state = peer.stream_channels[candidate].get_state(try_to_connect=True)
                if state == grpc.ChannelConnectivity.READY and not _draining(peer.links[candidate]):
                    index = candidate
                    break
        peer.turn = index + 1
        link = peer.links[index]
        if link is not None and _draining(link):
            # Its answers still come on it; new exchanges go on a new stream.
            peer.draining = [old for old in peer.draining if old.ended is None] + [link]
            link = None
        if link is None or link.ended is not None:
            channel = peer.stream_channels[index]
            link = peer.links[index] = StreamLink(
                peer.code,
                peer.stub
                if channel is peer.channel
                else federation_pb2_grpc.FederationServiceStub(channel),
                lambda envelopes: sign_frame(self._signer, envelopes, receiver=peer.code),
                self._metrics,
            )
        return link

    async def close(self) -> None:
        self._closing.set()
        for peer in self._peers.values():
            await peer.close_streams()
            await peer.channel.close()
        self._peers.clear()
