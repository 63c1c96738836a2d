"""``yrd-gateway store``: what a node's store holds (``info``), and moving a
stopped node's SQLite stores into PostgreSQL (``migrate``).

The copy itself is :func:`gateway.storage.transfer.migrate_to_database`; this
module checks that the node is stopped (its store lock is free, and is held
for the copy so that the node cannot start meanwhile) and prints the summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.cli.common import EXIT_USAGE, Subparsers


def register(commands: Subparsers) -> None:
    store = commands.add_parser(
        "store", help="a node's store: what it holds; move it from SQLite to PostgreSQL"
    )
    actions = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    info = actions.add_parser(
        "info", help="engine, location, schema versions and rows per table (reads only)"
    )
    info.add_argument(
        "location",
        nargs="?",
        metavar="FOLDER_OR_URL",
        help="a store folder or a postgresql:// URL (default: the config's [node] store)",
    )
    info.add_argument("--config", metavar="FILE", help="the node's config")
    info.set_defaults(func=store_info)
    migrate = actions.add_parser(
        "migrate",
        help="copy a stopped node's SQLite stores into an empty PostgreSQL database",
        description=(
            "Copy every row of messages.db and state.db in FOLDER into the empty database URL "
            "(one transaction), then verify the message log's chain there and compare the "
            "rows per table. The node must be stopped. PostgreSQL to SQLite is not provided."
        ),
    )
    migrate.add_argument(
        "--from", dest="source", required=True, metavar="FOLDER", help="the node's store folder"
    )
    migrate.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="URL",
        help="postgresql://user@host:port/db (password from PGPASSWORD or ~/.pgpass)",
    )
    migrate.add_argument(
        "--config", metavar="FILE", help="the node's config: also verify the heads' signatures"
    )
    migrate.add_argument(
        "--batch", type=int, default=1000, metavar="ROWS", help="rows per batch (default 1000)"
    )
    migrate.set_defaults(func=store_migrate)


def store_info(args: argparse.Namespace) -> int:
    from gateway.storage.sql import is_database_url
    from gateway.storage.transfer import STORES, TransferError, describe

    location: Path | str
    if args.location:
        location = args.location if is_database_url(args.location) else Path(args.location)
    elif args.config:
        from gateway.config.loading import parse_province_file
        from gateway.core.errors import ConfigError

        try:
            location = parse_province_file(Path(args.config)).node.store
        except ConfigError as exc:
            print(f"configuration refused:\n{exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        print("store info: give FOLDER_OR_URL or --config", file=sys.stderr)
        return EXIT_USAGE
    if not is_database_url(location) and not Path(location).is_dir():
        print(f"{location}: no such store folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        info = describe(location)
    except (TransferError, OSError) as exc:
        print(f"store info: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"engine    {info.engine}")
    print(f"location  {info.location}")
    for store in STORES:
        version = info.versions.get(store.name, 0)
        print(f"schema    {store.what}: {f'version {version}' if version else 'absent'}")
    for table, rows in info.tables:
        print(f"rows      {table}: {rows}")
    return 0


def store_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.server.node import NodeStartError, StoreLock
    from gateway.storage.messagelog import HeadKeys
    from gateway.storage.records import StoreOpenError, StoreVersionError
    from gateway.storage.sql import display_url, is_database_url
    from gateway.storage.transfer import TransferError, migrate_to_database

    folder = Path(args.source)
    if not is_database_url(args.target):
        print(f"--to: expected a postgresql:// URL, got {args.target!r}", file=sys.stderr)
        return EXIT_USAGE
    if not folder.is_dir():
        print(f"--from: {folder}: no such store folder", file=sys.stderr)
        return EXIT_USAGE
    if not 1 <= args.batch <= 100_000:
        print("--batch: expected 1..100000 rows", file=sys.stderr)
        return EXIT_USAGE
    keys: HeadKeys | None = None
    if args.config:
        from gateway.config.loading import load_federation
        from gateway.trust.truststore import TrustStore

        keys = TrustStore(load_federation(Path(args.config))).head_key
    try:
        lock = StoreLock.acquire(folder)
    except NodeStartError as exc:
        print(f"store migrate: stop the node first: {exc}", file=sys.stderr)
        return EXIT_USAGE
    target = display_url(args.target)
    print(f"moving {folder} to {target}")
    try:
        report = asyncio.run(
            migrate_to_database(
                folder, args.target, keys=keys, batch=args.batch, progress=lambda s: print(f"  {s}")
            )
        )
    except TransferError as exc:
        print(f"store migrate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreOpenError, StoreVersionError) as exc:
        print(f"store migrate: {folder}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        lock.release()
    for table in report.tables:
        mark = "ok  " if table.source == table.target else "DIFF"
        print(f"{mark} {table.table}: {table.source} rows in SQLite, {table.target} in PostgreSQL")
    print(
        f"{'ok  ' if report.chain.intact else 'FAIL'} message log on the target: "
        f"{report.chain.detail}"
    )
    same_head = report.chain.head_hash == report.source_head
    print(
        f"{'ok  ' if same_head else 'FAIL'} chain head {report.chain.head_hash.hex()}"
        f"{'' if same_head else ' differs from the source ' + report.source_head.hex()}"
    )
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    if report.intact:
        print(f'moved: schema versions {versions}; set [node] store = "{target}" and start it')
        return 0
    print("the copy does NOT match its source: keep the node on SQLite", file=sys.stderr)
    return 1
