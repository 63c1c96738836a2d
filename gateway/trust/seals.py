"""E-stamps (seals): what an issuing authority signs on a certificate, and the verdict.

The signed input is::

    SEAL_CONTEXT + Certificate.SerializeToString(deterministic=True)

of the canonical ``yrd.certificate.v1.Certificate`` with ``seal`` cleared
and the ``content`` of every attachment cleared (attachments are sealed by
their SHA-256 digest, name, media type and size; content may travel or not).
``seal_key_id`` and ``seal_algorithm`` are *inside* the signed input, so
neither can be swapped. ``SEAL_CONTEXT`` is ``b"yrd.certificate.v1.seal\\x00"``
(domain separation: no other signature in the federation verifies as a seal).
Deterministic serialisation writes fields in field-number order and map
entries sorted by key, so the input is a function of the canonical content.
The signature is Ed25519 (``seal_algorithm = "Ed25519"``), 64 bytes.

The seal keys themselves are in the trust store
(:meth:`~gateway.trust.truststore.TrustStore.seal_key`); the certificate
adapters translate sealed certificates exactly and never judge a seal.
"""

from __future__ import annotations

from datetime import date

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.core import crypto
from yrd.certificate.v1 import certificate_pb2

SEAL_ALGORITHM = "Ed25519"
SEAL_CONTEXT = b"yrd.certificate.v1.seal\x00"


def seal_input(cert: certificate_pb2.Certificate) -> bytes:
    """The bytes a seal signs (see the module docstring)."""
    copy = certificate_pb2.Certificate()
    copy.CopyFrom(cert)
    copy.ClearField("seal")
    for attachment in copy.attachments:
        attachment.ClearField("content")
    return SEAL_CONTEXT + copy.SerializeToString(deterministic=True)


def seal_certificate(
    cert: certificate_pb2.Certificate, private_key: Ed25519PrivateKey, key_id: str
) -> certificate_pb2.Certificate:
    """A copy of ``cert`` sealed by the issuing authority's key ``key_id``."""
    if not key_id:
        raise ValueError("key_id must not be empty")
    sealed = certificate_pb2.Certificate()
    sealed.CopyFrom(cert)
    sealed.seal_key_id = key_id
    sealed.seal_algorithm = SEAL_ALGORITHM
    sealed.seal = private_key.sign(seal_input(sealed))
    return sealed


def verify_seal(cert: certificate_pb2.Certificate, public_key: Ed25519PublicKey) -> bool:
    """True when ``cert`` carries a valid Ed25519 seal by ``public_key`` over its content."""
    if cert.seal_algorithm != SEAL_ALGORITHM or not cert.seal:
        return False
    return crypto.verify(public_key, cert.seal, seal_input(cert))


def seal_verdict(
    cert: certificate_pb2.Certificate, public_key: Ed25519PublicKey | None, *, today: date
) -> certificate_pb2.SealVerdict.ValueType:
    """The ``SealVerdict`` for ``cert``: unknown key, forged, expired (before ``today``) or valid.

    ``public_key`` is the issuing province's key of ``cert.seal_key_id`` (None
    when unknown); ``today`` is the calendar date at the verifying node
    (Asia/Shanghai). A forged seal wins over expiry: the expiry date of a
    forged certificate is not to be believed either.
    """
    if public_key is None:
        return certificate_pb2.SEAL_UNKNOWN_AUTHORITY
    if not verify_seal(cert, public_key):
        return certificate_pb2.SEAL_FORGED
    if cert.expiry_date and date.fromisoformat(cert.expiry_date) < today:
        return certificate_pb2.CERTIFICATE_EXPIRED
    return certificate_pb2.SEAL_VALID
