"""The contract between the gateway and a province's back-end systems.

The gateway talks to its own e-ID authority only through
:class:`IdentityAuthority`, and to its own housing provident fund centre only
through :class:`FundCentre`. The HTTP connectors in :mod:`adapters.identity`
and :mod:`adapters.fund` implement them from the declarative mapping; a
province whose back-end cannot be described declaratively names an
:class:`AdapterPlugin` in its config (``[adapter.plugin]``), which builds its
own objects of these protocols (see :mod:`adapters.plugins`). Tests use the
real connectors against the simulators, not mocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from adapters.spec import AdapterConfig
from gateway.core.clock import Clock
from yrd.case.v1 import case_pb2
from yrd.certificate.v1 import certificate_pb2
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2


@dataclass(frozen=True)
class CredentialCheck:
    """The e-ID authority's answer about one credential and one token."""

    #: ``yrd.federation.v1.CredentialState`` value (CREDENTIAL_ACTIVE, ...).
    state: int
    #: True when this token id had been used before this query (the query
    #: itself marks it used, so a second query always sees True).
    token_already_used: bool
    #: The holder's full record; None when the credential is unknown.
    #: Disclosure filtering is the gateway's job, not the authority's.
    holder: common_pb2.Person | None
    #: When the authority answered (aware UTC); the gateway refuses stale answers.
    checked_at: datetime

    def __post_init__(self) -> None:
        if self.checked_at.tzinfo is None:
            raise ValueError("CredentialCheck.checked_at must be timezone-aware")


@runtime_checkable
class IdentityAuthority(Protocol):
    """A province's e-ID authority, as the gateway sees it."""

    async def check_credential(
        self, credential_id: str, token_id: str, *, timeout: float
    ) -> CredentialCheck:
        """Ask for the credential's state and whether ``token_id`` was used; marks it used.

        ``timeout`` (seconds) bounds the whole call, so the caller's deadline
        carries through. Raises ``BackendUnavailable`` when the authority cannot
        be reached in time and ``TranslationError`` when its answer does not
        match the province's mapping. An unknown credential is an answer
        (``CREDENTIAL_UNKNOWN``), not an error.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...


@runtime_checkable
class FundCentre(Protocol):
    """A province's housing provident fund centre, as the gateway sees it.

    Every call takes ``timeout`` (seconds) for the whole exchange, so the
    caller's deadline carries through. Errors (:mod:`adapters.errors`):
    ``BackendUnavailable`` (retryable) when the centre cannot be reached in
    time or fails, ``BackendRejected`` when it refuses the request (HTTP 4xx),
    ``TranslationError`` when a document does not match the mapping (also for
    an application that cannot be written in the native format, e.g. reason
    ``WITHDRAWAL_REASON_UNSPECIFIED``). Decisions of the centre (a rejected
    withdrawal) are answers, not errors.
    """

    async def query_account(self, id_number: str, *, timeout: float) -> fund_pb2.FundAccount | None:
        """The fund account of the holder with this resident ID number; None when none."""
        ...

    async def submit_withdrawal(
        self, reference: str, application: fund_pb2.WithdrawalApplication, *, timeout: float
    ) -> fund_pb2.WithdrawalStatusUpdate:
        """Submit ``application`` under the gateway-chosen ``reference``.

        Idempotent by ``reference``: submitting again (a retry after a lost
        answer) creates no second case and no second payment; it answers the
        case's current state. The answer's status is ``UNDER_REVIEW``, or
        ``REJECTED`` with ``status_reason`` for an application the centre
        refuses at once (later states when resubmitted after review);
        ``remote_reference`` is the centre's case number and
        ``idempotency_key`` that of ``application``.
        """
        ...

    async def withdrawal_status(
        self, reference: str, *, timeout: float
    ) -> fund_pb2.WithdrawalStatusUpdate:
        """The current state of the withdrawal submitted under ``reference``.

        Raises ``WithdrawalNotFound`` (a ``BackendRejected``) when the centre
        has no withdrawal with this reference. ``idempotency_key`` is left
        empty: the centre knows the case only by ``reference``.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...


@runtime_checkable
class AdapterPlugin(Protocol):
    """Python code for what a province's declarative mapping cannot express.

    A plug-in is a small configured object: its factory (the registry entry,
    see :mod:`adapters.plugins`) is called once with the plug-in's
    ``[adapter.plugin.settings]`` table and validates them, raising
    ``ValueError`` (or a pydantic ``ValidationError``) naming the setting; the
    two methods below then build the connectors, once per node start.

    Either method may return ``None`` for "this domain needs no code": the
    gateway then uses the declarative HTTP connector (:mod:`adapters.identity`,
    :mod:`adapters.fund`). A plug-in may reuse the province's mapping
    (``adapter``) for the documents and add only what it must — a session
    handshake, a signature, a computed field — or replace the exchange
    entirely. Either way the objects it returns keep the contracts of
    :class:`IdentityAuthority` and :class:`FundCentre`: errors from
    :mod:`adapters.errors` only, never a resident's data in a message.
    """

    def identity_authority(
        self, adapter: AdapterConfig, base_url: str, *, clock: Clock
    ) -> IdentityAuthority | None:
        """The connector to the province's e-ID authority at ``base_url``, or None."""
        ...

    def fund_centre(
        self, adapter: AdapterConfig, base_url: str, *, clock: Clock
    ) -> FundCentre | None:
        """The connector to the province's fund centre at ``base_url``, or None."""
        ...


@runtime_checkable
class CertificateLibrary(Protocol):
    """A province's e-certificate library, as the gateway sees it (:mod:`adapters.certificate`).

    Errors (:mod:`adapters.errors`): ``CertificateNotFound`` and
    ``ConsentRefused(reason)`` (both ``BackendRejected``) for the library's
    refusals, ``BackendRejected`` for a request it cannot read,
    ``BackendUnavailable`` (retryable) when it cannot be reached in time, and
    ``TranslationError`` when a document does not match the mapping — also
    for a request with a category the province has no code for.
    """

    async def fetch(
        self,
        request: certificate_pb2.GetCertificateRequest,
        requesting_province: str,
        *,
        timeout: float,
    ) -> certificate_pb2.Certificate:
        """The certificate asked for, in canonical form, exactly as sealed by its issuer.

        ``request.category_code`` is the national code; the consent named by
        ``request.consent_reference`` must cover the holder and
        ``requesting_province`` (GB/T 2260). The seal is *not* verified here:
        that is the gateway's job (:func:`gateway.trust.seals.seal_verdict`).
        """
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...


@runtime_checkable
class CaseSystem(Protocol):
    """A province's system for inter-provincial service cases (:mod:`adapters.case`)."""

    async def submit_case(
        self, reference: str, application: case_pb2.CaseApplication, *, timeout: float
    ) -> case_pb2.CaseStatusUpdate:
        """Submit ``application`` under the gateway-chosen ``reference``.

        Idempotent by ``reference``: a repeated submission opens no second
        case and answers the case's current state. The status is
        ``CASE_ACCEPTED``, or ``CASE_REFUSED`` with ``status_reason`` (service
        not handled by this province, materials missing, ...);
        ``remote_reference`` is the case system's case number. Raises
        ``TranslationError`` for an application outside the limits of
        :func:`adapters.case.check_application`.
        """
        ...

    async def case_status(self, reference: str, *, timeout: float) -> case_pb2.CaseStatusUpdate:
        """The current state of the case under ``reference``.

        ``CASE_ACCEPTED`` → ``CASE_IN_PROGRESS`` → ``CASE_COMPLETED``, or
        ``CASE_REFUSED``. Raises ``CaseNotFound`` (a ``BackendRejected``) when
        the case system has no case with this reference.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...
