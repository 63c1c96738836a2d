"""One store's tables in a PostgreSQL database, from open to close: the
counterpart of :class:`gateway.storage.sqlitefile.SqliteFile` for a node whose
``store`` is a ``postgresql://`` URL (several replicas of a province share it).

psycopg 3 is used the way the SQLite file uses sqlite3: a writer connection
used only from a thread of its own, under a
:class:`~gateway.storage.groupcommit.GroupCommit` (one transaction and one
commit per group, a unit of work that fails rolled back alone), and a small pool of reader
connections (autocommit: each read sees what is committed). The stores' SQL
is written once with ``?`` placeholders; :class:`PgConnection` turns them into
psycopg's ``%s``.

Faults are not failures of the exchange (DESIGN §5): a lost connection, a
server shutting down or in recovery, a read-only server (a standby after a
failover), a full disk, a lock or statement timeout all become
:class:`~gateway.core.errors.StoreUnavailable` (retryable; the node answers
UNAVAILABLE and its health follows), and the writer connects again at its
next group. A collision with another replica on a unique key reruns the unit
of work alone (:func:`gateway.storage.groupcommit.each_alone`); a
deadlock or serialization failure reruns its whole group in a new transaction
(the locks of the group's earlier units are what the other replica waits for).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import psycopg.sql
import psycopg_pool

from gateway.core.errors import StoreUnavailable
from gateway.storage.groupcommit import GroupCommit, GroupWriterFile, Outcome, rollback
from gateway.storage.migrations import Migration, latest, refuse_newer
from gateway.storage.pgerrors import cannot_write, first_line
from gateway.storage.records import StoreClosedError, StoreOpenError
from gateway.storage.sql import Connection, Cursor, display_url
from gateway.storage.threads import store_executor

I = TypeVar("I")  # noqa: E741 - the item type of the group writer
T = TypeVar("T")

#: Settings of every connection: a write never waits for ever on a lock or a
#: statement (it fails as StoreUnavailable, and is retried).
_SESSION_OPTIONS = "-c statement_timeout=30000 -c lock_timeout=10000"
#: Seconds to wait for a connection to the server.
CONNECT_TIMEOUT = 10
#: Rows fetched per hop to a reader thread when a query is streamed.
STREAM_BATCH = 1000


@functools.lru_cache(maxsize=1024)
def placeholders(sql: str) -> str:
    """``sql`` with SQLite's ``?`` placeholders as psycopg's ``%s`` (and a literal
    ``%`` doubled). The stores' SQL holds no ``?`` inside a string literal."""
    return sql.replace("%", "%%").replace("?", "%s")


def _arguments(args: Any) -> Any:
    """Booleans as the INTEGER 0/1 both engines store."""
    if not args:
        return args
    return tuple(int(a) if isinstance(a, bool) else a for a in args)


def connect(url: str, *, application: str) -> psycopg.Connection[Any]:
    """An autocommit connection to ``url`` (BEGIN and COMMIT are explicit)."""
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        application_name=application,
        options=_SESSION_OPTIONS,
    )


class PgConnection:
    """The writer connection, as the stores' write functions use it
    (:class:`gateway.storage.sql.Connection`): ``?`` placeholders, sqlite3's
    ``in_transaction``. A connection found closed or broken when a transaction
    begins is replaced by a new one."""

    def __init__(self, url: str, *, application: str) -> None:
        self._url = url
        self._application = application
        self._conn: psycopg.Connection[Any] | None = None

    def ensure(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            conn = self._conn = connect(self._url, application=self._application)
        return conn

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        conn = self.ensure() if not self.in_transaction else self._live()
        return conn.execute(placeholders(sql), _arguments(parameters))

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor:
        cursor = self._live().cursor()
        cursor.executemany(placeholders(sql), [_arguments(p) for p in parameters])
        return cursor

    def _live(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            return self.ensure()
        return self._conn

    @property
    def in_transaction(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed:
            return False
        return conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


def migrate_pg(
    conn: PgConnection, migrations: tuple[Migration, ...], *, store: str, what: str
) -> int:
    """Bring ``store``'s tables to the latest of ``migrations`` (one transaction
    per migration, under an advisory lock: replicas starting together migrate
    once); return that version. A newer schema raises StoreVersionError."""
    newest = latest(migrations)
    # Under the lock as well: two replicas creating the table at once would
    # collide in PostgreSQL's catalog even with IF NOT EXISTS.
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('yrd.schema'))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions"
            " (store TEXT PRIMARY KEY, version BIGINT NOT NULL)"
        )
        found = _version(conn, store)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    refuse_newer(found, newest, what)
    if found == newest:
        return found
    for migration in migrations:
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('yrd.schema'))")
            current = _version(conn, store)
            refuse_newer(current, newest, what)
            if current < migration.version:
                migration.apply(conn)
                conn.execute(
                    "INSERT INTO schema_versions (store, version) VALUES (?, ?)"
                    " ON CONFLICT (store) DO UPDATE SET version = excluded.version",
                    (store, migration.version),
                )
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
    return newest


def _version(conn: Connection, store: str) -> int:
    row = conn.execute("SELECT version FROM schema_versions WHERE store = ?", (store,)).fetchone()
    return int(row[0]) if row else 0


class PgFile(GroupWriterFile[I]):
    """A store's tables in a PostgreSQL database: :meth:`open` it, write through
    :attr:`writer`, read through :meth:`fetchall`/:meth:`fetchone`/:meth:`stream`,
    :meth:`close` it (idempotent). The interface of
    :class:`~gateway.storage.sqlitefile.SqliteFile`."""

    def __init__(
        self,
        url: str,
        migrations: tuple[Migration, ...],
        write: Callable[[Connection, list[I]], list[Outcome]],
        *,
        store: str,
        what: str,
        batch_max: int,
        on_writable: Callable[[bool], None],
        begin: tuple[str, ...] = ("BEGIN",),
        readers: int = 4,
        prepare: Callable[[Connection], None] | None = None,
        committed: Callable[[], None] | None = None,
        after_group: Callable[[], Awaitable[None]] | None = None,
        before_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``store`` names the store in ``schema_versions`` ("state", "message_log");
        ``begin`` opens a group's transaction (the message log adds the lock that
        makes its chain one); the rest as for SqliteFile."""
        self.url = url
        self.location = display_url(url)
        self.store = store
        self.what = what
        self._migrations = migrations
        self._write = write
        self._batch_max = batch_max
        self._on_writable = on_writable
        self._begin = begin
        self._readers = readers
        self._prepare = prepare
        self._committed = committed
        self._after_group = after_group
        self._before_close = before_close
        self.conn: PgConnection | None = None
        self.executor: ThreadPoolExecutor | None = None
        self._read_executor: ThreadPoolExecutor | None = None
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._writer: GroupCommit[I] | None = None
        self.closed = False

    @property
    def path(self) -> str:
        """Where the store is, for messages (the URL without its password)."""
        return self.location

    def _application(self) -> str:
        return f"yrd-gateway {self.what}"

    async def open(self) -> None:
        """Connect, migrate, prepare; then start the group writer. Raises
        StoreOpenError naming the cause; nothing stays open after a failure."""
        loop = asyncio.get_running_loop()
        name = self.what.replace(" ", "-")
        self.executor = store_executor(self.what, "w")
        try:
            self.conn = await loop.run_in_executor(self.executor, self._connect)
            await self._open_readers()
        except psycopg.Error as exc:
            await self._release()
            raise StoreOpenError(f"{self.location}: {first_line(exc)}") from exc
        except BaseException:
            await self._release()
            raise
        self._writer = GroupCommit(
            f"{name}:{self.store}",
            self.conn,
            self.executor,
            self._write,
            batch_max=self._batch_max,
            begin=self._begin,
            committed=self._committed,
            after_group=self._after_group,
            on_writable=self._on_writable,
        )
        self._writer.start()

    def _connect(self) -> PgConnection:
        conn = PgConnection(self.url, application=self._application())
        try:
            conn.ensure()
            migrate_pg(conn, self._migrations, store=self.store, what=self.what)
            if self._prepare is not None:
                self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def open_for_reading(self) -> None:
        """Open the readers only (``audit verify``/``export`` on a database, a
        standby's included): nothing is created, migrated or written. A store
        of a newer schema is refused (StoreVersionError), a database without
        this store's tables is StoreOpenError."""
        try:
            # One direct connection first: an unreachable database is reported by
            # its own cause, not by the pool's "initialization incomplete".
            await asyncio.to_thread(self._try_connect)
            await self._open_readers()
            row = None
            kept = await self.fetchone("SELECT to_regclass('schema_versions') IS NOT NULL")
            if kept is not None and kept[0]:
                row = await self.fetchone(
                    "SELECT version FROM schema_versions WHERE store = ?", (self.store,)
                )
        except StoreUnavailable as exc:
            await self._release()
            raise StoreOpenError(f"{self.location}: {exc.message}") from exc
        except psycopg.Error as exc:
            await self._release()
            raise StoreOpenError(f"{self.location}: {first_line(exc)}") from exc
        except BaseException:
            await self._release()
            raise
        if row is None:
            await self._release()
            raise StoreOpenError(f"{self.location}: no {self.what} in this database")
        try:
            refuse_newer(int(row[0]), latest(self._migrations), self.what)
        except BaseException:
            await self._release()
            raise

    def _try_connect(self) -> None:
        connect(self.url, application=self._application() + " (read)").close()

    async def _open_readers(self) -> None:
        self._read_executor = store_executor(self.what, "r", self._readers)
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            self.url,
            min_size=1,
            max_size=self._readers,
            kwargs={
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT,
                "application_name": self._application() + " (read)",
                "options": _SESSION_OPTIONS,
            },
            open=False,
            timeout=CONNECT_TIMEOUT,
            check=psycopg_pool.ConnectionPool.check_connection,
            name=f"{self.store}-read",
        )
        self._pool = pool
        await asyncio.get_running_loop().run_in_executor(
            self._read_executor, functools.partial(pool.open, wait=True, timeout=CONNECT_TIMEOUT)
        )

    async def run(self, op: Callable[[Connection], T]) -> T:
        """Run ``op`` on the writer connection in its thread, outside any group."""
        conn = self.conn
        if conn is None:
            raise StoreClosedError(f"{self.what} is not open")
        return await asyncio.get_running_loop().run_in_executor(self.executor, op, conn)

    # ---- reads ------------------------------------------------------------------

    async def _read(self, body: Callable[[psycopg.Connection[Any]], T]) -> T:
        pool = self._pool
        if pool is None or self._read_executor is None:
            raise StoreClosedError(f"{self.what} is not open")

        def run() -> T:
            with pool.connection() as conn:
                return body(conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._read_executor, run)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            if cannot_write(exc):
                raise StoreUnavailable(f"{self.what} cannot be read: {first_line(exc)}") from exc
            raise

    async def fetchall(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        text, values = placeholders(sql), _arguments(args)
        return await self._read(
            lambda conn: [tuple(row) for row in conn.execute(text, values).fetchall()]
        )

    async def fetchone(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        rows = await self.fetchall(sql, args)
        return rows[0] if rows else None

    async def stream(self, sql: str, args: tuple[Any, ...] = ()) -> AsyncIterator[tuple[Any, ...]]:
        """The rows of ``sql`` in batches of STREAM_BATCH (a server-side cursor
        in one read-only transaction: a whole message log never sits in memory)."""
        pool, executor = self._pool, self._read_executor
        if pool is None or executor is None:
            raise StoreClosedError(f"{self.what} is not open")
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(executor, pool.getconn)
        try:
            transaction = conn.transaction()
            await loop.run_in_executor(executor, transaction.__enter__)
            try:
                cursor = conn.cursor(name="yrd_stream")
                await loop.run_in_executor(
                    executor,
                    lambda: cursor.execute(placeholders(sql), _arguments(args)),
                )
                while True:
                    rows = await loop.run_in_executor(executor, cursor.fetchmany, STREAM_BATCH)
                    if not rows:
                        break
                    for row in rows:
                        yield tuple(row)
                await loop.run_in_executor(executor, cursor.close)
            finally:
                await loop.run_in_executor(executor, transaction.__exit__, None, None, None)
        finally:
            await loop.run_in_executor(executor, pool.putconn, conn)

    # ---- close ------------------------------------------------------------------

    async def _release(self) -> None:
        loop = asyncio.get_running_loop()
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await loop.run_in_executor(self.executor, conn.close)
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await loop.run_in_executor(self._read_executor, pool.close)
        if self._read_executor is not None:
            self._read_executor.shutdown(wait=True)
            self._read_executor = None


def create_database(server_url: str, name: str) -> str:
    """Create the empty database ``name`` on the server of ``server_url`` (a URL
    to any of its databases, as a user allowed to create one); return its URL.
    For the project's own tests, bench and soak, which start a server of their own."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"database name: expected letters, digits and _, got {name!r}")
    with psycopg.connect(server_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"
