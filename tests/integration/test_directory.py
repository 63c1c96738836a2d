"""The federation directory between real nodes on loopback (issue 14).

Each node is given only its own province's config; everything it knows of its
peers comes from their signed descriptors, fetched over mutual TLS: at start,
when a serial changes, on demand, and from the copy on disk when a peer is down.
Refused descriptors change nothing; an expired one fails closed, loudly.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from gateway.config.models import ProvinceConfig
from gateway.core.clock import OffsetClock
from gateway.server.node import DIRECTORY_HEALTH
from gateway.testing.localfed import LocalFederation, free_port
from gateway.testing.procfed import NodeProcess, _announced, _spawn_simulator
from gateway.trust import descriptor as descriptors
from tests.integration.conftest import AH, ALL, JS, SH, ZJ, Wallet
from tests.integration.test_certificates_and_cases import a_certificate, consent, fetch, holder_of
from tests.integration.test_fund_exchange import application, submit, until_final
from tests.paths import CONFIG_DIR, config_file
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc
from yrd.directory.v1 import directory_pb2, directory_pb2_grpc
from yrd.fund.v1 import fund_pb2
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def office(code: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer dev-office-{code}"),)


async def service_map(
    federation: LocalFederation, code: str
) -> dict[str, admin_pb2.ServiceMapProvince]:
    stub = admin_pb2_grpc.AdminServiceStub(federation.channel(code))
    answer = await stub.GetServiceMap(
        admin_pb2.GetServiceMapRequest(), metadata=office(code), timeout=5
    )
    assert answer.provinces[0].province == code
    assert answer.provinces[0].state == "own"
    return {entry.province: entry for entry in answer.provinces}


async def node_info(federation: LocalFederation, code: str) -> admin_pb2.NodeInfo:
    stub = admin_pb2_grpc.AdminServiceStub(federation.channel(code))
    info: admin_pb2.NodeInfo = await stub.GetNodeInfo(
        admin_pb2.GetNodeInfoRequest(), metadata=office(code), timeout=5
    )
    return info


async def health(federation: LocalFederation, code: str, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(federation.channel(code))
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(answer.status)


def metric(federation: LocalFederation, code: str, name: str, **labels: str) -> float:
    value = federation.node(code).metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def held_serial(federation: LocalFederation, holder: str, peer: str) -> int:
    directory = federation.node(holder).directory
    assert directory is not None
    facts = directory.peers[peer].facts
    return facts.serial if facts is not None else 0


def own_serial(federation: LocalFederation, code: str) -> int:
    directory = federation.node(code).directory
    assert directory is not None
    return directory.own()[0]


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return await check()


async def check_in(
    federation: LocalFederation, wallet: Wallet, hotel: str, issuer: str, *, retry: bool = True
) -> int:
    """The verdict of a hotel check-in at ``hotel`` of a resident of ``issuer``
    (a transport error on the local channel, e.g. right after a restart, is retried)."""
    stub = identity_pb2_grpc.IdentityServiceStub(federation.channel(hotel))
    for attempt in range(20):
        try:
            answer = await stub.VerifyIdentity(
                identity_pb2.VerifyIdentityRequest(
                    qr_payload=await wallet.fresh_qr(issuer),
                    purpose=identity_pb2.HOTEL_CHECK_IN,
                ),
                metadata=(("authorization", f"Bearer dev-hotel-{hotel}"),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            if not retry or exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 19:
                raise
            await asyncio.sleep(0.2)
            continue
        return int(answer.verdict)
    raise AssertionError("unreachable")  # pragma: no cover


async def reload_with(federation: LocalFederation, code: str, config: ProvinceConfig) -> None:
    """Give province ``code``'s running node a changed config of its own."""
    federation.provinces[code].config = config
    await federation.node(code).reload(federation.federation_for(code))


# ---- 1. first fetch ----------------------------------------------------------


async def test_every_node_holds_a_current_descriptor_of_each_peer(
    federation: LocalFederation,
) -> None:
    serials = {code: own_serial(federation, code) for code in ALL}
    for code in ALL:
        node = federation.node(code)
        # The config given is the node's own province only: peers are named, not described.
        me = node.federation.me
        assert me.code == code
        assert me.source.parent.name == code
        assert {peer.code for peer in me.peers} == set(ALL) - {code}
        # What it knows of its peers comes from their descriptors.
        assert set(node.federation.peers) == set(ALL) - {code}
        entries = await service_map(federation, code)
        assert set(entries) == set(ALL)
        for peer in set(ALL) - {code}:
            entry = entries[peer]
            assert entry.state == "held", (code, peer, entry)
            assert entry.serial == serials[peer]
            assert entry.endpoints == [federation.provinces[peer].config.node.federation_endpoint]
            assert "identity.CheckCredential" in {s.service for s in entry.services}
            assert entry.operator_contact == federation.provinces[peer].config.province.contact
            assert entry.last_refusal == ""
            assert metric(federation, code, "yrd_peer_descriptor_current", province=peer) == 1
        assert await health(federation, code, DIRECTORY_HEALTH) == SERVING
        assert metric(federation, code, "yrd_node_degraded") == 0
        assert not (await node_info(federation, code)).degraded


# ---- 2. refresh on serial change --------------------------------------------


async def test_a_changed_descriptor_reaches_peers_and_an_unchanged_one_is_not_sent_again(
    federation: LocalFederation,
) -> None:
    before = own_serial(federation, ZJ)
    assert held_serial(federation, SH, ZJ) == before
    zj = federation.provinces[ZJ].config
    contact = "new-desk@330000.yrd.example"
    await reload_with(
        federation,
        ZJ,
        zj.model_copy(update={"province": zj.province.model_copy(update={"contact": contact})}),
    )
    after = own_serial(federation, ZJ)
    assert after > before
    # Nothing is pushed: Shanghai holds the old one until its next fetch.
    assert held_serial(federation, SH, ZJ) == before
    fetches = "yrd_descriptor_fetches_total"
    updated = metric(federation, SH, fetches, province=ZJ, outcome="updated")
    unchanged_js = metric(federation, SH, fetches, province=JS, outcome="unchanged")
    await federation.refresh_directories()
    assert held_serial(federation, SH, ZJ) == after
    assert (await service_map(federation, SH))[ZJ].operator_contact == contact
    assert metric(federation, SH, fetches, province=ZJ, outcome="updated") == updated + 1
    # Jiangsu's did not change: asked with the serial held, answered without a descriptor.
    assert metric(federation, SH, fetches, province=JS, outcome="unchanged") == unchanged_js + 1

    # Unchanged again: not transferred, not taken again.
    unchanged = metric(federation, SH, fetches, province=ZJ, outcome="unchanged")
    await federation.refresh_directories([ZJ])
    assert metric(federation, SH, fetches, province=ZJ, outcome="unchanged") == unchanged + 1
    assert metric(federation, SH, fetches, province=ZJ, outcome="updated") == updated + 1

    # A reload that changes nothing the descriptor says issues no new serial.
    await reload_with(federation, ZJ, federation.provinces[ZJ].config)
    assert own_serial(federation, ZJ) == after


async def test_a_short_refresh_interval_brings_a_change_without_being_asked(
    federation: LocalFederation,
) -> None:
    sh = federation.provinces[SH].config
    await reload_with(
        federation,
        SH,
        sh.model_copy(
            update={"directory": sh.directory.model_copy(update={"refresh_seconds": 0.2})}
        ),
    )
    await asyncio.sleep(0.5)  # the interval in force from the next fetch on
    zj = federation.provinces[ZJ].config
    offers = tuple(s for s in zj.services.offers if s != "case.CaseStatus")
    await reload_with(
        federation,
        ZJ,
        zj.model_copy(update={"services": zj.services.model_copy(update={"offers": offers})}),
    )
    new = own_serial(federation, ZJ)

    async def arrived() -> bool:
        return held_serial(federation, SH, ZJ) == new

    assert await until(arrived, 5)
    offered = {s.service for s in (await service_map(federation, SH))[ZJ].services}
    assert "case.CaseStatus" not in offered
    assert "case.DeliverCase" in offered


# ---- 3. peer down at start ----------------------------------------------------


async def test_a_node_starts_from_its_copy_when_a_peer_is_down(
    federation: LocalFederation, wallet: Wallet
) -> None:
    serial = held_serial(federation, SH, ZJ)
    await federation.stop_node(ZJ)
    await federation.stop_node(SH)
    await federation.start_node(SH)
    # Shanghai could not fetch Zhejiang's descriptor, and holds it from its copy.
    assert held_serial(federation, SH, ZJ) == serial
    entries = await service_map(federation, SH)
    assert entries[ZJ].state == "held"
    assert ZJ in federation.node(SH).federation.peers
    assert await health(federation, SH, DIRECTORY_HEALTH) == SERVING
    # Zhejiang is known but down: unreachable, not unknown.
    assert await check_in(federation, wallet, SH, ZJ) == identity_pb2.ISSUER_UNREACHABLE
    await federation.start_node(ZJ)

    async def valid() -> bool:
        return await check_in(federation, wallet, SH, ZJ) == identity_pb2.VALID

    assert await until(valid, 15)


# ---- 4. refused descriptors ---------------------------------------------------


def _config(code: str) -> ProvinceConfig:
    from gateway.config.loading import parse_province_file

    return parse_province_file(config_file(code))


def signed_descriptor(
    code: str, *, serial: int, issued: dt.datetime, days: float = 7, signer: str | None = None
) -> directory_pb2.SignedDescriptor:
    """``code``'s descriptor from the shipped config, signed with ``signer``'s TLS key."""
    me = _config(code)
    assert me.tls is not None
    body = descriptors.describe(
        me,
        serial=serial,
        issued_at=issued,
        not_after=issued + dt.timedelta(days=days),
        since={},
        tls_certificate=me.tls.certificate.read_bytes(),
    )
    key_of = _config(signer or code).tls
    assert key_of is not None
    return descriptors.sign(body, key_of.private_key.read_bytes(), key_of.certificate.read_bytes())


class RogueDirectory(directory_pb2_grpc.DirectoryServiceServicer):
    """Serves whatever descriptor it is given, whatever the serial asked."""

    def __init__(self) -> None:
        self.serving = directory_pb2.SignedDescriptor()
        self.asked = 0

    async def GetDescriptor(  # noqa: N802  # gRPC method name
        self,
        request: directory_pb2.GetDescriptorRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> directory_pb2.GetDescriptorResponse:
        self.asked += 1
        serial = descriptors.read(self.serving).serial
        return directory_pb2.GetDescriptorResponse(serial=serial, descriptor=self.serving)


@asynccontextmanager
async def rogue_server(endpoint: str, code: str) -> AsyncIterator[RogueDirectory]:
    """A gRPC server at ``endpoint`` with ``code``'s development TLS identity (mutual TLS)."""
    tls = _config(code).tls
    assert tls is not None
    credentials = grpc.ssl_server_credentials(
        [(tls.private_key.read_bytes(), tls.certificate.read_bytes())],
        root_certificates=tls.ca.read_bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server()
    servicer = RogueDirectory()
    directory_pb2_grpc.add_DirectoryServiceServicer_to_server(servicer, server)
    server.add_secure_port(endpoint, credentials)
    await server.start()
    try:
        yield servicer
    finally:
        await server.stop(0)


async def test_refused_descriptors_leave_the_held_copy_in_force(
    federation: LocalFederation, wallet: Wallet
) -> None:
    held = held_serial(federation, SH, ZJ)
    now = dt.datetime.now(dt.UTC)
    cases = {
        # Zhejiang's facts signed with Anhui's TLS key: the certificate names 340000.
        "forged": (
            signed_descriptor(ZJ, serial=held + 10, issued=now, signer=AH),
            "wrong_province",
        ),
        # A good descriptor, of the wrong province.
        "other province": (signed_descriptor(AH, serial=held + 10, issued=now), "wrong_province"),
        "expired": (
            signed_descriptor(ZJ, serial=held + 10, issued=now - dt.timedelta(days=8)),
            "expired",
        ),
        "rolled back": (signed_descriptor(ZJ, serial=held - 1, issued=now), "rollback"),
    }
    endpoint = federation.provinces[ZJ].config.node.federation_endpoint
    await federation.stop_node(ZJ)
    sh = federation.node(SH)
    directory = sh.directory
    assert directory is not None
    async with rogue_server(endpoint, ZJ) as rogue:
        for name, (signed, reason) in cases.items():
            rogue.serving = signed
            refusals = metric(
                federation, SH, "yrd_descriptor_refusals_total", province=ZJ, reason=reason
            )
            with capture_logs() as logs:

                async def refused(before: float = refusals, reason: str = reason) -> bool:
                    await directory.refresh([ZJ])
                    return (
                        metric(
                            federation,
                            SH,
                            "yrd_descriptor_refusals_total",
                            province=ZJ,
                            reason=reason,
                        )
                        > before
                    )

                assert await until(refused, 10), name
            lines = [line for line in logs if line.get("event") == "descriptor refused"]
            assert any(line["reason"] == reason for line in lines), name
            assert all(line["province"] == ZJ for line in lines), name
            assert all(line["log_level"] == "warning" for line in lines), name
            # The held copy stays in force.
            assert held_serial(federation, SH, ZJ) == held, name
            assert ZJ in sh.federation.peers, name
            entry = (await service_map(federation, SH))[ZJ]
            assert (entry.state, entry.serial, entry.last_refusal) == ("held", held, reason), name
            assert await health(federation, SH, DIRECTORY_HEALTH) == SERVING
        assert rogue.asked >= len(cases)
    # The copy on disk is still the good one: a restart starts from it.
    await federation.stop_node(SH)
    await federation.start_node(ZJ)
    await federation.start_node(SH)
    assert held_serial(federation, SH, ZJ) >= held
    assert await check_in(federation, wallet, SH, ZJ) == identity_pb2.VALID


async def test_an_imported_descriptor_is_checked_like_a_fetched_one(
    federation: LocalFederation,
) -> None:
    from gateway.federation.directory import install
    from gateway.storage.descriptors import DescriptorCache
    from gateway.trust.descriptor import DescriptorRefused

    sh = federation.node(SH)
    assert sh.directory is not None
    cache = DescriptorCache(sh.store_dir / "directory")
    held = held_serial(federation, SH, ZJ)
    now = dt.datetime.now(dt.UTC)
    for signed, reason in (
        (signed_descriptor(ZJ, serial=held + 5, issued=now, signer=JS), "wrong_province"),
        (signed_descriptor(ZJ, serial=held - 1, issued=now), "rollback"),
        (signed_descriptor(ZJ, serial=held + 5, issued=now - dt.timedelta(days=9)), "expired"),
    ):
        with pytest.raises(DescriptorRefused) as info:
            install(sh.federation.me, cache, signed.SerializeToString(), now)
        assert info.value.reason == reason
    assert held_serial(federation, SH, ZJ) == held
    # A file written behind the node's back is checked when read, too.
    refusals = metric(
        federation, SH, "yrd_descriptor_refusals_total", province=ZJ, reason="rollback"
    )
    cache.write(
        cache.path(ZJ), signed_descriptor(ZJ, serial=held - 1, issued=now).SerializeToString()
    )

    async def noticed() -> bool:
        return (
            metric(federation, SH, "yrd_descriptor_refusals_total", province=ZJ, reason="rollback")
            > refusals
        )

    assert await until(noticed, 5)
    assert held_serial(federation, SH, ZJ) == held
    # A good newer one is taken from the file.
    install(
        sh.federation.me,
        cache,
        signed_descriptor(ZJ, serial=held + 5, issued=now).SerializeToString(),
        now,
    )

    async def taken() -> bool:
        return held_serial(federation, SH, ZJ) == held + 5

    assert await until(taken, 5)


# ---- 6. expiry fails closed -----------------------------------------------------


async def test_an_expired_descriptor_fails_closed_and_loudly(tmp_path: Path) -> None:
    clock = OffsetClock(dt.timedelta(0))
    async with (
        LocalFederation(CONFIG_DIR, tmp_path, clock=clock) as federation,
        aiohttp.ClientSession() as http,
    ):
        wallet = Wallet(federation, http)
        assert await check_in(federation, wallet, SH, ZJ) == identity_pb2.VALID
        not_after = federation.node(SH).federation.peers[ZJ].not_after
        await federation.stop_node(ZJ)
        with capture_logs() as logs:
            clock.offset = not_after - dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
            # The peers still up publish again (half their validity is past); Shanghai
            # fetches theirs; Zhejiang's cannot be fetched.
            await asyncio.sleep(1.5)
            await federation.refresh_directories()

            async def degraded() -> bool:
                return await health(federation, SH, DIRECTORY_HEALTH) == NOT_SERVING

            assert await until(degraded, 5)
        assert [line for line in logs if line.get("event", "").startswith("descriptor expired")]
        assert await health(federation, SH, "") == SERVING
        info = await node_info(federation, SH)
        assert info.degraded
        assert len(info.degraded_reasons) == 1, info.degraded_reasons
        assert "330000" in info.degraded_reasons[0]
        assert "expired" in info.degraded_reasons[0]
        assert metric(federation, SH, "yrd_peer_descriptor_current", province=ZJ) == 0
        assert metric(federation, SH, "yrd_peer_descriptor_current", province=JS) == 1
        assert metric(federation, SH, "yrd_node_degraded") == 1
        assert (await service_map(federation, SH))[ZJ].state == "expired"
        assert ZJ not in federation.node(SH).federation.peers
        assert await check_in(federation, wallet, SH, ZJ) == identity_pb2.ISSUER_UNREACHABLE

        # A withdrawal to Zhejiang waits in the outbox; nothing is sent to it.
        app = application(federation, fund_province=ZJ, amount_fen=10_000)
        case = await submit(federation, app)
        assert case.status == fund_pb2.WithdrawalStatus.QUEUED
        await asyncio.sleep(1.5)
        centre = federation.provinces[ZJ].fund_centre
        assert not [p for p in centre.payments if p[1] == app.fund_account]

        # Zhejiang back with a fresh descriptor: trusted again, the withdrawal goes.
        await federation.start_node(ZJ)
        await federation.refresh_directories([ZJ])
        assert await health(federation, SH, DIRECTORY_HEALTH) == SERVING
        assert metric(federation, SH, "yrd_node_degraded") == 0
        final, _ = await until_final(federation, case.case_id, 30)
        assert final.status == fund_pb2.WithdrawalStatus.PAID, final.status_reason
        assert await check_in(federation, wallet, SH, ZJ) == identity_pb2.VALID


# ---- 7. service map and FAILED_PRECONDITION -------------------------------------


async def test_a_service_no_longer_offered_is_refused_before_any_federation_call(
    federation: LocalFederation,
) -> None:
    cert = a_certificate(federation, AH)
    reference = consent(federation, AH, holder_of(cert))
    answer = await fetch(federation, cert, reference)  # offered: it works
    assert answer.certificate.licence_id == cert.licence_id
    ah = federation.provinces[AH].config
    offers = tuple(s for s in ah.services.offers if s != "certificate.Fetch")
    await reload_with(
        federation,
        AH,
        ah.model_copy(update={"services": ah.services.model_copy(update={"offers": offers})}),
    )
    await federation.refresh_directories()
    entries = await service_map(federation, SH)
    assert "certificate.Fetch" not in {s.service for s in entries[AH].services}
    assert "fund.QueryAccount" in {s.service for s in entries[AH].services}
    rows = await federation.node(AH).message_log.count()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await fetch(federation, cert, reference)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    detail = info.value.details() or ""
    assert "issuer_province" in detail
    assert "does not offer" in detail
    assert "certificate.Fetch" in detail
    assert await federation.node(AH).message_log.count() == rows


# ---- 8. separate processes, each given only its own folder ---------------------


def own_root(tmp_path: Path, code: str) -> Path:
    """A copy of province ``code``'s folder alone (no other province's file under it)."""
    root = tmp_path / f"root-{code}"
    shutil.copytree(CONFIG_DIR / code, root / code, ignore=shutil.ignore_patterns("var"))
    return root


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_nodes_given_only_their_own_folder_exchange_across_provinces(
    tmp_path: Path,
) -> None:
    roots = {code: own_root(tmp_path, code) for code in ALL}
    for code, root in roots.items():
        assert [path.name for path in root.iterdir()] == [code]
    spawned = {
        code: _spawn_simulator(
            code,
            roots[code] / code / "keys",
            ports=None,
            options=(),
            delays=None,
            log=None,
            own_session=False,
        )
        for code in ALL
    }
    simulators = {code: _announced(code, process) for code, process in spawned.items()}
    federation_endpoints = {code: f"127.0.0.1:{free_port()}" for code in ALL}
    nodes: dict[str, NodeProcess] = {}
    try:
        for code in ALL:
            file = roots[code] / code / "province.toml"
            text = file.read_text(encoding="utf-8")
            text = re.sub(
                r'(\[\[peers\]\]\ncode = "([0-9]{6})"[^\n]*\nendpoint = ")[^"]+"',
                lambda m: f'{m.group(1)}{federation_endpoints[m.group(2)]}"',
                text,
            )
            endpoint = f"127.0.0.1:{free_port()}"
            text = re.sub(r'\nendpoint = "[^"]+"', f'\nendpoint = "{endpoint}"', text, count=1)
            text = re.sub(
                r'federation_endpoint = "[^"]+"',
                f'federation_endpoint = "{federation_endpoints[code]}"',
                text,
                count=1,
            )
            text = re.sub(r'store = "[^"]+"', 'store = "../var"', text, count=1)
            sim = simulators[code]
            text = re.sub(r'authority_url = "[^"]+"', f'authority_url = "{sim.eid_url}"', text)
            text = re.sub(r'centre_url = "[^"]+"', f'centre_url = "{sim.fund_url}"', text)
            if sim.cert_url is not None:
                text = re.sub(r'library_url = "[^"]+"', f'library_url = "{sim.cert_url}"', text)
            if sim.case_url is not None:
                text = re.sub(r'system_url = "[^"]+"', f'system_url = "{sim.case_url}"', text)
            file.write_text(text, encoding="utf-8")
            nodes[code] = NodeProcess(
                code,
                file,
                endpoint,
                roots[code] / "node.log",
                roots[code] / code / "keys" / "ca.crt.pem",
            )
            nodes[code].start()
        for node in nodes.values():
            node.wait_serving(40)
        for node in nodes.values():
            node.wait_serving(20, service=DIRECTORY_HEALTH)  # every peer's descriptor held
        for code in ALL:
            assert (roots[code] / "var" / "directory").is_dir()
            assert {p.stem for p in (roots[code] / "var" / "directory").glob("*.descriptor")} == (
                set(ALL) - {code}
            ) | {"own"}

        async with aiohttp.ClientSession() as http:
            async with http.get(simulators[ZJ].eid_url + "/residents") as response:
                residents = await response.json()
            credential = next(r for r in residents if r["state"] == "CREDENTIAL_ACTIVE")
            async with http.post(
                simulators[ZJ].eid_url + "/wallet/qr",
                json={"credential_id": credential["credential_id"]},
            ) as response:
                qr = (await response.json())["qr_payload"]
        credentials = grpc.ssl_channel_credentials(nodes[SH].ca.read_bytes())
        async with grpc.aio.secure_channel(nodes[SH].endpoint, credentials) as channel:
            answer = await identity_pb2_grpc.IdentityServiceStub(channel).VerifyIdentity(
                identity_pb2.VerifyIdentityRequest(
                    qr_payload=qr, purpose=identity_pb2.HOTEL_CHECK_IN
                ),
                metadata=(("authorization", f"Bearer dev-hotel-{SH}"),),
                timeout=10,
            )
        assert answer.verdict == identity_pb2.VALID
    finally:
        for node in nodes.values():
            node.terminate()
        for simulator in simulators.values():
            simulator.stop()
