"""``yrd-gateway audit``: verify a node's message log; export and check the
evidence of one message.

``audit verify`` is the one command that verifies a log. ``log verify`` is
kept as an alias for operators' scripts: the same parser arguments and the
same function (:func:`audit_verify`), registered by :func:`_add_verify`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.common import EXIT_USAGE, Subparsers

if TYPE_CHECKING:
    from gateway.config.models import FederationConfig


def register(commands: Subparsers) -> None:
    audit = commands.add_parser("audit", help="verify the message log; export and check evidence")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    _add_verify(
        actions,
        "report whether the log was edited, reordered or cut, and where; with --config "
        "also check the signed chain heads' signatures",
    )
    export = actions.add_parser(
        "export", help="write a self-contained evidence file for one message id"
    )
    export.add_argument("message_id", metavar="MESSAGE_ID")
    export.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="the node's province config (keys; default database)",
    )
    export.add_argument(
        "--db",
        metavar="MESSAGES_DB",
        help="a messages.db or a postgresql:// URL (read only); default: the config's store"
        " (peers' keys: the directory/ folder beside messages.db, see --directory)",
    )
    export.add_argument(
        "--directory",
        metavar="FOLDER",
        help="the descriptors the node held (peers' keys); default: directory/ beside"
        " messages.db, or in the node's local folder when its store is a database",
    )
    export.add_argument("--out", metavar="FILE", help="default: evidence-MESSAGE_ID.json")
    export.set_defaults(func=audit_export)
    check = actions.add_parser(
        "check",
        help="verify an evidence file offline (signatures or batch proofs, receipt, chain,"
        " signed head)",
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=audit_check)


def register_log_alias(commands: Subparsers) -> None:
    """``log verify``: the alias of ``audit verify`` that older scripts call."""
    log = commands.add_parser("log", help="alias of `audit verify` (kept for existing scripts)")
    actions = log.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    _add_verify(actions, "alias of `yrd-gateway audit verify` (the same command)")


def _add_verify(actions: Subparsers, text: str) -> None:
    verify = actions.add_parser("verify", help=text, description=text)
    verify.add_argument(
        "database",
        nargs="?",
        metavar="MESSAGES_DB",
        help="a node's messages.db, or its postgresql:// URL (read only; a standby will do);"
        " default: the --config's store",
    )
    verify.add_argument(
        "--config", metavar="FILE", help="the node's province config (for keys; default log)"
    )
    verify.set_defaults(func=audit_verify)


def audit_verify(args: argparse.Namespace) -> int:
    """Walk the hash chain (and, with ``--config``, the signed heads): 0 intact,
    1 broken (the first row concerned is named), 2 no such file."""
    import asyncio

    from gateway.storage.messagelog import HeadKeys, verify_file

    keys: HeadKeys | None = None
    federation: FederationConfig | None = None
    if args.config:
        from gateway.config.loading import load_federation
        from gateway.trust.truststore import TrustStore

        federation = load_federation(Path(args.config))
        keys = TrustStore(federation).head_key
    elif args.database is None:
        print("audit verify: give MESSAGES_DB or --config", file=sys.stderr)
        return EXIT_USAGE
    location = _log_location(args.database, federation)
    if isinstance(location, Path) and not location.exists():
        print(f"{location}: no such message log", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = asyncio.run(verify_file(location, keys))
    except _unreadable() as exc:
        print(f"{_shown(location)}: cannot be read: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{'intact' if report.intact else 'BROKEN'}: {report.detail}; "
        f"{report.rows_checked} rows checked; head {report.head_hash.hex()}"
    )
    return 0 if report.intact else 1


def audit_export(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.config.loading import load_federation
    from gateway.federation.directory import held_descriptors
    from gateway.storage import evidence as audit

    federation = load_federation(Path(args.config))
    database = _log_location(args.db, federation)
    # The peers' keys come from the descriptors the node held: in the store
    # folder beside messages.db (directory/), or given (a node on PostgreSQL
    # keeps them in its own local folder).
    held = held_descriptors(federation.me, _held_folder(args.directory, database, federation))
    federation = federation.with_peers(held)
    try:
        evidence = asyncio.run(audit.export(database, args.message_id, federation))
    except audit.EvidenceError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except _unreadable() as exc:
        print(f"{_shown(database)}: cannot be read: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out or f"evidence-{args.message_id}.json")
    audit.write(evidence, out)
    print(
        f"wrote {out}: {len(evidence['envelopes'])} envelopes, "
        f"{len(evidence['chain']['rows'])} chain rows, head at row {evidence['head']['head_seq']}"
    )
    return 0


def audit_check(args: argparse.Namespace) -> int:
    import json

    from gateway.storage import evidence as audit
    from gateway.trust.batchsig import check_envelope_proof

    try:
        evidence = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"{args.file}: cannot be read as evidence: {exc}", file=sys.stderr)
        return EXIT_USAGE
    passed, problems = audit.check(evidence, batch_check=check_envelope_proof)
    for line in passed:
        print(f"ok    {line}")
    for line in problems:
        print(f"FAIL  {line}")
    print(
        "evidence holds" if not problems else f"evidence does NOT hold: {len(problems)} problem(s)"
    )
    return 0 if not problems else 1


def _log_location(given: str | None, federation: FederationConfig | None) -> Path | str:
    """The message log named on the command line (a file or a database URL), else
    the config's: ``messages.db`` in its store folder, or its store URL."""
    from gateway.storage.engines import MESSAGE_LOG_FILE, store_location
    from gateway.storage.sql import is_database_url

    if given:
        return given if is_database_url(given) else Path(given)
    assert federation is not None  # the callers require --config without a log
    return store_location(federation.me.node.store, MESSAGE_LOG_FILE)


def _held_folder(given: str | None, log: Path | str, federation: FederationConfig) -> Path:
    if given:
        return Path(given)
    if isinstance(log, Path):
        return log.parent / "directory"
    # A node on PostgreSQL keeps its own files in [node] local_dir.
    return federation.me.node.local_folder / "directory"


def _shown(location: Path | str) -> str:
    from gateway.storage.sql import display_url

    return display_url(location) if isinstance(location, str) else str(location)


def _unreadable() -> tuple[type[Exception], ...]:
    """What a log that cannot be opened raises (one line, exit 2, not a traceback)."""
    from gateway.core.errors import StoreUnavailable
    from gateway.storage.records import StoreOpenError

    return (StoreOpenError, StoreUnavailable)
