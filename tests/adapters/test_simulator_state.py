"""The fund centre and case system simulators remember durably and dedupe by the
exchange's idempotency key, which each province's mapping carries to them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tomllib
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters import BackendUnavailable, build_fund_centre
from adapters.spec import AdapterConfig
from gateway.core.clock import FrozenClock
from tests.paths import config_file, keys_dir
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2
from yrd_simulators.case_system import CaseSystemSimulator
from yrd_simulators.case_system import Submission as CaseSubmission
from yrd_simulators.fund_centre import PAID, FundCentreSimulator, Submission
from yrd_simulators.residents import synthetic_residents

NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def _application(
    simulator: FundCentreSimulator, key: str, amount_fen: int = 50_000
) -> fund_pb2.WithdrawalApplication:
    people = {r.id_number: r for r in synthetic_residents(simulator.province)}
    account = next(
        a for a in simulator.accounts.values() if a.status == "NORMAL" and a.id_number in people
    )
    holder = people[account.id_number]
    return fund_pb2.WithdrawalApplication(
        idempotency_key=key,
        applicant=common_pb2.Person(id_number=holder.id_number, full_name=holder.full_name),
        fund_account=account.account_no,
        reason=fund_pb2.RENT,
        amount_fen=amount_fen,
        payee_account="6222020200112233445",
        payee_bank="中国工商银行",
        applicant_province="310000",
    )


class TestIdempotencyKeyReachesTheCentre:
    """Every province's mapping carries the idempotency key in its native format."""

    async def test_key_in_native_submission(self, province: tuple[str, AdapterConfig]) -> None:
        code, config = province
        simulator = FundCentreSimulator(code, review_delay=60, clock=FrozenClock(NOW))
        url = await simulator.start()
        centre = build_fund_centre(config, url, clock=FrozenClock(NOW))
        try:
            app = _application(simulator, "office-key-0001")
            await centre.submit_withdrawal("FW-320000-a", app, timeout=5)
            assert simulator.cases["FW-320000-a"].submission.idempotency_key == "office-key-0001"
            # The same application under another reference is the same case.
            case = simulator.cases["FW-320000-a"]
            again = simulator.submit(
                type(case.submission)(**{**case.submission.__dict__, "reference": "FW-other"})
            )
            assert again is case
            assert len(simulator.cases) == 1
        finally:
            await centre.aclose()
            await simulator.stop()


class TestDurableFundCentre:
    """With a state file, cases, balances and the payment ledger survive a restart;
    forgetting drops the cases, never the ledger."""

    async def test_restart_and_forget(self, tmp_path: Path) -> None:
        state = tmp_path / "fund.db"
        first = FundCentreSimulator("320000", review_delay=0, payment_delay=0, state_file=state)
        await first.start()
        app = _application(first, "k-1")
        submission = Submission(
            reference="FW-1",
            id_number=app.applicant.id_number,
            full_name=app.applicant.full_name,
            account_no=app.fund_account,
            reason="RENT",
            amount_fen=app.amount_fen,
            payee_account=app.payee_account,
            payee_bank=app.payee_bank,
            applicant_province="310000",
            idempotency_key="k-1",
        )
        first.submit(submission)
        await first.wait_idle()
        assert first.cases["FW-1"].status == PAID
        balance = first.accounts[app.fund_account].balance_fen
        await first.stop()
        first.close_state()

        second = FundCentreSimulator("320000", review_delay=0, payment_delay=0, state_file=state)
        await second.start()
        assert second.cases["FW-1"].status == PAID
        assert second.accounts[app.fund_account].balance_fen == balance
        assert [tuple(p) for p in second.payments] == [("FW-1", app.fund_account, 50_000)]
        assert second.submit(submission) is second.cases["FW-1"]
        assert await second.forget() == 1
        await second.stop()
        second.close_state()

        third = FundCentreSimulator("320000", review_delay=0, payment_delay=0, state_file=state)
        assert third.cases == {}
        assert len(third.payments) == 1  # the ledger stays
        assert third.accounts[app.fund_account].balance_fen == balance
        third.close_state()

    async def test_lost_answers(self, province: tuple[str, AdapterConfig]) -> None:
        code, config = province
        simulator = FundCentreSimulator(code, review_delay=60, clock=FrozenClock(NOW))
        url = await simulator.start()
        centre = build_fund_centre(config, url, clock=FrozenClock(NOW))
        simulator.lose_answers = True
        try:
            with pytest.raises(BackendUnavailable) as caught:
                await centre.submit_withdrawal("FW-lost", _application(simulator, "k"), timeout=5)
            assert caught.value.may_have_arrived
            assert "FW-lost" in simulator.cases  # taken, answer lost
        finally:
            await centre.aclose()
            await simulator.stop()

    async def test_refused_connection_never_arrived(
        self, province: tuple[str, AdapterConfig]
    ) -> None:
        code, config = province
        simulator = FundCentreSimulator(code)
        url = await simulator.start()
        await simulator.stop()  # nothing listens on the port any more
        centre = build_fund_centre(config, url)
        try:
            with pytest.raises(BackendUnavailable) as caught:
                await centre.submit_withdrawal("FW-x", _application(simulator, "k"), timeout=5)
            assert not caught.value.may_have_arrived
        finally:
            await centre.aclose()


class TestDurableCaseSystem:
    async def test_restart_dedupe_and_forget(self, tmp_path: Path) -> None:
        state = tmp_path / "cases.db"
        first = CaseSystemSimulator("320000", state_file=state)
        submission = CaseSubmission(
            reference="HC-1",
            idempotency_key="k-1",
            service_code="KS0101",
            applicant_kind="person",
            applicant_id="310104198807151230",
            applicant_name="张伟",
            submitting_province="310000",
        )
        case = first.submit(submission)
        assert first.submit(CaseSubmission(**{**submission.__dict__, "reference": "HC-2"})) is case
        first.close_state()
        second = CaseSystemSimulator("320000", state_file=state)
        assert list(second.cases) == ["HC-1"]
        assert second.cases["HC-1"].case_no == case.case_no
        assert second.forget() == 1
        second.close_state()
        assert CaseSystemSimulator("320000", state_file=state).cases == {}


def _admin(url: str, path: str, body: object | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback simulator, http only
        url + path, data=data, method="GET" if data is None else "POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback simulator
        return json.loads(response.read())


@pytest.mark.timeout(60)
def test_simulator_process_keeps_its_state_across_a_restart(tmp_path: Path) -> None:
    """`python -m yrd_simulators --state-dir DIR`: killed and started again,
    the fund centre still has its cases; /admin/forget drops them, not the ledger."""
    keys = keys_dir("320000")

    def start() -> tuple[subprocess.Popen[str], str]:
        args = ["--province", "320000", "--keys-dir", str(keys)]
        args += ["--state-dir", str(tmp_path / "state"), "--review-delay", "0"]
        process = subprocess.Popen(
            [sys.executable, "-m", "yrd_simulators", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert process.stdout is not None
        return process, json.loads(process.stdout.readline())["fund_url"]

    async def submit(url: str) -> None:
        table = tomllib.loads(config_file("320000").read_text("utf-8"))
        config = AdapterConfig.model_validate(table["adapter"])
        probe = FundCentreSimulator("320000")
        centre = build_fund_centre(config, url)
        try:
            await centre.submit_withdrawal("FW-proc-1", _application(probe, "k-proc"), timeout=5)
            for _ in range(500):
                update = await centre.withdrawal_status("FW-proc-1", timeout=5)
                if update.status == fund_pb2.PAID:
                    break
                await asyncio.sleep(0.02)
            assert update.status == fund_pb2.PAID
        finally:
            await centre.aclose()

    process, url = start()
    try:
        asyncio.run(submit(url))
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
    process, url = start()
    try:
        [withdrawal] = _admin(url, "/admin/withdrawals")
        assert (withdrawal["reference"], withdrawal["status"]) == ("FW-proc-1", "PAID")
        assert _admin(url, "/admin/forget", {}) == {"forgotten_cases": 1}
        assert _admin(url, "/admin/withdrawals") == []
        assert [p["reference"] for p in _admin(url, "/admin/payments")] == ["FW-proc-1"]
    finally:
        process.terminate()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
