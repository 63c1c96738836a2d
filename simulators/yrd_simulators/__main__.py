"""Run one province's back-end simulators as a process of their own.

    python -m yrd_simulators --province 320000 --eid-port 0 --fund-port 0 \\
        --keys-dir province_configs/320000/keys

starts the province's e-ID authority and fund centre on loopback, prints one
JSON line to stdout::

    {"province": "320000", "eid_url": "http://127.0.0.1:…", "fund_url": "http://127.0.0.1:…"}

and serves until SIGTERM or SIGINT, then stops both and exits 0. A separate
process is what multi-process tests need: gateway nodes can be killed and
restarted while the back-ends keep their state (used tokens, accounts,
withdrawal cases), as real back-ends would.

``--keys-dir`` is the province's keys folder (default
``province_configs/<province>/keys``). The e-ID issuer key is
``<keys-dir>/eid-issuer.key.pem``; its key id is ``--eid-key-id``, or else the
last ``[[eid.issuer_keys]]`` of ``province.toml`` in the folder above ``--keys-dir``.

A region known only by its config (one being added; see
``docs/adding-a-province.md``) is served with ``--config FILE`` instead of
``--province``::

    python -m yrd_simulators --config province_configs/360000/province.toml

which takes the province code from ``[province].code``, the issuer key from
``[eid].issuer_private_key``, its key id from the last ``[[eid.issuer_keys]]``,
and the native documents from ``[adapter]`` (the mapped dialect of
:mod:`yrd_simulators.mapped`, for a region with no hand-written one).
The fund centre is started only when the region has ``[adapter.fund]``;
otherwise ``fund_url`` is null.

``--state-dir DIR`` keeps the fund centre's cases, balances and payment
ledger, and the case system's cases, in SQLite files in DIR
(``fund-<province>.db``, ``cases-<province>.db``), so a simulator killed and
started again with the same DIR still knows what it took and paid.

The province's e-certificate library and case system are started too
(``--cert-port``, ``--case-port``), adding ``cert_url`` and ``case_url`` to
the JSON line (null for a region without hand-written ones). The library
seals with ``<keys-dir>/seal.key.pem`` under key id
``--seal-key-id`` (default ``"<province>-seal-2026"``).

Besides the native endpoints the node calls, the simulators answer plain HTTP for
people and tests (README, "Residents, QR codes and fund accounts"):
``GET <eid_url>/residents`` (credential ids, ID numbers, names, states),
``POST <eid_url>/wallet/qr`` with ``{"credential_id": ..., "ttl_seconds": 120}``
(a fresh single-use QR code), ``GET <fund_url>/admin/accounts`` (accounts, holders,
balances), ``GET <cert_url>/admin/certificates`` and ``POST <cert_url>/admin/consents``
with ``{"holder_id", "requesting_province", "expires_at", "purpose"}``.
``yrd-gateway up`` runs these for all four provinces on fixed ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapters.spec import AdapterConfig
from gateway.server import eventloop
from yrd_simulators import case_system, certificate_library, eid_authority, fund_centre


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m yrd_simulators",
        description="Run a province's e-ID authority and fund centre simulators on loopback.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--province", choices=sorted(fund_centre.DIALECTS))
    which.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a province config file: serve that region (its code, e-ID key, mapping)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--eid-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--fund-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--keys-dir",
        type=Path,
        metavar="DIR",
        help="the province's keys folder (default province_configs/<province>/keys)",
    )
    parser.add_argument("--eid-key-id", help="key id of the e-ID issuer key (default: config)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic residents and accounts")
    parser.add_argument("--review-delay", type=float, default=0.05, help="seconds")
    parser.add_argument("--payment-delay", type=float, default=0.05, help="seconds")
    parser.add_argument("--cert-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--case-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--seal-key-id", help="key id of the seal key (default <province>-seal-2026)"
    )
    parser.add_argument("--processing-delay", type=float, default=0.05, help="cases, seconds")
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep the fund centre's and case system's cases, balances and payment ledger"
        " in DIR (fund-<province>.db, cases-<province>.db), surviving a restart",
    )
    return parser


def _configured_key_id(keys_dir: Path, province: str) -> str | None:
    """The last e-ID issuer key id in the province's config (next to its keys folder)."""
    for path in [keys_dir.resolve().parent / "province.toml"]:
        try:
            with path.open("rb") as f:
                config = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if config.get("province", {}).get("code") == province:
            keys = config.get("eid", {}).get("issuer_keys") or []
            if keys and isinstance(keys[-1].get("key_id"), str):
                key_id: str = keys[-1]["key_id"]
                return key_id
    return None


@dataclass(frozen=True)
class Region:
    """What the simulators need to know of the region they serve."""

    code: str
    issuer_key: Path
    key_id: str
    adapter: AdapterConfig | None = None


def _region_from_config(path: Path) -> Region:
    from gateway.config.loading import parse_province_file  # the gateway's own validation
    from gateway.core.errors import ConfigError

    try:
        config = parse_province_file(path)
    except ConfigError as exc:
        raise SystemExit(f"configuration refused:\n{exc}") from None
    if config.eid.issuer_private_key is None:
        raise SystemExit(
            f"{path}: eid.issuer_private_key: expected the e-ID issuer key the simulator signs with"
        )
    return Region(
        config.code,
        config.eid.issuer_private_key,
        config.eid.issuer_keys[-1].key_id,
        config.adapter,
    )


def _region(args: argparse.Namespace) -> Region:
    if args.config is not None:
        if args.keys_dir is None:
            args.keys_dir = args.config.parent / "keys"
        region = _region_from_config(args.config)
        if args.eid_key_id:
            region = Region(region.code, region.issuer_key, args.eid_key_id, region.adapter)
        return region
    if args.keys_dir is None:
        args.keys_dir = Path("province_configs") / args.province / "keys"
    key_id = args.eid_key_id or _configured_key_id(args.keys_dir, args.province)
    if key_id is None:
        raise SystemExit(
            f"no e-ID issuer key id for {args.province}: pass --eid-key-id, or a --keys-dir "
            "whose parent folder holds the province's config"
        )
    return Region(args.province, args.keys_dir / "eid-issuer.key.pem", key_id)


def _state_file(args: argparse.Namespace, name: str, province: str) -> Path | None:
    directory: Path | None = args.state_dir
    return None if directory is None else directory / f"{name}-{province}.db"


async def serve(args: argparse.Namespace) -> None:
    """Start both simulators, announce them, and serve until SIGTERM / SIGINT."""
    region = _region(args)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    eid = eid_authority.EidAuthoritySimulator(
        region.code, region.issuer_key, region.key_id, seed=args.seed, adapter=region.adapter
    )
    fund = None
    if region.code in fund_centre.DIALECTS or (
        region.adapter is not None and region.adapter.fund is not None
    ):
        fund = fund_centre.FundCentreSimulator(
            region.code,
            seed=args.seed,
            review_delay=args.review_delay,
            payment_delay=args.payment_delay,
            adapter=region.adapter,
            state_file=_state_file(args, "fund", region.code),
        )
    library = None
    cases = None
    if region.code in certificate_library.DIALECTS:
        library = certificate_library.CertificateLibrarySimulator(
            region.code,
            args.keys_dir / "seal.key.pem",
            args.seal_key_id or f"{region.code}-seal-2026",
            seed=args.seed,
        )
        cases = case_system.CaseSystemSimulator(
            region.code,
            seed=args.seed,
            processing_delay=args.processing_delay,
            state_file=_state_file(args, "cases", region.code),
        )
    try:
        eid_url = await eid.start(args.host, args.eid_port)
        fund_url = None if fund is None else await fund.start(args.host, args.fund_port)
        cert_url = None if library is None else await library.start(args.host, args.cert_port)
        case_url = None if cases is None else await cases.start(args.host, args.case_port)
        announcement = {
            "province": region.code,
            "eid_url": eid_url,
            "fund_url": fund_url,
            "cert_url": cert_url,
            "case_url": case_url,
        }
        sys.stdout.write(json.dumps(announcement) + "\n")
        sys.stdout.flush()
        await stopping.wait()
    finally:
        if cases is not None:
            await cases.stop()
            cases.close_state()
        if library is not None:
            await library.stop()
        if fund is not None:
            await fund.stop()
            fund.close_state()
        await eid.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.review_delay < 0 or args.payment_delay < 0 or args.processing_delay < 0:
        raise SystemExit(
            "--review-delay, --payment-delay and --processing-delay must not be negative"
        )
    eventloop.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
