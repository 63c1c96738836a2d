"""A province rotates its envelope signing key with zero failed calls.

Zhejiang publishes its next key ahead of time with a window that overlaps the
current one. Traffic runs both ways while the (injected) clock walks through
the switch: Zhejiang signs with the new key from its ``not_before`` on, peers
accept both during the overlap, and the old key stops verifying when its
window ends.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import uuid
from pathlib import Path

import aiohttp
import pytest

from gateway.core import crypto
from gateway.core.clock import OffsetClock
from gateway.core.errors import EnvelopeRejected
from gateway.testing.localfed import LocalFederation
from gateway.trust.envelope import EnvelopeSigner
from tests.integration.conftest import SH, ZJ, Wallet
from tests.paths import CONFIG_DIR, config_file
from yrd.federation.v1 import federation_pb2
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

OLD, NEW = "330000-sig-2026", "330000-sig-2027"


def stamp(instant: dt.datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def rotate_config(tmp_path: Path, switch: dt.datetime, old_end: dt.datetime) -> Path:
    configs = tmp_path / "province_configs"
    shutil.copytree(CONFIG_DIR, configs, ignore=shutil.ignore_patterns("var"))
    key = crypto.generate_private_key()
    (configs / ZJ / "keys" / "signing-2027.key.pem").write_bytes(crypto.private_key_pem(key))
    (configs / ZJ / "keys" / "signing-2027.pub.pem").write_bytes(
        crypto.public_key_pem(key.public_key())
    )
    file = config_file("330000", configs)
    text = file.read_text(encoding="utf-8")
    text = re.sub(
        r'(key_id = "330000-sig-2026"\npublic_key = "[^"]+"\nnot_before = [^\n]+\n'
        r"not_after = )[^\n]+",
        lambda m: m.group(1) + stamp(old_end),
        text,
        count=1,
    )
    text = text.replace(
        "[eid]\n",
        f'''[[signing.public_keys]]
key_id = "{NEW}"
public_key = "keys/signing-2027.pub.pem"
private_key = "keys/signing-2027.key.pem"
not_before = {stamp(switch)}
not_after = 2030-01-01T00:00:00Z

[eid]
''',
        1,
    )
    file.write_text(text, encoding="utf-8")
    return configs


@pytest.mark.timeout(120)
async def test_rotation_under_continuous_traffic(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    switch, old_end = now + dt.timedelta(hours=1), now + dt.timedelta(hours=2)
    configs = rotate_config(tmp_path, switch, old_end)
    clock = OffsetClock(dt.timedelta(0))
    failures: list[str] = []
    async with (
        LocalFederation(configs, tmp_path / "run", clock=clock) as federation,
        aiohttp.ClientSession() as http,
    ):
        wallet = Wallet(federation, http)
        keys_at: dict[str, str] = {}
        for step in range(19):  # 0 .. 3 h in 10-minute steps, calls at every step
            clock.offset = dt.timedelta(minutes=10 * step)
            for hotel, issuer in ((SH, ZJ), (ZJ, SH)):
                stub = identity_pb2_grpc.IdentityServiceStub(federation.channel(hotel))
                answer = await stub.VerifyIdentity(
                    identity_pb2.VerifyIdentityRequest(
                        qr_payload=await wallet.fresh_qr(issuer),
                        purpose=identity_pb2.HOTEL_CHECK_IN,
                    ),
                    metadata=(("authorization", f"Bearer dev-hotel-{hotel}"),),
                    timeout=5,
                )
                if answer.verdict != identity_pb2.VALID:
                    failures.append(
                        f"+{10 * step} min {hotel}<-{issuer}: "
                        f"{identity_pb2.Verdict.Name(answer.verdict)}"
                    )
            keys_at[f"+{10 * step}"] = federation.node(ZJ).signer.key_id

        assert failures == []
        assert keys_at["+0"] == OLD
        assert keys_at["+60"] == NEW
        assert keys_at["+180"] == NEW
        seen = set()
        async for row in federation.node(SH).message_log.rows():
            if row.entry.peer == ZJ and row.entry.direction == "in":
                envelope = federation_pb2.SignedEnvelope.FromString(row.entry.envelope)
                seen.add(federation_pb2.EnvelopeHeader.FromString(envelope.header).key_id)
        assert seen == {OLD, NEW}

        # After its window, the old key no longer verifies anywhere.
        old_key = crypto.load_private_key(configs / ZJ / "keys" / "signing.key.pem")
        stale = EnvelopeSigner(ZJ, OLD, old_key, clock).seal(
            receiver=SH,
            service="identity.CheckCredential",
            payload=federation_pb2.CredentialCheckRequest(token_id="t", credential_id="c"),
            correlation_id=str(uuid.uuid4()),
        )
        with pytest.raises(EnvelopeRejected) as info:
            federation.node(SH).verifier.open_request(stale)
        assert info.value.reason == "key_not_valid"
