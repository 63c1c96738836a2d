"""A node whose stores refuse writes (made read-only under it), on either side of
a service case: no accepted case is refused or left behind because of it.

The nodes run in this process (LocalFederation), so the fault is a read-only
store (SQLite ``query_only`` on the node's own writer connections) rather than
a file-size limit, which would hit the test process too.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import cast

import pytest
import structlog.testing
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.server import node as node_module
from gateway.server.node import Node
from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import JS, ZJ
from tests.integration.test_certificates_and_cases import (
    case_application,
    office,
    submit_case,
    until_final,
)
from yrd.case.v1 import case_pb2, case_pb2_grpc

N = 5


async def read_only(node: Node, on: bool) -> None:
    """Make both of the node's stores refuse writes (or accept them again)."""
    loop = asyncio.get_running_loop()
    for store in (node.state, node.message_log):
        conn = cast(sqlite3.Connection, store._file.conn)  # the store's own writer connection
        executor = store._file.executor  # its writer thread: the connection is used there only
        await loop.run_in_executor(executor, conn.execute, f"PRAGMA query_only = {int(on)}")


async def health(federation: LocalFederation, code: str) -> int:
    stub = health_pb2_grpc.HealthStub(federation.channel(code))
    return int((await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status)


async def statuses(federation: LocalFederation, case_ids: list[str]) -> list[int]:
    stub = case_pb2_grpc.CaseServiceStub(federation.channel(JS))
    return [
        (
            await stub.GetCase(
                case_pb2.GetCaseRequest(case_id=case_id), metadata=office(JS), timeout=5
            )
        ).status
        for case_id in case_ids
    ]


async def all_completed(federation: LocalFederation, case_ids: list[str]) -> None:
    for case_id in case_ids:
        final, _ = await until_final(federation, case_id, seconds=40)
        assert final.status == case_pb2.CASE_COMPLETED, final.status_reason


class TestCaseWhenAStoreCannotWrite:
    async def test_handling_node_cannot_write(self, federation: LocalFederation) -> None:
        """Zhejiang cannot write: it answers UNAVAILABLE and is NOT_SERVING; Jiangsu
        keeps every case QUEUED (none refused) and delivers them after it heals."""
        handling = federation.node(ZJ)
        await read_only(handling, True)
        cases = [await submit_case(federation, case_application()) for _ in range(N)]
        case_ids = [case.case_id for case in cases]
        await asyncio.sleep(1.5)
        assert await health(federation, ZJ) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert set(await statuses(federation, case_ids)) == {case_pb2.CASE_QUEUED}
        await read_only(handling, False)
        await all_completed(federation, case_ids)
        assert await health(federation, ZJ) == health_pb2.HealthCheckResponse.SERVING
        system = federation.provinces[ZJ].case_system
        assert system is not None
        assert len(system.cases) == N

    async def test_submitting_node_cannot_write(self, federation: LocalFederation) -> None:
        """Jiangsu stops being able to write right after accepting the cases: what
        Zhejiang received and works on comes back as status updates that Jiangsu
        cannot store; they are retried, not dropped, and every case completes once
        Jiangsu heals (Zhejiang's case system saw each case once)."""
        submitting = federation.node(JS)
        cases = [await submit_case(federation, case_application()) for _ in range(N)]
        await read_only(submitting, True)
        case_ids = [case.case_id for case in cases]
        await asyncio.sleep(2.0)
        assert await health(federation, JS) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert case_pb2.CASE_REFUSED not in await statuses(federation, case_ids)
        await read_only(submitting, False)
        await all_completed(federation, case_ids)
        assert await health(federation, JS) == health_pb2.HealthCheckResponse.SERVING
        handling = federation.node(ZJ).outbox
        assert handling is not None
        assert handling.refused == 0
        system = federation.provinces[ZJ].case_system
        assert system is not None
        assert len(system.cases) == N


class TestAFlappingStoreIsLoggedOncePerWindow:
    async def test_health_follows_every_change_and_the_log_sums_them(
        self, federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failing disk can make a store flap many times a second: health
        follows each change, the log says the first one, then the state the
        window ends in and how many changes it saw."""
        monkeypatch.setattr(node_module, "WRITABLE_LOG_SECONDS", 0.3)
        node = federation.node(ZJ)
        changed = node._store_writable("state store")
        with structlog.testing.capture_logs() as captured:
            for _ in range(10):
                changed(False)
                changed(True)
            changed(False)
            assert "state store" in node.unwritable
            await asyncio.sleep(0.5)
            lines = [entry for entry in captured if str(entry["event"]).startswith("store ")]
            assert [(line["event"], line.get("changes")) for line in lines] == [
                ("store cannot write; NOT_SERVING", None),
                ("store cannot write; NOT_SERVING", 20),
            ]
            assert await health(federation, ZJ) == health_pb2.HealthCheckResponse.NOT_SERVING
            changed(True)  # said by the end of its window
            await asyncio.sleep(0.1)
        assert captured[-1]["event"] == "store writable again"
        assert await health(federation, ZJ) == health_pb2.HealthCheckResponse.SERVING
