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
from concurrent.futures import ThreadPoolExecutor
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
    #: The e-certificate library and the case system (None: not served).
    cert_url: str | None = None
    case_url: str | None = None
    #: The arguments it was started with beyond the ports (to restart it alike).
    options: tuple[str, ...] = ()

    def ports(self) -> dict[str, int]:
        """Its listening ports by option name (``eid-port`` …), to start it again on them."""
        urls = {
            "eid-port": self.eid_url,
            "fund-port": self.fund_url,
            "cert-port": self.cert_url,
            "case-port": self.case_url,
        }
        return {name: int(url.rsplit(":", 1)[1]) for name, url in urls.items() if url}

    def kill(self) -> None:
        """SIGKILL it (a back-end that crashes); its in-memory state is gone."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

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
    return spawn_simulator(province, keys_dir, delays=delays)


def spawn_simulator(
    province: str,
    keys_dir: Path,
    *,
    ports: dict[str, int] | None = None,
    options: tuple[str, ...] = (),
    delays: dict[str, float] | None = None,
) -> SimulatorProcess:
    """Start a province's simulators; on ``ports`` (by option name, see
    :meth:`SimulatorProcess.ports`) instead of free ones; ``options`` passed as given."""
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
    for name, value in (delays or {}).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    for name, port in (ports or {}).items():
        args += [f"--{name}", str(port)]
    args += options
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise RuntimeError(f"simulator {province} did not start")
    info = json.loads(line)
    return SimulatorProcess(
        province,
        process,
        info["eid_url"],
        info["fund_url"],
        info.get("cert_url"),
        info.get("case_url"),
        options,
    )


def restart_simulator(
    simulator: SimulatorProcess, keys_dir: Path, **delays: float
) -> SimulatorProcess:
    """Start a stopped (or killed) simulator process again on the same ports, with the
    same options, so that the nodes' configured back-end URLs reach it again."""
    return spawn_simulator(
        simulator.province,
        keys_dir,
        ports=simulator.ports(),
        options=simulator.options,
        delays=delays,
    )


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
    def store_dir(self) -> Path:
        """The folder of its SQLite stores (``[node].store``, as written by the federation)."""
        text = self.config.read_text(encoding="utf-8")
        return Path(text.split('\nstore = "', 1)[1].split('"', 1)[0])

    @property
    def metrics_url(self) -> str:
        text = self.config.read_text(encoding="utf-8")
        return "http://" + text.split('metrics_endpoint = "', 1)[1].split('"', 1)[0] + "/metrics"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self.command(), stdout=subprocess.DEVNULL, stderr=log
            )

    def command(self) -> list[str]:
        """The command line that serves the node."""
        return [
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
        ]

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
    #: The class of the node processes (a subclass may start them differently).
    node_class: type[NodeProcess] = NodeProcess
    #: Options of each province's simulator process beyond ports and delays.
    simulator_options: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def start(self, workers: dict[str, int] | None = None, **delays: float) -> ProcessFederation:
        configs = self.root / "province_configs"
        shutil.copytree(DEFAULT_CONFIG_DIR, configs, ignore=shutil.ignore_patterns("var"))
        with ThreadPoolExecutor(max_workers=len(self.provinces) or 1) as pool:  # start together
            starting = {
                code: pool.submit(
                    spawn_simulator,
                    code,
                    configs / "keys",
                    options=self.simulator_options.get(code, ()),
                    delays=delays,
                )
                for code in self.provinces
            }
        failed = [error for f in starting.values() if (error := f.exception()) is not None]
        self.simulators.update(
            {code: f.result() for code, f in starting.items() if f.exception() is None}
        )
        if failed:
            raise failed[0]
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
                if sim.cert_url:
                    text = re.sub(r'library_url = "[^"]+"', f'library_url = "{sim.cert_url}"', text)
                if sim.case_url:
                    text = re.sub(r'system_url = "[^"]+"', f'system_url = "{sim.case_url}"', text)
            file.write_text(text, encoding="utf-8")
            if code in self.provinces:
                self.nodes[code] = self.node_class(
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
