"""What a node's state store holds, read-only, for tools that inspect a stopped
or running node from outside (the chaos soak's accounting): the SQL stays here.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.storage.sql import is_database_url


@dataclass
class StoreView:
    """What a node's state store says (read-only), keyed for the accounting."""

    #: (domain, idempotency key) -> [(case id, status, reason)] on the submitting side.
    outgoing: dict[tuple[str, str], list[tuple[str, int, str]]] = field(default_factory=dict)
    #: (domain, idempotency key) -> [(reference, sender, status, reconciliation)].
    incoming: dict[tuple[str, str], list[tuple[str, str, int, bool]]] = field(default_factory=dict)
    #: outbox subject (case id or reference) -> states ('pending' / 'parked').
    outbox: dict[str, list[str]] = field(default_factory=dict)


def read_store(path: Path | str) -> StoreView:
    """A node's ``state.db``, read-only (a missing file reads as empty); or, given
    a ``postgresql://`` URL, the state store in that database (its replicas')."""
    if is_database_url(path):
        import psycopg

        with psycopg.connect(str(path), autocommit=True, connect_timeout=10) as conn:
            return _view(lambda sql: conn.execute(sql).fetchall())
    path = Path(path)
    if not path.exists():
        return StoreView()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return _view(lambda sql: db.execute(sql).fetchall())
    finally:
        db.close()


def _view(query: Callable[[str], list[Any]]) -> StoreView:
    view = StoreView()
    outgoing: defaultdict[tuple[str, str], list[tuple[str, int, str]]] = defaultdict(list)
    for case_id, domain, key, status, reason in query(
        "SELECT case_id, domain, idempotency_key, status, status_reason FROM outgoing_cases"
    ):
        outgoing[(domain, key)].append((case_id, int(status), str(reason)))
    incoming: defaultdict[tuple[str, str], list[tuple[str, str, int, bool]]] = defaultdict(list)
    for reference, domain, sender, key, status, flag in query(
        "SELECT reference, domain, sender, idempotency_key, status, reconciliation"
        " FROM incoming_cases"
    ):
        incoming[(domain, key)].append((reference, sender, int(status), bool(flag)))
    outbox: defaultdict[str, list[str]] = defaultdict(list)
    for subject, item_state in query("SELECT subject, state FROM outbox"):
        outbox[subject].append(str(item_state))
    view.outgoing, view.incoming, view.outbox = dict(outgoing), dict(incoming), dict(outbox)
    return view
