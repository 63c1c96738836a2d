"""Run one province's back-end simulators as a process of their own.

    python -m adapters.simulators --province 320000 --eid-port 0 --fund-port 0 \\
        --keys-dir province_configs/keys

starts the province's e-ID authority and fund centre on loopback, prints one
JSON line to stdout::

    {"province": "320000", "eid_url": "http://127.0.0.1:…", "fund_url": "http://127.0.0.1:…"}

and serves until SIGTERM or SIGINT, then stops both and exits 0. A separate
process is what multi-process tests need: gateway nodes can be killed and
restarted while the back-ends keep their state (used tokens, accounts,
withdrawal cases), as real back-ends would.

The e-ID issuer key is ``<keys-dir>/<province>/eid-issuer.key.pem``; its key
id is ``--eid-key-id``, or else the last ``[[eid.issuer_keys]]`` of the
province's config file in the folder above ``--keys-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from adapters.simulators import eid_authority, fund_centre


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.simulators",
        description="Run a province's e-ID authority and fund centre simulators on loopback.",
    )
    parser.add_argument("--province", required=True, choices=sorted(fund_centre.DIALECTS))
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--eid-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--fund-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--keys-dir", type=Path, default=Path("province_configs/keys"))
    parser.add_argument("--eid-key-id", help="key id of the e-ID issuer key (default: config)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic residents and accounts")
    parser.add_argument("--review-delay", type=float, default=0.05, help="seconds")
    parser.add_argument("--payment-delay", type=float, default=0.05, help="seconds")
    return parser


def _configured_key_id(keys_dir: Path, province: str) -> str | None:
    """The last e-ID issuer key id in the province's config (next to the keys folder)."""
    for path in sorted(keys_dir.resolve().parent.glob("*.toml")):
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


async def serve(args: argparse.Namespace) -> None:
    """Start both simulators, announce them, and serve until SIGTERM / SIGINT."""
    key_id = args.eid_key_id or _configured_key_id(args.keys_dir, args.province)
    if key_id is None:
        raise SystemExit(
            f"no e-ID issuer key id for {args.province}: pass --eid-key-id, or a --keys-dir "
            "whose parent folder holds the province's config"
        )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    eid = eid_authority.EidAuthoritySimulator(
        args.province,
        args.keys_dir / args.province / "eid-issuer.key.pem",
        key_id,
        seed=args.seed,
    )
    fund = fund_centre.FundCentreSimulator(
        args.province,
        seed=args.seed,
        review_delay=args.review_delay,
        payment_delay=args.payment_delay,
    )
    try:
        eid_url = await eid.start(args.host, args.eid_port)
        fund_url = await fund.start(args.host, args.fund_port)
        announcement = {"province": args.province, "eid_url": eid_url, "fund_url": fund_url}
        sys.stdout.write(json.dumps(announcement) + "\n")
        sys.stdout.flush()
        await stopping.wait()
    finally:
        await fund.stop()
        await eid.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.review_delay < 0 or args.payment_delay < 0:
        raise SystemExit("--review-delay and --payment-delay must not be negative")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
