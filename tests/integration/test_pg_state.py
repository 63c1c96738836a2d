"""Several replicas of a province on one PostgreSQL state store: the claim
semantics of tests/unit/test_leases.py, and what two replicas racing see --
a unique key taken by one is found by the other (its unit of work runs again),
a token is answered for once, each outbox item is claimed by one claimer.

Each "replica" is its own StateStore (its own writer connection) on the test's
database, so their transactions really interleave on the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.storage.state import StateStore
from tests.unit.test_leases import FINAL, SCENARIOS, Replica, enqueue, incoming, item, receive
from tests.unit.test_store import check_as_stored, outgoing


@pytest.fixture
async def pg_replica(pg_url: str) -> AsyncIterator[Replica]:
    opened: list[StateStore] = []

    async def open_one() -> StateStore:
        store = await StateStore(pg_url).open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


class TestLeasesOnPostgres:
    """The same claim semantics as on SQLite, between replicas."""

    @pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
    async def test_scenario(
        self, pg_replica: Replica, scenario: Callable[[Replica], Awaitable[None]]
    ) -> None:
        await scenario(pg_replica)

    async def test_a_start_leaves_the_other_replicas_leases(self, pg_replica: Replica) -> None:
        store = await pg_replica()
        await enqueue(store, item(1))
        await store.claim_outbox(time.time(), 5, owner="2/1/x", lease_seconds=3600)
        assert await store.clear_abandoned_leases() == 0
        assert await store.claim_outbox(time.time(), 5, owner="1/1/y", lease_seconds=10) == []


async def test_a_new_case_as_stored_is_what_postgres_reads_back(pg_replica: Replica) -> None:
    await check_as_stored(await pg_replica())


class TestReplicasRace:
    """Uniqueness holds across replicas by constraint; the loser sees the winner's row."""

    async def test_one_idempotency_key_through_two_replicas_is_one_case(
        self, pg_replica: Replica
    ) -> None:
        one, two = await pg_replica(), await pg_replica()
        runs: list[str] = []
        both_read = threading.Barrier(2)

        def submit(case_id: str) -> Callable[[Any], str]:
            def work(tx: Any) -> str:
                existing = tx.outgoing_by_key("withdrawal", "key-1")
                runs.append(case_id)
                if existing is not None:
                    return str(existing.case)
                # Both replicas have read "no such case" before either writes
                # (the unit that runs again, the loser's, does not wait).
                if len(runs) <= 2:
                    both_read.wait(10)
                tx.insert_outgoing(outgoing("key-1", case_id))
                tx.enqueue(item(int(case_id[-1])))
                return case_id

            return work

        got = await asyncio.gather(
            one.unit_of_work(submit("WD-310000-1")), two.unit_of_work(submit("WD-310000-2"))
        )
        assert got[0] == got[1]  # the second unit ran again and found the first's case
        assert len(runs) == 3
        assert await one.fetchone("SELECT COUNT(*) FROM outgoing_cases") == (1,)
        assert (await one.outbox_stats())[0] == 1  # its outbox item rolled back with it

    async def test_a_late_status_never_moves_a_case_back(self, pg_replica: Replica) -> None:
        """Two replicas apply two status updates of one case at once: the one that
        read the case before the other committed PAID does not write APPROVED
        over it (the UPDATE decides on the row as committed, not as read)."""
        one, two = await pg_replica(), await pg_replica()
        await one.unit_of_work(lambda tx: tx.insert_outgoing(outgoing("key-1", "WD-1")))
        approved, paid, rejected = 3, 4, 5
        at = datetime(2027, 6, 1, tzinfo=UTC)

        # In this order, whatever the machine's load: the late replica reads the
        # case, the early one reads it and commits PAID, then the late one writes.
        late_read = threading.Event()
        early_committed = threading.Event()

        def update(status: int, unless: set[int]) -> Callable[[Any], bool]:
            def work(tx: Any) -> bool:
                return bool(
                    tx.outgoing_status(
                        "WD-1",
                        status=status,
                        reason="",
                        amount_fen=100,
                        remote_reference="JS-1",
                        at=at,
                        unless=unless,
                    )
                )

            return work

        def late_work(tx: Any) -> bool:
            assert tx.outgoing_by_key("withdrawal", "key-1").status == 1
            late_read.set()
            assert early_committed.wait(10)  # read before the other's commit, write after
            return update(approved, {approved, paid, rejected})(tx)

        def early_work(tx: Any) -> bool:
            assert late_read.wait(10)
            assert tx.outgoing_by_key("withdrawal", "key-1").status == 1
            return update(paid, {paid, rejected})(tx)

        async def early_then_say_so() -> bool:
            try:
                return await two.unit_of_work(early_work)
            finally:
                early_committed.set()

        late, early = await asyncio.gather(one.unit_of_work(late_work), early_then_say_so())
        assert (early, late) == (True, False)
        assert await one.fetchone("SELECT status FROM outgoing_cases") == (paid,)

    async def test_a_token_claimed_on_two_replicas_at_once_is_answered_once(
        self, pg_replica: Replica
    ) -> None:
        one, two = await pg_replica(), await pg_replica()
        now = time.time()
        for n in range(20):
            token = f"tok-{n}"
            results = await asyncio.gather(
                one.claim_token(token, keep_until=now + 60, now=now),
                two.claim_token(token, keep_until=now + 60, now=now),
            )
            assert sorted(results) == [False, True], token

    async def test_one_retried_check_in_on_two_replicas_at_once_is_recorded_once(
        self, pg_replica: Replica
    ) -> None:
        one, two = await pg_replica(), await pg_replica()
        now = datetime.now(UTC)

        async def record(store: StateStore, check_in_id: str, retry_key: str) -> str:
            return await store.record_check_in(
                check_in_id=check_in_id,
                relying_party_id="hotel-310000-001",
                issuer_province="330000",
                guest=b"",
                client_reference="",
                recorded_at=now,
                correlation_id="c",
                retry_key=retry_key,
            )

        for n in range(20):
            key = f"{n:064x}"
            ids = await asyncio.gather(
                record(one, f"CI-310000-a{n:015x}", key), record(two, f"CI-310000-b{n:015x}", key)
            )
            assert ids[0] == ids[1], n  # the loser found the winner's row
        assert await one.fetchone("SELECT COUNT(*) FROM check_ins") == (20,)
        # Check-ins without a key are never merged.
        await asyncio.gather(record(one, "CI-310000-c1", ""), record(two, "CI-310000-c2", ""))
        assert await one.fetchone("SELECT COUNT(*) FROM check_ins") == (22,)

    async def test_concurrent_claimers_each_item_once(self, pg_replica: Replica) -> None:
        replicas = [await pg_replica() for _ in range(3)]
        total = 400
        await enqueue(replicas[0], *(item(n, peer=f"3{n % 4}0000") for n in range(total)))
        claimed: dict[str, list[int]] = {}

        async def claimer(store: StateStore, owner: str) -> None:
            mine = claimed.setdefault(owner, [])
            while True:
                got = await store.claim_outbox(
                    time.time(), 7, owner=owner, lease_seconds=600, skip_ids=tuple(mine)
                )
                if not got:
                    return
                mine.extend(i.id for i in got)

        await asyncio.gather(
            *(claimer(store, f"{r}/{k}/x") for r, store in enumerate(replicas) for k in range(2))
        )
        every = [i for ids in claimed.values() for i in ids]
        assert len(every) == total
        assert len(set(every)) == total  # none twice
        assert sum(1 for ids in claimed.values() if ids) >= 2  # they did share the work
        owners = await replicas[0].fetchall(
            "SELECT lease_owner, COUNT(*) FROM outbox GROUP BY lease_owner"
        )
        assert {str(o): int(c) for o, c in owners} == {
            o: len(ids) for o, ids in claimed.items() if ids
        }

    async def test_a_dead_replicas_lease_expires_and_is_taken_over(
        self, pg_replica: Replica
    ) -> None:
        one, two = await pg_replica(), await pg_replica()
        await enqueue(one, item(1))
        (mine,) = await one.claim_outbox(time.time(), 5, owner="1/1/x", lease_seconds=0.5)
        await one.close()  # the replica dies (its lease is left)
        assert await two.claim_outbox(time.time(), 5, owner="2/1/y", lease_seconds=10) == []
        await asyncio.sleep(0.6)
        (taken,) = await two.claim_outbox(time.time(), 5, owner="2/1/y", lease_seconds=10)
        assert taken.id == mine.id

    async def test_one_delivery_through_two_replicas_is_one_incoming_case(
        self, pg_replica: Replica
    ) -> None:
        """(domain, sender, idempotency key) is unique: a duplicate delivery that
        reaches the other replica at the same moment finds the first's case."""
        one, two = await pg_replica(), await pg_replica()
        reads: list[int] = []
        both_read = threading.Barrier(2)

        def deliver(n: int) -> Callable[[Any], str]:
            case = incoming(n)

            def work(tx: Any) -> str:
                existing = tx.incoming_by_key("withdrawal", "320000", "key-1")
                reads.append(n)
                if existing is not None:
                    return str(existing.case)
                if len(reads) <= 2:  # both have read "no such case" before either writes
                    both_read.wait(10)
                tx.insert_incoming(dataclasses.replace(case, idempotency_key="key-1"))
                return case.reference

            return work

        got = await asyncio.gather(one.unit_of_work(deliver(1)), two.unit_of_work(deliver(2)))
        assert got[0] == got[1]
        assert len(reads) == 3  # the loser's unit ran again and found the first's case
        assert await one.fetchone("SELECT COUNT(*) FROM incoming_cases") == (1,)

    async def test_concurrent_processors_each_case_once(self, pg_replica: Replica) -> None:
        replicas = [await pg_replica() for _ in range(3)]
        total = 200
        await receive(replicas[0], *(incoming(n) for n in range(total)))
        claimed: dict[str, list[str]] = {}

        async def claimer(store: StateStore, owner: str) -> None:
            mine = claimed.setdefault(owner, [])
            while True:
                got = await store.claim_incoming(
                    "withdrawal",
                    now=time.time(),
                    final=FINAL,
                    limit=5,
                    owner=owner,
                    lease_seconds=600,
                    skip=tuple(mine),
                )
                if not got:
                    return
                mine.extend(w.reference for w in got)

        await asyncio.gather(
            *(claimer(store, f"{r}/{k}/x") for r, store in enumerate(replicas) for k in range(2))
        )
        every = [r for refs in claimed.values() for r in refs]
        assert len(every) == len(set(every)) == total
