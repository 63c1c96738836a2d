"""Audit: the message log's tampering is found, and evidence of one exchange is
exported and verified offline, as an auditor would with the CLI."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.config.loading import parse_province_file
from gateway.core import crypto
from gateway.core.clock import FrozenClock
from gateway.core.crypto import load_private_key
from gateway.storage import evidence as audit
from gateway.storage.messagelog import MessageLog
from gateway.storage.records import LogEntry
from gateway.testing.directory import federation_with_peers
from gateway.testing.localfed import LocalFederation
from gateway.trust.envelope import EnvelopeSigner
from tests.integration.conftest import SH, ZJ, Wallet
from tests.paths import config_file, keys_dir
from yrd.federation.v1 import federation_pb2
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

CONFIG = str(config_file("310000"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def three_check_ins(federation: LocalFederation, wallet: Wallet) -> None:
    """Three VALID check-ins of Zhejiang residents at a Shanghai hotel."""
    stub = identity_pb2_grpc.IdentityServiceStub(federation.channel(SH))
    for _ in range(3):
        answer = await stub.VerifyIdentity(
            identity_pb2.VerifyIdentityRequest(
                qr_payload=await wallet.fresh_qr(ZJ), purpose=identity_pb2.HOTEL_CHECK_IN
            ),
            metadata=(("authorization", f"Bearer dev-hotel-{SH}"),),
            timeout=5,
        )
        assert answer.verdict == identity_pb2.VALID


@pytest.fixture
async def logged(federation: LocalFederation, wallet: Wallet, tmp_path: Path) -> tuple[Path, str]:
    """Shanghai's messages.db after three check-ins of Zhejiang residents, node stopped
    (so its last chain head is signed), and the message id of the first exchange."""
    await three_check_ins(federation, wallet)
    first = await anext(aiter(federation.node(SH).message_log.rows()))
    database = federation.node(SH).message_log.path
    await federation.stop_node(SH)
    copy = tmp_path / "messages.db"
    shutil.copy(database, copy)
    # The peers' descriptors the node held: where their keys come from.
    shutil.copytree(database.parent / "directory", tmp_path / "directory")
    return copy, first.entry.message_id


class TestAuditVerify:
    """`audit verify` says whether and where the log was edited, reordered or cut."""

    def test_intact_with_signed_heads(self, logged: tuple[Path, str]) -> None:
        result = cli("audit", "verify", str(logged[0]), "--config", CONFIG)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "intact" in result.stdout
        assert "signed heads match" in result.stdout

    @pytest.mark.parametrize(
        ("tamper", "needle"),
        [
            (
                "UPDATE message_log SET service = 'fund.DeliverWithdrawal' WHERE seq = 3",
                "row 3: content does not match its hash",
            ),
            ("DELETE FROM message_log WHERE seq = 2", "row 3: expected sequence 2"),
            (
                "UPDATE message_log SET seq = -seq WHERE seq IN (2, 3);"
                "UPDATE message_log SET seq = 1000 WHERE seq = -2;"
                "UPDATE message_log SET seq = 2 WHERE seq = -3;"
                "UPDATE message_log SET seq = 3 WHERE seq = 5",
                "row 2:",
            ),
            ("DELETE FROM message_log WHERE seq >= 5", "truncated"),
        ],
        ids=["edit", "delete", "swap", "truncate"],
    )
    def test_tampering_is_found(self, logged: tuple[Path, str], tamper: str, needle: str) -> None:
        with sqlite3.connect(logged[0]) as db:
            db.executescript(tamper)
        result = cli("audit", "verify", str(logged[0]), "--config", CONFIG)
        assert result.returncode == 1
        assert "BROKEN" in result.stdout
        assert needle in result.stdout


class TestEvidence:
    def test_export_then_check_offline(self, logged: tuple[Path, str], tmp_path: Path) -> None:
        database, message_id = logged
        out = tmp_path / "evidence.json"
        exported = cli(
            "audit",
            "export",
            message_id,
            "--config",
            CONFIG,
            "--db",
            str(database),
            "--out",
            str(out),
        )
        assert exported.returncode == 0, exported.stderr
        # Another machine: only the file.
        moved = tmp_path / "elsewhere" / "evidence.json"
        moved.parent.mkdir()
        shutil.move(out, moved)
        checked = cli("audit", "check", str(moved))
        assert checked.returncode == 0, checked.stdout
        assert "evidence holds" in checked.stdout
        assert "signed receipt of the request" in checked.stdout
        assert "signed by 310000" in checked.stdout

    @pytest.mark.parametrize("part", ["envelope", "chain", "head"])
    def test_altered_evidence_fails(
        self, logged: tuple[Path, str], tmp_path: Path, part: str
    ) -> None:
        database, message_id = logged
        out = tmp_path / "evidence.json"
        assert (
            cli(
                "audit",
                "export",
                message_id,
                "--config",
                CONFIG,
                "--db",
                str(database),
                "--out",
                str(out),
            ).returncode
            == 0
        )
        evidence = json.loads(out.read_text(encoding="utf-8"))
        if part == "envelope":
            raw = evidence["envelopes"][0]["envelope"]
            evidence["envelopes"][0]["envelope"] = (
                raw[:40] + ("A" if raw[40] != "A" else "B") + raw[41:]
            )
        elif part == "chain":
            evidence["chain"]["rows"][0]["peer"] = "340000"
        else:
            evidence["head"]["signed_at"] = "2026-01-02T00:00:00+00:00"
        out.write_text(json.dumps(evidence), encoding="utf-8")
        checked = cli("audit", "check", str(out))
        assert checked.returncode == 1
        assert "does NOT hold" in checked.stdout


JS = "320000"
CHECK = "identity.CheckCredential"
#: Inside every shipped key's validity window (2026-01-01 .. 2030-01-01).
NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)


def _signer(code: str, clock: FrozenClock) -> EnvelopeSigner:
    return EnvelopeSigner.from_config(parse_province_file(config_file(code)), clock)


@pytest.fixture
async def batch_logged(tmp_path: Path) -> tuple[Path, list[str], str]:
    """Shanghai's message log of three exchanges with Jiangsu whose requests
    (Jiangsu's) and responses (Shanghai's) were each signed as one batch of 3;
    the message ids and the requests' batch id."""
    clock = FrozenClock(NOW)
    asker, answerer = _signer(JS, clock), _signer(SH, clock)
    requests = [
        asker.seal(
            receiver=SH,
            service=CHECK,
            payload=federation_pb2.CredentialCheckRequest(token_id=f"tok-{i}"),
            correlation_id=f"corr-{i}",
            batched=True,
        )
        for i in range(3)
    ]
    batch = asker.sign_batch(requests, receiver=SH)
    responses = [
        answerer.seal(
            receiver=JS,
            service=CHECK,
            payload=federation_pb2.CredentialCheckResponse(state=federation_pb2.CREDENTIAL_ACTIVE),
            correlation_id=f"corr-{i}",
            request_digest=crypto.sha256(request.header),
            batched=True,
        )
        for i, request in enumerate(requests)
    ]
    answerer.sign_batch(responses, receiver=JS)
    head_key = load_private_key(keys_dir(SH) / "signing.key.pem")
    head_key_id = parse_province_file(config_file(SH)).signing.key_id
    database = tmp_path / "messages.db"
    ids = []
    async with MessageLog(
        database,
        clock=clock,
        province=SH,
        head_signer=lambda statement: (head_key_id, head_key.sign(statement)),
        head_interval=0.0,
    ) as log:
        for request, response in zip(requests, responses, strict=True):
            header = federation_pb2.EnvelopeHeader.FromString(request.header)
            ids.append(header.message_id)
            for direction, kind, signed in (
                ("in", "request", request),
                ("out", "response", response),
            ):
                await log.append(
                    LogEntry(
                        direction,
                        kind,
                        header.message_id,
                        header.correlation_id,
                        JS,
                        CHECK,
                        signed.SerializeToString(),
                    )
                )
    return database, ids, batch.batch_id


async def _export(database: Path, message_id: str, out: Path) -> dict[str, Any]:
    federation = federation_with_peers(config_file(SH), [config_file(JS)])
    evidence = await audit.export(database, message_id, federation)
    audit.write(evidence, out)
    return evidence


def _tamper_batch(evidence: dict[str, Any], index: int, change: Callable[[Any], None]) -> None:
    item = evidence["envelopes"][index]
    signed = federation_pb2.SignedEnvelope.FromString(base64.b64decode(item["envelope"]))
    change(signed.batch)
    item["envelope"] = base64.b64encode(signed.SerializeToString()).decode("ascii")


def _flip_path(batch: federation_pb2.BatchProof) -> None:
    batch.audit_path[0] = bytes([batch.audit_path[0][0] ^ 1]) + batch.audit_path[0][1:]


#: What `audit check` says of a proof whose path does not lead to its root.
_OFF_PATH = "batch proof does not fit its header: batch.audit_path: expected a path"


class TestBatchSignedEvidence:
    """An exchange whose envelopes were signed in batches (issue 16) exports as
    any other and its proofs and signed roots are checked offline."""

    async def test_export_then_check_offline(
        self, batch_logged: tuple[Path, list[str], str], tmp_path: Path
    ) -> None:
        database, ids, batch_id = batch_logged
        out = tmp_path / "evidence.json"
        evidence = await _export(database, ids[1], out)
        assert [item["seq"] for item in evidence["envelopes"]] == [3, 4]
        checked = cli("audit", "check", str(out))
        assert checked.returncode == 0, checked.stdout
        assert f"signed in batch {batch_id} of 3, leaf 1 (320000-sig-2026)" in checked.stdout
        assert "of 3, leaf 1 (310000-sig-2026)" in checked.stdout
        assert "signed receipt of the request" in checked.stdout
        assert "evidence holds" in checked.stdout
        # Without the batch check (the storage layer alone) nothing is taken on trust.
        _, problems = audit.check(evidence)
        assert problems == [
            "envelope at row 3 (identity.CheckCredential, 320000->310000): "
            "signed in a batch, not checked here",
            "envelope at row 4 (identity.CheckCredential, 310000->320000): "
            "signed in a batch, not checked here",
        ]

    @pytest.mark.parametrize(
        ("change", "needle"),
        [
            pytest.param(_flip_path, _OFF_PATH, id="path"),
            pytest.param(
                lambda b: setattr(b, "leaf_index", 0),
                _OFF_PATH,
                id="leaf_index",
            ),
            pytest.param(
                lambda b: setattr(b.root, "batch_id", "00000000-0000-0000-0000-000000000007"),
                "batch root signature does not verify with key '320000-sig-2026'",
                id="batch_id",
            ),
            pytest.param(
                lambda b: setattr(b.root, "signature", bytes(64)),
                "batch root signature does not verify",
                id="signature",
            ),
            pytest.param(
                lambda b: setattr(b.root, "receiver", ZJ),
                "batch proof does not fit its header: batch.root.receiver: expected the header's",
                id="receiver",
            ),
            pytest.param(
                lambda b: setattr(b, "leaf_index", 3),
                "batch proof is malformed: batch.leaf_index: expected below root.tree_size",
                id="leaf_index-past",
            ),
        ],
    )
    async def test_a_tampered_proof_or_root_fails(
        self,
        batch_logged: tuple[Path, list[str], str],
        tmp_path: Path,
        change: Callable[[Any], None],
        needle: str,
    ) -> None:
        database, ids, _ = batch_logged
        out = tmp_path / "evidence.json"
        evidence = await _export(database, ids[1], out)
        _tamper_batch(evidence, 0, change)
        out.write_text(json.dumps(evidence), encoding="utf-8")
        checked = cli("audit", "check", str(out))
        assert checked.returncode == 1
        assert f"FAIL  envelope at row 3 (identity.CheckCredential, 320000->310000): {needle}" in (
            checked.stdout
        ), checked.stdout
        assert "does NOT hold" in checked.stdout
