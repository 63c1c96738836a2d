"""Config reload on a served node: SIGHUP and the ReloadConfig RPC take a new
config without dropping calls in flight; a bad config is refused and the old
one stays in force."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.testing.procfed import ProcessFederation
from tests.integration.conftest import JS, SH
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc

NEW_TOKEN = "dev-reload-client"
NEW_CLIENT = f"""
[[clients]]
id = "reload-client"
token_sha256 = "{hashlib.sha256(NEW_TOKEN.encode()).hexdigest()}"
services = ["yrd.admin.v1.AdminService"]
"""


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessFederation]:
    federation = ProcessFederation(tmp_path, (SH, JS))
    try:
        yield federation.start()
    finally:
        federation.stop()


def add_client(config: Path) -> None:
    text = config.read_text(encoding="utf-8")
    marker = "# ---- Adapter"
    config.write_text(text.replace(marker, NEW_CLIENT + "\n" + marker, 1), encoding="utf-8")


async def node_info(processes: ProcessFederation, token: str) -> str:
    async with processes.client_channel(SH) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            await stub.GetNodeInfo(
                admin_pb2.GetNodeInfoRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return "OK"


async def until(processes: ProcessFederation, token: str, wanted: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    got = ""
    while time.monotonic() < deadline:
        got = await node_info(processes, token)
        if got == wanted:
            break
        await asyncio.sleep(0.1)
    return got


async def calls_in_flight(processes: ProcessFederation, stop: asyncio.Event) -> list[str]:
    outcomes = []
    while not stop.is_set():
        outcomes.append(await node_info(processes, f"dev-office-{SH}"))
    return outcomes


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sighup_then_rpc_reload_and_a_refused_config(processes: ProcessFederation) -> None:
    async def scenario() -> None:
        node = processes.nodes[SH]
        assert await node_info(processes, NEW_TOKEN) == "UNAUTHENTICATED"

        stop = asyncio.Event()
        traffic = asyncio.create_task(calls_in_flight(processes, stop))
        add_client(node.config)
        assert node.process is not None
        node.process.send_signal(signal.SIGHUP)
        assert await until(processes, NEW_TOKEN, "OK", 15) == "OK"
        stop.set()
        assert set(await traffic) == {"OK"}  # nothing dropped while reloading

        # A broken config is refused as a whole; the old one stays in force.
        good = node.config.read_text(encoding="utf-8")
        node.config.write_text(good.replace('code = "310000"', 'code = "31"', 1), encoding="utf-8")
        async with processes.client_channel(SH) as channel:
            answer = await admin_pb2_grpc.AdminServiceStub(channel).ReloadConfig(
                admin_pb2.ReloadConfigRequest(),
                metadata=(("authorization", f"Bearer dev-office-{SH}"),),
                timeout=10,
            )
        assert not answer.reloaded
        assert "province.code" in answer.detail
        assert await node_info(processes, NEW_TOKEN) == "OK"

        # Repaired, and reloaded through the RPC.
        node.config.write_text(good.replace(NEW_CLIENT, ""), encoding="utf-8")
        async with processes.client_channel(SH) as channel:
            answer = await admin_pb2_grpc.AdminServiceStub(channel).ReloadConfig(
                admin_pb2.ReloadConfigRequest(),
                metadata=(("authorization", f"Bearer dev-office-{SH}"),),
                timeout=10,
            )
        assert answer.reloaded, answer.detail
        assert await node_info(processes, NEW_TOKEN) == "UNAUTHENTICATED"

    asyncio.run(scenario())
