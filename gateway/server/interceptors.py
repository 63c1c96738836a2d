"""Cross-cutting concerns of every RPC, in one server interceptor.

- correlation id: taken from ``x-correlation-id`` metadata or made, bound into
  structlog's contextvars and echoed in the trailing metadata;
- authentication of local clients (``authorization: Bearer <token>``; the node
  keeps only the token's SHA-256) and authorisation per gRPC service;
- the one mapping of domain errors to gRPC statuses, with ``google.rpc``
  details (BadRequest field violations, RetryInfo) where they help; anything
  unexpected becomes INTERNAL with the correlation id, never a raw UNKNOWN;
- one JSON log line per call with method, client, status and duration.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.config.holder import ConfigHolder
from gateway.config.models import ClientSection
from gateway.core.errors import (
    AlreadyExists,
    EnvelopeRejected,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from gateway.core.identifiers import ordered_uuid
from gateway.core.metrics import NodeMetrics
from gateway.core.tokenbucket import TokenBucket
from gateway.services.calls import current_client, current_correlation_id
from gateway.trust.envelope import HEADER_BOUNDS
from gateway.trust.tls import certificate_fingerprint, peer_certificate, province_of_certificate

log = structlog.get_logger("yrd.rpc")

#: A caller's correlation id as envelope headers carry it (1..128 printable ASCII).
_CORRELATION_ID = HEADER_BOUNDS["correlation_id"][0]

FEDERATION_SERVICE = "yrd.federation.v1.FederationService"
_OK = grpc.StatusCode.OK

#: Services that need no client credential: standard probes, and the federation
#: service, whose callers are authenticated by their signed envelopes (and mTLS).
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
        "yrd.federation.v1.FederationService",
        # Public facts only (a province's signed descriptor).
        "yrd.directory.v1.DirectoryService",
    }
)


#: Longest status message a caller gets, in UTF-8 bytes. Clients refuse
#: response metadata over 16 KiB (the message travels percent-encoded in
#: ``grpc-message`` and again in ``grpc-status-details-bin``): a longer one
#: would reach the caller as RESOURCE_EXHAUSTED instead of its real code.
MAX_STATUS_MESSAGE = 1024
#: Longest field path in a BadRequest detail.
MAX_FIELD_NAME = 128


def bounded(text: str, limit: int = MAX_STATUS_MESSAGE) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary)."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode("utf-8", "ignore") + "…"


def status_of(exc: GatewayError) -> grpc.Status:
    """The status a caller gets for a domain error, with ``google.rpc`` details:
    BadRequest (the field) for InvalidArgument, RetryInfo for any error that
    says when to retry (``retry_after``), ErrorInfo for a refused envelope."""
    message = bounded(exc.message)
    details: list[Message] = []
    if isinstance(exc, InvalidArgument):
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=bounded(exc.field, MAX_FIELD_NAME), description=message
                    )
                ]
            )
        )
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float):
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromMilliseconds(max(1, int(retry_after * 1000)))
        details.append(info)
    if isinstance(exc, EnvelopeRejected):
        details.append(
            error_details_pb2.ErrorInfo(
                reason=bounded(exc.reason.upper(), MAX_FIELD_NAME), domain="yrd.gateway"
            )
        )
    status = status_pb2.Status(code=exc.code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)


def _correlation_id_of(metadata: Any) -> str:
    """The caller's ``x-correlation-id`` when a peer's envelope check would accept
    it (1..128 printable ASCII), else a fresh one: only such an id travels on."""
    correlation_id = ""
    for key, value in metadata:
        if (
            key == "x-correlation-id"
            and isinstance(value, str)
            and value
            and _CORRELATION_ID.fullmatch(value)
        ):
            correlation_id = value
    return correlation_id or ordered_uuid()


def _peer_name(context: grpc.aio.ServicerContext) -> str:
    """Who called the federation service, by its TLS certificate: ``peer:<province>``
    (the province the federation CA certified), else ``certificate:<8 hex>``, else ``-``.
    The sender an envelope claims is the federation server's to log."""
    certificate = peer_certificate(context)
    if certificate is None:
        return "-"
    province = province_of_certificate(certificate)
    if province is not None:
        return f"peer:{province}"
    return f"certificate:{certificate_fingerprint(certificate)[:8]}"


#: The reason label of yrd_refusals_total by the error a call was refused with
#: (ResourceExhausted: rate_limited or overloaded, by where it was raised).
_REFUSALS: dict[type[GatewayError], str] = {
    Unauthenticated: "unauthenticated",
    PermissionDenied: "permission_denied",
    InvalidArgument: "invalid_argument",
    AlreadyExists: "already_exists",
    FailedPrecondition: "failed_precondition",
}


@dataclass(frozen=True)
class _CallStatus(grpc.Status):  # type: ignore[misc]  # grpc-stubs types grpc.Status as Any
    """A status to abort with: grpc-status-details plus the correlation id."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class RateLimiter:
    """A token bucket per local client: ``rate_per_second`` on average, ``burst`` at once."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, client: ClientSection) -> None:
        bucket = self._buckets.get(client.id)
        if bucket is None:
            bucket = self._buckets[client.id] = TokenBucket(client.rate_per_second, client.burst)
        bucket.rate, bucket.capacity = client.rate_per_second, client.burst  # after a reload
        wait = bucket.take()
        if wait > 0.0:
            raise ResourceExhausted(
                f"client {client.id} is over its rate limit of {client.rate_per_second:g} calls/s "
                f"(burst {client.burst}); retry after {wait:.2f} s",
                retry_after=wait,
            )


class GatewayInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc-stubs types it as Any
    def __init__(self, config: ConfigHolder, metrics: NodeMetrics | None = None) -> None:
        self._metrics = metrics
        #: Read per request so that a config reload takes effect at once.
        self._config = config
        self.rate_limiter = RateLimiter()
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        #: Unary calls in progress: past ``node.max_concurrent_calls`` a call is
        #: refused at once. Counted here rather than by gRPC's own limit, which
        #: would also count the long-lived health Watch streams that every
        #: load-balanced client channel keeps open on every replica.
        self.in_flight = 0

    def identify(
        self,
        metadata: tuple[tuple[str, Any], ...],
        certificate: Callable[[], bytes | None] = lambda: None,
    ) -> tuple[ClientSection | None, str]:
        """The registered client a call presents (by bearer token or TLS
        certificate), or None, and the name it goes by in the log: the client id,
        or for an unregistered credential a fingerprint (the first 8 hex digits
        of its SHA-256, never the token itself), or ``-`` when it presents none.

        A registered token identifies the caller; the client certificate
        (``certificate()``: the call's TLS auth context, about 14 µs of CPU a
        call) is read only when no registered token does. A caller holding a
        registered token and a registered certificate is the token's client."""
        province = self._config.me
        token = ""
        for key, value in metadata:
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer":
                    token = ""
        digest = ""
        if token:
            digest = hashlib.sha256(token.encode()).hexdigest()
            client = province.client_by_token_digest(digest)
            if client is not None:
                return client, client.id
        pem = certificate()
        fingerprint = ""
        if pem is not None:
            fingerprint = certificate_fingerprint(pem)
            by_certificate = province.client_by_certificate(fingerprint)
            if by_certificate is not None:
                return by_certificate, by_certificate.id
        if digest:
            return None, f"token:{digest[:8]}"
        if fingerprint:
            return None, f"certificate:{fingerprint[:8]}"
        return None, "-"

    def _admit(self, client: ClientSection | None, claimed: str, service: str) -> ClientSection:
        if client is None:
            if claimed.startswith("token:"):
                raise Unauthenticated("authorization: the token is not registered with this node")
            raise Unauthenticated("authorization: expected 'Bearer <client token>' metadata")
        return self._authorise(client, service)

    @staticmethod
    def _authorise(client: ClientSection, service: str) -> ClientSection:
        if service not in client.services:
            raise PermissionDenied(f"client {client.id} may not call {service}")
        return client

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        # One wrapped handler per method, made at its first call (the services
        # are fixed when the server starts).
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped_handler = self._wrap(method, handler)
        self._handlers[method] = wrapped_handler
        return wrapped_handler

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service = method.split("/")[1] if method.count("/") >= 2 else method
        behavior = handler.unary_unary
        # What the method decides, decided once.
        open_service = service in OPEN_SERVICES
        federation = service == FEDERATION_SERVICE
        metrics = self._metrics
        bind = structlog.contextvars.bind_contextvars

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.monotonic()
            metadata = context.invocation_metadata() or ()
            correlation_id = _correlation_id_of(metadata)
            structlog.contextvars.clear_contextvars()
            bind(node=self._config.me.code, correlation_id=correlation_id, method=method)
            current_correlation_id.set(correlation_id)
            client_id = "-"
            code = grpc.StatusCode.OK
            reason = ""
            counted = False
            #: What a ResourceExhausted raised next means, for yrd_refusals_total.
            exhausted = "overloaded"
            try:
                limit = self._config.me.node.max_concurrent_calls
                if self.in_flight >= limit:
                    raise ResourceExhausted(
                        f"node busy: {limit} calls in progress (node.max_concurrent_calls);"
                        " retry shortly",
                        retry_after=0.1,
                    )
                self.in_flight += 1
                counted = True
                if not open_service:
                    claimed, client_id = self.identify(
                        metadata, functools.partial(peer_certificate, context)
                    )
                    client = self._admit(claimed, client_id, service)
                    exhausted = "rate_limited"
                    self.rate_limiter.admit(client)
                    exhausted = "overloaded"
                    current_client.set(client)
                # Echoed with the status (trailing metadata): no extra frame per call.
                context.set_trailing_metadata((("x-correlation-id", correlation_id),))
                return await behavior(request, context)
            except GatewayError as exc:
                code = exc.code
                reason = (
                    exc.reason if isinstance(exc, EnvelopeRejected) else bounded(exc.message, 200)
                )
                self._count_refusal(service, context, exc, exhausted)
                status = status_of(exc)
                await context.abort_with_status(
                    _CallStatus(
                        status.code,
                        status.details,
                        (*status.trailing_metadata, ("x-correlation-id", correlation_id)),
                    )
                )
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                reason = "aborted by the handler"
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                reason = "unexpected error"
                log.exception("unexpected error")
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"internal error; quote correlation id {correlation_id} to the operator",
                    trailing_metadata=(("x-correlation-id", correlation_id),),
                )
            finally:
                if counted:
                    self.in_flight -= 1
                if metrics is not None:
                    metrics.observe_rpc(method, code.name, started)
                self._log(federation, context, client_id, code, reason, started)
            return None  # pragma: no cover - abort raises

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _count_refusal(
        self,
        service: str,
        context: grpc.aio.ServicerContext,
        exc: GatewayError,
        exhausted: str,
    ) -> None:
        """``yrd_refusals_total`` for a call this node refused. A local client's
        call counts as origin ``client``; a refused federation envelope is
        counted by the federation server (it knows the sender claimed); a call
        to an open service refused here (overload: a peer's envelope or
        descriptor fetch, a probe) by the province of the caller's TLS
        certificate, else ``unknown``."""
        if self._metrics is None or isinstance(exc, EnvelopeRejected):
            return
        why = exhausted if isinstance(exc, ResourceExhausted) else None
        for kind, label in _REFUSALS.items():
            if isinstance(exc, kind):
                why = label
        if why is None:
            return  # not a refusal: an answer (NOT_FOUND) or a fault (UNAVAILABLE)
        origin = "client"
        if service in OPEN_SERVICES:
            certificate = peer_certificate(context)
            province = province_of_certificate(certificate) if certificate else None
            origin = province or "unknown"
        self._metrics.refusals.labels(origin, why).inc()

    @staticmethod
    def _log(
        federation: bool,
        context: grpc.aio.ServicerContext,
        client_id: str,
        code: grpc.StatusCode,
        reason: str,
        started: float,
    ) -> None:
        """The call's log line (its metric is counted before): an accepted
        federation call is logged by its "exchange" line; a refused one (bad
        envelope, wrong certificate) only here, naming the client it claimed to
        be and why."""
        if code is _OK:
            if not federation:
                took = round((time.monotonic() - started) * 1000, 2)
                log.info("rpc", client=client_id, code="OK", duration_ms=took)
            return
        took = round((time.monotonic() - started) * 1000, 2)
        if federation:
            client_id = _peer_name(context)
        log.info("rpc", client=client_id, code=code.name, reason=reason, duration_ms=took)
