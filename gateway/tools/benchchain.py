"""The baseline of the benchmark: a do-nothing chain of the federation path's shape.

``client -(TLS)-> proxy -(mutual TLS)-> proxy -(HTTP)-> echo``: the same
transports, processes and hops as a hotel verification (hotel -> its node ->
issuing node -> e-ID authority), with none of the work (no signatures, no
message log, no translation, no logs). ``python -m gateway.tools.benchchain proxy|echo``
runs one hop; :class:`BaselineChain` starts and stops the three processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
from aiohttp import web

from gateway.server import eventloop
from gateway.testing.localfed import free_port

METHOD = "/yrd.bench.v1.Chain/Call"


async def _serve_proxy(args: argparse.Namespace) -> None:
    keys = Path(args.keys)
    ca = (keys / "ca.crt.pem").read_bytes()
    cert = (keys / "tls.crt.pem").read_bytes()
    key = (keys / "tls.key.pem").read_bytes()
    forward: Callable[[bytes], Awaitable[bytes]]
    if args.upstream_http:
        session = aiohttp.ClientSession()

        async def forward_http(body: bytes) -> bytes:
            async with session.post(args.upstream_http, data=body) as response:
                return await response.read()

        forward = forward_http
    else:
        credentials = grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)
        channel = grpc.aio.secure_channel(args.upstream, credentials)
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

        async def forward_grpc(body: bytes) -> bytes:
            result: bytes = await call(body, timeout=10)
            return result

        forward = forward_grpc

    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await forward(request)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "yrd.bench.v1.Chain",
                {"Call": grpc.unary_unary_rpc_method_handler(handle)},
            ),
        )
    )
    credentials_server = grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ca if args.mutual else None,
        require_client_auth=args.mutual,
    )
    server.add_secure_port(args.listen, credentials_server)
    await server.start()
    print(json.dumps({"ready": args.listen}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0.5)


async def _serve_echo(args: argparse.Namespace) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body + b"x" * 200)

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = args.listen.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    print(json.dumps({"ready": args.listen}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


@dataclass
class BaselineChain:
    """The three baseline processes on loopback; ``endpoint`` is the first proxy.
    ``configs``: the province configs folder (each hop uses ``<code>/keys/``)."""

    configs: Path
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    endpoint: str = ""

    def _spawn(self, *args: str) -> None:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "gateway.tools.benchchain", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(process)  # stopped by stop() even if interrupted here
        assert process.stdout is not None
        if not process.stdout.readline():
            raise RuntimeError(f"baseline hop {args[0]} did not start")

    def start(self) -> BaselineChain:
        echo, second, first = (f"127.0.0.1:{free_port()}" for _ in range(3))
        self._spawn("echo", "--listen", echo)
        self._spawn(
            "proxy",
            "--listen",
            second,
            "--upstream-http",
            f"http://{echo}/echo",
            "--keys",
            str(self.configs / "330000" / "keys"),
            "--identity",
            "330000",
            "--mutual",
        )
        self._spawn(
            "proxy",
            "--listen",
            first,
            "--upstream",
            second,
            "--keys",
            str(self.configs / "310000" / "keys"),
            "--identity",
            "310000",
        )
        self.endpoint = first
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()

    def channel(self) -> grpc.aio.Channel:
        ca = (self.configs / "310000" / "keys" / "ca.crt.pem").read_bytes()
        return grpc.aio.secure_channel(self.endpoint, grpc.ssl_channel_credentials(ca))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.tools.benchchain")
    commands = parser.add_subparsers(dest="command", required=True)
    proxy = commands.add_parser("proxy")
    proxy.add_argument("--listen", required=True)
    proxy.add_argument("--upstream")
    proxy.add_argument("--upstream-http")
    proxy.add_argument("--keys", required=True, help="the identity's keys folder")
    proxy.add_argument("--identity", required=True)
    proxy.add_argument("--mutual", action="store_true")
    echo = commands.add_parser("echo")
    echo.add_argument("--listen", required=True)
    args = parser.parse_args()
    # The same event loop as the nodes: the baseline differs from them only in work.
    eventloop.run(_serve_proxy(args) if args.command == "proxy" else _serve_echo(args))


if __name__ == "__main__":
    main()
