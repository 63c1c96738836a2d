"""The e-ID QR token shown on a resident's phone.

A token is a compact JWS (RFC 7515) signed with Ed25519 ("EdDSA", RFC 8037)
by the issuing province's e-ID authority:

    BASE64URL(header) "." BASE64URL(claims) "." BASE64URL(signature)

header: ``{"alg": "EdDSA", "typ": "yrd-eid", "kid": <key id>, "iss": <GB/T 2260 code>}``
claims: ``{"iss": <code>, "sub": <credential id>, "jti": <token id>,
"iat": <epoch s>, "exp": <epoch s>}``

The header names the issuer and key so a relying node can pick the key from
its trust store and check the token offline. Tokens carry no personal data:
``sub`` is an opaque credential id that only the issuer can resolve. A token
lives at most ``MAX_LIFETIME`` and may be used once.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.core import crypto

TOKEN_TYPE = "yrd-eid"  # noqa: S105 - the JWS "typ" value, not a secret
JWS_ALGORITHM = "EdDSA"
MAX_LIFETIME = timedelta(minutes=5)
#: Largest QR payload accepted (bytes); a real token is about 400.
MAX_TOKEN_BYTES = 4096

_REGION = re.compile(r"[1-9][0-9]{5}")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)
#: base64url's characters and the parts' separator: a payload with nothing else
#: needs no check of its characters per part.
_COMPACT_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
#: base64url's two characters as standard base64 has them (what urlsafe_b64decode does).
_URLSAFE = bytes.maketrans(b"-_", b"+/")


class TokenMalformed(ValueError):
    """The QR payload is not a well-formed e-ID token (names what is wrong)."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(part: str, what: str) -> bytes:
    if not _BASE64URL.fullmatch(part):
        raise TokenMalformed(f"{what}: expected base64url characters")
    return _b64decode_checked(part.encode("ascii"), what)


def _b64decode_checked(part: bytes, what: str) -> bytes:
    """``part``, known to hold only base64url characters, decoded."""
    try:
        # base64.urlsafe_b64decode without its layers: the same bytes, the same errors.
        return binascii.a2b_base64(part.translate(_URLSAFE) + b"=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenMalformed(f"{what}: expected base64url, {exc}") from exc


def _json(part: bytes, what: str) -> dict[str, Any]:
    try:
        # orjson first (several times faster); what it refuses, the standard library
        # decides (a BOM, NaN, a lone surrogate, a deep nesting), so the same
        # documents are accepted. Where the two read a value differently (an
        # integer past 64 bits becomes a float), the checks below refuse both
        # with the same message.
        value = orjson.loads(part)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(part)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise TokenMalformed(f"{what}: expected a JSON object") from exc
    if not isinstance(value, dict):
        raise TokenMalformed(f"{what}: expected a JSON object")
    return value


@dataclass(frozen=True)
class EidToken:
    """A parsed (not yet verified) token."""

    issuer: str
    key_id: str
    credential_id: str
    token_id: str
    issued_at: datetime
    expires_at: datetime
    signing_input: bytes
    signature: bytes

    def signature_valid(self, key: Ed25519PublicKey) -> bool:
        return crypto.verify(key, self.signature, self.signing_input)

    def window_check(self, now: datetime, leeway: timedelta = timedelta(0)) -> str | None:
        """None when ``now`` is inside the validity window, else why not."""
        if self.expires_at - self.issued_at > MAX_LIFETIME:
            return f"lifetime exceeds {int(MAX_LIFETIME.total_seconds())} s"
        if now + leeway < self.issued_at:
            return "not yet valid"
        if now - leeway >= self.expires_at:
            return "expired"
        return None


def issue_token(
    private_key: Ed25519PrivateKey,
    *,
    key_id: str,
    issuer: str,
    credential_id: str,
    token_id: str,
    issued_at: datetime,
    ttl: timedelta = timedelta(minutes=2),
) -> str:
    """Sign a token (the e-ID authority's side; simulators and tests use it)."""
    header = {"alg": JWS_ALGORITHM, "typ": TOKEN_TYPE, "kid": key_id, "iss": issuer}
    iat = int(issued_at.timestamp())
    claims = {
        "iss": issuer,
        "sub": credential_id,
        "jti": token_id,
        "iat": iat,
        "exp": iat + int(ttl.total_seconds()),
    }
    signing_input = (
        _b64encode(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = private_key.sign(signing_input.encode("ascii"))
    return signing_input + "." + _b64encode(signature)


def parse_token(qr_payload: str) -> EidToken:
    """Parse a QR payload; raises TokenMalformed naming the part that is wrong."""
    if not qr_payload:
        raise TokenMalformed("qr_payload: expected a compact JWS, got an empty string")
    if not qr_payload.isascii():
        raise TokenMalformed("qr_payload: expected ASCII characters only (a compact JWS)")
    if len(qr_payload) > MAX_TOKEN_BYTES:
        raise TokenMalformed(f"qr_payload: expected at most {MAX_TOKEN_BYTES} bytes")
    payload = qr_payload.strip()
    parts = payload.split(".")
    if len(parts) != 3:
        raise TokenMalformed(
            f"qr_payload: expected three base64url parts separated by '.', got {len(parts)}"
        )
    raw = payload.encode("ascii")
    if raw.translate(None, _COMPACT_BYTES):
        # A character outside base64url: each part is checked, in order, to name it.
        header = _json(_b64decode(parts[0], "token header"), "token header")
        claims = _json(_b64decode(parts[1], "token claims"), "token claims")
        signature = _b64decode(parts[2], "token signature")
    else:
        # The usual payload: one pass over its characters instead of one per part.
        head, body, tail = raw.split(b".")
        header = _json(_b64decode_checked(head, "token header"), "token header")
        claims = _json(_b64decode_checked(body, "token claims"), "token claims")
        signature = _b64decode_checked(tail, "token signature")
    if header.get("alg") != JWS_ALGORITHM:
        raise TokenMalformed(f"token header alg: expected {JWS_ALGORITHM!r}")
    if header.get("typ") != TOKEN_TYPE:
        raise TokenMalformed(f"token header typ: expected {TOKEN_TYPE!r}")
    issuer = header.get("iss")
    if not isinstance(issuer, str) or not _REGION.fullmatch(issuer):
        raise TokenMalformed("token header iss: expected a six-digit GB/T 2260 region code")
    if claims.get("iss") != issuer:
        raise TokenMalformed("token claims iss: expected the same issuer as the header")
    key_id = header.get("kid")
    if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
        raise TokenMalformed("token header kid: expected a key id of 1..128 [A-Za-z0-9._:-]")
    for name in ("sub", "jti"):
        value = claims.get(name)
        if not isinstance(value, str) or not _ID.fullmatch(value):
            raise TokenMalformed(f"token claims {name}: expected 1..128 [A-Za-z0-9._:-]")
    times: dict[str, datetime] = {}
    for name in ("iat", "exp"):
        value = claims.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**33:
            raise TokenMalformed(f"token claims {name}: expected epoch seconds (integer)")
        times[name] = datetime.fromtimestamp(value, UTC)
    return EidToken(
        issuer=issuer,
        key_id=key_id,
        credential_id=claims["sub"],
        token_id=claims["jti"],
        issued_at=times["iat"],
        expires_at=times["exp"],
        signing_input=(parts[0] + "." + parts[1]).encode("ascii"),
        signature=signature,
    )
