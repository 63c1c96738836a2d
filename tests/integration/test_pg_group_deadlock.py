"""Two replicas' group commits that lock rows in opposite orders (a deadlock).

Each replica's writer runs a whole group of units in one transaction, so a
unit that loses a deadlock cannot be run again inside its group: the locks the
group's earlier units took are still held, the other replica still waits for
them, and the rerun deadlocks again. The group is rolled back whole and run
again instead; neither replica's store is reported unwritable (its health
would turn NOT_SERVING) for a collision, and every unit is committed once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from gateway.storage.sql import Connection
from gateway.storage.state import StateStore

#: How long a unit waits for the other replica's before going on anyway (a
#: safety net: the test never hangs).
MEET = 10.0


def _update(row: int, *, then: Callable[[], None] = lambda: None) -> Callable[[Connection], Any]:
    def op(db: Connection) -> None:
        db.execute("UPDATE deadlock_rows SET hits = hits + 1 WHERE id = ?", (row,))
        then()

    return op


async def test_opposite_lock_orders_commit_every_unit_once(pg_url: str) -> None:
    first, second = await StateStore(pg_url).open(), await StateStore(pg_url).open()
    flips: list[bool] = []
    first.on_writable = second.on_writable = flips.append
    try:
        await first.write(
            lambda db: db.execute(
                "CREATE TABLE deadlock_rows (id BIGINT PRIMARY KEY, hits BIGINT NOT NULL)"
            )
        )
        await first.write(lambda db: db.execute("INSERT INTO deadlock_rows VALUES (1, 0), (2, 0)"))
        first_locked, second_locked = threading.Event(), threading.Event()

        def meet(mine: threading.Event, theirs: threading.Event) -> Callable[[], None]:
            def step() -> None:
                mine.set()
                theirs.wait(MEET)

            return step

        # One group each (queued in one tick): row 1 then row 2, and row 2 then row 1,
        # each replica's first unit holding its row until the other's holds its own.
        outcomes = await asyncio.gather(
            first.write(_update(1, then=meet(first_locked, second_locked))),
            first.write(_update(2)),
            second.write(_update(2, then=meet(second_locked, first_locked))),
            second.write(_update(1)),
            return_exceptions=True,
        )
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        rows = await first.fetchall("SELECT id, hits FROM deadlock_rows ORDER BY id")
        assert rows == [(1, 2), (2, 2)]
        assert False not in flips
    finally:
        await first.close()
        await second.close()
