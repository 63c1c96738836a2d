"""Group commit: many writers, one transaction, every caller answered after it.

Callers submit items and wait. One task takes every item waiting (up to
``batch_max``) and hands the whole group, in one hop, to the store's own
thread, where it opens one transaction (``BEGIN IMMEDIATE``), lets the store's
``write`` write every item, and commits; only then is each caller answered,
with its own outcome. Under load one commit (one fsync) serves many callers;
with no load a lone item is written at once. This is the one commit loop of the
node's SQLite files: a store says only how it writes a group
(:func:`each_in_savepoint` for a store whose items are write functions).

The message log and the state store are both written this way, and this is
where their SQLite write failures (disk full, file-size limit, I/O error,
read-only file) become :class:`~gateway.core.errors.StoreUnavailable`: a node that
cannot write answers UNAVAILABLE, never INTERNAL. ``on_writable`` hears when the
store stops being writable and when a commit succeeds again (node health).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gateway.core.errors import StoreUnavailable
from gateway.storage.sql import Connection

I = TypeVar("I")  # noqa: E741 - the item type
T = TypeVar("T")

#: An item's outcome: (True, result) or (False, the exception to raise for it).
Outcome = tuple[bool, Any]
#: A write function run in the writer thread inside a transaction.
WriteOp = Callable[[Connection], Any]

#: How often a unit of work that collided with another replica's (PostgreSQL:
#: a unique violation, a deadlock, a serialization failure) is run again.
CONFLICT_RERUNS = 3
#: PostgreSQL's SQLSTATEs of a wait for another transaction's locks ended by the
#: server (deadlock, serialization failure): the whole group is run again.
GROUP_CONFLICT_STATES = frozenset({"40001", "40P01"})


class GroupCommitClosed(RuntimeError):
    pass


class GroupConflict(Exception):
    """A unit of work lost a deadlock (or a serialization failure) to another
    writer of the database: its group is rolled back whole and run again, since
    the locks its earlier units took, which the other writer waits for, are
    held until the group's transaction ends (a rerun inside it meets them again)."""


#: SQLite primary result codes meaning "this write cannot be done now": busy or
#: locked past the busy timeout, read-only, I/O error (EFBIG included), disk
#: full, cannot open, locking protocol.
_CANNOT_WRITE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def rollback(conn: Connection) -> None:
    """Roll back after a failed write, if a transaction is still open: SQLite ends
    it itself on some errors (a failed COMMIT), and "cannot rollback - no
    transaction is active" must not hide the error that caused it."""
    if conn.in_transaction:
        with contextlib.suppress(Exception):  # the first error is the one reported
            conn.execute("ROLLBACK")


class RunSeparately(Exception):
    """Raised by a group's ``write`` when the group cannot commit as one (an item
    of it failed): the group's transaction is rolled back whole, and
    ``write_again`` writes the same items in a new one (:meth:`GroupCommit._apply`).
    ``write_again`` never raises it."""

    def __init__(self, write_again: Callable[[Connection, list[Any]], list[Outcome]]) -> None:
        super().__init__("an item of the group failed: each is written alone")
        self.write_again = write_again


def each_in_savepoint(conn: Connection, ops: list[WriteOp]) -> list[Outcome]:
    """Run every op of a group in the group's transaction; if one fails, the
    group runs again, each op in a savepoint of its own (:func:`each_alone`), so
    that an op that fails fails alone.

    Most groups fail nowhere, so a group first runs as it is: no savepoint, and
    consecutive :class:`InsertRow` ops into the same table in one multi-row
    ``INSERT``. Each statement is a round trip of the interpreter lock between
    this writer thread and a busy event loop (the sqlite3 module lets go of the
    lock for every statement it runs), which on the development machine made
    the writer threads cost 0.6-1.0 ms of CPU per commit. If an op fails, the
    transaction is rolled back whole (:class:`RunSeparately`) and the group is
    written again in a new one: ops are functions of the connection and may
    run twice (a collision reruns them already). An op that lost a deadlock
    raises :class:`GroupConflict` either way."""
    try:
        values = _run_all(conn, ops)
    except Exception as exc:
        _raise_if_group_conflict(exc)
        raise RunSeparately(each_alone) from exc
    return [(True, value) for value in values]


def each_alone(conn: Connection, ops: list[WriteOp]) -> list[Outcome]:
    """Run each op in a savepoint of its own (inside the group's transaction): an
    op that fails rolls back alone, without disturbing the others of its group.

    An op that collided with a concurrent writer of the same database (another
    replica, on PostgreSQL) on a unique key is rolled back to its savepoint and
    run again, up to CONFLICT_RERUNS times: its reads then see the other writer's
    committed rows (the key it raced for is now taken, and the op decides
    accordingly). An op that lost a deadlock raises :class:`GroupConflict`: the
    whole group is run again in a new transaction (:meth:`GroupCommit._apply`)."""
    outcomes: list[Outcome] = []
    for op in ops:
        reruns = 0
        while True:
            conn.execute("SAVEPOINT op")
            try:
                value = op(conn)
            except Exception as exc:
                _roll_back_to(conn, "op", exc)
                _raise_if_group_conflict(exc)
                if is_conflict(exc) and reruns < CONFLICT_RERUNS:
                    reruns += 1
                    continue
                outcomes.append((False, exc))
            else:
                conn.execute("RELEASE op")
                outcomes.append((True, value))
            break
    return outcomes


#: Rows one multi-row INSERT carries at most (the message log's too: 64 of its
#: 12 values), and bound parameters (the oldest SQLite limit of 999).
INSERT_ROWS = 64
INSERT_PARAMETERS = 999


@dataclass(frozen=True, slots=True)
class InsertRow:
    """A write op that inserts one row (all of ``table``'s columns, in order).
    Alone it is one ``INSERT``; in a group that commits as one
    (:func:`each_in_savepoint`), consecutive rows into the same table share one
    multi-row ``INSERT``."""

    table: str
    row: tuple[Any, ...]

    def __call__(self, conn: Connection) -> None:
        insert_rows(conn, self.table, [self.row])


def insert_rows(conn: Connection, into: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` (of one width, at least one) ``into`` a table (``"t"``, or
    ``"t (a, b)"`` naming its columns): one statement per INSERT_ROWS rows, within
    INSERT_PARAMETERS values."""
    width = len(rows[0])
    step = min(INSERT_ROWS, INSERT_PARAMETERS // max(1, width))
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        conn.execute(
            _insert_rows_sql(into, width, len(chunk)), [value for row in chunk for value in row]
        )


@functools.lru_cache(maxsize=256)
def _insert_rows_sql(into: str, width: int, count: int) -> str:
    """``INSERT INTO <into> VALUES (?,..),(?,..)``: ``count`` rows of ``width`` values."""
    row = "(" + ",".join("?" * width) + ")"
    return f"INSERT INTO {into} VALUES {','.join([row] * count)}"  # noqa: S608 - marks only


def _run_all(conn: Connection, ops: list[WriteOp]) -> list[Any]:
    """Every op's value, in order; runs of :class:`InsertRow` into one table
    through :func:`insert_rows`."""
    values: list[Any] = []
    rows: list[InsertRow] = []

    def insert() -> None:
        if rows:
            insert_rows(conn, rows[0].table, [op.row for op in rows])
            rows.clear()

    for op in ops:
        if isinstance(op, InsertRow):
            if rows and (op.table != rows[0].table or len(op.row) != len(rows[0].row)):
                insert()
            rows.append(op)
            values.append(None)
            continue
        insert()  # written before the op that follows them, in order
        values.append(op(conn))
    insert()
    return values


def _write_items(
    write: Callable[[Connection, list[I]], list[Outcome]], items: list[I], conn: Connection
) -> list[Outcome]:
    return write(conn, items)


def _raise_if_group_conflict(exc: Exception) -> None:
    if is_group_conflict(exc):
        from gateway.storage.pgerrors import first_line

        raise GroupConflict(first_line(exc)) from exc


def _roll_back_to(conn: Connection, savepoint: str, exc: Exception) -> None:
    """Undo what ran since ``savepoint`` and drop it, after ``exc``. If the
    transaction itself is gone (an I/O error, a lost connection), ``exc`` is
    raised: its error, not the rollback's, is the one reported."""
    try:
        conn.execute(f"ROLLBACK TO {savepoint}")
        conn.execute(f"RELEASE {savepoint}")
    except Exception:
        raise exc from None


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL telling one writer it collided with another
    (unique violation, deadlock, serialization failure): worth running again.
    Never true of SQLite, whose one writer cannot race itself."""
    if "psycopg" not in sys.modules:
        return False
    from gateway.storage.pgerrors import is_conflict as collided

    return collided(exc)


def is_group_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL ending a wait of this writer's transaction
    for another's (deadlock, serialization failure): only a fresh transaction helps."""
    if "psycopg" not in sys.modules:
        return False
    from gateway.storage.pgerrors import sqlstate

    return sqlstate(exc) in GROUP_CONFLICT_STATES


def write_failure(name: str, exc: BaseException) -> StoreUnavailable | None:
    """The StoreUnavailable for a failed SQLite write, or None if ``exc`` is not one
    (a constraint, a bug: those stay what they are)."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, GroupConflict):
        return StoreUnavailable(f"{name} collided with another writer: {exc}")
    if isinstance(exc, sqlite3.DatabaseError):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _CANNOT_WRITE:
            return StoreUnavailable(f"{name} cannot write: {exc}")
        if code is None and isinstance(exc, sqlite3.OperationalError):
            return StoreUnavailable(f"{name} cannot write: {exc}")
    if isinstance(exc, OSError):
        return StoreUnavailable(f"{name} cannot write: {exc.strerror or exc}")
    if "psycopg" in sys.modules:
        from gateway.storage.pgerrors import cannot_write, first_line

        if cannot_write(exc):
            return StoreUnavailable(f"{name} cannot write: {first_line(exc)}")
    return None


def _write_probe(conn: Connection) -> None:
    conn.execute(
        "INSERT INTO write_probe (id, at) VALUES (1, ?)"
        " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        (time.time(),),
    )


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failure was already handled by the writer


class GroupCommit(Generic[I]):
    def __init__(
        self,
        name: str,
        connection: Connection,
        executor: ThreadPoolExecutor,
        write: Callable[[Connection, list[I]], list[Outcome]],
        *,
        batch_max: int,
        begin: tuple[str, ...] = ("BEGIN IMMEDIATE",),
        committed: Callable[[], None] | None = None,
        after_group: Callable[[], Awaitable[None]] | None = None,
        on_writable: Callable[[bool], None] | None = None,
    ) -> None:
        """``write`` writes a group inside the open transaction (in ``executor``'s
        one thread, the only user of ``connection``); ``committed`` runs there
        right after a group's commit, ``after_group`` on the event loop after
        each group. ``begin`` are the statements that open a group's transaction
        (SQLite: BEGIN IMMEDIATE, which also serialises the writers of one file;
        PostgreSQL: BEGIN, and a lock where the store needs one writer at a time)."""
        self._name = name
        self._begin = begin
        self._conn = connection
        self._write = write
        self._committed = committed
        self._executor = executor
        self._batch_max = batch_max
        self._after_group = after_group
        #: Told False when a group fails because the store cannot write, and
        #: True at the next group that commits.
        self.on_writable = on_writable
        self.writable = True
        self._queue: asyncio.Queue[tuple[I, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Commits made and items written, for metrics and the benchmark.
        self.commits = 0
        self.items = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def submit(self, item: I) -> Any:
        """Queue ``item``; return its result once its group is committed."""
        if self._closed or self._task is None:
            raise GroupCommitClosed(f"{self._name} is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        # A caller that gives up (is cancelled) cancels only its own future: the
        # item is still written, and the writer skips answering it.
        return await future

    async def submit_all(self, items: list[I]) -> list[Any]:
        """Queue ``items`` together (they are committed in one group); return
        their results once it is committed."""
        if self._closed or self._task is None:
            raise GroupCommitClosed(f"{self._name} is closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait((item, future))
        # Every future's outcome is retrieved (a group that failed fails them
        # all: raising the first must not leave the others' exceptions unread).
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def enqueue(self, item: I) -> None:
        """Queue ``item`` without waiting for it (its commit is not reported;
        :meth:`close` still writes it)."""
        if self._closed or self._task is None:
            raise GroupCommitClosed(f"{self._name} is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        self._queue.put_nowait((item, future))

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            group: list[tuple[I, asyncio.Future[Any]]] = []
            if first is None:
                stopping = True
            else:
                group.append(first)
            while len(group) < self._batch_max and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stopping = True
                else:
                    group.append(more)
            if group:
                await self._commit(group)
                if self._after_group is not None:
                    await self._after_group()

    def _transaction(self, body: Callable[[Connection], T]) -> T:
        """In the writer thread: ``body`` in one transaction, then one commit."""
        conn = self._conn
        for statement in self._begin:
            try:
                conn.execute(statement)
            except BaseException:
                rollback(conn)
                raise
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)  # the first error is the one reported
            raise
        return result

    def _apply(self, items: list[I]) -> list[Outcome]:
        reruns = 0
        write: Callable[[Connection, list[I]], list[Outcome]] = self._write
        while True:
            try:
                outcomes = self._transaction(functools.partial(_write_items, write, items))
            except GroupConflict:
                # Rolled back whole: the other writer goes on; this group runs again.
                if reruns >= CONFLICT_RERUNS:
                    raise
                reruns += 1
                continue
            except RunSeparately as separately:
                # Rolled back whole: an item failed; each is written alone.
                write = separately.write_again
                continue
            break
        if self._committed is not None:
            self._committed()
        return outcomes

    async def probe(self) -> bool:
        """Try a real (tiny) write outside the queue and outside the store's own
        tables (``write_probe``): True, and writable again, if it commits."""
        if self._closed or self._task is None:
            return False
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._transaction, _write_probe
            )
        except Exception:  # still failing: the next probe tries again
            return False
        self._set_writable(True)
        return True

    async def _commit(self, group: list[tuple[I, asyncio.Future[Any]]]) -> None:
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._apply, [item for item, _ in group]
            )
        except Exception as exc:  # the transaction failed: nothing of the group is durable
            mapped = write_failure(self._name, exc)
            if mapped is not None and not isinstance(exc, GroupConflict):
                self._set_writable(False)  # a collision says nothing of the store
            for _, future in group:
                if not future.done():
                    # A fresh exception per caller: one raised object shared by
                    # many tasks would chain their tracebacks into each other.
                    future.set_exception(
                        exc if mapped is None else StoreUnavailable(mapped.message)
                    )
            return
        self.commits += 1
        self.items += sum(ok for ok, _ in outcomes)
        writable = True
        for (_, future), (ok, value) in zip(group, outcomes, strict=True):
            if not ok:
                mapped = write_failure(self._name, value)
                if mapped is not None:
                    writable, value = False, mapped
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        self._set_writable(writable)

    def _set_writable(self, writable: bool) -> None:
        if writable != self.writable:
            self.writable = writable
            if self.on_writable is not None:
                self.on_writable(writable)

    async def close(self) -> None:
        """Write everything queued, then stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task


class GroupWriterFile(Generic[I]):
    """What a store's place (a SQLite file, PostgreSQL tables) does with its group
    writer, the same for both: hand it out while open, probe it, count its
    commits, and at close write everything queued, run ``before_close``, then
    release the connections (:meth:`_release`, the engine's own)."""

    _writer: GroupCommit[I] | None
    _before_close: Callable[[], Awaitable[None]] | None
    closed: bool

    @property
    def writer(self) -> GroupCommit[I] | None:
        """The group writer; None unless open (and not closed)."""
        return None if self.closed else self._writer

    async def probe(self) -> bool:
        """Try a real (tiny) write: True if the store can write again."""
        writer = self.writer
        return False if writer is None else await writer.probe()

    @property
    def commits(self) -> int:
        """Commits of the group writer."""
        return self._writer.commits if self._writer else 0

    @property
    def items(self) -> int:
        """Items the group writer wrote."""
        return self._writer.items if self._writer else 0

    async def close(self) -> None:
        """Write every queued item, run ``before_close``, then close. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._writer is not None:
            await self._writer.close()
            if self._before_close is not None:
                await self._before_close()
        await self._release()

    async def _release(self) -> None:
        raise NotImplementedError
