"""Write ``docs/test-vectors/batch-signatures.json``: test vectors of the batch
signature format (issue 16; docs/security.md "Batch signatures (hash tree)").

Everything is fixed (the Ed25519 seed, the envelope headers, the batch ids and
times), and Ed25519 is deterministic, so running this again writes the same
file; ``tests/unit/test_batchsig.py`` recomputes every value from the file and
checks that this script still writes it unchanged.

    .venv/bin/python scripts/gen_batch_vectors.py
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.trust import batchsig
from yrd.federation.v1 import federation_pb2

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "test-vectors" / "batch-signatures.json"

SEED = hashlib.sha256(b"yrd batch-signature test vectors, key 1").digest()
KEY_ID = "310000-vectors-1"
SENDER = "310000"
RECEIVER = "330000"
OTHER_RECEIVER = "320000"
#: 2026-01-01T00:00:00Z in milliseconds, plus the batch number in seconds.
SIGNED_AT_MS = 1_767_225_600_000
SIZES = (1, 2, 3, 5, 8)


def _derived(label: str, n: int = 32) -> bytes:
    return hashlib.sha256(f"yrd vectors: {label}".encode()).digest()[:n]


def _header(batch: int, index: int) -> bytes:
    """A fixed, realistic envelope header: a Shanghai -> Zhejiang credential check."""
    label = f"batch {batch} leaf {index}"
    header = federation_pb2.EnvelopeHeader(
        message_id=str(uuid.UUID(bytes=_derived("message " + label, 16), version=4)),
        correlation_id=str(uuid.UUID(bytes=_derived("correlation " + label, 16), version=4)),
        sender=SENDER,
        receiver=RECEIVER,
        service="identity.CheckCredential",
        created_at=Timestamp(seconds=SIGNED_AT_MS // 1000 + batch, nanos=index * 1_000_000),
        nonce=_derived("nonce " + label, 16),
        payload_type="yrd.federation.v1.CredentialCheckRequest",
        key_id=KEY_ID,
        algorithm="Ed25519",
        payload_digest=_derived("payload " + label),
    )
    return header.SerializeToString(deterministic=True)


def _root_json(signed: batchsig.BatchRoot) -> dict[str, Any]:
    return {
        "sender": signed.sender,
        "receiver": signed.receiver,
        "batch_id": signed.batch_id,
        "signed_at_ms": signed.signed_at_ms,
        "tree_size": signed.tree_size,
        "root": signed.root.hex(),
        "key_id": signed.key_id,
        "statement": signed.statement.hex(),
        "signature": signed.signature.hex(),
    }


def _envelopes(key: Ed25519PrivateKey) -> dict[str, Any]:
    """A whole batch of 3 ``SignedEnvelope`` messages as sent on the wire, each
    carrying its proof in ``batch`` (real payloads, so the digests hold)."""
    headers, payloads = [], []
    created_ms = SIGNED_AT_MS + 60_000
    for index in range(3):
        label = f"envelope {index}"
        payload = federation_pb2.CredentialCheckRequest(
            token_id=f"tok-vectors-{index}",
            credential_id=f"cred-vectors-{index}",
            relying_party_id="hotel-310000-001",
            requested_attributes=["full_name"],
        ).SerializeToString(deterministic=True)
        header = federation_pb2.EnvelopeHeader(
            message_id=str(uuid.UUID(bytes=_derived("message " + label, 16), version=4)),
            correlation_id=str(uuid.UUID(bytes=_derived("correlation " + label, 16), version=4)),
            sender=SENDER,
            receiver=RECEIVER,
            service="identity.CheckCredential",
            created_at=Timestamp(seconds=created_ms // 1000, nanos=index * 1_000_000),
            nonce=_derived("nonce " + label, 16),
            payload_type="yrd.federation.v1.CredentialCheckRequest",
            key_id=KEY_ID,
            algorithm="Ed25519",
            payload_digest=hashlib.sha256(payload).digest(),
        )
        headers.append(header.SerializeToString(deterministic=True))
        payloads.append(payload)
    proofs = batchsig.sign_batch(
        headers,
        sender=SENDER,
        receiver=RECEIVER,
        batch_id=str(uuid.UUID(bytes=_derived("envelope batch", 16), version=4)),
        signed_at_ms=created_ms + 5,
        key_id=KEY_ID,
        private_key=key,
    )
    return {
        "description": (
            "Serialized SignedEnvelope messages (federation.proto) signed as one batch: "
            "`signature` empty, `batch` = BatchProof (signed root, leaf index, audit path). "
            "Each verifies alone: the header's sender, receiver and key_id equal the root's, "
            "the audit path leads from the header to the root, the root's signature holds, "
            "SHA-256(payload) = header.payload_digest."
        ),
        "signed_root": _root_json(proofs[0].root),
        "signed_envelopes": [
            federation_pb2.SignedEnvelope(header=header, payload=payload, batch=proof.to_proto())
            .SerializeToString(deterministic=True)
            .hex()
            for header, payload, proof in zip(headers, payloads, proofs, strict=True)
        ],
    }


def build() -> dict[str, Any]:
    """The whole vector file, as a JSON-ready dict."""
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    batches: list[dict[str, Any]] = []
    proofs: dict[int, list[batchsig.BatchProof]] = {}
    headers_of: dict[int, list[bytes]] = {}
    for number, size in enumerate(SIZES):
        headers = [_header(number, i) for i in range(size)]
        batch_id = str(uuid.UUID(bytes=_derived(f"batch {number}", 16), version=4))
        batch_proofs = batchsig.sign_batch(
            headers,
            sender=SENDER,
            receiver=RECEIVER,
            batch_id=batch_id,
            signed_at_ms=SIGNED_AT_MS + number * 1000,
            key_id=KEY_ID,
            private_key=key,
        )
        proofs[size], headers_of[size] = batch_proofs, headers
        batches.append(
            {
                "signed_root": _root_json(batch_proofs[0].root),
                "leaves": [
                    {
                        "header": header.hex(),
                        "leaf_hash": batchsig.leaf_hash(header).hex(),
                        "audit_path": [p.hex() for p in proof.audit_path],
                    }
                    for header, proof in zip(headers, batch_proofs, strict=True)
                ],
            }
        )

    five, five_headers = proofs[5], headers_of[5]
    leaf2 = batchsig.leaf_hash(five_headers[2])
    path2 = list(five[2].audit_path)
    root5 = five[2].root.root
    flipped = bytearray(five_headers[2])
    flipped[len(flipped) // 2] ^= 0x01

    def inclusion(
        name: str, leaf_hash: bytes, index: int, size: int, path: list[bytes], root: bytes
    ) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "inclusion",
            "leaf_hash": leaf_hash.hex(),
            "index": index,
            "size": size,
            "audit_path": [p.hex() for p in path],
            "root": root.hex(),
            "expected": batchsig.verify_inclusion(leaf_hash, index, size, path, root),
        }

    signed = five[0].root
    other = _root_json(signed) | {"receiver": OTHER_RECEIVER}
    other["statement"] = batchsig.root_statement(
        SENDER, OTHER_RECEIVER, signed.batch_id, signed.signed_at_ms, signed.tree_size, signed.root
    ).hex()
    bad_signature = bytearray(signed.signature)
    bad_signature[0] ^= 0x80
    later = _root_json(signed) | {"signed_at_ms": signed.signed_at_ms + 1}
    later["statement"] = batchsig.root_statement(
        SENDER, RECEIVER, signed.batch_id, signed.signed_at_ms + 1, signed.tree_size, signed.root
    ).hex()

    def root_case(name: str, fields: dict[str, Any]) -> dict[str, Any]:
        presented = batchsig.BatchRoot(
            sender=fields["sender"],
            receiver=fields["receiver"],
            batch_id=fields["batch_id"],
            signed_at_ms=fields["signed_at_ms"],
            tree_size=fields["tree_size"],
            root=bytes.fromhex(fields["root"]),
            key_id=fields["key_id"],
            signature=bytes.fromhex(fields["signature"]),
        )
        return {
            "name": name,
            "kind": "signed_root",
            "signed_root": fields,
            "expected": batchsig.verify_root(presented, key.public_key()),
        }

    negative = [
        inclusion(
            "one bit of the header flipped (batch of 5, leaf 2)",
            batchsig.leaf_hash(bytes(flipped)),
            2,
            5,
            path2,
            root5,
        ),
        inclusion("leaf 2's proof presented as leaf 3 (batch of 5)", leaf2, 3, 5, path2, root5),
        inclusion(
            "audit path one entry short (batch of 5, leaf 2)", leaf2, 2, 5, path2[:-1], root5
        ),
        inclusion(
            "audit path one entry too long (batch of 5, leaf 2)",
            leaf2,
            2,
            5,
            [*path2, path2[-1]],
            root5,
        ),
        inclusion("index equal to the size (batch of 5)", leaf2, 5, 5, path2, root5),
        inclusion("tree size 0", leaf2, 0, 0, [], root5),
        inclusion(
            "an audit path entry of 31 bytes (batch of 5, leaf 2)",
            leaf2,
            2,
            5,
            [path2[0][:31], *path2[1:]],
            root5,
        ),
        inclusion(
            "the root of another batch (batch of 5, leaf 2)",
            leaf2,
            2,
            5,
            path2,
            proofs[8][0].root.root,
        ),
        root_case("root signed for 330000 presented as for 320000", other),
        root_case("signed_at one millisecond later than signed", later),
        root_case(
            "one bit of the signature flipped",
            _root_json(signed) | {"signature": bytes(bad_signature).hex()},
        ),
    ]
    for case in negative:
        assert case["expected"] is False, case["name"]

    return {
        "description": (
            "Batch signatures over a hash tree (issue 16): RFC 6962 section 2.1 Merkle tree "
            "over serialized EnvelopeHeader bytes; the signed statement and the checks are "
            "described in docs/security.md 'Batch signatures (hash tree)'. All byte strings "
            "are lower-case hex. Written by scripts/gen_batch_vectors.py; checked by "
            "tests/unit/test_batchsig.py."
        ),
        "leaf_hash": "SHA-256(0x00 || header bytes)",
        "node_hash": "SHA-256(0x01 || left || right)",
        "statement_prefix": batchsig.STATEMENT_PREFIX.hex(),
        "max_batch": batchsig.MAX_BATCH,
        "key": {
            "algorithm": "Ed25519",
            "seed": SEED.hex(),
            "public_key": public.hex(),
            "key_id": KEY_ID,
        },
        "batches": batches,
        "negative": negative,
        "envelopes": _envelopes(key),
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> None:
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
