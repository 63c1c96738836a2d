"""A province rotates its keys by publishing them, with zero failed calls.

Zhejiang adds a new envelope signing key and a new e-ID issuer key to its own
config, with windows that overlap the current ones, and reloads: its
descriptor's serial goes up. Then it switches to the new keys. Traffic runs
both ways meanwhile. No file is copied to any peer: Shanghai learns the new key
ids from Zhejiang's descriptor, fetched at once when an envelope or a token
names a key id it does not know (no wait for the refresh interval). The old
key stops verifying when its published window ends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path

import aiohttp
import pytest

from gateway.config.models import ProvinceConfig, PublishedKey
from gateway.core import crypto
from gateway.core.clock import OffsetClock
from gateway.core.errors import EnvelopeRejected
from gateway.testing.localfed import LocalFederation
from gateway.trust.envelope import EnvelopeSigner
from tests.integration.conftest import SH, ZJ, Wallet
from tests.paths import CONFIG_DIR, keys_dir
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc
from yrd.federation.v1 import federation_pb2
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

OLD, NEW = "330000-sig-2026", "330000-sig-2027"
OLD_EID, NEW_EID = "330000-eid-2026", "330000-eid-2027"


def new_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A fresh Ed25519 key pair as PEM files in ``folder``: (private, public)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = crypto.generate_private_key()
    private, public = folder / f"{name}.key.pem", folder / f"{name}.pub.pem"
    private.write_bytes(crypto.private_key_pem(key))
    public.write_bytes(crypto.public_key_pem(key.public_key()))
    return private, public


def with_new_keys(
    me: ProvinceConfig,
    signing_pub: Path,
    eid_pub: Path,
    *,
    starts: dt.datetime,
    old_end: dt.datetime,
) -> ProvinceConfig:
    """``me`` publishing a new signing key and a new e-ID issuer key from ``starts``,
    the current ones until ``old_end`` (an overlap); still signing with the old key."""
    end = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    signing = me.signing.model_copy(
        update={
            "public_keys": (
                *(
                    k.model_copy(update={"not_after": old_end}) if k.key_id == OLD else k
                    for k in me.signing.public_keys
                ),
                PublishedKey(key_id=NEW, public_key=signing_pub, not_before=starts, not_after=end),
            )
        }
    )
    eid = me.eid.model_copy(
        update={
            "issuer_keys": (
                *me.eid.issuer_keys,
                PublishedKey(key_id=NEW_EID, public_key=eid_pub, not_before=starts, not_after=end),
            )
        }
    )
    return me.model_copy(update={"signing": signing, "eid": eid})


def switched(me: ProvinceConfig, signing_private: Path) -> ProvinceConfig:
    """``me`` signing its envelopes with the new key."""
    return me.model_copy(
        update={
            "signing": me.signing.model_copy(update={"key_id": NEW, "private_key": signing_private})
        }
    )


def issue_with(federation: LocalFederation, private: Path, key_id: str) -> None:
    """Zhejiang's e-ID authority signs its QR tokens with another key from now on."""
    simulator = federation.provinces[ZJ].simulator
    simulator._key = crypto.load_private_key(private)  # the simulator has no rotation API
    simulator.key_id = key_id


async def reload_zj(federation: LocalFederation, me: ProvinceConfig) -> None:
    federation.provinces[ZJ].config = me
    await federation.node(ZJ).reload(federation.federation_for(ZJ))


def held_serial(federation: LocalFederation, holder: str, peer: str) -> int:
    directory = federation.node(holder).directory
    assert directory is not None
    facts = directory.peers[peer].facts
    return facts.serial if facts is not None else 0


def own_serial(federation: LocalFederation, code: str) -> int:
    directory = federation.node(code).directory
    assert directory is not None
    return directory.own()[0]


async def check_in(federation: LocalFederation, wallet: Wallet, hotel: str, issuer: str) -> int:
    stub = identity_pb2_grpc.IdentityServiceStub(federation.channel(hotel))
    answer = await stub.VerifyIdentity(
        identity_pb2.VerifyIdentityRequest(
            qr_payload=await wallet.fresh_qr(issuer), purpose=identity_pb2.HOTEL_CHECK_IN
        ),
        metadata=(("authorization", f"Bearer dev-hotel-{hotel}"),),
        timeout=10,
    )
    return int(answer.verdict)


async def trusted_key_ids(federation: LocalFederation, holder: str, peer: str) -> set[str]:
    """The envelope signing key ids of ``peer`` that ``holder`` trusts (NodeInfo)."""
    stub = admin_pb2_grpc.AdminServiceStub(federation.channel(holder))
    info = await stub.GetNodeInfo(
        admin_pb2.GetNodeInfoRequest(),
        metadata=(("authorization", f"Bearer dev-office-{holder}"),),
        timeout=5,
    )
    return {key_id for p in info.peers if p.province == peer for key_id in p.key_ids}


def fetches(federation: LocalFederation, holder: str, peer: str, outcome: str) -> float:
    value = federation.node(holder).metrics.registry.get_sample_value(
        "yrd_descriptor_fetches_total", {"province": peer, "outcome": outcome}
    )
    return 0.0 if value is None else float(value)


@pytest.mark.timeout(120)
async def test_rotation_by_publishing_under_continuous_traffic(tmp_path: Path) -> None:
    keys = tmp_path / "zhejiang-new-keys"  # Zhejiang's own new keys; no peer sees this folder
    signing_private, signing_pub = new_key(keys, "signing-2027")
    eid_private, eid_pub = new_key(keys, "eid-issuer-2027")
    clock = OffsetClock(dt.timedelta(0))
    failures: list[str] = []
    calls = 0
    stop = asyncio.Event()
    progress = asyncio.Event()  # set after each call
    async with (
        LocalFederation(CONFIG_DIR, tmp_path / "run", clock=clock) as federation,
        aiohttp.ClientSession() as http,
    ):
        wallet = Wallet(federation, http)
        shanghai_config = federation.node(SH).federation.me

        async def traffic() -> None:
            nonlocal calls
            while not stop.is_set():
                for hotel, issuer in ((SH, ZJ), (ZJ, SH)):
                    try:
                        verdict = await check_in(federation, wallet, hotel, issuer)
                    except Exception as exc:  # every failure is counted, none stops the loop
                        failures.append(f"{hotel}<-{issuer}: {type(exc).__name__}: {exc}")
                        progress.set()
                        continue
                    calls += 1
                    progress.set()
                    if verdict != identity_pb2.VALID:
                        failures.append(f"{hotel}<-{issuer}: {identity_pb2.Verdict.Name(verdict)}")

        async def rounds(n: int) -> None:
            target = calls + 2 * n
            while calls < target and not failures:
                progress.clear()
                await asyncio.wait_for(progress.wait(), 30)

        loop = asyncio.create_task(traffic())
        try:
            await rounds(3)
            assert federation.node(ZJ).signer.key_id == OLD
            serial = own_serial(federation, ZJ)
            updated = fetches(federation, SH, ZJ, "updated")

            # 1. Publish the next keys (overlapping windows), keep signing with the old.
            now = clock.now()
            old_end = now + dt.timedelta(hours=1)
            await reload_zj(
                federation,
                with_new_keys(
                    federation.provinces[ZJ].config,
                    signing_pub,
                    eid_pub,
                    starts=now - dt.timedelta(minutes=1),
                    old_end=old_end,
                ),
            )
            assert own_serial(federation, ZJ) > serial
            await rounds(3)
            assert federation.node(ZJ).signer.key_id == OLD

            # 2. Switch: envelopes under the new signing key, tokens under the new e-ID key.
            await reload_zj(federation, switched(federation.provinces[ZJ].config, signing_private))
            issue_with(federation, eid_private, NEW_EID)
            assert federation.node(ZJ).signer.key_id == NEW
            await rounds(5)
        finally:
            stop.set()
            await loop

        assert failures == []
        assert calls >= 22
        # Shanghai learnt the new keys from Zhejiang's descriptor, fetched by itself.
        assert fetches(federation, SH, ZJ, "updated") > updated
        assert held_serial(federation, SH, ZJ) == own_serial(federation, ZJ)
        assert {OLD, NEW} <= await trusted_key_ids(federation, SH, ZJ)
        peer = federation.node(SH).federation.peers[ZJ]
        assert {k.key_id for k in peer.eid_issuer_keys} == {OLD_EID, NEW_EID}
        # ... and nothing was given to Shanghai: its own config is the one it started with.
        assert federation.node(SH).reloads == 0
        assert federation.node(SH).federation.me == shanghai_config
        seen = set()
        async for row in federation.node(SH).message_log.rows():
            if row.entry.peer == ZJ and row.entry.direction == "in":
                envelope = federation_pb2.SignedEnvelope.FromString(row.entry.envelope)
                seen.add(federation_pb2.EnvelopeHeader.FromString(envelope.header).key_id)
        assert seen == {OLD, NEW}

        # After its published window, the old key no longer verifies anywhere.
        clock.offset = old_end - dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        old_key = crypto.load_private_key(keys_dir(ZJ) / "signing.key.pem")
        stale = EnvelopeSigner(ZJ, OLD, old_key, clock).seal(
            receiver=SH,
            service="identity.CheckCredential",
            payload=federation_pb2.CredentialCheckRequest(token_id="t", credential_id="c"),
            correlation_id=str(uuid.uuid4()),
        )
        with pytest.raises(EnvelopeRejected) as info:
            federation.node(SH).verifier.open_request(stale)
        assert info.value.reason == "key_not_valid"
        assert await check_in(federation, wallet, SH, ZJ) == identity_pb2.VALID
        assert await check_in(federation, wallet, ZJ, SH) == identity_pb2.VALID


@pytest.mark.timeout(90)
async def test_an_unknown_key_id_fetches_the_descriptor_at_once(
    federation: LocalFederation, wallet: Wallet, tmp_path: Path
) -> None:
    keys = tmp_path / "zhejiang-new-keys"
    signing_private, signing_pub = new_key(keys, "signing-2027")
    eid_private, eid_pub = new_key(keys, "eid-issuer-2027")
    now = federation.clock.now()
    before = held_serial(federation, SH, ZJ)
    updated = fetches(federation, SH, ZJ, "updated")

    # Zhejiang publishes and signs with a new envelope key in one reload.
    published = with_new_keys(
        federation.provinces[ZJ].config,
        signing_pub,
        eid_pub,
        starts=now - dt.timedelta(minutes=1),
        old_end=now + dt.timedelta(days=1),
    )
    await reload_zj(federation, switched(published, signing_private))
    assert own_serial(federation, ZJ) > before
    assert held_serial(federation, SH, ZJ) == before  # nothing pushed, nothing fetched yet
    assert NEW not in await trusted_key_ids(federation, SH, ZJ)
    # A Zhejiang hotel's request reaches Shanghai signed under a key id Shanghai does
    # not know: Shanghai fetches Zhejiang's descriptor then and there.
    assert await check_in(federation, wallet, ZJ, SH) == identity_pb2.VALID
    assert held_serial(federation, SH, ZJ) == own_serial(federation, ZJ)
    assert fetches(federation, SH, ZJ, "updated") == updated + 1
    assert NEW in await trusted_key_ids(federation, SH, ZJ)

    # The same for an e-ID token under a key id published after Shanghai's last fetch.
    await asyncio.sleep(2.2)  # on-demand fetches of one peer are at least 2 s apart
    serial = held_serial(federation, SH, ZJ)
    me = federation.provinces[ZJ].config
    third_private, third_pub = new_key(keys, "eid-issuer-2028")
    await reload_zj(
        federation,
        me.model_copy(
            update={
                "eid": me.eid.model_copy(
                    update={
                        "issuer_keys": (
                            *me.eid.issuer_keys,
                            PublishedKey(
                                key_id="330000-eid-2028",
                                public_key=third_pub,
                                not_before=now - dt.timedelta(minutes=1),
                                not_after=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
                            ),
                        )
                    }
                )
            }
        ),
    )
    issue_with(federation, third_private, "330000-eid-2028")
    assert held_serial(federation, SH, ZJ) == serial
    assert await check_in(federation, wallet, SH, ZJ) == identity_pb2.VALID
    assert held_serial(federation, SH, ZJ) == own_serial(federation, ZJ) > serial
    assert eid_private.exists()  # unused second key: published, never issued with
