"""The node's business state in SQLite: guest registrations, tracked cases
(withdrawals, service cases) on both sides of their exchange, and the outbox of
asynchronous deliveries.

Writes are grouped like the message log's: each write is a plain function run
inside its own SAVEPOINT in the store's writer thread; a whole group runs in one
hop to that thread and one commit, and only then is every caller answered. A
caller is therefore answered only after its write is durable (WAL,
``synchronous=FULL``), and a failing write (an integrity error, say) rolls back
alone without disturbing the others of its group. Reads use a second
connection (aiosqlite) and see only committed data.

Kept in ``state.db``, apart from the message log's ``messages.db``.
Only this module speaks SQL, so the store can move to PostgreSQL without
touching the rest.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from gateway.storage.groupcommit import GroupCommit, rollback

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], Any]

SCHEMA = """
CREATE TABLE IF NOT EXISTS check_ins (
    check_in_id      TEXT PRIMARY KEY,
    relying_party_id TEXT NOT NULL,
    issuer_province  TEXT NOT NULL,
    guest            BLOB NOT NULL,   -- serialized yrd.common.v1.Person (disclosed attributes)
    client_reference TEXT NOT NULL,
    recorded_at      TEXT NOT NULL,   -- ISO 8601 UTC
    correlation_id   TEXT NOT NULL
);

-- e-ID tokens of this province this node answered "first use" for, kept for the
-- token's validity window: single use holds even if the e-ID authority forgets.
CREATE TABLE IF NOT EXISTS answered_tokens (
    token_id    TEXT PRIMARY KEY,
    keep_until  REAL NOT NULL,        -- unix seconds; pruned after
    answered_at REAL NOT NULL         -- unix seconds
);
CREATE INDEX IF NOT EXISTS answered_tokens_expiry ON answered_tokens (keep_until);

-- Tracked exchanges (withdrawals, service cases), submitting node's side.
CREATE TABLE IF NOT EXISTS outgoing_cases (
    case_id          TEXT PRIMARY KEY,
    domain           TEXT NOT NULL,     -- 'withdrawal' | 'case'
    idempotency_key  TEXT NOT NULL,
    body_digest      BLOB NOT NULL,     -- SHA-256 of the deterministic application bytes
    client_id        TEXT NOT NULL,
    peer             TEXT NOT NULL,     -- the province that handles it
    application      BLOB NOT NULL,     -- serialized application message
    status           INTEGER NOT NULL,
    status_reason    TEXT NOT NULL DEFAULT '',
    amount_fen       INTEGER NOT NULL DEFAULT 0,   -- paid amount (withdrawals)
    remote_reference TEXT NOT NULL DEFAULT '',
    correlation_id   TEXT NOT NULL,
    submitted_at     TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    UNIQUE (domain, idempotency_key)
);

-- Tracked exchanges, handling node's side: applications received from peers.
CREATE TABLE IF NOT EXISTS incoming_cases (
    reference         TEXT PRIMARY KEY,  -- this node's reference, given to its back-end
    domain            TEXT NOT NULL,
    sender            TEXT NOT NULL,
    idempotency_key   TEXT NOT NULL,
    message_id        TEXT NOT NULL,
    correlation_id    TEXT NOT NULL,
    body_digest       BLOB NOT NULL,
    application       BLOB NOT NULL,
    status            INTEGER NOT NULL,   -- last status reported back to the sender
    status_reason     TEXT NOT NULL DEFAULT '',
    amount_fen        INTEGER NOT NULL DEFAULT 0,
    backend_reference TEXT NOT NULL DEFAULT '',
    submitted         INTEGER NOT NULL DEFAULT 0,  -- handed to the back-end (or may have been)
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_poll_at      REAL NOT NULL,               -- unix seconds
    received_at       TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    -- 1: a money-moving case its back-end lost track of; left alone until an
    -- operator resolves it (`yrd-gateway outbox resolve`).
    reconciliation    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (domain, sender, idempotency_key)
);
CREATE INDEX IF NOT EXISTS incoming_cases_due ON incoming_cases (next_poll_at);

-- Asynchronous deliveries to peers, kept until the peer acknowledges them.
CREATE TABLE IF NOT EXISTS outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    peer             TEXT NOT NULL,
    service          TEXT NOT NULL,
    message_id       TEXT NOT NULL UNIQUE,  -- kept across retries: the receiver dedupes on it
    correlation_id   TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    payload          BLOB NOT NULL,
    subject          TEXT NOT NULL,         -- the case it belongs to
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,         -- unix seconds
    created_at       REAL NOT NULL,         -- unix seconds
    last_error       TEXT NOT NULL DEFAULT '',
    state            TEXT NOT NULL DEFAULT 'pending',  -- 'pending' | 'parked' (for an operator)
    parked_at        REAL,                  -- unix seconds, while parked
    retried_at       REAL                   -- unix seconds, an operator's last retry
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at);

-- One row, rewritten by a node that could not write, to learn when it can again.
CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""

#: Columns added after the first release: (table, name, definition), added to
#: older files by ALTER TABLE until the schema gets numbered migrations.
_ADDED_COLUMNS = (
    ("outbox", "state", "TEXT NOT NULL DEFAULT 'pending'"),
    ("outbox", "parked_at", "REAL"),
    ("outbox", "retried_at", "REAL"),
    ("incoming_cases", "reconciliation", "INTEGER NOT NULL DEFAULT 0"),
)

#: Outbox item states.
PENDING, PARKED = "pending", "parked"


@dataclass(frozen=True)
class OutboxItem:
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


class StoreClosedError(RuntimeError):
    pass


class StateStore:
    """Business records of the node; an async context manager."""

    def __init__(
        self,
        path: Path,
        *,
        batch_max: int = 256,
        on_writable: Callable[[bool], None] | None = None,
    ) -> None:
        self.path = path
        #: Told False when a write fails because the file cannot be written, True
        #: when a write succeeds again (the node's health follows it).
        self.on_writable = on_writable
        self._batch_max = batch_max
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._reader_db: aiosqlite.Connection | None = None
        self._writer: GroupCommit[WriteOp] | None = None
        self._closed = False

    async def open(self) -> StateStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-store")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open_writer)
        self._reader_db = await aiosqlite.connect(self.path, timeout=30, isolation_level=None)
        self._writer = GroupCommit(
            f"state-store:{self.path.name}",
            self._run_sync,
            self._executor,
            batch_max=self._batch_max,
            on_writable=self._writable_changed,
        )
        self._writer.start()
        return self

    def _writable_changed(self, writable: bool) -> None:
        if self.on_writable is not None:
            self.on_writable(writable)

    def _open_writer(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        for table, name, definition in _ADDED_COLUMNS:
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if name not in columns:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
        self._conn = conn

    async def __aenter__(self) -> StateStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` (in the writer thread, in its own savepoint); return its
        result once the group it was part of is committed."""
        if self._closed or self._writer is None:
            raise StoreClosedError("state store is closed")
        result: T = await self._writer.submit(op)
        return result

    async def probe(self) -> bool:
        """Try a real (tiny) write: True if the store can write again."""

        def op(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO write_probe (id, at) VALUES (1, ?)", (time.time(),))

        try:
            await self.write(op)
        except Exception:  # still failing (or closed): the next probe tries again
            return False
        return True

    @property
    def commits(self) -> int:
        return self._writer.commits if self._writer else 0

    @property
    def writes(self) -> int:
        return self._writer.items if self._writer else 0

    def _run_sync(self, ops: list[WriteOp]) -> list[tuple[bool, Any]]:
        """In the writer thread: one transaction, a savepoint per op, one commit."""
        conn = self._conn
        assert conn is not None
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    value = op(conn)
                except Exception as exc:
                    try:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                    except sqlite3.Error:
                        # The transaction itself is gone (an I/O error): the op's
                        # error, not the rollback's, is the one reported.
                        raise exc from None
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((True, value))
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        return outcomes

    async def close(self) -> None:
        """Finish queued writes, then close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._writer.close()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._reader_db is not None:
            await self._reader_db.close()
            self._reader_db = None

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader_db is None:
            raise StoreClosedError("state store is not open")
        return self._reader_db

    async def fetchall(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        # One call on the connection's thread that runs the statement to its end:
        # interleaved, half-read cursors would hold the read snapshot open and
        # later reads would miss writes committed since (stale reads).
        rows = await self.reader.execute_fetchall(sql, args)
        return [tuple(row) for row in rows]

    async def fetchone(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        rows = await self.fetchall(sql, args)
        return rows[0] if rows else None

    # ---- guest registrations ---------------------------------------------------

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
    ) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO check_ins VALUES (?,?,?,?,?,?,?)",
                (
                    check_in_id,
                    relying_party_id,
                    issuer_province,
                    guest,
                    client_reference,
                    recorded_at.isoformat(),
                    correlation_id,
                ),
            )

        await self.write(op)

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
        concurrent claims, in any worker process, exactly one wins. Rows past
        their time are pruned on the way."""

        def op(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM answered_tokens WHERE keep_until < ?", (now,))
            cursor = db.execute(
                "INSERT OR IGNORE INTO answered_tokens (token_id, keep_until, answered_at)"
                " VALUES (?,?,?)",
                (token_id, keep_until, now),
            )
            return cursor.rowcount == 1

        return await self.write(op)

    async def answered_token_count(self) -> int:
        row = await self.fetchone("SELECT COUNT(*) FROM answered_tokens")
        return int(row[0]) if row else 0

    # ---- outbox -----------------------------------------------------------------

    @staticmethod
    def enqueue(db: sqlite3.Connection, item: OutboxItem) -> None:
        """Add an outbox item inside a write op (with the record it belongs to)."""
        db.execute(
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

    async def due_outbox(
        self,
        now: float,
        limit: int,
        *,
        skip_ids: Collection[int] = (),
        skip_peers: Collection[str] = (),
    ) -> list[tuple[int, str]]:
        """(id, peer) of up to ``limit`` items due by ``now``, oldest first, except
        the ``skip_ids`` (in flight already) and items for the ``skip_peers``."""
        if limit <= 0:
            return []
        where = "next_attempt_at <= ? AND state = 'pending'"
        if skip_ids:
            where += f" AND id NOT IN ({','.join('?' * len(skip_ids))})"
        if skip_peers:
            where += f" AND peer NOT IN ({','.join('?' * len(skip_peers))})"
        sql = f"SELECT id, peer FROM outbox WHERE {where} ORDER BY next_attempt_at, id LIMIT ?"  # noqa: S608 - only placeholders are added
        rows = await self.fetchall(sql, (now, *skip_ids, *skip_peers, limit))
        return [(int(r[0]), str(r[1])) for r in rows]

    async def outbox_items(self, ids: Collection[int]) -> list[OutboxItem]:
        """The items with these ids (those still in the outbox), in id order."""
        if not ids:
            return []
        rows = await self.fetchall(
            "SELECT id, peer, service, message_id, correlation_id, idempotency_key, payload,"  # noqa: S608 - only placeholders are added
            " subject, attempts, next_attempt_at, created_at,"
            " COALESCE(retried_at, created_at) FROM outbox"
            f" WHERE id IN ({','.join('?' * len(ids))}) ORDER BY id",
            tuple(ids),
        )
        return [
            OutboxItem(
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
            for r in rows
        ]

    async def next_outbox_time(self) -> float | None:
        row = await self.fetchone("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'")
        return float(row[0]) if row and row[0] is not None else None

    async def outbox_entries(
        self, *, state: str | None = None, reference: str | None = None
    ) -> list[OutboxEntry]:
        """Outbox items for an operator, oldest first: all, those in ``state``, or
        those of one ``reference`` (the case id or reference they belong to, or
        their message id)."""
        where, args = "1 = 1", []
        if state is not None:
            where += " AND state = ?"
            args.append(state)
        if reference is not None:
            where += " AND (subject = ? OR message_id = ?)"
            args += [reference, reference]
        rows = await self.fetchall(
            "SELECT id, subject, message_id, peer, service, state, attempts, created_at,"  # noqa: S608 - only placeholders are added
            f" next_attempt_at, last_error, parked_at FROM outbox WHERE {where}"
            " ORDER BY created_at, id",
            tuple(args),
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
            )
            for r in rows
        ]

    async def set_outbox_state(self, item_id: int, state: str, *, now: float) -> bool:
        """Park a pending item, or make a parked one pending and due ``now``.
        False if the item is gone or was not in the other state."""
        other = PENDING if state == PARKED else PARKED

        def op(db: sqlite3.Connection) -> bool:
            if state == PARKED:
                cursor = db.execute(
                    "UPDATE outbox SET state = ?, parked_at = ? WHERE id = ? AND state = ?",
                    (PARKED, now, item_id, other),
                )
            else:
                cursor = db.execute(
                    "UPDATE outbox SET state = ?, parked_at = NULL, next_attempt_at = ?,"
                    " retried_at = ? WHERE id = ? AND state = ?",
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

    # ---- incoming cases in reconciliation -----------------------------------------

    async def reconciliation_counts(self) -> dict[str, int]:
        """Incoming cases waiting for an operator's reconciliation, by domain."""
        rows = await self.fetchall(
            "SELECT domain, COUNT(*) FROM incoming_cases WHERE reconciliation = 1 GROUP BY domain"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    async def reconciliation_cases(self) -> list[ReconciliationCase]:
        """Every incoming case in reconciliation, the longest waiting first."""
        rows = await self.fetchall(
            "SELECT reference, domain, sender, status, updated_at, backend_reference"
            " FROM incoming_cases WHERE reconciliation = 1 ORDER BY updated_at, reference"
        )
        return [
            ReconciliationCase(str(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4]), str(r[5]))
            for r in rows
        ]


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
