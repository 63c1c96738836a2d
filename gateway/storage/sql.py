"""What the stores need of an SQL engine: the seam between the stores' own SQL and
SQLite or PostgreSQL.

The message log and the state store write their SQL once, with ``?``
placeholders, in SQL both engines read (``ON CONFLICT``, ``RETURNING``,
``COALESCE``; booleans as INTEGER 0/1). A store's file (:class:`StoreFile`) is
either :class:`gateway.storage.sqlitefile.SqliteFile` or
:class:`gateway.storage.pgfile.PgFile`, chosen by :func:`gateway.storage.engines.store_file`
from the node's ``store`` setting: a folder, or a ``postgresql://`` URL.

Writes run in the file's writer thread on a :class:`Connection` (a DB-API
subset that ``sqlite3.Connection`` has as it is and that PostgreSQL's file
provides around psycopg); reads go through the file's async ``fetchall``,
``fetchone`` and ``stream``, which see only committed data.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Protocol

# Where a store lives, read as the config reads it; importable from here too.
from gateway.core.urls import DATABASE_SCHEMES, display_url, is_database_url

__all__ = [
    "DATABASE_SCHEMES",
    "Connection",
    "Cursor",
    "display_url",
    "is_database_url",
    "marks",
]


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """The writer connection as the stores' write functions use it."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...

    @property
    def in_transaction(self) -> bool: ...


def marks(values: Collection[object]) -> str:
    """``?,?,?`` for an IN (...) list of ``values`` (never empty)."""
    return ",".join("?" * len(values))
