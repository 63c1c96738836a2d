"""The chaos soak's accounting: what it reads from a node's store and how it sorts
each accepted exchange (final, parked, reconciliation, in progress, lost), finds
duplicates and counts payments. A soak whose counting could not fail would prove
nothing, so each verdict is shown failing here."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.storage.migrations import STATE_MIGRATIONS, open_writer
from gateway.storage.snapshot import StoreView, read_store
from gateway.tools.soak import (
    CASE,
    WITHDRAWAL,
    CheckinFigures,
    Exchange,
    Faults,
    SoakConfig,
    account,
    classify,
    count_payments,
)
from yrd.case.v1 import case_pb2
from yrd.fund.v1 import fund_pb2

SH, JS = "310000", "320000"
W = fund_pb2.WithdrawalStatus


def withdrawal(key: str = "soak-k-w1", case_id: str = "case-1") -> Exchange:
    return Exchange(WITHDRAWAL, key, SH, JS, fund_pb2.SubmitWithdrawalRequest(), case_id=case_id)


def views(
    *,
    status: int | None = W.UNDER_REVIEW,
    incoming: list[tuple[str, str, int, bool]] | None = None,
    mine_outbox: list[str] | None = None,
    their_outbox: list[str] | None = None,
    key: str = "soak-k-w1",
) -> dict[str, StoreView]:
    mine = StoreView(
        outgoing={} if status is None else {(WITHDRAWAL, key): [("case-1", status, "")]},
        outbox={"case-1": mine_outbox} if mine_outbox else {},
    )
    theirs = StoreView(
        incoming={(WITHDRAWAL, key): incoming or []},
        outbox={"FW-1": their_outbox} if their_outbox else {},
    )
    return {SH: mine, JS: theirs}


class TestClassify:
    """Where an accepted exchange stands, from both nodes' stores."""

    def test_final_at_the_submitting_node(self) -> None:
        outcome = classify(withdrawal(), views(status=W.PAID))
        assert (outcome.where, outcome.status) == ("final", "PAID")

    def test_status_update_dropped_is_lost(self) -> None:
        # the handling node's case is PAID, nothing is left to tell the applicant
        found = views(incoming=[("FW-1", SH, W.PAID, False)])
        assert classify(withdrawal(), found).where == "lost"

    def test_missing_at_the_submitting_node_is_lost(self) -> None:
        assert classify(withdrawal(), views(status=None)).where == "lost"

    @pytest.mark.parametrize(
        ("kwargs", "where"),
        [
            ({"mine_outbox": ["pending"]}, "in progress"),
            ({"incoming": [("FW-1", SH, W.UNDER_REVIEW, False)]}, "in progress"),
            (
                {"incoming": [("FW-1", SH, W.PAID, False)], "their_outbox": ["pending"]},
                "in progress",
            ),
            ({"mine_outbox": ["parked"]}, "parked"),
            ({"incoming": [("FW-1", SH, W.PAID, False)], "their_outbox": ["parked"]}, "parked"),
            ({"incoming": [("FW-1", SH, W.APPROVED, True)]}, "reconciliation"),
        ],
    )
    def test_tracked(self, kwargs: dict[str, object], where: str) -> None:
        assert classify(withdrawal(), views(**kwargs)).where == where  # type: ignore[arg-type]

    def test_two_cases_for_one_key_at_the_handling_node(self) -> None:
        found = views(
            status=W.PAID,
            incoming=[("FW-1", SH, W.PAID, False), ("FW-2", SH, W.PAID, False)],
        )
        assert classify(withdrawal(), found).duplicated

    def test_another_case_id_than_the_one_answered(self) -> None:
        assert classify(withdrawal(case_id="case-9"), views(status=W.PAID)).duplicated


class TestPayments:
    """The centres keep their state on disk: the final ``/admin/payments`` of each
    lists every payment over all its lives."""

    def test_reference_listed_twice_is_paid_twice(self) -> None:
        # the restarted centre paid FW-1 again: its list holds FW-1 twice
        final = [{"reference": "FW-1"}, {"reference": "FW-2"}, {"reference": "FW-1"}]
        paid = count_payments({JS: final})
        assert paid == Counter({"FW-1": 2, "FW-2": 1})

    def test_durable_centre_final_list_holds_all(self) -> None:
        # payments made before a kill are in the final list, counted once each
        final = {JS: [{"reference": "FW-1"}, {"reference": "FW-2"}], SH: [{"reference": "FW-3"}]}
        assert count_payments(final) == Counter({"FW-1": 1, "FW-2": 1, "FW-3": 1})


class TestReport:
    def report(self, status: int, paid: Counter[str]) -> tuple[str, list[str]]:
        exchanges = [withdrawal()]
        found = views(status=status, incoming=[("FW-1", SH, status, False)])
        report = account(
            SoakConfig.smoke(),
            Faults(),
            exchanges,
            found,
            paid,
            chaos_seconds=1,
            drain_seconds=1,
        )
        return report.render(), report.failures

    def test_paid_once_passes(self) -> None:
        text, failures = self.report(W.PAID, Counter({"FW-1": 1}))
        assert failures == []
        assert text.endswith("PASS")

    def test_paid_twice_fails(self) -> None:
        text, failures = self.report(W.PAID, Counter({"FW-1": 2}))
        assert failures == ["paid twice"]
        assert "paid twice: soak-k-w1" in text

    def test_rejected_is_a_wrong_refusal(self) -> None:
        text, failures = self.report(W.REJECTED, Counter())
        assert failures == ["wrongly REJECTED/REFUSED"]
        assert text.splitlines()[-1] == "FAIL: wrongly REJECTED/REFUSED"

    def test_payment_of_no_accepted_exchange_twice_fails(self) -> None:
        _, failures = self.report(W.PAID, Counter({"FW-1": 1, "FW-77": 2}))
        assert failures == ["paid twice (references of no accepted exchange)"]

    @pytest.mark.parametrize(
        ("failed", "expected"),
        [
            (Counter({"UNAVAILABLE": 3, "ISSUER_UNREACHABLE": 1}), []),
            (Counter({"REPLAYED": 1}), ["fresh check-ins answered REPLAYED"]),
        ],
    )
    def test_a_fresh_check_in_replayed_fails(
        self, failed: Counter[str], expected: list[str]
    ) -> None:
        report = account(
            SoakConfig.smoke(),
            Faults(),
            [withdrawal()],
            views(status=W.PAID, incoming=[("FW-1", SH, W.PAID, False)]),
            Counter({"FW-1": 1}),
            chaos_seconds=1,
            drain_seconds=1,
        )
        report.checkins = CheckinFigures(calls=10, verdicts=10 - failed.total(), failed=failed)
        assert report.failures == expected
        assert "or ISSUER_UNREACHABLE" in report.render()


class TestReadStore:
    """The soak reads a node's state.db read-only, the PARKED and RECONCILIATION
    states included."""

    def make(self, path: Path, *, parked: bool) -> None:
        open_writer(path, STATE_MIGRATIONS, what="state store").close()  # the node's schema
        db = sqlite3.connect(path)
        now = time.time()
        db.execute(
            "INSERT INTO outgoing_cases (case_id, domain, idempotency_key, body_digest,"
            " client_id, peer, application, status, status_reason, correlation_id,"
            " submitted_at, updated_at) VALUES ('c1', 'case', 'soak-k-c1', x'00', 'office',"
            " ?, x'', ?, 'because', 'corr', 't', 't')",
            (JS, case_pb2.CASE_REFUSED),
        )
        db.execute(
            "INSERT INTO incoming_cases (reference, domain, sender, idempotency_key,"
            " message_id, correlation_id, body_digest, application, status, next_poll_at,"
            " received_at, updated_at) VALUES ('FK-1', 'case', ?, 'soak-k-c2', 'm', 'corr',"
            " x'00', x'', ?, ?, 't', 't')",
            (SH, case_pb2.CASE_ACCEPTED, now),
        )
        db.execute(
            "INSERT INTO outbox (peer, service, message_id, correlation_id, idempotency_key,"
            " payload, subject, next_attempt_at, created_at)"
            " VALUES (?, 'case.CaseStatus', 'm1', 'corr', 'soak-k-c2', x'', 'FK-1', ?, ?)",
            (SH, now, now),
        )
        if parked:
            db.execute("UPDATE outbox SET state = 'parked'")
            db.execute("UPDATE incoming_cases SET reconciliation = 1")
        db.commit()
        db.close()

    @pytest.mark.parametrize("parked", [False, True])
    def test_reads(self, tmp_path: Path, parked: bool) -> None:
        path = tmp_path / "state.db"
        self.make(path, parked=parked)
        view = read_store(path)
        assert view.outgoing == {(CASE, "soak-k-c1"): [("c1", case_pb2.CASE_REFUSED, "because")]}
        assert view.incoming == {
            (CASE, "soak-k-c2"): [("FK-1", SH, case_pb2.CASE_ACCEPTED, parked)]
        }
        assert view.outbox == {"FK-1": ["parked" if parked else "pending"]}

    def test_absent_store_reads_empty(self, tmp_path: Path) -> None:
        assert read_store(tmp_path / "state.db") == StoreView()
