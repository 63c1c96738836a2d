"""The trust store: the public keys of this node's province and of every peer in
force, by key id, with validity windows.

This node's own keys come from its config; a peer's from the descriptor it
published (held by the directory). A peer's keys are trusted only while its
descriptor is in force: the directory takes a peer out of the config in force
within a tick (half a second) of its descriptor's ``not_after``, and with it
every key of that peer. (The instant an envelope or token claims is not used
for that: it is the sender's to choose.)

Keys rotate without downtime: a province publishes its next key with a window
that overlaps the current one; during the overlap both verify, and each stops
verifying when its window ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.config.models import FederationConfig, PublishedKey
from gateway.config.peers import PeerKey
from gateway.core.crypto import load_public_key
from gateway.core.errors import EnvelopeRejected


@dataclass(frozen=True)
class TrustedKey:
    province: str
    key_id: str
    key: Ed25519PublicKey
    not_before: datetime
    not_after: datetime

    def valid_at(self, instant: datetime) -> bool:
        return self.not_before <= instant < self.not_after


class KeyLookupError(Exception):
    """Why a key could not be used: ``reason`` is unknown_province/unknown_key/key_not_valid."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _load(province: str, keys: tuple[PublishedKey, ...]) -> dict[str, TrustedKey]:
    return {
        k.key_id: TrustedKey(
            province,
            k.key_id,
            load_public_key(k.public_key.read_bytes()),
            k.not_before,
            k.not_after,
        )
        for k in keys
    }


def _from_descriptor(province: str, keys: tuple[PeerKey, ...]) -> dict[str, TrustedKey]:
    return {
        k.key_id: TrustedKey(
            province,
            k.key_id,
            Ed25519PublicKey.from_public_bytes(k.public_key),
            k.not_before,
            k.not_after,
        )
        for k in keys
    }


class TrustStore:
    """Public keys of this node's province and of the peers in force."""

    def __init__(self, federation: FederationConfig) -> None:
        me = federation.me
        self._signing: dict[str, dict[str, TrustedKey]] = {
            me.code: _load(me.code, me.signing.public_keys)
        }
        self._eid: dict[str, dict[str, TrustedKey]] = {me.code: _load(me.code, me.eid.issuer_keys)}
        self._seal: dict[str, dict[str, TrustedKey]] = {}
        if me.certificate is not None:
            self._seal[me.code] = _load(me.code, me.certificate.seal_keys)
        for code, peer in federation.peers.items():
            self._signing[code] = _from_descriptor(code, peer.signing_keys)
            self._eid[code] = _from_descriptor(code, peer.eid_issuer_keys)
            self._seal[code] = _from_descriptor(code, peer.seal_keys)

    def signing_key_ids(self, province: str) -> list[str]:
        return sorted(self._signing.get(province, {}))

    def _find(
        self,
        table: dict[str, dict[str, TrustedKey]],
        what: str,
        province: str,
        key_id: str,
        at: datetime,
    ) -> TrustedKey:
        keys = table.get(province)
        if keys is None:
            raise KeyLookupError(
                "unknown_province", f"{what}: province {province!r} is not trusted"
            )

        key = keys.get(key_id)
        if key is None:
            raise KeyLookupError(
                "unknown_key", f"{what}: key id {key_id!r} is not published by {province}"
            )
        if not key.valid_at(at):
            raise KeyLookupError(
                "key_not_valid",
                f"{what}: key {key_id!r} of {province} is valid from {key.not_before.isoformat()} "
                f"to {key.not_after.isoformat()}, not at {at.isoformat()}",
            )
        return key

    def envelope_key(self, province: str, key_id: str, at: datetime) -> Ed25519PublicKey:
        """The key a province's node signs envelopes with; raises EnvelopeRejected."""
        try:
            return self._find(self._signing, "envelope", province, key_id, at).key
        except KeyLookupError as exc:
            raise EnvelopeRejected(grpc.StatusCode.UNAUTHENTICATED, exc.reason, str(exc)) from exc

    def seal_key(self, province: str, key_id: str, at: datetime) -> Ed25519PublicKey | None:
        """The key a province's issuing authority sealed a certificate with, if trusted."""
        try:
            return self._find(self._seal, "seal", province, key_id, at).key
        except KeyLookupError:
            return None

    def head_key(self, province: str, key_id: str, at: datetime) -> Ed25519PublicKey | None:
        """The envelope key that verifies a province's signed chain head, if trusted then."""
        try:
            return self._find(self._signing, "chain head", province, key_id, at).key
        except KeyLookupError:
            return None

    def eid_issuer_key(self, province: str, key_id: str, at: datetime) -> Ed25519PublicKey:
        """The key a province's e-ID authority signs tokens with; raises KeyLookupError."""
        return self._find(self._eid, "e-ID token", province, key_id, at).key
