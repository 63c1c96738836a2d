"""Mutual TLS between nodes and the authentication of local clients, over real
TLS on loopback: wrong CA, expired certificate, another province's certificate,
no certificate; client certificates; rate limits; reload of client registrations."""

from __future__ import annotations

import datetime as dt
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.server.interceptors import GatewayInterceptor
from gateway.testing.localfed import LocalFederation, client_channel
from gateway.tools.pki import DEV_NOT_AFTER, DEV_NOT_BEFORE
from gateway.trust import tls
from tests.integration.conftest import AH, SH, ZJ
from tests.paths import CA_DIR, keys_dir
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc
from yrd.federation.v1 import federation_pb2

NOW = dt.datetime.now(dt.UTC)


def federation_ca() -> tls.Issued:
    return tls.load_ca(CA_DIR / "ca.crt.pem", CA_DIR / "ca.key.pem")


def node_material(province: str) -> tuple[bytes, bytes]:
    return (keys_dir(province) / "tls.crt.pem").read_bytes(), (
        keys_dir(province) / "tls.key.pem"
    ).read_bytes()


async def exchange(
    federation: LocalFederation,
    target: str,
    endpoint: str,
    certificate: bytes | None,
    key: bytes | None,
    sender: str = SH,
) -> federation_pb2.SignedEnvelope:
    """Send a freshly signed envelope from ``sender``'s node to ``target`` over TLS
    with the given client certificate (or none)."""
    envelope = federation.node(sender).signer.seal(
        receiver=target,
        service="identity.CheckCredential",
        payload=federation_pb2.CredentialCheckRequest(
            token_id=str(uuid.uuid4()),
            credential_id="EID-NOBODY",
            purpose=1,
        ),
        correlation_id=str(uuid.uuid4()),
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(CA_DIR / "ca.crt.pem").read_bytes(),
        private_key=key,
        certificate_chain=certificate,
    )
    async with grpc.aio.secure_channel(endpoint, credentials) as channel:
        call = channel.unary_unary(
            "/yrd.federation.v1.FederationService/Exchange",
            request_serializer=federation_pb2.SignedEnvelope.SerializeToString,
            response_deserializer=federation_pb2.SignedEnvelope.FromString,
        )
        response: federation_pb2.SignedEnvelope = await call(envelope, timeout=3)
        return response


def federation_endpoint(federation: LocalFederation, province: str) -> str:
    endpoint = federation.provinces[province].config.node.federation_endpoint
    assert endpoint is not None
    return endpoint


class TestNodeToNode:
    """A node accepts envelopes only over mutual TLS from the province they claim."""

    async def test_the_right_certificate_is_accepted(self, federation: LocalFederation) -> None:
        response = await exchange(
            federation, ZJ, federation_endpoint(federation, ZJ), *node_material(SH)
        )
        header = federation_pb2.EnvelopeHeader.FromString(response.header)
        assert header.sender == ZJ
        assert header.status_code == 0

    async def test_certificate_of_another_province(self, federation: LocalFederation) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await exchange(federation, ZJ, federation_endpoint(federation, ZJ), *node_material(AH))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "certificate is of province 340000" in (info.value.details() or "")
        assert "claims 310000" in (info.value.details() or "")

    async def test_certificate_of_another_ca(self, federation: LocalFederation) -> None:
        rogue_ca = tls.create_ca(not_before=DEV_NOT_BEFORE, not_after=DEV_NOT_AFTER, name="rogue")
        rogue = tls.node_certificate(rogue_ca, SH, DEV_NOT_BEFORE, DEV_NOT_AFTER)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await exchange(
                federation,
                ZJ,
                federation_endpoint(federation, ZJ),
                rogue.certificate_pem,
                rogue.key_pem,
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails

    async def test_expired_certificate(self, federation: LocalFederation) -> None:
        expired = tls.node_certificate(
            federation_ca(), SH, NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=1)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await exchange(
                federation,
                ZJ,
                federation_endpoint(federation, ZJ),
                expired.certificate_pem,
                expired.key_pem,
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_no_client_certificate(self, federation: LocalFederation) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await exchange(federation, ZJ, federation_endpoint(federation, ZJ), None, None)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_federation_call_on_the_public_endpoint(
        self, federation: LocalFederation
    ) -> None:
        """The client endpoint asks for no certificate, so the envelope is refused there."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await exchange(federation, ZJ, federation.endpoint(ZJ), None, None)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "client certificate" in (info.value.details() or "")


async def node_info_with_office_certificate(
    federation: LocalFederation, metadata: tuple[tuple[str, str], ...] = ()
) -> admin_pb2.NodeInfo:
    """GetNodeInfo at Shanghai's federation endpoint, over TLS with the office
    client's certificate (and ``metadata``)."""
    channel = client_channel(
        federation.provinces[SH].config,
        federation_endpoint(federation, SH),
        certificate=(keys_dir(SH) / "office.crt.pem").read_bytes(),
        private_key=(keys_dir(SH) / "office.key.pem").read_bytes(),
    )
    async with channel:
        return await admin_pb2_grpc.AdminServiceStub(channel).GetNodeInfo(
            admin_pb2.GetNodeInfoRequest(), metadata=metadata, timeout=3
        )


class TestLocalClients:
    async def test_office_by_client_certificate_needs_no_token(
        self, federation: LocalFederation
    ) -> None:
        assert (await node_info_with_office_certificate(federation)).province == SH

    async def test_a_registered_token_identifies_the_caller_before_its_certificate(
        self, federation: LocalFederation
    ) -> None:
        """The hotel's token over the office's certificate is the hotel (which
        may not call AdminService); an unregistered token leaves the office's
        certificate to identify the caller."""

        async def node_info(token: str) -> admin_pb2.NodeInfo:
            return await node_info_with_office_certificate(
                federation, (("authorization", f"Bearer {token}"),)
            )

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await node_info(f"dev-hotel-{SH}")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"hotel-{SH}-001 may not call" in (refused.value.details() or "")
        assert (await node_info("not-a-registered-token")).province == SH

    def test_the_certificate_is_read_only_when_no_registered_token_identifies(
        self, federation: LocalFederation
    ) -> None:
        """Reading a call's TLS auth context costs about 14 µs: a call with a
        registered token (every hotel's) does not read it."""
        interceptor = GatewayInterceptor(federation.node(SH).config, None)
        office = (keys_dir(SH) / "office.crt.pem").read_bytes()
        reads: list[int] = []

        def certificate() -> bytes | None:
            reads.append(1)
            return office

        def bearer(token: str) -> tuple[tuple[str, str], ...]:
            return (("authorization", f"Bearer {token}"),)

        client, name = interceptor.identify(bearer(f"dev-hotel-{SH}"), certificate)
        assert (client is not None, name, reads) == (True, f"hotel-{SH}-001", [])
        client, name = interceptor.identify(bearer("unknown"), certificate)
        assert (client is not None, name, len(reads)) == (True, f"office-{SH}-001", 1)
        client, name = interceptor.identify((), certificate)
        assert (client is not None, name, len(reads)) == (True, f"office-{SH}-001", 2)
        client, name = interceptor.identify(bearer("unknown"), lambda: None)
        assert client is None
        assert name.startswith("token:")
        assert interceptor.identify((), lambda: None) == (None, "-")

    async def test_rate_limit_and_reloaded_registration(self, federation: LocalFederation) -> None:
        """Past its burst a client gets RESOURCE_EXHAUSTED with a retry-after hint; the
        limit comes from the client's registration and a reload changes it."""
        node = federation.node(SH)
        me = node.federation.me
        clients = tuple(
            c.model_copy(update={"burst": 3, "rate_per_second": 0.5})
            if c.id == f"office-{SH}-001"
            else c
            for c in me.clients
        )
        await node.reload(node.federation.with_me(me.model_copy(update={"clients": clients})))

        stub = admin_pb2_grpc.AdminServiceStub(federation.channel(SH))
        metadata = (("authorization", f"Bearer dev-office-{SH}"),)
        for _ in range(3):
            await stub.GetNodeInfo(admin_pb2.GetNodeInfoRequest(), metadata=metadata, timeout=3)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetNodeInfo(admin_pb2.GetNodeInfoRequest(), metadata=metadata, timeout=3)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit" in (info.value.details() or "")
        status = status_pb2.Status.FromString(
            dict(info.value.trailing_metadata() or ())["grpc-status-details-bin"]  # type: ignore[arg-type]
        )
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry)
        assert retry.retry_delay.ToMilliseconds() > 0
        # other clients are not affected
        hotel = (("authorization", f"Bearer dev-hotel-{SH}"),)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.GetNodeInfo(admin_pb2.GetNodeInfoRequest(), metadata=hotel, timeout=3)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
