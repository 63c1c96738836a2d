"""The two tracked flows: their messages carry what the shared machinery reads,
and a stored case becomes each flow's own public record."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.services.case import SERVICE_CASE
from gateway.services.fund import WITHDRAWAL
from gateway.services.tracked import Flow, Keyed, StatusFields, key_of, status_of
from gateway.storage.records import OutgoingCase
from yrd.case.v1 import case_pb2
from yrd.fund.v1 import fund_pb2

FLOWS = [WITHDRAWAL, SERVICE_CASE]
WHEN = datetime(2026, 3, 1, 8, tzinfo=UTC)


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.domain)
class TestFlow:
    def test_messages_have_the_shared_fields(self, flow: Flow[Any, Any, Any, Any]) -> None:
        assert isinstance(flow.application_type(), Keyed)
        assert isinstance(flow.update_type(), StatusFields)

    def test_make_update_round_trip(self, flow: Flow[Any, Any, Any, Any]) -> None:
        final = flow.progression[-1]
        update = flow.make_update("key-00000001", final, "done", 700, "REF-1", WHEN)
        parsed = flow.update_type.FromString(update.SerializeToString())
        fields = status_of(parsed)
        assert (fields.idempotency_key, fields.status, fields.status_reason) == (
            "key-00000001",
            final,
            "done",
        )
        assert fields.remote_reference == "REF-1"
        assert flow.amount_of(parsed) == (700 if flow.amount_field else 0)
        assert key_of(parsed) == "key-00000001"

    def test_public_record(self, flow: Flow[Any, Any, Any, Any]) -> None:
        case = OutgoingCase(
            case_id="WD-310000-abc",
            client_id="office",
            status=flow.delivered,
            status_reason="",
            amount_fen=500,
            submitted_at=WHEN,
            updated_at=WHEN,
            idempotency_key="key-00000001",
            peer="330000",
            remote_reference="R-1",
        )
        record = flow.public(case)
        assert isinstance(record, flow.public_type)
        assert getattr(record, flow.target_field) == "330000"
        assert record.submitted_at.ToDatetime(tzinfo=UTC) == WHEN
        assert (record.case_id, record.remote_reference) == ("WD-310000-abc", "R-1")


def test_the_public_records_are_each_flows_own() -> None:
    case = OutgoingCase("CS-1", "o", 3, "", 9, WHEN, WHEN, "k" * 8, "320000", "")
    withdrawal = WITHDRAWAL.public(case)
    assert isinstance(withdrawal, fund_pb2.Withdrawal)
    assert (withdrawal.fund_province, withdrawal.paid_amount_fen) == ("320000", 9)
    service_case = SERVICE_CASE.public(case)
    assert isinstance(service_case, case_pb2.Case)
    assert service_case.handling_province == "320000"
