"""The reads an operator's search and listing make of the stores, on SQLite and
on PostgreSQL: outbox items and cases by correlation id or reference, cases
in reconciliation with their correlation id, message-log rows by correlation
id (oldest first, bounded), operator actions carrying the exchange's id."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.storage.messagelog import MessageLog
from gateway.storage.records import LogEntry, NewOutgoingCase
from gateway.storage.state import StateStore
from tests.unit.test_leases import enqueue, incoming, item, receive

JS = "320000"
STAMP = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "sqlite":
        return tmp_path
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def state(location: str | Path) -> AsyncIterator[StateStore]:
    where = location / "state.db" if isinstance(location, Path) else location
    async with StateStore(where) as store:
        yield store


@pytest.fixture
async def log(location: str | Path) -> AsyncIterator[MessageLog]:
    where = location / "messages.db" if isinstance(location, Path) else location
    async with MessageLog(where, province="310000") as opened:
        yield opened


def outgoing(case_id: str, correlation_id: str) -> NewOutgoingCase:
    return NewOutgoingCase(
        case_id=case_id,
        domain="withdrawal",
        idempotency_key=f"key-{case_id}",
        body_digest=b"d",
        client_id="office",
        peer="320000",
        application=b"personal",
        status=1,
        correlation_id=correlation_id,
        submitted_at=STAMP,
    )


async def test_cases_and_items_by_correlation_id_and_reference(state: StateStore) -> None:
    await state.unit_of_work(lambda tx: tx.insert_outgoing(outgoing("WD-1", "corr-a")))
    await state.unit_of_work(lambda tx: tx.insert_outgoing(outgoing("WD-2", "corr-b")))
    await receive(state, dataclasses.replace(incoming(7), correlation_id="corr-a"))
    await enqueue(state, dataclasses.replace(item(1), correlation_id="corr-a", subject="WD-1"))
    await enqueue(state, dataclasses.replace(item(2), correlation_id="corr-b", subject="WD-2"))

    by_id = await state.case_summaries(correlation_id="corr-a")
    assert sorted((c.reference, c.side, c.peer, c.status) for c in by_id) == [
        ("FW-310000-7", "received", "320000", 2),
        ("WD-1", "sent", "320000", 1),
    ]
    assert {c.correlation_id for c in by_id} == {"corr-a"}
    assert not any(c.in_reconciliation for c in by_id)
    by_reference = await state.case_summaries(references=["WD-2", "FW-310000-7", "nothing"])
    assert sorted(c.reference for c in by_reference) == ["FW-310000-7", "WD-2"]
    assert await state.case_summaries() == []

    entries = await state.outbox_entries(correlation_id="corr-a")
    assert [(e.subject, e.correlation_id) for e in entries] == [("WD-1", "corr-a")]
    assert [e.correlation_id for e in await state.outbox_entries()] == ["corr-a", "corr-b"]


async def test_reconciliation_cases_carry_their_correlation_id(state: StateStore) -> None:
    await receive(state, dataclasses.replace(incoming(3), correlation_id="corr-r"))
    await state.write(
        lambda db: db.execute(
            "UPDATE incoming_cases SET reconciliation = 1 WHERE reference = ?", ("FW-310000-3",)
        )
    )
    [case] = await state.reconciliation_cases()
    assert case.correlation_id == "corr-r"
    [summary] = await state.case_summaries(correlation_id="corr-r")
    assert summary.in_reconciliation


async def test_log_rows_by_correlation_id(log: MessageLog) -> None:
    for n in range(5):
        correlation_id = "corr-a" if n % 2 == 0 else "corr-b"
        service = "fund.DeliverWithdrawal"
        await log.append(LogEntry("out", "request", f"m{n}", correlation_id, JS, service, b"e"))
    seq = await log.append_operator_action(
        action="retry", subject="m0", operator="op (client c)", correlation_id="corr-a"
    )
    rows = await log.rows_by_correlation("corr-a", 10)
    assert [r.message_id for r in rows[:3]] == ["m0", "m2", "m4"]
    assert rows[-1].seq == seq
    assert rows[-1].kind == "operator"
    statement: dict[str, Any] = json.loads(rows[-1].envelope)["statement"]
    assert statement["operator"] == "op (client c)"
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    assert len(await log.rows_by_correlation("corr-a", 2)) == 2
    assert await log.rows_by_correlation("nothing", 10) == []
    assert (await log.verify()).intact
