"""E-certificates: fetch a resident's or organisation's certificate from the
province that issued it, with the holder's consent (DESIGN §2).

The requesting node checks the caller's registration for the purpose, asks the
issuing node (``certificate.Fetch``, signed and logged at both ends — every
release is in the message log), verifies the issuing authority's e-stamp
against the seal key the issuing province publishes, and answers with the
certificate, the seal verdict and the category in its own province's code
table. A forged or expired certificate is returned with that verdict, never as
valid. The issuing node releases a certificate only when its library accepts
the consent reference for this holder and the requesting province.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC

import grpc
import structlog

from adapters import catalogue
from adapters.base import CertificateLibrary
from adapters.errors import (
    BackendRejected,
    BackendUnavailable,
    CertificateNotFound,
    ConsentRefused,
    TranslationError,
)
from gateway.config.holder import ConfigHolder
from gateway.config.models import ClientSection
from gateway.core.clock import Clock
from gateway.core.errors import (
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    PeerUnavailable,
    PermissionDenied,
    RemoteError,
)
from gateway.core.identifiers import (
    is_plain_text,
    validate_credit_code,
    validate_id_number,
    validate_region_code,
)
from gateway.core.metrics import NodeMetrics
from gateway.federation.client import FederationClient
from gateway.services.backendcalls import backend_call
from gateway.services.calls import current_correlation_id, require_client
from gateway.trust.envelope import OpenedEnvelope
from gateway.trust.seals import seal_verdict
from gateway.trust.truststore import TrustStore
from yrd.certificate.v1 import certificate_pb2, certificate_pb2_grpc

log = structlog.get_logger("yrd.certificate")

FETCH = "certificate.Fetch"
DEFAULT_TIMEOUT = 5.0
#: Calendar dates (expiry) are judged in the federation's time zone.
LOCAL_ZONE = zoneinfo.ZoneInfo("Asia/Shanghai")
_CONSENT = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CONSENT_REFUSALS = {
    "missing": "no consent under that reference",
    "expired": "the consent has expired",
    "other_holder": "the consent was given by another holder",
    "other_province": "the consent was given for another requesting province",
}


def validate_request(request: certificate_pb2.GetCertificateRequest) -> None:
    """Field checks both nodes run (the consent itself is the library's to judge)."""
    try:
        catalogue.category(request.category_code)
    except TranslationError as exc:
        raise InvalidArgument("category_code", exc.expected) from exc
    holder = request.holder_id.strip().upper()
    if re.fullmatch(r"[0-9]{17}[0-9X]", holder):
        validate_id_number("holder_id", holder)
    else:
        validate_credit_code("holder_id", holder)
    validate_region_code("issuer_province", request.issuer_province)
    if not request.consent_reference:
        raise PermissionDenied("consent_reference: the holder's consent reference is required")
    if not _CONSENT.fullmatch(request.consent_reference):
        raise InvalidArgument("consent_reference", "1..128 characters of [A-Za-z0-9._:-]")
    if len(request.certificate_number) > 64 or not is_plain_text(request.certificate_number):
        raise InvalidArgument("certificate_number", "at most 64 characters, no control characters")


class CertificateExchange:
    """Both halves: the requesting node and the issuing node."""

    #: Set by the node: back-end latency goes to its metrics.
    metrics: NodeMetrics | None = None

    def __init__(
        self,
        *,
        config: ConfigHolder,
        client: FederationClient,
        library: CertificateLibrary | None,
        clock: Clock,
    ) -> None:
        #: The config in force (read when a call starts; a reload swaps it).
        self._config = config
        self._client = client
        self._library = library
        self._clock = clock

    @property
    def own(self) -> str:
        return self._config.federation.own

    async def get(
        self,
        incoming: certificate_pb2.GetCertificateRequest,
        client: ClientSection,
        correlation_id: str,
        timeout: float,
    ) -> certificate_pb2.GetCertificateResponse:
        request = certificate_pb2.GetCertificateRequest()
        request.CopyFrom(incoming)
        request.holder_id = request.holder_id.strip().upper()
        if request.purpose not in client.certificate_purposes:
            raise PermissionDenied(
                f"purpose: {client.id} is not registered to fetch certificates for "
                f"{'this purpose' if request.purpose else '(none given)'}; expected one of "
                f"{', '.join(sorted(client.certificate_purposes)) or '(none registered)'}"
            )
        validate_request(request)
        federation, trust = self._config.federation, self._config.derived(TrustStore)
        issuer = request.issuer_province
        federation.require_peer("issuer_province", issuer, FETCH)
        try:
            certificate, _ = await self._client.call(
                issuer,
                FETCH,
                request,
                certificate_pb2.Certificate,
                correlation_id=correlation_id,
                timeout=timeout,
            )
        except RemoteError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"issuer {issuer}: {exc.message}") from exc
            if exc.code == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(f"issuer {issuer}: {exc.message}") from exc
            raise
        now = self._clock.now()
        response = certificate_pb2.GetCertificateResponse(correlation_id=correlation_id)
        response.certificate.CopyFrom(certificate)
        if certificate.issuer_province != issuer or certificate.category_code != (
            request.category_code
        ):
            # Not what was asked for: do not vouch for it.
            response.seal_verdict = certificate_pb2.SEAL_FORGED
        else:
            key = trust.seal_key(issuer, certificate.seal_key_id, now)
            if key is None and await self._config.refreshed(issuer):
                # A seal key published moments ago: the issuer's new descriptor.
                key = self._config.derived(TrustStore).seal_key(
                    issuer, certificate.seal_key_id, now
                )
            response.seal_verdict = seal_verdict(
                certificate, key, today=now.astimezone(LOCAL_ZONE).date()
            )
        response.verified_at.FromDatetime(now.astimezone(UTC))
        try:
            response.local_category_code = catalogue.local_code(
                federation.me.adapter, certificate.category_code
            )
        except TranslationError:
            response.local_category_code = ""  # this province has no code for it
        log.info(
            "certificate fetched",
            issuer=issuer,
            category=request.category_code,
            verdict=certificate_pb2.SealVerdict.Name(response.seal_verdict),
            purpose=request.purpose,
        )
        return response

    async def handle_fetch(
        self, opened: OpenedEnvelope, timeout: float
    ) -> certificate_pb2.Certificate:
        """The issuing node: release the certificate if the library accepts the consent."""
        request = opened.parse(certificate_pb2.GetCertificateRequest)
        assert isinstance(request, certificate_pb2.GetCertificateRequest)
        validate_request(request)
        if request.issuer_province != self.own:
            raise InvalidArgument("issuer_province", f"{self.own}, the receiving province")
        if self._library is None:
            raise FailedPrecondition(f"node {self.own} has no certificate library configured")
        try:
            async with backend_call(self.metrics, "certificate_library"):
                return await self._library.fetch(request, opened.header.sender, timeout=timeout)
        except CertificateNotFound as exc:
            raise NotFound(
                f"no certificate of category {request.category_code} for this holder at {self.own}"
            ) from exc
        except ConsentRefused as exc:
            raise PermissionDenied(
                f"consent_reference: {_CONSENT_REFUSALS.get(exc.reason, exc.reason)}"
            ) from exc
        except BackendUnavailable as exc:
            raise PeerUnavailable(f"certificate library of {self.own}: {exc}") from exc
        except TranslationError as exc:
            if exc.path == "category_code":
                raise InvalidArgument("category_code", exc.expected) from exc
            log.error("certificate library answer unusable", error=str(exc))
            raise GatewayError(f"certificate library of {self.own}: {exc}") from exc
        except BackendRejected as exc:
            log.error("certificate library refused the request", error=str(exc))
            raise GatewayError(f"certificate library of {self.own}: {exc}") from exc


class CertificateServicer(certificate_pb2_grpc.CertificateServiceServicer):
    def __init__(self, exchange: CertificateExchange) -> None:
        self._exchange = exchange

    async def GetCertificate(  # noqa: N802 - gRPC method name
        self, request: certificate_pb2.GetCertificateRequest, context: grpc.aio.ServicerContext
    ) -> certificate_pb2.GetCertificateResponse:
        remaining = context.time_remaining()
        return await self._exchange.get(
            request,
            require_client(),
            current_correlation_id.get(),
            DEFAULT_TIMEOUT if remaining is None else remaining,
        )
