"""``yrd-gateway pki init``: development keys and TLS certificates."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli.common import Subparsers

PROVINCE_CODES = ["310000", "320000", "330000", "340000"]


def register(commands: Subparsers) -> None:
    pki = commands.add_parser("pki", help="development keys")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    init = pki_commands.add_parser(
        "init",
        help="create signing, e-ID issuer and seal keys, the federation CA and TLS certificates",
    )
    init.add_argument(
        "directory",
        metavar="DIR",
        help="the configs folder: writes DIR/<code>/keys/ and DIR/federation-ca/",
    )
    init.add_argument(
        "--provinces",
        nargs="+",
        default=PROVINCE_CODES,
        metavar="CODE",
        help="GB/T 2260 codes (default: the four provinces)",
    )
    init.add_argument("--overwrite", action="store_true", help="replace existing keys")
    init.set_defaults(func=pki_init)


def pki_init(args: argparse.Namespace) -> int:
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
