"""What operators and peers see of a running node: reflection, health, admin,
unimplemented RPCs, and garbage on the federation service."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.server.node import _GenericHandlersOnly
from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import SH, ZJ, Wallet
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc
from yrd.federation.v1 import federation_pb2
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

OFFICE = (("authorization", f"Bearer dev-office-{SH}"),)


class TestDiscovery:
    """A gRPC client can discover and probe a node without any prior knowledge."""

    async def test_reflection_lists_every_service(self, federation: LocalFederation) -> None:
        stub = reflection_pb2_grpc.ServerReflectionStub(federation.channel(SH))
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=3
        )
        names = set()
        async for response in call:
            names |= {s.name for s in response.list_services_response.service}
        assert {
            "yrd.identity.v1.IdentityService",
            "yrd.fund.v1.FundService",
            "yrd.certificate.v1.CertificateService",
            "yrd.case.v1.CaseService",
            "yrd.admin.v1.AdminService",
            "yrd.federation.v1.FederationService",
            "grpc.health.v1.Health",
        } <= names

    async def test_health_is_serving(self, federation: LocalFederation) -> None:
        stub = health_pb2_grpc.HealthStub(federation.channel(SH))
        for service in ("", "yrd.identity.v1.IdentityService"):
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

    async def test_admin_node_info_and_log_verification(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        stub = admin_pb2_grpc.AdminServiceStub(federation.channel(SH))
        identity = identity_pb2_grpc.IdentityServiceStub(federation.channel(SH))
        await identity.VerifyIdentity(
            identity_pb2.VerifyIdentityRequest(
                qr_payload=await wallet.fresh_qr(ZJ), purpose=identity_pb2.HOTEL_CHECK_IN
            ),
            metadata=(("authorization", f"Bearer dev-hotel-{SH}"),),
            timeout=3,
        )
        info = await stub.GetNodeInfo(admin_pb2.GetNodeInfoRequest(), metadata=OFFICE, timeout=3)
        assert info.province == SH
        assert {p.province for p in info.peers} == {"320000", "330000", "340000"}
        assert info.message_log_rows == 2
        report = await stub.VerifyMessageLog(
            admin_pb2.VerifyMessageLogRequest(), metadata=OFFICE, timeout=3
        )
        assert report.intact
        assert report.rows_checked == 2


class TestServerRuntime:
    """How the node's services sit on grpc.aio's server."""

    async def test_a_call_is_accepted_from_one_pending_request(
        self, federation: LocalFederation
    ) -> None:
        """grpc.aio keeps a pending request task per registered method and, for
        every call it accepts, waits on all of them (their number is a cost of
        every call). The node's services are served as generic handlers: its
        server waits on one pending request, as a do-nothing server does."""
        pending = [
            task.get_coro().__qualname__
            for task in asyncio.all_tasks()
            if task.get_coro().__qualname__.startswith("AioServer._request")
        ]
        assert "AioServer._request_registered_call" not in pending
        # One generic request pending per node of this in-process federation.
        running = [p for p in federation.provinces.values() if p.node is not None]
        assert pending.count("AioServer._request_call") == len(running)
        identity = identity_pb2_grpc.IdentityServiceStub(federation.channel(SH))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.VerifyIdentity(identity_pb2.VerifyIdentityRequest(), timeout=3)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    def test_a_service_given_only_as_registered_methods_is_still_served(self) -> None:
        """The view the services are mounted through adds generic handlers only;
        a service whose generated code (another grpcio version) gave only its
        registered methods is added as a generic handler, never dropped."""

        class Recording:
            def __init__(self) -> None:
                self.generic: list[grpc.GenericRpcHandler] = []

            def add_generic_rpc_handlers(self, handlers: Any) -> None:
                self.generic.extend(handlers)

            def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
                raise AssertionError("no method is registered with the server")

        def echo(request: bytes, context: Any) -> bytes:
            return request

        methods = {"Call": grpc.unary_unary_rpc_method_handler(echo)}
        server = Recording()
        view = _GenericHandlersOnly(server)  # type: ignore[arg-type]
        # As the generated code does: generic handler, then the same registered.
        view.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("a.A", methods),))
        view.add_registered_method_handlers("a.A", methods)
        # Registered only.
        view.add_registered_method_handlers("b.B", methods)

        class Details(grpc.HandlerCallDetails):  # type: ignore[misc]
            def __init__(self, method: str) -> None:
                self.method = method
                self.invocation_metadata = ()

        assert len(server.generic) == 2
        for method in ("/a.A/Call", "/b.B/Call"):
            found = [h.service(Details(method)) for h in server.generic]
            assert [f for f in found if f is not None] == [methods["Call"]]


class TestFederationServiceGarbage:
    """Arbitrary bytes at the federation service are refused; the node keeps serving."""

    @pytest.mark.parametrize(
        "payload",
        [
            b"\xff\xff\xff\xff",
            random.Random(64).randbytes(64),  # fixed: the same ids in every test process
            b"\x0a\x05abc",  # truncated length-delimited field
            federation_pb2.SignedEnvelope(header=b"garbage", signature=b"x").SerializeToString(),
            federation_pb2.SignedEnvelope().SerializeToString(),
        ],
    )
    async def test_garbage_gets_a_clear_status(
        self, federation: LocalFederation, wallet: Wallet, payload: bytes
    ) -> None:
        exchange = federation.channel(ZJ).unary_unary(
            "/yrd.federation.v1.FederationService/Exchange",
            request_serializer=None,
            response_deserializer=None,
        )
        rows = await federation.node(ZJ).message_log.count()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await exchange(payload, timeout=3)
        assert info.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert info.value.details()
        assert "Exception" not in (info.value.details() or "")
        assert await federation.node(ZJ).message_log.count() == rows
        # and the node still serves real exchanges
        identity = identity_pb2_grpc.IdentityServiceStub(federation.channel(SH))
        answer = await identity.VerifyIdentity(
            identity_pb2.VerifyIdentityRequest(
                qr_payload=await wallet.fresh_qr(ZJ), purpose=identity_pb2.HOTEL_CHECK_IN
            ),
            metadata=(("authorization", f"Bearer dev-hotel-{SH}"),),
            timeout=3,
        )
        assert answer.verdict == identity_pb2.VALID

    async def test_replayed_envelope_is_refused_and_logged_once(
        self, federation: LocalFederation, wallet: Wallet
    ) -> None:
        """An attacker re-sending a captured envelope gets ALREADY_EXISTS."""
        identity = identity_pb2_grpc.IdentityServiceStub(federation.channel(SH))
        await identity.VerifyIdentity(
            identity_pb2.VerifyIdentityRequest(
                qr_payload=await wallet.fresh_qr(ZJ), purpose=identity_pb2.HOTEL_CHECK_IN
            ),
            metadata=(("authorization", f"Bearer dev-hotel-{SH}"),),
            timeout=3,
        )
        sent = [
            r async for r in federation.node(SH).message_log.rows() if r.entry.direction == "out"
        ][-1]
        exchange = federation.channel(ZJ).unary_unary(
            "/yrd.federation.v1.FederationService/Exchange",
            request_serializer=None,
            response_deserializer=None,
        )
        rows = await federation.node(ZJ).message_log.count()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await exchange(sent.entry.envelope, timeout=3)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "nonce" in (info.value.details() or "")
        assert await federation.node(ZJ).message_log.count() == rows
