"""Money moves once: a fund centre that loses track of withdrawals it was given
(its state lost) is never asked to pay them again. The fund node puts such a
withdrawal in RECONCILIATION; the operator resolves it from the centre's own
records with `yrd-gateway outbox resolve`, audited in the message log.

Real nodes (LocalFederation), the real fund-centre simulator and its payment
ledger (which survives the centre's loss of its cases), the real CLI.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.cli import main as cli
from gateway.storage.messagelog import verify_file
from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import JS, SH, ZJ
from tests.integration.test_certificates_and_cases import case_application, submit_case
from tests.integration.test_certificates_and_cases import until_final as until_case_final
from tests.integration.test_fund_exchange import application, counter, submit, until_final
from tests.paths import CONFIG_DIR, config_file
from yrd.case.v1 import case_pb2, case_pb2_grpc
from yrd.fund.v1 import fund_pb2

OFFICE = (("authorization", f"Bearer dev-office-{SH}"),)
S = fund_pb2.WithdrawalStatus
N = 10


@pytest_asyncio.fixture
async def federation(tmp_path: Path) -> AsyncIterator[LocalFederation]:
    """The federation, from a copy of the configs whose Jiangsu file names the
    store the running Jiangsu node uses (so the CLI can be pointed at it)."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs, ignore=shutil.ignore_patterns("var"))
    work = tmp_path / "work"
    jiangsu = config_file("320000", configs)
    text = re.sub(
        r'^store = "[^"]+"', f'store = "{work / JS}"', jiangsu.read_text("utf-8"), flags=re.M
    )
    jiangsu.write_text(text, "utf-8")
    async with LocalFederation(configs, work) as running:
        yield running


def config_of(federation: LocalFederation) -> str:
    return str(config_file("320000", federation.config_dir))


async def until(
    check: Callable[[], Awaitable[bool]], seconds: float = 20, what: str = "condition"
) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def in_reconciliation(federation: LocalFederation) -> list[str]:
    rows = await federation.node(JS).state.fetchall(
        "SELECT reference FROM incoming_cases WHERE reconciliation = 1 ORDER BY reference"
    )
    return [str(r[0]) for r in rows]


async def status_of(federation: LocalFederation, case_id: str) -> fund_pb2.Withdrawal:
    return await counter(federation).GetWithdrawal(
        fund_pb2.GetWithdrawalRequest(case_id=case_id), metadata=OFFICE, timeout=5
    )


async def resolve(federation: LocalFederation, reference: str, *outcome: str) -> int:
    """`yrd-gateway outbox resolve` run while the node runs (in a thread: the CLI
    opens the node's stores through their own connections)."""
    return await asyncio.to_thread(
        cli.main,
        [
            *("outbox", "resolve", reference, *outcome, "--config", config_of(federation)),
            *("--operator", "op-zhang", "--reason", "centre ledger checked"),
        ],
    )


def operator_rows(federation: LocalFederation) -> list[tuple[str, bytes]]:
    with sqlite3.connect(federation.work_dir / JS / "messages.db") as db:
        rows = db.execute(
            "SELECT service, envelope FROM message_log WHERE kind = 'operator' ORDER BY seq"
        ).fetchall()
    return [(str(r[0]), bytes(r[1])) for r in rows]


@pytest.mark.timeout(180)
async def test_a_centre_that_forgets_paid_withdrawals_pays_each_once(
    federation: LocalFederation,
) -> None:
    centre = federation.provinces[JS].fund_centre
    centre.review_delay = 1.0  # the fund node sees them UNDER_REVIEW, not yet PAID
    apps = [application(federation, amount_fen=10_000 + i, reason=fund_pb2.RENT) for i in range(N)]
    case_ids = [(await submit(federation, app)).case_id for app in apps]

    async def all_under_review() -> bool:
        statuses = [(await status_of(federation, c)).status for c in case_ids]
        return statuses == [S.UNDER_REVIEW] * N

    await until(all_under_review, what="every withdrawal UNDER_REVIEW")
    # The fund node stops; meanwhile the centre pays every one and then loses its cases.
    await federation.stop_node(JS)
    await centre.wait_idle()
    assert len(centre.payments) == N
    assert await centre.forget() == N
    await federation.start_node(JS)

    async def all_in_reconciliation() -> bool:
        return len(await in_reconciliation(federation)) == N

    await until(all_in_reconciliation, what="every withdrawal in reconciliation")
    references = await in_reconciliation(federation)
    await asyncio.sleep(1.5)  # several of the processor's polls: nothing is submitted again
    assert len(centre.payments) == N
    assert sorted(p.reference for p in centre.payments) == references, "paid twice"
    assert centre.cases == {}
    metrics = (await federation.node(JS).metrics.render()).decode()
    assert f'yrd_reconciliation_cases{{domain="withdrawal"}} {float(N)}' in metrics

    listing = await asyncio.to_thread(
        subprocess.run,
        [
            *(sys.executable, "-m", "gateway", "outbox", "list", "--reconciliation"),
            *("--config", config_of(federation)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert f"{N} case(s) in reconciliation" in listing.stdout
    for reference in references:
        assert re.search(rf"{reference}\s+withdrawal\s+{SH}\s+\S+\s+UNDER_REVIEW", listing.stdout)
    for app in apps:  # no personal data in the listing
        assert app.applicant.id_number not in listing.stdout
        assert app.fund_account not in listing.stdout

    # The operator checks the centre's ledger: each was paid. Resolve them.
    for reference in references:
        assert await resolve(federation, reference, "--paid") == 0
    assert await in_reconciliation(federation) == []
    for case_id, app in zip(case_ids, apps, strict=True):
        final, _ = await until_final(federation, case_id)
        assert final.status == S.PAID
        assert final.paid_amount_fen == app.amount_fen
    assert len(centre.payments) == N
    rows = operator_rows(federation)
    assert [service for service, _ in rows] == ["operator.resolve_paid"] * N
    assert all(b'"operator": "op-zhang"' in envelope for _, envelope in rows)
    # A second resolution of the same case is refused: it is no longer in reconciliation.
    assert await resolve(federation, references[0], "--not-paid") == 1
    await federation.stop_node(JS)
    report = await verify_file(federation.work_dir / JS / "messages.db")
    assert report.intact, report.detail


@pytest.mark.timeout(180)
async def test_a_lost_submit_answer_then_a_forgetful_centre_and_a_case_never_paid(
    federation: LocalFederation,
) -> None:
    centre = federation.provinces[JS].fund_centre
    # 1. The centre takes a withdrawal and pays it, but every answer is lost;
    #    then it loses its cases. The fund node must not submit it again.
    centre.lose_answers = True
    lost = application(federation, amount_fen=12_345, reason=fund_pb2.RENT)
    lost_case = (await submit(federation, lost)).case_id

    async def paid_by_centre() -> bool:
        return [p.amount_fen for p in centre.payments] == [12_345]

    await until(paid_by_centre, what="the centre paying the first withdrawal")
    await asyncio.sleep(0.5)  # the node asks for its status (answers lost too)
    assert await centre.forget() == 1
    centre.lose_answers = False

    async def one_in_reconciliation() -> bool:
        return len(await in_reconciliation(federation)) == 1

    await until(one_in_reconciliation, what="the first withdrawal in reconciliation")
    await asyncio.sleep(1.0)
    assert len(centre.payments) == 1, "paid twice after a lost answer"
    assert (await status_of(federation, lost_case)).status == S.DELIVERED
    [lost_reference] = await in_reconciliation(federation)
    assert await resolve(federation, lost_reference, "--paid") == 0
    final, _ = await until_final(federation, lost_case)
    assert (final.status, final.paid_amount_fen) == (S.PAID, 12_345)

    # 2. The centre loses a withdrawal before paying it: the operator finds no
    #    payment in its ledger and resolves --not-paid; it is paid, once.
    centre.review_delay = 60.0
    unpaid = application(federation, amount_fen=23_456, reason=fund_pb2.RENT)
    unpaid_case = (await submit(federation, unpaid)).case_id

    async def under_review() -> bool:
        return (await status_of(federation, unpaid_case)).status == S.UNDER_REVIEW

    await until(under_review, what="the second withdrawal UNDER_REVIEW")
    assert await centre.forget() == 1
    await until(one_in_reconciliation, what="the second withdrawal in reconciliation")
    [unpaid_reference] = await in_reconciliation(federation)
    assert len(centre.payments) == 1
    centre.review_delay = 0.05
    assert await resolve(federation, unpaid_reference, "--not-paid") == 0
    final, _ = await until_final(federation, unpaid_case)
    assert (final.status, final.paid_amount_fen) == (S.PAID, 23_456)
    paid = [p.reference for p in centre.payments]
    assert sorted(paid) == sorted([lost_reference, unpaid_reference])
    assert [service for service, _ in operator_rows(federation)] == [
        "operator.resolve_paid",
        "operator.resolve_not_paid",
    ]


@pytest.mark.timeout(120)
async def test_a_case_system_that_forgets_is_given_the_case_again(
    federation: LocalFederation,
) -> None:
    """Service cases move no money: a case the case system lost is submitted again
    (idempotent by reference), never held for reconciliation."""
    system = federation.provinces[ZJ].case_system
    assert system is not None
    system.processing_delay = 60.0
    case = await submit_case(federation, case_application())
    stub = case_pb2_grpc.CaseServiceStub(federation.channel(JS))

    async def accepted() -> bool:
        got = await stub.GetCase(
            case_pb2.GetCaseRequest(case_id=case.case_id),
            metadata=(("authorization", f"Bearer dev-office-{JS}"),),
            timeout=5,
        )
        return bool(got.status == case_pb2.CASE_ACCEPTED)

    await until(accepted, what="the case ACCEPTED")
    [reference] = list(system.cases)
    assert system.forget() == 1
    system.processing_delay = 0.05
    final, _ = await until_case_final(federation, case.case_id)
    assert final.status == case_pb2.CASE_COMPLETED
    assert list(system.cases) == [reference]  # given again, under the same reference
    rows = await federation.node(ZJ).state.fetchall(
        "SELECT COUNT(*) FROM incoming_cases WHERE reconciliation = 1"
    )
    assert rows == [(0,)]


@pytest.mark.timeout(120)
async def test_an_unreadable_submit_answer_is_not_a_refusal(federation: LocalFederation) -> None:
    """The fund centre takes a withdrawal but answers with a body the adapter cannot
    read: the centre may have taken it, so it is not REJECTED; its status is asked
    for and it is paid, once."""
    centre = federation.provinces[JS].fund_centre
    centre.garble_submit_answers = True
    app = application(federation, amount_fen=34_567, reason=fund_pb2.RENT)
    case_id = (await submit(federation, app)).case_id

    async def taken() -> bool:
        return len(centre.cases) == 1

    await until(taken, what="the centre taking the withdrawal")
    centre.garble_submit_answers = False
    final, _ = await until_final(federation, case_id)
    assert (final.status, final.paid_amount_fen) == (S.PAID, 34_567)
    assert [p.amount_fen for p in centre.payments] == [34_567]
