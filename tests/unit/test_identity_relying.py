"""The relying node's side of VerifyIdentity, below the gRPC layer: the pieces
made cheaper per call (issue 16) give what they gave before."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.config.holder import ConfigHolder
from gateway.config.models import ClientSection, FederationConfig
from gateway.core.clock import FrozenClock
from gateway.core.eid_token import issue_token, parse_token
from gateway.core.errors import InvalidArgument
from gateway.core.identifiers import random_uuid, random_uuid_hex
from gateway.server.interceptors import _correlation_id_of
from gateway.services.identity import (
    _CHECK_IN_ID,
    CHECK_NAMES,
    IdentityExchange,
    _Checks,
)
from tests.unit.conftest import NOW, ZJ, eid_issuer_key
from yrd.federation.v1 import federation_pb2
from yrd.identity.v1 import identity_pb2


class _Issuer:
    """Stands in for the federation client: answers ACTIVE and keeps the request."""

    def __init__(self, clock: FrozenClock, *, birth_date: str = "") -> None:
        self.clock = clock
        self.birth_date = birth_date
        self.requests: list[federation_pb2.CredentialCheckRequest] = []

    async def call(
        self, province: str, service: str, request: Any, kind: Any, **_: Any
    ) -> tuple[federation_pb2.CredentialCheckResponse, None]:
        self.requests.append(request)
        answer = federation_pb2.CredentialCheckResponse(state=federation_pb2.CREDENTIAL_ACTIVE)
        answer.checked_at.FromDatetime(self.clock.now())
        answer.claims.holder.full_name = "x"
        answer.claims.disclosed_attributes.append("full_name")
        if self.birth_date:  # beyond the hotel policy
            answer.claims.holder.birth_date = self.birth_date
            answer.claims.disclosed_attributes.append("birth_date")
        return answer, None


class _Store:
    def __init__(self) -> None:
        self.check_ins: list[dict[str, Any]] = []

    async def record_check_in(self, **row: Any) -> str:
        self.check_ins.append(row)
        return str(row["check_in_id"])


def _hotel(federation: FederationConfig) -> ClientSection:
    return next(c for c in federation.me.clients if "HOTEL_CHECK_IN" in c.purposes)


def _exchange(
    federation: FederationConfig, clock: FrozenClock, issuer: _Issuer, store: _Store
) -> IdentityExchange:
    return IdentityExchange(
        config=ConfigHolder(federation),
        client=issuer,  # type: ignore[arg-type]  # a stand-in for the federation client
        authority=None,  # type: ignore[arg-type]  # only the issuing side asks it
        store=store,  # type: ignore[arg-type]  # only record_check_in is used
        clock=clock,
    )


def _token(token_id: str = "tok-1") -> str:  # noqa: S107 - a token id (jti), not a secret
    return issue_token(
        eid_issuer_key(ZJ),
        key_id=f"{ZJ}-eid-2026",
        issuer=ZJ,
        credential_id="cred-1",
        token_id=token_id,
        issued_at=NOW,
        ttl=timedelta(seconds=90),
    )


def _verify(
    federation: FederationConfig, exchange: IdentityExchange, token: str
) -> identity_pb2.VerifyIdentityResponse:
    request = identity_pb2.VerifyIdentityRequest(
        qr_payload=token, purpose=identity_pb2.HOTEL_CHECK_IN
    )
    return asyncio.run(
        exchange.verify(request, client=_hotel(federation), correlation_id="c-1", timeout=5.0)
    )


def test_a_valid_check_in_asks_and_answers_as_before(
    federation: FederationConfig, clock: FrozenClock
) -> None:
    issuer, store = _Issuer(clock), _Store()
    token = _token()
    response = _verify(federation, _exchange(federation, clock, issuer, store), token)
    assert response.verdict == identity_pb2.VALID
    assert [(c.name, c.outcome) for c in response.checks] == [
        (name, identity_pb2.PASSED) for name in CHECK_NAMES
    ]
    (asked,) = issuer.requests
    expected = Timestamp()
    expected.FromDatetime(parse_token(token).expires_at)
    assert asked.token_expires_at == expected
    assert asked.token_expires_at.ToDatetime() == (NOW + timedelta(seconds=90)).replace(tzinfo=None)
    (row,) = store.check_ins
    assert row["check_in_id"] == response.check_in_id
    assert _CHECK_IN_ID.fullmatch(response.check_in_id)
    assert re.fullmatch(r"CI-310000-[0-9a-f]{12}4[0-9a-f]{3}", response.check_in_id)
    assert response.checks[-1].detail == "HOTEL_CHECK_IN policy"
    assert list(response.disclosed_attributes) == ["full_name"]


def test_what_the_issuer_released_beyond_the_policy_is_withheld(
    federation: FederationConfig, clock: FrozenClock
) -> None:
    issuer = _Issuer(clock, birth_date="1990-03-07")
    response = _verify(federation, _exchange(federation, clock, issuer, _Store()), _token())
    assert response.verdict == identity_pb2.VALID
    assert list(response.disclosed_attributes) == ["full_name"]
    assert response.attributes.full_name == "x"
    assert response.attributes.birth_date == ""
    assert (response.checks[-1].outcome, response.checks[-1].detail) == (
        identity_pb2.PASSED,
        "withheld 1 attribute(s) beyond the HOTEL_CHECK_IN policy",
    )


@pytest.mark.parametrize("purpose", [0, 99, -1])
def test_a_purpose_out_of_the_list_is_refused(federation: FederationConfig, purpose: int) -> None:
    request = identity_pb2.VerifyIdentityRequest(purpose=purpose)  # type: ignore[arg-type]  # out of range on purpose
    with pytest.raises(InvalidArgument) as raised:
        IdentityExchange._authorise(request, _hotel(federation), federation)
    assert raised.value.field == "purpose"
    assert "HOTEL_CHECK_IN" in raised.value.message


def test_checks_not_run_are_skipped_in_order() -> None:
    checks = _Checks()
    checks.set("status", identity_pb2.FAILED, "credential is CREDENTIAL_REVOKED")
    checks.set("signature", identity_pb2.PASSED, "ok")
    response = identity_pb2.VerifyIdentityResponse()
    checks.add_to(response)
    assert [(c.name, c.outcome, c.detail) for c in response.checks] == [
        ("signature", identity_pb2.PASSED, "ok"),
        ("validity_window", identity_pb2.SKIPPED, ""),
        ("status", identity_pb2.FAILED, "credential is CREDENTIAL_REVOKED"),
        ("single_use", identity_pb2.SKIPPED, ""),
        ("disclosure_policy", identity_pb2.SKIPPED, ""),
    ]


def test_check_in_ids_look_like_a_random_uuids_first_half() -> None:
    made = {random_uuid_hex()[:16] for _ in range(1000)}
    assert len(made) == 1000
    for digits in made:
        assert re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{3}", digits)


def test_random_uuids_and_the_correlation_ids_made() -> None:
    made = {random_uuid() for _ in range(1000)}
    assert len(made) == 1000
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # One the node makes for a call that brought none: time-ordered (version 7),
    # so that the message log's correlation index grows at its end.
    made_here = uuid.UUID(_correlation_id_of(()))
    assert made_here.version == 7
    assert made_here.variant == uuid.RFC_4122
    assert _correlation_id_of((("x-correlation-id", "c-42"),)) == "c-42"
