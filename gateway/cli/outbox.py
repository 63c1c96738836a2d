"""``yrd-gateway outbox``: an operator's commands on the deliveries waiting for a
peer (list, retry, park) and on the money-moving cases in reconciliation
(list --reconciliation, resolve). Every change is recorded in the node's
message log, signed with the node's current envelope key.

The node's state store is opened in one place, :func:`_open_state`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.common import EXIT_USAGE, Subparsers, age, login_name, table

if TYPE_CHECKING:
    from gateway.config.models import ProvinceConfig
    from gateway.storage.messagelog import MessageLog
    from gateway.storage.state import StateStore


#: A node's store as its config names it: a folder (SQLite) or a postgresql:// URL.
Store = Path | str

#: A command group's handler: parsed arguments in, exit status out.
Handler = Callable[[argparse.Namespace], int]


def register(commands: Subparsers) -> None:
    outbox = commands.add_parser(
        "outbox", help="deliveries waiting for a peer: list them, retry or park them"
    )
    actions = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="reference, peer, service, state, attempts, age, next attempt, last error"
    )
    listing.add_argument("--config", required=True, metavar="FILE", help="the node's config")
    shown = listing.add_mutually_exclusive_group()
    shown.add_argument("--parked", action="store_true", help="only items parked for an operator")
    shown.add_argument(
        "--reconciliation",
        action="store_true",
        help="received money-moving cases whose back-end lost track of them (see resolve)",
    )
    listing.set_defaults(func=outbox_list)
    for name, text in (
        ("retry", "make the parked items of REF pending and due now"),
        ("park", "park the pending items of REF (give up for now; retry brings them back)"),
    ):
        steer = actions.add_parser(name, help=text)
        steer.add_argument(
            "reference", metavar="REF", help="a case id or reference, or an item's message id"
        )
        steer.add_argument("--config", required=True, metavar="FILE", help="the node's config")
        _add_operator(steer, "who acts, recorded in the message log (default: the login name)")
        steer.add_argument("--reason", metavar="TEXT", default="", help="why (logged)")
        steer.set_defaults(func=outbox_steer)
    _register_resolve(actions)


def _register_resolve(actions: Subparsers) -> None:
    resolve = actions.add_parser(
        "resolve",
        help="resolve a case in reconciliation from the back-end's own records",
    )
    resolve.add_argument("reference", metavar="REF", help="this node's reference (FW-…)")
    outcome = resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument(
        "--paid", action="store_true", help="the back-end paid it: record it PAID, tell the sender"
    )
    outcome.add_argument(
        "--not-paid",
        action="store_true",
        help="no money moved: submit it to the back-end again",
    )
    resolve.add_argument("--config", required=True, metavar="FILE", help="the node's config")
    _add_operator(resolve, "who resolves it, recorded in the message log (default: the login name)")
    resolve.add_argument(
        "--reason", default="", help="what the back-end's records showed (no personal data)"
    )
    resolve.set_defaults(func=outbox_resolve)


def _add_operator(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--operator", metavar="NAME", default=login_name(), help=text)


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


# ---- the node's stores, as an operator's command opens them --------------------------


def _node_stores(config_file: str) -> tuple[ProvinceConfig, Store] | None:
    """(the node's own config, its store: a folder or a database URL) for an
    operator's command; None (and a message) when the config or its state
    store cannot be used."""
    from gateway.config.loading import parse_province_file
    from gateway.core.errors import ConfigError
    from gateway.storage.engines import STATE_FILE, store_location

    try:
        config = parse_province_file(Path(config_file))
    except ConfigError as exc:
        print(f"configuration refused:\n{exc}", file=sys.stderr)
        return None
    store: Store = config.node.store
    state = store_location(store, STATE_FILE)
    if isinstance(state, Path) and not state.is_file():
        print(f"no state store in {store} (node.store of {config_file})", file=sys.stderr)
        return None
    return config, store


def _store_errors(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """A store the command cannot open (unreadable, or written by a newer
    release) is one line on stderr and exit 2, not a traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from gateway.core.errors import StoreUnavailable
        from gateway.storage.records import StoreOpenError

        try:
            return handler(args)
        except (StoreOpenError, StoreUnavailable) as exc:
            print(f"yrd-gateway outbox: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return run


def _open_state(store: Store) -> StateStore:
    """The node's state store in ``store`` (an async context manager): the
    folder's state.db, or the database (:func:`gateway.storage.engines.store_location`)."""
    from gateway.storage.engines import STATE_FILE, store_location
    from gateway.storage.state import StateStore

    return StateStore(store_location(store, STATE_FILE))


def _operator_log(me: ProvinceConfig, store: Store) -> MessageLog:
    """The node's message log, opened to record operator actions signed with the
    node's current envelope key (as its chain heads are)."""
    from gateway.core.clock import SystemClock
    from gateway.storage.messagelog import MessageLog
    from gateway.trust.envelope import EnvelopeSigner

    signer = EnvelopeSigner.from_config(me, SystemClock())

    def sign(statement: bytes) -> tuple[str, bytes]:
        key_id, key = signer.current()
        return key_id, key.sign(statement)

    from gateway.storage.engines import MESSAGE_LOG_FILE, store_location

    return MessageLog(store_location(store, MESSAGE_LOG_FILE), province=me.code, head_signer=sign)


# ---- list, retry, park ----------------------------------------------------------------


@_store_errors
def outbox_list(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from gateway.storage.state import PARKED, OutboxEntry

    if args.reconciliation:
        return _list_reconciliation(args)
    found = _node_stores(args.config)
    if found is None:
        return EXIT_USAGE

    async def read() -> list[OutboxEntry]:
        async with _open_state(found[1]) as store:
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
                age(now - e.created_at),
                "-" if e.state == PARKED else age(e.next_attempt_at - now),
                e.last_error or "-",
            )
        )
    table(rows)
    print(f"{len(entries)} item(s)", file=sys.stderr)
    return 0


@_store_errors
def outbox_steer(args: argparse.Namespace) -> int:
    """``outbox retry`` / ``outbox park``: change the items of REF, log each change."""
    import asyncio

    from gateway.storage.state import PARKED, PENDING

    found = _node_stores(args.config)
    if found is None:
        return EXIT_USAGE
    me, folder = found
    action = args.outbox_command
    target, source = (PENDING, PARKED) if action == "retry" else (PARKED, PENDING)
    operator = _operator_name(args.operator)
    if operator is None:
        return EXIT_USAGE

    async def steer() -> int:
        from gateway.core.errors import FailedPrecondition, NotFound
        from gateway.services.operations import steer_exchange

        async with _open_state(folder) as store, _operator_log(me, folder) as log:
            try:
                steered = await steer_exchange(
                    store,
                    log,
                    action=action,
                    reference=args.reference,
                    operator=operator,
                    reason=args.reason,
                )
            except NotFound:
                print(f"no outbox item for {args.reference!r}", file=sys.stderr)
                return 1
            except FailedPrecondition:
                print(f"no {source} outbox item for {args.reference!r}", file=sys.stderr)
                return 1
        for entry in steered.changed:
            print(f"{action}: {entry.subject} {entry.service} -> {entry.peer} ({target})")
        return 0

    return asyncio.run(steer())


# ---- money-moving cases in reconciliation ---------------------------------------------


def _list_reconciliation(args: argparse.Namespace) -> int:
    from gateway.server import eventloop
    from gateway.services.case import SERVICE_CASE
    from gateway.services.fund import WITHDRAWAL

    found = _node_stores(args.config)
    if found is None:
        return EXIT_USAGE
    names = {f.domain: f.status_name for f in (WITHDRAWAL, SERVICE_CASE)}

    async def run() -> int:
        async with _open_state(found[1]) as store:
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


@_store_errors
def outbox_resolve(args: argparse.Namespace) -> int:
    from gateway.core.errors import GatewayError
    from gateway.server import eventloop

    operator = _operator_name(args.operator)
    if operator is None:
        return EXIT_USAGE
    found = _node_stores(args.config)
    if found is None:
        return EXIT_USAGE
    try:
        problem = eventloop.run(_resolve(args, operator, *found))
    except GatewayError as exc:
        problem = exc.message
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


async def _resolve(
    args: argparse.Namespace, operator: str, me: ProvinceConfig, folder: Store
) -> str:
    """Log the operator's statement, then resolve the case; "" when done, else why not."""
    from gateway.core.clock import SystemClock
    from gateway.services.case import SERVICE_CASE
    from gateway.services.fund import WITHDRAWAL
    from gateway.services.operations import resolve_exchange

    flows = {f.domain: f for f in (WITHDRAWAL, SERVICE_CASE)}
    async with _open_state(folder) as store, _operator_log(me, folder) as log:
        resolved = await resolve_exchange(
            store,
            log,
            flows,
            reference=args.reference,
            paid=args.paid,
            operator=operator,
            reason=args.reason,
            clock=SystemClock(),
        )
    flow, seq = resolved.flow, resolved.log_seq
    if args.paid:
        print(
            f"{args.reference}: {flow.status_name(resolved.status)} recorded; status updates"
            f" queued for {resolved.sender}; message log row {seq}"
        )
    else:
        print(
            f"{args.reference}: out of reconciliation; the node submits it to its"
            f" {flow.backend_name.replace('_', ' ')} again; message log row {seq}"
        )
    return ""
