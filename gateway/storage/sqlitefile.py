"""One store's SQLite file, from open to close: the lifecycle the message log
and the state store share (each keeps only what is its own: its tables, how it
writes a group, what it does after one).

An open file has a writer connection (:func:`gateway.storage.migrations.open_writer`:
WAL, ``synchronous=FULL``, its schema migrated) used only in a thread of its
own, a :class:`~gateway.storage.groupcommit.GroupCommit` writing through it,
and a reader connection (aiosqlite) that sees only committed data and never
waits behind the writer's thread.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from gateway.storage.groupcommit import GroupCommit, GroupWriterFile, Outcome
from gateway.storage.migrations import Migration, latest, migrate, open_writer, refuse_newer
from gateway.storage.records import StoreClosedError, StoreOpenError
from gateway.storage.sql import Connection
from gateway.storage.threads import store_executor

I = TypeVar("I")  # noqa: E741 - the item type of the group writer
T = TypeVar("T")


class SqliteFile(GroupWriterFile[I]):
    """A store's SQLite file: :meth:`open` it, write through :attr:`writer`,
    read through :attr:`reader`, :meth:`close` it (idempotent)."""

    def __init__(
        self,
        path: Path,
        migrations: tuple[Migration, ...],
        write: Callable[[Connection, list[I]], list[Outcome]],
        *,
        what: str,
        batch_max: int,
        on_writable: Callable[[bool], None],
        reader_autocommit: bool = False,
        prepare: Callable[[Connection], None] | None = None,
        committed: Callable[[], None] | None = None,
        after_group: Callable[[], Awaitable[None]] | None = None,
        before_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``what`` names the store in errors ("state store"); ``write``,
        ``committed`` and ``after_group`` are the group writer's (see
        :class:`GroupCommit`). ``prepare`` runs in the writer thread once the
        file is migrated (a failure there fails :meth:`open`); ``before_close``
        on the event loop after the last group is written, before the writer
        connection closes. ``reader_autocommit`` opens the reader connection
        with ``isolation_level=None``."""
        self.path = path
        #: Where the store is, for messages.
        self.location = str(path)
        self.what = what
        self._migrations = migrations
        self._write = write
        self._batch_max = batch_max
        self._on_writable = on_writable
        self._reader_options: dict[str, Any] = (
            {"isolation_level": None} if reader_autocommit else {}
        )
        self._prepare = prepare
        self._committed = committed
        self._after_group = after_group
        self._before_close = before_close
        #: The writer connection and its one thread (None unless open).
        self.conn: sqlite3.Connection | None = None
        self.executor: ThreadPoolExecutor | None = None
        #: The reader connection (None unless open).
        self.reader: aiosqlite.Connection | None = None
        self._writer: GroupCommit[I] | None = None
        #: The folder of a private migrated copy being read (open_for_reading).
        self._scratch: Path | None = None
        self.closed = False

    async def open(self) -> None:
        """Open (creating and migrating the file if needed). Raises StoreOpenError
        (or OSError for the folder); nothing stays open after a failure."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        name = self.what.replace(" ", "-")
        self.executor = store_executor(self.what, "w")
        try:
            self.conn = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._connect
            )
            try:
                self.reader = await aiosqlite.connect(self.path, timeout=30, **self._reader_options)
            except sqlite3.Error as exc:
                raise StoreOpenError(str(exc)) from exc
        except BaseException:
            await self._release()
            raise
        self._writer = GroupCommit(
            f"{name}:{self.path.name}",
            self.conn,
            self.executor,
            self._write,
            batch_max=self._batch_max,
            committed=self._committed,
            after_group=self._after_group,
            on_writable=self._on_writable,
        )
        self._writer.start()

    async def open_for_reading(self) -> None:
        """Open the reader only, on a file that may be read-only (a copy on a
        ``:ro`` volume, evidence on another machine): nothing is created,
        migrated or written, and there is no writer. A file written by a newer
        release is refused (StoreVersionError); a missing one is StoreOpenError.
        A file of an older schema is read through a private migrated copy (in a
        temporary folder removed at close), never changed in place."""
        if not self.path.is_file():
            raise StoreOpenError(f"no such file: {self.path}")
        uri = self.path.resolve().as_uri()
        try:
            try:
                self.reader, found = await self._read_only(f"{uri}?mode=ro")
            except sqlite3.OperationalError:
                # A WAL file whose folder cannot take its -shm (a read-only
                # mount, the node stopped cleanly): read it as the immutable file it is.
                uri = f"{uri}?mode=ro&immutable=1"
                self.reader, found = await self._read_only(uri)
            if found < latest(self._migrations):
                await self.reader.close()
                self.reader = None
                copy = await asyncio.to_thread(self._migrated_copy, uri)
                self.reader, _ = await self._read_only(f"{copy.as_uri()}?mode=ro")
        except sqlite3.Error as exc:
            await self._release()
            raise StoreOpenError(str(exc)) from exc
        except BaseException:
            await self._release()
            raise

    async def _read_only(self, uri: str) -> tuple[aiosqlite.Connection, int]:
        """A read-only reader of ``uri`` and the file's schema version."""
        reader = await aiosqlite.connect(uri, uri=True, timeout=30, **self._reader_options)
        try:
            async with reader.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            found = int(row[0]) if row else 0
            refuse_newer(found, latest(self._migrations), self.what)
        except BaseException:
            await reader.close()
            raise
        return reader, found

    def _migrated_copy(self, uri: str) -> Path:
        """A private copy of the file at ``uri``, migrated to this code's schema."""
        self._scratch = Path(tempfile.mkdtemp(prefix="yrd-read-"))
        copy = self._scratch / self.path.name
        source = sqlite3.connect(uri, uri=True)
        try:
            target = sqlite3.connect(copy, isolation_level=None)
            try:
                source.backup(target)
                migrate(target, self._migrations, what=self.what)
            finally:
                target.close()
        finally:
            source.close()
        return copy

    def _connect(self) -> sqlite3.Connection:
        """In the writer thread: the writer connection, migrated and prepared."""
        conn = open_writer(self.path, self._migrations, what=self.what)
        if self._prepare is not None:
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
        return conn

    async def run(self, op: Callable[[Connection], T]) -> T:
        """Run ``op`` on the writer connection in its thread, outside any group
        (``op`` manages its own transaction, if any)."""
        conn = self.conn
        if conn is None:
            raise StoreClosedError(f"{self.what} is not open")
        return await asyncio.get_running_loop().run_in_executor(self.executor, op, conn)

    async def fetchall(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a query on the reader connection: every row, as tuples."""
        reader = self.reader
        if reader is None:
            raise StoreClosedError(f"{self.what} is not open")
        # One call on the connection's thread that runs the statement to its end:
        # interleaved, half-read cursors would hold the read snapshot open and
        # later reads would miss writes committed since (stale reads).
        rows = await reader.execute_fetchall(sql, args)
        return [tuple(row) for row in rows]

    async def fetchone(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        rows = await self.fetchall(sql, args)
        return rows[0] if rows else None

    async def stream(self, sql: str, args: tuple[Any, ...] = ()) -> AsyncIterator[tuple[Any, ...]]:
        """The rows of ``sql`` one by one (a whole message log never sits in memory)."""
        reader = self.reader
        if reader is None:
            raise StoreClosedError(f"{self.what} is not open")
        async with reader.execute(sql, args) as cursor:
            async for row in cursor:
                yield tuple(row)

    async def _release(self) -> None:
        """Close the connections and the writer thread (those that are open)."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await asyncio.get_running_loop().run_in_executor(self.executor, conn.close)
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
        if self.reader is not None:
            reader, self.reader = self.reader, None
            await reader.close()
        if self._scratch is not None:
            scratch, self._scratch = self._scratch, None
            shutil.rmtree(scratch, ignore_errors=True)
