"""The message log's check at a node's start (bounded: from a signed head to the
tail, every head against its row) and the segment a node records when it
continues past a break."""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.core import crypto
from gateway.core.clock import FrozenClock
from gateway.storage import messagelog
from gateway.storage.messagelog import LogEntry, MessageLog
from tests.unit.conftest import JS, NOW, SH

KEY = crypto.generate_private_key()
OTHER = crypto.generate_private_key()


def sign(statement: bytes) -> tuple[str, bytes]:
    return "sig-1", KEY.sign(statement)


def keys(province: str, key_id: str, at: datetime) -> Ed25519PublicKey | None:
    return KEY.public_key() if (province, key_id) == (SH, "sig-1") else None


def entry(n: int) -> LogEntry:
    return LogEntry("in", "request", f"m-{n}", f"c-{n}", JS, "identity.CheckCredential", b"e%d" % n)


def opened(path: Path) -> MessageLog:
    # head_interval 0: a signed head after every group, i.e. every append here.
    return MessageLog(
        path, clock=FrozenClock(NOW), province=SH, head_signer=sign, head_interval=0.0
    )


async def write(path: Path, count: int) -> None:
    async with opened(path) as log:
        for n in range(count):
            await log.append(entry(n))


def tamper(path: Path, sql: str, *args: object) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(sql, args)
        db.commit()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "messages.db"


class TestCheckAtStart:
    async def test_an_intact_log(self, path: Path) -> None:
        await write(path, 12)
        async with opened(path) as log:
            report = await log.check_at_start(keys)
        assert report.intact, report.detail
        assert report.unacknowledged is None

    async def test_it_covers_the_stretch_from_a_head_far_enough_back(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(messagelog, "START_CHECK_ROWS", 5)
        await write(path, 30)
        tamper(path, "UPDATE message_log SET envelope = X'00' WHERE seq = 3")
        async with opened(path) as log:
            start = await log.check_at_start(keys)
            full = await log.verify(keys)
        # Row 3 lies before the stretch: the full check (audit verify) finds it.
        assert start.intact, start.detail
        assert start.rows_checked == 6
        assert not full.intact
        assert "row 3: content does not match its hash" in full.detail
        tamper(path, "UPDATE message_log SET envelope = X'00' WHERE seq = 27")
        async with opened(path) as log:
            start = await log.check_at_start(keys)
        assert start.unacknowledged is not None
        assert start.unacknowledged.seq == 27

    async def test_a_head_is_checked_against_its_row_however_old(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(messagelog, "START_CHECK_ROWS", 5)
        await write(path, 30)
        tamper(path, "UPDATE message_log SET row_hash = zeroblob(32) WHERE seq = 4")
        async with opened(path) as log:
            report = await log.check_at_start(keys)
        assert report.unacknowledged is not None
        assert "row 4: does not match the head signed at" in report.unacknowledged.detail

    async def test_a_head_with_a_foreign_signature(self, path: Path) -> None:
        await write(path, 3)
        statement_of = "SELECT province, head_seq, head_hash, signed_at FROM chain_heads"
        with contextlib.closing(sqlite3.connect(path)) as db:
            province, seq, digest, at = db.execute(statement_of + " ORDER BY id DESC").fetchone()
            forged = OTHER.sign(messagelog.head_statement(province, seq, digest, at))
            db.execute("UPDATE chain_heads SET signature = ? WHERE head_seq = ?", (forged, seq))
            db.commit()
        async with opened(path) as log:
            report = await log.check_at_start(keys)
        assert report.unacknowledged is not None
        assert "signature does not verify with key 'sig-1'" in report.unacknowledged.detail

    async def test_a_break_found_at_start_gets_no_signed_head(self, path: Path) -> None:
        await write(path, 5)
        tamper(path, "DELETE FROM message_log WHERE seq = 5")
        async with opened(path) as log:
            report = await log.check_at_start(keys)
            heads_before = len(await log.heads())
        assert report.unacknowledged is not None
        assert "truncated" in report.unacknowledged.detail
        async with MessageLog(path) as plain:
            assert len(await plain.heads()) == heads_before


class TestHeadAtClose:
    async def test_close_signs_the_head_after_its_last_group(self, path: Path) -> None:
        """Heads are signed at most every head_interval after a group, and once more
        at close over the last group's rows: the tail is always vouched for."""
        log = MessageLog(
            path, clock=FrozenClock(NOW), province=SH, head_signer=sign, head_interval=3600.0
        )
        async with log:
            for n in range(3):
                await log.append(entry(n))
            log.enqueue(entry(3))  # queued, not awaited: close still writes it first
        async with MessageLog(path) as plain:
            heads = await plain.heads()
            assert heads[-1].head_seq == 4
            assert len(heads) <= 2  # after the first group (at most), then at close
            assert (await plain.verify(keys)).intact


class TestContinuePastBreak:
    async def test_the_segment_acknowledges_the_break_and_verifies(self, path: Path) -> None:
        await write(path, 6)
        tamper(path, "DELETE FROM message_log WHERE seq >= 5")  # cut short below a head
        async with opened(path) as log:
            report = await log.check_at_start(keys)
            segment = await log.continue_past_break(report)
            for n in range(6, 9):
                await log.append(entry(n))
        assert segment == 5
        async with opened(path) as log:
            start = await log.check_at_start(keys)
            full = await log.verify(keys)
            rows = [row async for row in log.rows()]
        assert start.unacknowledged is None, start.detail
        assert not full.intact
        assert all(b.acknowledged_by == segment for b in full.breaks)
        # The old heads vouched for rows 5 and 6 as they were before the cut.
        assert "row 5: does not match the head signed at" in full.detail
        assert f"continued past it in a new segment at row {segment}" in full.detail
        assert f"the segment from row {segment} to row 8 is intact" in full.detail
        assert rows[segment - 1].entry.kind == "segment"
        assert rows[segment - 1].entry.service == "log.continue-past-break"

    async def test_the_segment_statement_is_signed(self, path: Path) -> None:
        await write(path, 3)
        tamper(path, "UPDATE message_log SET envelope = X'00' WHERE seq = 2")
        async with opened(path) as log:
            segment = await log.continue_past_break(await log.check_at_start(keys))
            row = [r async for r in log.rows()][segment - 1]
        signed = json.loads(row.entry.envelope)
        statement = base64.b64decode(signed["statement"])
        assert crypto.verify(KEY.public_key(), base64.b64decode(signed["signature"]), statement)
        said = json.loads(statement)
        assert said["broken_row"] == 2
        assert "content does not match its hash" in said["cause"]

    async def test_a_later_break_is_not_acknowledged(self, path: Path) -> None:
        await write(path, 3)
        tamper(path, "UPDATE message_log SET envelope = X'00' WHERE seq = 2")
        async with opened(path) as log:
            await log.continue_past_break(await log.check_at_start(keys))
            for n in range(3, 6):
                await log.append(entry(n))
        tamper(path, "UPDATE message_log SET envelope = X'00' WHERE seq = 6")
        async with opened(path) as log:
            report = await log.check_at_start(keys)
        assert report.unacknowledged is not None
        assert report.unacknowledged.seq == 6

    async def test_nothing_to_continue_past(self, path: Path) -> None:
        await write(path, 2)
        async with opened(path) as log:
            with pytest.raises(ValueError, match="no unacknowledged break"):
                await log.continue_past_break(await log.check_at_start(keys))

    async def test_a_forged_statement_excuses_no_head(self, path: Path) -> None:
        await write(path, 3)
        tamper(path, "UPDATE message_log SET envelope = X'00' WHERE seq = 2")
        async with opened(path) as log:
            segment = await log.continue_past_break(await log.check_at_start(keys))
            for n in range(3, 6):
                await log.append(entry(n))
        # Someone rewrites the statement to call every head "old", then re-hashes
        # the chain from there so that every row links again.
        with contextlib.closing(sqlite3.connect(path)) as db:
            (envelope,) = db.execute(
                "SELECT envelope FROM message_log WHERE seq = ?", (segment,)
            ).fetchone()
            signed = json.loads(envelope)
            said = json.loads(base64.b64decode(signed["statement"]))
            said["heads_before"] = 10**6
            signed["statement"] = base64.b64encode(json.dumps(said).encode()).decode()
            db.execute(
                "UPDATE message_log SET envelope = ? WHERE seq = ?",
                (json.dumps(signed).encode(), segment),
            )
            rows = db.execute(
                "SELECT seq, logged_at, direction, kind, message_id, correlation_id, peer,"
                " service, envelope, prev_hash FROM message_log WHERE seq >= ? ORDER BY seq",
                (segment,),
            ).fetchall()
            prev = rows[0][9]
            for seq, at, *fields, _ in rows:
                digest = messagelog.row_hash(prev, seq, at, LogEntry(*fields))
                db.execute(
                    "UPDATE message_log SET prev_hash = ?, row_hash = ? WHERE seq = ?",
                    (prev, digest, seq),
                )
                prev = digest
            db.commit()
        async with opened(path) as log:
            report = await log.check_at_start(keys)
        assert report.unacknowledged is not None
        assert "does not match the head signed at" in report.unacknowledged.detail
