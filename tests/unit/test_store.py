"""The state store: grouped writes, isolation of failing writes, fresh reads."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.storage.groupcommit import (
    INSERT_PARAMETERS,
    INSERT_ROWS,
    GroupCommit,
    InsertRow,
    WriteOp,
    each_in_savepoint,
)
from gateway.storage.messagelog import MessageLog
from gateway.storage.records import NewOutgoingCase, StoreOpenError
from gateway.storage.sql import Connection
from gateway.storage.state import StateStore, StoreClosedError


async def insert(store: StateStore, key: str) -> str:
    def op(db: sqlite3.Connection) -> str:
        db.execute(
            "INSERT INTO check_ins (check_in_id, relying_party_id, issuer_province, guest,"
            " client_reference, recorded_at, correlation_id)"
            " VALUES (?, 'rp', '330000', x'00', '', '2026-01-01', 'c')",
            (key,),
        )
        return key

    return await store.write(op)


def outgoing(
    key: str, case_id: str, submitted_at: datetime = datetime(2027, 6, 1, tzinfo=UTC)
) -> NewOutgoingCase:
    """A withdrawal case as SubmitWithdrawal stores it."""
    return NewOutgoingCase(
        case_id=case_id,
        domain="withdrawal",
        idempotency_key=key,
        body_digest=b"digest",
        client_id="client",
        peer="330000",
        application=b"app",
        status=1,
        correlation_id="corr",
        submitted_at=submitted_at,
    )


async def check_as_stored(store: StateStore) -> None:
    """A new case as SubmitWithdrawal answers it (``as_stored``, no read) is
    the case the store gives back."""
    at = datetime(2027, 6, 1, 8, 30, 15, 123456, tzinfo=UTC)
    case = outgoing("key-1", "WD-310000-0123456789abcdef0123", at)
    await store.unit_of_work(lambda tx: tx.insert_outgoing(case))
    assert await store.outgoing_case(case.case_id, case.domain) == case.as_stored()


async def test_a_new_case_as_stored_is_what_the_store_reads_back(tmp_path: Path) -> None:
    async with StateStore(tmp_path / "state.db") as store:
        await check_as_stored(store)


class TestStateStore:
    """Writes are answered only once committed; reads see every answered write."""

    async def test_read_after_write_under_concurrent_reads(self, tmp_path: Path) -> None:
        """Each writer reads its own row back at once, while many readers interleave
        (half-read cursors once held the read snapshot open and hid new rows)."""
        async with StateStore(tmp_path / "state.db") as store:
            await asyncio.gather(*(insert(store, f"warm-{i}") for i in range(300)))

            async def reader() -> None:
                for _ in range(30):
                    await store.fetchall("SELECT check_in_id FROM check_ins")

            async def writer(i: int) -> None:
                key = await insert(store, f"k-{i}")
                assert await store.fetchone(
                    "SELECT check_in_id FROM check_ins WHERE check_in_id = ?", (key,)
                ) == (key,)

            await asyncio.gather(*(reader() for _ in range(8)), *(writer(i) for i in range(200)))
            assert store.commits < store.writes  # writes were grouped into fewer commits

    async def test_a_failing_write_rolls_back_alone(self, tmp_path: Path) -> None:
        async with StateStore(tmp_path / "state.db") as store:
            await insert(store, "dup")
            results = await asyncio.gather(
                insert(store, "a"),
                insert(store, "dup"),
                insert(store, "b"),
                return_exceptions=True,
            )
            assert results[0] == "a"
            assert isinstance(results[1], sqlite3.IntegrityError)
            assert results[2] == "b"
            rows = await store.fetchall("SELECT check_in_id FROM check_ins ORDER BY 1")
            assert rows == [("a",), ("b",), ("dup",)]

    async def test_writes_survive_reopen_and_close_is_idempotent(self, tmp_path: Path) -> None:
        store = await StateStore(tmp_path / "state.db").open()
        await insert(store, "kept")
        await store.close()
        await store.close()
        with pytest.raises(StoreClosedError):
            await insert(store, "late")
        async with StateStore(tmp_path / "state.db") as again:
            assert await again.fetchone("SELECT COUNT(*) FROM check_ins") == (1,)


def store_threads() -> list[str]:
    return [
        t.name for t in threading.enumerate() if t.name.startswith(("state-store", "message-log"))
    ]


@pytest.mark.parametrize("kind", [StateStore, MessageLog])
async def test_a_failed_open_leaves_nothing_open(
    tmp_path: Path, kind: type[StateStore | MessageLog]
) -> None:
    """A file that cannot be opened (here: a folder in its place) is StoreOpenError,
    and the writer thread started for it is gone again."""
    (tmp_path / "store.db").mkdir()
    before = store_threads()
    store = kind(tmp_path / "store.db")
    with pytest.raises(StoreOpenError):
        await store.open()
    assert store_threads() == before
    await store.close()  # still safe


class TestGroupsCommitAsOne:
    """gateway.storage.groupcommit.each_in_savepoint, through a real GroupCommit: a
    group whose ops all succeed runs with no savepoint and its row inserts into
    one table in one statement (each statement the writer thread runs is a
    hand-off of the interpreter lock with the event loop); a group where one
    fails is rolled back whole and written again with a savepoint per op, and
    only the failing op's writes are lost."""

    @staticmethod
    async def run(ops: list[WriteOp]) -> tuple[list[object], list[str], sqlite3.Connection]:
        """``ops`` written as one group by a real GroupCommit: each op's value or
        exception, the statements run, and the connection."""
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
        conn.execute("CREATE TABLE u (k TEXT)")
        conn.execute("CREATE TABLE w (a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, x)")
        conn.execute("INSERT INTO t VALUES ('dup')")
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        executor = ThreadPoolExecutor(1)
        writer = GroupCommit("test", conn, executor, each_in_savepoint, batch_max=1000)
        writer.start()
        try:
            # Queued in one loop turn: the writer takes them as one group.
            outcomes = await asyncio.gather(
                *(writer.submit(op) for op in ops), return_exceptions=True
            )
            assert writer.commits == 1
        finally:
            await writer.close()
            executor.shutdown()
        return list(outcomes), statements, conn

    @staticmethod
    def count(table: str) -> WriteOp:
        def op(conn: Connection) -> int:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608

        return op

    async def test_a_group_that_succeeds_takes_no_savepoint_and_one_insert_per_table(
        self,
    ) -> None:
        ops: list[WriteOp] = [
            *(InsertRow("u", (f"a{i}",)) for i in range(5)),
            self.count("u"),  # the rows before it are written first
            self.insert("b"),
            InsertRow("u", ("c",)),
            InsertRow("t", ("d",)),
        ]
        outcomes, statements, conn = await self.run(ops)
        assert outcomes == [None] * 5 + [5, "b", None, None]
        assert statements == [
            "BEGIN IMMEDIATE",
            "INSERT INTO u VALUES ('a0'),('a1'),('a2'),('a3'),('a4')",
            "SELECT COUNT(*) FROM u",
            "INSERT INTO t VALUES ('b')",
            "INSERT INTO u VALUES ('c')",
            "INSERT INTO t VALUES ('d')",
            "COMMIT",
        ]
        assert conn.execute("SELECT COUNT(*) FROM u").fetchone() == (6,)

    async def test_one_failing_op_rolls_the_group_back_and_each_runs_alone(self) -> None:
        outcomes, statements, conn = await self.run(
            [self.insert("a"), InsertRow("t", ("dup",)), InsertRow("u", ("b",)), self.insert("c")]
        )
        assert outcomes[0] == "a"
        assert isinstance(outcomes[1], sqlite3.IntegrityError)
        assert outcomes[2:] == [None, "c"]
        assert statements.count("BEGIN IMMEDIATE") == 2
        assert "ROLLBACK" in statements
        assert statements.count("SAVEPOINT op") == 4
        assert statements.count("ROLLBACK TO op") == 1
        assert conn.execute("SELECT k FROM t ORDER BY k").fetchall() == [("a",), ("c",), ("dup",)]
        assert conn.execute("SELECT k FROM u").fetchall() == [("b",)]

    async def test_a_lone_op_takes_no_savepoint(self) -> None:
        outcomes, statements, _ = await self.run([self.insert("a")])
        assert outcomes == ["a"]
        assert statements == ["BEGIN IMMEDIATE", "INSERT INTO t VALUES ('a')", "COMMIT"]

    async def test_a_multi_row_insert_stays_within_the_rows_and_parameters(self) -> None:
        """At most INSERT_ROWS rows, and INSERT_PARAMETERS values, per statement."""
        narrow = [InsertRow("u", (str(i),)) for i in range(INSERT_ROWS + 1)]
        wide_rows = INSERT_PARAMETERS // 20
        wide = [InsertRow("w", tuple(range(20))) for _ in range(wide_rows + 1)]
        outcomes, statements, conn = await self.run([*narrow, *wide])
        assert outcomes == [None] * (len(narrow) + len(wide))
        inserts = [s.count("(") for s in statements if s.startswith("INSERT")]
        assert inserts == [INSERT_ROWS, 1, wide_rows, 1]
        assert conn.execute("SELECT COUNT(*) FROM w").fetchone() == (wide_rows + 1,)

    @staticmethod
    def insert(key: str) -> WriteOp:
        def op(conn: Connection) -> str:
            conn.execute("INSERT INTO t VALUES (?)", (key,))
            return key

        return op
