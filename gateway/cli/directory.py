"""``yrd-gateway directory``: an operator's commands on the federation directory.

- ``export``: write this node's signed descriptor to a file (the one the node
  serves: same serial), for onboarding a peer without a network path;
- ``import FILE``: check a peer's descriptor file as a fetched one is checked
  and install it in the node's store (a running node takes it within a second);
- ``show FILE``: a descriptor file's facts, human-readably (and, with
  ``--config``, whether this node would trust it);
- ``list``: the federation's service map, from the node's store (``--config``)
  or from a running node (``--endpoint``, AdminService.GetServiceMap).

Exit codes: 0 done, 1 refused (one line on stderr: reason label and message),
2 bad usage, an unusable config or an unreadable file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.common import EXIT_USAGE, Subparsers, table

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from gateway.config.models import ProvinceConfig
    from gateway.config.peers import PeerFacts, PeerKey
    from yrd.admin.v1 import admin_pb2

#: Where ``list --endpoint`` takes the client token when ``--token`` is not given.
TOKEN_SETTING = "YRD_ADMIN_TOKEN"  # noqa: S105  # the name of a setting, not a token
EXIT_REFUSED = 1


def register(commands: Subparsers) -> None:
    directory = commands.add_parser(
        "directory", help="the federation directory: descriptors and the service map"
    )
    actions = directory.add_subparsers(dest="directory_command", required=True, metavar="ACTION")

    export = actions.add_parser(
        "export", help="write this node's signed descriptor to a file (to hand to a peer)"
    )
    export.add_argument("--config", required=True, metavar="FILE", help="the node's config")
    export.add_argument(
        "--out", metavar="FILE", help="where to write it (default: ./<code>.descriptor)"
    )
    export.set_defaults(func=directory_export)

    install = actions.add_parser(
        "import", help="check a peer's descriptor file as a fetched one and install it"
    )
    install.add_argument("file", metavar="FILE", help="a descriptor file (`directory export`)")
    install.add_argument("--config", required=True, metavar="FILE", help="the node's config")
    install.set_defaults(func=directory_import)

    show = actions.add_parser("show", help="print a descriptor file's facts")
    show.add_argument("file", metavar="FILE", help="a descriptor file")
    show.add_argument(
        "--config", metavar="FILE", help="also check it against this node's federation CA"
    )
    show.set_defaults(func=directory_show)

    listing = actions.add_parser(
        "list", help="the service map: which province offers which service, version, since"
    )
    source = listing.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config", metavar="FILE", help="offline: the descriptors in this node's store"
    )
    source.add_argument(
        "--endpoint", metavar="HOST:PORT", help="a running node's client endpoint (TLS)"
    )
    listing.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"with --endpoint: a client token allowed yrd.admin.v1.AdminService "
        f"(default: ${TOKEN_SETTING})",
    )
    listing.add_argument(
        "--ca", metavar="PEM", help="with --endpoint: the CA certificate the node's TLS chains to"
    )
    listing.add_argument(
        "--server-name",
        metavar="NAME",
        help="with --endpoint: the name the node's certificate carries, if not the host",
    )
    listing.add_argument("--json", action="store_true", help="JSON for machines")
    listing.set_defaults(func=directory_list)


# ---- shared ------------------------------------------------------------------------------


def _quiet_logs() -> None:
    """Library log lines (e.g. "descriptor published") to stderr, warnings only:
    stdout is the command's answer."""
    from gateway.core import logs

    logs.configure("WARNING", sys.stderr, json=False)


def _own_config(config_file: str) -> ProvinceConfig | None:
    """The node's own config; None (and a message) when it cannot be used here."""
    from gateway.config.loading import load_own
    from gateway.core.errors import ConfigError

    try:
        me = load_own(Path(config_file))
    except ConfigError as exc:
        print(f"configuration refused:\n{exc}", file=sys.stderr)
        return None
    if me.tls is None:
        print(
            f"{config_file}: no [tls] table: a node without one has no descriptor "
            "(it is signed with the TLS key and checked against the federation CA)",
            file=sys.stderr,
        )
        return None
    return me


def _read_descriptor_file(name: str) -> bytes | None:
    """At most one byte more than any descriptor accepted (the check refuses it)."""
    from gateway.trust.descriptor import MAX_SIGNED_BYTES

    try:
        with open(name, "rb") as file:
            return file.read(MAX_SIGNED_BYTES + 1)
    except OSError as exc:
        print(f"{name}: cannot be read: {exc.strerror or exc}", file=sys.stderr)
        return None


def _when(value: datetime) -> str:
    from datetime import UTC

    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp(value: Timestamp) -> datetime:
    from datetime import UTC

    return value.ToDatetime(tzinfo=UTC)


def _refused(reason: str, message: str) -> int:
    print(f"refused: {reason}: {message}", file=sys.stderr)
    return EXIT_REFUSED


# ---- export, import ----------------------------------------------------------------------


def directory_export(args: argparse.Namespace) -> int:
    from gateway.core.clock import SystemClock
    from gateway.federation.directory import Publisher
    from gateway.storage.descriptors import DescriptorCache
    from gateway.trust import descriptor as descriptors

    _quiet_logs()
    me = _own_config(args.config)
    if me is None:
        return EXIT_USAGE
    cache = DescriptorCache(me.node.local_folder / "directory")
    try:
        # The descriptor the node serves (issued now only if none is current).
        data = Publisher(cache, SystemClock()).current(me)
    except OSError as exc:
        print(f"{cache.folder}: cannot be written: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # an unreadable TLS key or certificate
        print(f"{args.config}: tls: {exc}", file=sys.stderr)
        return EXIT_USAGE
    facts = descriptors.facts_of(descriptors.read(descriptors.parse_signed(data)))
    out = Path(args.out or f"{me.code}.descriptor")
    try:
        out.write_bytes(data)
    except OSError as exc:
        print(f"{out}: cannot be written: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{facts.code} {facts.name}: serial {facts.serial}, not_after {_when(facts.not_after)}")
    print(f"wrote {out}: sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


def directory_import(args: argparse.Namespace) -> int:
    from datetime import UTC

    from gateway.federation.directory import install
    from gateway.storage.descriptors import DescriptorCache
    from gateway.trust.descriptor import DescriptorRefused

    _quiet_logs()
    me = _own_config(args.config)
    if me is None:
        return EXIT_USAGE
    data = _read_descriptor_file(args.file)
    if data is None:
        return EXIT_USAGE
    cache = DescriptorCache(me.node.local_folder / "directory")
    try:
        facts = install(me, cache, data, datetime.now(UTC))
    except DescriptorRefused as exc:
        return _refused(exc.reason, str(exc))
    except ValueError as exc:  # the node's federation CA certificate is unreadable
        print(f"{args.config}: tls.ca: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{cache.folder}: cannot be written: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"installed {facts.code} {facts.name}: serial {facts.serial}, "
        f"not_after {_when(facts.not_after)} (a running node takes it within a second)"
    )
    return 0


# ---- show ----------------------------------------------------------------------------------


def _keys(title: str, keys: tuple[PeerKey, ...]) -> list[str]:
    lines = [f"{title}:" + ("" if keys else " none")]
    for key in keys:
        lines.append(f"  {key.key_id}  {_when(key.not_before)} .. {_when(key.not_after)}")
    return lines


def _facts_lines(facts: PeerFacts) -> list[str]:
    local = f" ({facts.local_name})" if facts.local_name else ""
    lines = [
        f"province: {facts.code} {facts.name}{local}",
        f"serial: {facts.serial}",
        f"issued_at: {_when(facts.issued_at)}",
        f"not_after: {_when(facts.not_after)}",
        f"contact: {facts.contact or '-'}",
        f"endpoints: {', '.join(facts.endpoints)}",
        f"tls certificate sha256: {facts.tls_certificate_sha256}",
    ]
    lines += _keys("signing keys", facts.signing_keys)
    lines += _keys("e-ID issuer keys", facts.eid_issuer_keys)
    lines += _keys("seal keys", facts.seal_keys)
    lines.append("services:" + ("" if facts.offers else " none"))
    for offered in sorted(facts.offers, key=lambda o: o.service):
        lines.append(f"  {offered.service}  {offered.version}  since {_when(offered.since)}")
    lines.append("disclosure:" + ("" if facts.disclosure else " none"))
    for purpose, attributes in sorted(facts.disclosure.items()):
        lines.append(f"  {purpose}: {', '.join(attributes) or '-'}")
    return lines


def _signer_line(certificate_der: bytes) -> str:
    from cryptography import x509

    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
    except ValueError:
        return "signed with: not a DER X.509 certificate"
    return (
        f"signed with: certificate sha256 {hashlib.sha256(certificate_der).hexdigest()}, "
        f"valid {_when(certificate.not_valid_before_utc)} .. "
        f"{_when(certificate.not_valid_after_utc)}"
    )


def directory_show(args: argparse.Namespace) -> int:
    from datetime import UTC

    from gateway.trust import descriptor as descriptors
    from gateway.trust.descriptor import DescriptorRefused

    _quiet_logs()
    me = None
    if args.config is not None:
        me = _own_config(args.config)
        if me is None:
            return EXIT_USAGE
    data = _read_descriptor_file(args.file)
    if data is None:
        return EXIT_USAGE
    try:
        signed = descriptors.parse_signed(data)
        facts = descriptors.facts_of(descriptors.read(signed))
    except DescriptorRefused as exc:
        return _refused(exc.reason, str(exc))
    for line in _facts_lines(facts):
        print(line)
    print(_signer_line(signed.certificate))
    print(f"file sha256: {hashlib.sha256(data).hexdigest()}")
    if me is None or me.tls is None:
        return 0
    try:
        descriptors.verify(
            signed, ca=descriptors.load_ca(me.tls.ca.read_bytes()), now=datetime.now(UTC)
        )
    except DescriptorRefused as exc:
        print(f"check against {me.code}'s federation CA: refused ({exc.reason}): {exc}")
        return EXIT_REFUSED
    except ValueError as exc:  # the node's federation CA certificate is unreadable
        print(f"{args.config}: tls.ca: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"check against {me.code}'s federation CA: ok")
    if facts.code == me.code:
        print(f"note: this is {me.code}'s own descriptor")
    elif facts.code not in {peer.code for peer in me.peers}:
        print(
            f"note: {facts.code} is not in this node's [[peers]]: "
            "`directory import` refuses it until it is"
        )
    return 0


# ---- list ----------------------------------------------------------------------------------


def _stored_map(config_file: str) -> admin_pb2.ServiceMap | None:
    from datetime import UTC

    from gateway.federation.directory import stored_service_map
    from gateway.services.admin import service_map_message

    me = _own_config(config_file)
    if me is None:
        return None
    try:
        entries = stored_service_map(me, datetime.now(UTC))
    except (OSError, ValueError) as exc:  # the CA certificate unreadable
        print(f"{config_file}: tls.ca: {exc}", file=sys.stderr)
        return None
    return service_map_message(entries)


def _remote_map(args: argparse.Namespace) -> admin_pb2.ServiceMap | int:
    """The map a running node answers; an exit status when it cannot be had."""
    import grpc

    from yrd.admin.v1 import admin_pb2, admin_pb2_grpc

    token = args.token or os.environ.get(TOKEN_SETTING, "")
    if not token:
        print(f"--token (or ${TOKEN_SETTING}): a client token is needed", file=sys.stderr)
        return EXIT_USAGE
    host, _, port = args.endpoint.rpartition(":")
    if not host or not port.isdigit():
        print(f"--endpoint: expected HOST:PORT, got {args.endpoint!r}", file=sys.stderr)
        return EXIT_USAGE
    roots = None
    if args.ca:
        try:
            roots = Path(args.ca).read_bytes()
        except OSError as exc:
            print(f"{args.ca}: cannot be read: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    with grpc.secure_channel(args.endpoint, credentials, options=options) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            answer: admin_pb2.ServiceMap = stub.GetServiceMap(
                admin_pb2.GetServiceMapRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=15,
            )
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            print(f"{args.endpoint}: {code}: {details}", file=sys.stderr)
            return EXIT_REFUSED
    return answer


def _map_json(answer: admin_pb2.ServiceMap) -> dict[str, Any]:
    provinces = []
    for item in answer.provinces:
        provinces.append(
            {
                "province": item.province,
                "name": item.name,
                "state": item.state,
                "serial": item.serial,
                "not_after": _when(_stamp(item.not_after)) if item.serial else None,
                "endpoints": list(item.endpoints),
                "operator_contact": item.operator_contact,
                "last_refusal": item.last_refusal,
                "services": [
                    {
                        "service": s.service,
                        "version": s.version,
                        "since": _when(_stamp(s.since)),
                    }
                    for s in item.services
                ],
            }
        )
    return {"provinces": provinces}


def _map_rows(answer: admin_pb2.ServiceMap) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for item in answer.provinces:
        serial = str(item.serial) if item.serial else "-"
        not_after = _when(_stamp(item.not_after)) if item.serial else "-"
        refusal = item.last_refusal or "-"
        head = (item.province, item.name or "-", item.state)
        if not item.services:
            rows.append((*head, "-", "-", "-", serial, not_after, refusal))
        for offered in sorted(item.services, key=lambda s: s.service):
            since = _stamp(offered.since).date().isoformat()
            rows.append(
                (*head, offered.service, offered.version, since, serial, not_after, refusal)
            )
    return rows


def directory_list(args: argparse.Namespace) -> int:
    _quiet_logs()
    if args.config is not None:
        found = _stored_map(args.config)
        if found is None:
            return EXIT_USAGE
        answer = found
        own = answer.provinces[0]
        if not own.serial:
            print(
                f"{own.province}: no own descriptor in the store yet (the node publishes "
                "one at start; `directory export` issues it too)",
                file=sys.stderr,
            )
    else:
        remote = _remote_map(args)
        if isinstance(remote, int):
            return remote
        answer = remote
    if args.json:
        print(json.dumps(_map_json(answer), indent=2, ensure_ascii=False))
        return 0
    header = (
        "PROVINCE",
        "NAME",
        "STATE",
        "SERVICE",
        "VERSION",
        "SINCE",
        "SERIAL",
        "NOT_AFTER",
        "LAST REFUSAL",
    )
    table([header, *_map_rows(answer)])
    return 0
