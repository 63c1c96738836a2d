"""The outbox's loop when items it holds in memory (their next attempt could not
be written) go away while it reads the store: a delivery to the same peer that
is acknowledged meanwhile catches the peer up and drops them. The loop once
looked them up again after its reads and died of a KeyError, which stopped
every delivery of the node until a restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from gateway.federation.client import FederationClient
from gateway.federation.outbox import Outbox, OutboxRoute
from gateway.storage.records import OutboxItem


def _item(n: int) -> OutboxItem:
    return OutboxItem(
        n, "320000", "svc", f"msg-{n}", "corr", f"key-{n}", b"", f"CASE-{n}", 1, 0.0, time.time()
    )


class _Store:
    """The reads the outbox loop makes; each read lets a finished delivery run
    (as the real store's await does), which drops the items held for the peer."""

    def __init__(self) -> None:
        self.outbox: Outbox | None = None
        self.reads = 0
        self.three_reads = asyncio.Event()

    async def claim_outbox(self, *args: Any, **kwargs: Any) -> list[OutboxItem]:
        self.reads += 1
        if self.reads >= 3:
            self.three_reads.set()
        await asyncio.sleep(0)
        assert self.outbox is not None
        self.outbox._held.clear()  # what an acknowledgement with catch-up does
        return []

    async def next_outbox_time(self, *, after: float) -> float | None:
        return None

    async def release_outbox_leases(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def renew_outbox_leases(self, *args: Any, **kwargs: Any) -> set[int]:
        return set()


async def test_held_items_dropped_during_a_read_do_not_stop_the_loop() -> None:
    store = _Store()
    route = OutboxRoute(request_type=object, on_acked=None, on_refused=None)  # type: ignore[arg-type]
    outbox = Outbox(
        cast(Any, store), cast(FederationClient, object()), {"svc": route}, idle_poll=0.01
    )
    store.outbox = outbox
    # Held in memory, due in a minute: "waiting" when the loop starts its pass.
    outbox._held[1] = (time.time() + 60, 1, _item(1))
    await outbox.start()
    try:
        # On the old code the loop died after its first read: this times out.
        await asyncio.wait_for(store.three_reads.wait(), timeout=10)
        assert outbox._task is not None
        assert not outbox._task.done(), outbox._task.exception()
        assert store.reads >= 3  # the loop went on reading after the held item went
    finally:
        await outbox.stop()
