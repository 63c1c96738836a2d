"""The federation server: receives signed envelopes from peers.

Every request is opened by the :class:`~gateway.envelope.EnvelopeVerifier`
(each rejection of DESIGN §4 is a gRPC error, not a signed answer), logged,
deduplicated by (sender, message id), handed to the handler registered for its
logical service, and answered with a response envelope signed by this node
that names the request's digest. Business outcomes, refusals included, are
signed answers (``status_code`` in the header); only an envelope that cannot be
trusted gets a bare gRPC error.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import structlog
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from gateway import crypto
from gateway.envelope import (
    MAX_ENVELOPE_BYTES,
    EnvelopeSigner,
    EnvelopeVerifier,
    OpenedEnvelope,
)
from gateway.errors import RETRYABLE_CODES, EnvelopeRejected, GatewayError, status_from_int
from gateway.messagelog import DuplicateNonce, LogEntry, MessageLog
from gateway.metrics import NodeMetrics
from gateway.tls import peer_certificate, province_of_certificate
from yrd.federation.v1 import federation_pb2, federation_pb2_grpc

log = structlog.get_logger("yrd.federation.server")

#: A service handler: the opened request and the seconds left before the
#: caller's deadline; returns the response payload or raises GatewayError.
SERVICE_NAME = federation_pb2.DESCRIPTOR.services_by_name["FederationService"].full_name

Handler = Callable[[OpenedEnvelope, float], Awaitable[Message]]


@dataclass(frozen=True)
class _Outcome:
    payload: Message
    status_code: int
    status_message: str


class FederationServicer(federation_pb2_grpc.FederationServiceServicer):
    def __init__(
        self,
        signer: EnvelopeSigner,
        verifier: EnvelopeVerifier,
        message_log: MessageLog,
        *,
        handlers: dict[str, Handler],
        require_peer_certificate: bool = False,
        dedupe_entries: int = 10_000,
        dedupe_seconds: float = 300.0,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._require_certificate = require_peer_certificate
        self._signer = signer
        self._verifier = verifier
        self._log = message_log
        self._handlers = handlers
        #: Answers by (sender, message id), kept only while a retry of the same
        #: message can still come (a few minutes) and bounded in number: they
        #: hold personal data, and memory must not grow with traffic.
        self._done: OrderedDict[tuple[str, str], tuple[float, _Outcome]] = OrderedDict()
        self._dedupe_seconds = dedupe_seconds
        self._in_flight: dict[tuple[str, str], asyncio.Future[_Outcome]] = {}
        self._dedupe_entries = dedupe_entries

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
                )
            },
        )

    async def exchange_bytes(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> federation_pb2.SignedEnvelope:
        if len(request) > MAX_ENVELOPE_BYTES:
            raise EnvelopeRejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                "too_large",
                f"envelope: expected at most {MAX_ENVELOPE_BYTES} bytes",
            )
        signed = federation_pb2.SignedEnvelope()
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
        opened = self._verifier.open_request(request)
        header = opened.header
        if self._require_certificate:
            self._check_transport(context, header.sender)
        structlog.contextvars.bind_contextvars(
            correlation_id=header.correlation_id, peer=header.sender, service=header.service
        )
        try:
            _, answered = await self._log.append_request(
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
        remembered = self._done.get(key)
        outcome = remembered[1] if remembered is not None else None
        if outcome is None and answered is not None:
            # A retry of a request this node answered before it was restarted, or
            # that another worker answered: the same answer again.
            outcome = _logged_outcome(answered)
        if outcome is None:
            pending = self._in_flight.get(key)
            if pending is not None:
                outcome = await asyncio.shield(pending)
            else:
                outcome = await self._handle(key, opened, context)
        response = self._signer.seal(
            receiver=header.sender,
            service=header.service,
            payload=outcome.payload,
            correlation_id=header.correlation_id,
            idempotency_key=header.idempotency_key,
            request_digest=crypto.sha256(request.header),
            status_code=outcome.status_code,
            status_message=outcome.status_message,
        )
        await self._log.append(
            LogEntry(
                "out",
                "response",
                header.message_id,
                header.correlation_id,
                header.sender,
                header.service,
                response.SerializeToString(),
            )
        )
        return response

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
        province = province_of_certificate(pem)
        if province != sender:
            raise EnvelopeRejected(
                grpc.StatusCode.PERMISSION_DENIED,
                "certificate_province_mismatch",
                f"transport: the TLS certificate is of province {province or 'none'}, "
                f"the envelope claims {sender}",
            )

    async def _handle(
        self, key: tuple[str, str], opened: OpenedEnvelope, context: grpc.aio.ServicerContext
    ) -> _Outcome:
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        started = time.monotonic()
        try:
            handler = self._handlers[opened.header.service]
            remaining = context.time_remaining()
            timeout = 30.0 if remaining is None else max(0.0, remaining - 0.02)
            try:
                payload = await handler(opened, timeout)
                outcome = _Outcome(payload, 0, "")
            except GatewayError as exc:
                outcome = _Outcome(federation_pb2.DeliveryAck(), exc.code.value[0], exc.message)
            if outcome.status_code == 0 or not _is_transient(outcome.status_code):
                # Transient failures are not remembered: a retry should try again.
                now = time.monotonic()
                self._done[key] = (now + self._dedupe_seconds, outcome)
                while self._done and (
                    len(self._done) > self._dedupe_entries
                    or next(iter(self._done.values()))[0] < now
                ):
                    self._done.popitem(last=False)
            future.set_result(outcome)
            if self._metrics is not None:
                self._metrics.observe_exchange(
                    opened.header.sender,
                    opened.header.service,
                    "in",
                    status_from_int(outcome.status_code).name,
                    started,
                )
            log.info(
                "exchange",
                direction="in",
                outcome=status_from_int(outcome.status_code).name,
                duration_ms=round((time.monotonic() - started) * 1000, 2),
            )
            return outcome
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._in_flight.pop(key, None)


def _logged_outcome(envelope: bytes) -> _Outcome | None:
    """The outcome a logged response envelope carried; None for a transient failure
    (a retry should try again) or an envelope that does not parse."""
    try:
        signed = federation_pb2.SignedEnvelope.FromString(envelope)
        header = federation_pb2.EnvelopeHeader.FromString(signed.header)
        payload_type = message_factory.GetMessageClass(
            descriptor_pool.Default().FindMessageTypeByName(header.payload_type)
        )
        payload = payload_type.FromString(signed.payload)
    except (DecodeError, KeyError):
        return None
    if header.status_code != 0 and _is_transient(header.status_code):
        return None
    return _Outcome(payload, header.status_code, header.status_message)


def _is_transient(code: int) -> bool:
    return status_from_int(code) in RETRYABLE_CODES
