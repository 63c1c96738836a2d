"""Audit evidence: prove, on another machine, what a node sent and received.

``export`` writes a self-contained JSON file for one message id: the request and
response envelopes as logged (bytes exactly as signed), the stretch of the hash
chain from those rows to the first signed chain head that covers them, that
head, and the public keys that verify every signature in it. ``check`` needs
nothing but that file:

1. each envelope's Ed25519 signature verifies with its sender's published key
   (an envelope signed in a batch: its inclusion proof leads from its header
   to the batch root, and the root's signature verifies, both carried in the
   envelope's ``batch`` field), and the response names the SHA-256 of the
   request header (the receipt);
2. the logged rows and the chain stretch recompute, row by row, to the head's
   hash (nothing in between was edited, removed or reordered);
3. the head is signed by the logging node's key.

Intermediate rows carry only the SHA-256 of their envelopes, never their
content: evidence about one resident discloses nothing about others.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from gateway.config.models import FederationConfig
from gateway.core import crypto
from gateway.core.crypto import load_public_key
from gateway.storage.messagelog import GENESIS, LogEntry, head_statement, reading, row_hash
from yrd.federation.v1 import federation_pb2

FORMAT = "yrd-evidence/v1"

#: Checks an envelope signed in a batch (its header bytes, parsed header, proof
#: and the key its header names): a line saying what holds, ValueError saying
#: what does not. ``gateway.trust.batchsig.check_envelope_proof``; passed in by
#: the caller, as the storage layer does not import the trust layer.
BatchCheck = Callable[
    [bytes, federation_pb2.EnvelopeHeader, federation_pb2.BatchProof, Ed25519PublicKey], str
]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class EvidenceError(Exception):
    """Evidence cannot be produced (the message is unknown, no head covers it yet)."""


def _signing_keys(federation: FederationConfig, code: str) -> dict[str, dict[str, str]]:
    """A province's envelope keys as PEM: this node's from its config, a peer's
    from the descriptor held of it."""
    if code == federation.own:
        published = [
            (k.key_id, load_public_key(k.public_key.read_bytes()), k.not_before, k.not_after)
            for k in federation.me.signing.public_keys
        ]
    else:
        peer = federation.peer(code)
        published = [
            (k.key_id, Ed25519PublicKey.from_public_bytes(k.public_key), k.not_before, k.not_after)
            for k in (peer.signing_keys if peer is not None else ())
        ]
    return {
        key_id: {
            "public_key_pem": crypto.public_key_pem(key).decode("ascii"),
            "not_before": not_before.isoformat(),
            "not_after": not_after.isoformat(),
        }
        for key_id, key, not_before, not_after in published
    }


async def export(db: Path | str, message_id: str, federation: FederationConfig) -> dict[str, Any]:
    async with reading(db) as log:
        own_rows = [row async for row in log.rows(message_id=message_id)]
        if not own_rows:
            raise EvidenceError(f"message {message_id}: not in {db}")
        last = max(row.seq for row in own_rows)
        heads = [h for h in await log.heads() if h.head_seq >= last]
        if not heads:
            raise EvidenceError(
                f"message {message_id}: no signed chain head covers row {last} yet "
                "(heads are signed every few seconds while the node runs; try again)"
            )
        head = min(heads, key=lambda h: h.head_seq)
        first = min(row.seq for row in own_rows)
        chain: list[dict[str, Any]] = []
        prev_hash = GENESIS
        async for row in log.rows():
            if row.seq == first:
                prev_hash = row.prev_hash
            if first <= row.seq <= head.head_seq:
                chain.append(
                    {
                        "seq": row.seq,
                        "logged_at": row.logged_at,
                        "direction": row.entry.direction,
                        "kind": row.entry.kind,
                        "message_id": row.entry.message_id,
                        "correlation_id": row.entry.correlation_id,
                        "peer": row.entry.peer,
                        "service": row.entry.service,
                        "envelope_sha256": crypto.sha256(row.entry.envelope).hex(),
                        "row_hash": row.row_hash.hex(),
                    }
                )
    provinces = {head.province}
    envelopes = []
    for row in own_rows:
        signed = federation_pb2.SignedEnvelope.FromString(row.entry.envelope)
        header = federation_pb2.EnvelopeHeader.FromString(signed.header)
        provinces.add(header.sender)
        envelopes.append({"seq": row.seq, "envelope": _b64(row.entry.envelope)})
    keys: dict[str, dict[str, Any]] = {}
    for code in sorted(provinces):
        found = _signing_keys(federation, code)
        if found:
            keys[code] = found
    return {
        "format": FORMAT,
        "message_id": message_id,
        "logged_by": head.province,
        "envelopes": envelopes,
        "chain": {"prev_hash": prev_hash.hex(), "rows": chain},
        "head": {
            "province": head.province,
            "head_seq": head.head_seq,
            "head_hash": head.head_hash.hex(),
            "signed_at": head.signed_at,
            "key_id": head.key_id,
            "signature": _b64(head.signature),
        },
        "keys": keys,
    }


def _key(evidence: dict[str, Any], province: str, key_id: str, at: datetime) -> Any:
    entry = evidence.get("keys", {}).get(province, {}).get(key_id)
    if entry is None:
        return None
    if not (
        datetime.fromisoformat(entry["not_before"])
        <= at
        < datetime.fromisoformat(entry["not_after"])
    ):
        return None
    return load_public_key(entry["public_key_pem"].encode("ascii"))


def check(
    evidence: dict[str, Any], *, batch_check: BatchCheck | None = None
) -> tuple[list[str], list[str]]:
    """(passed checks, problems); the evidence holds iff there are no problems.

    Envelopes signed in a batch are checked with ``batch_check``; without it
    each such envelope is a problem (it cannot be verified)."""
    passed: list[str] = []
    problems: list[str] = []
    if evidence.get("format") != FORMAT:
        return passed, [f"format: expected {FORMAT!r}"]
    try:
        head = evidence["head"]
        rows = evidence["chain"]["rows"]
        by_seq = {row["seq"]: row for row in rows}
        request_digests: set[bytes] = set()
        for item in evidence["envelopes"]:
            raw = _unb64(item["envelope"])
            signed = federation_pb2.SignedEnvelope.FromString(raw)
            header = federation_pb2.EnvelopeHeader.FromString(signed.header)
            at = header.created_at.ToDatetime(tzinfo=UTC)
            what = (
                f"envelope at row {item['seq']} "
                f"({header.service}, {header.sender}->{header.receiver})"
            )
            key = _key(evidence, header.sender, header.key_id, at)
            if signed.HasField("batch"):
                if signed.signature:
                    problems.append(f"{what}: both a signature and a batch proof")
                elif key is None:
                    problems.append(f"{what}: no published key {header.key_id!r} then")
                elif batch_check is None:
                    problems.append(f"{what}: signed in a batch, not checked here")
                else:
                    try:
                        holds = batch_check(signed.header, header, signed.batch, key)
                    except ValueError as exc:
                        problems.append(f"{what}: {exc}")
                    else:
                        passed.append(f"{what}: {holds}")
            elif key is None or not crypto.verify(key, signed.signature, signed.header):
                problems.append(f"{what}: signature does not verify with key {header.key_id!r}")
            else:
                passed.append(f"{what}: signature valid ({header.key_id})")
            if crypto.sha256(signed.payload) != header.payload_digest:
                problems.append(f"{what}: payload does not match its digest")
            row = by_seq.get(item["seq"])
            if row is None or row["envelope_sha256"] != crypto.sha256(raw).hex():
                problems.append(f"{what}: not the envelope the chain records at that row")
            if header.request_digest:
                if header.request_digest not in request_digests:
                    problems.append(f"{what}: the receipt does not name the request shown")
                else:
                    passed.append(f"{what}: signed receipt of the request")
            else:
                request_digests.add(crypto.sha256(signed.header))
        prev = bytes.fromhex(evidence["chain"]["prev_hash"])
        for row in rows:
            entry = LogEntry(
                row["direction"],
                row["kind"],
                row["message_id"],
                row["correlation_id"],
                row["peer"],
                row["service"],
                b"",
            )
            digest = _row_hash_with_envelope_digest(
                prev, row["seq"], row["logged_at"], entry, bytes.fromhex(row["envelope_sha256"])
            )
            if digest.hex() != row["row_hash"]:
                problems.append(f"chain row {row['seq']}: does not recompute (edited)")
                break
            prev = digest
        else:
            if not rows or rows[-1]["seq"] != head["head_seq"] or prev.hex() != head["head_hash"]:
                problems.append("chain: does not end at the signed head")
            else:
                passed.append(
                    f"chain: {len(rows)} rows recompute to the signed head (row {head['head_seq']})"
                )
        statement = head_statement(
            head["province"], head["head_seq"], bytes.fromhex(head["head_hash"]), head["signed_at"]
        )
        key = _key(
            evidence, head["province"], head["key_id"], datetime.fromisoformat(head["signed_at"])
        )
        if key is None or not crypto.verify(key, _unb64(head["signature"]), statement):
            problems.append(f"head: signature of {head['province']} does not verify")
        else:
            passed.append(
                f"head: signed by {head['province']} with {head['key_id']} at {head['signed_at']}"
            )
    except (KeyError, TypeError, ValueError, DecodeError) as exc:
        problems.append(f"evidence file is malformed: {type(exc).__name__}: {exc}")
    return passed, problems


def _row_hash_with_envelope_digest(
    prev: bytes, seq: int, logged_at: str, entry: LogEntry, envelope_sha256: bytes
) -> bytes:
    """row_hash() for a row known only by its envelope's digest."""
    return row_hash(prev, seq, logged_at, entry, envelope_digest=envelope_sha256)


def write(evidence: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(evidence, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
