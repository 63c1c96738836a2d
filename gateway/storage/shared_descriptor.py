"""The province's own published descriptor, kept in its PostgreSQL database.

Peers refuse a descriptor whose serial is lower than one they hold (a
rollback), so the replicas of a province must all serve the SAME one. When
the stores are a database, the descriptor is a row of ``own_descriptor`` in
it: every replica reads it, and the one that issues a new one (content
changed, certificate changed, half its validity passed) does so under an
advisory lock, after reading the row again, so two replicas never issue two
serials for one change. It plugs into
:class:`gateway.storage.descriptors.DescriptorCache` in place of the
``own.descriptor`` file that the workers of one machine share.

Blocking calls (psycopg's sync API, like the stores' writer threads): the
directory calls :meth:`SharedDescriptor.poll` from a thread; :meth:`stamp`
and :meth:`latest` answer from memory. A database error is an ``OSError``
(what the directory already expects of a failing disk).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg

from gateway.storage.sql import display_url

#: Seconds to wait for the server; the lock and a statement never wait longer.
CONNECT_TIMEOUT = 5
_OPTIONS = "-c statement_timeout=10000 -c lock_timeout=10000"

_CREATE = (
    "CREATE TABLE IF NOT EXISTS own_descriptor ("
    " province TEXT PRIMARY KEY,"
    " serial BIGINT NOT NULL,"
    " data BYTEA NOT NULL)"
)
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('yrd.own_descriptor'))"


class SharedDescriptorError(OSError):
    """The database could not be read or written (the message names it, no password)."""


class SharedDescriptor:
    """The ``own_descriptor`` row of ``province`` in the database at ``url``."""

    def __init__(self, url: str, province: str) -> None:
        self.url = url
        self.province = province
        self.location = f"{display_url(url)} (own_descriptor)"
        self._conn: psycopg.Connection[Any] | None = None
        # One connection, used by one thread at a time (the publisher or a poll).
        self._mutex = threading.RLock()
        self._in_lock = False
        self._serial: int | None = None
        self._data: bytes | None = None
        self._created = False

    # -- connection -------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            conn = self._conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="yrd-gateway own descriptor",
                options=_OPTIONS,
            )
        if not self._created:
            with conn.transaction():
                conn.execute(_LOCK)
                conn.execute(_CREATE)
            self._created = True
        return conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._conn = None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SharedDescriptorError(f"{self.location}: {first}") from exc

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()

    # -- the OwnDescriptor protocol --------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """A transaction holding the advisory lock of the own descriptor: what is
        read and written inside it is one step for all the replicas."""
        with self._mutex, self._errors():
            conn = self._connection()
            with conn.transaction():
                conn.execute(_LOCK)
                self._in_lock = True
                try:
                    yield
                finally:
                    self._in_lock = False

    def read(self) -> bytes | None:
        with self._mutex, self._errors():
            row = (
                self._connection()
                .execute(
                    "SELECT serial, data FROM own_descriptor WHERE province = %s",
                    (self.province,),
                )
                .fetchone()
            )
        if row is None:
            return None
        self._remember(int(row[0]), bytes(row[1]))
        return bytes(row[1])

    def write(self, data: bytes, serial: int) -> None:
        """Replace the row (under :meth:`lock`); ``serial`` is the descriptor's."""
        if not self._in_lock:
            raise RuntimeError("the own descriptor is written under its lock")
        with self._mutex, self._errors():
            self._connection().execute(
                "INSERT INTO own_descriptor (province, serial, data) VALUES (%s, %s, %s)"
                " ON CONFLICT (province) DO UPDATE"
                " SET serial = excluded.serial, data = excluded.data",
                (self.province, serial, data),
            )
        self._remember(serial, data)

    def stamp(self) -> object | None:
        return self._serial

    def latest(self) -> bytes | None:
        return self._data

    def poll(self) -> None:
        """Read the row again if another replica wrote a newer serial."""
        with self._mutex, self._errors():
            row = (
                self._connection()
                .execute(
                    "SELECT serial, data FROM own_descriptor WHERE province = %s AND serial > %s",
                    (self.province, self._serial or 0),
                )
                .fetchone()
            )
        if row is not None:
            self._remember(int(row[0]), bytes(row[1]))

    def _remember(self, serial: int, data: bytes) -> None:
        if self._serial is None or serial >= self._serial:
            self._serial, self._data = serial, data
