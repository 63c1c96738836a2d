"""``yrd-gateway admin``: an operator's commands on a running node, over its
admin RPCs (AdminService on the node's client endpoint: TLS and a bearer token
of a ``[[clients]]`` entry granted ``yrd.admin.v1.AdminService``), never
straight into its stores.

- ``peers``: reachability, breaker, last success and error, descriptor, the
  expiry of every key and certificate;
- ``exchanges list|retry|park|resolve``: what waits on the node, and the
  operator's actions on it (each recorded in the node's message log as
  ``"<operator> (client <client id>)"``);
- ``log search --correlation-id ID``: one exchange's path through the node;
  ``log verify``: the message log's hash chain;
- ``diagnostics``: the node's config check and its adapter's golden vectors.

The connection: ``--endpoint HOST:PORT`` (default: ``[node] endpoint`` of
``--config FILE``), the CA that signed the node's certificate (``--ca FILE``,
default: ``[tls] ca`` of ``--config``), the token from ``--token-file FILE``
or ``$YRD_ADMIN_TOKEN``. ``--json`` prints the node's answer as JSON. Exit 0
done; 1 the node said no (NOT_FOUND, FAILED_PRECONDITION), a broken log or a
failed diagnostic; 2 bad usage, the node unreachable or the credential refused.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.common import EXIT_USAGE, Subparsers, age, login_name, table
from gateway.cli.directory import TOKEN_SETTING

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp

    from yrd.admin.v1 import admin_pb2

#: The node said no: an unknown reference, nothing in the state acted on; a
#: broken log; a failed diagnostic.
EXIT_REFUSED = 1
#: Codes meaning "the node said no" (exit 1); every other failure is exit 2.
_REFUSALS = ("NOT_FOUND", "FAILED_PRECONDITION")
#: Seconds an answer may take (diagnostics run the adapter's vectors).
TIMEOUT = 60.0


def register(commands: Subparsers) -> None:
    admin = commands.add_parser(
        "admin",
        help="operate a running node over its admin RPCs (peers, exchanges, log, diagnostics)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _connection_options(admin, suppress=False)
    actions = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")

    peers = _leaf(actions, "peers", "each peer: reachable, breaker, last success, key expiry")
    peers.set_defaults(func=admin_peers)

    exchanges = actions.add_parser("exchanges", help="exchanges waiting on the node")
    steering = exchanges.add_subparsers(dest="exchanges_command", required=True, metavar="ACTION")
    listing = _leaf(
        steering, "list", "reference, peer, service, state, attempts, age, next, last error"
    )
    listing.add_argument(
        "--state",
        choices=("pending", "parked", "reconciliation"),
        default="",
        help="only exchanges in this state (default: all)",
    )
    listing.add_argument("--peer", default="", metavar="CODE", help="only this peer's (GB/T 2260)")
    listing.add_argument(
        "--older-than",
        default="0s",
        metavar="AGE",
        help="only those waiting at least this long: 30s, 10m, 2h, 1d (default: all)",
    )
    listing.add_argument(
        "--limit", type=int, default=0, help="at most this many, oldest first (default 100)"
    )
    listing.set_defaults(func=admin_exchanges_list)
    for name, text in (
        ("retry", "make the parked items of REF pending and due now"),
        ("park", "park the pending items of REF (give up for now; retry brings them back)"),
    ):
        steer = _leaf(steering, name, text)
        steer.add_argument(
            "reference", metavar="REF", help="a case id or reference, or an item's message id"
        )
        _operator_options(steer, "why (no personal data), recorded in the message log")
        steer.set_defaults(func=admin_steer)
    resolve = _leaf(
        steering, "resolve", "resolve a case in reconciliation from the back-end's own records"
    )
    resolve.add_argument("reference", metavar="REF", help="this node's reference (FW-…)")
    outcome = resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument(
        "--paid", action="store_true", help="the back-end paid it: record it PAID, tell the sender"
    )
    outcome.add_argument(
        "--not-paid", action="store_true", help="no money moved: submit it to the back-end again"
    )
    _operator_options(resolve, "what the back-end's records showed (no personal data)")
    resolve.set_defaults(func=admin_resolve)

    logs = actions.add_parser("log", help="the node's message log")
    reading = logs.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    search = _leaf(reading, "search", "one exchange's path through the node, by correlation id")
    search.add_argument("--correlation-id", required=True, metavar="ID")
    search.add_argument("--limit", type=int, default=0, help="at most this many rows (200)")
    search.set_defaults(func=admin_log_search)
    verify = _leaf(reading, "verify", "walk the message log's hash chain and signed heads")
    verify.set_defaults(func=admin_log_verify)

    diagnostics = _leaf(
        actions, "diagnostics", "the node's config check and its adapter's golden vectors"
    )
    diagnostics.set_defaults(func=admin_diagnostics)


def _connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options that say how to reach the node: given before the command
    (``admin --config F peers``) or after it (``admin peers --config F``)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        default=default(None),
        help="the node's client endpoint (default: [node] endpoint of --config)",
    )
    parser.add_argument(
        "--config", metavar="FILE", default=default(None), help="the node's config (endpoint, CA)"
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        default=default(None),
        help="CA certificate that signed the node's (default: [tls] ca of --config)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        default=default(None),
        help=f"file holding the admin client's bearer token (default: ${TOKEN_SETTING})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the node's answer as JSON",
    )


def _leaf(actions: Subparsers, name: str, text: str) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=text)
    _connection_options(parser, suppress=True)
    return parser


def _operator_options(parser: argparse.ArgumentParser, reason: str) -> None:
    parser.add_argument(
        "--operator",
        metavar="NAME",
        default=login_name(),
        help="who acts, recorded in the message log with the admin client (default: login name)",
    )
    parser.add_argument("--reason", metavar="TEXT", default="", help=reason)


# ---- the connection ----------------------------------------------------------------------


class Usage(Exception):
    """Bad usage or configuration: one line on stderr, exit 2."""


def _target(args: argparse.Namespace) -> tuple[str, bytes | None, bool]:
    """(endpoint, CA certificate or None for the system's, TLS or not)."""
    endpoint: str | None = args.endpoint
    ca = Path(args.ca) if args.ca else None
    tls = True
    if args.config:
        from gateway.config.loading import parse_province_file
        from gateway.core.errors import ConfigError

        try:
            me = parse_province_file(Path(args.config))
        except ConfigError as exc:
            raise Usage(f"configuration refused:\n{exc}") from exc
        endpoint = endpoint or me.node.endpoint
        if me.tls is None:
            tls = args.ca is not None  # a node without [tls] serves its clients in the clear
        elif ca is None:
            ca = me.tls.ca
    if not endpoint:
        raise Usage("--endpoint HOST:PORT or --config FILE: which node to ask")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise Usage(f"--endpoint: expected HOST:PORT, got {endpoint!r}")
    if host in ("0.0.0.0", "[::]", "::"):  # noqa: S104 - a wildcard listen address, not a bind
        endpoint = f"127.0.0.1:{port}"  # a node listening everywhere is reached on loopback
    roots = None
    if ca is not None:
        try:
            roots = ca.read_bytes()
        except OSError as exc:
            raise Usage(f"--ca {ca}: cannot be read: {exc.strerror or exc}") from exc
    return endpoint, roots, tls


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise Usage(f"--token-file {args.token_file}: cannot be read: {exc}") from exc
    else:
        token = os.environ.get(TOKEN_SETTING, "").strip()
    if not token:
        raise Usage(f"--token-file FILE (or ${TOKEN_SETTING}): the admin client's token is needed")
    return token


def _ask(args: argparse.Namespace, method: str, request: Message) -> Any:
    """The node's answer to one admin RPC; raises Usage or Refused."""
    import grpc

    from gateway.federation.client import CHANNEL_OPTIONS
    from yrd.admin.v1 import admin_pb2_grpc

    endpoint, roots, tls = _target(args)
    token = _token(args)
    channel = (
        grpc.secure_channel(
            endpoint, grpc.ssl_channel_credentials(root_certificates=roots), options=CHANNEL_OPTIONS
        )
        if tls
        else grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    )
    with channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            return getattr(stub, method)(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=TIMEOUT
            )
        except grpc.RpcError as exc:
            raise Refused(endpoint, exc) from exc


class Refused(Exception):
    """The call failed: the node said no, or it could not be asked."""

    def __init__(self, endpoint: str, error: grpc.RpcError) -> None:
        code = error.code().name if hasattr(error, "code") else "UNKNOWN"
        details = error.details() if hasattr(error, "details") else str(error)
        super().__init__(f"{endpoint}: {code}: {details}")
        self.status = EXIT_REFUSED if code in _REFUSALS else EXIT_USAGE


def _command(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Usage problems and refusals are one line on stderr and an exit status."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except Usage as exc:
            print(f"yrd-gateway admin: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except Refused as exc:
            print(f"yrd-gateway admin: {exc}", file=sys.stderr)
            return exc.status

    run.__doc__ = handler.__doc__
    return run


def _print_json(answer: Message) -> None:
    from google.protobuf import json_format

    print(
        json_format.MessageToJson(
            answer,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
            indent=2,
        )
    )


# ---- output ------------------------------------------------------------------------------


def _when(stamp: Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _since(stamp: Timestamp, now: float) -> str:
    return "-" if not stamp.seconds else age(now - stamp.seconds)


def _until(stamp: Timestamp, now: float) -> str:
    return "-" if not stamp.seconds else age(stamp.seconds - now)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """``10m`` as seconds (s, m, h, d; a bare number is seconds)."""
    matched = _DURATION.fullmatch(text.strip())
    if matched is None:
        raise Usage(f"--older-than: expected a duration such as 30s, 10m, 2h or 1d, got {text!r}")
    seconds = float(matched.group(1)) * _UNITS[matched.group(2)]
    if seconds > 2**32 - 1:
        raise Usage("--older-than: at most 136 years")
    return int(seconds)


def _exchange_rows(exchanges: Sequence[admin_pb2.Exchange], now: float) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("REFERENCE", "PEER", "SERVICE", "STATE", "ATTEMPTS", "AGE", "NEXT", "STATUS", "LAST ERROR")
    ]
    for e in exchanges:
        rows.append(
            (
                e.reference,
                e.peer,
                e.service or "-",
                e.state,
                str(e.attempts),
                _since(e.created_at, now),
                _until(e.next_attempt_at, now),
                e.case_status or "-",
                e.last_error or "-",
            )
        )
    return rows


# ---- the commands ------------------------------------------------------------------------


@_command
def admin_peers(args: argparse.Namespace) -> int:
    import time

    from yrd.admin.v1 import admin_pb2

    answer = _ask(args, "ListPeers", admin_pb2.ListPeersRequest())
    if args.json:
        _print_json(answer)
        return 0
    now = time.time()
    rows = [
        (
            "PEER",
            "NAME",
            "REACHABLE",
            "BREAKER",
            "LAST SUCCESS",
            "DESCRIPTOR",
            "PENDING",
            "PARKED",
            "LAST ERROR",
        )
    ]
    for peer in answer.peers:
        rows.append(
            (
                peer.province,
                peer.name or "-",
                "yes" if peer.reachable else "no",
                peer.breaker_state,
                "-" if not peer.last_success.seconds else f"{_since(peer.last_success, now)} ago",
                peer.descriptor_state,
                str(peer.pending),
                str(peer.parked),
                peer.last_error or "-",
            )
        )
    table(rows)
    keys = [*answer.own_keys, *(k for peer in answer.peers for k in peer.keys)]
    if keys:
        print()
        expiry = [("PROVINCE", "KIND", "KEY", "NOT AFTER", "DAYS LEFT")]
        for key in sorted(keys, key=lambda k: k.days_left):
            expiry.append(
                (key.province, key.kind, key.key_id, _when(key.not_after), f"{key.days_left:.1f}")
            )
        table(expiry)
    return 0


@_command
def admin_exchanges_list(args: argparse.Namespace) -> int:
    import time

    from yrd.admin.v1 import admin_pb2

    if args.limit < 0:
        raise Usage("--limit: expected 0 (for 100) up to 1000")
    request = admin_pb2.ListExchangesRequest(
        state=args.state,
        peer=args.peer,
        min_age_seconds=duration(args.older_than),
        limit=args.limit,
    )
    answer = _ask(args, "ListExchanges", request)
    if args.json:
        _print_json(answer)
        return 0
    table(_exchange_rows(answer.exchanges, time.time()))
    more = " (more matched: raise --limit)" if answer.truncated else ""
    print(f"{len(answer.exchanges)} exchange(s){more}", file=sys.stderr)
    return 0


@_command
def admin_steer(args: argparse.Namespace) -> int:
    """``exchanges retry`` / ``exchanges park``."""
    from yrd.admin.v1 import admin_pb2

    request = admin_pb2.SteerExchangeRequest(
        reference=args.reference, operator=args.operator, reason=args.reason
    )
    method = "RetryExchange" if args.exchanges_command == "retry" else "ParkExchange"
    return _steered(args, _ask(args, method, request))


@_command
def admin_resolve(args: argparse.Namespace) -> int:
    from yrd.admin.v1 import admin_pb2

    request = admin_pb2.ResolveExchangeRequest(
        reference=args.reference, paid=args.paid, operator=args.operator, reason=args.reason
    )
    return _steered(args, _ask(args, "ResolveExchange", request))


def _steered(args: argparse.Namespace, answer: admin_pb2.SteerExchangeResponse) -> int:
    import time

    if args.json:
        _print_json(answer)
        return 0
    print(answer.detail)
    if answer.exchanges:
        table(_exchange_rows(answer.exchanges, time.time()))
    return 0


@_command
def admin_log_search(args: argparse.Namespace) -> int:
    import time

    from yrd.admin.v1 import admin_pb2

    if args.limit < 0:
        raise Usage("--limit: expected 0 (for 200) up to 1000")
    request = admin_pb2.SearchLogRequest(correlation_id=args.correlation_id, limit=args.limit)
    answer = _ask(args, "SearchLog", request)
    if args.json:
        _print_json(answer)
        return 0
    rows = [("SEQ", "LOGGED", "DIRECTION", "KIND", "PEER", "SERVICE", "SUMMARY")]
    for e in answer.entries:
        rows.append(
            (
                str(e.seq),
                _when(e.logged_at),
                e.direction,
                e.kind,
                e.peer or "-",
                e.service,
                e.summary,
            )
        )
    table(rows)
    more = " (more matched: raise --limit)" if answer.truncated else ""
    print(f"{len(answer.entries)} row(s){more}", file=sys.stderr)
    if answer.cases:
        print()
        cases = [("CASE", "DOMAIN", "SIDE", "PEER", "UPDATED", "STATUS")]
        for c in answer.cases:
            cases.append((c.reference, c.domain, c.side, c.peer, _when(c.updated_at), c.status))
        table(cases)
    if answer.exchanges:
        print()
        table(_exchange_rows(answer.exchanges, time.time()))
    return 0


@_command
def admin_log_verify(args: argparse.Namespace) -> int:
    from yrd.admin.v1 import admin_pb2

    answer = _ask(args, "VerifyMessageLog", admin_pb2.VerifyMessageLogRequest())
    if args.json:
        _print_json(answer)
    elif answer.intact:
        print(f"intact: {answer.rows_checked} rows checked, head {answer.head_hash}")
    else:
        print(
            f"BROKEN at row {answer.first_bad_seq} ({answer.rows_checked} rows checked):"
            f" {answer.detail}"
        )
    return 0 if answer.intact else EXIT_REFUSED


@_command
def admin_diagnostics(args: argparse.Namespace) -> int:
    from yrd.admin.v1 import admin_pb2

    answer = _ask(args, "RunDiagnostics", admin_pb2.RunDiagnosticsRequest())
    if args.json:
        _print_json(answer)
    else:
        print(f"config: {'ok' if answer.config_ok else 'PROBLEMS'}")
        for problem in answer.config_problems:
            print(f"  {problem}")
        print(f"adapter: {'ok' if answer.adapter_ok else 'FAILED'}")
        print(answer.adapter_report.rstrip())
    return 0 if answer.config_ok and answer.adapter_ok else EXIT_REFUSED
