"""Leases on the work a node does in the background (SQLite): outbox items and
incoming cases are claimed by one process at a time, a lease that expires is
taken over, and the writes that finish a step are fenced by their owner.

The scenarios are functions of a store factory so that
tests/integration/test_pg_state.py runs them on PostgreSQL as well.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from gateway.core.errors import PeerUnavailable
from gateway.federation.client import FederationClient
from gateway.federation.outbox import Outbox, OutboxRoute
from gateway.storage.records import (
    PARKED,
    PENDING,
    NewIncomingCase,
    OutboxItem,
    Progress,
    lease_owner,
)
from gateway.storage.state import StateStore
from yrd.federation.v1 import federation_pb2

#: Opens a new store on the test's one database (a "replica").
Replica = Callable[[], Awaitable[StateStore]]

A, B = "1/100/aaaa", "2/200/bbbb"
FINAL = (7, 9)
STAMP = datetime(2027, 6, 1, 12, tzinfo=UTC)


def item(n: int, *, peer: str = "320000", due: float = 0.0) -> OutboxItem:
    return OutboxItem(
        0, peer, "svc", f"msg-{n}", "corr", f"key-{n}", b"", f"CASE-{n}", 0, due, time.time()
    )


async def enqueue(store: StateStore, *items: OutboxItem) -> None:
    def work(tx: Any) -> None:
        for it in items:
            tx.enqueue(it)

    await store.unit_of_work(work)


def incoming(n: int, *, domain: str = "withdrawal") -> NewIncomingCase:
    return NewIncomingCase(
        reference=f"FW-310000-{n}",
        domain=domain,
        sender="320000",
        idempotency_key=f"key-{n}",
        message_id=f"msg-{n}",
        correlation_id="corr",
        body_digest=b"d",
        application=b"app",
        status=2,
        next_poll_at=0.0,
        received_at=STAMP,
    )


async def receive(store: StateStore, *cases: NewIncomingCase) -> None:
    def work(tx: Any) -> None:
        for case in cases:
            tx.insert_incoming(case)

    await store.unit_of_work(work)


async def outbox_row(store: StateStore, item_id: int) -> tuple[Any, ...] | None:
    return await store.fetchone(
        "SELECT attempts, next_attempt_at, last_error, state, lease_owner FROM outbox WHERE id = ?",
        (item_id,),
    )


# ---- scenarios (both engines) --------------------------------------------------------


async def claims_are_exclusive_until_they_expire(replica: Replica) -> None:
    one, two = await replica(), await replica()
    await enqueue(one, item(1), item(2), item(3, peer="330000"))
    now = time.time()
    got = await one.claim_outbox(now, 10, owner=A, lease_seconds=10, skip_peers=("330000",))
    assert [i.message_id for i in got] == ["msg-1", "msg-2"]
    # The other replica gets only what is free.
    other = await two.claim_outbox(now, 10, owner=B, lease_seconds=10)
    assert [i.message_id for i in other] == ["msg-3"]
    held = (other[0].id,)
    assert await two.claim_outbox(now + 9, 10, owner=B, lease_seconds=10, skip_ids=held) == []
    # A's own leases count as free for A (minus what it has in flight).
    again = await one.claim_outbox(now, 10, owner=A, lease_seconds=10, skip_ids=(got[0].id,))
    assert [i.message_id for i in again] == ["msg-2"]
    # Expired: taken over (and B's own msg-3 comes with them).
    taken = await two.claim_outbox(now + 11, 10, owner=B, lease_seconds=10)
    assert sorted(i.message_id for i in taken) == ["msg-1", "msg-2", "msg-3"]
    entries = {e.message_id: e.lease_owner for e in await two.outbox_entries()}
    assert set(entries.values()) == {B}


async def fenced_writes_of_an_old_owner_change_nothing(replica: Replica) -> None:
    one, two = await replica(), await replica()
    await enqueue(one, item(1))
    now = time.time()
    (mine,) = await one.claim_outbox(now, 1, owner=A, lease_seconds=10)
    (theirs,) = await two.claim_outbox(now + 11, 1, owner=B, lease_seconds=10)
    assert mine.id == theirs.id
    before = await outbox_row(one, mine.id)
    removed = await one.unit_of_work(lambda tx: tx.remove_outbox_item(mine.id, owner=A))
    rescheduled = await one.unit_of_work(
        lambda tx: tx.reschedule_outbox_item(
            mine.id, owner=A, attempts=5, next_attempt_at=99.0, last_error="x", parked_at=1.0
        )
    )
    assert (removed, rescheduled) == (False, False)
    assert await outbox_row(one, mine.id) == before
    # What the old owner then finds in the row: the item leased by B.
    assert await one.unit_of_work(lambda tx: tx.outbox_holder(mine.id)) == B
    assert await one.renew_outbox_leases([mine.id], owner=A, until=now + 100) == set()
    assert await two.renew_outbox_leases([mine.id], owner=B, until=now + 100) == {mine.id}
    # The new owner's writes do apply.
    assert await two.unit_of_work(
        lambda tx: tx.reschedule_outbox_item(
            mine.id, owner=B, attempts=1, next_attempt_at=now, last_error="e", parked_at=None
        )
    )
    assert await outbox_row(two, mine.id) == (1, now, "e", PENDING, None)
    assert await one.unit_of_work(lambda tx: tx.outbox_holder(mine.id)) == ""  # nobody's
    (again,) = await one.claim_outbox(now, 1, owner=A, lease_seconds=10)
    assert await one.unit_of_work(lambda tx: tx.remove_outbox_item(again.id, owner=A))
    assert await one.outbox_entries() == []
    assert await one.unit_of_work(lambda tx: tx.outbox_holder(mine.id)) is None  # finished


async def release_and_operators_free_items(replica: Replica) -> None:
    one, two = await replica(), await replica()
    await enqueue(one, item(1), item(2))
    now = time.time()
    first, second = await one.claim_outbox(now, 2, owner=A, lease_seconds=60)
    assert await one.release_outbox_leases(A, [first.id]) == 1
    assert [i.id for i in await two.claim_outbox(now, 5, owner=B, lease_seconds=60)] == [first.id]
    assert await one.release_outbox_leases(B) == 1
    # An operator parks an item held by A: the lease goes with it; retried, it is free.
    assert await one.set_outbox_state(second.id, PARKED, now=now)
    assert (await outbox_row(one, second.id) or ())[3:] == (PARKED, None)
    assert await one.set_outbox_state(second.id, PENDING, now=now)
    got = await two.claim_outbox(now, 5, owner=B, lease_seconds=60)
    assert sorted(i.id for i in got) == [first.id, second.id]


async def incoming_cases_are_claimed_and_fenced(replica: Replica) -> None:
    one, two = await replica(), await replica()
    await receive(one, incoming(1), incoming(2), incoming(3, domain="case"))
    now = time.time()
    mine = await one.claim_incoming(
        "withdrawal", now=now, final=FINAL, limit=1, owner=A, lease_seconds=10
    )
    theirs = await two.claim_incoming(
        "withdrawal", now=now, final=FINAL, limit=5, owner=B, lease_seconds=10
    )
    assert [w.reference for w in mine] == ["FW-310000-1"]
    assert [w.reference for w in theirs] == ["FW-310000-2"]
    assert await two.renew_incoming_leases(["FW-310000-1"], owner=B, until=now + 60) == set()
    # A stalls past its lease: B takes the case over, A's progress is not written.
    (taken,) = await two.claim_incoming(
        "withdrawal",
        now=now + 11,
        final=FINAL,
        limit=5,
        owner=B,
        lease_seconds=10,
        skip=("FW-310000-2",),
    )
    assert taken.reference == "FW-310000-1"
    progress = Progress(5, "paid", 100, "B-1", 0, now, STAMP)
    assert not await one.unit_of_work(
        lambda tx: tx.incoming_progress("FW-310000-1", progress, owner=A)
    )
    assert not await one.unit_of_work(
        lambda tx: tx.incoming_schedule(
            "FW-310000-1", owner=A, attempts=3, next_poll_at=0.0, submitted=True
        )
    )
    assert not await one.unit_of_work(
        lambda tx: tx.incoming_to_reconciliation("FW-310000-1", owner=A, at=STAMP)
    )
    row = await one.fetchone(
        "SELECT status, submitted, attempts, reconciliation, lease_owner FROM incoming_cases"
        " WHERE reference = ?",
        ("FW-310000-1",),
    )
    assert row == (2, 0, 0, 0, B)
    assert await two.unit_of_work(lambda tx: tx.incoming_progress("FW-310000-1", progress, owner=B))
    assert await two.release_incoming_leases(B) == 1  # FW-310000-2; -1 was given up by progress


async def two_deliverers_deliver_each_item_once(replica: Replica, items: int = 60) -> None:
    """Two replicas' deliverers on one outbox: every item is sent once and removed."""
    one, two = await replica(), await replica()
    await enqueue(one, *(item(n, peer=("320000", "330000")[n % 2]) for n in range(items)))
    sent: list[str] = []

    class Peer:
        async def call(self, *args: Any, message_id: str, **kwargs: Any) -> Any:
            sent.append(message_id)
            await asyncio.sleep(0.01)
            return federation_pb2.DeliveryAck(), None

    route = OutboxRoute(federation_pb2.DeliveryAck, lambda tx, i, ack: None, lambda tx, i, e: None)
    client = cast(FederationClient, Peer())
    async with (
        Outbox(one, client, {"svc": route}, per_peer=4, owner=A),
        Outbox(two, client, {"svc": route}, per_peer=4, owner=B),
    ):
        for _ in range(600):  # 30 s at most
            if not (await one.outbox_stats())[0]:
                break
            await asyncio.sleep(0.05)
    assert (await one.outbox_stats())[0] == 0
    assert sorted(sent) == sorted(f"msg-{n}" for n in range(items))  # each once


async def a_lost_lease_keeps_its_backoff(replica: Replica) -> None:
    """A failed delivery whose reschedule finds the lease gone (an earlier write
    of it landed though the store reported a failure: here, the lease released
    under the attempt) is not claimed again before the backoff it was given, and
    the warning says what the row held."""
    store = await replica()
    await enqueue(store, item(1))
    sent: list[float] = []

    class Peer:
        async def call(self, *args: Any, **kwargs: Any) -> Any:
            sent.append(time.monotonic())
            if len(sent) == 1:
                await store.release_outbox_leases(A)  # the "earlier write" that landed
            raise PeerUnavailable("province 320000 did not answer in time")

    route = OutboxRoute(federation_pb2.DeliveryAck, lambda tx, i, ack: None, lambda tx, i, e: None)
    client = cast(FederationClient, Peer())
    with capture_logs() as logs:
        async with Outbox(store, client, {"svc": route}, owner=A, base_backoff=2.0, idle_poll=0.05):
            for _ in range(100):  # 10 s at most
                if len(sent) >= 2:
                    break
                await asyncio.sleep(0.1)
    assert len(sent) >= 2
    # Drawn from [1, 2] s; without the cool-down it came back within one pass.
    assert sent[1] - sent[0] >= 0.9
    lost = [e for e in logs if e["event"] == "outbox item no longer leased here"]
    assert [e["found"] for e in lost][:1] == [
        "not leased (an earlier write of it from here landed though reported failed)"
    ]


SCENARIOS = [
    a_lost_lease_keeps_its_backoff,
    claims_are_exclusive_until_they_expire,
    fenced_writes_of_an_old_owner_change_nothing,
    release_and_operators_free_items,
    incoming_cases_are_claimed_and_fenced,
    two_deliverers_deliver_each_item_once,
]


# ---- SQLite --------------------------------------------------------------------------


@pytest.fixture
async def sqlite_replica(tmp_path: Path) -> AsyncIterator[Replica]:
    """Stores on one SQLite file (as a node's worker processes open it)."""
    opened: list[StateStore] = []

    async def open_one() -> StateStore:
        store = await StateStore(tmp_path / "state.db").open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


class TestLeasesOnSqlite:
    """The claim semantics on SQLite: one writer per file, the same SQL."""

    @pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
    async def test_scenario(
        self, sqlite_replica: Replica, scenario: Callable[[Replica], Awaitable[None]]
    ) -> None:
        await scenario(sqlite_replica)

    async def test_a_start_clears_a_killed_process_leases(self, sqlite_replica: Replica) -> None:
        """One node holds an SQLite store: leases left at its start are a dead
        process's, cleared rather than waited out."""
        store = await sqlite_replica()
        await enqueue(store, item(1))
        await receive(store, incoming(1))
        now = time.time()
        await store.claim_outbox(now, 5, owner=A, lease_seconds=3600)
        await store.claim_incoming(
            "withdrawal", now=now, final=FINAL, limit=5, owner=A, lease_seconds=3600
        )
        assert await store.clear_abandoned_leases() == 2
        assert len(await store.claim_outbox(now, 5, owner=B, lease_seconds=10)) == 1

    def test_the_owner_is_made_once_per_process(self) -> None:
        owner = lease_owner("2")
        assert owner == lease_owner("2") != lease_owner("1")
        replica, pid, _ = owner.split("/")
        assert (replica, pid) == ("2", str(__import__("os").getpid()))
