"""A province node: one ``grpc.aio`` server hosting the public services and the
federation service, with its trust store, message log and back-end adapters.

A node is an async context manager with an idempotent :meth:`Node.stop`:
health goes NOT_SERVING, the server stops with a grace period for in-flight
calls, then the message log is flushed and the stores are closed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from adapters import (
    build_case_system,
    build_certificate_library,
    build_fund_centre,
    build_identity_authority,
)
from adapters.base import FundCentre, IdentityAuthority
from gateway.clock import Clock, SystemClock
from gateway.config import FederationConfig, ProvinceConfig, load_federation
from gateway.envelope import MAX_ENVELOPE_BYTES, EnvelopeSigner, EnvelopeVerifier
from gateway.errors import ConfigError, FailedPrecondition
from gateway.federation.client import CHANNEL_OPTIONS, FederationClient
from gateway.federation.server import FederationServicer
from gateway.interceptors import GatewayInterceptor
from gateway.messagelog import MessageLog
from gateway.metrics import BREAKER_VALUES, MetricsServer, NodeMetrics
from gateway.outbox import Outbox
from gateway.reflection import enable_server_reflection
from gateway.services.admin import AdminServicer
from gateway.services.case import SERVICE_CASE, CaseServicer
from gateway.services.certificate import CertificateExchange, CertificateServicer
from gateway.services.fund import WITHDRAWAL, FundExchange, FundServicer
from gateway.services.identity import IdentityExchange, IdentityServicer
from gateway.services.tracked import TrackedExchange, TrackedProcessor
from gateway.store import StateStore
from gateway.tls import TlsMaterial
from gateway.trust import TrustStore
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc
from yrd.case.v1 import case_pb2, case_pb2_grpc
from yrd.certificate.v1 import certificate_pb2, certificate_pb2_grpc
from yrd.federation.v1 import federation_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

log = structlog.get_logger("yrd.node")

#: Server options: the documented maximum message size (an envelope of
#: MAX_ENVELOPE_BYTES plus framing); larger messages get RESOURCE_EXHAUSTED.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_ENVELOPE_BYTES + 64 * 1024),
    ("grpc.max_send_message_length", MAX_ENVELOPE_BYTES + 64 * 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
)

PUBLIC_SERVICE_NAMES = (
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
    fund_pb2.DESCRIPTOR.services_by_name["FundService"].full_name,
    certificate_pb2.DESCRIPTOR.services_by_name["CertificateService"].full_name,
    case_pb2.DESCRIPTOR.services_by_name["CaseService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    federation_pb2.DESCRIPTOR.services_by_name["FederationService"].full_name,
)


class Node:
    """One province's gateway node."""

    def __init__(
        self,
        federation: FederationConfig,
        *,
        clock: Clock | None = None,
        authority: IdentityAuthority | None = None,
        fund_centre: FundCentre | None = None,
        store_dir: Path | None = None,
        listen: str | None = None,
        federation_listen: str | None = None,
        grace: float = 5.0,
        config_file: Path | None = None,
        workers: int = 1,
        worker_index: int = 0,
    ) -> None:
        #: Several worker processes may serve one node on the same ports
        #: (SO_REUSEPORT); the first one also runs the background work (outbox,
        #: back-end processors), the others only serve calls.
        self.workers = workers
        self.worker_index = worker_index
        self.federation = federation
        #: Where the config was read from: SIGHUP and ReloadConfig re-read it.
        self.config_file = config_file
        self.reloads = 0
        self.clock = clock or SystemClock()
        me = federation.me
        self.listen = listen or me.node.endpoint
        self.federation_listen = federation_listen or me.node.federation_endpoint
        self.tls = (
            TlsMaterial.load(me.tls.certificate, me.tls.private_key, me.tls.ca) if me.tls else None
        )
        self.store_dir = store_dir or me.node.store
        self.grace = grace
        self.trust = TrustStore(federation)
        self.metrics = NodeMetrics(me.code)
        self.metrics_server: MetricsServer | None = None
        self.signer = EnvelopeSigner.from_config(me, self.clock)
        self.message_log = MessageLog(
            self.store_dir / "messages.db",
            # A measuring knob (docs/operations.md): 1 turns grouping off.
            batch_max=int(os.environ.get("YRD_MESSAGE_LOG_BATCH_MAX", "512")),
            clock=self.clock,
            province=me.code,
            head_signer=self.sign_statement,
        )
        self.state = StateStore(self.store_dir / "state.db")
        #: Stores that cannot write now: health is NOT_SERVING while any is here.
        self.unwritable: set[str] = set()
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._probing: asyncio.Task[Any] | None = None
        self.state.on_writable = self._store_writable("state store")
        self.message_log.on_writable = self._store_writable("message log")
        self.verifier = EnvelopeVerifier(federation, self.trust, self.clock)
        tls = self.tls
        self.federation_client = FederationClient(
            federation,
            self.signer,
            self.verifier,
            self.message_log,
            metrics=self.metrics,
            channel_factory=(
                None
                if tls is None
                else lambda endpoint: grpc.aio.secure_channel(
                    endpoint, tls.channel_credentials(), options=CHANNEL_OPTIONS
                )
            ),
        )
        self._authority = authority
        self._fund_centre = fund_centre
        self.outbox: Outbox | None = None
        self.processors: list[TrackedProcessor[Any]] = []
        self._closeables: list[Any] = []
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.federation_port = 0
        self.started_at = self.clock.now()
        self._stopped = False
        self._stop_lock = asyncio.Lock()

    @property
    def code(self) -> str:
        return self.federation.own

    def _store_writable(self, name: str) -> Callable[[bool], None]:
        """The callback a store calls when it stops or starts being writable."""

        def changed(writable: bool) -> None:
            (self.unwritable.discard if writable else self.unwritable.add)(name)
            self.metrics.store_writable.set(0 if self.unwritable else 1)
            log.warning(
                "store writable again" if writable else "store cannot write; NOT_SERVING",
                store=name,
            )
            tasks = [self._follow_writable()]
            if not writable and self._probing is None:
                tasks.append(self._probe_stores())
            for coroutine in tasks:
                task = asyncio.create_task(coroutine)
                self._health_tasks.add(task)
                task.add_done_callback(self._health_tasks.discard)

        return changed

    async def _probe_stores(self) -> None:
        """While a store cannot write, try a tiny write every second: a node with no
        traffic (health NOT_SERVING keeps it away) still learns that it recovered."""
        self._probing = asyncio.current_task()
        try:
            while self.unwritable and not self._stopped:
                await asyncio.sleep(1.0)
                if "state store" in self.unwritable:
                    await self.state.probe()
                if "message log" in self.unwritable:
                    await self.message_log.probe()
        finally:
            self._probing = None

    async def _follow_writable(self) -> None:
        """Health as the stores now are (read when the task runs: flips keep order)."""
        if self._stopped or self.server is None:
            return
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if self.unwritable
            else health_pb2.HealthCheckResponse.SERVING
        )
        for name in (*PUBLIC_SERVICE_NAMES, ""):
            await self.health.set(name, status)

    def sign_statement(self, statement: bytes) -> tuple[str, bytes]:
        """Sign with the current envelope key (chain heads of the message log)."""
        key_id, private_key = self.signer.current()
        return key_id, private_key.sign(statement)

    def head_keys(self, province: str, key_id: str, at: datetime) -> Ed25519PublicKey | None:
        return self.trust.head_key(province, key_id, at)

    async def start(self) -> Node:
        me = self.federation.me
        await self.message_log.open()
        await self.state.open()
        authority = self._authority or build_identity_authority(
            me.adapter, me.eid.authority_url, clock=self.clock
        )
        self._authority = authority
        identity = self.identity = IdentityExchange(
            federation=self.federation,
            trust=self.trust,
            client=self.federation_client,
            authority=authority,
            store=self.state,
            clock=self.clock,
        )
        server = grpc.aio.server(
            interceptors=[GatewayInterceptor(lambda: self.federation.me, self.metrics)],
            maximum_concurrent_rpcs=me.node.max_concurrent_calls,
            options=(*SERVER_OPTIONS, ("grpc.so_reuseport", 1 if self.workers > 1 else 0)),
        )
        identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(identity), server)
        backends = self._backends(me)
        fund = self.fund = FundExchange(
            WITHDRAWAL,
            federation=self.federation,
            client=self.federation_client,
            store=self.state,
            backend=backends["fund"],
            clock=self.clock,
        )
        cases = self.cases = TrackedExchange(
            SERVICE_CASE,
            federation=self.federation,
            client=self.federation_client,
            store=self.state,
            backend=backends["case"],
            clock=self.clock,
        )
        certificates = self.certificates = CertificateExchange(
            federation=self.federation,
            trust=self.trust,
            client=self.federation_client,
            library=backends["certificate"],
            clock=self.clock,
        )
        tracked: list[TrackedExchange[Any]] = [fund, cases]
        self.outbox = Outbox(
            self.state,
            self.federation_client,
            {name: route for exchange in tracked for name, route in exchange.routes().items()},
            max_backoff=me.node.outbox_max_backoff_seconds,
            park_after=me.node.park_after_seconds,
            metrics=self.metrics,
            idle_poll=1.0 if self.workers == 1 else 0.1,
        )
        for exchange in tracked:
            exchange.outbox = self.outbox
            exchange.metrics = self.metrics
            if exchange.backend is not None:
                processor = TrackedProcessor(
                    exchange,
                    self.state,
                    exchange.backend,
                    self.clock,
                    idle_poll=1.0 if self.workers == 1 else 0.1,
                )
                exchange.processor = processor
                self.processors.append(processor)
        fund_pb2_grpc.add_FundServiceServicer_to_server(FundServicer(fund), server)
        certificate_pb2_grpc.add_CertificateServiceServicer_to_server(
            CertificateServicer(certificates), server
        )
        case_pb2_grpc.add_CaseServiceServicer_to_server(CaseServicer(cases), server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(self), server)
        federation = FederationServicer(
            self.signer,
            self.verifier,
            self.message_log,
            require_peer_certificate=self.tls is not None,
            metrics=self.metrics,
            handlers={
                "identity.CheckCredential": identity.handle_federated,
                "certificate.Fetch": certificates.handle_fetch,
                **fund.handlers(),
                **cases.handlers(),
            },
        )
        server.add_generic_rpc_handlers((federation.generic_handler(),))
        self.federation_server = federation  # its answer memory's size, for tests
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        # grpc.reflection.v1 and v1alpha (current tools ask for v1 first).
        enable_server_reflection(
            (*PUBLIC_SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name),
            server,
        )
        if self.tls is not None:
            if self.federation_listen is None:
                raise OSError("node.federation_endpoint is required with [tls]")
            self.port = server.add_secure_port(self.listen, self.tls.public_server_credentials())
            self.federation_port = server.add_secure_port(
                self.federation_listen, self.tls.mutual_server_credentials()
            )
        else:
            self.port = server.add_insecure_port(self.listen)
            if self.federation_listen is not None:
                self.federation_port = server.add_insecure_port(self.federation_listen)
        if self.port == 0 or (self.federation_listen is not None and self.federation_port == 0):
            raise OSError(f"cannot listen on {self.listen} / {self.federation_listen}")
        await server.start()
        self.server = server
        for name in PUBLIC_SERVICE_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        identity.metrics = certificates.metrics = self.metrics
        self.metrics.refresh = self._refresh_metrics
        if me.node.metrics_endpoint is not None:
            host, _, port = me.node.metrics_endpoint.rpartition(":")
            # Worker i of a multi-process node serves its own metrics on port + i.
            metrics_port = int(port) + self.worker_index if int(port) else 0
            self.metrics_server = await MetricsServer(self.metrics, host, metrics_port).start()
        if self.worker_index == 0:
            await self.outbox.start()
            for processor in self.processors:
                await processor.start()
        self.started_at = self.clock.now()
        log.info("node started", province=me.code, listen=self.listen, port=self.port)
        return self

    def _backends(self, me: ProvinceConfig) -> dict[str, Any]:
        """This province's back-end connectors (injected ones first, then from config)."""
        found: dict[str, Any] = {"fund": self._fund_centre, "case": None, "certificate": None}
        if found["fund"] is None and me.fund is not None and me.adapter.fund is not None:
            found["fund"] = build_fund_centre(me.adapter, me.fund.centre_url, clock=self.clock)
        if me.case is not None and me.adapter.case is not None:
            found["case"] = build_case_system(me.adapter, me.case.system_url, clock=self.clock)
        if (
            me.certificate is not None
            and me.certificate.library_url is not None
            and me.adapter.certificate is not None
        ):
            found["certificate"] = build_certificate_library(
                me.adapter, me.certificate.library_url, clock=self.clock
            )
        self._closeables = [b for b in found.values() if b is not None]
        return found

    async def _refresh_metrics(self) -> None:
        depth, oldest = await self.state.outbox_stats()
        self.metrics.outbox_depth.set(depth)
        self.metrics.outbox_oldest.set(0.0 if oldest is None else max(0.0, time.time() - oldest))
        self.metrics.outbox_items.clear()
        self.metrics.outbox_items_oldest.clear()
        for peer, state, items, created in await self.state.outbox_by_peer():
            self.metrics.outbox_items.labels(peer, state).set(items)
            self.metrics.outbox_items_oldest.labels(peer, state).set(
                max(0.0, time.time() - created)
            )
        self.metrics.log_rows.set(await self.message_log.count())
        self.metrics.log_commits.set(self.message_log.commits)
        in_reconciliation = await self.state.reconciliation_counts()
        for domain in ("withdrawal", "case"):
            self.metrics.reconciliation.labels(domain).set(in_reconciliation.get(domain, 0))
        for code in self.federation.provinces:
            if code != self.code:
                state = self.federation_client.breaker_state(code).value
                self.metrics.breaker.labels(code).set(BREAKER_VALUES[state])

    async def reload(self, federation: FederationConfig) -> None:
        """Take a new, already validated federation config without dropping calls.

        Calls in flight finish with the config they started with; new calls see
        the new one. Keys, peers, endpoints of peers, clients, disclosure
        policies and services change; this node's own listening addresses, TLS
        certificate and ``max_concurrent_calls`` need a restart.
        """
        if federation.own != self.federation.own:
            raise ConfigError.one(
                federation.me.source,
                "province.code",
                federation.own,
                f"this node's province {self.federation.own} (a reload cannot change it)",
            )
        signer = EnvelopeSigner.from_config(federation.me, self.clock)
        trust = TrustStore(federation)
        self.signer.update(signer)
        self.verifier.update(federation, trust)
        await self.federation_client.update(federation)
        self.identity.update(federation)
        self.fund.update(federation)
        self.cases.update(federation)
        self.certificates.update(federation, trust)
        self.trust = trust
        self.federation = federation
        self.reloads += 1
        log.info("config reloaded", province=federation.own, provinces=sorted(federation.provinces))

    async def reload_from_disk(self) -> None:
        """Re-read the config folder; a bad config raises ConfigError and changes nothing."""
        if self.config_file is None:
            raise FailedPrecondition("this node was not started from a config file")
        await self.reload(load_federation(self.config_file))

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop; safe to call more than once."""
        async with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            for task in list(self._health_tasks):  # store probes, health updates
                task.cancel()
            await self.health.enter_graceful_shutdown()
            if self.server is not None:
                await self.server.stop(self.grace if grace is None else grace)
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            if self.outbox is not None:
                await self.outbox.stop()
            for processor in self.processors:
                await processor.stop()
            await self.federation_client.close()
            if self._authority is not None:
                await self._authority.aclose()
            for backend in self._closeables:
                await backend.aclose()
            await self.message_log.close()
            await self.state.close()
            log.info("node stopped", province=self.code)

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()
