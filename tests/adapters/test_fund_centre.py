"""HttpFundCentre against each province's fund-centre simulator: real servers, no mocks."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from adapters import (
    BackendRejected,
    BackendUnavailable,
    FundCentre,
    HttpFundCentre,
    TranslationError,
    WithdrawalNotFound,
    build_fund_centre,
)
from adapters.spec import AdapterConfig
from gateway.core.clock import FrozenClock
from gateway.core.identifiers import make_id_number as id_number
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2
from yrd_simulators.fund_centre import (
    RENT_LIMIT_FEN,
    FundAccount,
    FundCentreSimulator,
    synthetic_accounts,
)
from yrd_simulators.residents import Resident, synthetic_residents

NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
PROVINCES = ("310000", "320000", "330000", "340000")
Table = Callable[[str], dict[str, Any]]
Running = tuple[FundCentreSimulator, FundCentre]


@pytest.fixture
async def running(province: tuple[str, AdapterConfig]) -> AsyncIterator[Running]:
    code, config = province
    simulator = FundCentreSimulator(
        code, review_delay=0.01, payment_delay=0.01, clock=FrozenClock(NOW)
    )
    url = await simulator.start()
    centre = build_fund_centre(config, url, clock=FrozenClock(NOW))
    yield simulator, centre
    await centre.aclose()
    await simulator.stop()


def _residents(simulator: FundCentreSimulator) -> dict[str, Resident]:
    people = {r.id_number: r for code in PROVINCES for r in synthetic_residents(code)}
    return {a.account_no: people[a.id_number] for a in simulator.accounts.values()}


def _account(
    simulator: FundCentreSimulator,
    *,
    status: str = "NORMAL",
    born_before: date | None = None,
    born_after: date | None = None,
    skip: int = 0,
) -> tuple[FundAccount, Resident]:
    """An account of the wanted status (and holder age), the ``skip``-th match."""
    owners = _residents(simulator)
    matches = [
        (account, owners[account.account_no])
        for account in simulator.accounts.values()
        if account.status == status
        and (born_before is None or owners[account.account_no].birth_date < born_before)
        and (born_after is None or owners[account.account_no].birth_date > born_after)
    ]
    return matches[skip]


def _application(
    account: FundAccount,
    holder: Resident,
    *,
    amount_fen: int = 123_456,
    reason: int = fund_pb2.LOAN_REPAYMENT,
    certificates: tuple[str, ...] = ("CERT-1",),
    fund_province: str = "",
) -> fund_pb2.WithdrawalApplication:
    return fund_pb2.WithdrawalApplication(
        idempotency_key="idem-key-0001",
        applicant=common_pb2.Person(
            id_number=holder.id_number,
            full_name=holder.full_name,
            gender=common_pb2.Gender.Value(holder.gender),
            birth_date=holder.birth_date.isoformat(),
        ),
        fund_province=fund_province,
        fund_account=account.account_no,
        reason=reason,  # type: ignore[arg-type]  # an int is a WithdrawalReason value
        amount_fen=amount_fen,
        payee_account="6222020200112233445",
        payee_bank="中国工商银行",
        supporting_certificates=list(certificates),
        applicant_province="310000",
    )


async def _final(
    centre: FundCentre, reference: str, *, seen: list[int] | None = None
) -> fund_pb2.WithdrawalStatusUpdate:
    """Poll the status until PAID or REJECTED (recording every status seen)."""
    async with asyncio.timeout(5):
        while True:
            update = await centre.withdrawal_status(reference, timeout=2)
            if seen is not None and (not seen or seen[-1] != update.status):
                seen.append(update.status)
            if update.status in (fund_pb2.PAID, fund_pb2.REJECTED):
                return update
            await asyncio.sleep(0.002)


class TestSimulatorAccounts:
    """Accounts are deterministic: own residents, every third resident of other provinces."""

    @pytest.mark.parametrize("code", PROVINCES)
    def test_holders(self, code: str) -> None:
        accounts = synthetic_accounts(code)
        holders = {a.id_number for a in accounts.values()}
        assert {r.id_number for r in synthetic_residents(code)} <= holders
        for other in PROVINCES:
            if other != code:
                assert {r.id_number for r in synthetic_residents(other)[::3]} <= holders
        assert synthetic_accounts(code) == accounts

    @pytest.mark.parametrize("code", PROVINCES)
    def test_shape(self, code: str) -> None:
        accounts = synthetic_accounts(code).values()
        assert all(len(a.account_no) == 12 and a.account_no.isdigit() for a in accounts)
        assert all(5_000_000 <= a.balance_fen <= 80_000_000 for a in accounts)
        statuses = [a.status for a in accounts]
        assert statuses.count("FROZEN") >= 2
        assert statuses.count("CLOSED") >= 2
        assert statuses.count("NORMAL") > len(statuses) * 0.9

    async def test_admin_endpoints(self) -> None:
        async with (
            FundCentreSimulator("320000") as simulator,
            aiohttp.ClientSession() as http,
        ):
            holder = synthetic_residents("310000")[0]
            async with http.get(simulator.url + "/admin/accounts") as r:
                everyone = await r.json()
            assert len(everyone) == len(simulator.accounts)
            async with http.get(
                simulator.url + "/admin/accounts", params={"id_number": holder.id_number}
            ) as r:
                (mine,) = await r.json()
            assert mine["id_number"] == holder.id_number
            assert set(mine) == {"account", "id_number", "balance_fen", "status"}
            async with http.post(
                simulator.url + f"/admin/accounts/{mine['account']}/status",
                json={"status": "FROZEN"},
            ) as r:
                assert r.status == 200
            assert simulator.accounts[mine["account"]].status == "FROZEN"
            async with http.post(
                simulator.url + f"/admin/accounts/{mine['account']}/status",
                json={"status": "ASLEEP"},
            ) as r:
                assert r.status == 400
            async with http.get(simulator.url + "/admin/payments") as r:
                assert await r.json() == []

    @pytest.mark.parametrize("code", PROVINCES)
    async def test_unreadable_submission_is_http_400(self, code: str) -> None:
        async with FundCentreSimulator(code) as simulator, aiohttp.ClientSession() as http:
            async with http.post(simulator.url + simulator.paths["submit"], data=b"{<") as r:
                assert r.status == 400
            assert simulator.cases == {}

    async def test_stop_is_idempotent_and_keeps_state(self) -> None:
        simulator = FundCentreSimulator("330000")
        await simulator.start()
        await simulator.stop()
        await simulator.stop()
        with pytest.raises(RuntimeError):
            _ = simulator.url
        assert len(simulator.accounts) > 40


class TestQueryAccount:
    """The account query, end to end in each province's native format."""

    async def test_own_resident(self, running: Running) -> None:
        simulator, centre = running
        account, holder = _account(simulator)
        answer = await centre.query_account(holder.id_number, timeout=5)
        assert answer is not None
        assert answer.fund_province == simulator.province
        assert answer.fund_account == account.account_no
        assert answer.status == fund_pb2.NORMAL
        assert answer.balance_fen == account.balance_fen
        assert answer.as_of.ToDatetime(UTC) == NOW

    async def test_resident_of_another_province(self, running: Running) -> None:
        simulator, centre = running
        other = next(code for code in PROVINCES if code != simulator.province)
        holder = synthetic_residents(other)[3]
        answer = await centre.query_account(holder.id_number, timeout=5)
        assert answer is not None
        assert simulator.accounts[answer.fund_account].id_number == holder.id_number

    async def test_frozen(self, running: Running) -> None:
        simulator, centre = running
        _, holder = _account(simulator, status="FROZEN")
        answer = await centre.query_account(holder.id_number, timeout=5)
        assert answer is not None
        assert answer.status == fund_pb2.FROZEN

    async def test_no_account(self, running: Running) -> None:
        _, centre = running
        stranger = id_number("110101", date(1990, 1, 1), 123)
        assert await centre.query_account(stranger, timeout=5) is None


class TestWithdrawal:
    """Submission, review and payment, with the simulator's rules, in every province."""

    async def test_paid_once(self, running: Running) -> None:
        simulator, centre = running
        account, holder = _account(simulator)
        balance = account.balance_fen
        submitted = await centre.submit_withdrawal(
            "REF-paid-1", _application(account, holder), timeout=5
        )
        assert submitted.status == fund_pb2.UNDER_REVIEW
        assert submitted.idempotency_key == "idem-key-0001"
        assert submitted.remote_reference == simulator.cases["REF-paid-1"].case_no
        assert submitted.paid_amount_fen == 0
        seen: list[int] = []
        final = await _final(centre, "REF-paid-1", seen=seen)
        assert final.status == fund_pb2.PAID
        assert final.paid_amount_fen == 123_456
        assert final.remote_reference == submitted.remote_reference
        assert seen[-1] == fund_pb2.PAID
        assert set(seen) <= {fund_pb2.UNDER_REVIEW, fund_pb2.APPROVED, fund_pb2.PAID}
        assert simulator.accounts[account.account_no].balance_fen == balance - 123_456
        assert [tuple(p) for p in simulator.payments] == [
            ("REF-paid-1", account.account_no, 123_456)
        ]
        after = await centre.query_account(holder.id_number, timeout=5)
        assert after is not None
        assert after.balance_fen == balance - 123_456

    async def test_same_reference_twice_pays_once(self, running: Running) -> None:
        simulator, centre = running
        account, holder = _account(simulator)
        balance = account.balance_fen
        application = _application(account, holder, amount_fen=1)
        first, second = await asyncio.gather(
            centre.submit_withdrawal("REF-twice", application, timeout=5),
            centre.submit_withdrawal("REF-twice", application, timeout=5),
        )
        assert first.remote_reference == second.remote_reference
        await _final(centre, "REF-twice")
        again = await centre.submit_withdrawal("REF-twice", application, timeout=5)
        assert again.status == fund_pb2.PAID
        assert again.remote_reference == first.remote_reference
        await simulator.wait_idle()
        assert len(simulator.payments) == 1
        assert len(simulator.cases) == 1
        assert simulator.accounts[account.account_no].balance_fen == balance - 1

    async def test_amount_exceeds_balance(self, running: Running) -> None:
        simulator, centre = running
        account, holder = _account(simulator)
        application = _application(account, holder, amount_fen=account.balance_fen + 1)
        submitted = await centre.submit_withdrawal("REF-too-much", application, timeout=5)
        assert submitted.status == fund_pb2.UNDER_REVIEW
        final = await _final(centre, "REF-too-much")
        assert final.status == fund_pb2.REJECTED
        assert final.status_reason
        assert final.paid_amount_fen == 0
        assert simulator.payments == []

    @pytest.mark.parametrize("status", ["FROZEN", "CLOSED"])
    async def test_frozen_or_closed_account(self, running: Running, status: str) -> None:
        simulator, centre = running
        account, holder = _account(simulator, status=status)
        await centre.submit_withdrawal("REF-frozen", _application(account, holder), timeout=5)
        final = await _final(centre, "REF-frozen")
        assert final.status == fund_pb2.REJECTED
        assert final.status_reason
        assert simulator.payments == []

    async def test_rent_limit(self, running: Running) -> None:
        simulator, centre = running
        account, holder = _account(simulator)
        over = _application(account, holder, amount_fen=RENT_LIMIT_FEN + 1, reason=fund_pb2.RENT)
        at = _application(account, holder, amount_fen=RENT_LIMIT_FEN, reason=fund_pb2.RENT)
        await centre.submit_withdrawal("REF-rent-over", over, timeout=5)
        await centre.submit_withdrawal("REF-rent-at", at, timeout=5)
        assert (await _final(centre, "REF-rent-over")).status == fund_pb2.REJECTED
        assert (await _final(centre, "REF-rent-at")).status == fund_pb2.PAID
        assert [p.reference for p in simulator.payments] == ["REF-rent-at"]

    async def test_house_purchase_needs_a_certificate(self, running: Running) -> None:
        simulator, centre = running
        account, holder = _account(simulator)
        bare = _application(account, holder, reason=fund_pb2.HOUSE_PURCHASE, certificates=())
        await centre.submit_withdrawal("REF-no-cert", bare, timeout=5)
        assert (await _final(centre, "REF-no-cert")).status == fund_pb2.REJECTED

    async def test_account_of_someone_else(self, running: Running) -> None:
        simulator, centre = running
        account, _ = _account(simulator)
        _, other = _account(simulator, skip=1)
        await centre.submit_withdrawal("REF-not-mine", _application(account, other), timeout=5)
        assert (await _final(centre, "REF-not-mine")).status == fund_pb2.REJECTED

    async def test_retirement(self, running: Running) -> None:
        simulator, centre = running
        young, young_holder = _account(simulator, born_after=date(1980, 1, 1))
        old, old_holder = _account(simulator, born_before=date(1965, 1, 1))
        old2, old2_holder = _account(simulator, born_before=date(1965, 1, 1), skip=1)
        cases = {
            "REF-ret-young": _application(
                young, young_holder, amount_fen=young.balance_fen, reason=fund_pb2.RETIREMENT
            ),
            "REF-ret-part": _application(
                old2, old2_holder, amount_fen=old2.balance_fen - 1, reason=fund_pb2.RETIREMENT
            ),
            "REF-ret-full": _application(
                old, old_holder, amount_fen=old.balance_fen, reason=fund_pb2.RETIREMENT
            ),
        }
        for reference, application in cases.items():
            await centre.submit_withdrawal(reference, application, timeout=5)
        assert (await _final(centre, "REF-ret-young")).status == fund_pb2.REJECTED
        assert (await _final(centre, "REF-ret-part")).status == fund_pb2.REJECTED
        assert (await _final(centre, "REF-ret-full")).status == fund_pb2.PAID
        assert simulator.accounts[old.account_no].balance_fen == 0

    async def test_unknown_account_is_rejected_at_once(self, running: Running) -> None:
        simulator, centre = running
        account, holder = _account(simulator)
        application = _application(account, holder)
        application.fund_account = "999999999999"
        answer = await centre.submit_withdrawal("REF-unknown-acct", application, timeout=5)
        assert answer.status == fund_pb2.REJECTED
        assert answer.status_reason
        assert answer.remote_reference

    async def test_status_of_an_unknown_reference(self, running: Running) -> None:
        _, centre = running
        with pytest.raises(WithdrawalNotFound) as info:
            await centre.withdrawal_status("REF-never-sent", timeout=5)
        assert isinstance(info.value, BackendRejected)

    async def test_bad_reference(self, running: Running) -> None:
        simulator, centre = running
        account, holder = _account(simulator)
        with pytest.raises(TranslationError, match="reference"):
            await centre.submit_withdrawal("bad ref/..", _application(account, holder), timeout=5)
        with pytest.raises(TranslationError, match="reference"):
            await centre.withdrawal_status("", timeout=5)

    async def test_unspecified_reason_is_not_sent(self, running: Running) -> None:
        simulator, centre = running
        account, holder = _account(simulator)
        application = _application(account, holder, reason=fund_pb2.WITHDRAWAL_REASON_UNSPECIFIED)
        served = simulator.requests_served
        with pytest.raises(TranslationError, match="reason"):
            await centre.submit_withdrawal("REF-unspecified", application, timeout=5)
        assert simulator.requests_served == served

    async def test_cases_survive_a_restart(
        self, running: Running, province: tuple[str, AdapterConfig]
    ) -> None:
        simulator, centre = running
        account, holder = _account(simulator)
        simulator.review_delay = 10  # still under review when the centre stops
        await centre.submit_withdrawal("REF-restart", _application(account, holder), timeout=5)
        await simulator.stop()
        simulator.review_delay = 0.01
        url = await simulator.start()
        async with HttpFundCentre(province[1], url) as again:
            assert (await _final(again, "REF-restart")).status == fund_pb2.PAID
        assert len(simulator.payments) == 1


class TestConnectorErrors:
    """Failures reach the gateway as adapter errors, without personal data."""

    async def test_unreachable(self, adapter_table: Table) -> None:
        config = AdapterConfig.model_validate(adapter_table("jiangsu"))
        holder = synthetic_residents("320000")[0]
        with structlog.testing.capture_logs() as logs:
            async with HttpFundCentre(config, "http://127.0.0.1:9") as centre:
                with pytest.raises(BackendUnavailable) as info:
                    await centre.query_account(holder.id_number, timeout=2)
        assert holder.id_number not in str(info.value)
        assert holder.id_number not in repr(logs)
        assert info.value.retryable

    @pytest.mark.parametrize(
        ("status", "error"),
        [(400, BackendRejected), (404, BackendRejected), (503, BackendUnavailable)],
    )
    async def test_http_errors(
        self, adapter_table: Table, status: int, error: type[Exception]
    ) -> None:
        async def failing(request: web.Request) -> web.Response:
            return web.Response(status=status, text="no")

        url, stop = await _serve(web.post("/fund/v1/withdrawals", failing))
        config = AdapterConfig.model_validate(adapter_table("jiangsu"))
        simulator = FundCentreSimulator("320000")
        account, holder = _account(simulator)
        try:
            async with HttpFundCentre(config, url) as centre:
                with pytest.raises(error, match=f"HTTP {status}") as info:
                    await centre.submit_withdrawal(
                        "REF-1", _application(account, holder), timeout=2
                    )
            assert holder.id_number not in str(info.value)
            assert account.account_no not in str(info.value)
        finally:
            await stop()

    async def test_timeout(self, adapter_table: Table) -> None:
        release = asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            await release.wait()
            return web.Response(text="{}")

        url, stop = await _serve(web.get("/fund/v1/withdrawals/{reference}", slow))
        config = AdapterConfig.model_validate(adapter_table("jiangsu"))
        try:
            async with HttpFundCentre(config, url) as centre:
                with pytest.raises(BackendUnavailable, match=r"within 0\.200 s"):
                    await centre.withdrawal_status("REF-1", timeout=0.2)
        finally:
            release.set()
            await stop()

    async def test_answer_about_another_reference(self, adapter_table: Table) -> None:
        async def other(request: web.Request) -> web.Response:
            return web.json_response(
                {"resultCode": "OK", "requestRef": "REF-2", "caseNo": "C", "state": "PAID"}
            )

        url, stop = await _serve(web.get("/fund/v1/withdrawals/{reference}", other))
        config = AdapterConfig.model_validate(adapter_table("jiangsu"))
        try:
            async with HttpFundCentre(config, url) as centre:
                with pytest.raises(TranslationError, match="reference asked about"):
                    await centre.withdrawal_status("REF-1", timeout=2)
        finally:
            await stop()

    async def test_mapping_that_does_not_match_the_centre(self, adapter_table: Table) -> None:
        # Configure Anhui's balance as integer fen: its centre sends yuan strings.
        table = adapter_table("anhui")
        for rule in table["fund"]["account"]["fields"]:
            if rule["canonical"] == "balance_fen":
                rule["format"] = "fen"
        config = AdapterConfig.model_validate(table)
        holder = synthetic_residents("340000")[0]
        simulator = FundCentreSimulator("340000")
        async with simulator, HttpFundCentre(config, await simulator.start()) as centre:
            with pytest.raises(TranslationError, match=r"fund\.account: Balance: expected"):
                await centre.query_account(holder.id_number, timeout=2)

    async def test_closed_connector(self, adapter_table: Table) -> None:
        config = AdapterConfig.model_validate(adapter_table("zhejiang"))
        centre = HttpFundCentre(config, "http://127.0.0.1:9")
        await centre.aclose()
        await centre.aclose()
        with pytest.raises(BackendUnavailable, match="closed"):
            await centre.withdrawal_status("REF-1", timeout=1)

    def test_province_without_fund_section(self, adapter_table: Table) -> None:
        table = adapter_table("zhejiang")
        del table["fund"]
        with pytest.raises(ValueError, match=r"\[adapter\.fund\]"):
            build_fund_centre(AdapterConfig.model_validate(table), "http://127.0.0.1:9")

    def test_bad_base_url(self, adapter_table: Table) -> None:
        config = AdapterConfig.model_validate(adapter_table("anhui"))
        with pytest.raises(ValueError, match="http"):
            HttpFundCentre(config, "127.0.0.1:8340")

    def test_is_a_fund_centre(self, adapter_table: Table) -> None:
        config = AdapterConfig.model_validate(adapter_table("anhui"))
        assert isinstance(build_fund_centre(config, "http://127.0.0.1:9"), FundCentre)


class TestStandaloneProcess:
    """``python -m yrd_simulators`` announces its URLs, serves, and stops on a signal."""

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
    async def test_serves_until_signalled(self, config_dir: Path, sig: signal.Signals) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "yrd_simulators",
            "--province",
            "320000",
            "--eid-port",
            "0",
            "--fund-port",
            "0",
            "--keys-dir",
            str(config_dir / "320000" / "keys"),
            "--review-delay",
            "0.01",
            "--payment-delay",
            "0.01",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
            announced = json.loads(line)
            assert announced["province"] == "320000"
            holder = synthetic_residents("310000")[0]
            async with aiohttp.ClientSession() as http:
                async with http.get(
                    announced["fund_url"] + "/admin/accounts",
                    params={"id_number": holder.id_number},
                ) as r:
                    assert r.status == 200
                    (account,) = await r.json()
                assert account["status"] in ("NORMAL", "FROZEN", "CLOSED")
                async with http.get(announced["eid_url"] + "/residents") as r:
                    assert len(await r.json()) == 40
            process.send_signal(sig)
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
            assert process.returncode == 0, stderr.decode()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    async def test_unknown_province(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "yrd_simulators",
            "--province",
            "110000",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 2
        assert b"--province" in stderr


async def _serve(route: web.RouteDef) -> tuple[str, Callable[[], Any]]:
    """A one-route aiohttp server on a free loopback port: (base URL, stop)."""
    app = web.Application()
    app.add_routes([route])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}", runner.cleanup
