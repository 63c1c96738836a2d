"""``yrd-gateway serve``: run one province's node, alone or as ``--workers``
processes under a supervisor.

The config is loaded before the node's modules are imported, so a node
refusing its config says so at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.common import EXIT_USAGE, Subparsers

if TYPE_CHECKING:
    import asyncio
    import subprocess

    from gateway.config.models import FederationConfig
    from gateway.server.node import Node, StoreLock

#: ``serve``'s exit code when the node refuses to start (a port it cannot bind,
#: a store it cannot open or lock, a key it cannot read, a broken message log).
EXIT_REFUSED = 3


def register(commands: Subparsers) -> None:
    serve = commands.add_parser("serve", help="run one province's node from its config file")
    serve.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="this province's TOML file; peers' files are read from its folder",
    )
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to bind (default: node.endpoint of the config)",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="seconds in-flight calls get to finish on SIGTERM (default 5)",
    )
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the node's ports (SO_REUSEPORT); one per core (default 1)",
    )
    serve.add_argument(
        "--continue-past-break",
        action="store_true",
        help="start although the message log is broken, recording in a new signed segment "
        "that the node continued past the break (audit verify reports both)",
    )
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    # From the supervisor to its workers: the store lock's open file, and that
    # the message log was checked already.
    serve.add_argument("--lock-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--log-checked", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--supervisor-pid", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=serve_command)


def _refused(message: str) -> int:
    print(f"yrd-gateway serve: {message}", file=sys.stderr, flush=True)
    return EXIT_REFUSED


def _load(config_file: str) -> FederationConfig | None:
    """The federation of ``--config``; None (and every problem on stderr) when refused."""
    from gateway.config.loading import load_federation
    from gateway.core.errors import ConfigError

    try:
        return load_federation(Path(config_file))
    except ConfigError as exc:
        print(f"configuration refused:\n{exc}", file=sys.stderr)
        return None


def serve_command(args: argparse.Namespace) -> int:
    if args.workers > 1 and args.worker_index is None:
        return _supervise(args)
    from gateway.core import logs

    logs.configure(args.log_level, cache=True)
    federation = _load(args.config)
    if federation is None:
        return EXIT_USAGE
    from gateway.server import eventloop
    from gateway.server.node import NodeStartError

    try:
        eventloop.run(_run_node(args, federation))
    except NodeStartError as exc:
        return _refused(str(exc))
    return 0


async def _run_node(args: argparse.Namespace, federation: FederationConfig) -> None:
    """Start the node, serve until SIGTERM/SIGINT (SIGHUP reloads), then drain."""
    import asyncio

    from gateway.server.node import Node

    node = Node(
        federation,
        listen=args.listen,
        grace=args.grace,
        config_file=Path(args.config),
        workers=args.workers,
        worker_index=args.worker_index or 0,
        continue_past_break=args.continue_past_break,
        check_log=not args.log_checked,
        lock_fd=args.lock_fd,
    )
    await node.start()
    from gateway.server.eventloop import settle_heap

    settle_heap()  # the long-lived heap out of every later full collection
    stop = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()  # held until done
    _handle_signals(node, stop, tasks)
    if args.supervisor_pid is not None:
        tasks.add(asyncio.create_task(_stop_when_orphaned(args.supervisor_pid, stop)))
    print(
        f"node {federation.own} ({federation.me.province.name}) serving on "
        f"{node.listen} (port {node.port})",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    await node.stop()


def _handle_signals(node: Node, stop: asyncio.Event, tasks: set[asyncio.Task[None]]) -> None:
    """SIGTERM and SIGINT set ``stop``; SIGHUP reloads the config from disk (a
    refused config is reported and the old one stays)."""
    import asyncio

    from gateway.core.errors import ConfigError

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def reload() -> None:
        try:
            await node.reload_from_disk()
        except ConfigError as exc:
            print(f"reload refused, the old config stays:\n{exc}", file=sys.stderr, flush=True)

    def on_hangup() -> None:
        task = asyncio.create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)


async def _stop_when_orphaned(supervisor: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (SIGKILL) stops too: it would hold the
    node's store lock and ports with no one to restart it."""
    import asyncio
    import contextlib

    while os.getppid() == supervisor:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
            return
    stop.set()


# ---- the supervisor of --workers N ---------------------------------------------------


def _supervise(args: argparse.Namespace) -> int:
    """Run ``--workers`` node processes on the same ports (SO_REUSEPORT).

    Before any worker starts, the supervisor locks the node's store folder (the
    workers inherit the lock), checks that its ports are free, checks the
    message log once and creates the state store (workers racing to create it
    on a fresh folder would find it locked). Signals are passed on to every worker (SIGTERM drains
    them, SIGHUP reloads them); a worker that dies unexpectedly is started
    again, unless it refused to start (then the node stops).
    """
    federation = _load(args.config)
    if federation is None:
        return EXIT_USAGE
    lock = _prepare(args, federation)
    if isinstance(lock, int):
        return lock
    try:
        return _Workers(args, lock).run()
    finally:
        lock.release()


def _prepare(args: argparse.Namespace, federation: FederationConfig) -> StoreLock | int:
    """The node's store lock, its ports probed free and its stores made ready;
    ``EXIT_REFUSED`` (one line on stderr, the lock released) when one is not."""
    import asyncio

    from gateway.server.node import NodeStartError, StoreLock, prepare_node_stores, probe_address

    node = federation.me.node
    try:
        lock = StoreLock.acquire(node.local_folder)
    except NodeStartError as exc:
        return _refused(str(exc))
    try:
        for address in (args.listen or node.endpoint, node.federation_endpoint):
            probe_address(address)
        asyncio.run(prepare_node_stores(federation, continue_past_break=args.continue_past_break))
    except NodeStartError as exc:
        lock.release()
        return _refused(str(exc))
    return lock


class _Workers:
    """The supervisor's worker processes: started, signalled, restarted."""

    def __init__(self, args: argparse.Namespace, lock: StoreLock) -> None:
        assert lock.fd is not None
        self.args = args
        self.lock_fd = lock.fd
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.restarts: list[float] = []

    def spawn(self, index: int) -> subprocess.Popen[bytes]:
        import subprocess

        args = self.args
        command = [
            *(sys.executable, "-m", "gateway", "serve", "--config", args.config),
            *("--grace", str(args.grace), "--log-level", args.log_level),
            *("--workers", str(args.workers), "--worker-index", str(index)),
            *("--lock-fd", str(self.lock_fd), "--log-checked"),
            *("--supervisor-pid", str(os.getpid())),
        ]
        if args.listen:
            command += ["--listen", args.listen]
        # S603: our own interpreter and module. The lock's open file is passed on.
        return subprocess.Popen(command, pass_fds=(self.lock_fd,))  # noqa: S603

    def forward(self, signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signum)

    def run(self) -> int:
        """Until SIGTERM/SIGINT: 0 when every worker then exited 0, 1 when not,
        ``EXIT_REFUSED`` when a worker refused to start."""
        import time

        self.processes = {index: self.spawn(index) for index in range(self.args.workers)}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.forward)
        while not self.stopping:
            time.sleep(0.2)
            if self.stopping:
                break
            for index, process in list(self.processes.items()):
                if process.poll() == EXIT_REFUSED:
                    print(f"worker {index} refused to start; stopping", file=sys.stderr, flush=True)
                    self.forward(signal.SIGTERM, None)
                    for other in self.processes.values():
                        other.wait()
                    return EXIT_REFUSED
                if process.poll() is not None and not self.restart(index, process):
                    break
        codes = [process.wait() for process in self.processes.values()]
        return 0 if all(code == 0 for code in codes) else 1

    def restart(self, index: int, process: subprocess.Popen[bytes]) -> bool:
        """Start a dead worker again; False (and every worker told to stop) when
        workers died more than 10 times within a minute."""
        import time

        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        if len(self.restarts) > 10:
            print("workers keep dying; stopping", file=sys.stderr)
            self.forward(signal.SIGTERM, None)
            return False
        print(
            f"worker {index} exited ({process.returncode}); starting it again",
            file=sys.stderr,
            flush=True,
        )
        self.processes[index] = self.spawn(index)
        return True
