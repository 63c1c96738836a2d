"""Where a store lives: the one place that picks SQLite or PostgreSQL.

A node's ``store`` setting is a folder (SQLite, the embedded default: one file
per store, ``messages.db`` and ``state.db``) or a ``postgresql://`` URL (one
database shared by the replicas of a province, both stores in it). The message
log and the state store ask :func:`store_file` for their place and never look
at which engine it is, except for the one thing the engines do differently:
how a group's transaction makes its writers take turns (``one_writer``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gateway.storage.groupcommit import GroupCommit, Outcome
from gateway.storage.migrations import Migration
from gateway.storage.sql import Connection, is_database_url

I = TypeVar("I")  # noqa: E741 - the item type of the group writer
T = TypeVar("T")

#: The files of the two stores in a SQLite ``store`` folder.
MESSAGE_LOG_FILE = "messages.db"
STATE_FILE = "state.db"


class StoreFile(Protocol[I]):
    """A store's place in an engine, from open to close (SQLite file or PostgreSQL
    tables); the message log and the state store keep only their own SQL."""

    #: What to call it in messages: the file's path, or the database URL (no password).
    location: str
    what: str

    async def open(self) -> None: ...

    async def open_for_reading(self) -> None: ...

    @property
    def writer(self) -> GroupCommit[I] | None: ...

    async def run(self, op: Callable[[Connection], T]) -> T: ...

    async def probe(self) -> bool: ...

    @property
    def commits(self) -> int: ...

    @property
    def items(self) -> int: ...

    async def close(self) -> None: ...

    async def fetchall(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...

    async def fetchone(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None: ...

    def stream(self, sql: str, args: tuple[Any, ...] = ()) -> AsyncIterator[tuple[Any, ...]]: ...


def store_location(store: Path | str, file_name: str) -> Path | str:
    """Where one store of a node lives: the URL itself, or the file in the folder."""
    if is_database_url(store):
        return str(store)
    return Path(store) / file_name


def store_file(
    location: Path | str,
    *,
    store: str,
    sqlite_migrations: tuple[Migration, ...],
    pg_migrations: tuple[Migration, ...],
    write: Callable[[Connection, list[I]], list[Outcome]],
    what: str,
    batch_max: int,
    on_writable: Callable[[bool], None],
    one_writer: bool = False,
    prepare: Callable[[Connection], None] | None = None,
    committed: Callable[[], None] | None = None,
    after_group: Callable[[], Awaitable[None]] | None = None,
    before_close: Callable[[], Awaitable[None]] | None = None,
    reader_autocommit: bool = False,
) -> StoreFile[I]:
    """The place of one store (``store``: "state", "message_log"). ``location``
    is the SQLite file, or the PostgreSQL URL. ``one_writer``: every group of
    this store, from any process or replica, runs alone (SQLite's BEGIN
    IMMEDIATE does that for any store; PostgreSQL takes an advisory lock
    named after the store for the group's transaction)."""
    if is_database_url(location):
        from gateway.storage.pgfile import PgFile

        begin: tuple[str, ...] = ("BEGIN",)
        if one_writer:
            begin += (f"SELECT pg_advisory_xact_lock(hashtext('yrd.{store}'))",)
        return PgFile(
            str(location),
            pg_migrations,
            write,
            store=store,
            what=what,
            batch_max=batch_max,
            on_writable=on_writable,
            begin=begin,
            prepare=prepare,
            committed=committed,
            after_group=after_group,
            before_close=before_close,
        )
    from gateway.storage.sqlitefile import SqliteFile

    return SqliteFile(
        Path(location),
        sqlite_migrations,
        write,
        what=what,
        batch_max=batch_max,
        on_writable=on_writable,
        reader_autocommit=reader_autocommit,
        prepare=prepare,
        committed=committed,
        after_group=after_group,
        before_close=before_close,
    )
