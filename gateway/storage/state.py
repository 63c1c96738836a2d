"""The node's business state in SQLite: guest registrations, tracked cases
(withdrawals, service cases) on both sides of their exchange, and the outbox of
asynchronous deliveries. :class:`StateStore` implements the Protocols of
:mod:`gateway.storage.interfaces`; only this module knows its tables.

Writes are grouped (:mod:`gateway.storage.groupcommit`): a whole group of units
of work runs in one hop to the store's writer thread and one commit, and only
then is every caller answered; if a unit fails, the group is written again
with each unit in a savepoint of its own.
A caller is therefore answered only after its write is durable (WAL,
``synchronous=FULL``), and a failing unit (an integrity error, say) rolls back
alone without disturbing the others of its group. Reads use a second
connection (aiosqlite) and see only committed data.

Kept in ``state.db``, apart from the message log's ``messages.db``; its schema
is versioned (:data:`gateway.storage.migrations.STATE_MIGRATIONS`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.core.errors import StoreUnavailable
from gateway.storage.engines import StoreFile, store_file
from gateway.storage.groupcommit import InsertRow, WriteOp, each_in_savepoint, insert_rows
from gateway.storage.interfaces import StateTransaction

if TYPE_CHECKING:
    from gateway.storage.interfaces import NodeState
from gateway.storage.migrations import STATE_MIGRATIONS
from gateway.storage.pgschema import STATE_PG_MIGRATIONS
from gateway.storage.records import (
    PARKED,
    PENDING,
    CaseSummary,
    IncomingCase,
    IncomingWork,
    NewIncomingCase,
    NewOutgoingCase,
    OutboxEntry,
    OutboxItem,
    OutgoingCase,
    Progress,
    ReconciliationCase,
    StoreClosedError,
    StoredKey,
    TokenClaim,
)
from gateway.storage.sql import Connection, is_database_url, marks

# The values a caller of the state store handles, importable from here as well.
__all__ = [
    "PARKED",
    "PENDING",
    "OutboxEntry",
    "OutboxItem",
    "ReconciliationCase",
    "StateStore",
    "StoreClosedError",
]

T = TypeVar("T")


#: The one clause a claim adds on PostgreSQL: rows another replica's open
#: transaction is claiming are skipped, not waited for (SQLite has one writer
#: per file: nothing to skip).
_SKIP_LOCKED = {"postgresql": " FOR UPDATE SKIP LOCKED", "sqlite": ""}

_OUTBOX_ITEM_COLUMNS = (
    "id, peer, service, message_id, correlation_id, idempotency_key, payload,"
    " subject, attempts, next_attempt_at, created_at, COALESCE(retried_at, created_at)"
)
_INCOMING_WORK_COLUMNS = (
    "reference, sender, idempotency_key, correlation_id, application, status,"
    " submitted, attempts, next_poll_at"
)
#: Free to claim: no lease, an expired one, or one of the claimer's own (an item
#: it holds but does not work now: the claimer skips what it has in flight).
_CLAIMABLE = " AND (lease_owner IS NULL OR lease_owner = ? OR lease_until <= ?)"


#: Answered tokens past their time are deleted at most this often (seconds of
#: the claims' ``now``).
TOKEN_SWEEP_SECONDS = 1.0


class StateStore:
    """Business records of the node in one SQLite file or in a PostgreSQL
    database (:func:`gateway.storage.engines.store_file`); an async context manager."""

    def __init__(
        self,
        path: Path | str,
        *,
        batch_max: int = 256,
        on_writable: Callable[[bool], None] | None = None,
    ) -> None:
        #: The SQLite file, or the PostgreSQL URL.
        self.path = path
        #: "postgresql" (a database replicas share) or "sqlite" (one node's file).
        self.dialect = "postgresql" if is_database_url(path) else "sqlite"
        #: Told False when a write fails because the file cannot be written, True
        #: when a write succeeds again (the node's health follows it).
        self.on_writable = on_writable
        self._file: StoreFile[WriteOp] = store_file(
            path,
            store="state",
            sqlite_migrations=STATE_MIGRATIONS,
            pg_migrations=STATE_PG_MIGRATIONS,
            write=each_in_savepoint,
            what="state store",
            batch_max=batch_max,
            on_writable=self._writable_changed,
            reader_autocommit=True,
        )
        #: When answered tokens past their time were last deleted (the ``now``
        #: of a claim, unix seconds): at most once per TOKEN_SWEEP_SECONDS.
        self._tokens_swept_at = float("-inf")

    @property
    def location(self) -> str:
        """Where the store is, for messages (a database URL without its password)."""
        return self._file.location

    async def open(self) -> StateStore:
        """Open (creating and migrating the file if needed). Raises StoreOpenError
        (or OSError for the folder)."""
        await self._file.open()
        return self

    def _writable_changed(self, writable: bool) -> None:
        if self.on_writable is not None:
            self.on_writable(writable)

    async def __aenter__(self) -> StateStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(self, op: Callable[[Connection], T]) -> T:
        """Run ``op`` (in the writer thread, within a group); return its
        result once the group it was part of is committed. SQL access, for this
        module (and tests); services use :meth:`unit_of_work`."""
        writer = self._file.writer
        if writer is None:
            raise StoreClosedError("state store is closed")
        result: T = await writer.submit(op)
        return result

    async def unit_of_work(self, work: Callable[[StateTransaction], T]) -> T:
        """Run ``work`` in one transaction (a unit of a group commit); its
        result once committed (see :mod:`gateway.storage.interfaces`)."""
        return await self.write(lambda db: work(_Transaction(db)))

    async def probe(self) -> bool:
        """Try a real (tiny) write: True if the store can write again."""
        return await self._file.probe()

    @property
    def commits(self) -> int:
        return self._file.commits

    @property
    def writes(self) -> int:
        return self._file.items

    async def close(self) -> None:
        """Finish queued writes, then close. Idempotent."""
        await self._file.close()

    async def fetchall(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a query (committed data only): SQL access, for this module and tests."""
        return await self._file.fetchall(sql, args)

    async def fetchone(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        return await self._file.fetchone(sql, args)

    # ---- guest registrations (IdentityRecords) ------------------------------------

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
        row = (
            check_in_id,
            relying_party_id,
            issuer_province,
            guest,
            client_reference,
            recorded_at.isoformat(),
            correlation_id,
            retry_key,
        )
        if not retry_key:
            # Check-ins committed together share one INSERT (each_in_savepoint).
            await self.write(InsertRow("check_ins", row))
            return check_in_id

        def op(db: Connection) -> str:
            # Two tries of one verification at once (on two replicas) both insert:
            # the unique index refuses the second, whose op runs again (its
            # savepoint, each_alone) and then finds the first one's row here.
            earlier = db.execute(
                "SELECT check_in_id FROM check_ins"
                " WHERE relying_party_id = ? AND retry_key = ? AND retry_key <> ''",
                (relying_party_id, retry_key),
            ).fetchone()
            if earlier is not None:
                return str(earlier[0])
            insert_rows(db, "check_ins", [row])
            return check_in_id

        return await self.write(op)

    async def get_check_in(self, check_in_id: str) -> tuple[str, str, bytes, str, str, str] | None:
        row = await self.fetchone(
            "SELECT relying_party_id, issuer_province, guest, client_reference, recorded_at,"
            " correlation_id FROM check_ins WHERE check_in_id = ?",
            (check_in_id,),
        )
        if row is None:
            return None
        return (str(row[0]), str(row[1]), bytes(row[2]), str(row[3]), str(row[4]), str(row[5]))

    async def claim_token(self, token_id: str, *, keep_until: float, now: float) -> bool:
        """Record that this node answers "first use" for ``token_id`` until
        ``keep_until`` (unix seconds). False if it already did (a replay): of two
        concurrent claims, in any worker process, exactly one wins. A row past
        its time counts as no claim; such rows are pruned on the way (at most
        once per :data:`TOKEN_SWEEP_SECONDS`)."""
        claim = await self.claim_token_for(token_id, claimant="", keep_until=keep_until, now=now)
        return claim is TokenClaim.NEW

    async def claim_token_for(
        self, token_id: str, *, claimant: str, keep_until: float, now: float
    ) -> TokenClaim:
        """:meth:`claim_token` on behalf of ``claimant`` (the exchange asking:
        ``<sender>/<message id>``): NEW if this claim holds the token now, OURS
        if the same claimant held it already (its earlier attempt's answer was
        lost), TAKEN if another one does. An empty claimant is never the same
        as another."""

        # A row past its time counts as no claim (the upsert below replaces it),
        # so deleting such rows only keeps the table small: once a second, not
        # a statement per claim (each statement of the writer thread is a
        # hand-off of the interpreter lock with the event loop).
        sweep = now - self._tokens_swept_at >= TOKEN_SWEEP_SECONDS

        def op(db: Connection) -> TokenClaim:
            if sweep:
                db.execute("DELETE FROM answered_tokens WHERE keep_until < ?", (now,))
                self._tokens_swept_at = now
            cursor = db.execute(
                "INSERT INTO answered_tokens (token_id, keep_until, answered_at, claimant)"
                " VALUES (?,?,?,?) ON CONFLICT (token_id) DO UPDATE SET"
                " keep_until = excluded.keep_until, answered_at = excluded.answered_at,"
                " claimant = excluded.claimant WHERE answered_tokens.keep_until < ?",
                (token_id, keep_until, now, claimant, now),
            )
            if cursor.rowcount == 1:
                return TokenClaim.NEW
            row = db.execute(
                "SELECT claimant FROM answered_tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
            return TokenClaim.OURS if claimant and row and row[0] == claimant else TokenClaim.TAKEN

        return await self.write(op)

    async def release_token(self, token_id: str, *, claimant: str) -> None:
        """Withdraw ``claimant``'s claim on ``token_id`` (the e-ID authority gave
        no answer: the token was not answered for). Another claimant's stays."""

        def op(db: Connection) -> None:
            db.execute(
                "DELETE FROM answered_tokens WHERE token_id = ? AND claimant = ?",
                (token_id, claimant),
            )

        await self.write(op)

    async def answered_token_count(self) -> int:
        row = await self.fetchone("SELECT COUNT(*) FROM answered_tokens")
        return int(row[0]) if row else 0

    # ---- outbox (OutboxStore, OutboxOperations) -------------------------------------

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
        """Lease up to ``limit`` pending items due by ``now`` to ``owner`` until
        ``now + lease_seconds``, oldest first, and return them: items nobody
        holds, whose lease expired, or that ``owner`` holds already, except the
        ``skip_ids`` (in flight) and the items for ``skip_peers``. Of replicas
        claiming at once, each item goes to one."""
        if limit <= 0:
            return []
        where = "state = 'pending' AND next_attempt_at <= ?" + _CLAIMABLE
        if skip_ids:
            where += f" AND id NOT IN ({marks(skip_ids)})"
        if skip_peers:
            where += f" AND peer NOT IN ({marks(skip_peers)})"
        sql = (
            "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id IN"  # noqa: S608 - only placeholders and a constant clause are added
            f" (SELECT id FROM outbox WHERE {where} ORDER BY next_attempt_at, id LIMIT ?"
            f"{_SKIP_LOCKED[self.dialect]}) RETURNING {_OUTBOX_ITEM_COLUMNS}"
        )
        args = (
            owner,
            now + lease_seconds,
            now,
            owner,
            now,
            *skip_ids,
            *skip_peers,
            limit,
        )
        try:
            rows = await self.write(lambda db: db.execute(sql, args).fetchall())
        except StoreUnavailable:
            if self.dialect != "sqlite":
                raise
            # A SQLite file has one node (its lock) and one deliverer (its first
            # worker): while the file cannot be written, what is due is read and
            # worked from memory, as before leases. The outcomes that cannot be
            # written are retried from memory; once the file heals, an item whose
            # removal finds no lease is claimed and delivered again (the peer
            # dedupes it by message id) and then removed.
            rows = await self.fetchall(
                f"SELECT {_OUTBOX_ITEM_COLUMNS} FROM outbox WHERE {where}"  # noqa: S608 - only placeholders and a constant clause are added
                " ORDER BY next_attempt_at, id LIMIT ?",
                args[2:],
            )
        items = [_outbox_item(r) for r in rows]
        items.sort(key=lambda item: (item.next_attempt_at, item.id))
        return items

    async def renew_outbox_leases(
        self, ids: Collection[int], *, owner: str, until: float
    ) -> set[int]:
        """Extend ``owner``'s leases on these items to ``until``; the ids it still
        holds (an item missing was finished, or taken over by another replica)."""
        return {int(key) for key in await self._renew("outbox", "id", ids, owner, until)}

    async def release_outbox_leases(self, owner: str, ids: Collection[int] | None = None) -> int:
        """Give up ``owner``'s leases (those on ``ids`` only, if given): the items
        are free for any replica at once. The number released."""
        return await self._release("outbox", "id", owner, ids)

    async def _renew(
        self, table: str, key: str, keys: Collection[object], owner: str, until: float
    ) -> list[Any]:
        if not keys:
            return []
        sql = (
            f"UPDATE {table} SET lease_until = ? WHERE lease_owner = ?"  # noqa: S608 - constant names and placeholders
            f" AND {key} IN ({marks(keys)}) RETURNING {key}"
        )
        rows = await self.write(lambda db: db.execute(sql, (until, owner, *keys)).fetchall())
        return [r[0] for r in rows]

    async def _release(
        self, table: str, key: str, owner: str, keys: Collection[object] | None
    ) -> int:
        sql = f"UPDATE {table} SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?"  # noqa: S608 - a constant table name
        args: tuple[object, ...] = (owner,)
        if keys is not None:
            if not keys:
                return 0
            sql += f" AND {key} IN ({marks(keys)})"
            args = (owner, *keys)
        return int(await self.write(lambda db: db.execute(sql, args).rowcount))

    async def clear_abandoned_leases(self) -> int:
        """At a node's start: on SQLite, whose file one node holds (locked), every
        lease left is a dead process's and is cleared, so nothing waits for it to
        expire. On PostgreSQL nothing is cleared: other replicas' leases are
        alive, and a dead one's expire. The number cleared."""
        if self.dialect != "sqlite":
            return 0

        def op(db: Connection) -> int:
            cleared = 0
            for table in ("outbox", "incoming_cases"):
                cleared += db.execute(
                    f"UPDATE {table} SET lease_owner = NULL, lease_until = NULL"  # noqa: S608 - a constant table name
                    " WHERE lease_owner IS NOT NULL"
                ).rowcount
            return cleared

        return await self.write(op)

    async def next_outbox_time(self, after: float | None = None) -> float | None:
        if after is None:
            row = await self.fetchone(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'"
            )
        else:
            row = await self.fetchone(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE next_attempt_at > ?"
                " AND state = 'pending'",
                (after,),
            )
        return float(row[0]) if row and row[0] is not None else None

    async def outbox_entries(
        self,
        *,
        state: str | None = None,
        reference: str | None = None,
        correlation_id: str | None = None,
        peer: str | None = None,
        created_before: float | None = None,
        limit: int | None = None,
    ) -> list[OutboxEntry]:
        """Outbox items for an operator, oldest first: all, those in ``state``, or
        those of one ``reference`` (the case id or reference they belong to, or
        their message id), or of one ``correlation_id``; for one ``peer``,
        written before ``created_before``; at most ``limit``."""
        where = "1 = 1"
        args: list[object] = []
        if state is not None:
            where += " AND state = ?"
            args.append(state)
        if peer is not None:
            where += " AND peer = ?"
            args.append(peer)
        if created_before is not None:
            where += " AND created_at <= ?"
            args.append(created_before)
        if reference is not None:
            where += " AND (subject = ? OR message_id = ?)"
            args += [reference, reference]
        if correlation_id is not None:
            where += " AND correlation_id = ?"
            args.append(correlation_id)
        rows = await self.fetchall(
            "SELECT id, subject, message_id, peer, service, state, attempts, created_at,"  # noqa: S608 - only placeholders are added
            f" next_attempt_at, last_error, parked_at, CASE WHEN lease_until > ? THEN lease_owner"
            f" END, correlation_id FROM outbox WHERE {where}"
            f" ORDER BY created_at, id{'' if limit is None else ' LIMIT ?'}",
            (time.time(), *args, *(() if limit is None else (limit,))),
        )
        return [
            OutboxEntry(
                int(r[0]),
                str(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                str(r[5]),
                int(r[6]),
                float(r[7]),
                float(r[8]),
                str(r[9]),
                None if r[10] is None else float(r[10]),
                None if r[11] is None else str(r[11]),
                str(r[12]),
            )
            for r in rows
        ]

    async def set_outbox_state(self, item_id: int, state: str, *, now: float) -> bool:
        """Park a pending item, or make a parked one pending and due ``now``.
        False if the item is gone or was not in the other state."""
        other = PENDING if state == PARKED else PARKED

        def op(db: Connection) -> bool:
            if state == PARKED:
                cursor = db.execute(
                    "UPDATE outbox SET state = ?, parked_at = ?, lease_owner = NULL,"
                    " lease_until = NULL WHERE id = ? AND state = ?",
                    (PARKED, now, item_id, other),
                )
            else:
                cursor = db.execute(
                    "UPDATE outbox SET state = ?, parked_at = NULL, next_attempt_at = ?,"
                    " retried_at = ?, lease_owner = NULL, lease_until = NULL"
                    " WHERE id = ? AND state = ?",
                    (PENDING, now, now, item_id, other),
                )
            return cursor.rowcount == 1

        changed: bool = await self.write(op)
        return changed

    async def outbox_by_peer(self) -> list[tuple[str, str, int, float]]:
        """(peer, state, items, creation time of the oldest) for every peer and state."""
        rows = await self.fetchall(
            "SELECT peer, state, COUNT(*), MIN(created_at) FROM outbox GROUP BY peer, state"
        )
        return [(str(r[0]), str(r[1]), int(r[2]), float(r[3])) for r in rows]

    async def outbox_stats(self) -> tuple[int, float | None]:
        """(items waiting, creation time of the oldest)."""
        row = await self.fetchone("SELECT COUNT(*), MIN(created_at) FROM outbox")
        assert row is not None
        return int(row[0]), (float(row[1]) if row[1] is not None else None)

    # ---- tracked cases (TrackedCaseStore) -------------------------------------------

    async def outgoing_case(self, case_id: str, domain: str) -> OutgoingCase | None:
        row = await self.fetchone(
            "SELECT client_id, status, status_reason, amount_fen, submitted_at, updated_at,"
            " idempotency_key, peer, remote_reference FROM outgoing_cases"
            " WHERE case_id = ? AND domain = ?",
            (case_id, domain),
        )
        if row is None:
            return None
        return OutgoingCase(
            case_id=case_id,
            client_id=str(row[0]),
            status=int(row[1]),
            status_reason=str(row[2]),
            amount_fen=int(row[3]),
            submitted_at=datetime.fromisoformat(row[4]),
            updated_at=datetime.fromisoformat(row[5]),
            idempotency_key=str(row[6]),
            peer=str(row[7]),
            remote_reference=str(row[8]),
        )

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
        """Lease to ``owner`` until ``now + lease_seconds`` up to ``limit`` incoming
        cases of ``domain`` due by ``now`` (not final, not in reconciliation,
        not among ``skip``; free, expired, or ``owner``'s already), the earliest
        due first. Of replicas claiming at once, each case goes to one: no two
        replicas hand one case to its back-end at the same time."""
        if limit <= 0:
            return []
        skipped = f" AND reference NOT IN ({marks(skip)})" if skip else ""
        sql = (
            "UPDATE incoming_cases SET lease_owner = ?, lease_until = ? WHERE reference IN"  # noqa: S608 - only placeholders and a constant clause are added
            " (SELECT reference FROM incoming_cases WHERE domain = ?"
            f" AND status NOT IN ({marks(final)}) AND reconciliation = 0 AND next_poll_at <= ?"
            f"{_CLAIMABLE}{skipped} ORDER BY next_poll_at LIMIT ?{_SKIP_LOCKED[self.dialect]})"
            f" RETURNING {_INCOMING_WORK_COLUMNS}"
        )
        args = (owner, now + lease_seconds, domain, *final, now, owner, now, *skip, limit)
        rows = await self.write(lambda db: db.execute(sql, args).fetchall())
        rows.sort(key=lambda r: float(r[8]))
        return [_incoming_work(r) for r in rows]

    async def renew_incoming_leases(
        self, references: Collection[str], *, owner: str, until: float
    ) -> set[str]:
        """Extend ``owner``'s leases on these cases to ``until``; those it still holds."""
        held = await self._renew("incoming_cases", "reference", references, owner, until)
        return {str(key) for key in held}

    async def release_incoming_leases(
        self, owner: str, references: Collection[str] | None = None
    ) -> int:
        """Give up ``owner``'s leases on incoming cases (those of ``references``
        only, if given). The number released."""
        return await self._release("incoming_cases", "reference", owner, references)

    async def next_incoming_poll(
        self, domain: str, *, after: float, final: Collection[int]
    ) -> float | None:
        row = await self.fetchone(
            "SELECT MIN(next_poll_at) FROM incoming_cases WHERE domain = ?"  # noqa: S608 - only placeholders are added
            f" AND status NOT IN ({marks(final)}) AND reconciliation = 0 AND next_poll_at > ?",
            (domain, *final, after),
        )
        return float(row[0]) if row and row[0] is not None else None

    # ---- incoming cases in reconciliation (ReconciliationStore) ----------------------

    async def incoming_case(self, reference: str) -> IncomingCase | None:
        row = await self.fetchone(
            f"SELECT {_INCOMING_COLUMNS} FROM incoming_cases WHERE reference = ?",  # noqa: S608 - a constant column list
            (reference,),
        )
        return None if row is None else _incoming(row)

    async def reconciliation_counts(self) -> dict[str, int]:
        """Incoming cases waiting for an operator's reconciliation, by domain."""
        rows = await self.fetchall(
            "SELECT domain, COUNT(*) FROM incoming_cases WHERE reconciliation = 1 GROUP BY domain"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    async def reconciliation_by_sender(self) -> list[tuple[str, int, datetime]]:
        """(sender, cases, when the longest waiting entered reconciliation) for
        every province with received cases in reconciliation."""
        rows = await self.fetchall(
            "SELECT sender, COUNT(*), MIN(updated_at) FROM incoming_cases"
            " WHERE reconciliation = 1 GROUP BY sender"
        )
        found = []
        for sender, cases, since in rows:
            when = datetime.fromisoformat(str(since))
            found.append(
                (str(sender), int(cases), when if when.tzinfo else when.replace(tzinfo=UTC))
            )
        return found

    async def reconciliation_cases(self) -> list[ReconciliationCase]:
        """Every incoming case in reconciliation, the longest waiting first."""
        rows = await self.fetchall(
            "SELECT reference, domain, sender, status, updated_at, backend_reference,"
            " correlation_id FROM incoming_cases WHERE reconciliation = 1"
            " ORDER BY updated_at, reference"
        )
        return [
            ReconciliationCase(
                str(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4]), str(r[5]), str(r[6])
            )
            for r in rows
        ]

    async def case_summaries(
        self, *, references: Collection[str] = (), correlation_id: str | None = None
    ) -> list[CaseSummary]:
        """Tracked cases, sent and received, for an operator (no personal data):
        those whose case id or reference is among ``references``, or those of one
        ``correlation_id``; the least recently changed first."""
        if correlation_id is not None:
            out_where, in_where = "correlation_id = ?", "correlation_id = ?"
            args: tuple[Any, ...] = (correlation_id, correlation_id)
        elif references:
            out_where = f"case_id IN ({marks(references)})"
            in_where = f"reference IN ({marks(references)})"
            args = (*references, *references)
        else:
            return []
        rows = await self.fetchall(
            "SELECT case_id, domain, 'sent', peer, status, updated_at, correlation_id, 0"  # noqa: S608 - only placeholders are added
            f" FROM outgoing_cases WHERE {out_where} UNION ALL"
            " SELECT reference, domain, 'received', sender, status, updated_at, correlation_id,"
            f" reconciliation FROM incoming_cases WHERE {in_where}"
            " ORDER BY 6, 1",
            args,
        )
        return [
            CaseSummary(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                str(r[3]),
                int(r[4]),
                str(r[5]),
                str(r[6]),
                bool(r[7]),
            )
            for r in rows
        ]


_INCOMING_COLUMNS = (
    "reference, domain, sender, idempotency_key, correlation_id, application, status,"
    " reconciliation"
)


def _incoming_work(r: tuple[Any, ...]) -> IncomingWork:
    return IncomingWork(
        str(r[0]), str(r[1]), str(r[2]), str(r[3]), bytes(r[4]), int(r[5]), bool(r[6]), int(r[7])
    )


def _incoming(row: tuple[Any, ...]) -> IncomingCase:
    return IncomingCase(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        str(row[3]),
        str(row[4]),
        bytes(row[5]),
        int(row[6]),
        bool(row[7]),
    )


def _outbox_item(r: tuple[Any, ...]) -> OutboxItem:
    """An outbox item from a row of _OUTBOX_ITEM_COLUMNS."""
    return OutboxItem(
        int(r[0]),
        str(r[1]),
        str(r[2]),
        str(r[3]),
        str(r[4]),
        str(r[5]),
        bytes(r[6]),
        str(r[7]),
        int(r[8]),
        float(r[9]),
        float(r[10]),
        float(r[11]),
    )


class _Transaction:
    """A unit of work on the writer connection (:class:`StateTransaction`): run
    in the writer thread, inside the group's transaction."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    # ---- outbox --------------------------------------------------------------------

    def enqueue(self, item: OutboxItem) -> None:
        self._db.execute(
            "INSERT INTO outbox (peer, service, message_id, correlation_id, idempotency_key,"
            " payload, subject, attempts, next_attempt_at, created_at)"
            " VALUES (?,?,?,?,?,?,?,0,?,?)",
            (
                item.peer,
                item.service,
                item.message_id,
                item.correlation_id,
                item.idempotency_key,
                item.payload,
                item.subject,
                item.next_attempt_at,
                item.created_at,
            ),
        )

    def remove_outbox_item(self, item_id: int, *, owner: str) -> bool:
        cursor = self._db.execute(
            "DELETE FROM outbox WHERE id = ? AND lease_owner = ?", (item_id, owner)
        )
        return cursor.rowcount == 1

    def outbox_holder(self, item_id: int) -> str | None:
        row = self._db.execute("SELECT lease_owner FROM outbox WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else row[0] or ""

    def make_peer_due(self, peer: str, now: float) -> None:
        self._db.execute(
            "UPDATE outbox SET next_attempt_at = ? WHERE peer = ? AND next_attempt_at > ?"
            " AND state = 'pending'",
            (now, peer, now),
        )

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
        cursor = self._db.execute(
            "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ?,"
            " state = ?, parked_at = ?, lease_owner = NULL, lease_until = NULL"
            " WHERE id = ? AND lease_owner = ?",
            (
                attempts,
                next_attempt_at,
                last_error,
                PENDING if parked_at is None else PARKED,
                parked_at,
                item_id,
                owner,
            ),
        )
        return cursor.rowcount == 1

    # ---- outgoing cases ------------------------------------------------------------

    def outgoing_by_key(
        self, domain: str, idempotency_key: str, *, peer: str | None = None
    ) -> StoredKey | None:
        sql = (
            "SELECT case_id, body_digest, status FROM outgoing_cases WHERE domain = ?"
            " AND idempotency_key = ?"
        )
        args: tuple[str, ...] = (domain, idempotency_key)
        if peer is not None:
            sql, args = sql + " AND peer = ?", (*args, peer)
        row = self._db.execute(sql, args).fetchone()
        return None if row is None else StoredKey(str(row[0]), bytes(row[1]), int(row[2]))

    def insert_outgoing(self, case: NewOutgoingCase) -> None:
        stamp = case.submitted_at.isoformat()
        self._db.execute(
            "INSERT INTO outgoing_cases (case_id, domain, idempotency_key, body_digest,"
            " client_id, peer, application, status, correlation_id, submitted_at,"
            " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                case.case_id,
                case.domain,
                case.idempotency_key,
                case.body_digest,
                case.client_id,
                case.peer,
                case.application,
                case.status,
                case.correlation_id,
                stamp,
                stamp,
            ),
        )

    def outgoing_delivered(
        self, case_id: str, *, was: int, status: int, remote_reference: str, at: datetime
    ) -> None:
        self._db.execute(
            "UPDATE outgoing_cases SET status = ?, remote_reference = ?, updated_at = ?"
            " WHERE case_id = ? AND status = ?",
            (status, remote_reference, at.isoformat(), case_id, was),
        )

    def outgoing_refused(
        self, case_id: str, *, status: int, reason: str, at: datetime, unless: Collection[int]
    ) -> None:
        self._db.execute(
            "UPDATE outgoing_cases SET status = ?, status_reason = ?, updated_at = ?"  # noqa: S608 - only placeholders are added
            f" WHERE case_id = ? AND status NOT IN ({marks(unless)})",
            (status, reason, at.isoformat(), case_id, *unless),
        )

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
        # The condition is evaluated on the row as committed when the UPDATE
        # takes its lock (PostgreSQL re-reads it after waiting), not on what the
        # unit of work read before: the later of two racing updates cannot undo
        # the earlier one's progress.
        skipped = f" AND status NOT IN ({marks(unless)})" if unless else ""
        cursor = self._db.execute(
            "UPDATE outgoing_cases SET status = ?, status_reason = ?, amount_fen = ?,"  # noqa: S608 - only placeholders are added
            " updated_at = ?, remote_reference = CASE WHEN remote_reference = ''"
            f" THEN ? ELSE remote_reference END WHERE case_id = ?{skipped}",
            (status, reason, amount_fen, at.isoformat(), remote_reference, case_id, *unless),
        )
        return cursor.rowcount == 1

    # ---- incoming cases ------------------------------------------------------------

    def incoming_by_key(self, domain: str, sender: str, idempotency_key: str) -> StoredKey | None:
        row = self._db.execute(
            "SELECT reference, body_digest, status FROM incoming_cases WHERE domain = ?"
            " AND sender = ? AND idempotency_key = ?",
            (domain, sender, idempotency_key),
        ).fetchone()
        return None if row is None else StoredKey(str(row[0]), bytes(row[1]), int(row[2]))

    def insert_incoming(self, case: NewIncomingCase) -> None:
        stamp = case.received_at.isoformat()
        self._db.execute(
            "INSERT INTO incoming_cases (reference, domain, sender, idempotency_key,"
            " message_id, correlation_id, body_digest, application, status, next_poll_at,"
            " received_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                case.reference,
                case.domain,
                case.sender,
                case.idempotency_key,
                case.message_id,
                case.correlation_id,
                case.body_digest,
                case.application,
                case.status,
                case.next_poll_at,
                stamp,
                stamp,
            ),
        )

    def incoming_in_reconciliation(self, reference: str, domain: str) -> IncomingCase | None:
        row = self._db.execute(
            f"SELECT {_INCOMING_COLUMNS} FROM incoming_cases"  # noqa: S608 - a constant column list
            " WHERE reference = ? AND domain = ? AND reconciliation = 1",
            (reference, domain),
        ).fetchone()
        return None if row is None else _incoming(row)

    def incoming_progress(self, reference: str, progress: Progress, *, owner: str) -> bool:
        cursor = self._db.execute(
            "UPDATE incoming_cases SET status = ?, status_reason = ?, amount_fen = ?,"
            " backend_reference = CASE WHEN ? != '' THEN ? ELSE backend_reference END,"
            " submitted = 1, attempts = ?, next_poll_at = ?, updated_at = ?,"
            " lease_owner = NULL, lease_until = NULL WHERE reference = ? AND lease_owner = ?",
            (
                progress.status,
                progress.status_reason,
                progress.amount_fen,
                progress.backend_reference,
                progress.backend_reference,
                progress.attempts,
                progress.next_poll_at,
                progress.updated_at.isoformat(),
                reference,
                owner,
            ),
        )
        return cursor.rowcount == 1

    def incoming_schedule(
        self, reference: str, *, owner: str, attempts: int, next_poll_at: float, submitted: bool
    ) -> bool:
        cursor = self._db.execute(
            "UPDATE incoming_cases SET attempts = ?, next_poll_at = ?, submitted = ?,"
            " lease_owner = NULL, lease_until = NULL WHERE reference = ? AND lease_owner = ?",
            (attempts, next_poll_at, int(submitted), reference, owner),
        )
        return cursor.rowcount == 1

    def incoming_to_reconciliation(self, reference: str, *, owner: str, at: datetime) -> bool:
        cursor = self._db.execute(
            "UPDATE incoming_cases SET reconciliation = 1, submitted = 1, attempts = 0,"
            " updated_at = ?, lease_owner = NULL, lease_until = NULL"
            " WHERE reference = ? AND lease_owner = ?",
            (at.isoformat(), reference, owner),
        )
        return cursor.rowcount == 1

    def incoming_resubmit(self, reference: str, *, next_poll_at: float, at: datetime) -> None:
        self._db.execute(
            "UPDATE incoming_cases SET reconciliation = 0, submitted = 0, attempts = 0,"
            " next_poll_at = ?, updated_at = ?, lease_owner = NULL, lease_until = NULL"
            " WHERE reference = ?",
            (next_poll_at, at.isoformat(), reference),
        )

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
        self._db.execute(
            "UPDATE incoming_cases SET status = ?, status_reason = ?, amount_fen = ?,"
            " reconciliation = 0, submitted = 1, attempts = 0, next_poll_at = ?, updated_at = ?,"
            " lease_owner = NULL, lease_until = NULL WHERE reference = ?",
            (status, reason, amount_fen, next_poll_at, at.isoformat(), reference),
        )


if TYPE_CHECKING:

    def _implements(store: StateStore) -> NodeState:  # checked by mypy only
        return store
