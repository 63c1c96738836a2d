"""The contract between the gateway and a province's back-end systems.

The gateway talks to its own e-ID authority only through
:class:`IdentityAuthority`. The HTTP connector in :mod:`adapters.identity`
implements it from the declarative mapping; a province whose back-end cannot
be described declaratively provides its own object of this protocol.
Tests use the real connector against the simulator, not a mock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from yrd.common.v1 import common_pb2


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
