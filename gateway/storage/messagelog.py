"""The message log: every envelope sent and received, hash-chained (DESIGN §4).

Rows live in SQLite (aiosqlite, WAL, ``synchronous=FULL``). Each row's hash
covers the previous row's hash and the row's own fields (with the SHA-256 of
the envelope), so editing, deleting or reordering any row breaks the chain at
that row, which :meth:`MessageLog.verify` reports.

Writes are grouped (:mod:`gateway.storage.groupcommit`): callers enqueue a row
and wait; one writer task takes every row waiting (up to ``batch_max``), chains
them, inserts them in one transaction and commits, then answers every caller. A
caller is answered only once its row is committed, and one fsync serves many
rows under load. The schema is versioned
(:data:`gateway.storage.migrations.MESSAGE_LOG_MIGRATIONS`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.core import crypto
from gateway.core.clock import Clock, SystemClock
from gateway.storage.engines import StoreFile, store_file
from gateway.storage.groupcommit import GroupCommit, Outcome, insert_rows
from gateway.storage.migrations import MESSAGE_LOG_MIGRATIONS
from gateway.storage.pgschema import MESSAGE_LOG_PG_MIGRATIONS
from gateway.storage.records import (
    ANSWERS_LOOKED_UP,
    Break,
    ChainReport,
    DuplicateNonce,
    HeadKeys,
    LogEntry,
    LoggedExchange,
    LogRow,
    MessageLogClosed,
)
from gateway.storage.sql import Connection, marks

if TYPE_CHECKING:
    from gateway.storage.interfaces import MessageRecorder, OperatorLog

# LogEntry and LoggedExchange cross the storage seam (records); importable from here too.
__all__ = [
    "ANSWERS_LOOKED_UP",
    "GENESIS",
    "Break",
    "ChainReport",
    "DuplicateNonce",
    "HeadKeys",
    "LogEntry",
    "LoggedExchange",
    "LoggedRow",
    "MessageLog",
    "MessageLogClosed",
    "SignedHead",
    "head_statement",
    "row_hash",
    "verify_chain",
    "verify_file",
]

GENESIS = b"\x00" * 32

#: A row of this kind starts a new segment of the chain: the node was started
#: past a break (``serve --continue-past-break``). Its envelope is a signed JSON
#: statement naming the broken row and the cause; a signed head follows it.
SEGMENT_KIND = "segment"
SEGMENT_SERVICE = "log.continue-past-break"
#: At start the node re-checks the rows from the last signed head that lies at
#: least this many rows before the tail (or from row 1): a bounded cost however
#: long the log (docs/operations.md); ``audit verify`` checks the whole log.
START_CHECK_ROWS = 10_000

#: Signs a chain-head statement: returns (key id, signature).
HeadSigner = Callable[[bytes], tuple[str, bytes]]


#: Finds the public key that verifies a province's head signature by key id.
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
class LoggedRow:
    seq: int
    logged_at: str
    entry: LogEntry
    prev_hash: bytes
    row_hash: bytes


def segment_statement(
    broken: Break, *, province: str, previous_tail: int, heads_before: int, at: str
) -> bytes:
    """The statement of a segment row: what the node continued past, and when."""
    return json.dumps(
        {
            "statement": "yrd-continue-past-break/v1",
            "province": province,
            "broken_row": broken.seq,
            "cause": broken.detail,
            "previous_tail": previous_tail,
            # Chain heads signed before the continuation (ids up to this one)
            # vouch for the old segment; a mismatch there is part of the break.
            "heads_before": heads_before,
            "at": at,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def _heads_before(envelope: bytes, keys: HeadKeys | None) -> int:
    """``heads_before`` of a segment row's envelope; 0 (no head is taken as the
    old segment's) if it cannot be read or, given keys, its signature does not
    verify with the node's key: a forged statement excuses nothing."""
    try:
        outer = json.loads(envelope)
        statement = base64.b64decode(outer["statement"])
        inner = json.loads(statement)
        if keys is not None:
            key = keys(inner["province"], outer["key_id"], datetime.fromisoformat(inner["at"]))
            signature = base64.b64decode(outer["signature"])
            if key is None or not crypto.verify(key, signature, statement):
                return 0
        return int(inner["heads_before"])
    except (ValueError, KeyError, TypeError):
        return 0


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


#: Keys looked up by one query (SQLite's oldest limit of 999 parameters).
LOOKUP_KEYS = 500
_COLUMNS = (
    "seq, logged_at, direction, kind, message_id, correlation_id, peer, service,"
    " envelope, prev_hash, row_hash, nonce"
)


def _chunks(keys: list[Any]) -> list[list[Any]]:
    return [keys[start : start + LOOKUP_KEYS] for start in range(0, len(keys), LOOKUP_KEYS)]


def _logged_nonces(conn: Connection, entries: list[LogEntry]) -> set[tuple[str, bytes]]:
    """The (peer, nonce) pairs of ``entries`` already in the log: one query per
    peer (usually one) and :data:`LOOKUP_KEYS` nonces."""
    by_peer: dict[str, list[bytes]] = {}
    for entry in entries:
        if entry.nonce:
            by_peer.setdefault(entry.peer, []).append(entry.nonce)
    logged: set[tuple[str, bytes]] = set()
    for peer, nonces in by_peer.items():
        for chunk in _chunks(nonces):
            for (nonce,) in conn.execute(
                f"SELECT nonce FROM message_log WHERE peer = ? AND nonce IN ({marks(chunk)})",  # noqa: S608 - placeholders only
                (peer, *chunk),
            ).fetchall():
                logged.add((peer, bytes(nonce)))
    return logged


def _logged_exchanges(
    conn: Connection, entries: list[LogEntry]
) -> tuple[dict[tuple[str, str], bytes], dict[tuple[str, str], list[bytes]]]:
    """For the entries that ask what was logged under their (peer, message id)
    (``find_answer``): the first request logged, and the newest responses (at
    most :data:`ANSWERS_LOOKED_UP`, newest first), by (peer, message id).

    One query per :data:`LOOKUP_KEYS` message ids finds which were logged
    before (usually none: a new request); only for those are the first
    request's bytes and the answers read (a response is logged only after its
    request, so an exchange never logged has none)."""
    wanted = {(entry.peer, entry.message_id) for entry in entries if entry.find_answer}
    first_seqs: dict[int, tuple[str, str]] = {}
    for chunk in _chunks(sorted({message_id for _, message_id in wanted})):
        for peer, message_id, seq in conn.execute(
            "SELECT peer, message_id, MIN(seq) FROM message_log WHERE direction = 'in'"  # noqa: S608 - placeholders only
            f" AND kind = 'request' AND message_id IN ({marks(chunk)}) GROUP BY peer, message_id",
            chunk,
        ).fetchall():
            key = (str(peer), str(message_id))
            if key in wanted:
                first_seqs[int(seq)] = key
    firsts: dict[tuple[str, str], bytes] = {}
    answers: dict[tuple[str, str], list[bytes]] = {}
    for chunk in _chunks(sorted(first_seqs)):
        for seq, envelope in conn.execute(
            f"SELECT seq, envelope FROM message_log WHERE seq IN ({marks(chunk)})",  # noqa: S608 - placeholders only
            chunk,
        ).fetchall():
            firsts[first_seqs[int(seq)]] = bytes(envelope)
    for peer, message_id in first_seqs.values():
        answers[peer, message_id] = [
            bytes(row[0])
            for row in conn.execute(
                "SELECT envelope FROM message_log WHERE message_id = ? AND peer = ?"
                " AND direction = 'out' AND kind = 'response' ORDER BY seq DESC LIMIT ?",
                (message_id, peer, ANSWERS_LOOKED_UP),
            ).fetchall()
        ]
    return firsts, answers


class MessageLog:
    """Append-only, hash-chained log of envelopes; an async context manager."""

    def __init__(
        self,
        path: Path | str,
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
        self._head = GENESIS
        self._next_seq = 1
        #: The head a group's transaction reached, until it is committed.
        self._uncommitted = (GENESIS, 1)
        # One chain per province: every group, from any worker or replica, takes
        # its turn (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock held
        # by the group's transaction), and reads the tail inside it.
        self._file: StoreFile[LogEntry] = store_file(
            path,
            store="message_log",
            sqlite_migrations=MESSAGE_LOG_MIGRATIONS,
            pg_migrations=MESSAGE_LOG_PG_MIGRATIONS,
            write=self._write_group,
            what="message log",
            batch_max=batch_max,
            on_writable=self._writable_changed,
            one_writer=True,
            prepare=self._read_head,
            committed=self._group_committed,
            after_group=self._after_group,
            before_close=self._sign_head,  # the final head
        )
        #: Told False when a write fails because the file cannot be written, True
        #: when a write succeeds again (the node's health follows it).
        self.on_writable: Callable[[bool], None] | None = None

        #: A start-up check found a break no segment acknowledges: sign no head
        #: (it would vouch for the broken rows) until a segment records it.
        self._break_found = False

    async def open(self) -> MessageLog:
        """Open (creating and migrating the file if needed). Raises StoreOpenError
        (or OSError for the folder)."""
        await self._file.open()
        return self

    async def open_for_reading(self) -> MessageLog:
        """Open to read and verify only (``audit verify``, ``audit export``): the
        file may be a read-only copy; nothing is migrated or written, and
        appending raises MessageLogClosed. Close it as usual."""
        await self._file.open_for_reading()
        return self

    @property
    def location(self) -> str:
        """Where the log is, for messages (a database URL without its password)."""
        return self._file.location

    def _read_head(self, conn: Connection) -> None:
        """In the writer thread, at open: the last signed head's row, and the chain's head."""
        signed = conn.execute("SELECT MAX(head_seq) FROM chain_heads").fetchone()
        self._signed_seq = int(signed[0]) if signed and signed[0] is not None else 0
        self._head, self._next_seq = self._last_row(conn)

    @staticmethod
    def _last_row(conn: Connection) -> tuple[bytes, int]:
        row = conn.execute(
            "SELECT seq, row_hash FROM message_log ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return (bytes(row[1]), int(row[0]) + 1) if row else (GENESIS, 1)

    async def probe(self) -> bool:
        """Try a real (tiny) write outside the chain: True if the log can write again."""
        return await self._file.probe()

    def _writable_changed(self, writable: bool) -> None:
        if self.on_writable is not None:
            self.on_writable(writable)

    async def __aenter__(self) -> MessageLog:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def append(self, entry: LogEntry) -> int:
        """Append a row; return its sequence number once it is committed."""
        seq: int = await self._live_writer().submit(entry)
        return seq

    async def append_request(self, entry: LogEntry) -> tuple[int, LoggedExchange]:
        """Append an incoming request; return its sequence number and what this
        node already logged for the same message id from the same peer (written
        by another worker, or before a restart): the first request and the
        newest responses."""
        logged: tuple[int, LoggedExchange] = await self._live_writer().submit(
            replace(entry, find_answer=True)
        )
        return logged

    async def append_all(self, entries: tuple[LogEntry, ...]) -> list[int]:
        """Append rows in one group (one commit); return their sequence numbers."""
        return await self._live_writer().submit_all(list(entries))

    async def append_operator_action(
        self,
        *,
        action: str,
        subject: str,
        operator: str,
        reason: str = "",
        correlation_id: str = "",
    ) -> int:
        """Record an operator's action (retry, park, resolve ...) as a chained row:
        direction "local", kind "operator", service "operator.<action>", and as
        envelope a JSON statement of the action, signed with the node's key when
        the log has one (the same key that signs its chain heads)."""
        statement = {
            "action": action,
            "subject": subject,
            "operator": operator,
            "reason": reason,
            "at": self._clock.now().isoformat(),
        }
        body = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
        document: dict[str, Any] = {"statement": statement}
        if self._head_signer is not None:
            key_id, signature = self._head_signer(b"yrd-operator-action/v1\n" + body)
            document["key_id"] = key_id
            document["signature"] = base64.b64encode(signature).decode()
        return await self.append(
            LogEntry(
                "local",
                "operator",
                str(uuid.uuid4()),
                correlation_id,  # the exchange acted on: a search by it finds the action
                "",
                f"operator.{action}",
                json.dumps(document, sort_keys=True).encode(),
            )
        )

    def enqueue(self, entry: LogEntry) -> None:
        """Queue a row without waiting for its commit (for a caller that cannot
        wait, e.g. one being cancelled); :meth:`close` still writes it."""
        self._live_writer().enqueue(entry)

    def _live_writer(self) -> GroupCommit[LogEntry]:
        writer = self._file.writer
        if writer is None:
            raise MessageLogClosed("message log is closed")
        return writer

    @property
    def commits(self) -> int:
        """Commits of the grouped writer (rows per commit = rows_written / commits)."""
        return self._file.commits

    @property
    def rows_written(self) -> int:
        return self._file.items

    async def _after_group(self) -> None:
        if time.monotonic() - self._head_signed_at >= self._head_interval:
            await self._sign_head()

    async def _sign_head(self) -> None:
        """Sign and store the committed chain head (if it moved since the last one)."""
        if self._head_signer is None or self._break_found:
            return
        head_seq, head = self._next_seq - 1, self._head
        if head_seq <= self._signed_seq:
            return
        signed_at = self._clock.now().isoformat()
        key_id, signature = self._head_signer(
            head_statement(self.province, head_seq, head, signed_at)
        )

        def insert(conn: Connection) -> None:
            conn.execute(
                "INSERT INTO chain_heads (province, head_seq, head_hash, signed_at, key_id,"
                " signature) VALUES (?,?,?,?,?,?)",
                (self.province, head_seq, head, signed_at, key_id, signature),
            )

        try:
            await self._file.run(insert)
        except Exception:  # closed, or cannot write: a missed head is caught up by the next one
            return
        self._signed_seq = head_seq
        self._head_signed_at = time.monotonic()

    def _write_group(self, conn: Connection, entries: list[LogEntry]) -> list[Outcome]:
        """In the writer thread, inside the group's transaction. The head is read
        inside it (BEGIN IMMEDIATE), so several worker processes of one node
        extend one chain without forking it; a nonce already logged for the peer
        is refused.

        A group costs a few statements whatever its size: the nonces already
        logged, the first requests and the answers logged under the group's
        message ids are each read in one query, and the rows are inserted with
        one statement per 64 (:func:`~gateway.storage.groupcommit.insert_rows`).
        Each statement the writer thread runs is a hand-off of the interpreter
        lock with a busy event loop."""
        logged_at = self._clock.now().isoformat()
        head, seq = self._last_row(conn)
        logged_nonces = _logged_nonces(conn, entries)
        logged_firsts, logged_answers = _logged_exchanges(conn, entries)
        rows: list[tuple[Any, ...]] = []
        outcomes: list[Outcome] = []
        nonces: set[tuple[str, bytes]] = set()
        #: First request of each (peer, message id) in this group, not yet inserted.
        firsts: dict[tuple[str, str], bytes] = {}
        for entry in entries:
            if entry.nonce:
                key = (entry.peer, entry.nonce)
                if key in nonces or key in logged_nonces:
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
                exchange = (entry.peer, entry.message_id)
                first = logged_firsts.get(exchange)
                if first is None:
                    first = firsts.get(exchange)
                if first is None:
                    firsts[exchange] = entry.envelope
                answers = tuple(logged_answers.get(exchange, ()))
                outcomes.append((True, (seq, LoggedExchange(first, answers))))
            else:
                outcomes.append((True, seq))
            head, seq = digest, seq + 1
        if rows:
            insert_rows(conn, f"message_log ({_COLUMNS})", rows)
        self._uncommitted = (head, seq)
        return outcomes

    def _group_committed(self) -> None:
        """In the writer thread, once the group is committed: the chain's new head
        (read by the event loop only after the group is answered)."""
        self._head, self._next_seq = self._uncommitted

    async def close(self) -> None:
        """Flush every queued row, sign the final head, then close. Idempotent."""
        await self._file.close()

    async def count(self) -> int:
        row = await self._file.fetchone("SELECT COUNT(*) FROM message_log")
        return int(row[0]) if row else 0

    async def rows(
        self, *, message_id: str | None = None, since: int = 0
    ) -> AsyncIterator[LoggedRow]:
        query = (
            "SELECT seq, logged_at, direction, kind, message_id, correlation_id, peer, service,"
            " envelope, prev_hash, row_hash FROM message_log"
        )
        args: tuple[str | int, ...] = ()
        if message_id is not None:
            query += " WHERE message_id = ?"
            args = (message_id,)
        elif since > 1:
            query += " WHERE seq >= ?"
            args = (since,)
        # Streamed: a whole log never sits in memory.
        async for r in self._file.stream(query + " ORDER BY seq", args):
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

    async def rows_by_correlation(self, correlation_id: str, limit: int) -> list[LogRow]:
        """Up to ``limit`` rows with this correlation id, oldest first."""
        rows = await self._file.fetchall(
            "SELECT seq, logged_at, direction, kind, message_id, peer, service, envelope"
            " FROM message_log WHERE correlation_id = ? ORDER BY seq LIMIT ?",
            (correlation_id, limit),
        )
        return [
            LogRow(
                int(r[0]),
                _text(r[1]),
                _text(r[2]),
                _text(r[3]),
                _text(r[4]),
                _text(r[5]),
                _text(r[6]),
                _blob(r[7]),
            )
            for r in rows
        ]

    async def heads(self) -> list[SignedHead]:
        rows = await self._file.fetchall(
            "SELECT province, head_seq, head_hash, signed_at, key_id, signature FROM chain_heads"
            " ORDER BY id"
        )
        return [
            SignedHead(_text(r[0]), int(r[1]), _blob(r[2]), _text(r[3]), _text(r[4]), _blob(r[5]))
            for r in rows
        ]

    async def verify(self, keys: HeadKeys | None = None) -> ChainReport:
        """The whole chain, then every signed head against it (and its signature, given keys).

        A break followed by a segment row (the node continued past it) is reported
        with that acknowledgement; the segment after it is verified like any chain.
        """
        return await self._check(keys, since=1)

    async def check_at_start(self, keys: HeadKeys | None) -> ChainReport:
        """The check a node makes before serving (bounded, see START_CHECK_ROWS):
        the rows from the last signed head at least START_CHECK_ROWS before the
        tail (or row 1) to the tail; every head's hash against the row it names
        (an indexed lookup, no row is re-read); the signatures of the heads in
        that stretch and of the last head."""
        row = await self._file.fetchone("SELECT MAX(seq) FROM message_log")
        tail = int(row[0]) if row and row[0] is not None else 0
        row = await self._file.fetchone(
            "SELECT MAX(head_seq) FROM chain_heads WHERE head_seq <= ?",
            (tail - START_CHECK_ROWS,),
        )
        anchor = int(row[0]) if row and row[0] is not None else 1
        report = await self._check(keys, since=max(1, anchor))
        self._break_found = report.unacknowledged is not None
        return report

    async def _segments(self, keys: HeadKeys | None) -> list[tuple[int, int]]:
        """(seq, heads_before) of every segment row."""
        rows = await self._file.fetchall(
            # A literal, so that the partial index message_log_segments serves it.
            "SELECT seq, envelope FROM message_log WHERE kind = 'segment' ORDER BY seq"
        )
        return [(int(r[0]), _heads_before(_blob(r[1]), keys)) for r in rows]

    async def _head_rows(self) -> list[tuple[int, SignedHead, bytes | None]]:
        """Every signed head (by id) with the hash of the row it names (None: no such row)."""
        rows = await self._file.fetchall(
            "SELECT h.id, h.province, h.head_seq, h.head_hash, h.signed_at, h.key_id,"
            " h.signature, m.row_hash FROM chain_heads h"
            " LEFT JOIN message_log m ON m.seq = h.head_seq ORDER BY h.id"
        )
        return [
            (
                int(r[0]),
                SignedHead(
                    _text(r[1]), int(r[2]), _blob(r[3]), _text(r[4]), _text(r[5]), _blob(r[6])
                ),
                None if r[7] is None else _blob(r[7]),
            )
            for r in rows
        ]

    async def _check(self, keys: HeadKeys | None, *, since: int) -> ChainReport:
        segments = await self._segments(keys)
        walk = _ChainWalk(segments, from_genesis=since <= 1)
        async for row in self.rows(since=since):
            walk.add(row)
        breaks = walk.breaks
        last_seq = walk.last_seq
        # Heads signed before the last continuation vouch for the old segment.
        old_heads = max((before for _, before in segments), default=0)
        heads = await self._head_rows()
        checked_heads = 0
        for head_id, head, actual in heads:
            problem = ""
            if actual is None:
                if head.head_seq > last_seq or last_seq == 0:
                    problem = (
                        f"truncated: a head signed at {head.signed_at} vouches for "
                        f"row {head.head_seq}, the log ends at row {last_seq}"
                    )
                    seq = last_seq + 1
                else:
                    problem = (
                        f"row {head.head_seq}: missing, but a head signed at "
                        f"{head.signed_at} vouches for it"
                    )
                    seq = head.head_seq
            elif actual != head.head_hash:
                problem = f"row {head.head_seq}: does not match the head signed at {head.signed_at}"
                seq = head.head_seq
            elif keys is not None and (
                since <= 1 or head.head_seq >= since or head_id == heads[-1][0]
            ):
                key = keys(head.province, head.key_id, datetime.fromisoformat(head.signed_at))
                if key is None or not crypto.verify(key, head.signature, head.statement):
                    problem = (
                        f"head signed at {head.signed_at}: signature does not "
                        f"verify with key {head.key_id!r} of {head.province}"
                    )
                    seq = head.head_seq
                else:
                    checked_heads += 1
            if not problem:
                continue
            if head_id <= old_heads:
                ack = next(s for s, before in segments if head_id <= before)
                breaks.append(Break(seq, problem, ack))
            else:
                breaks.append(Break(seq, problem))
        breaks.sort(key=lambda b: b.seq)
        what = "rows chain intact" if since <= 1 else f"rows from row {since} chain intact"
        if not breaks:
            detail = f"{walk.checked} {what}"
            detail += f"; {len(heads)} signed heads match" if heads else "; no signed head yet"
            if heads and keys is None:
                detail += " (signatures not checked: no keys given)"
            elif heads:
                detail += f" ({checked_heads} signatures verified)"
            return ChainReport(True, walk.checked, 0, detail, walk.head)
        first = breaks[0]
        parts = []
        for b in breaks:
            if b.acknowledged_by:
                parts.append(
                    f"{b.detail} -- acknowledged: the node continued past it in a new "
                    f"segment at row {b.acknowledged_by}"
                )
            else:
                parts.append(b.detail)
        detail = "; ".join(parts)
        if all(b.acknowledged_by for b in breaks):
            last_segment = max(b.acknowledged_by for b in breaks)
            detail += f"; the segment from row {last_segment} to row {last_seq} is intact" + (
                "" if keys is None else " and its signed heads verify"
            )
        return ChainReport(False, walk.checked, first.seq, detail, walk.head, tuple(breaks))

    async def continue_past_break(self, report: ChainReport) -> int:
        """Record, as a new signed segment, that the node continues past the break
        ``report`` found: a segment row naming the broken row and the cause, then
        a signed chain head over it. Returns the segment row's seq."""
        broken = report.unacknowledged
        if broken is None:
            raise ValueError("no unacknowledged break to continue past")
        row = await self._file.fetchone("SELECT COALESCE(MAX(id), 0) FROM chain_heads")
        heads_before = int(row[0]) if row else 0
        statement = segment_statement(
            broken,
            province=self.province,
            previous_tail=self._next_seq - 1,
            heads_before=heads_before,
            at=self._clock.now().isoformat(),
        )
        signed: dict[str, str] = {"statement": base64.b64encode(statement).decode("ascii")}
        if self._head_signer is not None:
            key_id, signature = self._head_signer(statement)
            signed.update(key_id=key_id, signature=base64.b64encode(signature).decode("ascii"))
        self._break_found = False  # the segment row and the head after it record it
        seq = await self.append(
            LogEntry(
                direction="local",
                kind=SEGMENT_KIND,
                message_id=str(uuid.uuid4()),
                correlation_id="",
                peer="",
                service=SEGMENT_SERVICE,
                envelope=json.dumps(signed, sort_keys=True).encode(),
            )
        )
        await self._sign_head()
        return seq


class _ChainWalk:
    """Walks rows in order. At a break it records the row and cause, then skips
    to the next segment row (if any), where the chain starts again from that
    row's own prev_hash."""

    def __init__(self, segments: list[tuple[int, int]], *, from_genesis: bool = True) -> None:
        self._segments = {seq for seq, _ in segments}
        self.breaks: list[Break] = []
        self.head = GENESIS
        #: 0: a stretch from a signed head: start from the first row's own
        #: prev_hash (the head's hash is checked against that row apart).
        self.expected = 1 if from_genesis else 0
        self.checked = 0
        self.last_seq = 0
        self._broken = False

    def add(self, row: LoggedRow) -> None:
        self.last_seq = max(self.last_seq, row.seq)
        if self._broken:
            if row.seq not in self._segments or row.entry.kind != SEGMENT_KIND:
                return  # skipped, not checked: the old segment past its break
            self.breaks[-1] = replace(self.breaks[-1], acknowledged_by=row.seq)
            self._broken = False
            self.head, self.expected = row.prev_hash, row.seq
        elif self.expected == 0:
            self.expected = row.seq
            self.head = GENESIS if row.seq == 1 else row.prev_hash
        self.checked += 1
        problem = ""
        if row.seq != self.expected:
            problem = (
                f"row {row.seq}: expected sequence {self.expected} (a row was deleted or reordered)"
            )
        elif row.prev_hash != self.head:
            problem = f"row {row.seq}: prev_hash does not match the previous row's hash"
        elif row_hash(self.head, row.seq, row.logged_at, row.entry) != row.row_hash:
            problem = f"row {row.seq}: content does not match its hash (edited)"
        if problem:
            self.breaks.append(Break(row.seq, problem))
            self._broken = True
            return
        self.head, self.expected = row.row_hash, row.seq + 1


async def verify_chain(rows: AsyncIterator[LoggedRow]) -> ChainReport:
    """Walk rows in order; report the first one that does not chain."""
    walk = _ChainWalk([])
    async for row in rows:
        walk.add(row)
        if walk.breaks:
            b = walk.breaks[0]
            return ChainReport(False, walk.checked, b.seq, b.detail, walk.head, (b,))
    return ChainReport(True, walk.checked, 0, f"{walk.checked} rows chain intact", walk.head)


async def verify_file(path: Path | str, keys: HeadKeys | None = None) -> ChainReport:
    """Verify a log file without a running node (``yrd-gateway audit verify``),
    reading only: a read-only copy will do, and the file is left as it was."""
    async with reading(path) as log:
        return await log.verify(keys)


@contextlib.asynccontextmanager
async def reading(path: Path | str) -> AsyncIterator[MessageLog]:
    """A message log file opened to read and verify only (see
    :meth:`MessageLog.open_for_reading`), closed on leaving."""
    log = await MessageLog(path).open_for_reading()
    try:
        yield log
    finally:
        await log.close()


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


if TYPE_CHECKING:

    def _implements(log: MessageLog) -> MessageRecorder:  # checked by mypy only
        return log

    def _operated(log: MessageLog) -> OperatorLog:  # checked by mypy only
        return log
