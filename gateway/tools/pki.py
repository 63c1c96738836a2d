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

A province that joins runs ``yrd-gateway pki province CODE DIR`` on its own
machine (:func:`init_province`): its keys and a certificate signing request
for its node's TLS key, never a CA key; the federation CA operator runs
``yrd-gateway pki certify CSR --ca CA_DIR --out CERT`` (:func:`certify`),
which checks the request and issues the node certificate. Only the request
and the certificate travel; the private keys never leave the province.

These are for development and tests only; production keys are made and held
by each province's own key ceremony, and only public keys are exchanged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.core import crypto
from gateway.core.identifiers import is_region_code
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
        written += _key_pairs(keys_folder(directory, code), code, overwrite=overwrite)
    return written


def _key_pairs(folder: Path, code: str, *, overwrite: bool) -> list[WrittenKey]:
    """A province's signing, e-ID issuer and seal key pairs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[WrittenKey] = []
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
            WrittenKey(code, stem, private_path, public_path, crypto.fingerprint(key.public_key()))
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


# ---- Joining: the new province's request, the federation CA's certificate ----

#: Where ``pki province`` writes the node's TLS key and its signing request.
TLS_KEY = "tls.key.pem"
TLS_REQUEST = "tls.csr.pem"


def node_dns_names(code: str) -> tuple[str, ...]:
    """The DNS names a development node certificate carries (as ``pki init``'s)."""
    return ("localhost", f"yrd-node-{code}", f"node-{code}")


def _province_code_problem(code: str) -> str | None:
    if not is_region_code(code) or not code.endswith("0000"):
        return (
            f"got {code!r}, expected a province-level GB/T 2260 code "
            "(six digits ending in 0000 with a province prefix)"
        )
    return None


@dataclass(frozen=True)
class ProvinceKeys:
    """What ``pki province`` wrote: the key pairs, the TLS key and the request."""

    province: str
    keys: list[WrittenKey]
    tls_key_path: Path
    request_path: Path


def init_province(directory: Path, code: str, *, overwrite: bool = False) -> ProvinceKeys:
    """A joining province's own keys in ``DIR/keys/`` (run on its own machine).

    Signing, e-ID issuer and seal key pairs, the node's TLS private key (ECDSA
    P-256) and a certificate signing request naming the province (URI SAN
    ``urn:yrd:province:<code>``, DNS names localhost, yrd-node-<code>,
    node-<code>, IP 127.0.0.1), signed with that key. No CA key is made or read:
    the request goes to the federation CA, which returns the certificate.
    Existing keys are kept unless ``overwrite``.
    """
    problem = _province_code_problem(code)
    if problem is not None:
        raise ValueError(f"province code: {problem}")
    folder = directory / "keys"
    keys = _key_pairs(folder, code, overwrite=overwrite)
    key_path = folder / TLS_KEY
    if key_path.exists() and not overwrite:
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: expected an EC private key")
        key = loaded
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(tls.PROVINCE_URI_PREFIX + code),
        *(x509.DNSName(name) for name in node_dns_names(code)),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(
                        NameOID.ORGANIZATION_NAME, "YRD Gateway development federation"
                    ),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"yrd-node-{code}"),
                ]
            )
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    request_path = folder / TLS_REQUEST
    request_path.write_bytes(request.public_bytes(serialization.Encoding.PEM))
    return ProvinceKeys(code, keys, key_path, request_path)


class RequestRefused(ValueError):
    """A certificate signing request the federation CA does not certify."""


@dataclass(frozen=True)
class Certified:
    """What ``pki certify`` issued."""

    province: str
    certificate_path: Path
    fingerprint: str
    ca_fingerprint: str
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]


#: Default validity of a certificate the CA issues for a request (days).
CERTIFY_DAYS = 365


def certify(
    request_pem: bytes,
    ca_dir: Path,
    out: Path,
    *,
    now: dt.datetime | None = None,
    days: float = CERTIFY_DAYS,
) -> Certified:
    """The federation CA's side: check a node's request and issue its certificate.

    Refused (:class:`RequestRefused`, nothing written) unless the request is a
    well-formed PEM request, its signature verifies with the key it carries
    (the requester holds that private key), the key is ECDSA P-256 (what the
    descriptor signatures use), and its subject alternative names carry
    exactly one URI, ``urn:yrd:province:<code>`` with a province-level GB/T 2260
    code, and no DNS name of another province's node. The certificate names
    that province with the request's DNS names and IP addresses, valid from
    now (an hour back, for clock skew) for ``days``, never past the CA's own
    certificate.
    """
    try:
        request = x509.load_pem_x509_csr(request_pem)
    except ValueError as exc:
        raise RequestRefused(f"not a PEM certificate signing request ({exc})") from exc
    if not request.is_signature_valid:
        raise RequestRefused(
            "the request's signature does not verify with the key it carries "
            "(it was altered, or not made by the key's holder)"
        )
    public_key = request.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != (
        "secp256r1"
    ):
        raise RequestRefused("expected an ECDSA P-256 key in the request")
    try:
        extension = request.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        alternative_names = extension.value
    except x509.ExtensionNotFound:
        alternative_names = x509.SubjectAlternativeName([])
    uris = alternative_names.get_values_for_type(x509.UniformResourceIdentifier)
    provinces = [u for u in uris if u.startswith(tls.PROVINCE_URI_PREFIX)]
    if not provinces:
        raise RequestRefused(
            f"the request names no province: expected one URI subject alternative name "
            f"{tls.PROVINCE_URI_PREFIX}<code>"
        )
    if len(provinces) > 1:
        raise RequestRefused(
            f"the request names {len(provinces)} provinces ({', '.join(provinces)}): "
            "a node certificate names exactly one"
        )
    if len(uris) > 1:
        raise RequestRefused(
            f"the request carries other URIs besides its province ({', '.join(uris)}): "
            "a node certificate names only its province"
        )
    code = provinces[0][len(tls.PROVINCE_URI_PREFIX) :]
    problem = _province_code_problem(code)
    if problem is not None:
        raise RequestRefused(f"the request's province {problem}")
    dns_names = tuple(alternative_names.get_values_for_type(x509.DNSName))
    for name in dns_names:
        for prefix in ("yrd-node-", "node-"):
            if name.startswith(prefix) and name != prefix + code:
                raise RequestRefused(
                    f"the request for {code} carries DNS name {name!r}, which names "
                    "another province's node"
                )
    ip_addresses = tuple(str(a) for a in alternative_names.get_values_for_type(x509.IPAddress))
    ca = tls.load_ca(ca_dir / "ca.crt.pem", ca_dir / "ca.key.pem")
    moment = now or dt.datetime.now(dt.UTC)
    not_before = moment - dt.timedelta(hours=1)
    not_after = min(moment + dt.timedelta(days=days), ca.certificate.not_valid_after_utc)
    certificate = tls.certify_key(
        ca,
        public_key,
        common_name=f"yrd-node-{code}",
        uri=tls.PROVINCE_URI_PREFIX + code,
        not_before=not_before,
        not_after=not_after,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pem)
    return Certified(
        province=code,
        certificate_path=out,
        fingerprint=tls.certificate_fingerprint(pem),
        ca_fingerprint=tls.certificate_fingerprint(ca.certificate_pem),
        not_after=not_after,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )
