"""The signed envelope (DESIGN §4): sealing, opening, and every rejection.

Shanghai (310000) is the receiving node throughout; its verifier runs on a
frozen clock and each sender signs on a clock of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from gateway.config.holder import ConfigHolder
from gateway.config.models import FEDERATION_SERVICES, FederationConfig
from gateway.core import crypto
from gateway.core.clock import FrozenClock
from gateway.core.errors import EnvelopeRejected
from gateway.trust.envelope import (
    HEADER_BOUNDS,
    MAX_ENVELOPE_BYTES,
    MAX_STATUS_MESSAGE,
    NONCE_BYTES,
    EnvelopeSigner,
    EnvelopeVerifier,
    NonceCache,
    OpenedEnvelope,
    request_fingerprint,
)
from gateway.trust.truststore import TrustStore
from tests.unit.conftest import AH, JS, NOW, PROVINCE_CODES, SH, ZJ, SignerFactory, signing_key
from yrd.certificate.v1 import certificate_pb2
from yrd.federation.v1 import federation_pb2
from yrd.identity.v1 import identity_pb2

CHECK = "identity.CheckCredential"
FETCH = "certificate.Fetch"
SKEW = timedelta(seconds=120)  # max_clock_skew_seconds of the shipped 310000/province.toml

Header = federation_pb2.EnvelopeHeader
Signed = federation_pb2.SignedEnvelope


def check_request() -> federation_pb2.CredentialCheckRequest:
    return federation_pb2.CredentialCheckRequest(
        token_id="tok-0001",
        credential_id="cred-0001",
        purpose=identity_pb2.HOTEL_CHECK_IN,
        relying_party_id="hotel-310000-001",
        requested_attributes=["full_name"],
    )


def seal_request(signer: EnvelopeSigner, **overrides: object) -> Signed:
    """A credential check from ``signer`` to Shanghai, unless told otherwise."""
    fields: dict[str, object] = {
        "receiver": SH,
        "service": CHECK,
        "payload": check_request(),
        "correlation_id": str(uuid.uuid4()),
    }
    fields.update(overrides)
    return signer.seal(**fields)  # type: ignore[arg-type]  # test-only kwargs pass-through


def reseal(
    signed: Signed,
    key: Ed25519PrivateKey,
    change: Callable[[Header], None],
    *,
    payload: bytes | None = None,
) -> Signed:
    """Change the header of a sealed envelope and sign it again, correctly, with ``key``.

    This is how a peer holding a real key could still send an envelope that must be
    refused for what it says rather than for its signature.
    """
    header = Header.FromString(signed.header)
    change(header)
    if payload is not None:
        header.payload_digest = crypto.sha256(payload)
    header_bytes = header.SerializeToString()
    return Signed(
        header=header_bytes,
        payload=signed.payload if payload is None else payload,
        signature=key.sign(header_bytes),
    )


def with_services(
    federation: FederationConfig,
    code: str,
    *,
    offers: tuple[str, ...] | None = None,
    calls: tuple[str, ...] | None = None,
) -> FederationConfig:
    """The federation with this node's offered/called services replaced (a peer's
    offers are in its descriptor, and what it calls is its own business)."""
    assert code == federation.own
    me = federation.me
    services = me.services.model_copy(
        update={
            "offers": me.services.offers if offers is None else offers,
            "calls": me.services.calls if calls is None else calls,
        }
    )
    return FederationConfig(me=me.model_copy(update={"services": services}), peers=federation.peers)


def rejected(
    verifier: EnvelopeVerifier, signed: Signed, code: grpc.StatusCode, reason: str
) -> EnvelopeRejected:
    with pytest.raises(EnvelopeRejected) as caught:
        verifier.open_request(signed)
    assert (caught.value.code, caught.value.reason) == (code, reason), caught.value.message
    assert caught.value.message
    return caught.value


class TestHappyPath:
    """A request sealed by a peer and addressed to this node opens intact."""

    def test_open_request_returns_header_and_payload_as_sent(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        correlation_id = str(uuid.uuid4())
        signed = seal_request(
            signer_for(JS), correlation_id=correlation_id, idempotency_key="idem-0001"
        )

        opened = verifier.open_request(signed)

        header = opened.header
        assert (header.sender, header.receiver, header.service) == (JS, SH, CHECK)
        assert header.correlation_id == correlation_id
        assert header.idempotency_key == "idem-0001"
        assert str(uuid.UUID(header.message_id)) == header.message_id
        assert header.key_id == "320000-sig-2026"
        assert header.algorithm == crypto.ED25519
        assert len(header.nonce) == NONCE_BYTES
        assert header.created_at.ToDatetime(tzinfo=UTC) == NOW
        assert header.payload_type == FEDERATION_SERVICES[CHECK][0]
        assert opened.payload == signed.payload
        assert opened.signed == signed
        assert opened.header_digest == crypto.sha256(signed.header)
        assert opened.parse(federation_pb2.CredentialCheckRequest) == check_request()

    @pytest.mark.parametrize("sender", [JS, ZJ, AH])
    def test_every_province_can_reach_shanghai(
        self, sender: str, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        assert verifier.open_request(seal_request(signer_for(sender))).header.sender == sender

    def test_the_given_message_id_is_kept(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        message_id = str(uuid.uuid4())
        signed = seal_request(signer_for(JS), message_id=message_id)
        assert verifier.open_request(signed).header.message_id == message_id

    def test_two_seals_of_the_same_payload_are_both_accepted(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signer = signer_for(JS)
        first, second = seal_request(signer), seal_request(signer)
        assert Header.FromString(first.header).nonce != Header.FromString(second.header).nonce
        verifier.open_request(first)
        verifier.open_request(second)

    def test_ids_and_nonces_made_here_are_time_ordered(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        # A UUID of version 7 and a nonce stamped with the envelope's own time
        # (then random): both go at the end of the message log's indexes.
        clock = FrozenClock(NOW)
        signer = signer_for(JS, clock=clock)
        first = verifier.open_request(seal_request(signer)).header
        clock.advance(timedelta(milliseconds=5))
        second = verifier.open_request(seal_request(signer)).header
        stamped = int(NOW.timestamp() * 1000)
        assert uuid.UUID(first.message_id).version == 7
        assert int(first.message_id.replace("-", "")[:12], 16) == stamped
        assert int.from_bytes(first.nonce[:6], "big") == stamped
        assert first.message_id < second.message_id
        assert first.nonce < second.nonce

    def test_parse_refuses_a_payload_of_another_shape(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = seal_request(signer_for(JS))
        forged = reseal(signed, signing_key(JS), lambda h: None, payload=b"\xff\xff\xff")
        opened = verifier.open_request(forged)
        with pytest.raises(EnvelopeRejected) as caught:
            opened.parse(federation_pb2.CredentialCheckRequest)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.reason == "bad_payload"
        assert "yrd.federation.v1.CredentialCheckRequest" in caught.value.message


class TestSignature:
    """Any change to the signed header bytes, or to the signature, is refused as
    UNAUTHENTICATED bad_signature."""

    def test_tampered_header_field(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = seal_request(signer_for(JS))
        header = Header.FromString(signed.header)
        header.correlation_id = str(uuid.uuid4())
        tampered = Signed(
            header=header.SerializeToString(), payload=signed.payload, signature=signed.signature
        )
        error = rejected(verifier, tampered, grpc.StatusCode.UNAUTHENTICATED, "bad_signature")
        assert "320000-sig-2026" in error.message

    def test_tampered_header_bytes_appended_field(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = seal_request(signer_for(JS))
        # An extra status_message field appended to the bytes still parses.
        extra = Header(status_message="ok").SerializeToString()
        tampered = Signed(
            header=signed.header + extra, payload=signed.payload, signature=signed.signature
        )
        rejected(verifier, tampered, grpc.StatusCode.UNAUTHENTICATED, "bad_signature")

    def test_flipped_signature_bit(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = seal_request(signer_for(JS))
        signature = bytearray(signed.signature)
        signature[0] ^= 0x01
        tampered = Signed(header=signed.header, payload=signed.payload, signature=bytes(signature))
        rejected(verifier, tampered, grpc.StatusCode.UNAUTHENTICATED, "bad_signature")

    @pytest.mark.parametrize("signature", [b"\x00" * 64, b"\x01" * 63, b"\x01" * 65])
    def test_ill_sized_or_zero_signature(
        self, signature: bytes, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = seal_request(signer_for(JS))
        tampered = Signed(header=signed.header, payload=signed.payload, signature=signature)
        rejected(verifier, tampered, grpc.StatusCode.UNAUTHENTICATED, "bad_signature")

    def test_missing_signature(self, signer_for: SignerFactory, verifier: EnvelopeVerifier) -> None:
        # Neither a signature nor a batch proof (issue 16): malformed, not a bad signature.
        signed = seal_request(signer_for(JS))
        tampered = Signed(header=signed.header, payload=signed.payload)
        error = rejected(verifier, tampered, grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        assert error.message == "signature, batch: expected exactly one of them"

    def test_sender_claimed_with_another_provinces_key(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        # Jiangsu's key, but the header says Zhejiang and names Zhejiang's key id.
        forged = seal_request(signer_for(ZJ, key=signing_key(JS)))
        error = rejected(verifier, forged, grpc.StatusCode.UNAUTHENTICATED, "bad_signature")
        assert ZJ in error.message


class TestPayloadDigest:
    """A payload that is not the one the header's digest names is refused."""

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param(lambda p: p + b"\x00", id="appended"),
            pytest.param(lambda p: b"", id="emptied"),
            pytest.param(lambda p: bytes([p[0] ^ 0x01]) + p[1:], id="bit-flipped"),
        ],
    )
    def test_tampered_payload(
        self,
        change: Callable[[bytes], bytes],
        signer_for: SignerFactory,
        verifier: EnvelopeVerifier,
    ) -> None:
        signed = seal_request(signer_for(JS))
        tampered = Signed(
            header=signed.header, payload=change(signed.payload), signature=signed.signature
        )
        error = rejected(verifier, tampered, grpc.StatusCode.INVALID_ARGUMENT, "digest_mismatch")
        assert "payload_digest" in error.message


class TestKeys:
    """The sender and key id must be in the trust store, and the key valid at the
    envelope's creation time (windows 2026-01-01 .. 2030-01-01 in the shipped configs)."""

    def test_unknown_sender(self, signer_for: SignerFactory, verifier: EnvelopeVerifier) -> None:
        # Fujian is not a member; it signs with some key and a plausible key id.
        stranger = signer_for("350000", key_id="350000-sig-2026", key=signing_key(JS))
        error = rejected(
            verifier, seal_request(stranger), grpc.StatusCode.UNAUTHENTICATED, "unknown_province"
        )
        assert "350000" in error.message

    def test_unknown_key_id(self, signer_for: SignerFactory, verifier: EnvelopeVerifier) -> None:
        signer = signer_for(JS, key_id="320000-sig-2099")
        error = rejected(
            verifier, seal_request(signer), grpc.StatusCode.UNAUTHENTICATED, "unknown_key"
        )
        assert "320000-sig-2099" in error.message

    def test_another_provinces_key_id(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signer = signer_for(JS, key_id="330000-sig-2026")
        rejected(verifier, seal_request(signer), grpc.StatusCode.UNAUTHENTICATED, "unknown_key")

    @pytest.mark.parametrize(
        "instant",
        [
            pytest.param(datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC), id="before-not_before"),
            pytest.param(datetime(2030, 1, 1, 0, 0, tzinfo=UTC), id="at-not_after"),
            pytest.param(datetime(2031, 6, 1, tzinfo=UTC), id="after-not_after"),
        ],
    )
    def test_key_outside_its_validity_window(
        self,
        instant: datetime,
        signer_for: SignerFactory,
        verifier: EnvelopeVerifier,
        clock: FrozenClock,
    ) -> None:
        clock.set(instant)  # both clocks agree: only the key's window is wrong
        signed = seal_request(signer_for(JS, clock=FrozenClock(instant)))
        error = rejected(verifier, signed, grpc.StatusCode.UNAUTHENTICATED, "key_not_valid")
        assert "2026-01-01" in error.message
        assert "2030-01-01" in error.message

    @pytest.mark.parametrize(
        "instant",
        [
            pytest.param(datetime(2026, 1, 1, tzinfo=UTC), id="at-not_before"),
            pytest.param(datetime(2029, 12, 31, 23, 59, 59, tzinfo=UTC), id="last-second"),
        ],
    )
    def test_key_inside_its_validity_window(
        self,
        instant: datetime,
        signer_for: SignerFactory,
        verifier: EnvelopeVerifier,
        clock: FrozenClock,
    ) -> None:
        clock.set(instant)
        verifier.open_request(seal_request(signer_for(JS, clock=FrozenClock(instant))))


class TestClockSkew:
    """An envelope created more than max_clock_skew_seconds away from the receiver's
    clock, in either direction, is refused as FAILED_PRECONDITION clock_skew."""

    @pytest.mark.parametrize(
        ("offset", "shown"),
        [
            pytest.param(SKEW + timedelta(seconds=1), "off by 121 s", id="sender-ahead"),
            pytest.param(-SKEW - timedelta(seconds=1), "off by -121 s", id="sender-behind"),
            pytest.param(timedelta(hours=1), "off by 3600 s", id="an-hour-ahead"),
            pytest.param(-timedelta(days=1), "off by -86400 s", id="a-day-behind"),
        ],
    )
    def test_outside_the_skew(
        self,
        offset: timedelta,
        shown: str,
        signer_for: SignerFactory,
        verifier: EnvelopeVerifier,
    ) -> None:
        signed = seal_request(signer_for(JS, clock=FrozenClock(NOW + offset)))
        error = rejected(verifier, signed, grpc.StatusCode.FAILED_PRECONDITION, "clock_skew")
        assert "within 120 s" in error.message
        assert shown in error.message

    @pytest.mark.parametrize(
        "offset", [SKEW, -SKEW, timedelta(seconds=1), -timedelta(seconds=1), timedelta(0)]
    )
    def test_inside_the_skew(
        self, offset: timedelta, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        verifier.open_request(seal_request(signer_for(JS, clock=FrozenClock(NOW + offset))))

    def test_the_receivers_clock_moving_on_makes_a_held_envelope_stale(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier, clock: FrozenClock
    ) -> None:
        signed = seal_request(signer_for(JS))
        clock.advance(SKEW + timedelta(seconds=1))
        rejected(verifier, signed, grpc.StatusCode.FAILED_PRECONDITION, "clock_skew")


class TestReplay:
    """The same envelope accepted once is refused the second time as ALREADY_EXISTS."""

    def test_same_envelope_twice(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = seal_request(signer_for(JS))
        verifier.open_request(signed)
        error = rejected(verifier, signed, grpc.StatusCode.ALREADY_EXISTS, "replayed_nonce")
        assert "replay" in error.message

    def test_same_nonce_under_a_new_message_id(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = seal_request(signer_for(JS))
        verifier.open_request(signed)
        again = reseal(
            signed, signing_key(JS), lambda h: setattr(h, "message_id", str(uuid.uuid4()))
        )
        rejected(verifier, again, grpc.StatusCode.ALREADY_EXISTS, "replayed_nonce")

    def test_a_refused_envelope_does_not_spend_its_nonce(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = seal_request(signer_for(JS))
        broken = Signed(header=signed.header, payload=b"", signature=signed.signature)
        rejected(verifier, broken, grpc.StatusCode.INVALID_ARGUMENT, "digest_mismatch")
        verifier.open_request(signed)


class TestAddressing:
    """Only envelopes for this node, for a known service that it offers and the
    sender may call, with that service's payload type, are accepted."""

    def test_wrong_receiver(self, signer_for: SignerFactory, verifier: EnvelopeVerifier) -> None:
        signed = seal_request(signer_for(JS), receiver=ZJ)
        error = rejected(verifier, signed, grpc.StatusCode.PERMISSION_DENIED, "wrong_receiver")
        assert SH in error.message
        assert ZJ in error.message

    def test_unknown_service(self, signer_for: SignerFactory, verifier: EnvelopeVerifier) -> None:
        signed = seal_request(signer_for(JS), service="identity.StealEverything")
        error = rejected(verifier, signed, grpc.StatusCode.PERMISSION_DENIED, "unknown_service")
        assert CHECK in error.message

    def _fetch(self, signer: EnvelopeSigner) -> Signed:
        return seal_request(
            signer,
            service=FETCH,
            payload=certificate_pb2.GetCertificateRequest(),
        )

    def test_service_the_receiver_does_not_offer(
        self, federation: FederationConfig, trust: TrustStore, signer_for: SignerFactory
    ) -> None:
        config = with_services(federation, SH, offers=(CHECK,))
        verifier = EnvelopeVerifier(ConfigHolder(config), FrozenClock(NOW))
        error = rejected(
            verifier,
            self._fetch(signer_for(JS)),
            grpc.StatusCode.PERMISSION_DENIED,
            "service_not_allowed",
        )
        assert FETCH in error.message

    def test_a_province_without_a_descriptor_in_force_is_not_trusted(
        self, federation: FederationConfig, trust: TrustStore, signer_for: SignerFactory
    ) -> None:
        # Jiangsu is named as a peer, but no current descriptor of it is held
        # (never fetched, or expired): nothing it signs is accepted.
        config = federation.with_peers({c: f for c, f in federation.peers.items() if c != JS})
        verifier = EnvelopeVerifier(ConfigHolder(config), FrozenClock(NOW))
        error = rejected(
            verifier,
            self._fetch(signer_for(JS)),
            grpc.StatusCode.UNAUTHENTICATED,
            "unknown_province",
        )
        assert JS in error.message

    def test_service_offered(
        self, federation: FederationConfig, trust: TrustStore, signer_for: SignerFactory
    ) -> None:
        config = with_services(federation, SH, offers=(CHECK, FETCH))
        verifier = EnvelopeVerifier(ConfigHolder(config), FrozenClock(NOW))
        assert verifier.open_request(self._fetch(signer_for(JS))).header.service == FETCH

    def test_wrong_payload_type(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = seal_request(signer_for(JS), payload=federation_pb2.DeliveryAck())
        error = rejected(verifier, signed, grpc.StatusCode.INVALID_ARGUMENT, "wrong_payload_type")
        assert FEDERATION_SERVICES[CHECK][0] in error.message

    def test_a_response_payload_type_is_not_a_request(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = seal_request(signer_for(JS), payload=federation_pb2.CredentialCheckResponse())
        rejected(verifier, signed, grpc.StatusCode.INVALID_ARGUMENT, "wrong_payload_type")


class TestMalformed:
    """Envelopes that are not well formed are refused with a reason, never a crash."""

    def test_garbage_header_bytes(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = seal_request(signer_for(JS))
        garbage = Signed(header=b"\xff\xff\xff\xff", payload=signed.payload, signature=b"x")
        error = rejected(verifier, garbage, grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        assert "EnvelopeHeader" in error.message

    def test_empty_header(self, signer_for: SignerFactory, verifier: EnvelopeVerifier) -> None:
        signed = seal_request(signer_for(JS))
        empty = Signed(header=b"", payload=signed.payload, signature=signed.signature)
        error = rejected(verifier, empty, grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        assert "got nothing" in error.message

    def test_empty_envelope(self, verifier: EnvelopeVerifier) -> None:
        rejected(verifier, Signed(), grpc.StatusCode.INVALID_ARGUMENT, "malformed")

    @pytest.mark.parametrize("algorithm", ["SM2", "", "ed25519", "RS256"])
    def test_unsupported_algorithm(
        self, algorithm: str, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = reseal(
            seal_request(signer_for(JS)),
            signing_key(JS),
            lambda h: setattr(h, "algorithm", algorithm),
        )
        error = rejected(verifier, signed, grpc.StatusCode.UNAUTHENTICATED, "unsupported_algorithm")
        assert crypto.ED25519 in error.message

    def test_missing_created_at(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = reseal(
            seal_request(signer_for(JS)), signing_key(JS), lambda h: h.ClearField("created_at")
        )
        error = rejected(verifier, signed, grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        assert "created_at" in error.message

    @pytest.mark.parametrize("seconds", [2**62, -(2**62)])
    def test_impossible_created_at(
        self, seconds: int, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        def change(header: Header) -> None:
            header.created_at.seconds = seconds

        signed = reseal(seal_request(signer_for(JS)), signing_key(JS), change)
        error = rejected(verifier, signed, grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        assert "created_at" in error.message

    @pytest.mark.parametrize("nonce", [b"", b"\x00" * 8, b"\x00" * 32])
    def test_nonce_of_the_wrong_size(
        self, nonce: bytes, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = reseal(
            seal_request(signer_for(JS)), signing_key(JS), lambda h: setattr(h, "nonce", nonce)
        )
        error = rejected(verifier, signed, grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        assert "nonce" in error.message

    @pytest.mark.parametrize("field", ["message_id", "correlation_id"])
    def test_missing_ids(
        self,
        field: Literal["message_id", "correlation_id"],
        signer_for: SignerFactory,
        verifier: EnvelopeVerifier,
    ) -> None:
        signed = reseal(
            seal_request(signer_for(JS)), signing_key(JS), lambda h: h.ClearField(field)
        )
        error = rejected(verifier, signed, grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        assert field in error.message

    def test_oversize_envelope(self, signer_for: SignerFactory, verifier: EnvelopeVerifier) -> None:
        big = check_request()
        big.relying_party_id = "x" * MAX_ENVELOPE_BYTES
        signed = seal_request(signer_for(JS), payload=big)
        error = rejected(verifier, signed, grpc.StatusCode.INVALID_ARGUMENT, "too_large")
        assert str(MAX_ENVELOPE_BYTES) in error.message


class TestOpenResponse:
    """A response must come from the peer asked, be addressed to this node and name
    the SHA-256 of this request's header: a signed receipt."""

    @pytest.fixture
    def request_envelope(self, signer_for: SignerFactory) -> Signed:
        return seal_request(signer_for(SH), receiver=JS)

    def respond(
        self, signer: EnvelopeSigner, request: Signed, **overrides: object
    ) -> federation_pb2.SignedEnvelope:
        fields: dict[str, object] = {
            "receiver": SH,
            "service": CHECK,
            "payload": federation_pb2.CredentialCheckResponse(
                state=federation_pb2.CREDENTIAL_ACTIVE
            ),
            "correlation_id": Header.FromString(request.header).correlation_id,
            "request_digest": crypto.sha256(request.header),
        }
        fields.update(overrides)
        return signer.seal(**fields)  # type: ignore[arg-type]  # test-only kwargs pass-through

    def refused(
        self,
        verifier: EnvelopeVerifier,
        response: Signed,
        request: Signed,
        code: grpc.StatusCode,
        reason: str,
        peer: str = JS,
    ) -> EnvelopeRejected:
        with pytest.raises(EnvelopeRejected) as caught:
            verifier.open_response(response, peer=peer, request_header=request.header)
        assert (caught.value.code, caught.value.reason) == (code, reason), caught.value.message
        return caught.value

    def test_receipt_of_this_request(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier, request_envelope: Signed
    ) -> None:
        response = self.respond(signer_for(JS), request_envelope, status_code=5)
        opened = verifier.open_response(response, peer=JS, request_header=request_envelope.header)
        assert isinstance(opened, OpenedEnvelope)
        assert opened.header.request_digest == crypto.sha256(request_envelope.header)
        assert opened.header.status_code == 5
        state = opened.parse(federation_pb2.CredentialCheckResponse)
        assert state == federation_pb2.CredentialCheckResponse(
            state=federation_pb2.CREDENTIAL_ACTIVE
        )

    def test_receipt_of_another_request(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier, request_envelope: Signed
    ) -> None:
        other = seal_request(signer_for(SH), receiver=JS)
        response = self.respond(signer_for(JS), other)
        error = self.refused(
            verifier,
            response,
            request_envelope,
            grpc.StatusCode.UNAUTHENTICATED,
            "wrong_receipt",
        )
        assert "request_digest" in error.message

    def test_receipt_without_a_request_digest(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier, request_envelope: Signed
    ) -> None:
        response = self.respond(signer_for(JS), request_envelope, request_digest=b"")
        self.refused(
            verifier,
            response,
            request_envelope,
            grpc.StatusCode.UNAUTHENTICATED,
            "wrong_receipt",
        )

    def test_response_from_another_peer(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier, request_envelope: Signed
    ) -> None:
        response = self.respond(signer_for(ZJ), request_envelope)
        error = self.refused(
            verifier,
            response,
            request_envelope,
            grpc.StatusCode.UNAUTHENTICATED,
            "wrong_sender",
        )
        assert JS in error.message
        assert ZJ in error.message

    def test_response_addressed_to_another_node(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier, request_envelope: Signed
    ) -> None:
        response = self.respond(signer_for(JS), request_envelope, receiver=AH)
        self.refused(
            verifier,
            response,
            request_envelope,
            grpc.StatusCode.PERMISSION_DENIED,
            "wrong_receiver",
        )

    def test_replayed_response(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier, request_envelope: Signed
    ) -> None:
        response = self.respond(signer_for(JS), request_envelope)
        verifier.open_response(response, peer=JS, request_header=request_envelope.header)
        self.refused(
            verifier,
            response,
            request_envelope,
            grpc.StatusCode.ALREADY_EXISTS,
            "replayed_nonce",
        )

    def test_tampered_response_payload(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier, request_envelope: Signed
    ) -> None:
        response = self.respond(signer_for(JS), request_envelope)
        tampered = Signed(header=response.header, payload=b"\x08\x02", signature=response.signature)
        self.refused(
            verifier,
            tampered,
            request_envelope,
            grpc.StatusCode.INVALID_ARGUMENT,
            "digest_mismatch",
        )

    def test_tampered_response_header(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier, request_envelope: Signed
    ) -> None:
        response = self.respond(signer_for(JS), request_envelope)
        header = Header.FromString(response.header)
        header.status_code = 0 if header.status_code else 7
        tampered = Signed(
            header=header.SerializeToString(),
            payload=response.payload,
            signature=response.signature,
        )
        self.refused(
            verifier,
            tampered,
            request_envelope,
            grpc.StatusCode.UNAUTHENTICATED,
            "bad_signature",
        )

    def test_stale_response(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier, request_envelope: Signed
    ) -> None:
        late = signer_for(JS, clock=FrozenClock(NOW - SKEW - timedelta(seconds=5)))
        self.refused(
            verifier,
            self.respond(late, request_envelope),
            request_envelope,
            grpc.StatusCode.FAILED_PRECONDITION,
            "clock_skew",
        )


class TestNonceCache:
    """Remembers (sender, nonce) pairs for its TTL; a pair seen again is a replay."""

    def test_first_sight_then_replay(self) -> None:
        cache = NonceCache(timedelta(minutes=4))
        assert cache.add(JS, b"n" * 16) is True
        assert cache.add(JS, b"n" * 16) is False

    def test_senders_have_their_own_nonces(self) -> None:
        cache = NonceCache(timedelta(minutes=4))
        assert cache.add(JS, b"n" * 16)
        assert cache.add(ZJ, b"n" * 16)

    def test_a_nonce_is_forgotten_after_its_ttl(self) -> None:
        cache = NonceCache(timedelta(milliseconds=20))
        assert cache.add(JS, b"n" * 16)
        time.sleep(0.04)
        assert cache.add(JS, b"n" * 16)

    def test_holds_at_most_max_entries_forgetting_the_oldest(self) -> None:
        cache = NonceCache(timedelta(minutes=4), max_entries=3)
        for i in range(4):
            assert cache.add(JS, bytes([i]) * 16)
        assert cache.add(JS, bytes([0]) * 16), "the oldest nonce was evicted"
        assert not cache.add(JS, bytes([3]) * 16), "the newest nonce is still remembered"

    @given(st.lists(st.tuples(st.sampled_from(PROVINCE_CODES), st.binary(max_size=4))))
    def test_add_is_true_exactly_on_first_sight(self, pairs: list[tuple[str, bytes]]) -> None:
        cache = NonceCache(timedelta(minutes=4))
        seen: set[tuple[str, bytes]] = set()
        for pair in pairs:
            assert cache.add(*pair) is (pair not in seen)
            seen.add(pair)


class TestHeaderBounds:
    """Every header string a peer sends is bounded and checked before anything
    else looks at it; a refusal names the field and never echoes the value."""

    BIG = "9" * (3 * 1024 * 1024)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("message_id", BIG),
            ("message_id", "m-1"),
            ("message_id", "fe2226be-a1e3-40c2-988b-0d5ba06b0c78".upper()),
            ("message_id", "{d93b1d7c-9470-4a5c-8eed-24e091bd2747}"),
            ("correlation_id", "c" * 129),
            ("correlation_id", "tab\there"),
            ("correlation_id", "ünïcode"),
            ("idempotency_key", "k" * 129),
            ("idempotency_key", "new\nline"),
            ("sender", BIG),
            ("sender", "31000"),
            ("receiver", "3100000"),
            ("service", "s" * 65),
            ("service", "identity CheckCredential"),
            ("payload_type", "p" * 129),
            ("key_id", "k" * 129),
            ("key_id", "key id"),
            ("algorithm", "A" * 33),
            ("status_message", "m" * (MAX_STATUS_MESSAGE + 1)),
        ],
    )
    def test_out_of_bounds_field_is_refused_by_name(
        self, field: str, value: str, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = reseal(
            seal_request(signer_for(JS)), signing_key(JS), lambda h: setattr(h, field, value)
        )
        error = rejected(verifier, signed, grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        assert error.message.startswith(f"header.{field}: expected")
        assert len(error.message) < 200
        assert value[:8] not in error.message.removeprefix(f"header.{field}")

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("correlation_id", "c" * 128),
            ("correlation_id", "a printable ~ASCII! id"),
            ("idempotency_key", "k" * 128),
            ("idempotency_key", ""),
        ],
    )
    def test_values_at_the_bound_pass(
        self, field: str, value: str, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = reseal(
            seal_request(signer_for(JS)), signing_key(JS), lambda h: setattr(h, field, value)
        )
        assert getattr(verifier.open_request(signed).header, field) == value

    def test_bounds_are_checked_before_the_signature(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        """An unsigned garbage header is refused for its field, not looked up."""
        header = Header.FromString(seal_request(signer_for(JS)).header)
        header.key_id = "k" * 10_000
        signed = Signed(header=header.SerializeToString(), payload=b"", signature=b"x")
        error = rejected(verifier, signed, grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        assert error.message.startswith("header.key_id")

    def test_every_bound_is_documented_with_what_is_expected(self) -> None:
        assert set(HEADER_BOUNDS) == {
            "message_id",
            "correlation_id",
            "idempotency_key",
            "sender",
            "receiver",
            "service",
            "payload_type",
            "key_id",
            "algorithm",
        }
        assert all(expected for _, expected in HEADER_BOUNDS.values())

    def test_a_sealer_cuts_its_own_status_message_to_the_bound(
        self, signer_for: SignerFactory
    ) -> None:
        signed = seal_request(signer_for(JS), status_message="x" * 5000)
        assert len(Header.FromString(signed.header).status_message) == MAX_STATUS_MESSAGE


class TestRequestFingerprint:
    """A retry (a new seal of the same request) keeps the fingerprint; a change to
    what the request asks changes it."""

    def test_a_new_seal_of_the_same_request_keeps_it(self, signer_for: SignerFactory) -> None:
        signer = signer_for(JS)
        fields = {"message_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())}
        first, retry = seal_request(signer, **fields), seal_request(signer, **fields)
        assert first.header != retry.header
        assert request_fingerprint(Header.FromString(first.header)) == request_fingerprint(
            Header.FromString(retry.header)
        )

    @pytest.mark.parametrize(
        "change",
        [
            {"correlation_id": str(uuid.uuid4())},
            {"idempotency_key": "another-key"},
            {"payload": federation_pb2.CredentialCheckRequest(token_id="other")},
            {"service": FETCH, "payload": certificate_pb2.GetCertificateRequest()},
        ],
    )
    def test_another_request_has_another(
        self, change: dict[str, object], signer_for: SignerFactory
    ) -> None:
        signer = signer_for(JS)
        fields: dict[str, object] = {
            "message_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        }
        first = seal_request(signer, **fields)
        other = seal_request(signer, **{**fields, **change})
        assert request_fingerprint(Header.FromString(first.header)) != request_fingerprint(
            Header.FromString(other.header)
        )


# ---- property tests: no input makes the verifier fail with anything else ----

_NOW_SECONDS = int(NOW.timestamp())
_KEY_IDS = ["310000-sig-2026", "320000-sig-2026", "330000-sig-2026", "340000-sig-2026"]


_PAYLOAD_TYPES = sorted({t for pair in FEDERATION_SERVICES.values() for t in pair})


def _mostly(draw: st.DrawFn, usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """A usual value four times in five, else an odd one: most headers get deep."""
    return draw(odd) if draw(st.sampled_from((False, False, False, False, True))) else draw(usual)


@st.composite
def headers(draw: st.DrawFn) -> Header:
    """Headers with any field values, biased towards ones that pass the early checks."""
    sender = _mostly(draw, st.sampled_from(PROVINCE_CODES), st.text(max_size=8))
    usual_key_id = f"{sender}-sig-2026"
    service = _mostly(draw, st.sampled_from(sorted(FEDERATION_SERVICES)), st.text(max_size=8))
    header = Header(
        message_id=_mostly(draw, st.uuids().map(str), st.text(max_size=8)),
        correlation_id=_mostly(draw, st.uuids().map(str), st.text(max_size=8)),
        idempotency_key=draw(st.text(max_size=8)),
        sender=sender,
        receiver=_mostly(draw, st.just(SH), st.sampled_from([JS, "350000", "", "310000 "])),
        service=service,
        nonce=_mostly(
            draw, st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES), st.binary(max_size=20)
        ),
        payload_type=_mostly(
            draw,
            st.just(FEDERATION_SERVICES.get(service, ("",))[0]),
            st.one_of(st.sampled_from(_PAYLOAD_TYPES), st.text(max_size=8)),
        ),
        key_id=_mostly(draw, st.just(usual_key_id), st.sampled_from([*_KEY_IDS, "", "k"])),
        algorithm=_mostly(draw, st.just(crypto.ED25519), st.text(max_size=8)),
        payload_digest=draw(st.binary(max_size=32)),
        request_digest=draw(st.binary(max_size=32)),
        status_code=draw(st.integers(-(2**31), 2**31 - 1)),
        status_message=draw(st.text(max_size=8)),
    )
    if _mostly(draw, st.just(True), st.just(False)):
        header.created_at.seconds = _mostly(
            draw,
            st.integers(_NOW_SECONDS - 150, _NOW_SECONDS + 150),
            st.integers(-(2**63), 2**63 - 1),
        )
        header.created_at.nanos = _mostly(
            draw, st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1)
        )
    return header


def _outcome(
    open_envelope: Callable[[Signed], OpenedEnvelope], signed: Signed
) -> OpenedEnvelope | EnvelopeRejected:
    """What a caller gets: the opened envelope, or the EnvelopeRejected raised."""
    try:
        return open_envelope(signed)
    except EnvelopeRejected as error:
        return error


def _fresh_verifier(federation: FederationConfig) -> EnvelopeVerifier:
    return EnvelopeVerifier(ConfigHolder(federation), FrozenClock(NOW))


_property = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class TestArbitraryInput:
    """Whatever bytes arrive in the header, payload and signature fields, opening an
    envelope either succeeds or raises EnvelopeRejected: never anything else."""

    @_property
    @given(
        header=st.binary(max_size=200), payload=st.binary(max_size=64), sig=st.binary(max_size=80)
    )
    def test_arbitrary_bytes(
        self,
        federation: FederationConfig,
        trust: TrustStore,
        header: bytes,
        payload: bytes,
        sig: bytes,
    ) -> None:
        verifier = _fresh_verifier(federation)
        signed = Signed(header=header, payload=payload, signature=sig)
        with pytest.raises(EnvelopeRejected):
            verifier.open_request(signed)
        with pytest.raises(EnvelopeRejected):
            verifier.open_response(signed, peer=JS, request_header=header)

    @_property
    @given(
        header=headers(),
        payload=st.binary(max_size=64),
        digest_matches=st.sampled_from((True, True, True, False)),
    )
    def test_arbitrary_header_fields_correctly_signed(
        self,
        federation: FederationConfig,
        trust: TrustStore,
        header: Header,
        payload: bytes,
        digest_matches: bool,
    ) -> None:
        if digest_matches:
            header.payload_digest = crypto.sha256(payload)
        header_bytes = header.SerializeToString()
        key = signing_key(header.sender) if header.sender in PROVINCE_CODES else signing_key(JS)
        signed = Signed(header=header_bytes, payload=payload, signature=key.sign(header_bytes))
        verifier = _fresh_verifier(federation)
        for open_envelope in (
            verifier.open_request,
            lambda s: verifier.open_response(s, peer=header.sender, request_header=b""),
        ):
            result = _outcome(open_envelope, signed)
            event(result.reason if isinstance(result, EnvelopeRejected) else "accepted")
            if isinstance(result, EnvelopeRejected):
                assert result.reason
                assert result.code != grpc.StatusCode.OK
            else:
                assert result.payload == payload

    @_property
    @given(
        field=st.sampled_from(["header", "payload", "signature"]),
        position=st.integers(min_value=0),
        xor=st.integers(min_value=1, max_value=255),
    )
    def test_no_single_byte_change_is_accepted(
        self,
        federation: FederationConfig,
        trust: TrustStore,
        field: str,
        position: int,
        xor: int,
    ) -> None:
        signer = EnvelopeSigner(JS, "320000-sig-2026", signing_key(JS), FrozenClock(NOW))
        signed = seal_request(signer)
        data = bytearray(getattr(signed, field))
        assume(data)
        data[position % len(data)] ^= xor
        tampered = Signed()
        tampered.CopyFrom(signed)
        setattr(tampered, field, bytes(data))
        with pytest.raises(EnvelopeRejected):
            _fresh_verifier(federation).open_request(tampered)
