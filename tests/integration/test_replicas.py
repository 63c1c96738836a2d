"""Replicas of one province on one PostgreSQL database, in process: they serve
one own descriptor (the one kept in the database), and a replica whose
database is unreachable answers UNAVAILABLE (its peer's hotel gets the verdict
ISSUER_UNREACHABLE) and is NOT_SERVING until it can write again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from grpc_health.v1 import health_pb2

from gateway.federation.directory import stored_service_map
from gateway.server.node import Node
from gateway.testing.localfed import LocalFederation, free_port
from tests.integration.conftest import JS, SH, Wallet
from tests.integration.test_identity_exchange import verify
from yrd.identity.v1 import identity_pb2


async def replica(federation: LocalFederation, url: str, local: Path) -> Node:
    """One more Jiangsu replica on the database ``url``, on ports of its own."""
    return await Node(
        federation.federation_for(JS),
        clock=federation.clock,
        store_dir=url,
        local_dir=local,
        listen=f"127.0.0.1:{free_port()}",
        federation_listen=f"127.0.0.1:{free_port()}",
        grace=0.5,
    ).start()


@pytest.fixture
async def jiangsu_on_pg(federation: LocalFederation, pg_url: str, tmp_path: Path) -> Node:
    """Jiangsu's node moved to the database (peers reach it where they did)."""
    await federation.stop_node(JS)
    node = await federation.start_node(JS, store_dir=pg_url, local_dir=tmp_path / "js-1")
    await federation.refresh_directories()
    return node


class TestOneDescriptor:
    async def test_every_replica_serves_the_serial_in_the_database(
        self, federation: LocalFederation, jiangsu_on_pg: Node, pg_url: str, tmp_path: Path
    ) -> None:
        second = await replica(federation, pg_url, tmp_path / "js-2")
        try:
            assert jiangsu_on_pg.directory is not None
            assert second.directory is not None
            serial, data = jiangsu_on_pg.directory.own()
            assert second.directory.own() == (serial, data)
            with psycopg.connect(pg_url) as conn:
                row = conn.execute("SELECT serial, data FROM own_descriptor").fetchone()
            assert row is not None
            assert (row[0], bytes(row[1])) == (serial, data)

            # One replica issues a new descriptor (its contact changed): the other
            # serves that one within a tick, never its own older serial.
            me = jiangsu_on_pg.federation.me
            changed = me.model_copy(
                update={"province": me.province.model_copy(update={"contact": "ops@js.example"})}
            )
            await jiangsu_on_pg.reload(jiangsu_on_pg.federation.with_me(changed))
            newer, _ = jiangsu_on_pg.directory.own()
            assert newer > serial
            for _ in range(50):
                if second.directory.own()[0] == newer:
                    break
                await asyncio.sleep(0.1)
            assert second.directory.own()[0] == newer
        finally:
            await second.stop()

    async def test_the_offline_service_map_reads_the_own_descriptor_there(
        self, federation: LocalFederation, jiangsu_on_pg: Node, pg_url: str, tmp_path: Path
    ) -> None:
        """``directory list --config`` of a replica on PostgreSQL shows the province's
        own descriptor from the database (no replica writes it to a file)."""
        me = jiangsu_on_pg.federation.me
        on_database = me.model_copy(
            update={
                "node": me.node.model_copy(update={"store": pg_url, "local_dir": tmp_path / "js-1"})
            }
        )
        assert jiangsu_on_pg.directory is not None
        serial, _ = jiangsu_on_pg.directory.own()
        entries = stored_service_map(on_database, datetime.now(UTC))
        own = entries[0]
        assert own.state == "own"
        assert own.facts is not None
        assert own.facts.serial == serial


class TestUnreachableDatabase:
    async def test_calls_get_unavailable_and_health_follows(
        self, federation: LocalFederation, jiangsu_on_pg: Node, pg_url: str, wallet: Wallet
    ) -> None:
        answer = await verify(federation, SH, await wallet.fresh_qr(JS))
        assert answer.verdict == identity_pb2.VALID
        name = pg_url.rpartition("/")[2]
        server = pg_url.rpartition("/")[0] + "/postgres"
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        try:
            # Jiangsu answers UNAVAILABLE (a fault, retried), never INTERNAL: the hotel
            # is told the issuer cannot be reached, not that the e-ID is bad.
            answer = await verify(federation, SH, await wallet.fresh_qr(JS), timeout=15)
            assert answer.verdict == identity_pb2.ISSUER_UNREACHABLE
            status = await jiangsu_on_pg.health.Check(health_pb2.HealthCheckRequest(), None)
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        for _ in range(100):
            status = await jiangsu_on_pg.health.Check(health_pb2.HealthCheckRequest(), None)
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.1)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        # ... and takes calls again once Shanghai's breaker lets one through
        for _ in range(40):
            answer = await verify(federation, SH, await wallet.fresh_qr(JS), timeout=10)
            if answer.verdict != identity_pb2.ISSUER_UNREACHABLE:
                break
            await asyncio.sleep(0.25)
        assert answer.verdict == identity_pb2.VALID
