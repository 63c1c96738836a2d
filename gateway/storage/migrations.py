"""Numbered schema migrations of the node's SQLite files, applied when a store opens.

Each file records the version of its schema in ``PRAGMA user_version`` (0: a
new file, or one written before versions were kept). Opening a store applies,
in order and each in its own transaction with the version it reaches, every
migration above the file's version; a file at the latest version is left as it
is; a file at a version this code does not know (written by a newer gateway) is
refused with :class:`~gateway.storage.records.StoreVersionError` rather than
misread. Several processes opening one file at once is safe: the version is
read inside the transaction that migrates (``BEGIN IMMEDIATE``).

A schema change is a new :class:`Migration` at the end of its list, never an
edit of one already released. Version 1 of each file is the schema of the
release that introduced versions; files written before it are brought to it
(tables created if missing, columns added since the first release).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.storage.groupcommit import rollback
from gateway.storage.records import StoreOpenError, StoreVersionError
from gateway.storage.sql import Connection


@dataclass(frozen=True)
class Migration:
    version: int
    #: What it changes, in a line (for the changelog and the reader).
    summary: str
    #: Run inside the migration's transaction (no COMMIT, no executescript).
    apply: Callable[[Connection], None]


def statements(*sql: str) -> Callable[[Connection], None]:
    """A migration step that runs ``sql`` in order (either engine)."""

    def apply(conn: Connection) -> None:
        for statement in sql:
            conn.execute(statement)

    return apply


def _add_missing_columns(
    *columns: tuple[str, str, str],
) -> Callable[[Connection], None]:
    """Add each (table, column, definition) the table lacks (files written before
    the column existed)."""

    def apply(conn: Connection) -> None:
        for table, name, definition in columns:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}
            if name not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")

    return apply


def in_order(*steps: Callable[[Connection], None]) -> Callable[[Connection], None]:
    """A migration step that runs ``steps`` in order."""

    def apply(conn: Connection) -> None:
        for step in steps:
            step(conn)

    return apply


# ---- state.db ----------------------------------------------------------------------

_STATE_V1_TABLES = statements(
    """CREATE TABLE IF NOT EXISTS check_ins (
    check_in_id      TEXT PRIMARY KEY,
    relying_party_id TEXT NOT NULL,
    issuer_province  TEXT NOT NULL,
    guest            BLOB NOT NULL,   -- serialized yrd.common.v1.Person (disclosed attributes)
    client_reference TEXT NOT NULL,
    recorded_at      TEXT NOT NULL,   -- ISO 8601 UTC
    correlation_id   TEXT NOT NULL
)""",
    # e-ID tokens of this province this node answered "first use" for, kept for the
    # token's validity window: single use holds even if the e-ID authority forgets.
    """CREATE TABLE IF NOT EXISTS answered_tokens (
    token_id    TEXT PRIMARY KEY,
    keep_until  REAL NOT NULL,        -- unix seconds; pruned after
    answered_at REAL NOT NULL         -- unix seconds
)""",
    "CREATE INDEX IF NOT EXISTS answered_tokens_expiry ON answered_tokens (keep_until)",
    # Tracked exchanges (withdrawals, service cases), submitting node's side.
    """CREATE TABLE IF NOT EXISTS outgoing_cases (
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
)""",
    # Tracked exchanges, handling node's side: applications received from peers.
    """CREATE TABLE IF NOT EXISTS incoming_cases (
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
)""",
    "CREATE INDEX IF NOT EXISTS incoming_cases_due ON incoming_cases (next_poll_at)",
    # Asynchronous deliveries to peers, kept until the peer acknowledges them.
    """CREATE TABLE IF NOT EXISTS outbox (
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
)""",
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at)",
    # One row, rewritten by a node that could not write, to learn when it can again.
    "CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL)",
)

STATE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "check-ins, answered tokens, outgoing and incoming cases, outbox (parking,"
        " reconciliation); older files get the columns added since the first release",
        in_order(
            _STATE_V1_TABLES,
            _add_missing_columns(
                ("outbox", "state", "TEXT NOT NULL DEFAULT 'pending'"),
                ("outbox", "parked_at", "REAL"),
                ("outbox", "retried_at", "REAL"),
                ("incoming_cases", "reconciliation", "INTEGER NOT NULL DEFAULT 0"),
            ),
        ),
    ),
    Migration(
        2,
        "leases: the replica working an outbox item or an incoming case, and until when",
        statements(
            "ALTER TABLE outbox ADD COLUMN lease_owner TEXT",  # <replica>/<pid>/<random>
            "ALTER TABLE outbox ADD COLUMN lease_until REAL",  # unix seconds
            "ALTER TABLE incoming_cases ADD COLUMN lease_owner TEXT",
            "ALTER TABLE incoming_cases ADD COLUMN lease_until REAL",
        ),
    ),
    Migration(
        3,
        "an operator's search by correlation id (`admin log search`) finds cases by index",
        statements(
            "CREATE INDEX IF NOT EXISTS outgoing_cases_correlation"
            " ON outgoing_cases (correlation_id)",
            "CREATE INDEX IF NOT EXISTS incoming_cases_correlation"
            " ON incoming_cases (correlation_id)",
        ),
    ),
    Migration(
        4,
        "an answered token names its claimant (the exchange that claimed it): a retry"
        " of that exchange after a lost answer is not a replay",
        statements("ALTER TABLE answered_tokens ADD COLUMN claimant TEXT NOT NULL DEFAULT ''"),
    ),
    Migration(
        5,
        "a check-in names the caller's retry of it (relying party, idempotency key, token):"
        " a retried verification is recorded once",
        statements(
            "ALTER TABLE check_ins ADD COLUMN retry_key TEXT NOT NULL DEFAULT ''",
            "CREATE UNIQUE INDEX IF NOT EXISTS check_ins_retry"
            " ON check_ins (relying_party_id, retry_key) WHERE retry_key <> ''",
        ),
    ),
)

# ---- messages.db -------------------------------------------------------------------

MESSAGE_LOG_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "hash-chained message log with nonces, signed chain heads; older files get"
        " the nonce column",
        in_order(
            statements(
                """CREATE TABLE IF NOT EXISTS message_log (
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
)""",
                "CREATE INDEX IF NOT EXISTS message_log_message_id ON message_log (message_id)",
                "CREATE INDEX IF NOT EXISTS message_log_correlation"
                " ON message_log (correlation_id)",
                # The chain head, signed by the node from time to time: a log cut
                # short at its end (truncated) no longer reaches a signed head.
                """CREATE TABLE IF NOT EXISTS chain_heads (
    id         INTEGER PRIMARY KEY,
    province   TEXT NOT NULL,
    head_seq   INTEGER NOT NULL,
    head_hash  BLOB NOT NULL,
    signed_at  TEXT NOT NULL,       -- ISO 8601 UTC
    key_id     TEXT NOT NULL,
    signature  BLOB NOT NULL        -- over head_statement(...)
)""",
                # One row, rewritten by a node that could not write, to learn when
                # it can again (outside the chain: it records nothing).
                "CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL)",
            ),
            _add_missing_columns(("message_log", "nonce", "BLOB")),
            statements(
                "CREATE UNIQUE INDEX IF NOT EXISTS message_log_nonce ON message_log (peer, nonce)"
                " WHERE nonce IS NOT NULL",
                # Segment rows are few; start-up and audit find them without a scan.
                "CREATE INDEX IF NOT EXISTS message_log_segments ON message_log (seq)"
                " WHERE kind = 'segment'",  # SEGMENT_KIND (a partial index takes no parameters)
            ),
        ),
    ),
)


def latest(migrations: tuple[Migration, ...]) -> int:
    return migrations[-1].version if migrations else 0


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...], *, what: str) -> int:
    """Bring the file of ``conn`` (autocommit mode) to the latest version of
    ``migrations``; return that version. Raises StoreVersionError for a newer file."""
    newest = latest(migrations)
    found = _check_version(conn, newest, what)
    if found == newest:
        return found  # the usual case: nothing to do, no write
    for migration in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again inside the transaction: another process may have migrated.
            if _check_version(conn, newest, what) < migration.version:
                migration.apply(conn)
                # A pragma takes no parameters; the version is an int of ours.
                conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
    return newest


def _check_version(conn: sqlite3.Connection, newest: int, what: str) -> int:
    found = schema_version(conn)
    refuse_newer(found, newest, what)
    return found


def refuse_newer(found: int, newest: int, what: str) -> None:
    """Raise StoreVersionError when a file's schema ``found`` is newer than the
    ``newest`` this code knows (the writer's open and a read-only open alike)."""
    if found > newest:
        # The caller names the store (the node: "cannot open the state store <path>: ...").
        raise StoreVersionError(
            f"schema version {found}, newer than this gateway knows (up to {newest}):"
            f" the {what} was written by a newer release; run that release, or restore"
            " a copy of the store made before the upgrade"
        )


def open_writer(path: Path, migrations: tuple[Migration, ...], *, what: str) -> sqlite3.Connection:
    """The writer connection of a store's file (WAL, ``synchronous=FULL``, used
    from one thread at a time), its schema migrated. Raises StoreOpenError (the
    message is the cause; the caller names the store)."""
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreOpenError(str(exc)) from exc
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        migrate(conn, migrations, what=what)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreOpenError(str(exc)) from exc
    except BaseException:
        conn.close()
        raise
    return conn
