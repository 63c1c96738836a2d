"""Moving a node's stores from SQLite to PostgreSQL (``yrd-gateway store
migrate``), and what a store holds (``yrd-gateway store info``).

:func:`migrate_to_database` copies every row of a stopped node's two SQLite
files (``messages.db``, ``state.db``) into an empty PostgreSQL database:

1. the source files are brought to this release's schema, as a node start
   would (nothing else is written to them);
2. the target gets both stores' tables at the same schema version
   (:mod:`gateway.storage.pgschema`); a target that already holds rows of them
   is refused (:class:`TransferError`), nothing is written to it;
3. every table is copied in ONE transaction (all or nothing: a failed copy
   leaves the target empty, and the command may simply be run again), streamed
   in batches of ``batch`` rows (``COPY``; memory stays bounded whatever the
   log's size); column values are kept as they are, so the message log's
   ``seq``, hashes and signed chain heads, and the outbox's ids, are the same;
   the identity sequences then continue after the highest copied id;
4. the target is checked: rows per table equal to the source's, and the
   message log's hash chain and signed heads verify, ending at the source's
   last row hash.

The reverse (PostgreSQL back to SQLite) is not provided.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql

from gateway.storage.engines import MESSAGE_LOG_FILE, STATE_FILE
from gateway.storage.messagelog import GENESIS, ChainReport, HeadKeys, verify_file
from gateway.storage.migrations import (
    MESSAGE_LOG_MIGRATIONS,
    STATE_MIGRATIONS,
    Migration,
    latest,
    open_writer,
)
from gateway.storage.pgerrors import first_line
from gateway.storage.pgfile import PgConnection, migrate_pg
from gateway.storage.pgschema import MESSAGE_LOG_PG_MIGRATIONS, STATE_PG_MIGRATIONS
from gateway.storage.sql import display_url, is_database_url

#: Rows per batch read from SQLite and sent to PostgreSQL.
BATCH = 1000
#: Tables of a store that are not data (a node's write probe) and are not copied.
_NOT_DATA = frozenset({"write_probe", "schema_versions"})


@dataclass(frozen=True)
class _Store:
    name: str  # its row in schema_versions
    file: str
    what: str
    sqlite: tuple[Migration, ...]
    pg: tuple[Migration, ...]


STORES = (
    _Store(
        "message_log",
        MESSAGE_LOG_FILE,
        "message log",
        MESSAGE_LOG_MIGRATIONS,
        MESSAGE_LOG_PG_MIGRATIONS,
    ),
    _Store("state", STATE_FILE, "state store", STATE_MIGRATIONS, STATE_PG_MIGRATIONS),
)


class TransferError(Exception):
    """The stores cannot be moved (the message says why; nothing was copied)."""


@dataclass(frozen=True)
class TableCount:
    store: str
    table: str
    source: int
    target: int


@dataclass(frozen=True)
class TransferReport:
    tables: tuple[TableCount, ...]
    #: The schema version of each store, the same on both sides.
    versions: dict[str, int]
    #: The message log's chain verified on the target.
    chain: ChainReport
    #: The hash of the source log's last row (the target chain ends there).
    source_head: bytes

    @property
    def intact(self) -> bool:
        return (
            self.chain.intact
            and self.chain.head_hash == self.source_head
            and all(t.source == t.target for t in self.tables)
        )


# ---- SQLite side ------------------------------------------------------------------------


def _quoted(name: str) -> str:
    """An SQLite identifier, quoted (table and column names read from the file)."""
    return '"' + name.replace('"', '""') + '"'


def _sqlite_tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    names = [
        str(r[0])
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]
    return {
        name: [str(c[1]) for c in conn.execute(f"PRAGMA table_info({_quoted(name)})")]
        for name in names
        if name not in _NOT_DATA
    }


def _source(folder: Path, store: _Store) -> sqlite3.Connection:
    """The store's file in ``folder``, at this release's schema, open to read."""
    path = folder / store.file
    if not path.is_file():
        raise TransferError(f"{path}: no {store.what} here (expected {store.file})")
    writer = open_writer(path, store.sqlite, what=store.what)  # migrates, as a node start would
    writer.close()
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)


def _batches(conn: sqlite3.Connection, sql: str, size: int) -> Iterator[list[Any]]:
    cursor = conn.execute(sql)
    while rows := cursor.fetchmany(size):
        yield rows


# ---- PostgreSQL side --------------------------------------------------------------------


def _pg_tables(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    for table, column in conn.execute(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c"
        " JOIN information_schema.tables t"
        "  ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
        " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
        " ORDER BY c.table_name, c.ordinal_position"
    ):
        if table not in _NOT_DATA:
            tables.setdefault(str(table), []).append(str(column))
    return tables


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(
        psycopg.sql.SQL("SELECT COUNT(*) FROM {}").format(psycopg.sql.Identifier(table))
    ).fetchone()
    return int(row[0]) if row else 0


def _not_empty(conn: psycopg.Connection[Any], tables: dict[str, list[str]]) -> list[str]:
    return [f"{t} ({n} rows)" for t in sorted(tables) if (n := _count(conn, t))]


def _reset_identities(conn: psycopg.Connection[Any], tables: list[str]) -> None:
    """Each identity column continues after the highest id copied into it."""
    for table, column in conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
        " AND table_name = ANY(%s)",
        (tables,),
    ).fetchall():
        conn.execute(
            psycopg.sql.SQL(
                "SELECT setval(pg_get_serial_sequence({qualified}, {column}),"
                " COALESCE((SELECT MAX({ident}) FROM {table}), 0) + 1, false)"
            ).format(
                qualified=psycopg.sql.Literal(table),
                column=psycopg.sql.Literal(column),
                ident=psycopg.sql.Identifier(column),
                table=psycopg.sql.Identifier(table),
            )
        )


def _copy_table(
    source: sqlite3.Connection,
    target: psycopg.Connection[Any],
    table: str,
    columns: list[str],
    batch: int,
) -> int:
    names = ", ".join(_quoted(c) for c in columns)
    order = " ORDER BY seq" if table == "message_log" else " ORDER BY rowid"
    # Identifiers quoted, read from the file itself; no value is in the text.
    query = f"SELECT {names} FROM {_quoted(table)}{order}"  # noqa: S608 - quoted identifiers
    copied = 0
    statement = psycopg.sql.SQL("COPY {} ({}) FROM STDIN").format(
        psycopg.sql.Identifier(table),
        psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(c) for c in columns),
    )
    with target.cursor() as cursor, cursor.copy(statement) as copy:
        for rows in _batches(source, query, batch):
            for row in rows:
                copy.write_row(row)
            copied += len(rows)
    return copied


def _copy(
    folder: Path,
    url: str,
    *,
    batch: int,
    progress: Callable[[str], None],
) -> tuple[list[tuple[str, str, int]], dict[str, int]]:
    """Steps 1 to 3: (store, table, rows copied) of every table, and the versions."""
    sources = {}
    try:
        for store in STORES:
            sources[store.name] = _source(folder, store)
        writer = PgConnection(url, application="yrd-gateway store migrate")
        try:
            versions: dict[str, int] = {}
            for store in STORES:
                version = migrate_pg(writer, store.pg, store=store.name, what=store.what)
                if version != latest(store.sqlite):
                    raise TransferError(
                        f"the {store.what}'s schema is version {latest(store.sqlite)} in SQLite"
                        f" and {version} in PostgreSQL: this release cannot move it"
                    )
                versions[store.name] = version
            conn = writer.ensure()
            target_tables = _pg_tables(conn)
            copied: list[tuple[str, str, int]] = []
            with conn.transaction():
                # Replicas started too early wait for the copy (their log writer takes this lock).
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('yrd.message_log'))")
                found = _not_empty(conn, target_tables)
                if found:
                    raise TransferError(
                        f"{display_url(url)} already holds rows of a node's stores: "
                        + ", ".join(found)
                        + "; migrate into an empty database (nothing was copied)"
                    )
                for store in STORES:
                    tables = _sqlite_tables(sources[store.name])
                    for table, columns in tables.items():
                        missing = sorted(set(columns) - set(target_tables.get(table, ())))
                        if missing:
                            raise TransferError(
                                f"{store.file}: {table} has columns the PostgreSQL schema lacks:"
                                f" {', '.join(missing)} (nothing was copied)"
                            )
                        rows = _copy_table(sources[store.name], conn, table, columns, batch)
                        progress(f"{store.file} {table}: {rows} rows")
                        copied.append((store.name, table, rows))
                _reset_identities(conn, [t for _, t, _ in copied])
            return copied, versions
        finally:
            writer.close()
    finally:
        for source in sources.values():
            source.close()


def _source_head(folder: Path) -> bytes:
    with sqlite3.connect(f"file:{folder / MESSAGE_LOG_FILE}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT row_hash FROM message_log ORDER BY seq DESC LIMIT 1").fetchone()
    return bytes(row[0]) if row else GENESIS


async def migrate_to_database(
    folder: Path,
    url: str,
    *,
    keys: HeadKeys | None = None,
    batch: int = BATCH,
    progress: Callable[[str], None] = lambda line: None,
) -> TransferReport:
    """Copy the SQLite stores in ``folder`` into the empty database ``url``, then
    check the target (see the module's text). The node must be stopped (the
    caller holds its store lock). Raises TransferError (nothing copied; also a
    database that cannot be reached) or StoreOpenError/StoreVersionError for an
    unusable source."""
    import asyncio

    if not is_database_url(url):
        raise TransferError(f"--to: expected a postgresql:// URL, got {url!r}")
    try:
        copied, versions = await asyncio.to_thread(
            _copy, folder, url, batch=batch, progress=progress
        )
        counts = await asyncio.to_thread(_target_counts, url, [t for _, t, _ in copied])
    except psycopg.Error as exc:
        raise TransferError(f"{display_url(url)}: {first_line(exc)}") from exc
    chain = await verify_file(url, keys)
    return TransferReport(
        tuple(TableCount(s, t, n, counts[t]) for s, t, n in copied),
        versions,
        chain,
        await asyncio.to_thread(_source_head, folder),
    )


def _target_counts(url: str, tables: list[str]) -> dict[str, int]:
    writer = PgConnection(url, application="yrd-gateway store migrate")
    try:
        conn = writer.ensure()
        return {t: _count(conn, t) for t in tables}
    finally:
        writer.close()


# ---- store info -------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreInfo:
    engine: str
    #: The folder, or the URL without its password.
    location: str
    #: Schema version per store (0: absent).
    versions: dict[str, int]
    #: (table, rows), by table name.
    tables: tuple[tuple[str, int], ...]


def describe(location: Path | str) -> StoreInfo:
    """What a node's store holds, read only (a folder, or a PostgreSQL URL).
    Raises TransferError for a database that cannot be read."""
    if is_database_url(location):
        return _describe_database(str(location))
    folder = Path(location)
    versions: dict[str, int] = {}
    tables: list[tuple[str, int]] = []
    for store in STORES:
        path = folder / store.file
        if not path.is_file():
            versions[store.name] = 0
            continue
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            versions[store.name] = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for table in _sqlite_tables(conn):
                # A quoted identifier read from the file itself.
                count = f"SELECT COUNT(*) FROM {_quoted(table)}"  # noqa: S608 - identifier
                n = conn.execute(count).fetchone()[0]
                tables.append((table, int(n)))
        conn.close()
    return StoreInfo("SQLite", str(folder), versions, tuple(sorted(tables)))


def _describe_database(url: str) -> StoreInfo:
    try:
        return _read_database(url)
    except psycopg.Error as exc:
        raise TransferError(f"{display_url(url)}: {first_line(exc)}") from exc


def _read_database(url: str) -> StoreInfo:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        found = conn.execute("SELECT to_regclass('schema_versions') IS NOT NULL").fetchone()
        versions = {store.name: 0 for store in STORES}
        if found and found[0]:
            for name, version in conn.execute("SELECT store, version FROM schema_versions"):
                versions[str(name)] = int(version)
        tables = tuple((t, _count(conn, t)) for t in sorted(_pg_tables(conn)))
    return StoreInfo("PostgreSQL", display_url(url), versions, tables)
