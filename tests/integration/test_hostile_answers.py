"""A broken or hostile peer: answers that are signed and verify, but whose
payload the asking node cannot use.

Zhejiang's handler is replaced by one that answers with a crafted payload; the
envelope around it is Zhejiang's own, signed as always. The Shanghai node must
check the payload before it uses it: the hotel gets an ISSUER_UNREACHABLE
verdict that names the field (never its value), not an INTERNAL error, and the
node serves on. Before these checks an undefined credential state or an
attribute name the node does not know ended the hotel's call with INTERNAL.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.core.errors import PeerUnavailable
from gateway.federation import server as federation_server
from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import JS, SH, ZJ, Wallet
from tests.integration.test_fund_exchange import application, submit, until_final
from tests.integration.test_identity_exchange import check, verify
from yrd.federation.v1 import federation_pb2
from yrd.fund.v1 import fund_pb2
from yrd.identity.v1 import identity_pb2

Answer = federation_pb2.CredentialCheckResponse


def _state(answer: Answer) -> None:
    answer.state = 999  # type: ignore[assignment]  # a value the enum does not define


def _attribute(answer: Answer) -> None:
    answer.claims.disclosed_attributes.append("no_such_attribute")


def _id_number(answer: Answer) -> None:
    answer.claims.holder.id_number = "33012219660214725X"  # wrong check character


def _control(answer: Answer) -> None:
    answer.claims.holder.full_name = "名\x00字"


def _long(answer: Answer) -> None:
    answer.claims.holder.full_name = "名" * 5000


def _time(answer: Answer) -> None:
    answer.checked_at.CopyFrom(Timestamp(seconds=10**13))


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        pytest.param(_state, "state: expected one of", id="state"),
        pytest.param(_attribute, "claims.disclosed_attributes[", id="attribute"),
        pytest.param(_id_number, "claims.holder.id_number", id="id_number"),
        pytest.param(_control, "claims.holder.full_name: expected text without", id="control"),
        pytest.param(_long, "claims.holder.full_name: expected at most", id="long"),
        pytest.param(_time, "checked_at: expected a timestamp", id="time"),
    ],
)
async def test_an_unusable_answer_is_an_indeterminate_verdict_naming_the_field(
    federation: LocalFederation,
    wallet: Wallet,
    monkeypatch: pytest.MonkeyPatch,
    spoil: Callable[[Answer], None],
    field: str,
) -> None:
    zj = federation.node(ZJ)
    assert zj.federation_server is not None
    handlers = zj.federation_server._handlers
    honest = handlers["identity.CheckCredential"]

    async def spoiled(opened: Any, timeout: float) -> Answer:
        answer = await honest(opened, timeout)
        assert isinstance(answer, Answer)
        spoil(answer)
        return answer

    monkeypatch.setitem(handlers, "identity.CheckCredential", spoiled)
    response = await verify(federation, SH, await wallet.fresh_qr(ZJ))
    assert response.verdict == identity_pb2.ISSUER_UNREACHABLE
    assert check(response, "status") == identity_pb2.INDETERMINATE
    detail = next(c.detail for c in response.checks if c.name == "status")
    assert "unusable payload" in detail
    assert field in detail
    assert not re.search("[\u4e00-\u9fff]", detail)  # the field is named, not its value
    assert not response.HasField("attributes")

    # Honest again: the same node verifies the next guest.
    monkeypatch.setitem(handlers, "identity.CheckCredential", honest)
    response = await verify(federation, SH, await wallet.fresh_qr(ZJ))
    assert response.verdict == identity_pb2.VALID


async def test_an_unusable_delivery_ack_is_retried_and_named_for_the_operator(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jiangsu acknowledges a withdrawal with a reference that does not validate:
    not its decision about the withdrawal, so Shanghai's outbox keeps the item
    and retries, its last error naming the field; once Jiangsu answers well,
    the withdrawal is delivered (Jiangsu took it once) and paid."""
    js = federation.node(JS)
    assert js.federation_server is not None
    handlers = js.federation_server._handlers
    honest = handlers["fund.DeliverWithdrawal"]

    async def spoiled(opened: Any, timeout: float) -> federation_pb2.DeliveryAck:
        ack = await honest(opened, timeout)
        assert isinstance(ack, federation_pb2.DeliveryAck)
        ack.remote_reference = "FW 320000\x07"
        return ack

    monkeypatch.setitem(handlers, "fund.DeliverWithdrawal", spoiled)
    case = await submit(federation, application(federation))
    state = federation.node(SH).state
    errors: list[str] = []
    for _ in range(200):  # 10 s at most
        errors = [e.last_error for e in await state.outbox_entries() if e.subject == case.case_id]
        if errors and errors[0]:
            break
        await asyncio.sleep(0.05)
    assert errors, "the item left the outbox: the unusable ack was taken as delivery"
    assert "unusable payload: remote_reference: expected" in errors[0]
    assert "\x07" not in errors[0]

    monkeypatch.setitem(handlers, "fund.DeliverWithdrawal", honest)
    final, _ = await until_final(federation, case.case_id, seconds=30)
    assert final.status == fund_pb2.WithdrawalStatus.PAID


async def test_an_answer_that_does_not_verify_is_an_indeterminate_verdict(
    federation: LocalFederation, wallet: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zhejiang's answers changed after they were signed (their payload no longer
    matches the digest the header binds): the hotel gets ISSUER_UNREACHABLE with
    the reason, not the verifier's refusal as if the hotel's own call were wrong."""
    honest_sign = federation_server.sign_frame

    def sign_then_spoil(signer: Any, envelopes: list[Any], *, receiver: str) -> Any:
        signed = honest_sign(signer, envelopes, receiver=receiver)
        for envelope in envelopes:
            envelope.payload += b"\x00"
        return signed

    monkeypatch.setattr(federation_server, "sign_frame", sign_then_spoil)
    response = await verify(federation, SH, await wallet.fresh_qr(ZJ))
    assert response.verdict == identity_pb2.ISSUER_UNREACHABLE
    detail = next(c.detail for c in response.checks if c.name == "status")
    assert "answered identity.CheckCredential with an envelope that does not verify" in detail

    monkeypatch.setattr(federation_server, "sign_frame", honest_sign)
    response = await verify(federation, SH, await wallet.fresh_qr(ZJ))
    assert response.verdict == identity_pb2.VALID


async def test_a_peers_status_message_reaches_the_hotel_without_control_characters(
    federation: LocalFederation, wallet: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    zj = federation.node(ZJ)
    assert zj.federation_server is not None

    async def failing(opened: Any, timeout: float) -> Answer:
        raise PeerUnavailable("e-ID authority\x1b[2J down\r\n(forged line)")

    monkeypatch.setitem(zj.federation_server._handlers, "identity.CheckCredential", failing)
    response = await verify(federation, SH, await wallet.fresh_qr(ZJ))
    assert response.verdict == identity_pb2.ISSUER_UNREACHABLE
    detail = next(c.detail for c in response.checks if c.name == "status")
    assert "e-ID authority [2J down  (forged line)" in detail
    assert not re.search("[\\x00-\\x1f]", detail)
