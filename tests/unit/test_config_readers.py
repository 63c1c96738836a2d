"""The parts of a node that read the config in force from its ConfigHolder: after a
swap they use the new keys, peers and endpoints with nothing else to update."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import grpc
import pytest

from gateway.config.holder import ConfigHolder
from gateway.config.models import FederationConfig
from gateway.core.clock import FrozenClock
from gateway.core.errors import EnvelopeRejected, GatewayError
from gateway.federation.client import FederationClient
from gateway.storage.messagelog import MessageLog
from gateway.trust.envelope import EnvelopeSigner, EnvelopeVerifier
from tests.unit.conftest import JS, NOW, SH, SignerFactory
from yrd.federation.v1 import federation_pb2

CHECK = "identity.CheckCredential"


def renamed_signing_key(federation: FederationConfig, code: str, key_id: str) -> FederationConfig:
    """The federation with ``code``'s signing key published under another id only
    (this node's own config, or a peer's descriptor)."""
    if code == federation.own:
        me = federation.me
        published = me.signing.public_keys[0].model_copy(update={"key_id": key_id})
        signing = me.signing.model_copy(update={"key_id": key_id, "public_keys": (published,)})
        return FederationConfig(
            me=me.model_copy(update={"signing": signing}), peers=federation.peers
        )
    peer = federation.peers[code]
    renamed = peer.signing_keys[0].model_copy(update={"key_id": key_id})
    peers = dict(federation.peers)
    peers[code] = peer.model_copy(update={"signing_keys": (renamed,)})
    return federation.with_peers(peers)


def moved(federation: FederationConfig, code: str, endpoint: str) -> FederationConfig:
    """The federation with ``code``'s node reachable at another endpoint."""
    peers = dict(federation.peers)
    peers[code] = peers[code].model_copy(update={"endpoints": (endpoint,)})
    return federation.with_peers(peers)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def request_from(signer: EnvelopeSigner) -> federation_pb2.SignedEnvelope:
    return signer.seal(
        receiver=SH,
        service=CHECK,
        payload=federation_pb2.CredentialCheckRequest(token_id="t", credential_id="c"),
        correlation_id=str(uuid.uuid4()),
    )


class TestSignerFollowsTheConfig:
    """A node's signer seals with the keys of the config in force."""

    def test_a_swap_changes_the_key_it_signs_with(self, federation: FederationConfig) -> None:
        holder = ConfigHolder(federation)
        signer = EnvelopeSigner.for_config(holder, FrozenClock(NOW))
        assert signer.key_id == federation.me.signing.key_id

        holder.swap(renamed_signing_key(federation, SH, "310000-sig-next"))

        assert signer.key_id == "310000-sig-next"
        header = federation_pb2.EnvelopeHeader.FromString(
            signer.seal(
                receiver=JS,
                service=CHECK,
                payload=federation_pb2.CredentialCheckRequest(),
                correlation_id="c",
            ).header
        )
        assert (header.sender, header.key_id) == (SH, "310000-sig-next")


class TestVerifierFollowsTheConfig:
    """The verifier trusts the keys of the config in force and keeps its nonces."""

    def test_a_key_no_longer_published_stops_verifying(
        self, federation: FederationConfig, signer_for: SignerFactory
    ) -> None:
        holder = ConfigHolder(federation)
        verifier = EnvelopeVerifier(holder, FrozenClock(NOW))
        first = request_from(signer_for(JS))
        assert verifier.open_request(first).header.sender == JS

        holder.swap(renamed_signing_key(federation, JS, "320000-sig-next"))

        with pytest.raises(EnvelopeRejected) as info:
            verifier.open_request(request_from(signer_for(JS)))
        assert info.value.reason == "unknown_key"
        # Back to the first config: the nonce seen before the swaps is still known.
        holder.swap(federation)
        with pytest.raises(EnvelopeRejected) as info:
            verifier.open_request(first)
        assert info.value.reason == "replayed_nonce"


class TestFederationClientFollowsTheConfig:
    """A peer that moved is called at its new endpoint once the config says so."""

    async def test_a_moved_peer_gets_a_channel_to_its_new_endpoint(
        self, federation: FederationConfig, tmp_path: Path
    ) -> None:
        holder = ConfigHolder(federation)
        opened: list[str] = []

        def channel(endpoints: tuple[str, ...]) -> grpc.aio.Channel:
            (endpoint,) = endpoints
            opened.append(endpoint)
            return grpc.aio.insecure_channel(endpoint)

        clock = FrozenClock(NOW)
        async with MessageLog(tmp_path / "messages.db", clock=clock) as message_log:
            client = FederationClient(
                holder,
                EnvelopeSigner.for_config(holder, clock),
                EnvelopeVerifier(holder, clock),
                message_log,
                channel_factory=channel,
            )
            try:
                old, new = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
                holder.swap(moved(federation, JS, old))
                with pytest.raises(GatewayError):  # nobody listens there
                    await client.call(
                        JS,
                        CHECK,
                        federation_pb2.CredentialCheckRequest(),
                        federation_pb2.CredentialCheckResponse,
                        correlation_id="c",
                        timeout=0.3,
                        retry=False,
                    )
                holder.swap(moved(federation, JS, new))
                with pytest.raises(GatewayError):
                    await client.call(
                        JS,
                        CHECK,
                        federation_pb2.CredentialCheckRequest(),
                        federation_pb2.CredentialCheckResponse,
                        correlation_id="c",
                        timeout=0.3,
                        retry=False,
                    )
            finally:
                await client.close()
        assert opened == [old, new]
