"""The federation server: receives signed envelopes from peers.

Every request is opened by the :class:`~gateway.trust.envelope.EnvelopeVerifier`
(each rejection of DESIGN §4 is a gRPC error, not a signed answer), logged,
deduplicated by (sender, message id), its payload checked field by field
(:mod:`gateway.federation.payloads`), handed to the handler registered for its
logical service, and answered with a response envelope signed by this node
that names the request's digest. Business outcomes, refusals included, are
signed answers (``status_code`` in the header); only an envelope that cannot be
trusted gets a bare gRPC error.

A message id is bound to the request it first came with (its
:func:`~gateway.trust.envelope.request_fingerprint`): a retry of that request gets
the same answer again, from memory or from the message log (another worker
process, a restart); a different request under a used message id is refused
with a signed ALREADY_EXISTS and never gets another request's answer.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from gateway.core import crypto
from gateway.core.errors import (
    DECISION_CODES,
    EnvelopeRejected,
    GatewayError,
    PeerUnavailable,
    status_from_int,
)
from gateway.core.identifiers import is_region_code, province_of
from gateway.core.metrics import NodeMetrics
from gateway.federation.client import (
    FRAME_BYTES,
    FRAME_ENVELOPES,
    MAX_TIMEOUT_MS,
    PROOF_BYTES,
    sign_frame,
)
from gateway.federation.payloads import validate_payload
from gateway.storage.interfaces import MessageRecorder
from gateway.storage.records import DuplicateNonce, LogEntry, LoggedExchange
from gateway.trust.envelope import (
    MAX_ENVELOPE_BYTES,
    EnvelopeSigner,
    EnvelopeVerifier,
    OpenedEnvelope,
    request_fingerprint,
)
from gateway.trust.tls import peer_certificate, province_of_certificate
from yrd.federation.v1 import federation_pb2, federation_pb2_grpc

log = structlog.get_logger("yrd.federation.server")

#: A service handler: the opened request and the seconds left before the
#: caller's deadline; returns the response payload or raises GatewayError.
SERVICE_NAME = federation_pb2.DESCRIPTOR.services_by_name["FederationService"].full_name

Handler = Callable[[OpenedEnvelope, float], Awaitable[Message]]


#: Outcomes a retry gets again: success and the decisions about the request
#: (DESIGN §5; the set of gateway.core.errors.DECISION_CODES). Faults are not
#: remembered: a retry of a request that met one is handled again.
_REMEMBERED = frozenset(code.value[0] for code in (grpc.StatusCode.OK, *DECISION_CODES))
#: How a refusal of a reused message id begins; a logged answer that begins so
#: answered a conflicting request and is never taken as the first one's answer.
REUSED_MESSAGE_ID = "header.message_id: already used"
_REUSED_MESSAGE_ID_REFUSAL = (
    f"{REUSED_MESSAGE_ID} by this sender for another request; expected a new message id "
    "for a new request (a retry repeats the service, payload type, idempotency key, "
    "correlation id and payload of the first)"
)
#: Bytes an entry of the answer memory holds besides its payload and message:
#: keys, fingerprint, tuple, dataclass and dict slot.
_ENTRY_OVERHEAD = 512


@dataclass(frozen=True)
class _Outcome:
    """An answer to a request: its payload, status and message. ``encoded`` is
    the payload serialized, once: what the response envelope carries and the
    answer memory keeps (given when known, as for an answer read back)."""

    payload: Message
    status_code: int
    status_message: str
    encoded: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not self.encoded:
            object.__setattr__(self, "encoded", self.payload.SerializeToString())

    @property
    def remembered(self) -> bool:
        return self.status_code in _REMEMBERED

    def size(self) -> int:
        """Bytes the outcome holds in memory once remembered, roughly (for the
        memory bound): its serialized payload and message, and the entry."""
        return sys.getsizeof(self.encoded) + sys.getsizeof(self.status_message) + _ENTRY_OVERHEAD


@dataclass(frozen=True)
class _Remembered:
    """An answer kept for retries: its payload serialized (a parsed message
    holds about twice the memory, and few answers are ever asked again)."""

    expires: float
    fingerprint: bytes
    payload: bytes
    payload_type: type[Message]
    status_code: int
    status_message: str
    size: int

    @classmethod
    def of(cls, expires: float, fingerprint: bytes, outcome: _Outcome, size: int) -> _Remembered:
        return cls(
            expires,
            fingerprint,
            outcome.encoded,
            type(outcome.payload),
            outcome.status_code,
            outcome.status_message,
            size,
        )

    @property
    def outcome(self) -> _Outcome:
        """The answer again (the same payload bytes, status and message)."""
        return _Outcome(
            self.payload_type.FromString(self.payload),
            self.status_code,
            self.status_message,
            self.payload,
        )


def _reused_message_id() -> _Outcome:
    return _Outcome(
        federation_pb2.DeliveryAck(),
        grpc.StatusCode.ALREADY_EXISTS.value[0],
        _REUSED_MESSAGE_ID_REFUSAL,
    )


class FederationServicer(federation_pb2_grpc.FederationServiceServicer):
    def __init__(
        self,
        signer: EnvelopeSigner,
        verifier: EnvelopeVerifier,
        message_log: MessageRecorder,
        *,
        handlers: dict[str, Handler],
        require_peer_certificate: bool = False,
        dedupe_entries: int = 10_000,
        dedupe_bytes: int = 64 * 1024 * 1024,
        dedupe_seconds: float = 300.0,
        metrics: NodeMetrics | None = None,
        serving: Callable[[], bool] | None = None,
    ) -> None:
        self._metrics = metrics
        #: Whether the node's health says SERVING: while it does not, a stream
        #: refuses what it reads (UNAVAILABLE, not handled) and ends, so that
        #: the asker's next stream goes to a replica that serves.
        self._serving = serving or (lambda: True)
        self._require_certificate = require_peer_certificate
        self._signer = signer
        self._verifier = verifier
        self._log = message_log
        self._handlers = handlers
        #: Answers by (sender, message id), with the fingerprint of the request
        #: they answered, kept only while a retry of the same message can still
        #: come (a few minutes) and bounded in number and in bytes: they hold
        #: personal data, and memory must not grow with traffic.
        self._done: OrderedDict[tuple[str, str], _Remembered] = OrderedDict()
        self._done_bytes = 0
        self._dedupe_seconds = dedupe_seconds
        self._dedupe_entries = dedupe_entries
        self._dedupe_bytes = dedupe_bytes
        #: Requests being handled: their fingerprint and the answer to come.
        self._in_flight: dict[tuple[str, str], tuple[bytes, asyncio.Future[_Outcome]]] = {}
        #: The tasks serving streams now, and the signal that ends them (drain).
        self._streams: set[asyncio.Task[Any]] = set()
        #: Streams open per peer province ("unknown" without the certificate check).
        self._peer_streams: Counter[str] = Counter()
        #: Requests in flight per peer province, over all its streams.
        self._in_flight_of: dict[str, asyncio.Semaphore] = {}
        #: Streams refused, per province: one log line per REFUSED_LOG_SECONDS.
        self._refused_streams = _ThrottledWarning(
            "streams refused: too many open", "peer", "refused", STREAMS_PER_PEER
        )
        self._draining = asyncio.Event()
        #: Requests whose asker went away while they were handled (its stream
        #: broke, its unary call was cancelled), carried on to their end so
        #: that the asker's retry of the exchange gets their answer: at most
        #: :data:`CARRIED_ON`, each within its own deadline.
        self._carried_on: set[asyncio.Task[Any]] = set()
        #: Set when the node stops: a request whose asker goes away is no
        #: longer carried on (:meth:`settle` ends those that are).
        self._stopping = False
        #: Requests cut off, per reason: one log line per REFUSED_LOG_SECONDS.
        self._cut_off = _ThrottledWarning(
            "requests cut off with their asker", "reason", "cut_off", CARRIED_ON
        )

    @property
    def remembered(self) -> tuple[int, int]:
        """Entries and bytes (estimated) of the answer memory."""
        return len(self._done), self._done_bytes

    @property
    def remembered_bounds(self) -> tuple[int, int]:
        return self._dedupe_entries, self._dedupe_bytes

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """The service's handler, taking raw request bytes.

        The request is parsed here rather than by gRPC's deserializer, so that
        garbage or truncated bytes get INVALID_ARGUMENT naming what was expected
        instead of gRPC's generic INTERNAL "Exception deserializing request".
        """
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Exchange": grpc.unary_unary_rpc_method_handler(
                    self.exchange_bytes,
                    request_deserializer=None,
                    response_serializer=federation_pb2.SignedEnvelope.SerializeToString,
                ),
                "Stream": grpc.stream_stream_rpc_method_handler(
                    self.stream_bytes,
                    request_deserializer=None,
                    response_serializer=federation_pb2.StreamFrame.SerializeToString,
                ),
            },
        )

    async def exchange_bytes(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> federation_pb2.SignedEnvelope:
        signed = federation_pb2.SignedEnvelope()
        try:
            return await self._exchange_bytes(request, signed, context)
        except EnvelopeRejected as exc:
            self._count_refusal(signed, exc.reason)
            raise

    def _count_refusal(self, signed: federation_pb2.SignedEnvelope, reason: str) -> None:
        """``yrd_refusals_total``: by the province the envelope claims to be from
        (when its header names a well-formed province code, else ``unknown``)
        and the rejection's reason (a constant of the verifier's)."""
        if self._metrics is None:
            return
        self._metrics.refusals.labels(claimed_sender(signed), refusal_reason(reason)).inc()

    async def _exchange_bytes(
        self,
        request: bytes,
        signed: federation_pb2.SignedEnvelope,
        context: grpc.aio.ServicerContext,
    ) -> federation_pb2.SignedEnvelope:
        if len(request) > MAX_ENVELOPE_BYTES:
            raise EnvelopeRejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                "too_large",
                f"envelope: expected at most {MAX_ENVELOPE_BYTES} bytes",
            )
        try:
            signed.ParseFromString(request)
        except DecodeError as exc:
            raise EnvelopeRejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed",
                "request: expected a serialized yrd.federation.v1.SignedEnvelope",
            ) from exc
        return await self.Exchange(signed, context)

    async def Exchange(  # noqa: N802 - the gRPC method name
        self, request: federation_pb2.SignedEnvelope, context: grpc.aio.ServicerContext
    ) -> federation_pb2.SignedEnvelope:
        remaining = context.time_remaining()
        answering = asyncio.ensure_future(
            self._answer(
                request,
                30.0 if remaining is None else max(0.0, remaining - 0.02),
                check_sender=(
                    (lambda sender: self._check_transport(context, sender))
                    if self._require_certificate
                    else None
                ),
                batched=False,
            )
        )
        try:
            answer = await asyncio.shield(answering)
        except asyncio.CancelledError:
            # The call was cancelled (the asker went away): its request is
            # handled to its end all the same, for the asker's retry.
            if not self.carry_on(answering):
                answering.cancel()
            raise
        _bind_exchange(answer.request)  # bound in the answering task: the call's lines too
        await self._log.append(answer.row())
        return answer.response

    async def _answer(
        self,
        request: federation_pb2.SignedEnvelope,
        timeout: float,
        *,
        check_sender: Callable[[str], None] | None,
        batched: bool,
    ) -> _Answer:
        """What Exchange and Stream do with one request: open it, log it, answer
        it (from the dedupe memory or the log, or by its handler within
        ``timeout`` seconds), seal the response (signed alone, or ``batched`` for
        the stream's writer to sign with its frame). The caller logs the
        response's row (:meth:`_Answer.row`) once its signature is final."""
        opened = await self._verifier.open_request_fresh(request)
        header = opened.header
        if check_sender is not None:
            check_sender(header.sender)
        _bind_exchange(header)
        fingerprint = opened.fingerprint
        try:
            _, logged = await self._log.append_request(
                LogEntry(
                    "in",
                    "request",
                    header.message_id,
                    header.correlation_id,
                    header.sender,
                    header.service,
                    request.SerializeToString(),
                    nonce=header.nonce,
                )
            )
        except DuplicateNonce as exc:
            # Seen by another worker process of this node: the log is the shared memory.
            raise EnvelopeRejected(
                grpc.StatusCode.ALREADY_EXISTS,
                "replayed_nonce",
                "header.nonce: already seen from this sender (replay)",
            ) from exc
        key = (header.sender, header.message_id)
        outcome = self._earlier_outcome(key, fingerprint, logged)
        if outcome is None:
            pending = self._in_flight.get(key)
            if pending is not None:
                outcome = await _joined(pending[1])
            else:
                outcome = await self._handle(key, opened, timeout)
        response = self._signer.seal(
            receiver=header.sender,
            service=header.service,
            payload=outcome.payload,
            payload_bytes=outcome.encoded,
            correlation_id=header.correlation_id,
            idempotency_key=header.idempotency_key,
            request_digest=crypto.sha256(request.header),
            status_code=outcome.status_code,
            status_message=outcome.status_message,
            batched=batched,
        )
        return _Answer(response, header)

    async def Stream(  # noqa: N802 - the gRPC method name
        self,
        request_iterator: object,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[federation_pb2.StreamFrame]:
        """Not mounted: :meth:`generic_handler` serves Stream from raw bytes
        (:meth:`stream_bytes`), so that a garbage frame gets INVALID_ARGUMENT."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Stream: served by stream_bytes")
        yield federation_pb2.StreamFrame()  # pragma: no cover - abort raises

    def _peer_slots(self, peer: str) -> asyncio.Semaphore:
        """The slots of :data:`PEER_IN_FLIGHT` that every stream of ``peer`` shares
        (kept for the process's life: one per province that ever opened a stream)."""
        slots = self._in_flight_of.get(peer)
        if slots is None:
            slots = self._in_flight_of[peer] = asyncio.Semaphore(PEER_IN_FLIGHT)
        return slots

    def carry_on(self, task: asyncio.Task[Any]) -> bool:
        """Let ``task``, the handling of a request whose asker went away (its
        stream broke, its call was cancelled), run to its end: its answer is
        remembered, and the asker's retry of the exchange (the same message
        id, on a new stream) is given it instead of handling the request a
        second time, which could answer otherwise (a token its first handling
        spent would be "used"). False, and the task is the caller's to cancel,
        past :data:`CARRIED_ON` such tasks or while the node stops."""
        if task.done():
            return True
        if self._stopping or len(self._carried_on) >= CARRIED_ON:
            self._cut_off.note("stopping" if self._stopping else "too_many_carried_on")
            return False
        self._carried_on.add(task)
        task.add_done_callback(_carried_on_done)
        task.add_done_callback(self._carried_on.discard)
        return True

    @property
    def carried_on(self) -> int:
        """Requests handled now whose asker went away (:meth:`carry_on`)."""
        return len(self._carried_on)

    async def settle(self, timeout: float) -> None:
        """Let the requests carried on after their asker went away finish, for
        at most ``timeout`` seconds; cancel the rest (the node stops)."""
        self._stopping = True
        if self._carried_on:
            await asyncio.wait(list(self._carried_on), timeout=max(0.0, timeout))
        if self._carried_on:
            log.warning(
                "requests cut off with their asker",
                reason="stopping",
                limit=CARRIED_ON,
                cut_off=len(self._carried_on),
            )
            for task in list(self._carried_on):
                task.cancel()
            await asyncio.wait(list(self._carried_on))

    async def drain(self, timeout: float) -> None:
        """Stop reading new frames on every stream, answer what was read, end
        the streams with OK (the node stops); at most ``timeout`` seconds."""
        self._draining.set()
        if self._streams:
            await asyncio.wait(list(self._streams), timeout=max(0.0, timeout))

    @property
    def streams(self) -> int:
        """Streams being served now."""
        return len(self._streams)

    async def stream_bytes(
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> None:
        """The Stream RPC (frames parsed here, as Exchange's envelope is)."""
        if self._draining.is_set():
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "this node is stopping; open the stream again"
            )
        province: str | None = None
        if self._require_certificate:
            pem = peer_certificate(context)
            if pem is None:
                if self._metrics is not None:
                    self._metrics.refusals.labels("unknown", "no_client_certificate").inc()
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "transport: a federation stream needs the calling node's TLS client "
                    "certificate (call the peer's federation endpoint)",
                )
            province = province_of_certificate(pem) if pem is not None else None
        # Served outside the interceptor (a stream): the node's name in every line.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(node=self._signer.province)
        peer = province or "unknown"
        if self._peer_streams[peer] >= STREAMS_PER_PEER:
            if self._metrics is not None:
                self._metrics.refusals.labels(peer, "too_many_streams").inc()
            self._refused_streams.note(peer)  # a peer reopening in a loop: one line
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Stream: at most {STREAMS_PER_PEER} streams of one province open at once "
                f"(province {peer} has {self._peer_streams[peer]}); send on an open one",
            )
        served = _StreamServed(self, context, province, self._peer_slots(peer))
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        self._peer_streams[peer] += 1
        if self._metrics is not None:
            self._metrics.streams.labels(served.peer, "in").inc()
        try:
            problem = await served.run()
        finally:
            self._streams.discard(task)
            self._peer_streams[peer] -= 1
            if not self._peer_streams[peer]:
                del self._peer_streams[peer]
            if self._metrics is not None:
                self._metrics.streams.labels(served.peer, "in").dec()
        if problem is not None and problem.code != grpc.StatusCode.OK:
            await context.abort(problem.code, problem.message)

    def _earlier_outcome(
        self, key: tuple[str, str], fingerprint: bytes, logged: LoggedExchange
    ) -> _Outcome | None:
        """The answer a request gets without being handled: the refusal of a
        message id reused for another request, or the answer a retry of the same
        request was given before (remembered here or logged); None to handle it."""
        now = time.monotonic()
        remembered = self._done.get(key)
        if remembered is not None and remembered.expires < now:
            remembered = None
        pending = self._in_flight.get(key)
        first = _fingerprint_of(logged.first_request) if logged.first_request else None
        if (
            (remembered is not None and remembered.fingerprint != fingerprint)
            or (pending is not None and pending[0] != fingerprint)
            or (logged.first_request is not None and first != fingerprint)
        ):
            log.warning("message id reused for another request", reason="reused_message_id")
            if self._metrics is not None:
                self._metrics.refusals.labels(key[0], "reused_message_id").inc()
            return _reused_message_id()
        if remembered is not None:
            return remembered.outcome
        # A retry of a request this node answered before it was restarted, or
        # that another worker answered: the same answer again.
        return _logged_outcome(logged.answers)

    def _remember(self, key: tuple[str, str], fingerprint: bytes, outcome: _Outcome) -> None:
        """Keep a decision or success for retries, within the memory bounds."""
        now = time.monotonic()
        old = self._done.pop(key, None)
        if old is not None:
            self._done_bytes -= old.size
        size = outcome.size() + len(key[0]) + len(key[1]) + len(fingerprint)
        if size <= self._dedupe_bytes // 4:  # a huge answer stays in the log only
            self._done[key] = _Remembered.of(now + self._dedupe_seconds, fingerprint, outcome, size)
            self._done_bytes += size
        while self._done:
            oldest = next(iter(self._done.values()))
            if (
                len(self._done) <= self._dedupe_entries
                and self._done_bytes <= self._dedupe_bytes
                and oldest.expires >= now
            ):
                break
            self._done_bytes -= self._done.popitem(last=False)[1].size

    @staticmethod
    def _check_transport(context: grpc.aio.ServicerContext, sender: str) -> None:
        """The TLS certificate must be the node of the province the envelope claims."""
        pem = peer_certificate(context)
        if pem is None:
            raise EnvelopeRejected(
                grpc.StatusCode.UNAUTHENTICATED,
                "no_client_certificate",
                "transport: a federation call needs the calling node's TLS client certificate "
                "(call the peer's federation endpoint)",
            )
        check_certificate_province(province_of_certificate(pem), sender)

    async def _handle(
        self, key: tuple[str, str], opened: OpenedEnvelope, timeout: float
    ) -> _Outcome:
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        fingerprint = opened.fingerprint
        self._in_flight[key] = (fingerprint, future)
        started = time.monotonic()
        try:
            handler = self._handlers[opened.header.service]
            try:
                validate_payload(opened)
                payload = await handler(opened, timeout)
                outcome = _Outcome(payload, 0, "")
            except GatewayError as exc:
                outcome = _Outcome(federation_pb2.DeliveryAck(), exc.code.value[0], exc.message)
            except Exception as exc:
                # A bug, not the peer's fault: answered (signed INTERNAL, which the
                # peer retries) and logged once, by type only (the message may
                # carry personal data from the payload).
                log.error(
                    "federation handler failed", error_type=type(exc).__name__, exc_info=False
                )
                outcome = _Outcome(
                    federation_pb2.DeliveryAck(),
                    grpc.StatusCode.INTERNAL.value[0],
                    f"internal error at {self._signer.province}; the request may be retried",
                )
            if outcome.remembered:
                self._remember(key, fingerprint, outcome)
            future.set_result(outcome)
            if self._metrics is not None:
                self._metrics.observe_exchange(
                    opened.header.sender,
                    opened.header.service,
                    "in",
                    status_from_int(outcome.status_code).name,
                    started,
                )
            outcome_name = status_from_int(outcome.status_code).name
            # An exchange that went well is a debug line (issue 16: fewer info
            # lines per exchange on the hot path); every other outcome stays info.
            (log.debug if outcome_name == "OK" else log.info)(
                "exchange",
                direction="in",
                outcome=outcome_name,
                duration_ms=round((time.monotonic() - started) * 1000, 2),
            )
            return outcome
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._in_flight.pop(key, None)


#: Requests whose asker went away while they were handled that one node
#: process carries on to their end at once (:meth:`FederationServicer.carry_on`);
#: past it such a request is cut off as before (a peer that breaks its streams
#: in a loop cannot make the node hold more).
CARRIED_ON = 4096
#: Requests one stream may have in flight at the receiver; while full, the
#: stream is not read (HTTP/2 flow control holds the sender back).
STREAM_IN_FLIGHT = 1024
#: Requests all the streams of one peer province may have in flight at the
#: receiver together (the asker's own bound per peer): a peer that opens many
#: streams gets no more handled at once than one that opens one.
PEER_IN_FLIGHT = 4096
#: Streams one peer province may hold open at once at this node process: one
#: per worker process of each of its replicas is the norm; past it a new
#: stream is refused RESOURCE_EXHAUSTED.
STREAMS_PER_PEER = 64
#: Streams refused to one province are logged at most once per this many
#: seconds (the line counts those refused since the last); the metric counts each.
REFUSED_LOG_SECONDS = 10.0
#: On drain, how long a stream still waits for a frame already on its way
#: before it stops reading, seconds.
DRAIN_READ_SECONDS = 0.1


class _ThrottledWarning:
    """A warning of one kind that a peer could repeat in a loop: at most one
    line per :data:`REFUSED_LOG_SECONDS` per key, each counting the events
    since the line before. The line is ``event`` with the key as
    ``key_field``, ``limit``, and the count as ``count_field``."""

    def __init__(self, event: str, key_field: str, count_field: str, limit: int) -> None:
        self._event = event
        self._key_field = key_field
        self._count_field = count_field
        self._limit = limit
        self._counts: Counter[str] = Counter()
        self._logged: dict[str, float] = {}

    def note(self, key: str) -> None:
        """Count one event of ``key``; log the events since the last line unless
        a line was written less than the interval ago."""
        self._counts[key] += 1
        now = time.monotonic()
        if now - self._logged.get(key, -REFUSED_LOG_SECONDS) < REFUSED_LOG_SECONDS:
            return
        self._logged[key] = now
        log.warning(
            self._event,
            **{
                self._key_field: key,
                "limit": self._limit,
                self._count_field: self._counts.pop(key),
            },
        )


@dataclass(frozen=True)
class _Answer:
    """A sealed response and the request header it answers."""

    response: federation_pb2.SignedEnvelope
    request: federation_pb2.EnvelopeHeader

    def row(self) -> LogEntry:
        """The response's message-log row (its bytes as they go out: sign first)."""
        header = self.request
        return LogEntry(
            "out",
            "response",
            header.message_id,
            header.correlation_id,
            header.sender,
            header.service,
            self.response.SerializeToString(),
        )


@dataclass(frozen=True)
class _Problem:
    """Why a stream ends with an error status instead of OK."""

    code: grpc.StatusCode
    message: str


class _StreamServed:
    """One Stream as the answering node serves it.

    The reader parses each frame and starts one task per request (the path
    Exchange takes), at most :data:`STREAM_IN_FLIGHT` at once and at most
    :data:`PEER_IN_FLIGHT` with the peer's other streams: while either is full,
    it reads no further. The writer (:meth:`run`) takes every answer that is ready,
    signs the responses once as a batch, logs their rows in one commit and
    writes one frame. On drain the writer first tells the asker
    (``StreamFrame.draining``: it sends nothing more here), the reader takes
    what was already on its way, every request read is answered, then the
    stream ends with OK. On a bad frame the reader stops, every request read is
    answered, then the stream ends with the bad frame's status.
    """

    def __init__(
        self,
        servicer: FederationServicer,
        context: grpc.aio.ServicerContext,
        province: str | None,
        peer_slots: asyncio.Semaphore,
    ) -> None:
        self._servicer = servicer
        self._context = context
        #: The caller's certificate province (None without the certificate check).
        self._province = province
        self.peer = province or "unknown"
        self._slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        #: Shared with the peer's other streams (:data:`PEER_IN_FLIGHT`); this
        #: stream's share is given back whole when it ends, answered or not.
        self._peer_slots = peer_slots
        self._peer_held = 0
        self._ready: list[tuple[bytes, _Answer | federation_pb2.StreamRefusal]] = []
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Draining: the asker is yet to be told (then it is, once).
        self._tell_drain = False

    async def run(self) -> _Problem | None:
        reader = asyncio.create_task(self._read())
        try:
            while True:
                await self._wake.wait()
                await asyncio.sleep(0)  # answers ready in the same loop turn join the frame
                self._wake.clear()
                if self._ready or self._tell_drain:
                    ready, self._ready = self._ready, []
                    await self._write(ready)
                if reader.done() and not (self._tasks or self._ready or self._tell_drain):
                    return reader.result()
        finally:
            reader.cancel()
            # Requests still being handled are carried on (their answer is
            # kept for the asker's retry on its next stream); their slots are
            # given back with the stream's.
            for task in self._tasks:
                if not self._servicer.carry_on(task):
                    task.cancel()
            for _ in range(self._peer_held):
                self._peer_slots.release()
            self._peer_held = 0

    async def _read(self) -> _Problem | None:
        draining = asyncio.ensure_future(self._servicer._draining.wait())
        loop = asyncio.get_running_loop()
        #: When reading stops, once draining (loop time).
        stop_reading: float | None = None
        try:
            while True:
                reading = asyncio.ensure_future(self._context.read())
                await asyncio.wait((reading, draining), return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    # Draining: frames the asker sent before it are taken still
                    # (they arrive within a moment); then no more is read, and
                    # what was read is answered.
                    if stop_reading is None:
                        stop_reading = loop.time() + DRAIN_READ_SECONDS
                        self._tell_drain = True  # the next frame says so
                        self._wake.set()
                    await asyncio.wait((reading,), timeout=max(0.0, stop_reading - loop.time()))
                if not reading.done():
                    reading.cancel()
                    return None
                raw = reading.result()
                if raw is grpc.aio.EOF:
                    return None
                problem = await self._frame(raw)
                if problem is not None:
                    return problem
        finally:
            draining.cancel()
            self._wake.set()  # the writer sees the reader done

    async def _frame(self, raw: object) -> _Problem | None:
        """Start the requests of one frame; a problem ends the stream."""
        frame = federation_pb2.StreamFrame()
        try:
            if not isinstance(raw, bytes):
                raise DecodeError("not bytes")
            frame.ParseFromString(raw)
        except DecodeError:
            return _Problem(
                grpc.StatusCode.INVALID_ARGUMENT,
                "StreamFrame: expected a serialized yrd.federation.v1.StreamFrame",
            )
        if frame.responses or frame.refusals:
            return _Problem(
                grpc.StatusCode.INVALID_ARGUMENT,
                "StreamFrame.responses, StreamFrame.refusals: expected none from the asking "
                "node (its frames carry requests only)",
            )
        if len(frame.requests) > FRAME_ENVELOPES:
            return _Problem(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"StreamFrame.requests: expected at most {FRAME_ENVELOPES} requests per frame",
            )
        metrics = self._servicer._metrics
        if metrics is not None:
            metrics.batch_envelopes.labels(self.peer, "in").observe(len(frame.requests))
        if not self._servicer._serving():
            for request in frame.requests:
                header = request.envelope.header
                digest = crypto.sha256(header) if header else b""
                await self._take_slot()  # released by the writer, as for answers
                refusal = _refusal(
                    digest,
                    grpc.StatusCode.UNAVAILABLE,
                    "this node is not serving now (health NOT_SERVING); the request "
                    "was not handled: send it again",
                )
                self._ready.append((digest, refusal))
            self._tell_drain = True  # the asker writes nothing more here
            self._wake.set()
            return _Problem(grpc.StatusCode.OK, "not serving: the stream ends")
        for request in frame.requests:
            await self._take_slot()
            task = asyncio.create_task(self._one(request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return None

    async def _one(self, request: federation_pb2.StreamRequest) -> None:
        servicer = self._servicer
        envelope = request.envelope
        digest = crypto.sha256(envelope.header) if envelope.header else b""
        item: _Answer | federation_pb2.StreamRefusal
        try:
            if envelope.ByteSize() > MAX_ENVELOPE_BYTES:
                raise EnvelopeRejected(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "too_large",
                    f"StreamRequest.envelope: expected at most {MAX_ENVELOPE_BYTES} bytes",
                )
            if not 1 <= request.timeout_ms <= MAX_TIMEOUT_MS:
                raise EnvelopeRejected(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "malformed",
                    f"StreamRequest.timeout_ms: expected 1..{MAX_TIMEOUT_MS} milliseconds",
                )
            province = self._province
            item = await servicer._answer(
                envelope,
                max(0.0, request.timeout_ms / 1000 - 0.02),
                check_sender=(
                    None
                    if not servicer._require_certificate
                    else lambda sender: check_certificate_province(province, sender)
                ),
                batched=True,
            )
        except EnvelopeRejected as exc:
            servicer._count_refusal(envelope, exc.reason)
            item = _refusal(digest, exc.code, exc.message)
        except GatewayError as exc:  # a fault (its store cannot write): retried by the asker
            item = _refusal(digest, exc.code, exc.message)
        except Exception as exc:
            log.error("federation stream request failed", error_type=type(exc).__name__)
            item = _refusal(
                digest,
                grpc.StatusCode.INTERNAL,
                f"internal error at {servicer._signer.province}; the request may be retried",
            )
        self._ready.append((digest, item))
        self._wake.set()

    async def _write(
        self, ready: list[tuple[bytes, _Answer | federation_pb2.StreamRefusal]]
    ) -> None:
        """Write the ready answers: per receiver, frames of responses signed once
        and logged in one commit before they go out; refusals in the last frame."""
        servicer = self._servicer
        refusals = [item for _, item in ready if isinstance(item, federation_pb2.StreamRefusal)]
        groups: dict[str, list[tuple[bytes, _Answer]]] = {}
        for digest, item in ready:
            if isinstance(item, _Answer):
                groups.setdefault(item.request.sender, []).append((digest, item))
        frames: list[federation_pb2.StreamFrame] = []
        for receiver, answers in groups.items():
            for chunk in _chunks(answers):
                frame = federation_pb2.StreamFrame()
                sign_frame(servicer._signer, [a.response for _, a in chunk], receiver=receiver)
                try:
                    await servicer._log.append_all(tuple(a.row() for _, a in chunk))
                except GatewayError as exc:  # not logged: not sent; the asker retries
                    refusals.extend(_refusal(d, exc.code, exc.message) for d, _ in chunk)
                    continue
                frame.responses.extend(a.response for _, a in chunk)
                frames.append(frame)
        if refusals:
            if not frames:
                frames.append(federation_pb2.StreamFrame())
            frames[-1].refusals.extend(refusals)
        if self._tell_drain:
            self._tell_drain = False
            if not frames:
                frames.append(federation_pb2.StreamFrame())
            frames[0].draining = True
        try:
            for frame in frames:
                await self._context.write(frame)
                carried = len(frame.responses) + len(frame.refusals)
                if servicer._metrics is not None and carried:  # not a drain notice alone
                    servicer._metrics.batch_envelopes.labels(self.peer, "out").observe(carried)
        finally:
            for _ in ready:
                self._slots.release()
                self._peer_slots.release()
            self._peer_held -= len(ready)

    async def _take_slot(self) -> None:
        """A slot of this stream's and of its peer's in-flight bounds: while either
        is full the stream is not read further (released by :meth:`_write`)."""
        await self._slots.acquire()
        try:
            await self._peer_slots.acquire()
        except BaseException:
            self._slots.release()
            raise
        self._peer_held += 1


def _chunks(answers: list[tuple[bytes, _Answer]]) -> list[list[tuple[bytes, _Answer]]]:
    """``answers`` cut into frames within FRAME_ENVELOPES and FRAME_BYTES."""
    chunks: list[list[tuple[bytes, _Answer]]] = [[]]
    size = 0
    for entry in answers:
        cost = entry[1].response.ByteSize() + PROOF_BYTES
        if chunks[-1] and (len(chunks[-1]) >= FRAME_ENVELOPES or size + cost > FRAME_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += cost
    return chunks


def _refusal(digest: bytes, code: grpc.StatusCode, message: str) -> federation_pb2.StreamRefusal:
    return federation_pb2.StreamRefusal(
        request_digest=digest, code=code.value[0], message=message[:1024]
    )


def check_certificate_province(province: str | None, sender: str) -> None:
    """The province of the caller's TLS certificate must be the envelope's sender."""
    if province != sender:
        raise EnvelopeRejected(
            grpc.StatusCode.PERMISSION_DENIED,
            "certificate_province_mismatch",
            f"transport: the TLS certificate is of province {province or 'none'}, "
            f"the envelope claims {sender}",
        )


#: A reason label as the verifier's constants are written; anything else is ``other``.
_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")


def refusal_reason(reason: str) -> str:
    """``reason`` as a label value: the verifier's constant, never free text."""
    return reason if _REASON.fullmatch(reason) else "other"


def claimed_sender(signed: federation_pb2.SignedEnvelope) -> str:
    """The province code a (possibly refused) envelope's header claims as its
    sender, if it is a well-formed province-level code; else ``unknown``. A
    label value from a bounded set, whatever the envelope holds."""
    header = federation_pb2.EnvelopeHeader()
    try:
        header.ParseFromString(signed.header)
    except DecodeError:
        return "unknown"
    sender = header.sender
    if is_region_code(sender) and province_of(sender) == sender:
        return sender
    return "unknown"


def _fingerprint_of(envelope: bytes) -> bytes | None:
    """The request fingerprint of a logged request envelope (None if unreadable)."""
    try:
        signed = federation_pb2.SignedEnvelope.FromString(envelope)
        return request_fingerprint(federation_pb2.EnvelopeHeader.FromString(signed.header))
    except DecodeError:
        return None


def _bind_exchange(header: federation_pb2.EnvelopeHeader) -> None:
    """The exchange a request belongs to, in every log line that follows."""
    structlog.contextvars.bind_contextvars(
        correlation_id=header.correlation_id, peer=header.sender, service=header.service
    )


async def _joined(first: asyncio.Future[_Outcome]) -> _Outcome:
    """The outcome of the request's handling already under way (a retry came
    while it is handled); a fault the asker retries if that handling was cut
    off (the node stops) rather than this retry's own cancellation."""
    try:
        return await asyncio.shield(first)
    except asyncio.CancelledError:
        if first.done() and not first.cancelled():
            raise PeerUnavailable(
                "the first attempt of this request was cut off before its answer; send it again"
            ) from None
        raise


def _carried_on_done(task: asyncio.Task[Any]) -> None:
    """A carried-on request ended. Its refusal, had its asker stayed, would
    have been the asker's to see: dropped; any other error is logged once, by
    type only (as a handler's)."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None and not isinstance(error, GatewayError):
        log.error("carried-on request failed", error_type=type(error).__name__)


def _logged_outcome(answers: tuple[bytes, ...]) -> _Outcome | None:
    """The outcome the newest logged answer to the request carried, skipping
    refusals of conflicting requests; None for a fault (a retry should try
    again), an envelope that does not parse, or no answer."""
    for envelope in answers:
        try:
            signed = federation_pb2.SignedEnvelope.FromString(envelope)
            header = federation_pb2.EnvelopeHeader.FromString(signed.header)
        except DecodeError:
            return None
        if header.status_code == grpc.StatusCode.ALREADY_EXISTS.value[0] and (
            header.status_message.startswith(REUSED_MESSAGE_ID)
        ):
            continue
        try:
            payload_type = message_factory.GetMessageClass(
                descriptor_pool.Default().FindMessageTypeByName(header.payload_type)
            )
            payload = payload_type.FromString(signed.payload)
        except (DecodeError, KeyError):
            return None
        outcome = _Outcome(payload, header.status_code, header.status_message, signed.payload)
        return outcome if outcome.remembered else None
    return None
