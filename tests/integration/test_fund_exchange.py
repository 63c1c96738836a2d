"""Provident-fund withdrawal across provinces, end to end through real nodes,
the outbox, and the fund-centre simulators."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid

import grpc
import pytest
import structlog

from gateway.core import logs
from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import (
    JS,
    SH,
    ZJ,
    full_name_of,
    fund_holder,
    payee_account,
)
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc

OFFICE = (("authorization", f"Bearer dev-office-{SH}"),)
S = fund_pb2.WithdrawalStatus


def counter(federation: LocalFederation, province: str = SH) -> fund_pb2_grpc.FundServiceStub:
    return fund_pb2_grpc.FundServiceStub(federation.channel(province))


def application(
    federation: LocalFederation,
    *,
    amount_fen: int = 1_000_000,
    key: str | None = None,
    reason: int = fund_pb2.HOUSE_PURCHASE,
    fund_province: str = JS,
) -> fund_pb2.WithdrawalApplication:
    account, id_number, _ = fund_holder(federation, fund_province, SH)
    return fund_pb2.WithdrawalApplication(
        idempotency_key=key or f"test-{uuid.uuid4().hex}",
        applicant=common_pb2.Person(id_number=id_number, full_name=full_name_of(id_number)),
        fund_province=fund_province,
        fund_account=account,
        reason=reason,
        amount_fen=amount_fen,
        payee_account=payee_account(7),
        payee_bank="Bank of Shanghai",
        supporting_certificates=["1.2.156.3005.2.11100000001.example"],
    )


async def submit(
    federation: LocalFederation, app: fund_pb2.WithdrawalApplication
) -> fund_pb2.Withdrawal:
    return await counter(federation).SubmitWithdrawal(
        fund_pb2.SubmitWithdrawalRequest(application=app), metadata=OFFICE, timeout=5
    )


async def until_final(
    federation: LocalFederation, case_id: str, seconds: float = 20
) -> tuple[fund_pb2.Withdrawal, list[int]]:
    seen: list[int] = []
    deadline = time.monotonic() + seconds
    while True:
        case = await counter(federation).GetWithdrawal(
            fund_pb2.GetWithdrawalRequest(case_id=case_id), metadata=OFFICE, timeout=5
        )
        if not seen or seen[-1] != case.status:
            seen.append(case.status)
        if case.status in (S.PAID, S.REJECTED) or time.monotonic() > deadline:
            return case, seen
        await asyncio.sleep(0.02)


class TestWithdrawal:
    """A Shanghai resident withdraws provident fund held in Jiangsu for a house purchase."""

    async def test_paid_once_with_the_status_flow(self, federation: LocalFederation) -> None:
        app = application(federation)
        centre = federation.provinces[JS].fund_centre
        balance_before = centre.accounts[app.fund_account].balance_fen
        case = await submit(federation, app)
        assert case.status == S.QUEUED
        assert case.case_id.startswith("WD-310000-")
        final, seen = await until_final(federation, case.case_id)
        assert final.status == S.PAID, final.status_reason
        assert final.paid_amount_fen == app.amount_fen
        assert final.remote_reference
        assert seen == sorted(seen)  # never moves backwards
        assert centre.accounts[app.fund_account].balance_fen == balance_before - app.amount_fen
        payments = [p for p in centre.payments if p[1] == app.fund_account]
        assert len(payments) == 1
        assert payments[0][2] == app.amount_fen

    async def test_duplicate_submit_is_one_case_and_one_payment(
        self, federation: LocalFederation
    ) -> None:
        app = application(federation, amount_fen=12_345)
        centre = federation.provinces[JS].fund_centre
        first, second = await asyncio.gather(submit(federation, app), submit(federation, app))
        third = await submit(federation, app)
        assert first.case_id == second.case_id == third.case_id
        final, _ = await until_final(federation, first.case_id)
        assert final.status == S.PAID
        again = await submit(federation, app)
        assert again.case_id == first.case_id
        assert again.status == S.PAID
        assert sum(1 for p in centre.payments if p[1] == app.fund_account) == 1

    async def test_one_info_line_per_submission_names_the_case(
        self, federation: LocalFederation
    ) -> None:
        """The call's `rpc` line carries the case id, the province it goes to and
        whether it repeated an earlier submission; no second info line, and no
        personal data."""
        stream = io.StringIO()
        logs.configure("INFO", stream)
        app = application(federation, amount_fen=4_321)
        try:
            first = await submit(federation, app)
            again = await submit(federation, app)
        finally:
            structlog.reset_defaults()  # leave no configuration behind for other tests
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        rpcs = [
            line
            for line in lines
            if line["event"] == "rpc" and line["method"].endswith("/SubmitWithdrawal")
        ]
        assert [(r["case_id"], r["peer"], r["duplicate"], r["code"]) for r in rpcs] == [
            (first.case_id, JS, False, "OK"),
            (again.case_id, JS, True, "OK"),
        ]
        assert not [line for line in lines if line["event"] == "withdrawal accepted"]
        text = stream.getvalue()
        for personal in (app.applicant.id_number, app.fund_account, app.payee_account):
            assert personal not in text

    async def test_same_key_different_body_is_refused(self, federation: LocalFederation) -> None:
        app = application(federation, amount_fen=5_000)
        await submit(federation, app)
        app.amount_fen = 6_000
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await submit(federation, app)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "idempotency_key" in (info.value.details() or "")

    async def test_more_than_the_balance_is_rejected_with_the_reason(
        self, federation: LocalFederation
    ) -> None:
        _, _, balance = fund_holder(federation, JS, SH)
        case = await submit(federation, application(federation, amount_fen=balance + 1))
        final, _ = await until_final(federation, case.case_id)
        assert final.status == S.REJECTED
        assert "balance" in final.status_reason.lower()

    async def test_fund_node_down_then_back(self, federation: LocalFederation) -> None:
        await federation.stop_node(JS)
        case = await submit(federation, application(federation, amount_fen=2_000))
        assert case.status == S.QUEUED
        await asyncio.sleep(1.0)
        still, _ = await until_final(federation, case.case_id, seconds=0)
        assert still.status == S.QUEUED
        await federation.start_node(JS)
        final, _ = await until_final(federation, case.case_id, seconds=30)
        assert final.status == S.PAID

    async def test_applicant_node_restart_resumes_the_outbox(
        self, federation: LocalFederation
    ) -> None:
        await federation.stop_node(JS)
        case = await submit(federation, application(federation, amount_fen=3_000))
        await federation.stop_node(SH)
        await federation.start_node(JS)
        await federation.start_node(SH)
        final, _ = await until_final(federation, case.case_id, seconds=30)
        assert final.status == S.PAID


class TestStatusUpdateRefusedLine:
    async def test_logged_by_the_outbox_once_recorded_not_inside_the_unit(
        self, federation: LocalFederation
    ) -> None:
        """The status route's refusal line is the outbox's, written after the
        commit (a unit of work may run twice); the callback run inside the unit
        logs nothing."""
        for exchange in (federation.node(SH).fund, federation.node(SH).cases):
            route = exchange.routes()[exchange.flow.status_service]
            assert route.refused_event == "status update refused by the submitting node"
            assert route.refused_level == "error"
            with structlog.testing.capture_logs() as captured:
                route.on_refused(None, None, RuntimeError("refused"))  # type: ignore[arg-type]
            assert captured == []


class TestAccountQuery:
    async def test_balance_in_another_province(self, federation: LocalFederation) -> None:
        account, id_number, balance = fund_holder(federation, JS, SH)
        answer = await counter(federation).QueryFundAccount(
            fund_pb2.QueryFundAccountRequest(id_number=id_number, fund_province=JS),
            metadata=OFFICE,
            timeout=5,
        )
        assert answer.fund_account == account
        assert answer.balance_fen == balance
        assert answer.status == fund_pb2.NORMAL
        assert answer.fund_province == JS

    async def test_no_account_is_not_found(self, federation: LocalFederation) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await counter(federation).QueryFundAccount(
                fund_pb2.QueryFundAccountRequest(id_number="11010519491231002X", fund_province=ZJ),
                metadata=OFFICE,
                timeout=5,
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


class TestBadInput:
    """Each bad field gets INVALID_ARGUMENT naming it; nothing is accepted."""

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"amount_fen": 0}, "amount_fen"),
            ({"amount_fen": -100}, "amount_fen"),
            ({"reason": 0}, "reason"),
            ({"reason": 99}, "reason"),
            ({"fund_province": "110000"}, "fund_province"),
            ({"fund_province": "31000"}, "fund_province"),
            ({"fund_province": SH}, "fund_province"),
            ({"payee_account": "6222020000000000001"}, "payee_account"),
            ({"payee_account": "12ab"}, "payee_account"),
            ({"idempotency_key": ""}, "idempotency_key"),
            ({"fund_account": "x"}, "fund_account"),
        ],
    )
    async def test_field_named(
        self, federation: LocalFederation, change: dict[str, object], field: str
    ) -> None:
        app = application(federation)
        for name, value in change.items():
            setattr(app, name, value)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await submit(federation, app)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (info.value.details() or "")
        rows = await federation.node(SH).state.fetchone("SELECT COUNT(*) FROM outgoing_cases")
        assert rows == (0,)

    async def test_bad_id_number(self, federation: LocalFederation) -> None:
        app = application(federation)
        app.applicant.id_number = "110105194912310021"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await submit(federation, app)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "applicant.id_number" in (info.value.details() or "")
        assert "110105194912310021" not in (info.value.details() or "")

    async def test_hotel_may_not_withdraw(self, federation: LocalFederation) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await counter(federation).SubmitWithdrawal(
                fund_pb2.SubmitWithdrawalRequest(application=application(federation)),
                metadata=(("authorization", f"Bearer dev-hotel-{SH}"),),
                timeout=5,
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
