"""The operator's admin RPCs against a running federation: peers, exchanges
(list, retry, park, resolve), a search of the message log by correlation id,
verification and diagnostics. Every answer is free of personal data; every
action is recorded in the message log with the operator's identity."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
import structlog.testing

from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import JS, SH, ZJ, full_name_of
from tests.integration.test_fund_exchange import application, submit, until_final
from tests.paths import CONFIG_DIR
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc
from yrd.fund.v1 import fund_pb2

S = fund_pb2.WithdrawalStatus
OFFICE = (("authorization", f"Bearer dev-office-{SH}"),)
#: A client of Shanghai's node not granted the admin service.
HOTEL = (("authorization", f"Bearer dev-hotel-{SH}"),)


def admin(federation: LocalFederation, code: str = SH) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(federation.channel(code))


async def call(federation: LocalFederation, method: str, request: Any, code: str = SH) -> Any:
    metadata = (("authorization", f"Bearer dev-office-{code}"),)
    return await getattr(admin(federation, code), method)(request, metadata=metadata, timeout=10)


async def refused(federation: LocalFederation, method: str, request: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(federation, method, request)
    return info.value


async def queued_while_fund_node_down(
    federation: LocalFederation, amount_fen: int = 2_000
) -> tuple[fund_pb2.WithdrawalApplication, str]:
    """A withdrawal waiting in Shanghai's outbox for Jiangsu, whose node is down."""
    await federation.stop_node(JS)
    app = application(federation, amount_fen=amount_fen)
    case = await submit(federation, app)
    assert case.status == S.QUEUED
    return app, case.case_id


async def listed(federation: LocalFederation, **fields: Any) -> list[admin_pb2.Exchange]:
    answer = await call(federation, "ListExchanges", admin_pb2.ListExchangesRequest(**fields))
    return list(answer.exchanges)


def personal(app: fund_pb2.WithdrawalApplication) -> list[str]:
    """The personal values of an application: none may appear in an answer."""
    return [
        app.applicant.id_number,
        full_name_of(app.applicant.id_number),
        app.fund_account,
        app.payee_account,
    ]


def free_of(text: str, app: fund_pb2.WithdrawalApplication) -> None:
    for value in personal(app):
        assert value not in text


class TestPeers:
    async def test_every_peer_with_breaker_health_keys_and_counts(
        self, federation: LocalFederation
    ) -> None:
        case = await submit(federation, application(federation, amount_fen=1_500))
        await until_final(federation, case.case_id)
        answer = await call(federation, "ListPeers", admin_pb2.ListPeersRequest())
        peers = {p.province: p for p in answer.peers}
        assert sorted(peers) == sorted(federation.node(SH).federation.peer_codes)
        js = peers[JS]
        assert js.reachable
        assert not js.last_error
        assert js.last_success.seconds > time.time() - 120
        assert js.breaker_state == "closed"
        assert js.descriptor_state == "held"
        assert js.endpoints
        assert {k.kind for k in js.keys} >= {"signing", "eid_issuer", "tls_certificate"}
        assert all(k.days_left > 0 for k in js.keys)
        assert {k.kind for k in answer.own_keys} >= {"signing", "tls_certificate"}
        assert all(k.province == SH for k in answer.own_keys)

    async def test_a_stopped_peer_is_unreachable_with_its_last_error(
        self, federation: LocalFederation
    ) -> None:
        await federation.stop_node(ZJ)
        await federation.node(SH).directory.refresh([ZJ])  # type: ignore[union-attr]  # started with [tls]
        answer = await call(federation, "ListPeers", admin_pb2.ListPeersRequest())
        zj = next(p for p in answer.peers if p.province == ZJ)
        assert not zj.reachable
        assert zj.last_error.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))
        assert zj.last_success.seconds > 0  # it answered before it stopped
        scrape = (await federation.node(SH).metrics.render()).decode()
        assert f'yrd_peer_up{{peer="{ZJ}"}} 0.0' in scrape
        assert f'yrd_peer_up{{peer="{JS}"}} 1.0' in scrape


class TestExchanges:
    async def test_parked_over_the_rpc_then_retried_reaches_paid(
        self, federation: LocalFederation
    ) -> None:
        app, case_id = await queued_while_fund_node_down(federation)
        pending = await listed(federation, state="pending", peer=JS)
        mine = [e for e in pending if e.reference == case_id]
        assert len(mine) == 1
        item = mine[0]
        assert item.service == "fund.DeliverWithdrawal"
        assert item.domain == "withdrawal"
        assert item.case_status == "QUEUED"
        assert item.correlation_id
        assert item.next_attempt_at.seconds > 0
        free_of(str(pending), app)

        with structlog.testing.capture_logs() as lines:
            parked = await call(
                federation,
                "ParkExchange",
                admin_pb2.SteerExchangeRequest(
                    reference=case_id, operator="op-wang", reason="fund node in maintenance"
                ),
            )
        # The operator's name (a person's) goes to the message log, never a log line.
        assert any(line.get("event") == "operator park" for line in lines)
        assert "op-wang" not in repr(lines)
        assert parked.changed == 1
        assert parked.log_seq > 0
        assert [e.state for e in parked.exchanges] == ["parked"]
        assert not parked.exchanges[0].HasField("next_attempt_at")

        await federation.start_node(JS)
        await federation.refresh_directories()
        await asyncio.sleep(1.5)
        still, _ = await until_final(federation, case_id, seconds=0)
        assert still.status == S.QUEUED, "a parked item waits for an operator"

        retried = await call(
            federation,
            "RetryExchange",
            admin_pb2.SteerExchangeRequest(reference=case_id, operator="op-wang"),
        )
        assert retried.changed == 1
        final, _ = await until_final(federation, case_id, seconds=30)
        assert final.status == S.PAID
        assert not [e for e in await listed(federation) if e.reference == case_id]

        # Both actions are rows of the message log naming the operator and the client.
        statements = []
        async for row in federation.node(SH).message_log.rows():
            if row.entry.kind == "operator":
                statements.append(json.loads(row.entry.envelope)["statement"])
        assert [s["action"] for s in statements] == ["park", "retry"]
        assert {s["operator"] for s in statements} == {"op-wang (client office-310000-001)"}

    async def test_steering_what_is_not_there(self, federation: LocalFederation) -> None:
        unknown = await refused(
            federation,
            "RetryExchange",
            admin_pb2.SteerExchangeRequest(reference="WD-310000-nothing", operator="op"),
        )
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        _, case_id = await queued_while_fund_node_down(federation)
        not_parked = await refused(
            federation,
            "RetryExchange",
            admin_pb2.SteerExchangeRequest(reference=case_id, operator="op"),
        )
        assert not_parked.code() == grpc.StatusCode.FAILED_PRECONDITION
        not_in_reconciliation = await refused(
            federation,
            "ResolveExchange",
            admin_pb2.ResolveExchangeRequest(reference="FW-320000-nothing", operator="op"),
        )
        assert not_in_reconciliation.code() == grpc.StatusCode.NOT_FOUND

    async def test_filters(self, federation: LocalFederation) -> None:
        _, case_id = await queued_while_fund_node_down(federation)
        assert [e.reference for e in await listed(federation, peer=JS)] == [case_id]
        assert await listed(federation, peer=ZJ) == []
        assert await listed(federation, state="parked") == []
        assert await listed(federation, state="reconciliation") == []
        assert await listed(federation, min_age_seconds=3600) == []
        assert len(await listed(federation, limit=1)) == 1
        # The failed delivery attempts are the peer's health too.
        deadline = time.monotonic() + 10
        while True:
            peers = await call(federation, "ListPeers", admin_pb2.ListPeersRequest())
            js = next(p for p in peers.peers if p.province == JS)
            if not js.reachable or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert not js.reachable
        assert js.last_error.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))
        assert js.pending == 1


class TestResolve:
    async def test_a_case_in_reconciliation_resolved_paid_over_the_rpc(
        self, federation: LocalFederation
    ) -> None:
        """The centre paid a withdrawal, then lost it: Jiangsu's node holds it for
        an operator, who lists it and resolves it PAID from the centre's records."""
        centre = federation.provinces[JS].fund_centre
        centre.review_delay = 1.0
        app = application(federation, amount_fen=4_000, reason=fund_pb2.RENT)
        case = await submit(federation, app)
        deadline = time.monotonic() + 20
        while (await until_final(federation, case.case_id, seconds=0))[0].status != S.UNDER_REVIEW:
            assert time.monotonic() < deadline, "never UNDER_REVIEW"
            await asyncio.sleep(0.05)
        await federation.stop_node(JS)
        await centre.wait_idle()
        assert await centre.forget() == 1
        await federation.start_node(JS)
        deadline = time.monotonic() + 20
        while True:
            waiting = await call(
                federation,
                "ListExchanges",
                admin_pb2.ListExchangesRequest(state="reconciliation"),
                code=JS,
            )
            if waiting.exchanges:
                break
            assert time.monotonic() < deadline, "never in reconciliation"
            await asyncio.sleep(0.1)
        [held] = waiting.exchanges
        assert (held.state, held.peer, held.domain) == ("reconciliation", SH, "withdrawal")
        assert held.service == "fund.DeliverWithdrawal"
        assert held.case_status == "UNDER_REVIEW"
        assert held.correlation_id == await correlation_of(federation, case.case_id)
        assert not held.HasField("next_attempt_at")
        free_of(str(waiting), app)

        resolved = await call(
            federation,
            "ResolveExchange",
            admin_pb2.ResolveExchangeRequest(
                reference=held.reference, paid=True, operator="op-zhang", reason="ledger checked"
            ),
            code=JS,
        )
        assert resolved.changed == 1
        assert resolved.log_seq > 0
        assert "PAID recorded" in resolved.detail
        final, _ = await until_final(federation, case.case_id, seconds=30)
        assert final.status == S.PAID
        assert len(centre.payments) == 1, "paid once"
        again = await refused_at(
            federation,
            JS,
            "ResolveExchange",
            admin_pb2.ResolveExchangeRequest(reference=held.reference, operator="op-zhang"),
        )
        assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
        path = await call(
            federation,
            "SearchLog",
            admin_pb2.SearchLogRequest(correlation_id=held.correlation_id),
            code=JS,
        )
        assert (
            "operator",
            "resolve_paid",
            "resolve_paid by op-zhang (client office-320000-001)",
        ) in [(e.direction, e.service, e.summary) for e in path.entries]


async def refused_at(
    federation: LocalFederation, code: str, method: str, request: Any
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(federation, method, request, code=code)
    return info.value


class TestSearchLog:
    async def test_one_withdrawal_path_without_personal_data(
        self, federation: LocalFederation
    ) -> None:
        app = application(federation, amount_fen=3_000)
        case = await submit(federation, app)
        final, _ = await until_final(federation, case.case_id)
        assert final.status == S.PAID
        correlation_id = await correlation_of(federation, case.case_id)
        answer = await call(
            federation,
            "SearchLog",
            admin_pb2.SearchLogRequest(correlation_id=correlation_id),
        )
        path = [(e.direction, e.kind, e.service, e.summary) for e in answer.entries]
        assert ("out", "request", "fund.DeliverWithdrawal", "WithdrawalApplication") in path
        assert ("in", "response", "fund.DeliverWithdrawal", "accepted") in path
        assert ("in", "request", "fund.WithdrawalStatus", "PAID") in path
        assert ("out", "response", "fund.WithdrawalStatus", "accepted") in path
        assert all(e.peer == JS for e in answer.entries)
        assert [e.seq for e in answer.entries] == sorted(e.seq for e in answer.entries)
        assert [(c.reference, c.side, c.peer, c.status) for c in answer.cases] == [
            (case.case_id, "sent", JS, "PAID")
        ]
        assert not answer.exchanges
        free_of(str(answer), app)
        # The handling node sees the same exchange from its side. It logs the
        # PAID update it sent together with the answer, after Shanghai has
        # recorded it: on a loaded machine that row may come a moment later.
        paid_sent = ("out", "request", "fund.WithdrawalStatus", "PAID")
        deadline = time.monotonic() + 10
        while True:
            there = await call(
                federation,
                "SearchLog",
                admin_pb2.SearchLogRequest(correlation_id=correlation_id),
                code=JS,
            )
            sent = [(e.direction, e.kind, e.service, e.summary) for e in there.entries]
            if paid_sent in sent or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert [(c.side, c.peer, c.status) for c in there.cases] == [("received", SH, "PAID")]
        assert paid_sent in sent
        free_of(str(there), app)

    async def test_limit_truncates(self, federation: LocalFederation) -> None:
        case = await submit(federation, application(federation, amount_fen=3_100))
        await until_final(federation, case.case_id)
        correlation_id = await correlation_of(federation, case.case_id)
        answer = await call(
            federation,
            "SearchLog",
            admin_pb2.SearchLogRequest(correlation_id=correlation_id, limit=2),
        )
        assert len(answer.entries) == 2
        assert answer.truncated

    async def test_unknown_correlation_id_is_an_empty_answer(
        self, federation: LocalFederation
    ) -> None:
        answer = await call(
            federation, "SearchLog", admin_pb2.SearchLogRequest(correlation_id="no-such-id")
        )
        assert not answer.entries
        assert not answer.cases
        assert not answer.exchanges


async def correlation_of(federation: LocalFederation, case_id: str) -> str:
    cases = await federation.node(SH).state.case_summaries(references=[case_id])
    return cases[0].correlation_id


class TestLogAndDiagnostics:
    async def test_verify_sets_the_metrics(self, federation: LocalFederation) -> None:
        node = federation.node(SH)
        answer = await call(federation, "VerifyMessageLog", admin_pb2.VerifyMessageLogRequest())
        assert answer.intact
        scrape = (await node.metrics.render()).decode()
        assert "yrd_message_log_intact 1.0" in scrape
        stamp = float(
            next(
                line.split()[-1]
                for line in scrape.splitlines()
                if line.startswith("yrd_message_log_verified_timestamp_seconds ")
            )
        )
        assert stamp > time.time() - 60

    @pytest.mark.parametrize("every", [0.0, 0.3])
    async def test_the_node_verifies_its_log_in_the_background(
        self, federation: LocalFederation, every: float
    ) -> None:
        province = federation.provinces[SH]
        node_section = province.config.node.model_copy(update={"log_verify_seconds": every})
        province.config = province.config.model_copy(update={"node": node_section})
        await federation.stop_node(SH)
        node = await federation.start_node(SH)

        async def verified_at() -> float:
            scrape = (await node.metrics.render()).decode()
            return float(
                next(
                    line.split()[-1]
                    for line in scrape.splitlines()
                    if line.startswith("yrd_message_log_verified_timestamp_seconds ")
                )
            )

        await asyncio.sleep(1.0)
        first = await verified_at()
        if not every:  # never: until someone asks
            assert first == 0.0
            assert "yrd_message_log_intact -1.0" in (await node.metrics.render()).decode()
            return
        assert first > 0
        assert "yrd_message_log_intact 1.0" in (await node.metrics.render()).decode()
        deadline = time.monotonic() + 10
        while await verified_at() == first:  # and again, every `every` seconds
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)

    async def test_diagnostics(self, federation: LocalFederation) -> None:
        answer = await admin(federation).RunDiagnostics(
            admin_pb2.RunDiagnosticsRequest(), metadata=OFFICE, timeout=60
        )
        assert answer.config_ok, answer.config_problems
        assert not answer.config_problems
        assert answer.adapter_ok, answer.adapter_report
        assert "fund/withdrawal-house-purchase.json" in answer.adapter_report
        assert " 0 failed" in answer.adapter_report
        assert "round trip" not in answer.adapter_report  # adapter test's, not the node's

    async def test_diagnostics_of_a_broken_adapter(
        self, federation: LocalFederation, tmp_path: Path
    ) -> None:
        """An unreadable golden vector is a failed diagnostic."""
        configs = tmp_path / "copy"
        shutil.copytree(CONFIG_DIR / SH, configs / SH)
        shutil.copytree(CONFIG_DIR / "federation-ca", configs / "federation-ca")
        vector = configs / SH / "golden" / "fund" / "withdrawal-house-purchase.json"
        vector.write_text(vector.read_text("utf-8").replace("{", "[", 1), "utf-8")
        node = federation.node(SH)
        node.config_file = configs / SH / "province.toml"
        answer = await admin(federation).RunDiagnostics(
            admin_pb2.RunDiagnosticsRequest(), metadata=OFFICE, timeout=60
        )
        assert answer.config_ok, answer.config_problems
        assert not answer.adapter_ok
        assert "1 failed" in answer.adapter_report


class TestRefused:
    @pytest.mark.parametrize(
        ("method", "request_", "field"),
        [
            ("ListExchanges", admin_pb2.ListExchangesRequest(state="stuck"), "state"),
            ("ListExchanges", admin_pb2.ListExchangesRequest(peer="999999"), "peer"),
            ("ListExchanges", admin_pb2.ListExchangesRequest(peer=SH), "peer"),
            ("ListExchanges", admin_pb2.ListExchangesRequest(limit=1001), "limit"),
            ("RetryExchange", admin_pb2.SteerExchangeRequest(operator="op"), "reference"),
            (
                "RetryExchange",
                admin_pb2.SteerExchangeRequest(reference="a b", operator="op"),
                "reference",
            ),
            ("ParkExchange", admin_pb2.SteerExchangeRequest(reference="WD-1"), "operator"),
            (
                "ParkExchange",
                admin_pb2.SteerExchangeRequest(reference="WD-1", operator="x" * 65),
                "operator",
            ),
            (
                "ParkExchange",
                admin_pb2.SteerExchangeRequest(reference="WD-1", operator="op", reason="r" * 257),
                "reason",
            ),
            (
                "ParkExchange",
                admin_pb2.SteerExchangeRequest(reference="WD-1", operator="op", reason="a\x00b"),
                "reason",
            ),
            ("ResolveExchange", admin_pb2.ResolveExchangeRequest(operator="op"), "reference"),
            ("ResolveExchange", admin_pb2.ResolveExchangeRequest(reference="FW-1"), "operator"),
            (
                "ResolveExchange",
                admin_pb2.ResolveExchangeRequest(reference="FW-1", operator="op", reason="\n"),
                "reason",
            ),
            ("SearchLog", admin_pb2.SearchLogRequest(), "correlation_id"),
            ("SearchLog", admin_pb2.SearchLogRequest(correlation_id="x" * 129), "correlation_id"),
            ("SearchLog", admin_pb2.SearchLogRequest(correlation_id="id", limit=5000), "limit"),
        ],
        ids=lambda value: value if isinstance(value, str) else "",
    )
    async def test_bad_input_names_the_field(
        self, federation: LocalFederation, method: str, request_: Any, field: str
    ) -> None:
        error = await refused(federation, method, request_)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith(field), error.details()

    @pytest.mark.parametrize(
        "method",
        ["ListPeers", "ListExchanges", "RetryExchange", "SearchLog", "RunDiagnostics"],
    )
    async def test_unauthenticated_and_unauthorised(
        self, federation: LocalFederation, method: str
    ) -> None:
        request = {
            "ListPeers": admin_pb2.ListPeersRequest(),
            "ListExchanges": admin_pb2.ListExchangesRequest(),
            "RetryExchange": admin_pb2.SteerExchangeRequest(reference="WD-1", operator="op"),
            "SearchLog": admin_pb2.SearchLogRequest(correlation_id="id"),
            "RunDiagnostics": admin_pb2.RunDiagnosticsRequest(),
        }[method]
        stub = admin(federation)
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer not-a-token"),), grpc.StatusCode.UNAUTHENTICATED),
            (HOTEL, grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await getattr(stub, method)(request, metadata=metadata, timeout=10)
            assert info.value.code() == code
