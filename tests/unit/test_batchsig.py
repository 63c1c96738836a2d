"""Batch signatures over a hash tree (issue 16, first step): the format only.

The committed test vectors are recomputed from their own inputs; the tree is
cross-checked against a straightforward recursive implementation written here
from RFC 6962 §2.1; random trees prove every leaf and refuse tampered ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.errors import InvalidArgument
from gateway.trust import batchsig
from tests.paths import REPOSITORY
from yrd.federation.v1 import federation_pb2

VECTORS = REPOSITORY / "docs" / "test-vectors" / "batch-signatures.json"
BATCH_ID = "0b6f6a3e-8c1d-4d52-9a57-6f0e2f4d1a11"


def load_vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return data


# ---- An independent reference, straight from RFC 6962 §2.1 ----


def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def vector_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(load_vectors()["key"]["seed"]))


def signed_root_of(fields: dict[str, Any]) -> batchsig.BatchRoot:
    return batchsig.BatchRoot(
        sender=fields["sender"],
        receiver=fields["receiver"],
        batch_id=fields["batch_id"],
        signed_at_ms=fields["signed_at_ms"],
        tree_size=fields["tree_size"],
        root=bytes.fromhex(fields["root"]),
        key_id=fields["key_id"],
        signature=bytes.fromhex(fields["signature"]),
    )


class TestVectors:
    """Every value in docs/test-vectors/batch-signatures.json is what the code computes."""

    def test_key(self) -> None:
        vectors = load_vectors()
        public = vector_key().public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert raw.hex() == vectors["key"]["public_key"]
        assert vectors["statement_prefix"] == batchsig.STATEMENT_PREFIX.hex()
        assert vectors["max_batch"] == batchsig.MAX_BATCH

    def test_sizes(self) -> None:
        sizes = [b["signed_root"]["tree_size"] for b in load_vectors()["batches"]]
        assert sizes == [1, 2, 3, 5, 8]

    @pytest.mark.parametrize("number", range(5))
    def test_batch(self, number: int) -> None:
        vectors = load_vectors()
        batch = vectors["batches"][number]
        key = vector_key()
        headers = [bytes.fromhex(leaf["header"]) for leaf in batch["leaves"]]
        fields = batch["signed_root"]
        assert fields["tree_size"] == len(headers)
        for leaf, header in zip(batch["leaves"], headers, strict=True):
            assert batchsig.leaf_hash(header).hex() == leaf["leaf_hash"]
            assert hashlib.sha256(b"\x00" + header).hexdigest() == leaf["leaf_hash"]
            parsed = federation_pb2.EnvelopeHeader.FromString(header)
            assert parsed.SerializeToString(deterministic=True) == header
        root = batchsig.tree_root(headers)
        assert root.hex() == fields["root"] == ref_mth(headers).hex()
        statement = batchsig.root_statement(
            fields["sender"],
            fields["receiver"],
            fields["batch_id"],
            fields["signed_at_ms"],
            fields["tree_size"],
            root,
        )
        assert statement.hex() == fields["statement"]
        assert key.sign(statement).hex() == fields["signature"]
        signed = signed_root_of(fields)
        assert batchsig.verify_root(signed, key.public_key())
        for index, (leaf, header) in enumerate(zip(batch["leaves"], headers, strict=True)):
            path = [p.hex() for p in batchsig.inclusion_proof(headers, index)]
            assert path == leaf["audit_path"] == [p.hex() for p in ref_path(index, headers)]
            proof = batchsig.BatchProof(signed, index, tuple(bytes.fromhex(p) for p in path))
            assert proof.verify(header, key.public_key())
            assert batchsig.BatchProof.from_proto(proof.to_proto()) == proof

    def test_negative_cases(self) -> None:
        vectors = load_vectors()
        public = vector_key().public_key()
        names = []
        for case in vectors["negative"]:
            names.append(case["name"])
            assert case["expected"] is False
            if case["kind"] == "inclusion":
                got = batchsig.verify_inclusion(
                    bytes.fromhex(case["leaf_hash"]),
                    case["index"],
                    case["size"],
                    [bytes.fromhex(p) for p in case["audit_path"]],
                    bytes.fromhex(case["root"]),
                )
            else:
                fields = case["signed_root"]
                signed = signed_root_of(fields)
                assert signed.statement.hex() == fields["statement"]
                got = batchsig.verify_root(signed, public)
            assert got is case["expected"], case["name"]
        assert len(names) >= 4

    def test_the_script_writes_the_committed_file(self) -> None:
        sys.path.insert(0, str(REPOSITORY / "scripts"))
        try:
            import gen_batch_vectors
        finally:
            sys.path.pop(0)
        assert gen_batch_vectors.render() == VECTORS.read_text(encoding="utf-8")


leaf_lists = st.lists(st.binary(max_size=40), min_size=1, max_size=200)
#: Distinct leaves: with two equal leaves, one's proof is rightly the other's too.
unique_leaf_lists = st.lists(st.binary(max_size=40), min_size=1, max_size=200, unique=True)


class TestTree:
    """The tree, its proofs and their verification (RFC 6962 §2.1, RFC 9162 §2.1.3.2)."""

    @settings(max_examples=60, deadline=None)
    @given(leaf_lists)
    def test_root_matches_the_reference(self, leaves: list[bytes]) -> None:
        assert batchsig.tree_root(leaves) == ref_mth(leaves)

    @settings(max_examples=40, deadline=None)
    @given(leaf_lists)
    def test_every_leaf_verifies(self, leaves: list[bytes]) -> None:
        root, paths = batchsig.inclusion_proofs(leaves)
        assert root == batchsig.tree_root(leaves)
        assert len(paths) == len(leaves)
        for index, path in enumerate(paths):
            assert len(path) <= batchsig.MAX_AUDIT_PATH
            # The one-pass proofs are the RFC's paths, as the per-leaf proof is.
            assert path == ref_path(index, leaves)
            assert batchsig.verify_inclusion(
                batchsig.leaf_hash(leaves[index]), index, len(leaves), path, root
            )

    @settings(max_examples=60, deadline=None)
    @given(unique_leaf_lists, st.data())
    def test_a_tampered_leaf_or_proof_does_not_verify(
        self, leaves: list[bytes], data: st.DataObject
    ) -> None:
        size = len(leaves)
        index = data.draw(st.integers(0, size - 1), label="index")
        root = batchsig.tree_root(leaves)
        path = batchsig.inclusion_proof(leaves, index)
        assert path == ref_path(index, leaves)
        good = batchsig.leaf_hash(leaves[index])
        assert batchsig.verify_inclusion(good, index, size, path, root)
        tampered = leaves[index] + b"\x00"
        assert not batchsig.verify_inclusion(batchsig.leaf_hash(tampered), index, size, path, root)
        if size > 1:
            other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
            assert not batchsig.verify_inclusion(good, other, size, path, root)
            entry = data.draw(st.integers(0, len(path) - 1), label="entry")
            flipped = bytearray(path[entry])
            flipped[data.draw(st.integers(0, 31), label="byte")] ^= 0x01
            bad_path = [*path[:entry], bytes(flipped), *path[entry + 1 :]]
            assert not batchsig.verify_inclusion(good, index, size, bad_path, root)
            assert not batchsig.verify_inclusion(good, index, size, path[:-1], root)
        assert not batchsig.verify_inclusion(good, index, size, [*path, root], root)

    def test_known_small_trees(self) -> None:
        a, b, c = b"a", b"b", b"c"
        la, lb, lc = (hashlib.sha256(b"\x00" + x).digest() for x in (a, b, c))
        ab = hashlib.sha256(b"\x01" + la + lb).digest()
        assert batchsig.tree_root([a]) == la
        assert batchsig.tree_root([a, b]) == ab
        assert batchsig.tree_root([a, b, c]) == hashlib.sha256(b"\x01" + ab + lc).digest()
        assert batchsig.inclusion_proof([a, b, c], 2) == [ab]
        assert batchsig.inclusion_proof([a, b, c], 0) == [lb, lc]

    def test_bounds(self) -> None:
        leaves = [b"x", b"y", b"z"]
        root = batchsig.tree_root(leaves)
        path = batchsig.inclusion_proof(leaves, 1)
        h = batchsig.leaf_hash(b"y")
        assert batchsig.verify_inclusion(h, 1, 3, path, root)
        assert not batchsig.verify_inclusion(h, 3, 3, path, root)
        assert not batchsig.verify_inclusion(h, -1, 3, path, root)
        assert not batchsig.verify_inclusion(h, 0, 0, [], root)
        assert not batchsig.verify_inclusion(h, 1, batchsig.MAX_BATCH + 1, path, root)
        assert not batchsig.verify_inclusion(h, 1, 3, [path[0][:31], path[1]], root)
        assert not batchsig.verify_inclusion(h, 1, 3, [path[0] + b"\x00", path[1]], root)
        assert not batchsig.verify_inclusion(h[:31], 1, 3, path, root)
        assert not batchsig.verify_inclusion(h, 1, 3, path, root[:31])
        assert not batchsig.verify_inclusion(h, 1, 3, path * 6, root)
        with pytest.raises(InvalidArgument, match="leaves"):
            batchsig.tree_root([])
        with pytest.raises(InvalidArgument, match="leaves"):
            batchsig.tree_root([b""] * (batchsig.MAX_BATCH + 1))
        with pytest.raises(InvalidArgument, match="index"):
            batchsig.inclusion_proof(leaves, 3)

    def test_the_largest_batch(self) -> None:
        leaves = [i.to_bytes(2, "big") for i in range(batchsig.MAX_BATCH)]
        root, paths = batchsig.inclusion_proofs(leaves)
        assert batchsig.MAX_AUDIT_PATH == 10
        assert {len(p) for p in paths} == {batchsig.MAX_AUDIT_PATH}
        last = batchsig.MAX_BATCH - 1
        assert batchsig.verify_inclusion(
            batchsig.leaf_hash(leaves[last]), last, batchsig.MAX_BATCH, paths[last], root
        )


class TestSignedRoot:
    """The batch-root statement, its signature and the proto round trip."""

    key = Ed25519PrivateKey.from_private_bytes(bytes(32))

    def sign(self, **changes: Any) -> batchsig.BatchRoot:
        fields: dict[str, Any] = {
            "sender": "310000",
            "receiver": "330000",
            "batch_id": BATCH_ID,
            "signed_at_ms": 1_767_225_600_123,
            "tree_size": 3,
            "root": bytes(range(32)),
            "key_id": "310000-2026",
            "private_key": self.key,
        }
        fields.update(changes)
        return batchsig.sign_root(**fields)

    def test_statement_layout(self) -> None:
        statement = self.sign().statement
        assert statement == (
            b"yrd-batch-root-v1\x00"
            + b"\x00\x06310000"
            + b"\x00\x06330000"
            + b"\x00\x24"
            + BATCH_ID.encode()
            + b"\x00\x08"
            + (1_767_225_600_123).to_bytes(8, "big")
            + b"\x00\x04\x00\x00\x00\x03"
            + b"\x00\x20"
            + bytes(range(32))
        )

    def test_every_field_is_bound(self) -> None:
        signed = self.sign()
        public = self.key.public_key()
        assert batchsig.verify_root(signed, public)
        for change in (
            {"sender": "320000"},
            {"receiver": "320000"},
            {"batch_id": BATCH_ID[:-1] + "2"},
            {"signed_at_ms": signed.signed_at_ms + 1},
            {"tree_size": 4},
            {"root": bytes(32)},
        ):
            forged = dataclasses.replace(signed, **change)
            assert not batchsig.verify_root(forged, public), change
        other = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32).public_key()
        assert not batchsig.verify_root(signed, other)
        short = dataclasses.replace(signed, signature=signed.signature[:63])
        assert not batchsig.verify_root(short, public)
        bad = dataclasses.replace(signed, receiver="0")
        assert not batchsig.verify_root(bad, public)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("sender", "31000"),
            ("receiver", "031000"),
            ("batch_id", BATCH_ID.upper()),
            ("signed_at_ms", -1),
            ("tree_size", 0),
            ("tree_size", batchsig.MAX_BATCH + 1),
            ("root", bytes(31)),
            ("key_id", "bad key"),
        ],
    )
    def test_out_of_bound_fields_are_refused_by_name(self, field: str, value: object) -> None:
        with pytest.raises(InvalidArgument) as caught:
            self.sign(**{field: value})
        assert caught.value.field == field.removesuffix("_ms")
        if isinstance(value, str):
            assert value not in caught.value.message

    def test_sign_batch(self) -> None:
        headers = [b"h%d" % i for i in range(7)]
        proofs = batchsig.sign_batch(
            headers,
            sender="310000",
            receiver="330000",
            batch_id=BATCH_ID,
            signed_at_ms=0,
            key_id="k",
            private_key=self.key,
        )
        assert [p.leaf_index for p in proofs] == list(range(7))
        assert all(p.root == proofs[0].root for p in proofs)
        assert proofs[0].root.root == ref_mth(headers)
        for header, proof in zip(headers, proofs, strict=True):
            assert proof.verify(header, self.key.public_key())
            assert not proof.verify(header + b"!", self.key.public_key())
        assert not proofs[0].verify(headers[1], self.key.public_key())

    @settings(max_examples=50, deadline=None)
    @given(
        st.integers(0, batchsig.MAX_SIGNED_AT_MS),
        st.integers(1, batchsig.MAX_BATCH),
        st.binary(min_size=32, max_size=32),
        st.data(),
    )
    def test_proto_round_trip(
        self, signed_at_ms: int, size: int, root: bytes, data: st.DataObject
    ) -> None:
        signed = self.sign(signed_at_ms=signed_at_ms, tree_size=size, root=root)
        index = data.draw(st.integers(0, size - 1))
        path = tuple(
            data.draw(st.lists(st.binary(min_size=32, max_size=32), max_size=10), label="path")
        )
        proof = batchsig.BatchProof(signed, index, path)
        wire = proof.to_proto().SerializeToString()
        assert batchsig.BatchProof.from_proto(federation_pb2.BatchProof.FromString(wire)) == proof

    def test_from_proto_names_the_field(self) -> None:
        good = batchsig.BatchProof(self.sign(), 1, (bytes(32), bytes(32))).to_proto()
        cases: list[tuple[str, federation_pb2.BatchProof]] = []
        missing = federation_pb2.BatchProof()
        cases.append(("root", missing))
        for name, mutate in [
            ("root.sender", lambda m: setattr(m.root, "sender", "x")),
            ("root.batch_id", lambda m: setattr(m.root, "batch_id", "")),
            ("root.tree_size", lambda m: setattr(m.root, "tree_size", 0)),
            ("root.root", lambda m: setattr(m.root, "root", b"")),
            ("root.key_id", lambda m: setattr(m.root, "key_id", "")),
            ("root.signature", lambda m: setattr(m.root, "signature", b"\x00" * 63)),
            ("leaf_index", lambda m: setattr(m, "leaf_index", 3)),
            ("audit_path", lambda m: m.audit_path.append(b"\x00" * 31)),
            ("audit_path", lambda m: m.audit_path.extend([bytes(32)] * 9)),
        ]:
            message = federation_pb2.BatchProof()
            message.CopyFrom(good)
            mutate(message)
            cases.append((name, message))
        for name, message in cases:
            with pytest.raises(InvalidArgument) as caught:
                batchsig.BatchProof.from_proto(message)
            assert caught.value.field == name
