"""The one rule of what ends an exchange, and stores that cannot write.

Only a peer's signed decision ends an exchange; every fault is retried. A store
that cannot write raises StoreUnavailable (UNAVAILABLE, retryable), tells its
node, and recovers at the next write that succeeds; the outbox keeps the next
attempt in memory meanwhile instead of retrying in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import structlog

from gateway.core.errors import (
    DECISION_CODES,
    GatewayError,
    InvalidArgument,
    PeerDown,
    PeerUnavailable,
    RemoteError,
    ResourceExhausted,
    StoreUnavailable,
    ends_exchange,
)
from gateway.federation.client import FederationClient
from gateway.federation.outbox import Outbox, OutboxRoute
from gateway.storage.groupcommit import rollback
from gateway.storage.messagelog import LogEntry, MessageLog
from gateway.storage.state import PARKED, OutboxItem, StateStore
from tests.unit.test_store import insert
from yrd.federation.v1 import federation_pb2

DECISIONS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
}


class TestEndsExchange:
    """True only for a signed RemoteError with a decision code."""

    @pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
    def test_every_status_code_signed_and_unsigned(self, code: grpc.StatusCode) -> None:
        assert ends_exchange(RemoteError(code, "x", signed=True)) is (code in DECISIONS)
        assert ends_exchange(RemoteError(code, "x", signed=False)) is False
        assert ends_exchange(RemoteError(code, "x")) is False  # unsigned by default

    def test_decision_codes_are_the_contract(self) -> None:
        assert set(DECISION_CODES) == DECISIONS

    @pytest.mark.parametrize(
        "exc",
        [
            StoreUnavailable("disk full"),
            PeerUnavailable("down"),
            PeerDown("breaker open"),
            ResourceExhausted("busy"),
            InvalidArgument("field", "a local refusal, not the peer's"),
            GatewayError("internal"),
            sqlite3.OperationalError("disk I/O error"),
            OSError(27, "File too large"),
            ValueError("a bug"),
        ],
        ids=lambda e: type(e).__name__,
    )
    def test_local_and_transport_errors_never_end_it(self, exc: BaseException) -> None:
        assert ends_exchange(exc) is False

    def test_store_unavailable_is_a_retryable_unavailable(self) -> None:
        exc = StoreUnavailable("state store cannot write")
        assert exc.code == grpc.StatusCode.UNAVAILABLE
        assert exc.retryable
        assert exc.retry_after > 0


def read_only(store: StateStore | MessageLog, on: bool) -> None:
    """Make the store's writer connection refuse writes (as a read-only file would)."""
    conn = cast(sqlite3.Connection, store._file.conn)
    conn.execute(f"PRAGMA query_only = {int(on)}")


class TestStoreCannotWrite:
    """A write that the file refuses is StoreUnavailable; the store says so, then recovers."""

    async def test_state_store(self, tmp_path: Path) -> None:
        heard: list[bool] = []
        async with StateStore(tmp_path / "state.db", on_writable=heard.append) as store:
            await insert(store, "a")
            read_only(store, True)
            with pytest.raises(StoreUnavailable, match="cannot write"):
                await insert(store, "b")
            with pytest.raises(StoreUnavailable):
                await insert(store, "c")
            assert heard == [False]  # told once, not at every failure
            read_only(store, False)
            await insert(store, "d")
            assert heard == [False, True]
            rows = await store.fetchall("SELECT check_in_id FROM check_ins ORDER BY 1")
            assert rows == [("a",), ("d",)]

    async def test_a_probe_finds_the_store_writable_again(self, tmp_path: Path) -> None:
        """A node with no traffic learns that its store recovered by probing it."""
        heard: list[bool] = []
        async with StateStore(tmp_path / "state.db", on_writable=heard.append) as store:
            read_only(store, True)
            with pytest.raises(StoreUnavailable):
                await insert(store, "a")
            assert not await store.probe()
            read_only(store, False)
            assert await store.probe()
            assert heard == [False, True]
        async with MessageLog(tmp_path / "messages.db") as log:
            log.on_writable = heard.append
            read_only(log, True)
            with pytest.raises(StoreUnavailable):
                await log.append(LogEntry("out", "request", "m1", "c1", "320000", "s", b"e"))
            assert not await log.probe()
            read_only(log, False)
            assert await log.probe()
            assert heard == [False, True, False, True]
            assert await log.count() == 0  # the probe is outside the chain

    async def test_a_constraint_is_not_a_store_failure(self, tmp_path: Path) -> None:
        heard: list[bool] = []
        async with StateStore(tmp_path / "state.db", on_writable=heard.append) as store:
            await insert(store, "a")
            with pytest.raises(sqlite3.IntegrityError):
                await insert(store, "a")
            assert heard == []

    async def test_message_log(self, tmp_path: Path) -> None:
        heard: list[bool] = []
        async with MessageLog(tmp_path / "messages.db") as log:
            log.on_writable = heard.append
            entry = LogEntry("out", "request", "m1", "c1", "320000", "s", b"e")
            await log.append(entry)
            read_only(log, True)
            with pytest.raises(StoreUnavailable, match="cannot write"):
                await log.append(entry)
            read_only(log, False)
            assert await log.append(entry) == 2  # the chain goes on where it stopped
            assert heard == [False, True]
            assert (await log.verify()).intact

    def test_rollback_after_the_transaction_is_gone_does_not_raise(self, tmp_path: Path) -> None:
        """After a failed COMMIT SQLite may have ended the transaction itself: the
        ROLLBACK must not raise "no transaction is active" over the real error."""
        conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
        assert not conn.in_transaction
        rollback(conn)  # no "cannot rollback - no transaction is active"
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE t (x)")
        rollback(conn)
        assert not conn.in_transaction
        conn.close()

    async def test_operator_action_is_a_chained_row(self, tmp_path: Path) -> None:
        async with MessageLog(
            tmp_path / "messages.db", head_signer=lambda b: ("k1", b"sig")
        ) as log:
            seq = await log.append_operator_action(
                action="retry", subject="m-1", operator="alice", reason="peer fixed"
            )
            rows = [row async for row in log.rows()]
            assert [r.seq for r in rows] == [seq]
            assert rows[0].entry.service == "operator.retry"
            assert (rows[0].entry.direction, rows[0].entry.kind) == ("local", "operator")
            assert b'"operator": "alice"' in rows[0].entry.envelope
            assert (await log.verify()).intact


class FailingClient:
    """A federation client whose peer always fails with ``error`` (a fake of our own
    layer, not of gRPC), counting the attempts."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.attempts = 0
        #: Run at the first call (a fault starting mid-delivery).
        self.first_call: Callable[[], None] | None = None

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        self.attempts += 1
        if self.first_call is not None:
            first, self.first_call = self.first_call, None
            first()
        raise self.error


def enqueue(store: StateStore, created_at: float) -> Any:
    item = OutboxItem(
        0, "320000", "svc", "msg-1", "c", "k", b"", "CASE-1", 0, time.time(), created_at
    )
    return store.unit_of_work(lambda tx: tx.enqueue(item))


class TestOutboxWhenTheStoreFails:
    """The next attempt's time is kept in memory: no retry storm, no lost task errors."""

    async def test_backoff_holds_while_writes_fail(self, tmp_path: Path) -> None:
        """The store stops writing once the item is claimed (a store that cannot
        write cannot claim new work): the claimed item is retried from memory."""
        loop = asyncio.get_running_loop()
        unretrieved: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
        refused: list[str] = []
        route = OutboxRoute(
            federation_pb2.DeliveryAck,
            lambda db, item, ack: None,
            lambda db, item, exc: refused.append(item.subject),
        )
        client = FailingClient(RemoteError(grpc.StatusCode.INTERNAL, "disk", signed=True))
        async with StateStore(tmp_path / "state.db") as store:
            await enqueue(store, time.time())
            client.first_call = lambda: read_only(store, True)
            outbox = Outbox(
                store,
                cast(FederationClient, client),
                {"svc": route},
                base_backoff=0.2,
                max_backoff=5.0,
            )
            async with outbox:
                await asyncio.sleep(1.5)
            # 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.8-1.6 s: a handful, not hundreds.
            assert 2 <= client.attempts <= 6, client.attempts
            read_only(store, False)
        assert refused == []  # a signed INTERNAL is a fault, not a refusal
        assert unretrieved == []

    async def test_a_signed_decision_ends_it_and_a_signed_fault_does_not(
        self, tmp_path: Path
    ) -> None:
        refused: list[str] = []
        route = OutboxRoute(
            federation_pb2.DeliveryAck,
            lambda db, item, ack: None,
            lambda db, item, exc: refused.append(item.subject),
        )
        async with StateStore(tmp_path / "state.db") as store:
            await enqueue(store, time.time())
            fault = FailingClient(RemoteError(grpc.StatusCode.UNAVAILABLE, "x", signed=True))
            async with Outbox(store, cast(FederationClient, fault), {"svc": route}):
                await asyncio.sleep(0.3)
            assert refused == []
            assert fault.attempts >= 1
            assert len(await store.outbox_entries()) == 1
            decision = FailingClient(
                RemoteError(grpc.StatusCode.FAILED_PRECONDITION, "no", signed=True)
            )
            await store.set_outbox_state(1, "pending", now=0)  # no-op: it is pending
            await store.write(
                lambda db: db.execute("UPDATE outbox SET next_attempt_at = 0").rowcount
            )
            async with Outbox(store, cast(FederationClient, decision), {"svc": route}):
                await asyncio.sleep(0.3)
            assert refused == ["CASE-1"]
            assert await store.outbox_entries() == []

    async def test_a_refusal_is_logged_once_when_its_unit_runs_twice(self, tmp_path: Path) -> None:
        """A unit of work may run twice (its commit group is written again when
        another unit of it fails): the route's refusal line is written once,
        after the commit, at the route's level; the callbacks log nothing."""
        route = OutboxRoute(
            federation_pb2.DeliveryAck,
            lambda db, item, ack: None,
            lambda db, item, exc: None,
            refused_event="status update refused by the submitting node",
            refused_level="error",
        )

        class RunsTwice:
            """The store, each unit of work run once and rolled back, then again."""

            def __init__(self, store: StateStore) -> None:
                self._store = store

            def __getattr__(self, name: str) -> Any:
                return getattr(self._store, name)

            async def unit_of_work(self, work: Callable[[Any], Any]) -> Any:
                class Again(Exception):
                    pass

                def first(tx: Any) -> Any:
                    work(tx)
                    raise Again

                with contextlib.suppress(Again):
                    await self._store.unit_of_work(first)
                return await self._store.unit_of_work(work)

        decision = FailingClient(
            RemoteError(grpc.StatusCode.FAILED_PRECONDITION, "no", signed=True)
        )
        async with StateStore(tmp_path / "state.db") as store:
            await enqueue(store, time.time())
            with structlog.testing.capture_logs() as logs:
                async with Outbox(
                    cast(StateStore, RunsTwice(store)),
                    cast(FederationClient, decision),
                    {"svc": route},
                ):
                    await asyncio.sleep(0.3)
            assert await store.outbox_entries() == []
        refused = [line for line in logs if line["event"] == route.refused_event]
        assert len(refused) == 1, logs
        assert refused[0]["log_level"] == "error"
        assert (refused[0]["peer"], refused[0]["code"]) == ("320000", "FAILED_PRECONDITION")

    async def test_parked_past_park_after_and_retried_by_an_operator(self, tmp_path: Path) -> None:
        route = OutboxRoute(
            federation_pb2.DeliveryAck, lambda db, item, ack: None, lambda db, item, exc: None
        )
        client = FailingClient(PeerUnavailable("province 320000 unavailable"))
        async with StateStore(tmp_path / "state.db") as store:
            await enqueue(store, time.time() - 10)
            async with Outbox(store, cast(FederationClient, client), {"svc": route}, park_after=5):
                await asyncio.sleep(0.5)
            attempts = client.attempts
            assert attempts == 1  # parked at its first failure past the age: not tried again
            (entry,) = await store.outbox_entries(state=PARKED)
            assert entry.last_error.startswith("UNAVAILABLE: province 320000 unavailable")
            assert entry.parked_at is not None
            assert await store.set_outbox_state(entry.id, "pending", now=time.time())
            (entry,) = await store.outbox_entries()
            assert entry.state == "pending"
            assert entry.parked_at is None
            assert not await store.set_outbox_state(entry.id, "pending", now=time.time())
            # A retried item that fails again gets a whole park_after before it is
            # parked again (its age counts from the operator's retry).
            async with Outbox(store, cast(FederationClient, client), {"svc": route}, park_after=5):
                await asyncio.sleep(0.5)
            assert client.attempts > attempts
            (entry,) = await store.outbox_entries()
            assert entry.state == "pending"
