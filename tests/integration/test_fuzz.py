"""Property tests against running nodes: arbitrary bytes, well-formed but wrong
envelopes, and arbitrary public requests each get a fitting status; the node
keeps serving and nothing accepted before is lost from its log."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core import crypto
from gateway.core.clock import OffsetClock
from gateway.testing.localfed import LocalFederation
from gateway.trust.envelope import EnvelopeSigner
from tests.integration.conftest import AH, JS, SH, ZJ, Wallet
from tests.paths import CA_DIR, keys_dir
from yrd.common.v1 import common_pb2
from yrd.federation.v1 import federation_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

FITTING = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def mtls(federation: LocalFederation, as_province: str = SH) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(CA_DIR / "ca.crt.pem").read_bytes(),
        private_key=(keys_dir(as_province) / "tls.key.pem").read_bytes(),
        certificate_chain=(keys_dir(as_province) / "tls.crt.pem").read_bytes(),
    )
    endpoint = federation.provinces[ZJ].config.node.federation_endpoint
    assert endpoint is not None
    return grpc.aio.secure_channel(endpoint, credentials)


async def send_raw(channel: grpc.aio.Channel, data: bytes) -> grpc.StatusCode:
    call = channel.unary_unary(
        "/yrd.federation.v1.FederationService/Exchange",
        request_serializer=None,
        response_deserializer=None,
    )
    try:
        await call(data, timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def status_of(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def wrong_envelope(federation: LocalFederation, kind: str, noise: bytes) -> bytes:
    """A well-formed envelope with one thing wrong."""
    payload = federation_pb2.CredentialCheckRequest(
        token_id=str(uuid.uuid4()), credential_id="EID-FUZZ", purpose=1
    )
    signer = federation.node(SH).signer
    receiver, service = ZJ, "identity.CheckCredential"
    if kind == "skewed":
        key_id, key = signer.current()
        signer = EnvelopeSigner(SH, key_id, key, OffsetClock(dt.timedelta(hours=3)))
    elif kind == "wrong_key":
        signer = EnvelopeSigner(
            SH, "310000-sig-2026", crypto.generate_private_key(), federation.node(SH).clock
        )
    elif kind == "unknown_key":
        signer = EnvelopeSigner(
            SH, "310000-sig-1999", crypto.generate_private_key(), federation.node(SH).clock
        )
    elif kind == "wrong_receiver":
        receiver = AH
    elif kind == "unknown_service":
        service = "identity.Anything"
    envelope = signer.seal(
        receiver=receiver, service=service, payload=payload, correlation_id=str(uuid.uuid4())
    )
    if kind == "bad_signature":
        envelope.signature = bytes([envelope.signature[0] ^ 1]) + envelope.signature[1:]
    elif kind == "tampered_payload":
        envelope.payload = envelope.payload + noise
    elif kind == "tampered_header":
        header = federation_pb2.EnvelopeHeader.FromString(envelope.header)
        header.receiver = JS
        envelope.header = header.SerializeToString()
    elif kind == "oversize":
        envelope.payload = b"\x00" * (4 * 1024 * 1024 + 10)
    return envelope.SerializeToString()


KINDS = [
    "bad_signature",
    "tampered_payload",
    "tampered_header",
    "skewed",
    "wrong_key",
    "unknown_key",
    "wrong_receiver",
    "unknown_service",
    "oversize",
    "replay",
]


class TestFederationService:
    @FUZZ
    @given(data=st.binary(max_size=2048))
    async def test_arbitrary_bytes(self, federation: LocalFederation, data: bytes) -> None:
        async with mtls(federation) as channel:
            code = await send_raw(channel, data)
        assert code in FITTING

    @FUZZ
    @given(kind=st.sampled_from(KINDS), noise=st.binary(min_size=1, max_size=64))
    async def test_well_formed_but_wrong(
        self, federation: LocalFederation, kind: str, noise: bytes
    ) -> None:
        rows_before = await federation.node(ZJ).message_log.count()
        async with mtls(federation) as channel:
            if kind == "replay":
                good = wrong_envelope(federation, "none", noise)
                assert await send_raw(channel, good) == grpc.StatusCode.OK
                rows_before = await federation.node(ZJ).message_log.count()
                code = await send_raw(channel, good)
            else:
                code = await send_raw(channel, wrong_envelope(federation, kind, noise))
        assert code in FITTING, kind
        assert await federation.node(ZJ).message_log.count() == rows_before


class TestPublicServices:
    @FUZZ
    @given(
        qr=st.text(max_size=300),
        purpose=st.integers(min_value=-5, max_value=10),
        party=st.text(max_size=80),
        wanted=st.lists(st.text(max_size=20), max_size=4),
        reference=st.text(max_size=100),
    )
    async def test_arbitrary_identity_requests(
        self,
        federation: LocalFederation,
        qr: str,
        purpose: int,
        party: str,
        wanted: list[str],
        reference: str,
    ) -> None:
        stub = identity_pb2_grpc.IdentityServiceStub(federation.channel(SH))
        code = await status_of(
            stub.VerifyIdentity(
                identity_pb2.VerifyIdentityRequest(
                    qr_payload=qr,
                    purpose=purpose,  # type: ignore[arg-type]
                    relying_party_id=party,
                    requested_attributes=wanted,
                    client_reference=reference,
                ),
                metadata=(("authorization", f"Bearer dev-hotel-{SH}"),),
                timeout=5,
            )
        )
        assert code in FITTING | {grpc.StatusCode.OK}

    @FUZZ
    @given(
        key=st.text(max_size=40),
        id_number=st.text(max_size=20),
        name=st.text(max_size=10),
        province=st.text(max_size=8),
        account=st.text(max_size=24),
        reason=st.integers(min_value=-3, max_value=12),
        amount=st.integers(min_value=-(2**63), max_value=2**63 - 1),
        payee=st.text(max_size=22),
        bank=st.text(max_size=10),
    )
    async def test_arbitrary_withdrawals(
        self,
        federation: LocalFederation,
        key: str,
        id_number: str,
        name: str,
        province: str,
        account: str,
        reason: int,
        amount: int,
        payee: str,
        bank: str,
    ) -> None:
        stub = fund_pb2_grpc.FundServiceStub(federation.channel(SH))
        application = fund_pb2.WithdrawalApplication(
            idempotency_key=key,
            applicant=common_pb2.Person(id_number=id_number, full_name=name),
            fund_province=province,
            fund_account=account,
            reason=reason,  # type: ignore[arg-type]
            amount_fen=amount,
            payee_account=payee,
            payee_bank=bank,
        )
        code = await status_of(
            stub.SubmitWithdrawal(
                fund_pb2.SubmitWithdrawalRequest(application=application),
                metadata=(("authorization", f"Bearer dev-office-{SH}"),),
                timeout=5,
            )
        )
        assert code in FITTING | {grpc.StatusCode.OK}


@pytest.mark.timeout(300)
async def test_node_keeps_serving_and_keeps_its_log(
    federation: LocalFederation, wallet: Wallet
) -> None:
    """After a barrage of garbage, real exchanges work and the logs are intact."""
    stub = identity_pb2_grpc.IdentityServiceStub(federation.channel(SH))
    metadata = (("authorization", f"Bearer dev-hotel-{SH}"),)
    first = await stub.VerifyIdentity(
        identity_pb2.VerifyIdentityRequest(qr_payload=await wallet.fresh_qr(ZJ), purpose=1),
        metadata=metadata,
        timeout=5,
    )
    assert first.verdict == identity_pb2.VALID
    rows = await federation.node(ZJ).message_log.count()
    async with mtls(federation) as channel:
        for kind in KINDS[:-1] * 3:
            assert await send_raw(channel, wrong_envelope(federation, kind, b"x")) in FITTING
    again = await stub.VerifyIdentity(
        identity_pb2.VerifyIdentityRequest(qr_payload=await wallet.fresh_qr(ZJ), purpose=1),
        metadata=metadata,
        timeout=5,
    )
    assert again.verdict == identity_pb2.VALID
    assert await federation.node(ZJ).message_log.count() == rows + 2
    for code in (SH, ZJ):
        assert (await federation.node(code).message_log.verify()).intact
