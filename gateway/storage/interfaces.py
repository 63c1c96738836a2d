"""What the services and the outbox may ask of a store: the storage seam.

Services and the outbox speak only to these Protocols (and the values of
:mod:`gateway.storage.records`); SQL and driver types stay in the
implementation, :class:`gateway.storage.state.StateStore` (SQLite or
PostgreSQL).

Several replicas of a province may work one PostgreSQL store: the outbox's
items and the incoming cases handed to back-ends are *claimed* with a lease
(``claim_outbox``, ``claim_incoming``: ``<replica>/<pid>/<random>`` of
:func:`~gateway.storage.records.lease_owner`, until a time), renewed while
worked, and the writes that finish a step are *fenced*: they take ``owner=``
and change nothing once another replica has taken the work over.

Reads are ``async`` methods of a store. Writes go through a **unit of work**:
``await store.unit_of_work(work)`` runs ``work(tx)`` in one transaction and
returns its result once that transaction is committed (durable). ``work`` is a
plain function -- it may read what it decides on through ``tx`` and write
through ``tx``, but never awaits -- so that everything one exchange writes (a
case and its outbox item, a delivery's acknowledgement and the case it moves)
is committed together or not at all; an exception raised by ``work`` rolls back
everything it wrote and is raised to the caller. Nothing here is
SQLite-specific: both engines run many units in one commit (group commit); a
unit that fails is rolled back alone (its group is written again, a savepoint
per unit), so ``work`` may run more than once: what it does besides reading
and writing through ``tx`` (a log line, say) may happen twice, and belongs
after the commit (the outbox logs a refusal so: ``OutboxRoute.refused_event``).

A store that cannot write raises
:class:`~gateway.core.errors.StoreUnavailable` (retryable).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Protocol, TypeVar

from gateway.storage.records import (
    CaseSummary,
    ChainReport,
    HeadKeys,
    IncomingCase,
    IncomingWork,
    LogEntry,
    LoggedExchange,
    LogRow,
    NewIncomingCase,
    NewOutgoingCase,
    OutboxEntry,
    OutboxItem,
    OutgoingCase,
    Progress,
    ReconciliationCase,
    StoredKey,
    TokenClaim,
)

T = TypeVar("T")

# ---- inside a unit of work ----------------------------------------------------------


class OutboxWrites(Protocol):
    """The outbox, inside a unit of work."""

    def enqueue(self, item: OutboxItem) -> None:
        """Add ``item`` (its ``id`` is ignored: the store assigns one)."""

    def remove_outbox_item(self, item_id: int, *, owner: str) -> bool:
        """Delete a delivered (or refused) item, if ``owner`` still holds its
        lease (False, and nothing changed, if another replica took it over)."""

    def outbox_holder(self, item_id: int) -> str | None:
        """Who holds the item's lease: its owner, ``""`` when nobody does, None
        when the item is no longer in the outbox (delivered, refused, removed)."""

    def make_peer_due(self, peer: str, now: float) -> None:
        """Make every pending item for ``peer`` that waits past ``now`` due at ``now``."""

    def reschedule_outbox_item(
        self,
        item_id: int,
        *,
        owner: str,
        attempts: int,
        next_attempt_at: float,
        last_error: str,
        parked_at: float | None,
    ) -> bool:
        """Record a failed attempt: pending until ``next_attempt_at``, or parked
        for an operator (``parked_at`` not None); the lease is given up. Fenced
        like :meth:`remove_outbox_item`."""


class OutgoingCaseWrites(Protocol):
    """Tracked exchanges of this node's clients (the submitting side)."""

    def outgoing_by_key(
        self, domain: str, idempotency_key: str, *, peer: str | None = None
    ) -> StoredKey | None:
        """The case stored under ``(domain, idempotency_key)`` (sent to ``peer``, if given)."""

    def insert_outgoing(self, case: NewOutgoingCase) -> None: ...

    def outgoing_delivered(
        self, case_id: str, *, was: int, status: int, remote_reference: str, at: datetime
    ) -> None:
        """The peer acknowledged the case: ``status`` if it still is ``was``."""

    def outgoing_refused(
        self, case_id: str, *, status: int, reason: str, at: datetime, unless: Collection[int]
    ) -> None:
        """The peer refused the case: ``status`` with ``reason``, unless its
        status is one of ``unless`` (final already)."""

    def outgoing_status(
        self,
        case_id: str,
        *,
        status: int,
        reason: str,
        amount_fen: int,
        remote_reference: str,
        at: datetime,
        unless: Collection[int],
    ) -> bool:
        """A status change from the handling peer (``remote_reference`` is kept
        only if the case has none yet), unless the case's status is one of
        ``unless`` (final, or as far along already) at the moment it is written:
        False then, and nothing changed. Decided by the UPDATE itself, so that
        two replicas applying two updates at once cannot move a case back."""


class IncomingCaseWrites(Protocol):
    """Applications peers delivered to this node (the handling side)."""

    def incoming_by_key(self, domain: str, sender: str, idempotency_key: str) -> StoredKey | None:
        """The case stored under ``(domain, sender, idempotency_key)``."""

    def insert_incoming(self, case: NewIncomingCase) -> None: ...

    def incoming_in_reconciliation(self, reference: str, domain: str) -> IncomingCase | None:
        """The case ``reference`` of ``domain`` if it is in reconciliation."""

    def incoming_progress(self, reference: str, progress: Progress, *, owner: str) -> bool:
        """A step with the back-end: the case's new state (handed to the back-end).
        Like every processor write here, fenced: applied (True) only while
        ``owner`` holds the case's lease, which it gives up."""

    def incoming_schedule(
        self, reference: str, *, owner: str, attempts: int, next_poll_at: float, submitted: bool
    ) -> bool:
        """The next attempt of a step that did not move the case (fenced)."""

    def incoming_to_reconciliation(self, reference: str, *, owner: str, at: datetime) -> bool:
        """Leave the case alone until an operator resolves it (its back-end lost
        it; fenced)."""

    def incoming_resubmit(self, reference: str, *, next_poll_at: float, at: datetime) -> None:
        """Out of reconciliation: no money moved, hand it to the back-end again."""

    def incoming_settled(
        self,
        reference: str,
        *,
        status: int,
        reason: str,
        amount_fen: int,
        next_poll_at: float,
        at: datetime,
    ) -> None:
        """Out of reconciliation with the final ``status`` an operator confirmed."""


class StateTransaction(OutboxWrites, OutgoingCaseWrites, IncomingCaseWrites, Protocol):
    """Everything a unit of work may read and write in the node's state."""


class Transactional(Protocol):
    async def unit_of_work(self, work: Callable[[StateTransaction], T]) -> T:
        """Run ``work`` in one transaction; its result once committed."""


# ---- the stores as each user sees them ----------------------------------------------


class OutboxStore(Transactional, Protocol):
    """What the outbox's deliverer reads (it writes through units of work)."""

    async def next_outbox_time(self, after: float | None = None) -> float | None:
        """When the earliest pending item is due (the earliest after ``after``, if given)."""

    async def claim_outbox(
        self,
        now: float,
        limit: int,
        *,
        owner: str,
        lease_seconds: float,
        skip_peers: Collection[str] = (),
        skip_ids: Collection[int] = (),
    ) -> list[OutboxItem]:
        """Lease to ``owner`` up to ``limit`` pending items due by ``now`` (free,
        lease expired, or ``owner``'s own), except ``skip_ids`` and items for
        ``skip_peers``; oldest first. Concurrent claimers never get one item both."""

    async def renew_outbox_leases(
        self, ids: Collection[int], *, owner: str, until: float
    ) -> set[int]:
        """Extend ``owner``'s leases to ``until``; the ids it still holds."""

    async def release_outbox_leases(self, owner: str, ids: Collection[int] | None = None) -> int:
        """Give up ``owner``'s leases (on ``ids`` only, if given)."""


class OutboxOperations(Protocol):
    """The outbox as an operator and the node's metrics see it."""

    async def outbox_entries(
        self,
        *,
        state: str | None = None,
        reference: str | None = None,
        correlation_id: str | None = None,
        peer: str | None = None,
        created_before: float | None = None,
        limit: int | None = None,
    ) -> list[OutboxEntry]: ...

    async def set_outbox_state(self, item_id: int, state: str, *, now: float) -> bool: ...

    async def outbox_by_peer(self) -> list[tuple[str, str, int, float]]: ...

    async def outbox_stats(self) -> tuple[int, float | None]: ...


class TrackedCaseStore(Transactional, Protocol):
    """What tracked exchanges (withdrawals, service cases) read."""

    async def outgoing_case(self, case_id: str, domain: str) -> OutgoingCase | None: ...

    async def next_incoming_poll(
        self, domain: str, *, after: float, final: Collection[int]
    ) -> float | None:
        """When the next case of ``domain`` that is not final and not in
        reconciliation is due after ``after`` (None: none is waiting)."""

    async def claim_incoming(
        self,
        domain: str,
        *,
        now: float,
        final: Collection[int],
        limit: int,
        owner: str,
        lease_seconds: float,
        skip: Collection[str] = (),
    ) -> list[IncomingWork]:
        """Incoming cases of ``domain`` due by ``now``, not final, not in
        reconciliation, not among ``skip``, the earliest due first, each leased
        to ``owner`` (free, expired or its own already): concurrent claimers
        never get one case both."""

    async def renew_incoming_leases(
        self, references: Collection[str], *, owner: str, until: float
    ) -> set[str]:
        """Extend ``owner``'s leases to ``until``; the references it still holds."""

    async def release_incoming_leases(
        self, owner: str, references: Collection[str] | None = None
    ) -> int:
        """Give up ``owner``'s leases (on ``references`` only, if given)."""


class ReconciliationStore(Transactional, Protocol):
    """Incoming cases waiting for an operator's reconciliation."""

    async def incoming_case(self, reference: str) -> IncomingCase | None: ...

    async def reconciliation_counts(self) -> dict[str, int]: ...

    async def reconciliation_by_sender(self) -> list[tuple[str, int, datetime]]:
        """(sender, cases, when the longest waiting entered reconciliation), per
        sending province with any."""

    async def reconciliation_cases(self) -> list[ReconciliationCase]: ...

    async def case_summaries(
        self, *, references: Collection[str] = (), correlation_id: str | None = None
    ) -> list[CaseSummary]:
        """Sent and received cases by case id / reference, or by correlation id."""


class IdentityRecords(Protocol):
    """Guest registrations and the e-ID tokens answered for (single use)."""

    async def record_check_in(
        self,
        *,
        check_in_id: str,
        relying_party_id: str,
        issuer_province: str,
        guest: bytes,
        client_reference: str,
        recorded_at: datetime,
        correlation_id: str,
        retry_key: str = "",
    ) -> str:
        """Record a guest registration; the id it is recorded under. With a
        ``retry_key`` (the caller's retry of one verification), a check-in
        already recorded under that key for ``relying_party_id`` is kept and its
        id returned: a retried verification is recorded once."""
        ...

    async def get_check_in(
        self, check_in_id: str
    ) -> tuple[str, str, bytes, str, str, str] | None: ...

    async def claim_token(self, token_id: str, *, keep_until: float, now: float) -> bool:
        """False if ``token_id`` was claimed before (a replay); of two concurrent
        claims, in any worker process, exactly one wins."""

    async def claim_token_for(
        self, token_id: str, *, claimant: str, keep_until: float, now: float
    ) -> TokenClaim:
        """Claim ``token_id`` for ``claimant``: NEW, OURS (the same claimant held
        it already) or TAKEN (another one does)."""

    async def release_token(self, token_id: str, *, claimant: str) -> None:
        """Withdraw ``claimant``'s claim on ``token_id`` (another's stays)."""


class NodeState(
    IdentityRecords,
    TrackedCaseStore,
    OutboxStore,
    OutboxOperations,
    ReconciliationStore,
    Protocol,
):
    """The node's whole state store, as the node assembles its services on it."""

    async def probe(self) -> bool:
        """Try a real (tiny) write: True if the store can write again."""

    async def clear_abandoned_leases(self) -> int:
        """At start: clear the leases a killed process left where the node holds
        its store alone (SQLite); nothing on a database replicas share."""


class MessageLogReader(Protocol):
    """The message log as an operator's service reads it."""

    async def count(self) -> int:
        """Rows in the log."""

    async def verify(self, keys: HeadKeys | None = None) -> ChainReport:
        """The whole chain, and every signed head against it (signatures, given keys)."""

    async def rows_by_correlation(self, correlation_id: str, limit: int) -> list[LogRow]:
        """Up to ``limit`` rows with this correlation id, oldest first."""


class OperatorLog(MessageLogReader, Protocol):
    """The message log as an operator's actions are recorded in it."""

    async def append_operator_action(
        self,
        *,
        action: str,
        subject: str,
        operator: str,
        reason: str = "",
        correlation_id: str = "",
    ) -> int:
        """Record an operator's action as a chained, signed row; its sequence number."""


class MessageRecorder(Protocol):
    """The message log as the federation client and server write it."""

    async def append(self, entry: LogEntry) -> int:
        """Append a row; its sequence number once committed."""

    async def append_request(self, entry: LogEntry) -> tuple[int, LoggedExchange]:
        """Append an incoming request; what was logged before under its (peer, message id)."""

    async def append_all(self, entries: tuple[LogEntry, ...]) -> list[int]:
        """Append rows in one commit."""

    def enqueue(self, entry: LogEntry) -> None:
        """Queue a row without waiting for its commit (a caller being cancelled)."""
