"""Development PKI: signing keys for every province's node and e-ID authority.

``yrd-gateway pki init DIR`` writes the layout of ``province_configs/``: per
province code, ``DIR/<code>/keys/``:

- ``signing.key.pem`` / ``signing.pub.pem``: the node's envelope signing key;
- ``eid-issuer.key.pem`` / ``eid-issuer.pub.pem``: the e-ID authority's token key;
- ``seal.key.pem`` / ``seal.pub.pem``: the e-certificate authorities' seal key;
- ``tls.crt.pem`` / ``tls.key.pem``: the node's TLS certificate (ECDSA P-256),
  issued by the development federation CA and naming the province in a URI
  subject alternative name ``urn:yrd:province:<code>``;
- ``office.crt.pem`` / ``office.key.pem``: a TLS client certificate for the
  province's government service centre (``office-<code>-001``);
- ``ca.crt.pem``: a copy of the federation CA certificate (the trust anchor
  the province's ``tls.ca`` names);

and once for the federation ``DIR/federation-ca/ca.crt.pem`` / ``ca.key.pem``
(the development CA: not a node's folder; in production the federation runs
its CA offline).

These are for development and tests only; production keys are made and held
by each province's own key ceremony, and only public keys are exchanged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from gateway.core import crypto
from gateway.trust import tls

#: Validity of development certificates.
DEV_NOT_BEFORE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DEV_NOT_AFTER = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

#: (file stem, purpose) of every key pair a province has.
KEY_KINDS: tuple[tuple[str, str], ...] = (
    ("signing", "node envelope signing key"),
    ("eid-issuer", "e-ID authority token signing key"),
    ("seal", "e-certificate issuing authority seal key"),
)


#: The development federation CA's folder below DIR.
CA_FOLDER = "federation-ca"


def keys_folder(directory: Path, code: str) -> Path:
    """A province's keys folder below DIR: ``DIR/<code>/keys``."""
    return directory / code / "keys"


@dataclass(frozen=True)
class WrittenKey:
    province: str
    kind: str
    private_path: Path
    public_path: Path
    fingerprint: str


def init_keys(
    directory: Path, provinces: list[str], *, overwrite: bool = False
) -> list[WrittenKey]:
    """Create every key pair for every province; keep existing ones unless told."""
    written: list[WrittenKey] = []
    for code in provinces:
        folder = keys_folder(directory, code)
        folder.mkdir(parents=True, exist_ok=True)
        for stem, _purpose in KEY_KINDS:
            private_path = folder / f"{stem}.key.pem"
            public_path = folder / f"{stem}.pub.pem"
            if private_path.exists() and not overwrite:
                key = crypto.load_private_key(private_path)
            else:
                key = crypto.generate_private_key()
                private_path.write_bytes(crypto.private_key_pem(key))
                private_path.chmod(0o600)
            public_path.write_bytes(crypto.public_key_pem(key.public_key()))
            written.append(
                WrittenKey(
                    code, stem, private_path, public_path, crypto.fingerprint(key.public_key())
                )
            )
    return written


@dataclass(frozen=True)
class WrittenCertificate:
    province: str
    kind: str
    certificate_path: Path
    fingerprint: str


def init_tls(
    directory: Path, provinces: list[str], *, overwrite: bool = False
) -> list[WrittenCertificate]:
    """The federation CA (kept if present) and each province's node and client certificates."""
    ca_folder = directory / CA_FOLDER
    ca_folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = ca_folder / "ca.crt.pem", ca_folder / "ca.key.pem"
    if ca_cert.exists() and ca_key.exists() and not overwrite:
        ca = tls.load_ca(ca_cert, ca_key)
    else:
        ca = tls.create_ca(not_before=DEV_NOT_BEFORE, not_after=DEV_NOT_AFTER)
        ca.write(ca_cert, ca_key)
    written = [
        WrittenCertificate("", "ca", ca_cert, tls.certificate_fingerprint(ca.certificate_pem))
    ]
    for code in provinces:
        folder = keys_folder(directory, code)
        folder.mkdir(parents=True, exist_ok=True)
        anchor = folder / "ca.crt.pem"
        anchor.write_bytes(ca.certificate_pem)
        written.append(
            WrittenCertificate(code, "ca", anchor, tls.certificate_fingerprint(ca.certificate_pem))
        )
        makers: dict[str, Callable[[], tls.Issued]] = {
            "tls": partial(tls.node_certificate, ca, code, DEV_NOT_BEFORE, DEV_NOT_AFTER),
            "office": partial(
                tls.client_certificate, ca, f"office-{code}-001", DEV_NOT_BEFORE, DEV_NOT_AFTER
            ),
        }
        for kind, make in makers.items():
            certificate_path, key_path = folder / f"{kind}.crt.pem", folder / f"{kind}.key.pem"
            if overwrite or not certificate_path.exists() or not key_path.exists():
                make().write(certificate_path, key_path)
            written.append(
                WrittenCertificate(
                    code,
                    kind,
                    certificate_path,
                    tls.certificate_fingerprint(certificate_path.read_bytes()),
                )
            )
    return written
