"""The message log: append-only, hash-chained, and every edit or deletion detected."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.clock import FrozenClock
from gateway.storage.messagelog import (
    ANSWERS_LOOKED_UP,
    GENESIS,
    LogEntry,
    LoggedRow,
    MessageLog,
    MessageLogClosed,
    reading,
    row_hash,
    verify_file,
)
from gateway.storage.records import StoreOpenError, StoreVersionError
from tests.unit.conftest import JS, NOW, SH, ZJ

#: Longest a single append may take here before we call it hung.
APPEND_TIMEOUT = 5.0


def entry(n: int, *, peer: str = JS, envelope: bytes | None = None) -> LogEntry:
    return LogEntry(
        direction="out" if n % 2 else "in",
        kind="request" if n % 3 else "response",
        message_id=f"00000000-0000-4000-8000-{n:012d}",
        correlation_id=f"corr-{n // 2}",
        peer=peer,
        service="identity.CheckCredential",
        envelope=envelope if envelope is not None else f"envelope-{n}".encode(),
    )


async def append(log: MessageLog, item: LogEntry) -> int:
    return await asyncio.wait_for(log.append(item), APPEND_TIMEOUT)


async def all_rows(log: MessageLog) -> list[LoggedRow]:
    return [row async for row in log.rows()]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "messages.db"


@pytest.fixture
async def log(db_path: Path) -> AsyncIterator[MessageLog]:
    async with MessageLog(db_path, clock=FrozenClock(NOW)) as opened:
        yield opened


async def filled(db_path: Path, count: int) -> None:
    """Write ``count`` rows to a log at ``db_path``, one commit each, and close it."""
    clock = FrozenClock(NOW)
    async with MessageLog(db_path, clock=clock) as fresh:
        for n in range(1, count + 1):
            await append(fresh, entry(n))
            clock.advance(timedelta(seconds=1))


class TestAppend:
    """An append returns the row's sequence number once the row is committed, and
    the row reads back exactly as given, chained to the one before."""

    async def test_sequence_numbers_start_at_one_and_count_up(self, log: MessageLog) -> None:
        assert [await append(log, entry(n)) for n in range(1, 6)] == [1, 2, 3, 4, 5]
        assert await log.count() == 5

    async def test_rows_read_back_as_appended_and_chained(self, log: MessageLog) -> None:
        entries = [entry(1), entry(2, peer=ZJ, envelope=b"\x00\xff" * 100), entry(3, peer=SH)]
        for item in entries:
            await append(log, item)

        rows = await all_rows(log)

        assert [row.entry for row in rows] == entries
        assert [row.seq for row in rows] == [1, 2, 3]
        assert rows[0].prev_hash == GENESIS
        for previous, row in itertools.pairwise(rows):
            assert row.prev_hash == previous.row_hash
        for row in rows:
            assert row.logged_at == NOW.isoformat()
            assert row.row_hash == row_hash(row.prev_hash, row.seq, row.logged_at, row.entry)

    async def test_a_returned_row_is_already_committed(
        self, log: MessageLog, db_path: Path
    ) -> None:
        seq = await append(log, entry(1))
        # Another connection (another process, say) sees the row at once.
        with contextlib.closing(sqlite3.connect(db_path)) as other:
            found = other.execute(
                "SELECT message_id FROM message_log WHERE seq = ?", (seq,)
            ).fetchone()
        assert found == (entry(1).message_id,)

    async def test_rows_by_message_id(self, log: MessageLog) -> None:
        for n in range(1, 4):
            await append(log, entry(n))
        rows = [row async for row in log.rows(message_id=entry(2).message_id)]
        assert [row.seq for row in rows] == [2]

    async def test_the_file_is_in_wal_mode(self, log: MessageLog, db_path: Path) -> None:
        await append(log, entry(1))
        with contextlib.closing(sqlite3.connect(db_path)) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


class TestConcurrentAppends:
    """Many appends at once each get a distinct sequence number, the numbers are
    consecutive, every row is there and the chain is intact; commits are grouped."""

    async def test_two_hundred_at_once(self, log: MessageLog) -> None:
        entries = [entry(n) for n in range(1, 201)]

        seqs = await asyncio.wait_for(
            asyncio.gather(*(log.append(item) for item in entries)), APPEND_TIMEOUT * 4
        )

        assert sorted(seqs) == list(range(1, 201))
        assert await log.count() == 200
        rows = await all_rows(log)
        by_seq = {row.seq: row.entry for row in rows}
        assert all(by_seq[seq] == item for seq, item in zip(seqs, entries, strict=True))
        report = await log.verify()
        assert report.intact, report.detail
        assert report.rows_checked == 200
        assert report.head_hash == rows[-1].row_hash
        assert log.rows_written == 200
        assert log.commits < 200, "rows waiting together should share a commit"

    async def test_batches_never_exceed_batch_max(self, db_path: Path) -> None:
        async with MessageLog(db_path, batch_max=7) as small:
            await asyncio.gather(*(small.append(entry(n)) for n in range(1, 51)))
            assert small.commits >= 50 / 7
            assert (await small.verify()).intact


class TestReopen:
    """A closed log reopened continues the same chain where it stopped."""

    async def test_continues_sequence_and_chain(self, db_path: Path) -> None:
        await filled(db_path, 3)

        async with MessageLog(db_path) as reopened:
            assert await append(reopened, entry(4)) == 4
            rows = await all_rows(reopened)
            assert rows[3].prev_hash == rows[2].row_hash
            report = await reopened.verify()
        assert report.intact, report.detail
        assert report.rows_checked == 4

    async def test_reopening_an_empty_log_starts_at_genesis(self, db_path: Path) -> None:
        async with MessageLog(db_path):
            pass
        async with MessageLog(db_path) as reopened:
            assert await append(reopened, entry(1)) == 1
            assert (await all_rows(reopened))[0].prev_hash == GENESIS

    async def test_creates_missing_folders(self, tmp_path: Path) -> None:
        path = tmp_path / "a" / "b" / "messages.db"
        async with MessageLog(path) as fresh:
            await append(fresh, entry(1))
        assert path.exists()


Tamper = Callable[[sqlite3.Connection], None]

_CONTENT = (
    "logged_at, direction, kind, message_id, correlation_id, peer, service, envelope,"
    " prev_hash, row_hash"
)


def _swap_rows(a: int, b: int) -> Tamper:
    def swap(db: sqlite3.Connection) -> None:
        select = f"SELECT {_CONTENT} FROM message_log WHERE seq = ?"  # noqa: S608 - constant columns
        row_a = db.execute(select, (a,)).fetchone()
        row_b = db.execute(select, (b,)).fetchone()
        assignments = ", ".join(f"{column.strip()} = ?" for column in _CONTENT.split(","))
        db.execute(f"UPDATE message_log SET {assignments} WHERE seq = ?", (*row_b, a))  # noqa: S608 - column names are constants
        db.execute(f"UPDATE message_log SET {assignments} WHERE seq = ?", (*row_a, b))  # noqa: S608 - column names are constants

    return swap


def _swap_contents_only(a: int, b: int) -> Tamper:
    """Swap what two rows say, leaving each row's hashes in place."""

    def swap(db: sqlite3.Connection) -> None:
        columns = "direction, kind, message_id, correlation_id, peer, service, envelope"
        row_a = db.execute(f"SELECT {columns} FROM message_log WHERE seq = ?", (a,)).fetchone()  # noqa: S608 - constant column list
        row_b = db.execute(f"SELECT {columns} FROM message_log WHERE seq = ?", (b,)).fetchone()  # noqa: S608 - constant column list
        assignments = ", ".join(f"{column.strip()} = ?" for column in columns.split(","))
        db.execute(f"UPDATE message_log SET {assignments} WHERE seq = ?", (*row_b, a))  # noqa: S608 - column names are constants
        db.execute(f"UPDATE message_log SET {assignments} WHERE seq = ?", (*row_a, b))  # noqa: S608 - column names are constants

    return swap


def _sql(statement: str) -> Tamper:
    def run(db: sqlite3.Connection) -> None:
        db.execute(statement)

    return run


TAMPERING = [
    pytest.param(
        _sql("UPDATE message_log SET envelope = X'00' WHERE seq = 3"), 3, "edited", id="envelope"
    ),
    pytest.param(
        _sql("UPDATE message_log SET envelope = CAST(envelope || X'00' AS BLOB) WHERE seq = 5"),
        5,
        "edited",
        id="envelope-appended",
    ),
    pytest.param(
        # SQLite columns take any type: a forger may well write TEXT into a BLOB column.
        _sql("UPDATE message_log SET envelope = 'forged' WHERE seq = 5"),
        5,
        "edited",
        id="envelope-as-text",
    ),
    pytest.param(
        _sql("UPDATE message_log SET message_id = X'6d2d31' WHERE seq = 3"),
        3,
        "edited",
        id="message_id-as-blob",
    ),
    pytest.param(
        _sql("UPDATE message_log SET service = 'fund.QueryAccount' WHERE seq = 2"),
        2,
        "edited",
        id="service",
    ),
    pytest.param(
        _sql("UPDATE message_log SET peer = '330000' WHERE seq = 1"), 1, "edited", id="peer"
    ),
    pytest.param(
        _sql("UPDATE message_log SET direction = 'in' WHERE seq = 3"),
        3,
        "edited",
        id="direction",
    ),
    pytest.param(
        _sql("UPDATE message_log SET logged_at = '2020-01-01T00:00:00+00:00' WHERE seq = 4"),
        4,
        "edited",
        id="logged_at",
    ),
    pytest.param(
        _sql("UPDATE message_log SET row_hash = zeroblob(32) WHERE seq = 2"),
        2,
        "edited",
        id="row_hash",
    ),
    pytest.param(
        _sql("UPDATE message_log SET prev_hash = zeroblob(32) WHERE seq = 4"),
        4,
        "prev_hash",
        id="prev_hash",
    ),
    pytest.param(
        _sql("DELETE FROM message_log WHERE seq = 3"), 4, "deleted or reordered", id="delete-middle"
    ),
    pytest.param(
        _sql("DELETE FROM message_log WHERE seq = 1"), 2, "deleted or reordered", id="delete-first"
    ),
    pytest.param(
        _sql("UPDATE message_log SET seq = seq + 10 WHERE seq = 3"),
        4,
        "deleted or reordered",
        id="renumber",
    ),
    pytest.param(_swap_rows(2, 4), 2, "prev_hash", id="swap-rows"),
    pytest.param(_swap_contents_only(2, 4), 2, "edited", id="swap-contents"),
]


class TestTamperDetection:
    """Editing, deleting or reordering any row of a closed log is reported by verify,
    with the first row that does not chain."""

    @pytest.mark.parametrize(("tamper", "first_bad_seq", "detail"), TAMPERING)
    async def test_detected(
        self, db_path: Path, tamper: Tamper, first_bad_seq: int, detail: str
    ) -> None:
        await filled(db_path, 5)
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            tamper(db)
            db.commit()

        report = await verify_file(db_path)

        assert not report.intact
        assert report.first_bad_seq == first_bad_seq
        assert f"row {first_bad_seq}:" in report.detail
        assert detail in report.detail

    async def test_an_untouched_log_is_intact(self, db_path: Path) -> None:
        await filled(db_path, 5)
        report = await verify_file(db_path)
        assert report.intact
        assert (report.rows_checked, report.first_bad_seq) == (5, 0)
        assert "5 rows" in report.detail

    async def test_an_empty_log_is_intact(self, db_path: Path) -> None:
        await filled(db_path, 0)  # verify_file reads only: the file must exist
        report = await verify_file(db_path)
        assert report.intact
        assert (report.rows_checked, report.head_hash) == (0, GENESIS)

    async def test_the_report_stops_at_the_first_bad_row(self, db_path: Path) -> None:
        await filled(db_path, 5)
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            db.execute("UPDATE message_log SET envelope = X'01' WHERE seq IN (2, 4)")
            db.commit()
        report = await verify_file(db_path)
        assert (report.first_bad_seq, report.rows_checked) == (2, 2)


class TestClose:
    """close flushes every queued row, may be called again, and appends after it fail."""

    async def test_close_is_idempotent(self, db_path: Path) -> None:
        log = await MessageLog(db_path).open()
        await log.close()
        await log.close()

    async def test_append_after_close_raises(self, db_path: Path) -> None:
        log = await MessageLog(db_path).open()
        await log.close()
        with pytest.raises(MessageLogClosed, match="closed"):
            await log.append(entry(1))

    async def test_append_before_open_raises(self, db_path: Path) -> None:
        with pytest.raises(MessageLogClosed):
            await MessageLog(db_path).append(entry(1))

    async def test_close_waits_for_queued_rows(self, db_path: Path) -> None:
        log = await MessageLog(db_path).open()
        pending = [asyncio.create_task(log.append(entry(n))) for n in range(1, 21)]
        await asyncio.sleep(0)  # the appends are queued, not yet written
        await log.close()
        assert sorted([task.result() for task in pending]) == list(range(1, 21))
        report = await verify_file(db_path)
        assert report.intact
        assert report.rows_checked == 20


class TestWriterFailure:
    """A row that cannot be written fails its own append; the log keeps working for
    every later append and still closes cleanly."""

    async def test_an_unwritable_row_does_not_wedge_the_log(self, db_path: Path) -> None:
        log = await MessageLog(db_path).open()
        try:
            # A lone surrogate cannot be encoded to UTF-8 for hashing.
            bad = LogEntry("out", "request", "\ud800", "corr", JS, "svc", b"x")
            try:
                await asyncio.wait_for(log.append(bad), 1.0)
            except UnicodeEncodeError:
                pass
            except TimeoutError:
                pytest.fail("the append of an unwritable row never returned (writer task died)")
            else:
                pytest.fail("an unwritable row was accepted")
            assert await asyncio.wait_for(log.append(entry(1)), 1.0) == 1
            await log.close()
        finally:
            # If the writer task died, close() re-raises its error and the SQLite
            # thread stays open, which would keep the test process alive.
            with contextlib.suppress(Exception):
                await log.close()
            reader = getattr(log._file, "reader", None)
            if reader is not None:
                await reader.close()


_property = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_texts = st.text(max_size=12)
_entries = st.builds(
    LogEntry,
    direction=st.sampled_from(["in", "out"]),
    kind=st.sampled_from(["request", "response"]),
    message_id=_texts,
    correlation_id=_texts,
    peer=_texts,
    service=_texts,
    envelope=st.binary(max_size=64),
)


class TestRoundTripProperty:
    """Whatever text and bytes an entry holds, it reads back unchanged and chains."""

    @_property
    @given(entries=st.lists(_entries, min_size=1, max_size=12))
    def test_any_entries(self, entries: list[LogEntry]) -> None:
        async def scenario(path: Path) -> tuple[list[LoggedRow], bool]:
            async with MessageLog(path) as fresh:
                await asyncio.gather(*(fresh.append(item) for item in entries))
                rows = await all_rows(fresh)
                return rows, (await fresh.verify()).intact

        with tempfile.TemporaryDirectory() as folder:
            rows, intact = asyncio.run(scenario(Path(folder) / "messages.db"))
        assert intact
        assert sorted((row.entry for row in rows), key=repr) == sorted(entries, key=repr)


class TestReadOnlyVerify:
    """`verify_file` (``audit verify``) reads only: a copy on a read-only volume
    will do, and the file is left exactly as it was, even at an older schema."""

    async def test_the_file_is_left_as_it_was(self, db_path: Path) -> None:
        await filled(db_path, 3)
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            db.execute("PRAGMA user_version = 0")  # a log written before versions were kept
        before = await asyncio.to_thread(db_path.read_bytes)
        report = await verify_file(db_path)
        assert report.intact
        assert report.rows_checked == 3
        assert await asyncio.to_thread(db_path.read_bytes) == before  # not migrated, not written

    async def test_a_missing_file_is_not_created(self, db_path: Path) -> None:
        with pytest.raises(StoreOpenError, match="no such file"):
            await verify_file(db_path)
        assert not await asyncio.to_thread(db_path.exists)

    async def test_a_log_from_a_newer_release_is_refused(self, db_path: Path) -> None:
        await filled(db_path, 1)
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            db.execute("PRAGMA user_version = 99")
        with pytest.raises(StoreVersionError, match="newer"):
            await verify_file(db_path)

    async def test_nothing_can_be_appended_while_reading(self, db_path: Path) -> None:
        await filled(db_path, 1)
        async with reading(db_path) as log:
            assert await log.count() == 1
            with pytest.raises(MessageLogClosed):
                await log.append(entry(2))


def incoming(n: int, *, nonce: bytes, message_id: str | None = None) -> LogEntry:
    """An incoming request as the federation server logs it."""
    return LogEntry(
        "in",
        "request",
        message_id or f"00000000-0000-4000-8000-{n:012d}",
        f"corr-{n}",
        ZJ,
        "identity.CheckCredential",
        f"request-{n}".encode(),
        nonce=nonce,
    )


def answer(message_id: str, n: int) -> LogEntry:
    return LogEntry(
        "out",
        "response",
        message_id,
        "corr",
        ZJ,
        "identity.CheckCredential",
        f"answer-{n}".encode(),
    )


class TestIncomingRequests:
    """append_request: a nonce logged before (in an earlier group or earlier in
    the same group) is refused, and a request learns what was logged under its
    (peer, message id) before; a group costs a few statements whatever its size."""

    async def test_a_nonce_is_refused_within_a_group_and_across_groups(
        self, log: MessageLog
    ) -> None:
        await log.append_request(incoming(1, nonce=b"a" * 16))
        results = await asyncio.gather(
            log.append_request(incoming(2, nonce=b"b" * 16)),
            log.append_request(incoming(3, nonce=b"a" * 16)),  # logged before
            log.append_request(incoming(4, nonce=b"b" * 16)),  # earlier in this group
            log.append_request(incoming(5, nonce=b"c" * 16)),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == [
            "tuple",
            "DuplicateNonce",
            "DuplicateNonce",
            "tuple",
        ]
        # Another peer may use the same nonce.
        other = replace(incoming(6, nonce=b"a" * 16), peer=SH)
        assert isinstance(await log.append_request(other), tuple)

    async def test_a_request_learns_its_first_request_and_newest_answers(
        self, log: MessageLog
    ) -> None:
        retried = "00000000-0000-4000-8000-000000000099"
        _, first = await log.append_request(incoming(1, nonce=b"1" * 16, message_id=retried))
        assert first.first_request is None
        assert first.answers == ()
        for n in range(1, 7):
            await log.append(answer(retried, n))
        results = await asyncio.gather(
            log.append_request(incoming(2, nonce=b"2" * 16, message_id=retried)),
            log.append_request(incoming(3, nonce=b"3" * 16)),
            log.append_request(incoming(4, nonce=b"4" * 16)),
            log.append_request(
                incoming(5, nonce=b"5" * 16, message_id=incoming(4, nonce=b"").message_id)
            ),
        )
        again, new, twice_first, twice_second = (logged for _, logged in results)
        assert again.first_request == b"request-1"
        assert (
            again.answers
            == tuple(f"answer-{n}".encode() for n in (6, 5, 4, 3, 2))[: len(again.answers)]
        )
        assert len(again.answers) == min(6, ANSWERS_LOOKED_UP)
        assert new.first_request is None
        assert new.answers == ()
        # Two requests under one new message id in one group: the second learns the first.
        assert twice_first.first_request is None
        assert twice_second.first_request == b"request-4"

    async def test_a_group_costs_a_few_statements_whatever_its_size(self, log: MessageLog) -> None:
        statements: list[str] = []
        await log._file.run(lambda conn: conn.set_trace_callback(statements.append))
        commits = log.commits
        await asyncio.gather(
            *(log.append_request(incoming(n, nonce=n.to_bytes(16, "big"))) for n in range(1, 61))
        )
        groups = log.commits - commits
        assert groups < 10  # the sixty were grouped
        # BEGIN, the chain's head, the nonces, the message ids, one INSERT, COMMIT
        assert len(statements) <= 6 * groups, statements[:20]
        assert await log.count() == 60
