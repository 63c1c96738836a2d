"""Transport security: the development federation CA, node and client
certificates, gRPC credentials, and who a TLS peer is.

Every node presents a certificate issued by the federation CA that names its
province in a URI subject alternative name ``urn:yrd:province:<code>``; a node
accepts a federation envelope only from a peer whose certificate names the
envelope's sender. Certificates use ECDSA P-256 (what every TLS stack accepts);
envelope and token signatures stay Ed25519.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PROVINCE_URI_PREFIX = "urn:yrd:province:"
CLIENT_URI_PREFIX = "urn:yrd:client:"


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, certificate_path: Path, key_path: Path) -> None:
        certificate_path.write_bytes(self.certificate_pem)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "YRD Gateway development federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_ca(
    *, not_before: dt.datetime, not_after: dt.datetime, name: str = "YRD federation CA (dev)"
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def issue(
    ca: Issued,
    *,
    common_name: str,
    uri: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
    dns_names: tuple[str, ...] = ("localhost",),
    server: bool = True,
) -> Issued:
    """A leaf certificate for a node (server and client auth) or a local client."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = certify_key(
        ca,
        key.public_key(),
        common_name=common_name,
        uri=uri,
        not_before=not_before,
        not_after=not_after,
        dns_names=dns_names,
        ip_addresses=("127.0.0.1",) if server else (),
        server=server,
    )
    return Issued(certificate, key)


def certify_key(
    ca: Issued,
    public_key: ec.EllipticCurvePublicKey,
    *,
    common_name: str,
    uri: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
    dns_names: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1",),
    server: bool = True,
) -> x509.Certificate:
    """A leaf certificate of the CA for a key it does not hold (a certificate
    signing request's): the holder keeps its private key."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    if server:
        names += [x509.DNSName(d) for d in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + (
        [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    )
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def load_ca(certificate_path: Path, key_path: Path) -> Issued:
    certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: expected an EC private key")
    return Issued(certificate, key)


def node_certificate(
    ca: Issued, province: str, not_before: dt.datetime, not_after: dt.datetime
) -> Issued:
    return issue(
        ca,
        common_name=f"yrd-node-{province}",
        uri=PROVINCE_URI_PREFIX + province,
        not_before=not_before,
        not_after=not_after,
        dns_names=("localhost", f"yrd-node-{province}", f"node-{province}"),
    )


def client_certificate(
    ca: Issued, client_id: str, not_before: dt.datetime, not_after: dt.datetime
) -> Issued:
    return issue(
        ca,
        common_name=client_id,
        uri=CLIENT_URI_PREFIX + client_id,
        not_before=not_before,
        not_after=not_after,
        server=False,
    )


def certificate_not_after(pem: bytes) -> dt.datetime:
    """When a PEM certificate stops being valid (UTC)."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


@functools.lru_cache(maxsize=1024)
def certificate_fingerprint(pem: bytes) -> str:
    """Hex SHA-256 of the DER certificate (how clients are registered by certificate)."""
    certificate = x509.load_pem_x509_certificate(pem)
    return certificate.fingerprint(hashes.SHA256()).hex()


def certificate_uris(certificate: x509.Certificate) -> list[str]:
    """The URIs among a certificate's subject alternative names."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in extension.value.get_values_for_type(x509.UniformResourceIdentifier)]


def uris_of(pem: bytes) -> list[str]:
    return certificate_uris(x509.load_pem_x509_certificate(pem))


def province_named(certificate: x509.Certificate) -> str | None:
    """The province a certificate names (``urn:yrd:province:<code>``), if any."""
    for uri in certificate_uris(certificate):
        if uri.startswith(PROVINCE_URI_PREFIX):
            return uri[len(PROVINCE_URI_PREFIX) :]
    return None


def peer_certificate(context: grpc.aio.ServicerContext) -> bytes | None:
    """The PEM certificate the caller presented over TLS, if any."""
    auth = context.auth_context() or {}
    values = auth.get("x509_pem_cert") or []
    return bytes(values[0]) if values else None


@functools.lru_cache(maxsize=1024)  # the same few peers call again and again
def province_of_certificate(pem: bytes) -> str | None:
    return province_named(x509.load_pem_x509_certificate(pem))


@dataclass(frozen=True)
class TlsMaterial:
    """What a node needs for mutual TLS, read from its config's [tls] table."""

    certificate: bytes
    private_key: bytes
    ca: bytes

    @classmethod
    def load(cls, certificate: Path, private_key: Path, ca: Path) -> TlsMaterial:
        return cls(certificate.read_bytes(), private_key.read_bytes(), ca.read_bytes())

    def public_server_credentials(self) -> grpc.ServerCredentials:
        """The local-client endpoint: server authentication only (clients bring tokens)."""
        return grpc.ssl_server_credentials([(self.private_key, self.certificate)])

    def mutual_server_credentials(self) -> grpc.ServerCredentials:
        """The federation endpoint: every caller must present a certificate of the CA.

        gRPC does not request client certificates unless it requires them, so
        mutual TLS needs an endpoint of its own.
        """
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate)],
            root_certificates=self.ca,
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.private_key,
            certificate_chain=self.certificate,
        )
