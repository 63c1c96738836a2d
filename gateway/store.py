"""The node's business state in SQLite: guest registrations (and, later, the outbox).

Kept apart from the message log's connection so that the log's grouped writer
owns its transactions; both live in the same WAL-mode database file.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS check_ins (
    check_in_id      TEXT PRIMARY KEY,
    relying_party_id TEXT NOT NULL,
    issuer_province  TEXT NOT NULL,
    guest            BLOB NOT NULL,   -- serialized yrd.common.v1.Person (disclosed attributes)
    client_reference TEXT NOT NULL,
    recorded_at      TEXT NOT NULL,   -- ISO 8601 UTC
    correlation_id   TEXT NOT NULL
);
"""


class StateStore:
    """Business records of the node; an async context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> StateStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, timeout=30)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.executescript(SCHEMA)
        await self._db.commit()
        return self

    async def __aenter__(self) -> StateStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("state store is not open")
        return self._db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def record_check_in(
        self,
        *,
        check_in_id: str,
        relying_party_id: str,
        issuer_province: str,
        guest: bytes,
        client_reference: str,
        recorded_at: datetime,
        correlation_id: str,
    ) -> None:
        await self.db.execute(
            "INSERT INTO check_ins VALUES (?,?,?,?,?,?,?)",
            (
                check_in_id,
                relying_party_id,
                issuer_province,
                guest,
                client_reference,
                recorded_at.isoformat(),
                correlation_id,
            ),
        )
        await self.db.commit()

    async def get_check_in(self, check_in_id: str) -> tuple[str, str, bytes, str, str, str] | None:
        async with self.db.execute(
            "SELECT relying_party_id, issuer_province, guest, client_reference, recorded_at,"
            " correlation_id FROM check_ins WHERE check_in_id = ?",
            (check_in_id,),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return (str(row[0]), str(row[1]), bytes(row[2]), str(row[3]), str(row[4]), str(row[5]))
