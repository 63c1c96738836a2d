"""The asking node's checks of what a peer answers: its payload
(gateway.federation.payloads.validate_answer: generic bounds at any depth, maps
included, then per answer type) and its text (gateway.federation.client.peer_text)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import Message

from gateway.core.errors import InvalidArgument
from gateway.federation.client import PEER_TEXT_MAX, contact_status, map_status, peer_text
from gateway.federation.payloads import validate_answer
from yrd.certificate.v1 import certificate_pb2
from yrd.federation.v1 import federation_pb2
from yrd.fund.v1 import fund_pb2

#: A synthetic resident ID number with a valid check character.
ID_NUMBER = "330122196602147251"


def _credential(**claims: object) -> federation_pb2.CredentialCheckResponse:
    answer = federation_pb2.CredentialCheckResponse(state=federation_pb2.CREDENTIAL_ACTIVE)
    answer.claims.holder.id_number = ID_NUMBER
    answer.claims.disclosed_attributes.append("id_number")
    for name, value in claims.items():
        setattr(answer.claims.holder, name, value)
    return answer


def _certificate(fields: dict[str, str]) -> certificate_pb2.Certificate:
    certificate = certificate_pb2.Certificate(issuer_province="320000")
    certificate.fields.update(fields)
    return certificate


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(_credential(full_name="吕华强"), id="credential"),
        pytest.param(federation_pb2.DeliveryAck(remote_reference="FW-320000-ab12"), id="ack"),
        pytest.param(federation_pb2.DeliveryAck(duplicate=True), id="ack-without-reference"),
        pytest.param(
            fund_pb2.FundAccount(fund_province="320000", fund_account="3200001234"), id="fund"
        ),
        pytest.param(_certificate({"spouse": "张三", "note": "line\nbreak"}), id="certificate"),
    ],
)
def test_what_an_honest_peer_sends_passes(answer: Message) -> None:
    validate_answer(answer)


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        pytest.param(
            federation_pb2.CredentialCheckResponse(state=99),  # type: ignore[arg-type]
            "state",
            id="state-undefined",
        ),
        pytest.param(federation_pb2.CredentialCheckResponse(), "state", id="state-unspecified"),
        pytest.param(
            _credential(id_number="330122196602147250"), "claims.holder.id_number", id="id-check"
        ),
        pytest.param(
            federation_pb2.DeliveryAck(remote_reference="x" * 129),
            "remote_reference",
            id="ref-long",
        ),
        pytest.param(
            fund_pb2.FundAccount(fund_province="990000"), "fund_province", id="fund-province"
        ),
        pytest.param(_certificate({"k": "v\x00"}), "fields.value", id="map-value"),
        pytest.param(_certificate({"k\x1b": "v"}), "fields.key", id="map-key"),
        pytest.param(_certificate({"k": "v" * 5000}), "fields.value", id="map-value-long"),
    ],
)
def test_an_unusable_answer_names_its_field_not_its_value(answer: Message, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_answer(answer)
    assert raised.value.field == field
    assert "\x00" not in raised.value.message
    assert "vvvv" not in raised.value.message


def test_an_unknown_attribute_name_is_refused() -> None:
    answer = _credential()
    answer.claims.disclosed_attributes.append("shoe_size")
    with pytest.raises(InvalidArgument) as raised:
        validate_answer(answer)
    assert raised.value.field == "claims.disclosed_attributes[1]"
    assert "age_over_18" in raised.value.expected


def test_a_peers_text_is_passed_on_without_control_characters_and_bounded() -> None:
    assert peer_text("e-ID authority\x1b[2J down\r\nnext\x85line") == (
        "e-ID authority [2J down  next line"
    )
    assert len(peer_text("x" * 5000)) == PEER_TEXT_MAX
    error = map_status("330000", grpc.StatusCode.PERMISSION_DENIED, "no\x00pe" + "y" * 5000)
    assert "\x00" not in error.message
    assert error.message.startswith("province 330000 refused the envelope: no pe")
    assert len(error.message) < PEER_TEXT_MAX + 100
    # What peer health keeps of a failed call (ListPeers, the console): one clean line.
    assert contact_status(grpc.StatusCode.UNAVAILABLE, "down\x1b[0m now\nsecond") == (
        "UNAVAILABLE: down [0m now"
    )
