"""Clients and peers reach a live replica of a province.

Two nodes of one province (same config, keys and certificate; each its own
SQLite store folder and ports) stand in for two replicas: identity
verification is stateless enough for that. Local clients open one channel over
both public endpoints, peers one channel over the federation endpoints the
province's descriptor publishes (:mod:`gateway.core.channels`): calls spread
over both, a replica that stops or is killed costs at most a retry, and a
replica whose health says NOT_SERVING gets no new calls.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.models import FederationConfig
from gateway.core.channels import balanced_aio_channel
from gateway.federation.client import CHANNEL_OPTIONS
from gateway.server.node import Node
from gateway.testing.localfed import LocalFederation, free_port
from gateway.testing.procfed import NodeProcess, ProcessFederation
from tests.integration.conftest import JS, SH, Wallet
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

Samples = list[tuple[str, dict[str, str], float]]


def total(samples: Samples, name: str, wanted: Callable[[dict[str, str]], bool]) -> float:
    return sum(value for n, labels, value in samples if n == name and wanted(labels))


def verdicts(samples: Samples) -> float:
    """VerifyIdentity calls a node answered (its public RPC counter)."""
    return total(
        samples,
        "yrd_rpc_total",
        lambda labels: labels["method"].endswith("VerifyIdentity") and labels["code"] == "OK",
    )


def checks_from(peer: str) -> Callable[[Samples], float]:
    """Federation exchanges a node answered for ``peer``."""

    def count(samples: Samples) -> float:
        return total(
            samples,
            "yrd_exchanges_total",
            lambda labels: labels["direction"] == "in" and labels["peer"] == peer,
        )

    return count


def samples_of(node: Node) -> Samples:
    return [
        (sample.name, sample.labels, sample.value)
        for metric in node.metrics.registry.collect()
        for sample in metric.samples
    ]


def hotel(province: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer dev-hotel-{province}"),)


async def verify(
    channel: grpc.aio.Channel, province: str, qr: str
) -> identity_pb2.VerifyIdentityResponse:
    answer: identity_pb2.VerifyIdentityResponse = await identity_pb2_grpc.IdentityServiceStub(
        channel
    ).VerifyIdentity(
        identity_pb2.VerifyIdentityRequest(qr_payload=qr, purpose=identity_pb2.HOTEL_CHECK_IN),
        metadata=hotel(province),
        timeout=5,
    )
    return answer


# -- in-process replicas (LocalFederation) ------------------------------------


@pytest_asyncio.fixture
async def replicas(federation: LocalFederation, tmp_path: Path) -> AsyncIterator[list[Node]]:
    """Shanghai's node and a second replica of it; the descriptor lists both
    federation endpoints, and the other nodes hold it."""
    province = federation.provinces[SH]
    first = province.config.node
    second_federation = f"127.0.0.1:{free_port()}"
    published = (first.peer_endpoint, second_federation)
    province.config = province.config.model_copy(
        update={"node": first.model_copy(update={"published_endpoints": published})}
    )
    await federation.node(SH).reload(federation.federation_for(SH))
    twin = province.config.model_copy(
        update={
            "node": province.config.node.model_copy(
                update={
                    "endpoint": f"127.0.0.1:{free_port()}",
                    "federation_endpoint": second_federation,
                    "store": tmp_path / "replica-2",
                }
            )
        }
    )
    base = federation.federation_for(SH)
    second = Node(
        FederationConfig(me=twin.model_copy(update={"peers": base.me.peers})),
        clock=federation.clock,
        grace=1.0,
    )
    await second.start()
    try:
        await federation.refresh_directories()
        facts = federation.node(JS).federation.peer(SH)
        assert facts is not None
        assert set(facts.endpoints) == set(published)
        yield [federation.node(SH), second]
    finally:
        await second.stop(grace=0.5)


def local_channel(federation: LocalFederation, nodes: list[Node]) -> grpc.aio.Channel:
    tls = federation.provinces[SH].config.tls
    assert tls is not None
    return balanced_aio_channel(
        [node.config.me.node.endpoint for node in nodes],
        grpc.ssl_channel_credentials(tls.ca.read_bytes()),
        options=CHANNEL_OPTIONS,
    )


async def spread(
    calls: int,
    call: Callable[[], Awaitable[None]],
    nodes: list[Node],
    count: Callable[[Samples], float],
) -> list[float]:
    """Run ``calls`` calls (each must succeed); how many each node answered."""
    before = [count(samples_of(node)) for node in nodes]
    for _ in range(calls):
        await call()
    return [count(samples_of(node)) - b for node, b in zip(nodes, before, strict=True)]


class TestPeersSpreadOverReplicas:
    """A peer's federation client holds one channel over every published endpoint."""

    async def test_calls_reach_both_and_survive_a_stopped_one(
        self, federation: LocalFederation, replicas: list[Node], wallet: Wallet
    ) -> None:
        js_desk = federation.channel(JS)

        async def check_in() -> None:
            answer = await verify(js_desk, JS, await wallet.fresh_qr(SH))
            assert answer.verdict == identity_pb2.VALID

        per_replica = await spread(10, check_in, replicas, checks_from(JS))
        assert min(per_replica) > 0, per_replica
        assert sum(per_replica) == 10
        await replicas[1].stop(grace=0.2)
        retries = federation.node(JS).federation_client.retries
        per_replica = await spread(10, check_in, replicas[:1], checks_from(JS))
        assert per_replica == [10]
        assert federation.node(JS).federation_client.retries - retries <= 1


class TestNotServingGetsNoCalls:
    """Client-side health checking: gRPC's round_robin skips a replica whose health
    service says NOT_SERVING (what a node says while it cannot write its store)."""

    async def test_neither_peers_nor_local_clients_call_it(
        self, federation: LocalFederation, replicas: list[Node], wallet: Wallet
    ) -> None:
        js_desk = federation.channel(JS)
        sh_desk = local_channel(federation, replicas)

        async def peer_check_in() -> None:
            answer = await verify(js_desk, JS, await wallet.fresh_qr(SH))
            assert answer.verdict == identity_pb2.VALID

        async def local_check_in() -> None:
            answer = await verify(sh_desk, SH, await wallet.fresh_qr(JS))
            assert answer.verdict == identity_pb2.VALID

        try:
            assert min(await spread(6, local_check_in, replicas, verdicts)) > 0
            await replicas[1].health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(0.3)  # the health Watch streams tell the channels
            assert (await spread(8, peer_check_in, replicas, checks_from(JS)))[1] == 0
            assert (await spread(8, local_check_in, replicas, verdicts))[1] == 0
            await replicas[1].health.set("", health_pb2.HealthCheckResponse.SERVING)
            await asyncio.sleep(0.3)
            assert (await spread(8, peer_check_in, replicas, checks_from(JS)))[1] > 0
            assert (await spread(8, local_check_in, replicas, verdicts))[1] > 0
        finally:
            await sh_desk.close()


# -- replicas as processes, one SIGKILLed ---------------------------------------


def scrape(node: NodeProcess) -> Samples:
    with urllib.request.urlopen(node.metrics_url, timeout=5) as answer:  # noqa: S310 - loopback http
        text = answer.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def fresh_qr(eid_url: str) -> str:
    """A new QR code of an active resident, as the resident's phone gets it."""
    with urllib.request.urlopen(f"{eid_url}/residents", timeout=5) as answer:  # noqa: S310 - loopback http
        resident = next(r for r in json.load(answer) if r["state"] == "CREDENTIAL_ACTIVE")
    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{eid_url}/wallet/qr",
        data=json.dumps({"credential_id": resident["credential_id"]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback http
        qr: str = json.load(answer)["qr_payload"]
    return qr


def _set(text: str, key: str, old: str, new: str) -> str:
    line = f'{key} = "{old}"'
    assert line in text, line
    return text.replace(line, f'{key} = "{new}"', 1)


@pytest.fixture
def process_replicas(tmp_path: Path) -> Iterator[tuple[ProcessFederation, list[NodeProcess]]]:
    """Shanghai as two node processes (the second: a copy of the first's config
    with its own ports and store folder) publishing both federation endpoints,
    and Jiangsu, which holds that descriptor."""
    federation = ProcessFederation(tmp_path, (SH, JS))
    twin: NodeProcess | None = None
    try:
        federation.start()
        first, jiangsu = federation.nodes[SH], federation.nodes[JS]
        first.terminate()
        jiangsu.terminate()
        text = first.config.read_text(encoding="utf-8")
        own = text.split('federation_endpoint = "', 1)[1].split('"', 1)[0]
        second = f"127.0.0.1:{free_port()}"
        text = text.replace("[node]\n", f'[node]\npublished_endpoints = ["{own}", "{second}"]\n', 1)
        first.config.write_text(text, encoding="utf-8")
        metrics = text.split('metrics_endpoint = "', 1)[1].split('"', 1)[0]
        twin_text = _set(text, "federation_endpoint", own, second)
        twin_text = _set(twin_text, "endpoint", first.endpoint, f"127.0.0.1:{free_port()}")
        twin_text = _set(twin_text, "metrics_endpoint", metrics, f"127.0.0.1:{free_port()}")
        twin_text = _set(
            twin_text, "store", str(first.store_dir), str(tmp_path / "var" / f"{SH}-2")
        )
        twin_file = first.config.with_name("province-2.toml")
        twin_file.write_text(twin_text, encoding="utf-8")
        twin = NodeProcess(
            SH,
            twin_file,
            twin_text.split('\nendpoint = "', 1)[1].split('"', 1)[0],
            tmp_path / f"{SH}-2.log",
            first.ca,
        )
        # Jiangsu forgets its copy of Shanghai's one-endpoint descriptor.
        shutil.rmtree(jiangsu.store_dir / "directory", ignore_errors=True)
        for node in (first, twin, jiangsu):
            node.start()
        for node in (first, twin, jiangsu):
            node.wait_serving()
        yield federation, [first, twin]
    finally:
        if twin is not None:
            twin.terminate()
        federation.stop()


@pytest.mark.timeout(180)
async def test_a_killed_replica_costs_at_most_a_retry(
    process_replicas: tuple[ProcessFederation, list[NodeProcess]],
) -> None:
    """(a) A hotel's channel over both Shanghai replicas gets verdicts from both and,
    once one is SIGKILLed, every further call succeeds, at most one after a retry.
    (b) Jiangsu's node spreads its calls to Shanghai over both published endpoints
    and keeps serving its hotels when one replica dies."""
    federation, replicas = process_replicas
    first, twin = replicas
    js_eid, sh_eid = federation.simulators[JS].eid_url, federation.simulators[SH].eid_url
    credentials = grpc.ssl_channel_credentials(first.ca.read_bytes())
    sh_desk = balanced_aio_channel([first.endpoint, twin.endpoint], credentials)
    js_desk = balanced_aio_channel([federation.nodes[JS].endpoint], credentials)
    retried = 0

    async def local_check_in() -> None:
        nonlocal retried
        qr = await asyncio.to_thread(fresh_qr, js_eid)
        try:
            answer = await verify(sh_desk, SH, qr)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            retried += 1
            answer = await verify(sh_desk, SH, await asyncio.to_thread(fresh_qr, js_eid))
        assert answer.verdict == identity_pb2.VALID

    decided: list[int] = []

    async def peer_check_in(*, in_flight: bool = False) -> None:
        answer = await verify(js_desk, JS, await asyncio.to_thread(fresh_qr, sh_eid))
        if in_flight:
            # A check the dying replica had already put to the (shared) e-ID
            # authority is answered REPLAYED on the retry: the token was used. A
            # decision all the same, reached through the live replica.
            decided.append(answer.verdict)
            assert answer.verdict in (identity_pb2.VALID, identity_pb2.REPLAYED)
        else:
            assert answer.verdict == identity_pb2.VALID

    async def counted(
        calls: int,
        call: Callable[[], Awaitable[None]],
        count: Callable[[Samples], float],
        nodes: list[NodeProcess],
    ) -> list[float]:
        before = [count(await asyncio.to_thread(scrape, node)) for node in nodes]
        for _ in range(calls):
            await call()
        after = [count(await asyncio.to_thread(scrape, node)) for node in nodes]
        return [a - b for a, b in zip(after, before, strict=True)]

    try:
        per_replica = await counted(10, local_check_in, verdicts, replicas)
        assert min(per_replica) > 0, per_replica
        assert sum(per_replica) == 10
        per_replica = await counted(10, peer_check_in, checks_from(JS), replicas)
        assert min(per_replica) > 0, per_replica
        assert sum(per_replica) == 10

        async def kill_twin_soon() -> None:
            await asyncio.sleep(0.05)
            await asyncio.to_thread(twin.kill)

        # Calls in flight when the replica dies: each is retried (once at most for
        # the hotel's; the node's own client retries its) and lands on the other.
        await asyncio.gather(
            kill_twin_soon(),
            *(local_check_in() for _ in range(6)),
            *(peer_check_in(in_flight=True) for _ in range(24)),
        )
        print(f"hotel calls retried while the replica died: {retried}")
        print(f"verdicts of Jiangsu's calls in flight: {sorted(decided)}")
        retried = 0
        assert await counted(10, local_check_in, verdicts, [first]) == [10]
        print(f"hotel calls retried after the kill: {retried}")
        assert retried <= 1
        assert await counted(10, peer_check_in, checks_from(JS), [first]) == [10]
    finally:
        await sh_desk.close()
        await js_desk.close()


async def test_a_bootstrap_list_reaches_the_live_replica(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """A node that holds no descriptor of a peer yet fetches it over one channel
    across the peer's bootstrap endpoints (``[[peers]] endpoint`` as a list):
    the first address is dead, the descriptor comes from the live one."""
    live = federation.provinces[SH].config.node.peer_endpoint
    dead = f"127.0.0.1:{free_port()}"
    base = federation.federation_for(JS).me
    peers = tuple(
        peer.model_copy(update={"endpoint": f"{dead},{live}"}) if peer.code == SH else peer
        for peer in base.peers
    )
    me = base.model_copy(
        update={
            "peers": peers,
            "node": base.node.model_copy(
                update={
                    "endpoint": f"127.0.0.1:{free_port()}",
                    "federation_endpoint": f"127.0.0.1:{free_port()}",
                    "store": tmp_path / "fresh-jiangsu",
                }
            ),
        }
    )
    node = Node(FederationConfig(me=me), clock=federation.clock, grace=0.5)
    await node.start()
    try:
        assert node.directory is not None
        await node.directory.refresh([SH])
        facts = node.federation.peer(SH)
        assert facts is not None
        assert facts.endpoints == (live,)
    finally:
        await node.stop(grace=0.2)
