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
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
)

from gateway.config.holder import ConfigHolder
from gateway.core.backoff import backoff_delay
from gateway.core.channels import balanced_aio_channel
from gateway.core.errors import (
    EnvelopeRejected,
    GatewayError,
    PeerDown,
    PeerUnavailable,
    RemoteError,
    ResourceExhausted,
    status_from_int,
)
from gateway.core.metrics import NodeMetrics
from gateway.core.tokenbucket import TokenBucket
from gateway.federation.breaker import BreakerState, CircuitBreaker
from gateway.storage.interfaces import MessageRecorder
from gateway.storage.records import LogEntry, MessageLogClosed
from gateway.trust.envelope import EnvelopeSigner, EnvelopeVerifier, OpenedEnvelope
from yrd.federation.v1 import federation_pb2_grpc

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
    # Reconnect quickly after a peer comes back (default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
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
    details = (error.details() or "").splitlines()
    line = details[0][:200] if details else ""
    return f"{error.code().name}: {line}" if line else error.code().name


def map_rpc_error(peer: str, error: grpc.aio.AioRpcError) -> GatewayError:
    """The one place a peer's grpc error becomes a domain error."""
    code = error.code()
    factory = _MAPPED.get(code)
    if factory is not None:
        return factory(peer, error.details() or "")
    return RemoteError(code, f"province {peer} refused the envelope: {error.details()}")


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
    ) -> None:
        self._metrics = metrics
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
        RemoteError for a refusal (signed or not), EnvelopeRejected if the
        response itself fails verification.
        """
        if self._followed != self._config.version:
            await self.follow_config()
        peer = self._peer(peer_code)
        deadline = time.monotonic() + max(0.0, timeout) * (1.0 - VERDICT_RESERVE)
        message_id = message_id or str(uuid.uuid4())

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
        log.info(
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
        if not peer.breaker.allow():
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
        request = self._signer.seal(
            receiver=peer.code,
            service=service,
            payload=payload,
            correlation_id=correlation_id,
            message_id=message_id,
            idempotency_key=idempotency_key,
        )
        sent = LogEntry(
            "out",
            "request",
            message_id,
            correlation_id,
            peer.code,
            service,
            request.SerializeToString(),
        )
        try:
            signed = await peer.stub.Exchange(request, timeout=remaining)
        except asyncio.CancelledError:
            with contextlib.suppress(MessageLogClosed):
                self._log.enqueue(sent)  # committed by the writer (at the latest on close)
            peer.failed(started)  # the outcome is unknown: count it against the peer
            raise
        except grpc.aio.AioRpcError as error:
            await self._log.append(sent)
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                peer.failed(started)
                self.contact(peer.code, contact_error(error))
            else:
                peer.breaker.record_success()  # the peer is up; it refused this envelope
                self.contact(peer.code)
            raise map_rpc_error(peer.code, error) from error
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
                opened.header.status_message,
                signed=True,
            )
        response = opened.parse(response_type)
        if not isinstance(response, response_type):  # pragma: no cover - parse builds it
            raise EnvelopeRejected(grpc.StatusCode.INTERNAL, "bad_payload", "unexpected payload")
        return response, opened

    async def close(self) -> None:
        self._closing.set()
        for peer in self._peers.values():
            await peer.channel.close()
        self._peers.clear()
