"""A whole federation on one machine: every province's node and simulators on
loopback ports, in one process. Used by ``yrd-gateway demo`` and the tests.

Ports are chosen by the OS: simulators bind port 0; node ports are reserved by
binding port 0 and released just before the node binds them (loopback only).
Each node gets its own copy of the federation config with the endpoints and
back-end URLs that were actually bound.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from gateway.config.loading import parse_province_file
from gateway.config.models import (
    CaseSection,
    ConsoleSection,
    FederationConfig,
    FundSection,
    ProvinceConfig,
)
from gateway.core.clock import Clock, SystemClock
from gateway.federation.client import CHANNEL_OPTIONS
from gateway.server.node import Node
from yrd_simulators.case_system import CaseSystemSimulator
from yrd_simulators.certificate_library import CertificateLibrarySimulator
from yrd_simulators.eid_authority import EidAuthoritySimulator
from yrd_simulators.fund_centre import FundCentreSimulator

#: The setting that names the folder of province configs (else ./province_configs).
CONFIG_DIR_SETTING = "YRD_PROVINCE_CONFIGS"


def province_configs_dir(given: Path | None = None) -> Path:
    """The folder of province configs: ``given`` (a command-line option), else
    the ``YRD_PROVINCE_CONFIGS`` setting, else ``./province_configs`` in the
    current directory. Never a folder found relative to the installed code."""
    folder = given or Path(os.environ.get(CONFIG_DIR_SETTING) or "province_configs")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no province configs at {folder}: run from the repository root, pass "
            f"--configs DIR, or set {CONFIG_DIR_SETTING}"
        )
    return folder


def client_channel(
    config: ProvinceConfig,
    endpoint: str,
    *,
    certificate: bytes | None = None,
    private_key: bytes | None = None,
) -> grpc.aio.Channel:
    """A channel as a local client opens it: TLS with the federation CA as trust
    anchor when the node has [tls], with a client certificate if given."""
    if config.tls is None:
        return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=config.tls.ca.read_bytes(),
        private_key=private_key,
        certificate_chain=certificate,
    )
    return grpc.aio.secure_channel(endpoint, credentials, options=CHANNEL_OPTIONS)


#: Where free_port picks: below the kernel's ephemeral range (Linux: 32768 and
#: up), where port-0 binds and outgoing connections take their local ports. A
#: port picked there and bound by a server a moment later may meanwhile have
#: become some connection's local port ("Address already in use" under load);
#: below the range only another explicit pick can take it. Each pytest-xdist
#: worker picks in its own slice, so two workers never hand out the same port.
_PICK_FLOOR = 20_000
_picked: set[int] = set()


def pick_range() -> tuple[int, int]:
    """The slice of ports this process picks in (empty when the ephemeral range
    leaves no room below it)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker) if worker.isdigit() else 0
    size = max(0, low - _PICK_FLOOR) // max(1, workers)
    start = _PICK_FLOOR + index % max(1, workers) * size
    return start, start + size


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nobody listens on now and that this process
    has not handed out before (see ``_PICK_FLOOR``)."""
    import random

    start, stop = pick_range()
    if stop - start >= 256:
        if len(_picked) > (stop - start) // 2:
            _picked.clear()
        for _ in range(256):
            port = random.randrange(start, stop)  # noqa: S311 - a test port, not a secret
            if port in _picked:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            _picked.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalProvince:
    config: ProvinceConfig
    simulator: EidAuthoritySimulator
    fund_centre: FundCentreSimulator
    certificate_library: CertificateLibrarySimulator | None = None
    case_system: CaseSystemSimulator | None = None
    node: Node | None = None
    channel: grpc.aio.Channel | None = None


@dataclass
class LocalFederation:
    """Start/stop a federation of nodes and simulators; an async context manager."""

    config_dir: Path
    work_dir: Path
    clock: Clock = field(default_factory=SystemClock)
    provinces: dict[str, LocalProvince] = field(default_factory=dict)
    #: Give every node with [tls] a web console on a free loopback port (the demo).
    console: bool = False

    async def start(self) -> LocalFederation:
        configs = [parse_province_file(p) for p in sorted(self.config_dir.glob("*/province.toml"))]
        for config in configs:
            key = config.eid.issuer_private_key
            if key is None:
                raise ValueError(f"{config.source}: eid.issuer_private_key needed for a simulator")
            simulator = EidAuthoritySimulator(
                config.code, key, config.eid.issuer_keys[-1].key_id, clock=self.clock
            )
            url = await simulator.start("127.0.0.1", 0)
            fund_centre = FundCentreSimulator(config.code, clock=self.clock)
            fund_url = await fund_centre.start("127.0.0.1", 0)
            node = config.node.model_copy(
                update={
                    "endpoint": f"127.0.0.1:{free_port()}",
                    "federation_endpoint": f"127.0.0.1:{free_port()}",
                    "metrics_endpoint": "127.0.0.1:0",
                    "store": self.work_dir / config.code,
                }
            )
            eid = config.eid.model_copy(update={"authority_url": url})
            fund = FundSection(centre_url=fund_url)
            updates: dict[str, Any] = {"node": node, "eid": eid, "fund": fund}
            if self.console and config.tls is not None:
                updates["console"] = ConsoleSection(endpoint="127.0.0.1:0")
            library = cases = None
            if config.certificate is not None and config.certificate.seal_keys:
                seal_key = config.source.parent / "keys" / "seal.key.pem"
                library = CertificateLibrarySimulator(
                    config.code,
                    seal_key,
                    config.certificate.seal_keys[-1].key_id,
                    clock=self.clock,
                )
                updates["certificate"] = config.certificate.model_copy(
                    update={"library_url": await library.start("127.0.0.1", 0)}
                )
            if config.case is not None:
                cases = CaseSystemSimulator(config.code, clock=self.clock)
                updates["case"] = CaseSection(system_url=await cases.start("127.0.0.1", 0))
            self.provinces[config.code] = LocalProvince(
                config.model_copy(update=updates), simulator, fund_centre, library, cases
            )
        for code in self.provinces:
            await self.start_node(code)
        await self.refresh_directories()
        return self

    def federation_for(self, code: str) -> FederationConfig:
        """The config a province's node is given: its own province only, with the
        bootstrap endpoints of its peers as bound here (their facts come from the
        directory)."""
        config = self.provinces[code].config
        peers = tuple(
            peer.model_copy(
                update={"endpoint": self.provinces[peer.code].config.node.federation_endpoint}
            )
            if peer.code in self.provinces
            else peer
            for peer in config.peers
        )
        return FederationConfig(me=config.model_copy(update={"peers": peers}))

    async def refresh_directories(self, codes: list[str] | None = None) -> None:
        """Every running node fetches its peers' descriptors now (instead of waiting
        for its refresh interval): after start, a restart or a move."""
        for province in self.provinces.values():
            node = province.node
            if node is not None and node.directory is not None:
                await node.directory.refresh(codes)

    async def start_node(self, code: str, **options: Any) -> Node:
        """Start (or restart) a province's node; ``options`` go to :class:`Node`."""
        province = self.provinces[code]
        options.setdefault("grace", 1.0)
        for attempt in range(5):
            node = Node(self.federation_for(code), clock=self.clock, **options)
            try:
                await node.start()
            except RuntimeError:
                # A port reserved with free_port() was taken meanwhile (loopback is
                # shared with other tests): move this node and tell the others.
                await node.stop(grace=0)
                if attempt == 4:
                    raise
                await self._move(code)
                continue
            province.node = node
            if attempt:  # it moved: the others fetch its descriptor from its new endpoint
                await self.refresh_directories([code])
            return node
        raise AssertionError("unreachable")  # pragma: no cover

    async def _move(self, code: str) -> None:
        province = self.provinces[code]
        node_section = province.config.node.model_copy(
            update={
                "endpoint": f"127.0.0.1:{free_port()}",
                "federation_endpoint": f"127.0.0.1:{free_port()}",
            }
        )
        province.config = province.config.model_copy(update={"node": node_section})
        if province.channel is not None:
            await province.channel.close()
            province.channel = None
        for other, running in self.provinces.items():
            if running.node is not None and other != code:
                await running.node.reload(self.federation_for(other))

    async def stop_node(self, code: str) -> None:
        province = self.provinces[code]
        if province.node is not None:
            await province.node.stop(grace=0.5)
            province.node = None

    def node(self, code: str) -> Node:
        node = self.provinces[code].node
        if node is None:
            raise RuntimeError(f"node {code} is stopped")
        return node

    def endpoint(self, code: str) -> str:
        return self.provinces[code].config.node.endpoint

    def channel(self, code: str) -> grpc.aio.Channel:
        """A local client's channel to a node's public endpoint (TLS if configured)."""
        province = self.provinces[code]
        if province.channel is None:
            province.channel = client_channel(province.config, self.endpoint(code))
        return province.channel

    async def stop(self) -> None:
        for province in self.provinces.values():
            if province.channel is not None:
                await province.channel.close()
                province.channel = None
            if province.node is not None:
                await province.node.stop(grace=0.5)
                province.node = None
            await province.simulator.stop()
            await province.fund_centre.stop()
            if province.certificate_library is not None:
                await province.certificate_library.stop()
            if province.case_system is not None:
                await province.case_system.stop()

    async def __aenter__(self) -> LocalFederation:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
