"""The stores on PostgreSQL (gateway.storage.pgfile): a real server started by the
tests (tests/conftest.py), never a mock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.core.errors import StoreUnavailable
from gateway.storage.engines import store_location
from gateway.storage.messagelog import DuplicateNonce, LogEntry, MessageLog, reading
from gateway.storage.pgfile import placeholders
from gateway.storage.records import StoreOpenError, StoreVersionError
from gateway.storage.sql import Connection, display_url, is_database_url
from gateway.storage.state import StateStore
from gateway.testing.postgres import PostgresServer


def entry(i: int, *, peer: str = "320000", nonce: bytes = b"") -> LogEntry:
    return LogEntry("in", "request", f"m-{i}", "corr", peer, "svc", b"envelope %d" % i, nonce=nonce)


def test_the_url_and_the_sql_as_psycopg_reads_them() -> None:
    assert is_database_url("postgresql://yrd@db:5432/yrd")
    assert not is_database_url("var/310000")
    assert display_url("postgresql://yrd:secret@db/yrd") == "postgresql://yrd:***@db/yrd"
    assert display_url("postgresql://yrd@db/yrd") == "postgresql://yrd@db/yrd"
    # A password holding an @ is hidden whole; an @ after the host is not a user part.
    assert display_url("postgresql://yrd:p@ss@db/yrd") == "postgresql://yrd:***@db/yrd"
    assert display_url("postgresql://db/yrd?application_name=a@b") == (
        "postgresql://db/yrd?application_name=a@b"
    )
    assert store_location("postgresql://yrd@db/yrd", "messages.db") == "postgresql://yrd@db/yrd"
    assert placeholders("SELECT a FROM t WHERE b = ? AND c LIKE '5%'") == (
        "SELECT a FROM t WHERE b = %s AND c LIKE '5%%'"
    )


@pytest.mark.asyncio
async def test_two_writers_extend_one_chain(pg_url: str) -> None:
    """Two message logs on one database (two replicas) interleave their groups in
    one chain: sequence numbers unique and without gaps, the chain intact."""
    first = await MessageLog(pg_url, province="310000").open()
    second = await MessageLog(pg_url, province="310000").open()
    try:
        seqs = await asyncio.gather(
            *(log.append(entry(i)) for i in range(60) for log in (first, second))
        )
        assert sorted(seqs) == list(range(1, 121))
        report = await first.verify()
        assert report.intact, report.detail
        assert report.rows_checked == 120
    finally:
        await first.close()
        await second.close()


@pytest.mark.asyncio
async def test_a_nonce_is_caught_on_another_replica(pg_url: str) -> None:
    first = await MessageLog(pg_url, province="310000").open()
    second = await MessageLog(pg_url, province="310000").open()
    try:
        await first.append(entry(1, nonce=b"n" * 16))
        with pytest.raises(DuplicateNonce):
            await second.append(entry(2, nonce=b"n" * 16))
        assert await second.count() == 1
    finally:
        await first.close()
        await second.close()


@pytest.mark.asyncio
async def test_a_race_for_one_key_reruns_the_loser(pg_url: str) -> None:
    """Check-then-insert of one key through two replicas at once: one inserts, the
    other's unit of work is run again after the unique violation and sees the row."""
    stores = [await StateStore(pg_url).open(), await StateStore(pg_url).open()]

    def register(key: str) -> Callable[[Connection], str]:
        def op(db: Connection) -> str:
            if db.execute("SELECT 1 FROM check_ins WHERE check_in_id = ?", (key,)).fetchone():
                return "found"
            # Widen the window between the check and the insert.
            db.execute("SELECT pg_sleep(0.01)")
            db.execute(
                "INSERT INTO check_ins VALUES (?,?,?,?,?,?,?)",
                (key, "hotel", "330000", b"", "ref", datetime.now(UTC).isoformat(), "c"),
            )
            return "inserted"

        return op

    try:
        outcomes = await asyncio.gather(
            *(store.write(register(f"k{i}")) for i in range(20) for store in stores)
        )
        for i in range(20):
            assert sorted(outcomes[2 * i : 2 * i + 2]) == ["found", "inserted"]
        row = await stores[0].fetchone("SELECT COUNT(*) FROM check_ins")
        assert row == (20,)
    finally:
        for store in stores:
            await store.close()


@pytest.mark.asyncio
async def test_single_use_holds_across_replicas(pg_url: str) -> None:
    stores = [await StateStore(pg_url).open(), await StateStore(pg_url).open()]
    try:
        now = time.time()
        wins = await asyncio.gather(
            *(
                s.claim_token(f"t{i}", keep_until=now + 60, now=now)
                for i in range(30)
                for s in stores
            )
        )
        assert sum(wins) == 30
        assert all(wins[2 * i] != wins[2 * i + 1] for i in range(30))
    finally:
        for store in stores:
            await store.close()


@pytest.mark.asyncio
async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    store = await StateStore(pg_url).open()
    await store.write(
        lambda db: db.execute("UPDATE schema_versions SET version = 99 WHERE store = 'state'")
    )
    await store.close()
    with pytest.raises(StoreVersionError, match="newer than this gateway knows"):
        await StateStore(pg_url).open()


@pytest.mark.asyncio
async def test_reading_writes_nothing(pg_url: str) -> None:
    """``audit`` opens a log to read only: a database without one is refused, and
    nothing is created in it."""
    with pytest.raises(StoreOpenError, match="no message log in this database"):
        async with reading(pg_url):
            pass
    log = await MessageLog(pg_url, province="310000").open()
    await log.append(entry(1))
    await log.close()
    async with reading(pg_url) as read:
        assert (await read.verify()).intact
        assert await read.count() == 1


@pytest.mark.asyncio
async def test_a_lost_server_is_unavailable_then_recovers(
    pg_server_factory: Callable[[], PostgresServer],
) -> None:
    """The server dies under an open store: writes fail as StoreUnavailable (the
    node answers UNAVAILABLE, its health follows), never anything else; once the
    server is back, the writer connects again and the chain goes on intact."""
    server = pg_server_factory()
    url = server.create_database("faults")
    changes: list[bool] = []
    log = MessageLog(url, province="310000")
    log.on_writable = changes.append
    await log.open()
    state = await StateStore(url).open()
    try:
        assert await log.append(entry(1)) == 1
        server.kill()
        with pytest.raises(StoreUnavailable):
            await log.append(entry(2))
        with pytest.raises(StoreUnavailable):
            await state.claim_token("t", keep_until=time.time() + 60, now=time.time())
        with pytest.raises(StoreUnavailable):
            await state.outbox_stats()
        assert changes == [False]
        assert not await log.probe()
        server.restart()
        assert await log.probe()
        assert changes == [False, True]
        assert await log.append(entry(3)) == 2
        assert await state.claim_token("t", keep_until=time.time() + 60, now=time.time())
        report = await log.verify()
        assert report.intact
        assert report.rows_checked == 2
    finally:
        await log.close()
        await state.close()


@pytest.fixture
def pg_server_factory() -> Any:
    """A server of the test's own (one it may kill), stopped after it."""
    servers: list[PostgresServer] = []

    def make() -> PostgresServer:
        server = PostgresServer()
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.mark.asyncio
async def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    """Several replicas opening both stores on an empty database at once: the
    schema is created once, under its lock, and every store opens."""
    stores: list[StateStore | MessageLog] = []
    for _ in range(4):
        stores += [StateStore(pg_url), MessageLog(pg_url, province="310000")]
    opened = await asyncio.gather(*(store.open() for store in stores))
    try:
        state = opened[0]
        assert isinstance(state, StateStore)
        versions = await state.fetchall("SELECT store, version FROM schema_versions")
        assert sorted(store for store, _ in versions) == ["message_log", "state"]
    finally:
        for store in stores:
            await store.close()
