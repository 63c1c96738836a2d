"""Peers' facts for a test or a tool that runs no directory: each province's
descriptor is described from its own config, signed with its TLS key and
verified against the federation CA, exactly as a node that fetched it would."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gateway.config.loading import load_own, parse_province_file
from gateway.config.models import FederationConfig, ProvinceConfig
from gateway.config.peers import PeerFacts
from gateway.trust import descriptor as descriptors

#: Descriptors made here are issued inside the development certificates' window
#: (gateway.tools.pki) and stay valid well past it, so that unit tests at any
#: instant see every peer and only the keys' own windows matter.
ISSUED_AT = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
NOT_AFTER = datetime(2035, 1, 1, tzinfo=UTC)


def facts_of(
    config: ProvinceConfig,
    *,
    serial: int = 1,
    issued_at: datetime = ISSUED_AT,
    not_after: datetime = NOT_AFTER,
) -> PeerFacts:
    """A province's facts through its signed descriptor (checked against its own CA)."""
    if config.tls is None:
        raise ValueError(f"{config.source}: a descriptor needs [tls]")
    certificate = config.tls.certificate.read_bytes()
    signed = descriptors.sign(
        descriptors.describe(
            config,
            serial=serial,
            issued_at=issued_at,
            not_after=not_after,
            since={},
            tls_certificate=certificate,
        ),
        config.tls.private_key.read_bytes(),
        certificate,
    )
    return descriptors.verify(
        signed,
        ca=descriptors.load_ca(config.tls.ca.read_bytes()),
        now=issued_at,
        expected_province=config.code,
    )


def federation_with_peers(own_file: Path, peer_files: list[Path]) -> FederationConfig:
    """A node's config with every peer in ``peer_files`` in force (for unit tests)."""
    me = load_own(own_file)
    peers = {}
    for path in peer_files:
        config = parse_province_file(path)
        if config.code != me.code:
            peers[config.code] = facts_of(config)
    return FederationConfig(me=me, peers=peers)
