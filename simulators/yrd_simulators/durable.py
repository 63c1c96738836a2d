"""A simulator's durable memory: its records and an append-only ledger in SQLite.

A real back-end keeps its cases and payments on disk; a simulator started
with a state file does too, so a test can restart it (or SIGKILL it) and find
what it had, and can tell how many times a payment was really made. Records
(cases, accounts) are JSON documents by kind and key, written through on every
change (WAL, ``synchronous=FULL``: a change answered is on disk). The ledger
(payments) only grows: :meth:`DurableState.forget` — a back-end that lost its
state — drops records of a kind but never the ledger.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,      -- JSON
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS ledger (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    entry TEXT NOT NULL       -- JSON
);
"""


class DurableState:
    """Records and ledger in one SQLite file; ``close`` when done."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def put(self, kind: str, key: str, value: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO records (kind, key, value) VALUES (?, ?, ?)",
            (kind, key, json.dumps(value, ensure_ascii=False, sort_keys=True)),
        )

    def records(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT key, value FROM records WHERE kind = ? ORDER BY rowid", (kind,)
        ).fetchall()
        for key, value in rows:
            yield str(key), json.loads(value)

    def forget(self, kind: str) -> None:
        """Drop every record of ``kind`` (the ledger stays)."""
        self._db.execute("DELETE FROM records WHERE kind = ?", (kind,))

    def record(self, entry: dict[str, Any], *, with_records: dict[tuple[str, str], Any]) -> None:
        """Append to the ledger and write ``with_records`` in the same transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO ledger (entry) VALUES (?)",
                (json.dumps(entry, ensure_ascii=False, sort_keys=True),),
            )
            for (kind, key), value in with_records.items():
                self.put(kind, key, value)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def ledger(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT entry FROM ledger ORDER BY seq").fetchall()
        return [json.loads(row[0]) for row in rows]

    def close(self) -> None:
        self._db.close()
