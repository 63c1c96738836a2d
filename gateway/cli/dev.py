"""The development tools: ``demo``, ``up``, ``bench`` and ``soak``.

They run whole federations on loopback with the simulated back-ends, so they
need the simulators' distribution (package ``yrd_simulators``, not installed
with the node) and the province configs (``--configs DIR``, else
``$YRD_PROVINCE_CONFIGS``, else ``./province_configs``). Both are checked
before anything heavy is imported: a missing one is one line on stderr and
exit 2. The tools themselves (``gateway.tools``, ``gateway.testing``) are
imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.cli.common import EXIT_USAGE, Subparsers, add_configs_option, tool_configs


def register(commands: Subparsers) -> None:
    _register_demo(commands)
    _register_up(commands)
    _register_bench(commands)
    _register_soak(commands)


# ---- demo ---------------------------------------------------------------------------


def _register_demo(commands: Subparsers) -> None:
    demo = commands.add_parser(
        "demo", help="run four nodes and simulators on loopback and play every scenario"
    )
    add_configs_option(demo, "--config-dir")
    demo.add_argument("--log-file", metavar="FILE", help="keep the nodes' JSON logs in FILE")
    demo.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    configs = tool_configs("demo", args.configs)
    if configs is None:
        return EXIT_USAGE
    from gateway.tools.demo import main

    return main(configs, Path(args.log_file) if args.log_file else None)


# ---- up -----------------------------------------------------------------------------

_UP_DESCRIPTION = (
    "Start, per province, its simulated back-ends (python -m "
    "yrd_simulators: e-ID authority, fund centre, certificate library, case system) "
    "and its node (yrd-gateway serve), on fixed loopback ports; wait until every node "
    "answers gRPC health; print endpoints, back-end URLs, log files and stores; run until "
    "Ctrl-C or SIGTERM, then drain the nodes, stop the back-ends and exit 0. Ports for "
    "province k (Shanghai 1, Jiangsu 2, Zhejiang 3, Anhui 4): BASE+10k public (TLS + "
    "token), BASE+10k+1 mutual TLS, BASE+10k+2 metrics, BASE+1000+10k..+3 back-ends; "
    "the default BASE 7300 gives the shipped configs' ports (7310, 7311, 8310-8313 for "
    "Shanghai). Files, under RUN_DIR: province_configs/ (the configs with these ports, "
    "rewritten at each start), <code>/node.log (the node's JSON log), "
    "<code>/backends.log, <code>/store/ (messages.db, state.db; kept across runs)."
)


def _register_up(commands: Subparsers) -> None:
    up = commands.add_parser(
        "up",
        help="run the four provinces as separate processes (back-ends + node each) until Ctrl-C",
        description=_UP_DESCRIPTION,
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
    add_configs_option(up)
    up.set_defaults(func=up_command)


def up_command(args: argparse.Namespace) -> int:
    try:
        configs = tool_configs("up", args.configs)
        if configs is None:
            return EXIT_USAGE
        from gateway.testing.procfed import run_up
    except KeyboardInterrupt:  # Ctrl-C while importing: nothing was started yet
        return 130
    return run_up(Path(args.run_dir), args.base_port, fresh=args.fresh, configs=configs)


# ---- bench --------------------------------------------------------------------------


def _register_bench(commands: Subparsers) -> None:
    bench = commands.add_parser(
        "bench", help="measure throughput and latency on this machine (processes on loopback)"
    )
    bench.add_argument(
        "target",
        nargs="?",
        default="all",
        choices=["all", "identity", "fund", "stores"],
        help="what to measure (default: all = identity and fund; stores: SQLite, PostgreSQL"
        " with one and with two replicas, then failover, in one run)",
    )
    bench.add_argument(
        "--smoke",
        action="store_true",
        help="a short run of every measurement (seconds, not minutes)",
    )
    for option, kind, default, text in (
        ("--seconds", float, 10.0, "length of each saturation and open-loop run (default 10)"),
        ("--soak", int, 100_000, "verifications before node memory is read (default 100000)"),
        ("--workers", int, 1, "worker processes of each node (serve --workers; default 1)"),
        ("--count", int, 2000, "withdrawals for the throughput run"),
        ("--concurrency", int, 64, "calls in flight (default 64)"),
        (
            "--runs",
            int,
            1,
            "repeat the whole measurement N times, then print min / median / max of each "
            "figure (default 1; 3 to compare; the soak runs in the last run only)",
        ),
        ("--paid-count", int, 200, "withdrawals followed to PAID for latency (default 200)"),
        ("--rate", float, 20.0, "open-loop submissions per second for latency (default 20)"),
        (
            "--failover-seconds",
            float,
            20.0,
            "bench stores: length of the failover run (default 20)",
        ),
    ):
        bench.add_argument(option, type=kind, default=default, help=text)
    add_configs_option(bench)
    bench.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    configs = tool_configs("bench", args.configs)
    if configs is None:
        return EXIT_USAGE
    from gateway.tools.interrupt import terminated_as_interrupt

    try:
        with terminated_as_interrupt():
            return _bench(args, configs)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what the bench started is stopped
        print("interrupted: every process the bench started is stopped", flush=True)
        return 130


def _bench(args: argparse.Namespace, configs: Path) -> int:
    from gateway.tools.bench import bench_fund, bench_identity, build, interpreter, summary_table

    print(f"interpreter: {interpreter()}", flush=True)
    print(f"gateway: {build()}", flush=True)
    if args.smoke:  # a short run of every measurement: figures, not targets
        args.seconds, args.concurrency, args.soak = 1.0, 8, 200
        args.count, args.paid_count, args.rate = 50, 20, 10.0
    if args.target == "stores":
        from gateway.tools.benchstores import bench_stores

        stores = bench_stores(
            seconds=args.seconds,
            concurrency=args.concurrency,
            failover_seconds=0.0 if args.smoke else args.failover_seconds,
            configs=configs,
        )
        print(stores.render(), flush=True)
        return 0
    runs = max(1, args.runs)
    summaries: list[dict[str, float]] = []
    for run in range(1, runs + 1):
        if runs > 1:
            print(f"== run {run} of {runs}", flush=True)
        summary: dict[str, float] = {}
        baseline_rps = None
        if args.target in ("identity", "all"):
            identity = bench_identity(
                seconds=args.seconds,
                concurrency=args.concurrency,
                soak=args.soak if run == runs else 0,
                workers=args.workers,
                configs=configs,
            )
            print(identity.render(), flush=True)
            baseline_rps = identity.baseline.saturation_rps
            summary |= identity.summary()
        if args.target in ("fund", "all"):
            fund = bench_fund(
                count=args.count,
                concurrency=args.concurrency,
                paid_count=args.paid_count,
                rate=args.rate,
                seconds=args.seconds,
                workers=args.workers,
                baseline_rps=baseline_rps,
                configs=configs,
            )
            print(fund.render(), flush=True)
            summary |= fund.summary()
        summaries.append(summary)
    print(summary_table(summaries), flush=True)
    return 0


# ---- soak ---------------------------------------------------------------------------


def _register_soak(commands: Subparsers) -> None:
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
        "--store",
        choices=("sqlite", "postgresql"),
        help="the nodes' stores: SQLite folders (default) or a PostgreSQL database per province",
    )
    soak.add_argument(
        "--replicas",
        type=int,
        help="node processes per province (above 1: Shanghai and Jiangsu on PostgreSQL, "
        "replicas SIGKILLed, check-ins counted; default 1)",
    )
    soak.add_argument(
        "--database-server",
        metavar="URL",
        help="postgresql:// URL of a server where the soak may create databases "
        "(default: $YRD_SOAK_DATABASE_SERVER, else a throw-away server of its own)",
    )
    soak.add_argument(
        "--checkins-per-second",
        type=float,
        help="hotel check-ins per second at Shanghai during the chaos (default 8 with replicas)",
    )
    soak.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep stores and logs in DIR (default: removed)"
    )
    add_configs_option(soak)
    soak.set_defaults(func=soak_command)


def soak_command(args: argparse.Namespace) -> int:
    names = ("withdrawals", "cases", "seconds", "kill_interval", "disk_fault_interval")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    for name, value in given.items():
        if value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')}: expected a positive number")
    configs = tool_configs("soak", args.configs)
    if configs is None:
        return EXIT_USAGE
    import dataclasses

    from gateway.tools.soak import SoakConfig, main

    replicas = args.replicas or 1
    store = args.store or ("postgresql" if replicas > 1 else "sqlite")
    server = args.database_server or os.environ.get("YRD_SOAK_DATABASE_SERVER")
    if replicas < 1 or replicas > 4:
        raise SystemExit("--replicas: expected 1 to 4")
    if replicas > 1 and store != "postgresql":
        raise SystemExit(
            "--replicas above 1: expected --store postgresql (replicas share a database)"
        )
    if store == "postgresql" and not server:
        # No server named: a throw-away one of the soak's own (Debian's
        # postgresql binaries, run as an unprivileged user, removed after).
        from gateway.testing.postgres import PostgresServer, PostgresUnavailable

        try:
            with PostgresServer() as own:
                args.database_server = own.url()
                return soak_command(args)
        except PostgresUnavailable as exc:
            raise SystemExit(f"--store postgresql: {exc}") from None
    if replicas > 1:
        config = SoakConfig.failover(server or "", args.seed, args.seconds or 20.0)
        config = dataclasses.replace(config, replicas=replicas)
    else:
        config = SoakConfig.smoke(args.seed) if args.smoke else SoakConfig(seed=args.seed)
        if store == "postgresql":
            # the database is another process: a lowered file-size limit fails nothing
            config = dataclasses.replace(
                config, store=store, database_server=server, max_disk_faults=0
            )
    if args.checkins_per_second is not None:
        given["checkins_per_second"] = args.checkins_per_second
    return main(dataclasses.replace(config, **given), keep=args.keep, configs=configs)
