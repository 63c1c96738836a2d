"""Numbered schema migrations: a store opens from empty, from the schema the node
wrote before versions were kept (commit bb8690c, and the first release before
it), keeps its data, does nothing when opened again, and refuses a newer store.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.storage.messagelog import GENESIS, LogEntry, MessageLog, row_hash
from gateway.storage.migrations import MESSAGE_LOG_MIGRATIONS, STATE_MIGRATIONS, latest, migrate
from gateway.storage.records import StoreOpenError, StoreVersionError
from gateway.storage.state import PARKED, StateStore

# The DDL exactly as the node ran it at bb8690c (before numbered migrations).
STATE_SCHEMA_BB8690C = """
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

#: What bb8690c added to a state store written by an earlier release.
STATE_ADDED_BB8690C = (
    ("outbox", "state", "TEXT NOT NULL DEFAULT 'pending'"),
    ("outbox", "parked_at", "REAL"),
    ("outbox", "retried_at", "REAL"),
    ("incoming_cases", "reconciliation", "INTEGER NOT NULL DEFAULT 0"),
)

LOG_SCHEMA_BB8690C = """
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
-- One row, rewritten by a node that could not write, to learn when it can again
-- (outside the chain: it records nothing).
CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""

#: What bb8690c ran on a message log after LOG_SCHEMA_BB8690C.
LOG_EXTRA_BB8690C = (
    "ALTER TABLE message_log ADD COLUMN nonce BLOB",
    "CREATE UNIQUE INDEX IF NOT EXISTS message_log_nonce ON message_log (peer, nonce)"
    " WHERE nonce IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS message_log_segments ON message_log (seq) WHERE kind = 'segment'",
)

STAMP = "2026-03-01T08:00:00+00:00"


def schema(path: Path) -> list[tuple[str, str, str]]:
    """Every table and index of the file with its DDL (as SQLite keeps it)."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            " ORDER BY type, name"
        ).fetchall()
    db.close()
    return [(str(t), str(n), str(s)) for t, n, s in rows]


def at_version(path: Path, last: int) -> None:
    """A new state store file migrated to version ``last`` only."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(db, STATE_MIGRATIONS[:last], what="state store")
    finally:
        db.close()


def version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def bb8690c_state(path: Path, *, first_release: bool = False) -> None:
    """A state store as the code of bb8690c wrote it, with a row in every table
    (``first_release``: as a release before the columns bb8690c added)."""
    db = sqlite3.connect(path, isolation_level=None)
    ddl = STATE_SCHEMA_BB8690C
    if first_release:
        added = tuple(name + " " for _, name, _ in STATE_ADDED_BB8690C)
        ddl = "\n".join(line for line in ddl.splitlines() if not line.strip().startswith(added))
        ddl = ddl.replace(",\n)", "\n)")  # last_error became the outbox's last column
    db.executescript(ddl)
    db.execute(
        "INSERT INTO check_ins VALUES (?,?,?,?,?,?,?)",
        ("CI-310000-1", "hotel-1", "330000", b"\x01guest", "ref-1", STAMP, "corr-1"),
    )
    db.execute(
        "INSERT INTO answered_tokens VALUES (?,?,?)", ("tok-1", time.time() + 3600, time.time())
    )
    db.execute(
        "INSERT INTO outgoing_cases (case_id, domain, idempotency_key, body_digest, client_id,"
        " peer, application, status, status_reason, amount_fen, remote_reference,"
        " correlation_id, submitted_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            "WD-310000-abc",
            "withdrawal",
            "key-00000001",
            b"d" * 32,
            "office-1",
            "330000",
            b"app",
            5,
            "paid",
            12345,
            "FW-330000-1",
            "corr-2",
            STAMP,
            STAMP,
        ),
    )
    columns = "reference, domain, sender, idempotency_key, message_id, correlation_id,"
    columns += " body_digest, application, status, backend_reference, next_poll_at,"
    columns += " received_at, updated_at"
    values: tuple[object, ...] = (
        "FW-310000-1",
        "withdrawal",
        "320000",
        "key-00000002",
        "msg-1",
        "corr-3",
        b"e" * 32,
        b"app2",
        3,
        "B-9",
        0.0,
        STAMP,
        STAMP,
    )
    if not first_release:
        columns += ", reconciliation"
        values += (1,)
    db.execute(
        f"INSERT INTO incoming_cases ({columns}) VALUES ({','.join('?' * len(values))})",  # noqa: S608 - the test's own column names
        values,
    )
    outbox = "peer, service, message_id, correlation_id, idempotency_key, payload, subject,"
    outbox += " attempts, next_attempt_at, created_at, last_error"
    items: tuple[object, ...] = ("330000", "fund.DeliverWithdrawal", "msg-2", "corr-2")
    items += ("key-00000001", b"payload", "WD-310000-abc", 7, 100.0, 50.0, "UNAVAILABLE: x")
    if not first_release:
        outbox += ", state, parked_at"
        items += (PARKED, 60.0)
    db.execute(
        f"INSERT INTO outbox ({outbox}) VALUES ({','.join('?' * len(items))})",  # noqa: S608 - the test's own column names
        items,
    )
    db.close()


class TestStateStoreMigrations:
    """state.db: PRAGMA user_version is the number of the last migration applied."""

    async def test_from_empty_to_latest(self, tmp_path: Path) -> None:
        async with StateStore(tmp_path / "state.db"):
            pass
        assert version(tmp_path / "state.db") == latest(STATE_MIGRATIONS)

    async def test_version_1_is_the_schema_of_bb8690c(self, tmp_path: Path) -> None:
        """A store at version 1 has exactly the tables, columns and indexes bb8690c created."""
        at_version(tmp_path / "new.db", 1)
        db = sqlite3.connect(tmp_path / "old.db")
        db.executescript(STATE_SCHEMA_BB8690C)
        db.close()
        assert schema(tmp_path / "new.db") == schema(tmp_path / "old.db")

    async def test_from_the_bb8690c_schema_data_kept(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        bb8690c_state(path)
        assert version(path) == 0
        before = schema(path)
        async with StateStore(path) as store:
            assert version(path) == latest(STATE_MIGRATIONS)
            assert await store.get_check_in("CI-310000-1") == (
                "hotel-1",
                "330000",
                b"\x01guest",
                "ref-1",
                STAMP,
                "corr-1",
            )
            assert not await store.claim_token(
                "tok-1", keep_until=time.time() + 60, now=time.time()
            )
            case = await store.outgoing_case("WD-310000-abc", "withdrawal")
            assert case is not None
            assert (case.status, case.amount_fen, case.remote_reference) == (
                5,
                12345,
                "FW-330000-1",
            )
            assert case.submitted_at == datetime(2026, 3, 1, 8, tzinfo=UTC)
            (waiting,) = await store.reconciliation_cases()
            assert (waiting.reference, waiting.sender, waiting.backend_reference) == (
                "FW-310000-1",
                "320000",
                "B-9",
            )
            (entry,) = await store.outbox_entries(state=PARKED)
            assert (entry.subject, entry.attempts, entry.parked_at) == ("WD-310000-abc", 7, 60.0)
        # Version 1 is that schema (nothing changed); version 2 adds the lease
        # columns, exactly as a new store has them.
        fresh = tmp_path / "fresh.db"
        at_version(fresh, 1)
        assert schema(fresh) == before
        async with StateStore(fresh):
            pass
        assert schema(path) == schema(fresh)
        for table in ("outbox", "incoming_cases"):
            names = {column[0] for column in _columns(path, table)}
            assert {"lease_owner", "lease_until"} <= names

    async def test_from_a_first_release_store_columns_added(self, tmp_path: Path) -> None:
        """A store written before bb8690c's columns gets them, with their defaults."""
        path = tmp_path / "state.db"
        bb8690c_state(path, first_release=True)
        with sqlite3.connect(path) as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
        db.close()
        assert "parked_at" not in columns
        async with StateStore(path) as store:
            (entry,) = await store.outbox_entries()
            assert (entry.state, entry.parked_at) == ("pending", None)
            assert await store.reconciliation_counts() == {}
            assert (await store.incoming_case("FW-310000-1")) is not None
        assert version(path) == latest(STATE_MIGRATIONS)
        fresh = tmp_path / "fresh.db"
        async with StateStore(fresh):
            pass
        for table in ("outbox", "incoming_cases"):
            assert _columns(path, table) == _columns(fresh, table)

    async def test_opening_twice_is_a_no_op(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        async with StateStore(path) as store:
            await store.record_check_in(
                check_in_id="CI-1",
                relying_party_id="rp",
                issuer_province="330000",
                guest=b"g",
                client_reference="",
                recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
                correlation_id="c",
            )
        before = (schema(path), version(path))
        async with StateStore(path) as store:
            assert await store.get_check_in("CI-1") is not None
        assert (schema(path), version(path)) == before

    async def test_a_newer_store_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        async with StateStore(path):
            pass
        newer = latest(STATE_MIGRATIONS) + 1
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {newer}")
        db.close()
        store = StateStore(path)
        with pytest.raises(StoreVersionError, match=f"schema version {newer}, newer") as caught:
            await store.open()
        await store.close()
        assert isinstance(caught.value, StoreOpenError)  # the node's start refuses it as such
        assert "written by a newer release" in str(caught.value)
        assert version(path) == newer  # left as it was


def _columns(path: Path, table: str) -> list[tuple[str, str, int, object]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(f"PRAGMA table_info({table})").fetchall()
    finally:
        db.close()
    return sorted((str(r[1]), str(r[2]), int(r[3]), r[4]) for r in rows)


def bb8690c_log(path: Path, rows: int) -> None:
    """A message log as bb8690c wrote it, with ``rows`` chained rows."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(LOG_SCHEMA_BB8690C)
    for statement in LOG_EXTRA_BB8690C:
        db.execute(statement)
    head = GENESIS
    for seq in range(1, rows + 1):
        entry = LogEntry("out", "request", f"m{seq}", "c", "320000", "s", b"envelope")
        digest = row_hash(head, seq, STAMP, entry)
        db.execute(
            "INSERT INTO message_log (seq, logged_at, direction, kind, message_id,"
            " correlation_id, peer, service, envelope, prev_hash, row_hash, nonce)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                seq,
                STAMP,
                "out",
                "request",
                f"m{seq}",
                "c",
                "320000",
                "s",
                b"envelope",
                head,
                digest,
                None,
            ),
        )
        head = digest
    db.close()


class TestMessageLogMigrations:
    """messages.db: the same, and the chain goes on across the migration."""

    async def test_from_empty_to_latest_is_the_bb8690c_schema(self, tmp_path: Path) -> None:
        async with MessageLog(tmp_path / "new.db"):
            pass
        assert version(tmp_path / "new.db") == latest(MESSAGE_LOG_MIGRATIONS)
        bb8690c_log(tmp_path / "old.db", 0)
        assert schema(tmp_path / "new.db") == schema(tmp_path / "old.db")

    async def test_from_the_bb8690c_schema_the_chain_goes_on(self, tmp_path: Path) -> None:
        path = tmp_path / "messages.db"
        bb8690c_log(path, 3)
        async with MessageLog(path) as log:
            assert await log.count() == 3
            assert await log.append(LogEntry("in", "request", "m4", "c", "320000", "s", b"e")) == 4
            report = await log.verify()
            assert report.intact, report.detail
        assert version(path) == latest(MESSAGE_LOG_MIGRATIONS)
        before = schema(path)
        async with MessageLog(path) as log:  # again: nothing to do
            assert await log.count() == 4
        assert schema(path) == before

    async def test_a_newer_log_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "messages.db"
        bb8690c_log(path, 1)
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {latest(MESSAGE_LOG_MIGRATIONS) + 5}")
        db.close()
        log = MessageLog(path)
        with pytest.raises(StoreVersionError, match="newer than this gateway knows"):
            await log.open()
        await log.close()
