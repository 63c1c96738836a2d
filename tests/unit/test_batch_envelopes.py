"""Envelopes signed in a batch (issue 16): one hash-tree root signed per batch,
each envelope carrying its inclusion proof in ``SignedEnvelope.batch``.

Shanghai (310000) receives, as in test_envelope.py; Jiangsu (320000) sends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.config.holder import ConfigHolder
from gateway.config.models import FederationConfig
from gateway.core import crypto
from gateway.core.clock import FrozenClock
from gateway.core.errors import EnvelopeRejected
from gateway.trust import batchsig, envelope
from gateway.trust.envelope import EnvelopeSigner, EnvelopeVerifier, SigningKey
from tests.paths import REPOSITORY
from tests.unit.conftest import JS, NOW, SH, ZJ, SignerFactory, signing_key
from tests.unit.test_envelope import CHECK, check_request, seal_request
from yrd.federation.v1 import federation_pb2

Header = federation_pb2.EnvelopeHeader
Signed = federation_pb2.SignedEnvelope
JS_KEY = "320000-sig-2026"
VECTORS = REPOSITORY / "docs" / "test-vectors" / "batch-signatures.json"


def batch_of(signer: EnvelopeSigner, n: int, receiver: str = SH) -> list[Signed]:
    """``n`` credential checks from ``signer`` to ``receiver``, signed as one batch."""
    envelopes = [seal_request(signer, receiver=receiver, batched=True) for _ in range(n)]
    signer.sign_batch(envelopes, receiver=receiver)
    return envelopes


def copy(signed: Signed) -> Signed:
    out = Signed()
    out.CopyFrom(signed)
    return out


def refused(
    verifier: EnvelopeVerifier, signed: Signed, code: grpc.StatusCode, reason: str
) -> EnvelopeRejected:
    with pytest.raises(EnvelopeRejected) as caught:
        verifier.open_request(signed)
    assert (caught.value.code, caught.value.reason) == (code, reason), caught.value.message
    # Never a value: no province code, key id or batch id in the message.
    for value in (JS, JS_KEY, signed.batch.root.batch_id or "-none-"):
        assert value not in caught.value.message
    return caught.value


class TestSealAndSign:
    def test_a_batched_seal_is_unsigned_and_otherwise_as_before(
        self, signer_for: SignerFactory
    ) -> None:
        signed = seal_request(signer_for(JS), batched=True)
        assert signed.signature == b""
        assert not signed.HasField("batch")
        header = Header.FromString(signed.header)
        assert (header.sender, header.receiver, header.key_id) == (JS, SH, JS_KEY)
        assert header.payload_digest == crypto.sha256(signed.payload)

    def test_sign_batch_sets_each_proof_over_one_signed_root(
        self, signer_for: SignerFactory
    ) -> None:
        signer = signer_for(JS)
        envelopes = [seal_request(signer, batched=True) for _ in range(5)]
        root = signer.sign_batch(envelopes, receiver=SH)
        assert (root.sender, root.receiver, root.key_id, root.tree_size) == (JS, SH, JS_KEY, 5)
        assert root.signed_at_ms == int(NOW.timestamp() * 1000)
        assert str(uuid.UUID(root.batch_id)) == root.batch_id
        assert root.root == batchsig.tree_root([e.header for e in envelopes])
        public = signing_key(JS).public_key()
        for i, signed in enumerate(envelopes):
            proof = batchsig.BatchProof.from_proto(signed.batch)
            assert proof.root == root
            assert proof.leaf_index == i
            assert proof.verify(signed.header, public)
            assert signed.signature == b""

    def test_sign_batch_refuses_what_it_cannot_sign(self, signer_for: SignerFactory) -> None:
        signer = signer_for(JS)
        with pytest.raises(ValueError, match=r"1\.\.1024"):
            signer.sign_batch([], receiver=SH)
        with pytest.raises(ValueError, match=r"1\.\.1024"):
            signer.sign_batch([Signed()] * 1025, receiver=SH)
        with pytest.raises(ValueError, match="batched=True"):
            signer.sign_batch([seal_request(signer)], receiver=SH)
        with pytest.raises(ValueError, match="to the receiver"):
            signer.sign_batch([seal_request(signer, batched=True)], receiver=ZJ)
        with pytest.raises(ValueError, match="to the receiver"):
            signer_for(ZJ).sign_batch([seal_request(signer, batched=True)], receiver=SH)
        other = signer_for(JS, key_id="320000-sig-2099")
        mixed = [seal_request(signer, batched=True), seal_request(other, batched=True)]
        with pytest.raises(ValueError, match="same key id"):
            signer.sign_batch(mixed, receiver=SH)
        with pytest.raises(ValueError, match="does not hold"):
            signer.sign_batch([mixed[1]], receiver=SH)
        assert not mixed[0].HasField("batch")

    def test_the_key_the_headers_name_signs_not_the_current_one(
        self, federation: FederationConfig
    ) -> None:
        # Sealed under the shipped key; the signer then rotates to a new key
        # (the receiver does not know it yet) before the batch is signed.
        rotated_at = NOW
        clock = FrozenClock(rotated_at - timedelta(seconds=30))
        rotation = (
            SigningKey(
                JS_KEY,
                signing_key(JS),
                datetime(2026, 1, 1, tzinfo=UTC),
                datetime(2030, 1, 1, tzinfo=UTC),
            ),
            SigningKey(
                "320000-sig-2027",
                Ed25519PrivateKey.generate(),
                rotated_at,
                datetime(2031, 1, 1, tzinfo=UTC),
            ),
        )
        signer = EnvelopeSigner(JS, JS_KEY, signing_key(JS), clock, rotation=rotation)
        envelopes = [seal_request(signer, batched=True) for _ in range(3)]
        clock.set(rotated_at + timedelta(seconds=1))
        assert signer.key_id == "320000-sig-2027"
        root = signer.sign_batch(envelopes, receiver=SH)
        assert root.key_id == JS_KEY
        verifier = EnvelopeVerifier(ConfigHolder(federation), FrozenClock(NOW))
        for signed in envelopes:
            verifier.open_request(signed)
        assert verifier.roots_verified == 1


class TestOpen:
    @pytest.mark.parametrize("n", [1, 2, 7, 16])
    def test_a_batch_of_requests_costs_one_root_verification(
        self, n: int, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        envelopes = batch_of(signer_for(JS), n)
        before = verifier.roots_verified
        for signed in envelopes:
            opened = verifier.open_request(signed)
            assert opened.header.sender == JS
            assert opened.signed == signed
        assert verifier.roots_verified == before + 1
        second = batch_of(signer_for(JS), n)
        for signed in second:
            verifier.open_request(signed)
        assert verifier.roots_verified == before + 2

    def test_a_batch_of_responses_opens_as_receipts(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        requests = [seal_request(signer_for(SH), receiver=JS) for _ in range(4)]
        responder = signer_for(JS)
        responses = [
            responder.seal(
                receiver=SH,
                service=CHECK,
                payload=federation_pb2.CredentialCheckResponse(
                    state=federation_pb2.CREDENTIAL_ACTIVE
                ),
                correlation_id=Header.FromString(r.header).correlation_id,
                request_digest=crypto.sha256(r.header),
                batched=True,
            )
            for r in requests
        ]
        responder.sign_batch(responses, receiver=SH)
        for request, response in zip(requests, responses, strict=True):
            opened = verifier.open_response(
                response, peer=JS, request_header=request.header, service=CHECK
            )
            assert opened.header.request_digest == crypto.sha256(request.header)
        assert verifier.roots_verified == 1
        # A receipt still names its own request only.
        with pytest.raises(EnvelopeRejected) as caught:
            verifier.open_response(copy(responses[0]), peer=JS, request_header=requests[1].header)
        assert caught.value.reason == "wrong_receipt"

    def test_a_replayed_batch_envelope_is_refused(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signed = batch_of(signer_for(JS), 3)[1]
        verifier.open_request(signed)
        refused(verifier, signed, grpc.StatusCode.ALREADY_EXISTS, "replayed_nonce")
        assert verifier.roots_verified == 1

    def test_the_usual_checks_hold_for_batch_envelopes(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier, clock: FrozenClock
    ) -> None:
        # Addressed (and rooted) to Zhejiang: correct proof, wrong receiver.
        signed = batch_of(signer_for(JS), 2, receiver=ZJ)[0]
        refused(verifier, signed, grpc.StatusCode.PERMISSION_DENIED, "wrong_receiver")
        # Stale: the receiver's clock moved on past the skew.
        stale = batch_of(signer_for(JS), 2)[0]
        clock.set(NOW + timedelta(minutes=10))
        refused(verifier, stale, grpc.StatusCode.FAILED_PRECONDITION, "clock_skew")

    def test_an_unknown_key_is_refused_before_any_verification(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        signer = signer_for(JS, key_id="320000-sig-2099")
        signed = seal_request(signer, batched=True)
        signer.sign_batch([signed], receiver=SH)
        with pytest.raises(EnvelopeRejected) as caught:
            verifier.open_request(signed)
        assert caught.value.reason == "unknown_key"
        assert verifier.roots_verified == 0


def _set_root(field: str, value: object) -> Callable[[Signed], None]:
    def change(signed: Signed) -> None:
        setattr(signed.batch.root, field, value)

    return change


def _flip_path(signed: Signed) -> None:
    path = bytearray(signed.batch.audit_path[0])
    path[0] ^= 0x01
    signed.batch.audit_path[0] = bytes(path)


def _flip_signature(signed: Signed) -> None:
    signature = bytearray(signed.batch.root.signature)
    signature[10] ^= 0x01
    signed.batch.root.signature = bytes(signature)


def _flip_root(signed: Signed) -> None:
    root = bytearray(signed.batch.root.root)
    root[0] ^= 0x01
    signed.batch.root.root = bytes(root)


def _tamper_header(signed: Signed) -> None:
    header = Header.FromString(signed.header)
    header.correlation_id = "another-correlation-id"
    signed.header = header.SerializeToString()


def _tamper_payload(signed: Signed) -> None:
    signed.payload = signed.payload + b"\x00"


def _drop_path_entry(signed: Signed) -> None:
    del signed.batch.audit_path[-1]


def _extra_path_entry(signed: Signed) -> None:
    signed.batch.audit_path.append(b"\x00" * 32)


def _short_path_entry(signed: Signed) -> None:
    signed.batch.audit_path[0] = b"\x00" * 31


def _long_path(signed: Signed) -> None:
    signed.batch.audit_path.extend([b"\x00" * 32] * batchsig.MAX_AUDIT_PATH)


def _other_leaf(signed: Signed) -> None:
    signed.batch.leaf_index = 1


def _and_signature(signed: Signed) -> None:
    signed.signature = signing_key(JS).sign(signed.header)


def _no_root(signed: Signed) -> None:
    signed.batch.ClearField("root")


UNAUTH, INVALID = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT

#: (tampering of leaf 0 of a batch of 5, the code, the reason, words the message must have)
TAMPERINGS = [
    pytest.param(_tamper_header, UNAUTH, "bad_proof", "batch.audit_path", id="header"),
    pytest.param(_tamper_payload, INVALID, "digest_mismatch", "payload", id="payload"),
    pytest.param(_flip_path, UNAUTH, "bad_proof", "batch.audit_path", id="path-bit"),
    pytest.param(_drop_path_entry, UNAUTH, "bad_proof", "batch.audit_path", id="path-shorter"),
    pytest.param(_extra_path_entry, UNAUTH, "bad_proof", "batch.audit_path", id="path-longer"),
    pytest.param(_short_path_entry, INVALID, "malformed", "batch.audit_path", id="path-31-bytes"),
    pytest.param(_long_path, INVALID, "malformed", "batch.audit_path", id="path-too-long"),
    pytest.param(_other_leaf, UNAUTH, "bad_proof", "batch.audit_path", id="leaf_index"),
    pytest.param(_flip_root, UNAUTH, "bad_proof", "batch.audit_path", id="root-hash"),
    pytest.param(_flip_signature, UNAUTH, "bad_signature", "batch.root.signature", id="sig"),
    pytest.param(
        _set_root("batch_id", str(uuid.UUID(int=7))),
        UNAUTH,
        "bad_signature",
        "batch.root.signature",
        id="root-batch_id",
    ),
    pytest.param(
        _set_root("signed_at", 1), UNAUTH, "bad_signature", "batch.root.signature", id="signed_at"
    ),
    # Leaf 0's path is the same in a tree of 5 and of 6: the proof holds, the
    # statement (tree_size) does not.
    pytest.param(
        _set_root("tree_size", 6), UNAUTH, "bad_signature", "batch.root.signature", id="size-6"
    ),
    pytest.param(_set_root("tree_size", 4), UNAUTH, "bad_proof", "batch.audit_path", id="size-4"),
    pytest.param(_set_root("tree_size", 0), INVALID, "malformed", "batch.root.tree_size", id="s0"),
    pytest.param(_set_root("sender", ZJ), UNAUTH, "bad_proof", "batch.root.sender", id="sender"),
    pytest.param(
        _set_root("receiver", ZJ), UNAUTH, "bad_proof", "batch.root.receiver", id="receiver"
    ),
    pytest.param(
        _set_root("key_id", "320000-sig-2099"), UNAUTH, "bad_proof", "batch.root.key_id", id="kid"
    ),
    pytest.param(
        _set_root("batch_id", "not-a-uuid"), INVALID, "malformed", "batch.root.batch_id", id="bid"
    ),
    pytest.param(
        _set_root("signature", b"\x01" * 63), INVALID, "malformed", "batch.root.signature", id="63"
    ),
    pytest.param(_no_root, INVALID, "malformed", "batch.root", id="no-root"),
    pytest.param(_and_signature, INVALID, "malformed", "signature, batch", id="both"),
]


class TestTampering:
    @pytest.mark.parametrize(("tamper", "code", "reason", "names"), TAMPERINGS)
    def test_refused_with_its_reason(
        self,
        tamper: Callable[[Signed], None],
        code: grpc.StatusCode,
        reason: str,
        names: str,
        signer_for: SignerFactory,
        verifier: EnvelopeVerifier,
    ) -> None:
        envelopes = batch_of(signer_for(JS), 5)
        tampered = copy(envelopes[0])
        tamper(tampered)
        error = refused(verifier, tampered, code, reason)
        assert error.message.startswith(names), error.message
        # The genuine envelope still opens: nothing bad was remembered.
        verifier.open_request(envelopes[0])

    def test_a_leaf_index_past_the_tree_is_malformed(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        tampered = copy(batch_of(signer_for(JS), 5)[0])
        tampered.batch.leaf_index = 5
        error = refused(verifier, tampered, INVALID, "malformed")
        assert error.message.startswith("batch.leaf_index")

    def test_neither_signature_nor_batch_is_malformed(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        refused(verifier, seal_request(signer_for(JS), batched=True), INVALID, "malformed")

    def test_an_envelope_moved_into_another_batchs_proof(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        first, second = batch_of(signer_for(JS), 4), batch_of(signer_for(JS), 4)
        for i in range(4):
            moved = copy(first[i])
            moved.batch.CopyFrom(second[i].batch)
            refused(verifier, moved, UNAUTH, "bad_proof")

    def test_a_root_signed_by_another_province_with_the_headers_key_id(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        # Zhejiang's key signs a batch whose headers claim Jiangsu and its key id.
        forger = signer_for(JS, key=signing_key(ZJ))
        refused(verifier, batch_of(forger, 3)[2], UNAUTH, "bad_signature")

    def test_a_root_that_failed_is_verified_again_and_not_remembered(
        self, signer_for: SignerFactory, verifier: EnvelopeVerifier
    ) -> None:
        forged = batch_of(signer_for(JS, key=signing_key(ZJ)), 2)
        refused(verifier, forged[0], UNAUTH, "bad_signature")
        refused(verifier, forged[1], UNAUTH, "bad_signature")
        assert verifier.roots_verified == 2
        assert verifier.roots_cached == 0


class TestRootCache:
    def test_bounded_least_recently_used_first(
        self,
        monkeypatch: pytest.MonkeyPatch,
        signer_for: SignerFactory,
        verifier: EnvelopeVerifier,
    ) -> None:
        monkeypatch.setattr(envelope, "ROOT_CACHE_ENTRIES", 3)
        signer = signer_for(JS)
        batches = [batch_of(signer, 2) for _ in range(5)]
        for batch in batches[:3]:
            verifier.open_request(batch[0])
        assert (verifier.roots_verified, verifier.roots_cached) == (3, 3)
        verifier.open_request(batches[0][1])  # batch 0 used again: now the newest
        assert verifier.roots_verified == 3
        verifier.open_request(batches[3][0])  # evicts batch 1, the least recently used
        verifier.open_request(batches[4][0])  # evicts batch 2
        assert (verifier.roots_verified, verifier.roots_cached) == (5, 3)
        verifier.open_request(batches[1][1])  # forgotten: verified again
        assert verifier.roots_verified == 6
        assert verifier.roots_cached == 3

    def test_the_shipped_bound(self) -> None:
        assert envelope.ROOT_CACHE_ENTRIES == batchsig.MAX_BATCH


def _fresh_verifier(federation: FederationConfig) -> EnvelopeVerifier:
    return EnvelopeVerifier(ConfigHolder(federation), FrozenClock(NOW))


class TestArbitraryChange:
    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        size=st.integers(min_value=1, max_value=9),
        leaf=st.integers(min_value=0),
        field=st.sampled_from(["header", "payload", "batch"]),
        position=st.integers(min_value=0),
        xor=st.integers(min_value=1, max_value=255),
    )
    def test_no_single_byte_change_is_accepted(
        self,
        federation: FederationConfig,
        size: int,
        leaf: int,
        field: str,
        position: int,
        xor: int,
    ) -> None:
        signer = EnvelopeSigner(JS, JS_KEY, signing_key(JS), FrozenClock(NOW))
        envelopes = [
            signer.seal(
                receiver=SH,
                service=CHECK,
                payload=check_request(),
                correlation_id=f"corr-{i}",
                batched=True,
            )
            for i in range(size)
        ]
        signer.sign_batch(envelopes, receiver=SH)
        signed = envelopes[leaf % size]
        verifier = _fresh_verifier(federation)
        data = bytearray(
            signed.batch.SerializeToString() if field == "batch" else getattr(signed, field)
        )
        data[position % len(data)] ^= xor
        tampered = copy(signed)
        if field == "batch":
            try:
                tampered.batch.ParseFromString(bytes(data))
            except DecodeError:
                assume(False)
        else:
            setattr(tampered, field, bytes(data))
        with pytest.raises(EnvelopeRejected):
            verifier.open_request(tampered)
        verifier.open_request(signed)


class TestEnvelopeVectors:
    """docs/test-vectors/batch-signatures.json "envelopes": whole SignedEnvelope
    messages of one batch, each verifiable alone (as ``audit check`` does)."""

    def test_each_envelope_of_the_vector_batch_verifies_alone(self) -> None:
        vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vectors["key"]["seed"]))
        batch = vectors["envelopes"]
        encoded = batch["signed_envelopes"]
        assert len(encoded) == batch["signed_root"]["tree_size"] == 3
        for index, text in enumerate(encoded):
            signed = Signed.FromString(bytes.fromhex(text))
            header = Header.FromString(signed.header)
            assert signed.signature == b""
            assert crypto.sha256(signed.payload) == header.payload_digest
            assert signed.batch.root.signature.hex() == batch["signed_root"]["signature"]
            holds = batchsig.check_envelope_proof(
                signed.header, header, signed.batch, key.public_key()
            )
            assert holds == (
                f"signed in batch {batch['signed_root']['batch_id']} of 3, leaf {index} "
                f"({vectors['key']['key_id']})"
            )
            # Another envelope's proof does not do.
            other = Signed.FromString(bytes.fromhex(encoded[(index + 1) % 3]))
            with pytest.raises(ValueError, match=r"batch\.audit_path: expected a path from"):
                batchsig.check_envelope_proof(signed.header, header, other.batch, key.public_key())
