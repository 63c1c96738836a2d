"""The values that cross the storage seam: what a store hands the services and
the outbox, and what they hand it (:mod:`gateway.storage.interfaces`).

Plain frozen dataclasses, no driver types. Times are as the node has always
kept them: instants of an exchange as timezone-aware ``datetime`` (stored as ISO
8601 UTC), schedule times as unix seconds (``float``); money in whole fen
(``int``).
"""

from __future__ import annotations

import enum
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

#: Outbox item states.
PENDING, PARKED = "pending", "parked"

#: How long a claim on an outbox item or an incoming case lasts unless renewed
#: (seconds): a replica that dies leaves its work to the others after this.
LEASE_SECONDS = 15.0

_owners: dict[tuple[str, int], str] = {}


def lease_owner(replica: str = "1") -> str:
    """This process's name in the leases it takes: ``<replica>/<pid>/<random>``,
    made once per process (a restarted process, or a forked one, is a new owner
    and never mistakes an old lease for its own)."""
    key = (replica, os.getpid())
    owner = _owners.get(key)
    if owner is None:
        owner = _owners[key] = f"{replica}/{key[1]}/{secrets.token_hex(4)}"
    return owner


class TokenClaim(enum.Enum):
    """What a claim on an e-ID token found (:meth:`IdentityRecords.claim_token_for`)."""

    #: Nobody had claimed the token: this claim holds it now.
    NEW = "new"
    #: The same claimant (an earlier attempt of the same exchange: its answer
    #: was lost to a crash or a store failure) holds it already.
    OURS = "ours"
    #: Another claimant holds it: a replay.
    TAKEN = "taken"


class StoreClosedError(RuntimeError):
    """The store was used after it was closed (or before it was opened)."""


class StoreOpenError(Exception):
    """A store cannot be opened: its file cannot be read or created, or its schema
    is not one this code can use. The message says which file and why."""


class DuplicateNonce(Exception):
    """An incoming request whose nonce the log already holds for that peer (a replay)."""


class MessageLogClosed(RuntimeError):
    """The message log was closed: nothing more can be appended."""


class StoreVersionError(StoreOpenError):
    """The store was written by a newer gateway (a schema version this code does
    not know): it is not opened, rather than being misread or damaged."""


@dataclass(frozen=True)
class OutboxItem:
    """An asynchronous delivery to a peer (``id`` 0 for an item not yet stored)."""

    id: int
    peer: str
    service: str
    message_id: str
    correlation_id: str
    idempotency_key: str
    payload: bytes
    subject: str
    attempts: int
    next_attempt_at: float
    created_at: float
    #: When its time to be parked started: its creation, or an operator's last
    #: retry (so that a retried item gets a whole ``park_after`` again).
    pending_since: float = 0.0


@dataclass(frozen=True)
class OutboxEntry:
    """An outbox item as an operator sees it (no payload: it holds personal data)."""

    id: int
    subject: str
    message_id: str
    peer: str
    service: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str
    parked_at: float | None
    #: The process working it now (``<replica>/<pid>/<random>``), while its lease holds.
    lease_owner: str | None = None
    #: Correlation id of the exchange it belongs to.
    correlation_id: str = ""


@dataclass(frozen=True)
class ReconciliationCase:
    """An incoming case its back-end lost track of (no personal data)."""

    reference: str
    domain: str
    sender: str
    #: Last status reported to the sender.
    status: int
    #: When it went to reconciliation (ISO 8601 UTC).
    since: str
    backend_reference: str
    #: Correlation id of the exchange it belongs to.
    correlation_id: str = ""


@dataclass(frozen=True)
class CaseSummary:
    """A tracked case (sent or received) as an operator sees it: no personal data."""

    #: The case id (sent) or this node's reference (received).
    reference: str
    domain: str
    #: "sent" (this node's client submitted it) or "received" (from a peer).
    side: str
    #: The other province.
    peer: str
    status: int
    #: When it last changed (ISO 8601 UTC).
    updated_at: str
    correlation_id: str
    #: Received cases: waiting for an operator's reconciliation.
    in_reconciliation: bool = False


@dataclass(frozen=True)
class StoredKey:
    """What a store holds under an idempotency key: the case (its id or
    reference), the SHA-256 of the body it was stored with, and its status."""

    case: str
    body_digest: bytes
    status: int


@dataclass(frozen=True)
class NewOutgoingCase:
    """A tracked exchange accepted by this node (the submitting side)."""

    case_id: str
    domain: str
    idempotency_key: str
    body_digest: bytes
    client_id: str
    peer: str
    application: bytes
    status: int
    correlation_id: str
    submitted_at: datetime

    def as_stored(self) -> OutgoingCase:
        """The case as the store holds it once ``insert_outgoing`` committed it
        (no reason, amount or remote reference yet; updated when submitted)."""
        return OutgoingCase(
            case_id=self.case_id,
            client_id=self.client_id,
            status=self.status,
            status_reason="",
            amount_fen=0,
            submitted_at=self.submitted_at,
            updated_at=self.submitted_at,
            idempotency_key=self.idempotency_key,
            peer=self.peer,
            remote_reference="",
        )


@dataclass(frozen=True)
class OutgoingCase:
    """A tracked exchange of this node's clients, as ``Get*`` shows it."""

    case_id: str
    client_id: str
    status: int
    status_reason: str
    amount_fen: int
    submitted_at: datetime
    updated_at: datetime
    idempotency_key: str
    peer: str
    remote_reference: str


@dataclass(frozen=True)
class NewIncomingCase:
    """An application a peer delivered to this node (the handling side)."""

    reference: str
    domain: str
    sender: str
    idempotency_key: str
    message_id: str
    correlation_id: str
    body_digest: bytes
    application: bytes
    status: int
    next_poll_at: float
    received_at: datetime


@dataclass(frozen=True)
class IncomingWork:
    """An incoming case due for its next step with its back-end."""

    reference: str
    sender: str
    idempotency_key: str
    correlation_id: str
    application: bytes
    status: int
    #: Handed to the back-end (or may have been).
    submitted: bool
    attempts: int


@dataclass(frozen=True)
class IncomingCase:
    """An incoming case as an operator's reconciliation reads it."""

    reference: str
    domain: str
    sender: str
    idempotency_key: str
    correlation_id: str
    application: bytes
    status: int
    in_reconciliation: bool


@dataclass(frozen=True)
class Progress:
    """A handled case's new state after a step with its back-end."""

    status: int
    status_reason: str
    amount_fen: int
    #: The back-end's reference; empty keeps the one recorded.
    backend_reference: str
    attempts: int
    next_poll_at: float
    updated_at: datetime


@dataclass(frozen=True)
class LogRow:
    """A message-log row as an operator's search reads it."""

    seq: int
    #: ISO 8601 UTC.
    logged_at: str
    direction: str
    kind: str
    message_id: str
    peer: str
    service: str
    #: As logged: the service summarises it and never hands it on (personal data).
    envelope: bytes


@dataclass(frozen=True)
class LogEntry:
    """A row of the message log, as its writers hand it over."""

    direction: str
    kind: str
    message_id: str
    correlation_id: str
    peer: str
    service: str
    envelope: bytes
    #: Incoming requests: the envelope's nonce. Unique per peer in the log, so a
    #: replay is caught even by another worker process of the same node.
    nonce: bytes = b""
    #: Incoming requests: also look up the response this node already logged for
    #: the same message id from the same peer (a retry whose answer was lost).
    find_answer: bool = False


#: Responses the message log's ``append_request`` returns for a message id,
#: newest first: the answer to the request is among them unless a peer sent more
#: than this many conflicting requests under its id since (then it is handled again).
ANSWERS_LOOKED_UP = 4


@dataclass(frozen=True)
class LoggedExchange:
    """What the log already held for an incoming request's (peer, message id)."""

    #: The first request logged under it; None when this request is the first.
    first_request: bytes | None
    #: The newest responses logged under it (at most ANSWERS_LOOKED_UP), newest first.
    answers: tuple[bytes, ...]


#: The public key of (province, key id) valid at an instant, or None: how a
#: chain check finds the keys that signed the heads.
HeadKeys = Callable[[str, str, datetime], Ed25519PublicKey | None]


@dataclass(frozen=True)
class Break:
    """A row where the chain does not hold, and the segment row (if any) by which
    the node recorded that it continued past it."""

    seq: int
    detail: str
    acknowledged_by: int = 0  # seq of a later segment row; 0 = not acknowledged


@dataclass(frozen=True)
class ChainReport:
    intact: bool
    rows_checked: int
    first_bad_seq: int
    detail: str
    head_hash: bytes
    breaks: tuple[Break, ...] = ()

    @property
    def unacknowledged(self) -> Break | None:
        """The first break no later segment acknowledges (a node refuses to start on it)."""
        return next((b for b in self.breaks if not b.acknowledged_by), None)
