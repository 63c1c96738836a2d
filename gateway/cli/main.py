"""``yrd-gateway``: serve a node, run the local demo, make development keys,
check configs, verify a message log.

Every command has ``--help``. Exit codes: 0 success, 1 a check failed, 2 bad
usage or configuration, 3 ``serve`` refused to start (one line on stderr says why).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.server import eventloop

if TYPE_CHECKING:
    from gateway.config.models import ProvinceConfig
    from gateway.storage.messagelog import MessageLog

PROVINCE_CODES = ["310000", "320000", "330000", "340000"]


#: ``serve``'s exit code when the node refuses to start (a port it cannot bind,
#: a store it cannot open or lock, a key it cannot read, a broken message log).
EXIT_REFUSED = 3


def _refused(message: str) -> int:
    print(f"yrd-gateway serve: {message}", file=sys.stderr, flush=True)
    return EXIT_REFUSED


def _supervise(args: argparse.Namespace) -> int:
    """Run ``--workers`` node processes on the same ports (SO_REUSEPORT).

    Before any worker starts, the supervisor locks the node's store folder (the
    workers inherit the lock), checks that its ports are free, checks the
    message log once and creates the state store (workers racing to create it
    on a fresh folder would find it locked). Signals are passed on to every worker (SIGTERM drains
    them, SIGHUP reloads them); a worker that dies unexpectedly is started
    again, unless it refused to start (then the node stops).
    """
    import subprocess
    import time

    from gateway.config.models import load_federation
    from gateway.core.errors import ConfigError
    from gateway.server.node import NodeStartError, StoreLock, prepare_node_stores, probe_address

    try:
        federation = load_federation(Path(args.config))
    except ConfigError as exc:
        print(f"configuration refused:\n{exc}", file=sys.stderr)
        return 2
    node = federation.me.node
    try:
        lock = StoreLock.acquire(node.store)
    except NodeStartError as exc:
        return _refused(str(exc))
    for address in (args.listen or node.endpoint, node.federation_endpoint):
        try:
            probe_address(address)
        except NodeStartError as exc:
            lock.release()
            return _refused(str(exc))
    try:
        asyncio.run(prepare_node_stores(federation, continue_past_break=args.continue_past_break))
    except NodeStartError as exc:
        lock.release()
        return _refused(str(exc))
    lock_fd = lock.fd
    assert lock_fd is not None

    def spawn(index: int) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            args.config,
            "--grace",
            str(args.grace),
            "--log-level",
            args.log_level,
            "--workers",
            str(args.workers),
            "--worker-index",
            str(index),
            "--lock-fd",
            str(lock_fd),
            "--log-checked",
            "--supervisor-pid",
            str(os.getpid()),
        ]
        if args.listen:
            command += ["--listen", args.listen]
        # S603: our own interpreter and module. The lock's open file is passed on.
        return subprocess.Popen(command, pass_fds=(lock_fd,))  # noqa: S603

    workers = {index: spawn(index) for index in range(args.workers)}
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for process in workers.values():
            if process.poll() is None:
                process.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    restarts: list[float] = []
    while True:
        time.sleep(0.2)
        if stopping:
            break
        for index, process in list(workers.items()):
            if process.poll() == EXIT_REFUSED:
                print(f"worker {index} refused to start; stopping", file=sys.stderr, flush=True)
                forward(signal.SIGTERM, None)
                for other in workers.values():
                    other.wait()
                lock.release()
                return EXIT_REFUSED
            if process.poll() is not None:
                restarts = [t for t in restarts if time.monotonic() - t < 60] + [time.monotonic()]
                if len(restarts) > 10:
                    print("workers keep dying; stopping", file=sys.stderr)
                    forward(signal.SIGTERM, None)
                    break
                print(
                    f"worker {index} exited ({process.returncode}); starting it again",
                    file=sys.stderr,
                    flush=True,
                )
                workers[index] = spawn(index)
    codes = [process.wait() for process in workers.values()]
    lock.release()
    return 0 if all(code == 0 for code in codes) else 1


def _serve(args: argparse.Namespace) -> int:
    from gateway.config.models import load_federation
    from gateway.core import logs
    from gateway.core.errors import ConfigError
    from gateway.server.node import Node, NodeStartError

    if args.workers > 1 and args.worker_index is None:
        return _supervise(args)
    logs.configure(args.log_level, cache=True)
    try:
        federation = load_federation(Path(args.config))
    except ConfigError as exc:
        print(f"configuration refused:\n{exc}", file=sys.stderr)
        return 2

    async def run() -> None:
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
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        reloads: set[asyncio.Task[None]] = set()

        async def reload() -> None:
            try:
                await node.reload_from_disk()
            except ConfigError as exc:
                print(f"reload refused, the old config stays:\n{exc}", file=sys.stderr, flush=True)

        def on_hangup() -> None:
            task = asyncio.create_task(reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        if args.supervisor_pid is not None:
            # A worker whose supervisor died (SIGKILL) stops too: it would hold
            # the node's store lock and ports with no one to restart it.
            supervisor = args.supervisor_pid

            async def orphaned() -> None:
                while os.getppid() == supervisor:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)
                        return
                stop.set()

            reloads.add(asyncio.create_task(orphaned()))
        print(
            f"node {federation.own} ({federation.me.province.name}) serving on "
            f"{node.listen} (port {node.port})",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        await node.stop()

    try:
        eventloop.run(run())
    except NodeStartError as exc:
        return _refused(str(exc))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.tools.demo import main

    return main(
        Path(args.config_dir) if args.config_dir else None,
        Path(args.log_file) if args.log_file else None,
    )


def _up(args: argparse.Namespace) -> int:
    try:
        from gateway.testing.procfed import run_up
    except KeyboardInterrupt:  # Ctrl-C while importing: nothing was started yet
        return 130
    return run_up(Path(args.run_dir), args.base_port, fresh=args.fresh)


def _pki_init(args: argparse.Namespace) -> int:
    from gateway.tools.pki import init_keys, init_tls

    directory = Path(args.directory)
    for key in init_keys(directory, args.provinces, overwrite=args.overwrite):
        print(f"{key.province}  {key.kind:<11} {key.public_path}  sha256:{key.fingerprint}")
    for cert in init_tls(directory, args.provinces, overwrite=args.overwrite):
        print(
            f"{cert.province or 'CA':<6}  {cert.kind:<11} {cert.certificate_path}  "
            f"certificate sha256:{cert.fingerprint}"
        )
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from gateway.config.models import check_files

    problems = check_files([Path(f) for f in args.files])
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {len(args.files)} file(s)")
        return 1
    print(f"{len(args.files)} file(s) valid")
    return 0


def _adapter_test(args: argparse.Namespace) -> int:
    from gateway.cli.adapter import adapter_test

    return adapter_test(
        [Path(f) for f in args.configs],
        vectors=Path(args.vectors) if args.vectors else None,
        examples=args.examples,
    )


def _log_verify(args: argparse.Namespace) -> int:
    from gateway.storage.messagelog import HeadKeys, verify_file

    path = Path(args.database)
    if not path.exists():
        print(f"{path}: no such message log", file=sys.stderr)
        return 2
    keys: HeadKeys | None = None
    if getattr(args, "config", None):
        from gateway.config.models import load_federation
        from gateway.trust.truststore import TrustStore

        keys = TrustStore(load_federation(Path(args.config))).head_key
    report = asyncio.run(verify_file(path, keys))
    print(
        f"{'intact' if report.intact else 'BROKEN'}: {report.detail}; "
        f"{report.rows_checked} rows checked; head {report.head_hash.hex()}"
    )
    return 0 if report.intact else 1


def _bench(args: argparse.Namespace) -> int:
    from gateway.tools.bench import bench_fund, bench_identity

    if args.smoke:  # a short run of every measurement: figures, not targets
        args.seconds, args.concurrency, args.soak = 1.0, 8, 200
        args.count, args.paid_count, args.rate = 50, 20, 10.0
    baseline_rps = None
    if args.target in ("identity", "all"):
        identity = bench_identity(
            seconds=args.seconds,
            concurrency=args.concurrency,
            soak=args.soak,
            workers=args.workers,
        )
        print(identity.render(), flush=True)
        baseline_rps = identity.baseline.saturation_rps
    if args.target in ("fund", "all"):
        print(
            bench_fund(
                count=args.count,
                concurrency=args.concurrency,
                paid_count=args.paid_count,
                rate=args.rate,
                seconds=args.seconds,
                workers=args.workers,
                baseline_rps=baseline_rps,
            ).render(),
            flush=True,
        )
    return 0


def _soak(args: argparse.Namespace) -> int:
    import dataclasses

    from gateway.tools.soak import SoakConfig, main

    names = ("withdrawals", "cases", "seconds", "kill_interval", "disk_fault_interval")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    for name, value in given.items():
        if value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')}: expected a positive number")
    config = SoakConfig.smoke(args.seed) if args.smoke else SoakConfig(seed=args.seed)
    return main(dataclasses.replace(config, **given), keep=args.keep)


def _audit_export(args: argparse.Namespace) -> int:
    from gateway.config.models import load_federation
    from gateway.storage import evidence as audit

    federation = load_federation(Path(args.config))
    database = Path(args.db) if args.db else federation.me.node.store / "messages.db"
    try:
        evidence = asyncio.run(audit.export(database, args.message_id, federation))
    except audit.EvidenceError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    out = Path(args.out or f"evidence-{args.message_id}.json")
    audit.write(evidence, out)
    print(
        f"wrote {out}: {len(evidence['envelopes'])} envelopes, "
        f"{len(evidence['chain']['rows'])} chain rows, head at row {evidence['head']['head_seq']}"
    )
    return 0


def _audit_check(args: argparse.Namespace) -> int:
    import json

    from gateway.storage import evidence as audit

    try:
        evidence = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"{args.file}: cannot be read as evidence: {exc}", file=sys.stderr)
        return 2
    passed, problems = audit.check(evidence)
    for line in passed:
        print(f"ok    {line}")
    for line in problems:
        print(f"FAIL  {line}")
    print(
        "evidence holds" if not problems else f"evidence does NOT hold: {len(problems)} problem(s)"
    )
    return 0 if not problems else 1


# ---- outbox: list, retry and park deliveries (an operator's commands) -----------


def _node_stores(config_file: str) -> tuple[ProvinceConfig, Path] | None:
    """(the node's own config, its store folder) for an operator's command; None
    (and a message) when the config or its state store cannot be used."""
    from gateway.config.models import parse_province_file
    from gateway.core.errors import ConfigError

    try:
        config = parse_province_file(Path(config_file))
    except ConfigError as exc:
        print(f"configuration refused:\n{exc}", file=sys.stderr)
        return None
    if not (config.node.store / "state.db").is_file():
        print(
            f"no state store in {config.node.store} (node.store of {config_file})", file=sys.stderr
        )
        return None
    return config, config.node.store


def _operator_log(me: ProvinceConfig, folder: Path) -> MessageLog:
    """The node's message log, opened to record operator actions signed with the
    node's current envelope key (as its chain heads are)."""
    from gateway.core.clock import SystemClock
    from gateway.storage.messagelog import MessageLog
    from gateway.trust.envelope import EnvelopeSigner

    signer = EnvelopeSigner.from_config(me, SystemClock())

    def sign(statement: bytes) -> tuple[str, bytes]:
        key_id, key = signer.current()
        return key_id, key.sign(statement)

    return MessageLog(folder / "messages.db", province=me.code, head_signer=sign)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _outbox_list(args: argparse.Namespace) -> int:
    import time

    from gateway.storage.state import PARKED, OutboxEntry, StateStore

    if args.reconciliation:
        return _outbox_list_reconciliation(args)
    found = _node_stores(args.config)
    if found is None:
        return 2

    async def read() -> list[OutboxEntry]:
        async with StateStore(found[1] / "state.db") as store:
            return await store.outbox_entries(state=PARKED if args.parked else None)

    entries = asyncio.run(read())
    now = time.time()
    header = ("REFERENCE", "PEER", "SERVICE", "STATE", "ATTEMPTS", "AGE", "NEXT", "LAST ERROR")
    rows = [header]
    for e in entries:
        rows.append(
            (
                e.subject,
                e.peer,
                e.service,
                e.state,
                str(e.attempts),
                _age(now - e.created_at),
                "-" if e.state == PARKED else _age(e.next_attempt_at - now),
                e.last_error or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    print(f"{len(entries)} item(s)", file=sys.stderr)
    return 0


def _outbox_steer(args: argparse.Namespace) -> int:
    """``outbox retry`` / ``outbox park``: change the items of REF, log each change."""
    import time

    from gateway.storage.state import PARKED, PENDING, StateStore

    found = _node_stores(args.config)
    if found is None:
        return 2
    me, folder = found
    action = args.outbox_command
    target, source = (PENDING, PARKED) if action == "retry" else (PARKED, PENDING)
    operator = _operator_name(args.operator)
    if operator is None:
        return 2

    async def steer() -> tuple[int, int]:
        async with StateStore(folder / "state.db") as store, _operator_log(me, folder) as log:
            entries = await store.outbox_entries(reference=args.reference)
            changed = 0
            for entry in entries:
                if entry.state != source:
                    continue
                if await store.set_outbox_state(entry.id, target, now=time.time()):
                    await log.append_operator_action(
                        action=action,
                        subject=entry.message_id,
                        operator=operator,
                        reason=args.reason or f"{entry.service} of {entry.subject} to {entry.peer}",
                    )
                    changed += 1
                    print(f"{action}: {entry.subject} {entry.service} -> {entry.peer} ({target})")
            return len(entries), changed

    items, changed = asyncio.run(steer())
    if items == 0:
        print(f"no outbox item for {args.reference!r}", file=sys.stderr)
        return 1
    if changed == 0:
        print(f"no {source} outbox item for {args.reference!r}", file=sys.stderr)
        return 1
    return 0


# ---- outbox: money-moving cases in reconciliation -----------------------------------


def _outbox_list_reconciliation(args: argparse.Namespace) -> int:
    from gateway.services.case import SERVICE_CASE
    from gateway.services.fund import WITHDRAWAL
    from gateway.storage.state import StateStore

    found = _node_stores(args.config)
    if found is None:
        return 2
    names = {f.domain: f.status_name for f in (WITHDRAWAL, SERVICE_CASE)}

    async def run() -> int:
        async with StateStore(found[1] / "state.db") as store:
            cases = await store.reconciliation_cases()
        print(f"{len(cases)} case(s) in reconciliation")
        if cases:
            print(f"{'REFERENCE':<34} {'DOMAIN':<10} {'SENDER':<7} {'SINCE':<32} LAST STATUS")
        for case in cases:
            status = names[case.domain](case.status) if case.domain in names else str(case.status)
            print(
                f"{case.reference:<34} {case.domain:<10} {case.sender:<7} {case.since:<32} {status}"
            )
        return 0

    return eventloop.run(run())


def _outbox_resolve(args: argparse.Namespace) -> int:
    from gateway.core.clock import SystemClock
    from gateway.core.errors import GatewayError
    from gateway.services.case import SERVICE_CASE
    from gateway.services.fund import WITHDRAWAL
    from gateway.services.tracked import pending_reconciliation, resolve_reconciliation
    from gateway.storage.state import StateStore

    operator = _operator_name(args.operator)
    if operator is None:
        return 2
    found = _node_stores(args.config)
    if found is None:
        return 2
    me, folder = found
    flows = {f.domain: f for f in (WITHDRAWAL, SERVICE_CASE)}
    action = "resolve_paid" if args.paid else "resolve_not_paid"

    async def run() -> str:
        async with StateStore(folder / "state.db") as store:
            case = await pending_reconciliation(store, args.reference)
            flow = flows[case.domain]
            if args.paid and not flow.moves_money:
                return f"--paid: a {flow.domain} moves no money; use --not-paid"
            # The operator's statement is logged first: what follows rests on it.
            async with _operator_log(me, folder) as log:
                seq = await log.append_operator_action(
                    action=action, subject=args.reference, operator=operator, reason=args.reason
                )
            status = await resolve_reconciliation(
                store, flow, args.reference, paid=args.paid, clock=SystemClock()
            )
            if args.paid:
                print(
                    f"{args.reference}: {flow.status_name(status)} recorded; status updates"
                    f" queued for {case.sender}; message log row {seq}"
                )
            else:
                print(
                    f"{args.reference}: out of reconciliation; the node submits it to its"
                    f" {flow.backend_name.replace('_', ' ')} again; message log row {seq}"
                )
            return ""

    try:
        problem = eventloop.run(run())
    except GatewayError as exc:
        problem = exc.message
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


def _add_up(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser(
        "up",
        help="run the four provinces as separate processes (back-ends + node each) until Ctrl-C",
        description="Start, per province, its simulated back-ends (python -m "
        "yrd_simulators: e-ID authority, fund centre, certificate library, case system) "
        "and its node (yrd-gateway serve), on fixed loopback ports; wait until every node "
        "answers gRPC health; print endpoints, back-end URLs, log files and stores; run until "
        "Ctrl-C or SIGTERM, then drain the nodes, stop the back-ends and exit 0. Ports for "
        "province k (Shanghai 1, Jiangsu 2, Zhejiang 3, Anhui 4): BASE+10k public (TLS + "
        "token), BASE+10k+1 mutual TLS, BASE+10k+2 metrics, BASE+1000+10k..+3 back-ends; "
        "the default BASE 7300 gives the shipped configs' ports (7310, 7311, 8310-8313 for "
        "Shanghai). Files, under RUN_DIR: province_configs/ (the configs with these ports, "
        "rewritten at each start), <code>/node.log (the node's JSON log), "
        "<code>/backends.log, <code>/store/ (messages.db, state.db; kept across runs).",
    )
    up.add_argument(
        "--base-port",
        type=int,
        default=7300,
        metavar="BASE",
        help="port layout base (default 7300: the shipped configs' ports)",
    )
    up.add_argument(
        "--run-dir",
        default="var/federation",
        metavar="RUN_DIR",
        help="where configs, logs and stores go (default var/federation)",
    )
    up.add_argument(
        "--fresh", action="store_true", help="delete RUN_DIR first (stores and logs included)"
    )
    up.set_defaults(func=_up)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yrd-gateway",
        description="YRD Gateway: the Yangtze River Delta provinces' data-exchange node.",
    )
    parser.add_argument("--version", action="version", version=f"yrd-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    serve.set_defaults(func=_serve)

    demo = commands.add_parser(
        "demo", help="run four nodes and simulators on loopback and play every scenario"
    )
    demo.add_argument(
        "--config-dir",
        metavar="DIR",
        help="province configs to federate (default: the shipped province_configs)",
    )
    demo.add_argument("--log-file", metavar="FILE", help="keep the nodes' JSON logs in FILE")
    demo.set_defaults(func=_demo)

    _add_up(commands)

    pki = commands.add_parser("pki", help="development keys")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    init = pki_commands.add_parser(
        "init",
        help="create signing, e-ID issuer and seal keys, the federation CA and TLS certificates",
    )
    init.add_argument("directory", metavar="DIR")
    init.add_argument(
        "--provinces",
        nargs="+",
        default=PROVINCE_CODES,
        metavar="CODE",
        help="GB/T 2260 codes (default: the four provinces)",
    )
    init.add_argument("--overwrite", action="store_true", help="replace existing keys")
    init.set_defaults(func=_pki_init)

    config = commands.add_parser("config", help="province config files")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser(
        "check", help="validate files; print every problem with file, key, value, expectation"
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_config_check)

    adapter = commands.add_parser("adapter", help="province adapters (native formats)")
    adapter_commands = adapter.add_subparsers(
        dest="adapter_command", required=True, metavar="ACTION"
    )
    adapter_test = adapter_commands.add_parser(
        "test",
        help="run a province's golden vectors and round-trip checks; print a pass/fail table",
    )
    adapter_test.add_argument("configs", nargs="+", metavar="CONFIG", help="province TOML files")
    adapter_test.add_argument(
        "--vectors",
        metavar="DIR",
        help="golden vectors (default: golden/<code>/ beside the config; one CONFIG only)",
    )
    adapter_test.add_argument(
        "--examples",
        type=int,
        default=50,
        metavar="N",
        help="generated values per message for the round trips (default 50)",
    )
    adapter_test.set_defaults(func=_adapter_test)

    log = commands.add_parser("log", help="the message log")
    log_commands = log.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    verify = log_commands.add_parser(
        "verify", help="walk a node's hash chain and report the first row that does not chain"
    )
    verify.add_argument("database", metavar="MESSAGES_DB", help="a node's messages.db")
    verify.set_defaults(func=_log_verify)

    audit = commands.add_parser("audit", help="verify the message log; export and check evidence")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    a_verify = audit_commands.add_parser(
        "verify",
        help="report whether the log was edited, reordered or cut, and where; with --config "
        "also check the signed chain heads' signatures",
    )
    a_verify.add_argument("database", metavar="MESSAGES_DB", help="a node's messages.db")
    a_verify.add_argument("--config", metavar="FILE", help="the node's province config (for keys)")
    a_verify.set_defaults(func=_log_verify)
    a_export = audit_commands.add_parser(
        "export", help="write a self-contained evidence file for one message id"
    )
    a_export.add_argument("message_id", metavar="MESSAGE_ID")
    a_export.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="the node's province config (keys; default database)",
    )
    a_export.add_argument("--db", metavar="MESSAGES_DB", help="default: the config's store")
    a_export.add_argument("--out", metavar="FILE", help="default: evidence-MESSAGE_ID.json")
    a_export.set_defaults(func=_audit_export)
    a_check = audit_commands.add_parser(
        "check", help="verify an evidence file offline (signatures, receipt, chain, signed head)"
    )
    a_check.add_argument("file", metavar="FILE")
    a_check.set_defaults(func=_audit_check)

    outbox = commands.add_parser(
        "outbox", help="deliveries waiting for a peer: list them, retry or park them"
    )
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    o_list = outbox_commands.add_parser(
        "list", help="reference, peer, service, state, attempts, age, next attempt, last error"
    )
    o_list.add_argument("--config", required=True, metavar="FILE", help="the node's config")
    shown = o_list.add_mutually_exclusive_group()
    shown.add_argument("--parked", action="store_true", help="only items parked for an operator")
    shown.add_argument(
        "--reconciliation",
        action="store_true",
        help="received money-moving cases whose back-end lost track of them (see resolve)",
    )
    o_list.set_defaults(func=_outbox_list)
    for name, text in (
        ("retry", "make the parked items of REF pending and due now"),
        ("park", "park the pending items of REF (give up for now; retry brings them back)"),
    ):
        steer = outbox_commands.add_parser(name, help=text)
        steer.add_argument(
            "reference", metavar="REF", help="a case id or reference, or an item's message id"
        )
        steer.add_argument("--config", required=True, metavar="FILE", help="the node's config")
        steer.add_argument(
            "--operator",
            metavar="NAME",
            default=_login_name(),
            help="who acts, recorded in the message log (default: the login name)",
        )
        steer.add_argument("--reason", metavar="TEXT", default="", help="why (logged)")
        steer.set_defaults(func=_outbox_steer)
    o_resolve = outbox_commands.add_parser(
        "resolve",
        help="resolve a case in reconciliation from the back-end's own records",
    )
    o_resolve.add_argument("reference", metavar="REF", help="this node's reference (FW-…)")
    outcome = o_resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument(
        "--paid", action="store_true", help="the back-end paid it: record it PAID, tell the sender"
    )
    outcome.add_argument(
        "--not-paid",
        action="store_true",
        help="no money moved: submit it to the back-end again",
    )
    o_resolve.add_argument("--config", required=True, metavar="FILE", help="the node's config")
    o_resolve.add_argument(
        "--operator",
        default=_login_name(),
        help="who resolves it, recorded in the message log (default: the login name)",
    )
    o_resolve.add_argument(
        "--reason", default="", help="what the back-end's records showed (no personal data)"
    )
    o_resolve.set_defaults(func=_outbox_resolve)

    bench = commands.add_parser(
        "bench", help="measure throughput and latency on this machine (processes on loopback)"
    )
    bench.add_argument(
        "target",
        nargs="?",
        default="all",
        choices=["all", "identity", "fund"],
        help="what to measure (default: all)",
    )
    bench.add_argument(
        "--smoke",
        action="store_true",
        help="a short run of every measurement (seconds, not minutes)",
    )
    bench.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="length of each saturation and open-loop run (default 10)",
    )
    bench.add_argument(
        "--soak",
        type=int,
        default=100_000,
        help="verifications before node memory is read (default 100000)",
    )
    bench.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of each node (serve --workers; default 1)",
    )
    bench.add_argument("--count", type=int, default=2000, help="withdrawals for the throughput run")
    bench.add_argument("--concurrency", type=int, default=64, help="calls in flight (default 64)")
    bench.add_argument(
        "--paid-count",
        type=int,
        default=200,
        help="withdrawals followed to PAID for latency (default 200)",
    )
    bench.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="open-loop submissions per second for latency (default 20)",
    )
    bench.set_defaults(func=_bench)

    soak = commands.add_parser(
        "soak",
        help="chaos soak: exchanges through 4 node and 4 back-end processes while they are "
        "SIGKILLed and their disks fail; prints a table, exits 1 on a lost, duplicated, "
        "twice-paid or wrongly refused exchange",
    )
    soak.add_argument(
        "--smoke", action="store_true", help="40 exchanges, 2 kills, 1 disk fault (< 1 minute)"
    )
    soak.add_argument("--withdrawals", type=int, help="withdrawals to submit (default 800)")
    soak.add_argument("--cases", type=int, help="service cases to submit (default 400)")
    soak.add_argument("--seconds", type=float, help="length of the chaos phase (default 150)")
    soak.add_argument(
        "--kill-interval", type=float, help="mean seconds between SIGKILLs (default 5)"
    )
    soak.add_argument(
        "--disk-fault-interval",
        type=float,
        help="mean seconds between periods of failing disk (default 15)",
    )
    soak.add_argument("--seed", type=int, default=17, help="random seed (default 17)")
    soak.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep stores and logs in DIR (default: removed)"
    )
    soak.set_defaults(func=_soak)
    return parser


def _operator_name(given: str) -> str | None:
    """The operator's name as given (recorded in the message log); None (and a
    message) unless it is 1..64 printable characters."""
    operator = given.strip()
    if not 1 <= len(operator) <= 64 or not operator.isprintable():
        print(
            "--operator: expected the operator's name, 1..64 printable characters", file=sys.stderr
        )
        return None
    return operator


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
