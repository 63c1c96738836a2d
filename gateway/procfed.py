"""A federation of real processes: simulator processes and `yrd-gateway serve` nodes
on loopback, each node startable, killable (SIGKILL) and restartable. Used by the
fault tests and the benchmarks, where nodes must run apart from the load generator."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.localfed import DEFAULT_CONFIG_DIR, free_port

SLUGS = {"310000": "shanghai", "320000": "jiangsu", "330000": "zhejiang", "340000": "anhui"}


@dataclass
class SimulatorProcess:
    province: str
    process: subprocess.Popen[str]
    eid_url: str
    fund_url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_simulator(province: str, keys_dir: Path, **delays: float) -> SimulatorProcess:
    args = [
        sys.executable,
        "-m",
        "adapters.simulators",
        "--province",
        province,
        "--eid-port",
        "0",
        "--fund-port",
        "0",
        "--keys-dir",
        str(keys_dir),
    ]
    for name, value in delays.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise RuntimeError(f"simulator {province} did not start")
    info = json.loads(line)
    return SimulatorProcess(province, process, info["eid_url"], info["fund_url"])


@dataclass
class NodeProcess:
    province: str
    config: Path
    endpoint: str
    log: Path
    ca: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    workers: int = 1

    @property
    def metrics_url(self) -> str:
        text = self.config.read_text(encoding="utf-8")
        return "http://" + text.split('metrics_endpoint = "', 1)[1].split('"', 1)[0] + "/metrics"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(self.config),
                    "--grace",
                    "1",
                    "--workers",
                    str(self.workers),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def wait_serving(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        credentials = grpc.ssl_channel_credentials(self.ca.read_bytes())
        with grpc.secure_channel(self.endpoint, credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
        tail = (
            self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
            if (self.log.exists())
            else ""
        )
        raise TimeoutError(f"node {self.province} not serving after {seconds} s; log:\n{tail}")

    def kill(self) -> None:
        """SIGKILL the node (with several workers: the workers too, then the supervisor)."""
        if self.process is not None and self.process.poll() is None:
            for child in self.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            self.process.kill()
            self.process.wait()
            self.kills += 1

    def children(self) -> list[int]:
        """Process ids of the worker processes (with --workers > 1)."""
        if self.process is None:
            return []
        found = []
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                text = status.read_text()
                for line in text.splitlines():
                    if line.startswith("PPid:") and int(line.split()[1]) == self.process.pid:
                        found.append(int(status.parent.name))
        return found

    def terminate(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@dataclass
class ProcessFederation:
    """Config copies with free ports, simulator processes, and node processes."""

    root: Path
    provinces: tuple[str, ...]
    simulators: dict[str, SimulatorProcess] = field(default_factory=dict)
    nodes: dict[str, NodeProcess] = field(default_factory=dict)

    def start(self, workers: dict[str, int] | None = None, **delays: float) -> ProcessFederation:
        configs = self.root / "province_configs"
        shutil.copytree(DEFAULT_CONFIG_DIR, configs, ignore=shutil.ignore_patterns("var"))
        for code in self.provinces:
            self.simulators[code] = start_simulator(code, configs / "keys", **delays)
        for code, slug in SLUGS.items():
            file = configs / f"{slug}.toml"
            text = file.read_text(encoding="utf-8")
            endpoint = f"127.0.0.1:{free_port()}"
            text = re.sub(r'\nendpoint = "[^"]+"', f'\nendpoint = "{endpoint}"', text, count=1)
            text = text.replace(
                "[node]\n", f'[node]\nmetrics_endpoint = "127.0.0.1:{free_port()}"\n', 1
            )
            text = re.sub(
                r'federation_endpoint = "[^"]+"',
                f'federation_endpoint = "127.0.0.1:{free_port()}"',
                text,
                count=1,
            )
            text = re.sub(
                r'store = "[^"]+"', f'store = "{self.root / "var" / code}"', text, count=1
            )
            if code in self.simulators:
                sim = self.simulators[code]
                text = re.sub(r'authority_url = "[^"]+"', f'authority_url = "{sim.eid_url}"', text)
                text = re.sub(r'centre_url = "[^"]+"', f'centre_url = "{sim.fund_url}"', text)
            file.write_text(text, encoding="utf-8")
            if code in self.provinces:
                self.nodes[code] = NodeProcess(
                    code,
                    file,
                    endpoint,
                    self.root / f"{code}.log",
                    configs / "keys" / "ca.crt.pem",
                    workers=(workers or {}).get(code, 1),
                )
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_serving()
        return self

    def client_channel(self, code: str, *, own_connection: bool = False) -> grpc.aio.Channel:
        """A local client's TLS channel to a node's public endpoint. ``own_connection``:
        not shared with other channels to it (several reach several workers)."""
        credentials = grpc.ssl_channel_credentials(self.nodes[code].ca.read_bytes())
        options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        return grpc.aio.secure_channel(self.nodes[code].endpoint, credentials, options=options)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.terminate()
        for simulator in self.simulators.values():
            simulator.stop()
