"""The message log: every envelope sent and received, hash-chained (DESIGN §4).

Rows live in SQLite (aiosqlite, WAL, ``synchronous=FULL``). Each row's hash
covers the previous row's hash and the row's own fields (with the SHA-256 of
the envelope), so editing, deleting or reordering any row breaks the chain at
that row, which :meth:`MessageLog.verify` reports.

Writes are grouped: callers enqueue a row and wait; one writer task takes every
row waiting (up to ``batch_max``), chains them, inserts them in one transaction
and commits, then answers every caller. A caller is answered only once its row
is committed, and one fsync serves many rows under load.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway import crypto
from gateway.clock import Clock, SystemClock
from gateway.groupcommit import GroupCommit

GENESIS = b"\x00" * 32

SCHEMA = """
CREATE TABLE IF NOT EXISTS message_log (
    seq            INTEGER PRIMARY KEY,
    logged_at      TEXT NOT NULL,      -- ISO 8601 UTC
    direction      TEXT NOT NULL,      -- 'out' | 'in'
    kind           TEXT NOT NULL,      -- 'request' | 'response'
    message_id     TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    peer           TEXT NOT NULL,      -- GB/T 2260 code of the other node
    service        TEXT NOT NULL,
    envelope       BLOB NOT NULL,      -- serialized SignedEnvelope, as sent/received
    prev_hash      BLOB NOT NULL,
    row_hash       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS message_log_message_id ON message_log (message_id);
CREATE INDEX IF NOT EXISTS message_log_correlation ON message_log (correlation_id);
-- The chain head, signed by the node from time to time: a log cut short at its
-- end (truncated) no longer reaches a signed head, which verify reports.
CREATE TABLE IF NOT EXISTS chain_heads (
    id         INTEGER PRIMARY KEY,
    province   TEXT NOT NULL,
    head_seq   INTEGER NOT NULL,
    head_hash  BLOB NOT NULL,
    signed_at  TEXT NOT NULL,       -- ISO 8601 UTC
    key_id     TEXT NOT NULL,
    signature  BLOB NOT NULL        -- over head_statement(...)
);
"""

#: Signs a chain-head statement: returns (key id, signature).
HeadSigner = Callable[[bytes], tuple[str, bytes]]
#: Finds the public key that verifies a province's head signature by key id.
HeadKeys = Callable[[str, str, datetime], Ed25519PublicKey | None]


def head_statement(province: str, head_seq: int, head_hash: bytes, signed_at: str) -> bytes:
    """The exact bytes a node signs to vouch for its chain head."""
    return f"yrd-chain-head/v1\n{province}\n{head_seq}\n{head_hash.hex()}\n{signed_at}".encode()


@dataclass(frozen=True)
class SignedHead:
    province: str
    head_seq: int
    head_hash: bytes
    signed_at: str
    key_id: str
    signature: bytes

    @property
    def statement(self) -> bytes:
        return head_statement(self.province, self.head_seq, self.head_hash, self.signed_at)


@dataclass(frozen=True)
class LogEntry:
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


@dataclass(frozen=True)
class LoggedRow:
    seq: int
    logged_at: str
    entry: LogEntry
    prev_hash: bytes
    row_hash: bytes


@dataclass(frozen=True)
class ChainReport:
    intact: bool
    rows_checked: int
    first_bad_seq: int
    detail: str
    head_hash: bytes


def row_hash(
    prev_hash: bytes,
    seq: int,
    logged_at: str,
    entry: LogEntry,
    *,
    envelope_digest: bytes | None = None,
) -> bytes:
    """SHA-256 over the previous hash and length-prefixed fields of the row.

    The envelope enters by its SHA-256, so a row can be re-checked from its
    envelope's digest alone (audit evidence carries no other resident's data).
    """
    parts = [
        str(seq).encode(),
        logged_at.encode(),
        entry.direction.encode(),
        entry.kind.encode(),
        entry.message_id.encode(),
        entry.correlation_id.encode(),
        entry.peer.encode(),
        entry.service.encode(),
        envelope_digest if envelope_digest is not None else crypto.sha256(entry.envelope),
    ]
    data = bytearray(prev_hash)
    for part in parts:
        data += struct.pack(">I", len(part)) + part
    return crypto.sha256(bytes(data))


class DuplicateNonce(Exception):
    """An incoming request whose nonce the log already holds for that peer (a replay)."""


class MessageLogClosed(RuntimeError):
    pass


class MessageLog:
    """Append-only, hash-chained log of envelopes; an async context manager."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock | None = None,
        batch_max: int = 512,
        province: str = "",
        head_signer: HeadSigner | None = None,
        head_interval: float = 2.0,
    ) -> None:
        self.path = path
        self.province = province
        self._head_signer = head_signer
        self._head_interval = head_interval
        self._head_signed_at = 0.0
        self._signed_seq = 0
        self._clock = clock or SystemClock()
        self._batch_max = batch_max
        self._db: aiosqlite.Connection | None = None
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._writer: GroupCommit[LogEntry] | None = None
        self._head = GENESIS
        self._next_seq = 1
        self._closed = False

    async def open(self) -> MessageLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="message-log")
        loop = asyncio.get_running_loop()
        self._head, self._next_seq = await loop.run_in_executor(self._executor, self._open_writer)
        # Reads (count, rows, verify) on a connection of their own: they see
        # only committed rows and never wait behind the writer's thread.
        self._db = await aiosqlite.connect(self.path, timeout=30)
        self._writer = GroupCommit(
            f"message-log:{self.path.name}",
            self._write_sync,
            self._executor,
            batch_max=self._batch_max,
            after_group=self._after_group,
        )
        self._writer.start()
        return self

    def _open_writer(self) -> tuple[bytes, int]:
        """In the writer thread: connect, create or migrate the schema, read the head."""
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(message_log)")}
        if "nonce" not in columns:  # logs written before nonces were kept
            conn.execute("ALTER TABLE message_log ADD COLUMN nonce BLOB")
        conn.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS message_log_nonce ON message_log (peer, nonce)"
            " WHERE nonce IS NOT NULL"
        )
        self._conn = conn
        return self._last_row(conn)

    @staticmethod
    def _last_row(conn: sqlite3.Connection) -> tuple[bytes, int]:
        row = conn.execute(
            "SELECT seq, row_hash FROM message_log ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return (bytes(row[1]), int(row[0]) + 1) if row else (GENESIS, 1)

    async def __aenter__(self) -> MessageLog:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def append(self, entry: LogEntry) -> int:
        """Append a row; return its sequence number once it is committed."""
        seq: int = await self._live_writer().submit(entry)
        return seq

    async def append_request(self, entry: LogEntry) -> tuple[int, bytes | None]:
        """Append an incoming request; return its sequence number and the response
        envelope this node already logged for the same message id from the same
        peer (written by another worker, or before a restart), if any."""
        logged: tuple[int, bytes | None] = await self._live_writer().submit(
            replace(entry, find_answer=True)
        )
        return logged

    async def append_all(self, entries: tuple[LogEntry, ...]) -> list[int]:
        """Append rows in one group (one commit); return their sequence numbers."""
        return await self._live_writer().submit_all(list(entries))

    async def append_operator_action(
        self, *, action: str, subject: str, operator: str, reason: str = ""
    ) -> int:
        """Record an operator's action (e.g. a reconciliation resolved) as a chained
        row: direction "local", kind "operator", service "operator.<action>", the
        envelope a small JSON statement of it. Returns the row's sequence number."""
        statement = {
            "action": action,
            "subject": subject,
            "operator": operator,
            "reason": reason,
            "at": self._clock.now().isoformat(),
        }
        return await self.append(
            LogEntry(
                direction="local",
                kind="operator",
                message_id=str(uuid.uuid4()),
                correlation_id="",
                peer="",
                service=f"operator.{action}",
                envelope=json.dumps(statement, ensure_ascii=False, sort_keys=True).encode(),
            )
        )

    def enqueue(self, entry: LogEntry) -> None:
        """Queue a row without waiting for its commit (for a caller that cannot
        wait, e.g. one being cancelled); :meth:`close` still writes it."""
        self._live_writer().enqueue(entry)

    def _live_writer(self) -> GroupCommit[LogEntry]:
        if self._closed or self._writer is None:
            raise MessageLogClosed("message log is closed")
        return self._writer

    @property
    def commits(self) -> int:
        """Commits of the grouped writer (rows per commit = rows_written / commits)."""
        return self._writer.commits if self._writer else 0

    @property
    def rows_written(self) -> int:
        return self._writer.items if self._writer else 0

    async def _after_group(self) -> None:
        if time.monotonic() - self._head_signed_at >= self._head_interval:
            await self._sign_head()

    async def _sign_head(self) -> None:
        """Sign and store the committed chain head (if it moved since the last one)."""
        if self._head_signer is None or self._conn is None:
            return
        head_seq, head = self._next_seq - 1, self._head
        if head_seq <= self._signed_seq:
            return
        signed_at = self._clock.now().isoformat()
        key_id, signature = self._head_signer(
            head_statement(self.province, head_seq, head, signed_at)
        )
        conn = self._conn

        def insert() -> None:
            conn.execute(
                "INSERT INTO chain_heads (province, head_seq, head_hash, signed_at, key_id,"
                " signature) VALUES (?,?,?,?,?,?)",
                (self.province, head_seq, head, signed_at, key_id, signature),
            )

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, insert)
        except Exception:  # a missed head is caught up by the next one
            return
        self._signed_seq = head_seq
        self._head_signed_at = time.monotonic()

    def _write_sync(self, entries: list[LogEntry]) -> list[tuple[bool, Any]]:
        """In the writer thread. The head is read inside the write transaction
        (BEGIN IMMEDIATE), so several worker processes of one node extend one
        chain without forking it; a nonce already logged for the peer is refused."""
        conn = self._conn
        assert conn is not None
        logged_at = self._clock.now().isoformat()
        conn.execute("BEGIN IMMEDIATE")
        try:
            head, seq = self._last_row(conn)
            rows: list[tuple[Any, ...]] = []
            outcomes: list[tuple[bool, Any]] = []
            nonces: set[tuple[str, bytes]] = set()
            for entry in entries:
                if entry.nonce:
                    key = (entry.peer, entry.nonce)
                    seen = (
                        key in nonces
                        or conn.execute(
                            "SELECT 1 FROM message_log WHERE peer = ? AND nonce = ?", key
                        ).fetchone()
                        is not None
                    )
                    if seen:
                        outcomes.append((False, DuplicateNonce(entry.peer)))
                        continue
                    nonces.add(key)
                try:
                    digest = row_hash(head, seq, logged_at, entry)
                except Exception as exc:  # an entry that cannot be encoded fails alone
                    outcomes.append((False, exc))
                    continue
                rows.append(
                    (
                        seq,
                        logged_at,
                        entry.direction,
                        entry.kind,
                        entry.message_id,
                        entry.correlation_id,
                        entry.peer,
                        entry.service,
                        entry.envelope,
                        head,
                        digest,
                        entry.nonce or None,
                    )
                )
                if entry.find_answer:
                    answer = conn.execute(
                        "SELECT envelope FROM message_log WHERE message_id = ? AND peer = ?"
                        " AND direction = 'out' AND kind = 'response' ORDER BY seq DESC LIMIT 1",
                        (entry.message_id, entry.peer),
                    ).fetchone()
                    outcomes.append((True, (seq, bytes(answer[0]) if answer else None)))
                else:
                    outcomes.append((True, seq))
                head, seq = digest, seq + 1
            conn.executemany(
                "INSERT INTO message_log (seq, logged_at, direction, kind, message_id,"
                " correlation_id, peer, service, envelope, prev_hash, row_hash, nonce)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        # Read by the event loop only after this group is answered.
        self._head, self._next_seq = head, seq
        return outcomes

    async def close(self) -> None:
        """Flush every queued row, then close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._writer.close()
            await self._sign_head()  # the final head
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def count(self) -> int:
        assert self._db is not None
        async with self._db.execute("SELECT COUNT(*) FROM message_log") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def rows(self, *, message_id: str | None = None) -> AsyncIterator[LoggedRow]:
        assert self._db is not None
        query = (
            "SELECT seq, logged_at, direction, kind, message_id, correlation_id, peer, service,"
            " envelope, prev_hash, row_hash FROM message_log"
        )
        args: tuple[str, ...] = ()
        if message_id is not None:
            query += " WHERE message_id = ?"
            args = (message_id,)
        async with self._db.execute(query + " ORDER BY seq", args) as cursor:
            async for r in cursor:
                yield LoggedRow(
                    int(r[0]),
                    _text(r[1]),
                    LogEntry(
                        _text(r[2]),
                        _text(r[3]),
                        _text(r[4]),
                        _text(r[5]),
                        _text(r[6]),
                        _text(r[7]),
                        _blob(r[8]),
                    ),
                    _blob(r[9]),
                    _blob(r[10]),
                )

    async def heads(self) -> list[SignedHead]:
        assert self._db is not None
        async with self._db.execute(
            "SELECT province, head_seq, head_hash, signed_at, key_id, signature FROM chain_heads"
            " ORDER BY id"
        ) as cursor:
            return [
                SignedHead(
                    _text(r[0]), int(r[1]), _blob(r[2]), _text(r[3]), _text(r[4]), _blob(r[5])
                )
                async for r in cursor
            ]

    async def verify(self, keys: HeadKeys | None = None) -> ChainReport:
        """The chain, then every signed head against it (and its signature, given keys)."""
        hashes: dict[int, bytes] = {}

        async def remembered() -> AsyncIterator[LoggedRow]:
            async for row in self.rows():
                hashes[row.seq] = row.row_hash
                yield row

        report = await verify_chain(remembered())
        if not report.intact:
            return report
        last = max(hashes) if hashes else 0
        heads = await self.heads()
        for head in heads:
            if head.head_seq > last:
                return ChainReport(
                    False,
                    report.rows_checked,
                    last + 1,
                    f"truncated: a head signed at {head.signed_at} vouches for "
                    f"row {head.head_seq}, the log ends at row {last}",
                    report.head_hash,
                )
            if hashes.get(head.head_seq) != head.head_hash:
                return ChainReport(
                    False,
                    report.rows_checked,
                    head.head_seq,
                    f"row {head.head_seq}: does not match the head signed at {head.signed_at}",
                    report.head_hash,
                )
            if keys is not None:
                key = keys(head.province, head.key_id, datetime.fromisoformat(head.signed_at))
                if key is None or not crypto.verify(key, head.signature, head.statement):
                    return ChainReport(
                        False,
                        report.rows_checked,
                        head.head_seq,
                        f"head signed at {head.signed_at}: signature does not "
                        f"verify with key {head.key_id!r} of {head.province}",
                        report.head_hash,
                    )
        signed = f"; {len(heads)} signed heads match" if heads else "; no signed head yet"
        if heads and keys is None:
            signed += " (signatures not checked: no keys given)"
        return ChainReport(True, report.rows_checked, 0, report.detail + signed, report.head_hash)


async def verify_chain(rows: AsyncIterator[LoggedRow]) -> ChainReport:
    """Walk rows in order; report the first one that does not chain."""
    head, expected_seq, checked = GENESIS, 1, 0
    async for row in rows:
        checked += 1
        if row.seq != expected_seq:
            return ChainReport(
                False,
                checked,
                row.seq,
                f"row {row.seq}: expected sequence {expected_seq} (a row was deleted or reordered)",
                head,
            )
        if row.prev_hash != head:
            return ChainReport(
                False,
                checked,
                row.seq,
                f"row {row.seq}: prev_hash does not match the previous row's hash",
                head,
            )
        if row_hash(head, row.seq, row.logged_at, row.entry) != row.row_hash:
            return ChainReport(
                False,
                checked,
                row.seq,
                f"row {row.seq}: content does not match its hash (edited)",
                head,
            )
        head, expected_seq = row.row_hash, expected_seq + 1
    return ChainReport(True, checked, 0, f"{checked} rows chain intact", head)


async def verify_file(path: Path, keys: HeadKeys | None = None) -> ChainReport:
    """Verify a log file without a running node (``yrd-gateway audit verify``)."""
    async with MessageLog(path) as log:
        return await log.verify(keys)


def _text(value: object) -> str:
    """A TEXT column's value as written, even if someone stored bytes in it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _blob(value: object) -> bytes:
    """A BLOB column's value as written, even if someone stored text in it."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", errors="replace")
