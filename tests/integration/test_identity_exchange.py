"""Out-of-region e-ID hotel check-in, end to end through real nodes and simulators.

Every scenario of ``make demo`` is played here through the public gRPC API, as a
hotel's property-management system would call it.
"""

from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.core.eid_token import parse_token
from gateway.testing.localfed import LocalFederation
from gateway.tools.demo import flip_one_byte, foreign_token
from tests.integration.conftest import ALL, JS, SH, ZJ, Wallet
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc
from yrd.federation.v1 import federation_pb2
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

HOTEL_ATTRIBUTES = {"id_number", "full_name", "gender", "ethnicity", "photo"}


def desk(federation: LocalFederation, province: str) -> identity_pb2_grpc.IdentityServiceStub:
    return identity_pb2_grpc.IdentityServiceStub(federation.channel(province))


def hotel(province: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer dev-hotel-{province}"),)


async def verify(
    federation: LocalFederation,
    province: str,
    qr: str,
    *,
    purpose: int = identity_pb2.HOTEL_CHECK_IN,
    timeout: float = 3.0,
    metadata: tuple[tuple[str, str], ...] | None = None,
    **fields: object,
) -> identity_pb2.VerifyIdentityResponse:
    request = identity_pb2.VerifyIdentityRequest(qr_payload=qr, purpose=purpose, **fields)
    return await desk(federation, province).VerifyIdentity(
        request, metadata=hotel(province) if metadata is None else metadata, timeout=timeout
    )


def check(response: identity_pb2.VerifyIdentityResponse, name: str) -> int:
    return next(c.outcome for c in response.checks if c.name == name)


class TestHotelCheckIn:
    """A Zhejiang resident checks into a Shanghai hotel with the e-ID on their phone."""

    async def test_valid_discloses_exactly_the_hotel_attributes(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        resident = await wallet.credential(ZJ)
        qr = await wallet.qr(ZJ, resident["credential_id"])
        response = await verify(federation, SH, qr, client_reference="room 1208")
        assert response.verdict == identity_pb2.VALID
        assert set(response.disclosed_attributes) == HOTEL_ATTRIBUTES
        assert response.attributes.id_number == resident["id_number"]
        assert response.attributes.full_name == resident["full_name"]
        assert response.attributes.birth_date == ""  # not for hotels
        assert response.attributes.address == ""
        assert response.issuer_province == ZJ
        assert [c.name for c in response.checks] == [
            "signature",
            "validity_window",
            "status",
            "single_use",
            "disclosure_policy",
        ]
        assert all(c.outcome == identity_pb2.PASSED for c in response.checks)
        assert response.HasField("status_checked_at")
        assert response.check_in_id

        record = await desk(federation, SH).GetCheckIn(
            identity_pb2.GetCheckInRequest(check_in_id=response.check_in_id),
            metadata=hotel(SH),
            timeout=3,
        )
        assert record.guest.id_number == resident["id_number"]
        assert record.client_reference == "room 1208"
        assert record.issuer_province == ZJ

    async def test_both_envelopes_are_logged_at_both_nodes(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        response = await verify(federation, SH, await wallet.fresh_qr(ZJ))
        assert response.verdict == identity_pb2.VALID
        for code, directions in ((SH, ["out", "in"]), (ZJ, ["in", "out"])):
            rows = [
                row
                async for row in federation.node(code).message_log.rows()
                if row.entry.correlation_id == response.correlation_id
            ]
            assert [r.entry.direction for r in rows] == directions
            assert {r.entry.service for r in rows} == {"identity.CheckCredential"}
            assert (await federation.node(code).message_log.verify()).intact

    async def test_same_qr_again_is_replayed(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qr = await wallet.fresh_qr(ZJ)
        assert (await verify(federation, SH, qr)).verdict == identity_pb2.VALID
        again = await verify(federation, SH, qr)
        assert again.verdict == identity_pb2.REPLAYED
        assert check(again, "single_use") == identity_pb2.FAILED
        assert not again.disclosed_attributes
        assert not again.check_in_id

    async def test_one_byte_changed_is_forged_without_a_federation_call(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qr = await wallet.fresh_qr(ZJ)
        rows_before = await federation.node(SH).message_log.count()
        served_before = federation.provinces[ZJ].simulator.requests_served
        response = await verify(federation, SH, flip_one_byte(qr))
        assert response.verdict == identity_pb2.FORGED
        assert check(response, "signature") == identity_pb2.FAILED
        assert await federation.node(SH).message_log.count() == rows_before
        assert federation.provinces[ZJ].simulator.requests_served == served_before

    @pytest.mark.parametrize("part", [0, 1])
    async def test_tampered_header_or_claims_is_forged(
        self, federation: LocalFederation, wallet: Wallet, part: int
    ) -> None:
        pieces = (await wallet.fresh_qr(ZJ)).split(".")
        pieces[part] = pieces[part][:-3] + ("AAA" if pieces[part][-3:] != "AAA" else "BBB")
        response = await verify(federation, SH, ".".join(pieces))
        assert response.verdict == identity_pb2.FORGED

    async def test_expired_qr(self, federation: LocalFederation, wallet: Wallet) -> None:
        resident = await wallet.credential(ZJ)
        qr = await wallet.qr(
            ZJ, resident["credential_id"], issued_at=int(time.time()) - 600, ttl_seconds=120
        )
        response = await verify(federation, SH, qr)
        assert response.verdict == identity_pb2.EXPIRED
        assert check(response, "signature") == identity_pb2.PASSED
        assert check(response, "validity_window") == identity_pb2.FAILED

    @pytest.mark.parametrize(
        "state", ["CREDENTIAL_REVOKED", "CREDENTIAL_LOST", "CREDENTIAL_SUSPENDED"]
    )
    async def test_revoked_lost_or_suspended_credential(
        self, federation: LocalFederation, wallet: Wallet, state: str
    ) -> None:
        response = await verify(federation, SH, await wallet.fresh_qr(ZJ, state))
        assert response.verdict == identity_pb2.REVOKED
        assert check(response, "status") == identity_pb2.FAILED
        assert not response.disclosed_attributes

    async def test_token_from_a_province_outside_the_trust_store(
        self, federation: LocalFederation
    ) -> None:
        response = await verify(federation, SH, foreign_token())
        assert response.verdict == identity_pb2.UNKNOWN_ISSUER
        assert response.issuer_province == "110000"

    async def test_issuer_stopped_fails_closed_within_the_deadline(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qr = await wallet.fresh_qr(ZJ)
        await federation.stop_node(ZJ)
        started = time.monotonic()
        response = await verify(federation, SH, qr, timeout=2.0)
        elapsed = time.monotonic() - started
        assert response.verdict == identity_pb2.ISSUER_UNREACHABLE
        assert check(response, "status") == identity_pb2.INDETERMINATE
        assert not response.disclosed_attributes
        assert elapsed < 2.0  # answered, not cut off by the caller's deadline

    async def test_issuer_back_after_outage_serves_again(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        await federation.stop_node(ZJ)
        down = await verify(federation, SH, await wallet.fresh_qr(ZJ), timeout=1.0)
        assert down.verdict == identity_pb2.ISSUER_UNREACHABLE
        await federation.start_node(ZJ)
        deadline = time.monotonic() + 10
        verdict = None
        while time.monotonic() < deadline:
            verdict = (await verify(federation, SH, await wallet.fresh_qr(ZJ))).verdict
            if verdict == identity_pb2.VALID:
                break
        assert verdict == identity_pb2.VALID

    async def test_age_check_discloses_only_the_derived_claim(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        response = await verify(
            federation, SH, await wallet.fresh_qr(JS), purpose=identity_pb2.AGE_CHECK
        )
        assert response.verdict == identity_pb2.VALID
        assert list(response.disclosed_attributes) == ["age_over_18"]
        assert response.attributes.ByteSize() == 0
        assert not response.check_in_id


@pytest.mark.parametrize("hotel_province", ALL)
async def test_every_ordered_pair_of_provinces(
    federation: LocalFederation, wallet: Wallet, hotel_province: str
) -> None:
    """A resident of every other province checks into a hotel of this one."""
    for issuer in ALL:
        if issuer == hotel_province:
            continue
        resident = await wallet.credential(issuer)
        response = await verify(
            federation, hotel_province, await wallet.qr(issuer, resident["credential_id"])
        )
        assert response.verdict == identity_pb2.VALID, (hotel_province, issuer)
        assert response.attributes.id_number == resident["id_number"]
        assert set(response.disclosed_attributes) == HOTEL_ATTRIBUTES


class TestRefusals:
    """Bad or unauthorised requests get a clear status naming the field."""

    @staticmethod
    async def status(call: object) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call  # type: ignore[misc]
        return info.value

    @pytest.mark.parametrize(
        ("qr", "needle"),
        [("", "qr_payload"), ("hello", "qr_payload"), ("https://example.invalid/x", "qr_payload")],
    )
    async def test_malformed_qr_payload(
        self, federation: LocalFederation, qr: str, needle: str
    ) -> None:
        error = await self.status(verify(federation, SH, qr))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (error.details() or "")
        details = status_pb2.Status.FromString(
            dict(error.trailing_metadata() or ())["grpc-status-details-bin"]  # type: ignore[arg-type]
        )
        bad_request = error_details_pb2.BadRequest()
        assert details.details[0].Unpack(bad_request)
        assert bad_request.field_violations[0].field == "qr_payload"

    async def test_missing_purpose(self, federation: LocalFederation, wallet: Wallet) -> None:
        error = await self.status(
            verify(
                federation, SH, await wallet.fresh_qr(ZJ), purpose=identity_pb2.PURPOSE_UNSPECIFIED
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "purpose" in (error.details() or "")

    async def test_purpose_not_registered_for_the_hotel(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        error = await self.status(
            verify(
                federation, SH, await wallet.fresh_qr(ZJ), purpose=identity_pb2.GOVERNMENT_SERVICE
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "GOVERNMENT_SERVICE" in (error.details() or "")

    async def test_over_asking_is_refused(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        qr = await wallet.fresh_qr(ZJ)
        served = federation.provinces[ZJ].simulator.requests_served
        error = await self.status(
            verify(federation, SH, qr, requested_attributes=["full_name", "birth_date"])
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "birth_date" in (error.details() or "")
        assert federation.provinces[ZJ].simulator.requests_served == served  # never asked

    async def test_narrower_request_gets_only_what_it_asked(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        response = await verify(
            federation, SH, await wallet.fresh_qr(ZJ), requested_attributes=["full_name"]
        )
        assert response.verdict == identity_pb2.VALID
        assert list(response.disclosed_attributes) == ["full_name"]
        assert response.attributes.id_number == ""

    async def test_relying_party_cannot_pose_as_another(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        error = await self.status(
            verify(federation, SH, await wallet.fresh_qr(ZJ), relying_party_id="hotel-310000-999")
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "relying_party_id" in (error.details() or "")

    @pytest.mark.parametrize(
        "metadata",
        [(), (("authorization", "Bearer wrong-token"),), (("authorization", "Basic abc"),)],
    )
    async def test_unauthenticated_clients(
        self, federation: LocalFederation, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        error = await self.status(verify(federation, SH, "a.b.c", metadata=metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" in (error.details() or "")

    async def test_hotel_may_not_use_the_admin_service(self, federation: LocalFederation) -> None:
        stub = admin_pb2_grpc.AdminServiceStub(federation.channel(SH))
        error = await self.status(
            stub.GetNodeInfo(admin_pb2.GetNodeInfoRequest(), metadata=hotel(SH), timeout=3)
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_oversized_request(self, federation: LocalFederation) -> None:
        error = await self.status(verify(federation, SH, "x" * (6 * 1024 * 1024)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    async def test_too_long_qr_payload(self, federation: LocalFederation) -> None:
        error = await self.status(verify(federation, SH, "a." + "b" * 5000 + ".c"))
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT,)
        assert "qr_payload" in (error.details() or "")


def credential_check(qr: str) -> federation_pb2.CredentialCheckRequest:
    """The credential check a Shanghai hotel's verification of ``qr`` sends its issuer."""
    token = parse_token(qr)
    request = federation_pb2.CredentialCheckRequest(
        token_id=token.token_id,
        credential_id=token.credential_id,
        purpose=identity_pb2.HOTEL_CHECK_IN,
        relying_party_id="hotel-310000-001",
    )
    request.token_expires_at.FromDatetime(token.expires_at)
    return request


async def test_a_retry_after_the_issuer_restarted_gets_the_first_answer(
    federation: LocalFederation, wallet: Wallet
) -> None:
    """A retry of an answered request (same message id, a new envelope) that reaches
    the issuing node after it restarted (or another of its workers) gets the answer
    already given, read from the message log; the token is not spent twice."""
    import uuid

    request = credential_check(await wallet.fresh_qr(ZJ))
    client = federation.node(SH).federation_client

    async def ask(message_id: str) -> federation_pb2.CredentialCheckResponse:
        # A retry repeats the request: the same message id with the same correlation id.
        answer, _ = await client.call(
            ZJ,
            "identity.CheckCredential",
            request,
            federation_pb2.CredentialCheckResponse,
            correlation_id=str(uuid.uuid5(uuid.NAMESPACE_URL, message_id)),
            timeout=5,
            message_id=message_id,
        )
        return answer

    message_id = str(uuid.uuid4())
    first = await ask(message_id)
    assert first.state == federation_pb2.CREDENTIAL_ACTIVE
    assert not first.token_already_used
    assert first.claims.holder.full_name
    await federation.stop_node(ZJ)
    await federation.start_node(ZJ)
    authority = federation.provinces[ZJ].simulator
    queries = authority.status_queries
    assert await ask(message_id) == first
    assert authority.status_queries == queries  # answered from the log, not asked again
    assert (await ask(str(uuid.uuid4()))).token_already_used  # a new question is new
