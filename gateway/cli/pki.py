"""``yrd-gateway pki``: development keys and TLS certificates.

``pki init`` makes everything for the shipped provinces at once (development);
a province that joins runs ``pki province`` on its own machine and sends only
its certificate signing request to the federation CA operator, who runs
``pki certify``.
"""

from __future__ import annotations

import argparse
import sys
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

    province = pki_commands.add_parser(
        "province",
        help="a joining province's keys and its node's certificate signing request (no CA key)",
    )
    province.add_argument("code", metavar="CODE", help="the province's GB/T 2260 code")
    province.add_argument(
        "directory",
        metavar="DIR",
        help="the province's own folder: writes DIR/keys/ (private keys stay there)",
    )
    province.add_argument("--overwrite", action="store_true", help="replace existing keys")
    province.set_defaults(func=pki_province)

    certify = pki_commands.add_parser(
        "certify",
        help="(federation CA operator) check a node's signing request and issue its certificate",
    )
    certify.add_argument("request", metavar="CSR", help="the province's tls.csr.pem")
    certify.add_argument(
        "--ca",
        required=True,
        metavar="DIR",
        help="the federation CA's folder (ca.crt.pem, ca.key.pem)",
    )
    certify.add_argument(
        "--out", required=True, metavar="CERT", help="where to write the node certificate"
    )
    certify.add_argument(
        "--days",
        type=float,
        default=365,
        metavar="N",
        help="validity in days from now (default 365; never past the CA's certificate)",
    )
    certify.set_defaults(func=pki_certify)


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


def pki_province(args: argparse.Namespace) -> int:
    from gateway.tools.pki import init_province

    try:
        written = init_province(Path(args.directory), args.code, overwrite=args.overwrite)
    except (OSError, ValueError) as exc:
        print(f"pki province: {exc}", file=sys.stderr)
        return 1
    for key in written.keys:
        print(f"{key.province}  {key.kind:<11} {key.public_path}  sha256:{key.fingerprint}")
    print(f"{written.province}  tls key     {written.tls_key_path}  (private: stays here)")
    print(f"{written.province}  tls request {written.request_path}")
    print(
        f"send only {written.request_path.name} to the federation CA operator "
        "(`yrd-gateway pki certify`); put the certificate it returns at "
        "keys/tls.crt.pem and the federation CA certificate at keys/ca.crt.pem"
    )
    return 0


def pki_certify(args: argparse.Namespace) -> int:
    from gateway.tools.pki import RequestRefused, certify

    request = Path(args.request)
    try:
        issued = certify(request.read_bytes(), Path(args.ca), Path(args.out), days=args.days)
    except RequestRefused as exc:
        print(f"{request}: refused: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"pki certify: {exc}", file=sys.stderr)
        return 1
    print(f"province {issued.province}")
    print(f"certificate {issued.certificate_path}  sha256:{issued.fingerprint}")
    print(
        f"names urn:yrd:province:{issued.province} {' '.join(issued.dns_names)} "
        f"{' '.join(issued.ip_addresses)}".rstrip()
    )
    print(f"valid until {issued.not_after.isoformat()}")
    print(f"federation CA sha256:{issued.ca_fingerprint}")
    return 0
