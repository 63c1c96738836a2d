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

from collections.abc import Iterable
from typing import Any, Protocol

#: The URL schemes of a PostgreSQL ``store``.
DATABASE_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(location: object) -> bool:
    """Whether a ``store`` setting names a PostgreSQL database (else: a folder)."""
    return isinstance(location, str) and location.startswith(DATABASE_SCHEMES)


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, at, host = rest.partition("@")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}{at}{host}"


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
