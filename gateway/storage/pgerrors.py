"""How PostgreSQL's errors read to the stores: a fault to retry, a collision
between replicas to run again, or neither (a constraint, a bug).

Kept apart from :mod:`gateway.storage.pgfile` so that the group writer can ask
without importing the PostgreSQL file (and only once psycopg is loaded at all).
"""

from __future__ import annotations

import psycopg
import psycopg_pool

#: SQLSTATEs of a collision between concurrent writers: run the unit again.
CONFLICT_STATES = frozenset({"23505", "40001", "40P01"})
#: SQLSTATE classes (first two characters) and codes meaning "cannot write now":
#: connection (08), transaction rollback (40), insufficient resources (53),
#: operator intervention (57: shutdown, cancel), system error (58); a read-only
#: transaction (25006: a standby), lock not available, object in use.
_CANNOT_WRITE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_CANNOT_WRITE_STATES = frozenset({"25006", "55P03", "55006"})


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg error (None for anything else)."""
    return getattr(exc, "sqlstate", None) if isinstance(exc, psycopg.Error) else None


def is_conflict(exc: BaseException) -> bool:
    """A collision with another writer (unique violation, serialization
    failure, deadlock): the unit of work is worth running again."""
    return sqlstate(exc) in CONFLICT_STATES


def cannot_write(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot take this write now (a fault,
    retried), rather than a fault of the write itself (a constraint, a bug)."""
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = sqlstate(exc)
    if state is None:
        # No answer from the server at all (the connection is gone).
        return isinstance(exc, psycopg.InterfaceError)
    return state[:2] in _CANNOT_WRITE_CLASSES or state in _CANNOT_WRITE_STATES


def first_line(exc: BaseException) -> str:
    """A PostgreSQL error in one line (psycopg's messages add DETAIL and HINT lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
