"""Audit: the message log's tampering is found, and evidence of one exchange is
exported and verified offline, as an auditor would with the CLI."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import SH, ZJ, Wallet
from tests.paths import config_file
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
