"""Fixtures for the unit tests: the shipped federation config, keys and clocks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config.holder import ConfigHolder
from gateway.config.loading import parse_province_file
from gateway.config.models import FederationConfig
from gateway.core.clock import FrozenClock
from gateway.core.crypto import load_private_key
from gateway.testing.directory import federation_with_peers
from gateway.trust.envelope import EnvelopeSigner, EnvelopeVerifier
from gateway.trust.truststore import TrustStore
from tests.paths import config_file, keys_dir

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"
PROVINCE_CODES = (SH, JS, ZJ, AH)

#: An instant inside every shipped key's validity window (2026-01-01 .. 2030-01-01).
NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)


def signing_key(code: str) -> Ed25519PrivateKey:
    """The development signing key of a province, as shipped in province_configs/<code>/keys/."""
    return load_private_key(keys_dir(code) / "signing.key.pem")


def eid_issuer_key(code: str) -> Ed25519PrivateKey:
    """The development e-ID issuer key of a province."""
    return load_private_key(keys_dir(code) / "eid-issuer.key.pem")


@pytest.fixture(scope="session")
def federation() -> FederationConfig:
    """The shipped configs as Shanghai's node sees them: own=310000, every province a peer."""
    return federation_with_peers(config_file(SH), [config_file(c) for c in PROVINCE_CODES])


@pytest.fixture(scope="session")
def trust(federation: FederationConfig) -> TrustStore:
    return TrustStore(federation)


@pytest.fixture
def clock() -> FrozenClock:
    """The receiving node's clock."""
    return FrozenClock(NOW)


@pytest.fixture
def verifier(federation: FederationConfig, clock: FrozenClock) -> EnvelopeVerifier:
    """Shanghai's verifier, on the frozen receiver clock."""
    return EnvelopeVerifier(ConfigHolder(federation), clock)


SignerFactory = Callable[..., EnvelopeSigner]


@pytest.fixture
def signer_for(federation: FederationConfig) -> SignerFactory:
    """Build a province's signer with its shipped key and key id, on a clock of its own."""

    def make(
        code: str,
        *,
        clock: FrozenClock | None = None,
        key_id: str | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> EnvelopeSigner:
        return EnvelopeSigner(
            code,
            key_id or parse_province_file(config_file(code)).signing.key_id,
            key or signing_key(code),
            clock or FrozenClock(NOW),
        )

    return make
