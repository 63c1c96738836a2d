"""Province descriptors: a province's public facts, signed, and checked by peers.

A node describes its own province from its config (:func:`describe`) and signs
the descriptor with the key of its TLS certificate (:func:`sign`), which the
federation CA issued naming the province. A peer accepts a descriptor only
through :func:`verify`: the certificate was issued by the federation CA and is
valid now, it names the province the descriptor is for (and the one the peer
expected), the signature holds, the descriptor is not past its ``not_after``,
its serial is not lower than one already held, and every field is within its
bound. Anything else raises :class:`DescriptorRefused` with a reason
(``malformed``, ``untrusted_certificate``, ``certificate_not_valid``,
``wrong_province``, ``bad_signature``, ``expired``, ``not_yet_valid``,
``rollback``) for the log and the refusal metric.

The signature covers ``DOMAIN`` then the descriptor bytes exactly as they
travel (``SignedDescriptor.descriptor``): nothing is re-serialised to verify.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.config.models import (
    DISCLOSABLE_ATTRIBUTES,
    FEDERATION_SERVICES,
    PURPOSES,
    ProvinceConfig,
    PublishedKey,
)
from gateway.config.peers import OfferedService, PeerFacts, PeerKey
from gateway.core.crypto import load_public_key
from gateway.trust.tls import province_named
from yrd.directory.v1 import directory_pb2

#: Prefix of every signed descriptor (domain separation).
DOMAIN = b"yrd.directory.v1.descriptor\x00"
ALGORITHM = "ECDSA-P256-SHA256"
FORMAT_VERSION = 1
#: Largest descriptor accepted (serialised ProvinceDescriptor) and signed form.
MAX_DESCRIPTOR_BYTES = 64 * 1024
MAX_SIGNED_BYTES = MAX_DESCRIPTOR_BYTES + 16 * 1024
#: Version of every service contract this code speaks (the proto package version).
SERVICE_VERSION = "v1"
#: A descriptor signed further in the future than this is refused (clock skew).
MAX_ISSUE_SKEW = timedelta(minutes=5)

_ENDPOINT = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,250}:[0-9]{1,5}")
_KEY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PROVINCE = re.compile(r"[1-9][0-9]0000")
_LIMITS = {"endpoints": 8, "keys": 16, "services": 32, "disclosures": 16}


class DescriptorRefused(Exception):
    """A descriptor this node will not trust; ``reason`` is a short label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def instant(stamp: Timestamp, field: str) -> datetime:
    """A descriptor's timestamp as a UTC instant; one out of any date's range is
    ``malformed`` (it would otherwise raise deep in a caller)."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise DescriptorRefused("malformed", f"{field}: a timestamp within 0001..9999") from exc


def verify_as_issued(
    signed: directory_pb2.SignedDescriptor, *, ca: x509.Certificate, expected_province: str
) -> PeerFacts:
    """:func:`verify` as of the instant the descriptor was issued: what offline tools
    use (evidence of past exchanges), where a later expiry does not matter."""
    issued = instant(read(signed).issued_at, "issued_at")
    return verify(signed, ca=ca, now=issued, expected_province=expected_province)


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def _published(keys: tuple[PublishedKey, ...]) -> list[directory_pb2.PublishedKey]:
    out = []
    for key in keys:
        public = load_public_key(key.public_key.read_bytes())
        out.append(
            directory_pb2.PublishedKey(
                key_id=key.key_id,
                algorithm="Ed25519",
                public_key=public.public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                ),
                not_before=_timestamp(key.not_before),
                not_after=_timestamp(key.not_after),
            )
        )
    return out


def tls_certificate_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def describe(
    me: ProvinceConfig,
    *,
    serial: int,
    issued_at: datetime,
    not_after: datetime,
    since: Mapping[str, datetime],
    tls_certificate: bytes,
) -> directory_pb2.ProvinceDescriptor:
    """The descriptor of this node's province from its own config: public facts only
    (no back-end URL, client, private key path or adapter mapping). ``since`` gives
    when each offered service was first published (else ``issued_at``);
    ``tls_certificate`` is the PEM certificate the node presents."""
    return directory_pb2.ProvinceDescriptor(
        format_version=FORMAT_VERSION,
        code=me.code,
        name=me.province.name,
        local_name=me.province.local_name,
        federation_endpoints=list(me.node.advertised_endpoints),
        tls_certificate_sha256=hashlib.sha256(tls_certificate_der(tls_certificate)).digest(),
        signing_keys=_published(me.signing.public_keys),
        eid_issuer_keys=_published(me.eid.issuer_keys),
        seal_keys=_published(me.certificate.seal_keys) if me.certificate is not None else [],
        services=[
            directory_pb2.OfferedService(
                service=name,
                version=SERVICE_VERSION,
                since=_timestamp(since.get(name, issued_at)),
            )
            for name in sorted(set(me.services.offers))
        ],
        disclosures=[
            directory_pb2.Disclosure(purpose=purpose, attributes=list(attributes))
            for purpose, attributes in sorted(me.disclosure.items())
        ],
        operator_contact=me.province.contact,
        serial=serial,
        issued_at=_timestamp(issued_at),
        not_after=_timestamp(not_after),
    )


def sign(
    descriptor: directory_pb2.ProvinceDescriptor, private_key_pem: bytes, certificate_pem: bytes
) -> directory_pb2.SignedDescriptor:
    """Sign with the node's TLS key; the certificate travels with the signature."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the TLS private key is not an EC key")
    body = descriptor.SerializeToString(deterministic=True)
    return directory_pb2.SignedDescriptor(
        descriptor=body,
        algorithm=ALGORITHM,
        signature=key.sign(DOMAIN + body, ec.ECDSA(hashes.SHA256())),
        certificate=tls_certificate_der(certificate_pem),
    )


def read(signed: directory_pb2.SignedDescriptor) -> directory_pb2.ProvinceDescriptor:
    """The descriptor inside, parsed but NOT verified (for display and serials)."""
    descriptor = directory_pb2.ProvinceDescriptor()
    try:
        descriptor.ParseFromString(signed.descriptor)
    except DecodeError as exc:
        raise DescriptorRefused("malformed", "descriptor: not a ProvinceDescriptor") from exc
    return descriptor


def parse_signed(data: bytes) -> directory_pb2.SignedDescriptor:
    if len(data) > MAX_SIGNED_BYTES:
        raise DescriptorRefused("malformed", f"signed descriptor: at most {MAX_SIGNED_BYTES} bytes")
    signed = directory_pb2.SignedDescriptor()
    try:
        signed.ParseFromString(data)
    except DecodeError as exc:
        raise DescriptorRefused("malformed", "not a SignedDescriptor") from exc
    return signed


def _check_certificate(
    signed: directory_pb2.SignedDescriptor, ca: x509.Certificate, now: datetime
) -> x509.Certificate:
    try:
        certificate = x509.load_der_x509_certificate(signed.certificate)
    except ValueError as exc:
        raise DescriptorRefused("malformed", "certificate: not a DER X.509 certificate") from exc
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise DescriptorRefused(
            "untrusted_certificate", "certificate: not issued by the federation CA"
        ) from exc
    for what, cert in (("certificate", certificate), ("federation CA certificate", ca)):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise DescriptorRefused(
                "certificate_not_valid",
                f"{what}: valid from {cert.not_valid_before_utc.isoformat()} to "
                f"{cert.not_valid_after_utc.isoformat()}, not at {now.isoformat()}",
            )
    return certificate


def _key_facts(field: str, keys: list[directory_pb2.PublishedKey]) -> tuple[PeerKey, ...]:
    if len(keys) > _LIMITS["keys"]:
        raise DescriptorRefused("malformed", f"{field}: at most {_LIMITS['keys']} keys")
    out = []
    for i, key in enumerate(keys):
        where = f"{field}[{i}]"
        if not _KEY_ID.fullmatch(key.key_id):
            raise DescriptorRefused("malformed", f"{where}.key_id: 1..128 of [A-Za-z0-9._:-]")
        if key.algorithm != "Ed25519" or len(key.public_key) != 32:
            raise DescriptorRefused(
                "malformed", f"{where}: an Ed25519 public key (algorithm Ed25519, 32 bytes)"
            )
        not_before = instant(key.not_before, f"{where}.not_before")
        not_after = instant(key.not_after, f"{where}.not_after")
        if not_after <= not_before:
            raise DescriptorRefused("malformed", f"{where}: not_after later than not_before")
        out.append(
            PeerKey(
                key_id=key.key_id,
                public_key=key.public_key,
                not_before=not_before,
                not_after=not_after,
            )
        )
    return tuple(out)


def facts_of(descriptor: directory_pb2.ProvinceDescriptor) -> PeerFacts:
    """The descriptor's fields, each checked against its bound (``malformed`` if not)."""

    def bad(message: str) -> DescriptorRefused:
        return DescriptorRefused("malformed", message)

    if descriptor.format_version != FORMAT_VERSION:
        raise bad(f"format_version: expected {FORMAT_VERSION}")
    if not _PROVINCE.fullmatch(descriptor.code):
        raise bad("code: a GB/T 2260 province-level code (six digits ending in 0000)")
    if not 1 <= len(descriptor.name) <= 64 or len(descriptor.local_name) > 64:
        raise bad("name: 1..64 characters; local_name: at most 64")
    endpoints = tuple(descriptor.federation_endpoints)
    if not 1 <= len(endpoints) <= _LIMITS["endpoints"] or not all(
        _ENDPOINT.fullmatch(e) for e in endpoints
    ):
        raise bad(f"federation_endpoints: 1..{_LIMITS['endpoints']} host:port")
    if len(descriptor.tls_certificate_sha256) != 32:
        raise bad("tls_certificate_sha256: 32 bytes")
    signing = _key_facts("signing_keys", list(descriptor.signing_keys))
    if not signing:
        raise bad("signing_keys: at least one key")
    if len(descriptor.services) > _LIMITS["services"]:
        raise bad(f"services: at most {_LIMITS['services']}")
    offers = []
    for i, offered in enumerate(descriptor.services):
        if offered.service not in FEDERATION_SERVICES or not 1 <= len(offered.version) <= 16:
            raise bad(f"services[{i}]: a federation service name and a version (1..16 characters)")
        offers.append(
            OfferedService(
                service=offered.service,
                version=offered.version,
                since=instant(offered.since, f"services[{i}].since"),
            )
        )
    if len(descriptor.disclosures) > _LIMITS["disclosures"]:
        raise bad(f"disclosures: at most {_LIMITS['disclosures']}")
    disclosure: dict[str, tuple[str, ...]] = {}
    for i, item in enumerate(descriptor.disclosures):
        if item.purpose not in PURPOSES or not set(item.attributes) <= DISCLOSABLE_ATTRIBUTES:
            raise bad(f"disclosures[{i}]: a purpose and canonical attribute names")
        disclosure[item.purpose] = tuple(item.attributes)
    if len(descriptor.operator_contact) > 128:
        raise bad("operator_contact: at most 128 characters")
    if descriptor.serial < 1:
        raise bad("serial: at least 1")
    issued_at = instant(descriptor.issued_at, "issued_at")
    not_after = instant(descriptor.not_after, "not_after")
    if not_after <= issued_at:
        raise bad("not_after: later than issued_at")
    return PeerFacts(
        code=descriptor.code,
        name=descriptor.name,
        local_name=descriptor.local_name,
        endpoints=endpoints,
        tls_certificate_sha256=descriptor.tls_certificate_sha256.hex(),
        signing_keys=signing,
        eid_issuer_keys=_key_facts("eid_issuer_keys", list(descriptor.eid_issuer_keys)),
        seal_keys=_key_facts("seal_keys", list(descriptor.seal_keys)),
        offers=tuple(offers),
        disclosure=disclosure,
        contact=descriptor.operator_contact,
        serial=descriptor.serial,
        issued_at=issued_at,
        not_after=not_after,
    )


def verify(
    signed: directory_pb2.SignedDescriptor,
    *,
    ca: x509.Certificate,
    now: datetime,
    expected_province: str | None = None,
    held_serial: int = 0,
) -> PeerFacts:
    """Check a signed descriptor as a peer must before trusting it; its facts, or
    DescriptorRefused naming why not."""
    if signed.algorithm != ALGORITHM:
        raise DescriptorRefused("malformed", f"algorithm: expected {ALGORITHM}")
    if len(signed.descriptor) > MAX_DESCRIPTOR_BYTES:
        raise DescriptorRefused("malformed", f"descriptor: at most {MAX_DESCRIPTOR_BYTES} bytes")
    certificate = _check_certificate(signed, ca, now)
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DescriptorRefused("untrusted_certificate", "certificate: not an ECDSA key")
    try:
        key.verify(signed.signature, DOMAIN + signed.descriptor, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise DescriptorRefused("bad_signature", "signature: does not verify") from exc
    descriptor = read(signed)
    named = province_named(certificate)
    if named != descriptor.code:
        raise DescriptorRefused(
            "wrong_province",
            f"certificate: names province {named or '(none)'}, the descriptor is for "
            f"{descriptor.code or '(none)'}",
        )
    if expected_province is not None and descriptor.code != expected_province:
        raise DescriptorRefused(
            "wrong_province",
            f"code: expected the descriptor of {expected_province}, got {descriptor.code}",
        )
    facts = facts_of(descriptor)
    if facts.not_after <= now:
        raise DescriptorRefused(
            "expired", f"not_after: the descriptor expired at {facts.not_after.isoformat()}"
        )
    if facts.issued_at > now + MAX_ISSUE_SKEW:
        raise DescriptorRefused(
            "not_yet_valid", f"issued_at: {facts.issued_at.isoformat()} is in the future"
        )
    if facts.serial < held_serial:
        raise DescriptorRefused(
            "rollback", f"serial: {facts.serial} is lower than the {held_serial} already held"
        )
    return facts


def load_ca(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)
