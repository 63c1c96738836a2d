"""A federation of real processes: simulator processes and `yrd-gateway serve` nodes
on loopback, each node startable, killable (SIGKILL) and restartable. Used by the
fault tests and the benchmarks, where nodes must run apart from the load generator,
and by ``yrd-gateway up`` (:func:`run_up`), which runs the four provinces on fixed
ports (:func:`ports_for`) until Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.core.channels import balanced_aio_channel
from gateway.server.node import DIRECTORY_HEALTH
from gateway.testing.localfed import free_port, province_configs_dir

SLUGS = {"310000": "shanghai", "320000": "jiangsu", "330000": "zhejiang", "340000": "anhui"}


#: ``yrd-gateway up``'s default: the ports of the shipped province configs.
DEFAULT_BASE_PORT = 7300


@dataclass(frozen=True)
class Ports:
    """The fixed ports of one province under ``yrd-gateway up --base-port BASE``.

    Province k (the second digit of its code: Shanghai 1, Jiangsu 2, Zhejiang 3,
    Anhui 4) listens at BASE+10k (public, TLS + token), BASE+10k+1 (mutual TLS),
    BASE+10k+2 (metrics); its back-ends at BASE+1000+10k, +1, +2, +3 (e-ID
    authority, fund centre, certificate library, case system). BASE 7300 gives the
    shipped configs' ports: 7310, 7311, 8310-8313 for Shanghai.
    """

    public: int
    federation: int
    metrics: int
    eid: int
    fund: int
    cert: int
    case: int

    @property
    def console(self) -> int:
        """The web console (HTTPS): BASE+10k+9 (7319 for Shanghai)."""
        return self.public + 9

    def all(self) -> tuple[int, ...]:
        return (self.public, self.federation, self.metrics, self.console, *self.backends())

    def backends(self) -> tuple[int, int, int, int]:
        return (self.eid, self.fund, self.cert, self.case)


def ports_for(code: str, base: int = DEFAULT_BASE_PORT) -> Ports:
    node = base + 10 * int(code[1])
    backend = node + 1000
    return Ports(node, node + 1, node + 2, backend, backend + 1, backend + 2, backend + 3)


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
    #: Where its stderr goes (None: discarded).
    log: Path | None = None
    #: Not in the terminal's process group (``yrd-gateway up`` stops it itself).
    own_session: bool = False

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


def _port_options(ports: Ports) -> dict[str, int]:
    """The simulator's port options for a province's fixed back-end ports."""
    return {
        "eid-port": ports.eid,
        "fund-port": ports.fund,
        "cert-port": ports.cert,
        "case-port": ports.case,
    }


def start_simulator(
    province: str,
    keys_dir: Path,
    *,
    ports: Ports | None = None,
    log: Path | None = None,
    own_session: bool = False,
    **delays: float,
) -> SimulatorProcess:
    """Start a province's four simulated back-ends; ``ports`` fixed (else free ones),
    stderr to ``log`` (else discarded); ``own_session``: not in the terminal's process
    group, so that Ctrl-C reaches only the caller, which stops them in order."""
    return spawn_simulator(
        province,
        keys_dir,
        ports=_port_options(ports) if ports is not None else None,
        log=log,
        own_session=own_session,
        delays=delays,
    )


def spawn_simulator(
    province: str,
    keys_dir: Path,
    *,
    ports: dict[str, int] | None = None,
    options: tuple[str, ...] = (),
    delays: dict[str, float] | None = None,
    log: Path | None = None,
    own_session: bool = False,
) -> SimulatorProcess:
    """Start a province's simulators; on ``ports`` (by option name, see
    :meth:`SimulatorProcess.ports`) instead of free ones; ``options`` passed as given."""
    process = _spawn_simulator(
        province,
        keys_dir,
        ports=ports,
        options=options,
        delays=delays,
        log=log,
        own_session=own_session,
    )
    return _announced(province, process, options=options, log=log, own_session=own_session)


def _spawn_simulator(
    province: str,
    keys_dir: Path,
    *,
    ports: dict[str, int] | None,
    options: tuple[str, ...],
    delays: dict[str, float] | None,
    log: Path | None,
    own_session: bool,
) -> subprocess.Popen[str]:
    chosen = {"eid-port": 0, "fund-port": 0, "cert-port": 0, "case-port": 0, **(ports or {})}
    args = [sys.executable, "-m", "yrd_simulators", "--province", province]
    for name, port in chosen.items():
        args += [f"--{name}", str(port)]
    args += ["--keys-dir", str(keys_dir)]
    for name, value in (delays or {}).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    args += options
    with contextlib.ExitStack() as files:
        stderr = files.enter_context(log.open("ab")) if log is not None else subprocess.DEVNULL
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
            args,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=own_session,
        )


def _announced(
    province: str,
    process: subprocess.Popen[str],
    *,
    options: tuple[str, ...] = (),
    log: Path | None = None,
    own_session: bool = False,
) -> SimulatorProcess:
    """The simulator once it has printed its URLs (it serves from then on)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.kill()
        process.wait()
        where = f"; see {log}" if log is not None else ""
        raise RuntimeError(f"simulator {province} did not start{where}")
    info = json.loads(line)
    return SimulatorProcess(
        province,
        process,
        info["eid_url"],
        info["fund_url"],
        info.get("cert_url"),
        info.get("case_url"),
        options=options,
        log=log,
        own_session=own_session,
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
        log=simulator.log,
        own_session=simulator.own_session,
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
    #: Not in the terminal's process group (``yrd-gateway up`` stops it itself).
    own_session: bool = False
    #: Which replica of its province it is (1 .. replicas).
    replica: int = 1

    @property
    def store_dir(self) -> Path | str:
        """The folder of its SQLite stores, or the database URL its replicas share
        (``[node].store``, as written by the federation)."""
        text = self.config.read_text(encoding="utf-8")
        store = text.split('\nstore = "', 1)[1].split('"', 1)[0]
        return store if "://" in store else Path(store)

    @property
    def metrics_url(self) -> str:
        text = self.config.read_text(encoding="utf-8")
        return "http://" + text.split('metrics_endpoint = "', 1)[1].split('"', 1)[0] + "/metrics"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self.command(),
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=self.own_session,
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

    def wait_serving(self, seconds: float = 60, *, service: str = "") -> None:
        """Until health says SERVING (for ``service``: "" the node, ``yrd.directory``
        every peer's descriptor held)."""
        deadline = time.monotonic() + seconds
        credentials = grpc.ssl_channel_credentials(self.ca.read_bytes())
        with grpc.secure_channel(self.endpoint, credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    request = health_pb2.HealthCheckRequest(service=service)
                    if stub.Check(request, timeout=1).status == 1:
                        return
                    time.sleep(0.1)
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
    """Config copies with free ports, simulator processes, and node processes.

    ``base_port``: the fixed ports of :func:`ports_for` instead of free ones.
    ``province_dirs``: ``yrd-gateway up``'s layout, ``root/<code>/`` holding
    ``node.log``, ``backends.log`` and ``store/``, the config copies regenerated at
    each start (the stores kept), and every process in a session of its own.
    Otherwise (tests, bench) ``root/<code>.log``, ``root/var/<code>/``."""

    root: Path
    provinces: tuple[str, ...]
    simulators: dict[str, SimulatorProcess] = field(default_factory=dict)
    nodes: dict[str, NodeProcess] = field(default_factory=dict)
    #: The class of the node processes (a subclass may start them differently).
    node_class: type[NodeProcess] = NodeProcess
    #: Options of each province's simulator process beyond ports and delays.
    simulator_options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    base_port: int | None = None
    province_dirs: bool = False
    #: The province configs copied at start (default: :func:`province_configs_dir`).
    configs: Path | None = None
    #: Provinces whose stores are a PostgreSQL database (code -> URL, made by the
    #: caller); their node may run as several replicas sharing it.
    databases: dict[str, str] = field(default_factory=dict)
    #: Replicas per province (default 1): each its own process, ports and
    #: local_dir, the province's published_endpoints listing all of them.
    replicas: dict[str, int] = field(default_factory=dict)
    #: Every replica of each province started (``replica_nodes[code][0]`` is
    #: ``nodes[code]``, the replica peers bootstrap from).
    replica_nodes: dict[str, list[NodeProcess]] = field(default_factory=dict)

    @property
    def config_dir(self) -> Path:
        return self.root / "province_configs"

    def store_dir(self, code: str) -> Path:
        return self.root / code / "store" if self.province_dirs else self.root / "var" / code

    def node_log(self, code: str) -> Path:
        return self.root / code / "node.log" if self.province_dirs else self.root / f"{code}.log"

    def backends_log(self, code: str) -> Path | None:
        return self.root / code / "backends.log" if self.province_dirs else None

    def start(self, workers: dict[str, int] | None = None, **delays: float) -> ProcessFederation:
        configs = self.config_dir
        if self.province_dirs:
            shutil.rmtree(configs, ignore_errors=True)
            for code in self.provinces:
                (self.root / code).mkdir(parents=True, exist_ok=True)
        source = province_configs_dir(self.configs)
        # Only the provinces' own folders: each node is given its own, and no copy
        # of the federation CA's private key (federation-ca/) is made.
        shutil.copytree(
            source,
            configs,
            ignore=lambda folder, names: [
                name
                for name in names
                if name == "var"
                or (Path(folder) == source and not (source / name / "province.toml").exists())
            ],
        )
        fixed = {
            code: ports_for(code, self.base_port) for code in SLUGS if self.base_port is not None
        }
        spawned = {  # all at once: each takes a while to import
            code: _spawn_simulator(
                code,
                configs / code / "keys",
                ports=_port_options(fixed[code]) if code in fixed else None,
                options=self.simulator_options.get(code, ()),
                delays=delays,
                log=self.backends_log(code),
                own_session=self.province_dirs,
            )
            for code in self.provinces
        }
        try:
            for code, process in spawned.items():
                self.simulators[code] = _announced(
                    code,
                    process,
                    options=self.simulator_options.get(code, ()),
                    log=self.backends_log(code),
                    own_session=self.province_dirs,
                )
        except RuntimeError:
            for process in spawned.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
                if process.stdout is not None:
                    process.stdout.close()
            raise
        taken: set[int] = set()
        federation_endpoints = {
            code: f"127.0.0.1:{fixed[code].federation if code in fixed else _reserve(taken)}"
            for code in SLUGS
        }
        for code in SLUGS:
            file = configs / code / "province.toml"
            text = file.read_text(encoding="utf-8")
            ports = fixed.get(code)
            # Worker i of a node serves metrics on the metrics port + i.
            workers_of = (workers or {}).get(code, 1)
            endpoint = f"127.0.0.1:{ports.public if ports else _reserve(taken)}"
            metrics = f"127.0.0.1:{ports.metrics if ports else _reserve(taken, workers_of)}"
            peers = federation_endpoints[code]
            # Each node names its peers' federation endpoints (bootstrap); the rest
            # of what it knows of them comes from their descriptors.
            text = re.sub(
                r'(\[\[peers\]\]\ncode = "([0-9]{6})"[^\n]*\nendpoint = ")[^"]+"',
                lambda m: f'{m.group(1)}{federation_endpoints.get(m.group(2), "127.0.0.1:1")}"',
                text,
            )
            text = re.sub(r'\nendpoint = "[^"]+"', f'\nendpoint = "{endpoint}"', text, count=1)
            text = text.replace("[node]\n", f'[node]\nmetrics_endpoint = "{metrics}"\n', 1)
            text = re.sub(
                r'federation_endpoint = "[^"]+"', f'federation_endpoint = "{peers}"', text, count=1
            )
            if ports is not None:  # yrd-gateway up: each node's web console on a fixed port
                text += f'\n[console]\nendpoint = "127.0.0.1:{ports.console}"\n'
            store = self.databases.get(code) or str(self.store_dir(code))
            text = re.sub(r'store = "[^"]+"', f'store = "{store}"', text, count=1)
            if code in self.simulators:
                sim = self.simulators[code]
                text = re.sub(r'authority_url = "[^"]+"', f'authority_url = "{sim.eid_url}"', text)
                text = re.sub(r'centre_url = "[^"]+"', f'centre_url = "{sim.fund_url}"', text)
                if sim.cert_url is not None:
                    text = re.sub(r'library_url = "[^"]+"', f'library_url = "{sim.cert_url}"', text)
                if sim.case_url is not None:
                    text = re.sub(r'system_url = "[^"]+"', f'system_url = "{sim.case_url}"', text)
            count = self.replicas.get(code, 1) if code in self.provinces else 1
            replicas = [(file, endpoint, peers, metrics)] + [
                (
                    configs / code / f"province-r{r}.toml",
                    f"127.0.0.1:{_reserve(taken)}",
                    f"127.0.0.1:{_reserve(taken)}",
                    f"127.0.0.1:{_reserve(taken, workers_of)}",
                )
                for r in range(2, count + 1)
            ]
            if count > 1:
                published = ", ".join(f'"{fed}"' for _, _, fed, _ in replicas)
                text = text.replace("[node]\n", f"[node]\npublished_endpoints = [{published}]\n", 1)
            for r, (path, public, fed, metrics_at) in enumerate(replicas, start=1):
                own = text
                if r > 1:
                    own = re.sub(r'\nendpoint = "[^"]+"', f'\nendpoint = "{public}"', own, count=1)
                    own = re.sub(
                        r'federation_endpoint = "[^"]+"',
                        f'federation_endpoint = "{fed}"',
                        own,
                        count=1,
                    )
                    own = re.sub(
                        r'metrics_endpoint = "[^"]+"',
                        f'metrics_endpoint = "{metrics_at}"',
                        own,
                        count=1,
                    )
                if code in self.databases:
                    local = self.root / "local" / f"{code}-{r}"
                    own = own.replace(
                        "[node]\n", f'[node]\nreplica = "{r}"\nlocal_dir = "{local}"\n', 1
                    )
                path.write_text(own, encoding="utf-8")
                if code in self.provinces:
                    node = self.node_class(
                        code,
                        path,
                        public,
                        self.node_log(code)
                        if r == 1
                        else self.node_log(code).with_suffix(f".r{r}.log"),
                        configs / code / "keys" / "ca.crt.pem",
                        workers=workers_of,
                        own_session=self.province_dirs,
                        replica=r,
                    )
                    self.replica_nodes.setdefault(code, []).append(node)
                    if r == 1:
                        self.nodes[code] = node
        every = [node for replicas in self.replica_nodes.values() for node in replicas]
        # The first replica of each province first: it creates the database's
        # tables, then the others join (replicas racing on an empty database's
        # first migration can collide; see the report of issue 15).
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_serving()
        for node in every:
            if node.process is None:
                node.start()
        for node in every:
            node.wait_serving()
        if len(self.nodes) == len(SLUGS):
            for node in every:
                node.wait_serving(service=DIRECTORY_HEALTH)  # every peer's descriptor held
        return self

    def client_channel(self, code: str, *, own_connection: bool = False) -> grpc.aio.Channel:
        """A local client's TLS channel to a node's public endpoint. ``own_connection``:
        not shared with other channels to it (several reach several workers)."""
        credentials = grpc.ssl_channel_credentials(self.nodes[code].ca.read_bytes())
        options: list[tuple[str, Any]] = (
            [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        )
        replicas = self.replica_nodes.get(code, [self.nodes[code]])
        if len(replicas) == 1:
            return grpc.aio.secure_channel(self.nodes[code].endpoint, credentials, options=options)
        # Several replicas: one channel over all of them, gRPC's own round_robin
        # with health checking (a dead replica costs at most a retry).
        return balanced_aio_channel(
            [node.endpoint for node in replicas], credentials, options=options
        )

    def stop(self) -> None:
        for replicas in self.replica_nodes.values():
            for node in replicas[1:]:
                node.terminate()
        for node in self.nodes.values():
            node.terminate()
        for simulator in self.simulators.values():
            simulator.stop()


def _reserve(taken: set[int], count: int = 1) -> int:
    """A port p such that p .. p+count-1 are free now and none was handed out before
    from ``taken`` (which records them): the ports of one start never collide."""
    while True:
        port = free_port()
        block = range(port, port + count)
        if not taken.intersection(block) and all(_port_free(p) for p in block[1:]):
            taken.update(block)
            return port


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def busy_ports(base_port: int) -> list[int]:
    """The ports of ``yrd-gateway up --base-port base_port`` that something already holds."""
    return [
        port for code in SLUGS for port in ports_for(code, base_port).all() if not _port_free(port)
    ]


def _rows(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def up_table(run_dir: Path, base_port: int) -> str:
    """What ``yrd-gateway up`` prints once every node serves: endpoints, back-ends,
    logs and stores (``run_dir`` as the user gave it), and how to try it."""
    names = {code: slug.capitalize() for code, slug in SLUGS.items()}
    ports = {code: ports_for(code, base_port) for code in SLUGS}
    url = "http://127.0.0.1:{}".format
    endpoints = _rows(
        ("province", "public endpoint (TLS + token)", "mutual TLS endpoint", "metrics"),
        [
            (
                f"{code} {names[code]}",
                f"127.0.0.1:{p.public}",
                f"127.0.0.1:{p.federation}",
                url(p.metrics) + "/metrics",
            )
            for code, p in ports.items()
        ],
    )
    backends = _rows(
        ("back-ends", "e-ID authority", "fund centre", "certificate library", "case system"),
        [(code, *(url(port) for port in p.backends())) for code, p in ports.items()],
    )
    files = _rows(
        ("files", "node log", "back-ends log", "store (messages.db, state.db)"),
        [
            (
                code,
                str(run_dir / code / "node.log"),
                str(run_dir / code / "backends.log"),
                str(run_dir / code / "store") + "/",
            )
            for code in SLUGS
        ],
    )
    zj, js, sh, ah = ports["330000"], ports["320000"], ports["310000"], ports["340000"]
    node = f"--node 127.0.0.1:{sh.public}"
    lines = [
        *endpoints,
        "",
        *backends,
        "",
        *files,
        "",
        f"CA certificate: {run_dir / 'province_configs' / '<code>' / 'keys' / 'ca.crt.pem'} "
        "(each province's copy of province_configs/federation-ca/ca.crt.pem); "
        "tokens: dev-hotel-<code>, dev-office-<code>",
        "Web consoles (log in with the admin token dev-office-<code>): "
        + ", ".join(f"{code} https://127.0.0.1:{p.console}/" for code, p in ports.items()),
        "Synthetic residents of Zhejiang, and a fresh QR code (single use, valid 120 s):",
        f"  curl -s {url(zj.eid)}/residents",
        f'  curl -s -X POST {url(zj.eid)}/wallet/qr -d \'{{"credential_id": "<credential_id>"}}\'',
        f"Jiangsu fund accounts: curl -s {url(js.fund)}/admin/accounts",
        "Examples (README, 'Calling a node'):",
        f"  .venv/bin/python examples/hotel_checkin.py {node} --eid-url {url(zj.eid)}",
        f"  .venv/bin/python examples/fund_withdrawal.py {node} "
        f"--fund-url {url(js.fund)} --eid-url {url(sh.eid)}",
        f"  .venv/bin/python examples/certificate_fetch.py {node} --library-url {url(ah.cert)}",
        f"  .venv/bin/python examples/service_case.py --node 127.0.0.1:{js.public} "
        f"--eid-url {url(js.eid)}",
    ]
    return "\n".join(lines)


def run_up(
    run_dir: Path,
    base_port: int = DEFAULT_BASE_PORT,
    *,
    fresh: bool = False,
    configs: Path | None = None,
) -> int:
    """``yrd-gateway up``: the four provinces' back-ends and nodes as separate processes
    on :func:`ports_for` ports until SIGINT/SIGTERM; then every node drains (SIGTERM),
    then the back-ends stop. 0 when everything stopped cleanly, 1 when something failed
    or exited on its own, 2 when a port is taken."""
    if not 1024 <= base_port <= 65535 - 1043:
        print(f"--base-port: expected 1024..{65535 - 1043}, got {base_port}", file=sys.stderr)
        return 2
    busy = busy_ports(base_port)
    if busy:
        print(
            f"ports already in use: {', '.join(map(str, busy))} (another `yrd-gateway up`, "
            "or `make demo`?); stop it, or pass --base-port",
            file=sys.stderr,
        )
        return 2
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    federation = ProcessFederation(
        run_dir.resolve(), tuple(SLUGS), base_port=base_port, province_dirs=True, configs=configs
    )
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    result = 0
    try:
        print(
            f"starting 4 provinces' back-ends and nodes (logs and stores: {run_dir}/<code>/)",
            flush=True,
        )
        federation.start()
        if not stopping:
            print(up_table(run_dir, base_port))
            print("ready: 4 nodes serving; Ctrl-C stops them", flush=True)
        while not stopping:
            time.sleep(0.2)
            gone = [
                f"node {code} (see {run_dir / code / 'node.log'})"
                for code, node in federation.nodes.items()
                if node.process is not None and node.process.poll() is not None
            ] + [
                f"back-ends {code} (see {run_dir / code / 'backends.log'})"
                for code, sim in federation.simulators.items()
                if sim.process.poll() is not None
            ]
            if gone:
                print(f"exited on their own: {'; '.join(gone)}", file=sys.stderr)
                result = 1
                break
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"the federation did not start: {exc}", file=sys.stderr)
        result = 1
    finally:
        print("stopping: nodes drain, then the back-ends stop", flush=True)
        if _stop_in_order(federation) != 0:
            result = 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"stopped; logs and stores kept in {run_dir}/", flush=True)
    return result


def _stop_in_order(federation: ProcessFederation) -> int:
    """SIGTERM every node at once, wait for each (15 s, then SIGKILL), then the
    simulators. 0 when every node exited 0."""
    running = [
        node.process
        for node in federation.nodes.values()
        if node.process is not None and node.process.poll() is None
    ]
    for process in running:
        process.send_signal(signal.SIGTERM)
    failed = 0
    for process in running:
        try:
            failed |= process.wait(timeout=15) != 0
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            failed = 1
    for simulator in federation.simulators.values():
        simulator.stop()
    return failed
