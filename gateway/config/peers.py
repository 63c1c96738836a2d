"""What a node knows of a peer: the public facts of its verified descriptor.

A node's own config names only itself and, per peer, a code and a bootstrap
endpoint (:class:`~gateway.config.models.PeerEntry`). Everything else about a
peer — where its node listens, the keys that verify its envelopes, e-ID tokens
and e-certificate seals, the services it offers, what its e-ID authority
releases per purpose — comes from the descriptor the peer published and signed
(:mod:`gateway.trust.descriptor`), held as a :class:`PeerFacts`.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class _Facts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PeerKey(_Facts):
    """A published public key (Ed25519, raw 32 bytes) with its validity window."""

    key_id: str
    public_key: bytes
    not_before: datetime
    not_after: datetime


class OfferedService(_Facts):
    """A federation service a province offers: its contract version and since when."""

    service: str
    version: str
    since: datetime


class PeerFacts(_Facts):
    """A peer province's public facts, from a descriptor this node verified."""

    code: str
    name: str
    local_name: str = ""
    #: Federation endpoints (mutual TLS), in the peer's order of preference.
    endpoints: tuple[str, ...]
    #: Hex SHA-256 of the DER TLS certificate the peer's node presents.
    tls_certificate_sha256: str
    signing_keys: tuple[PeerKey, ...]
    eid_issuer_keys: tuple[PeerKey, ...] = ()
    seal_keys: tuple[PeerKey, ...] = ()
    offers: tuple[OfferedService, ...] = ()
    disclosure: dict[str, tuple[str, ...]] = {}
    contact: str = ""
    serial: int
    issued_at: datetime
    not_after: datetime

    @property
    def peer_endpoint(self) -> str:
        """Where this node sends the peer its federation envelopes."""
        return self.endpoints[0]

    def offers_service(self, service: str) -> bool:
        return any(offered.service == service for offered in self.offers)

    def current_at(self, instant: datetime) -> bool:
        """Whether the descriptor is still trusted at ``instant`` (fail closed after)."""
        return instant < self.not_after
