"""The contract between the gateway and a province's back-end systems.

The gateway talks to its own e-ID authority only through
:class:`IdentityAuthority`, and to its own housing provident fund centre only
through :class:`FundCentre`. The HTTP connectors in :mod:`adapters.identity`
and :mod:`adapters.fund` implement them from the declarative mapping; a
province whose back-end cannot be described declaratively provides its own
object of these protocols. Tests use the real connectors against the
simulators, not mocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

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
