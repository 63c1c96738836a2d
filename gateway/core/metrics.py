"""Prometheus metrics of a node, in a registry of its own (several nodes may
share a process, as in the demo and the tests).

Labels carry only province codes, logical service and gRPC method names,
status codes and breaker states: never personal data. Gauges that need the
store (outbox depth, age of the oldest item, message-log rows) are read at
scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Latency buckets (seconds): loopback exchanges take milliseconds, back-ends more.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Envelopes per batch (one stream frame): 1 .. 1,024.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class NodeMetrics:
    """Every metric a node exports."""

    def __init__(self, province: str) -> None:
        self.province = province
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpcs = Counter(
            "yrd_rpc_total", "Public RPCs by method and status code", ["method", "code"], registry=r
        )
        self.rpc_seconds = Histogram(
            "yrd_rpc_duration_seconds",
            "Public RPC latency (local client -> node)",
            ["method"],
            buckets=BUCKETS,
            registry=r,
        )
        self.exchanges = Counter(
            "yrd_exchanges_total",
            "Federation exchanges by peer, logical service, direction (out: this node asked; "
            "in: a peer asked) and outcome (gRPC status code name)",
            ["peer", "service", "direction", "outcome"],
            registry=r,
        )
        self.exchange_seconds = Histogram(
            "yrd_exchange_duration_seconds",
            "Federation exchange latency: out = node -> peer round trip, in = handling here",
            ["peer", "service", "direction"],
            buckets=BUCKETS,
            registry=r,
        )
        self.backend_seconds = Histogram(
            "yrd_backend_duration_seconds",
            "Latency of calls to this province's back-ends",
            ["backend", "outcome"],
            buckets=BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "yrd_federation_retries_total",
            "Retried attempts by peer (synchronous exchanges)",
            ["peer"],
            registry=r,
        )
        self.outbox_retries = Counter(
            "yrd_outbox_retries_total",
            "Outbox deliveries rescheduled after a failure",
            ["peer"],
            registry=r,
        )
        self.breaker = Gauge(
            "yrd_breaker_state",
            "Circuit breaker per peer: 0 closed, 1 half-open, 2 open",
            ["peer"],
            registry=r,
        )
        self.batch_envelopes = Histogram(
            "yrd_federation_batch_envelopes",
            "Envelopes per stream frame (one signed batch) by peer and direction "
            "(out: frames this node sent, in: frames it received)",
            ["peer", "direction"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.streams = Gauge(
            "yrd_federation_streams",
            "Open federation streams by peer and direction (out: opened by this node)",
            ["peer", "direction"],
            registry=r,
        )
        self.outbox_parked = Counter(
            "yrd_outbox_parked_total",
            "Outbox items parked for an operator after failing past node.park_after_seconds",
            ["peer"],
            registry=r,
        )
        self.outbox_items = Gauge(
            "yrd_outbox_items",
            "Outbox items by peer and state (pending: being delivered; parked: waits for "
            "an operator)",
            ["peer", "state"],
            registry=r,
        )
        self.outbox_items_oldest = Gauge(
            "yrd_outbox_items_oldest_age_seconds",
            "Age of the oldest outbox item by peer and state",
            ["peer", "state"],
            registry=r,
        )
        self.store_writable = Gauge(
            "yrd_store_writable",
            "1 while this node can write its stores (state store and message log), else 0",
            registry=r,
        )
        self.store_writable.set(1)
        self.outbox_depth = Gauge("yrd_outbox_depth", "Items waiting in the outbox", registry=r)
        self.outbox_oldest = Gauge(
            "yrd_outbox_oldest_age_seconds",
            "Age of the oldest waiting outbox item (0 if none)",
            registry=r,
        )
        self.log_rows = Gauge("yrd_message_log_rows", "Rows in the message log", registry=r)
        self.log_commits = Gauge(
            "yrd_message_log_commits", "Commits of the message log's grouped writer", registry=r
        )
        self.reconciliation = Gauge(
            "yrd_reconciliation_cases",
            "Received money-moving cases their back-end lost track of, waiting for an "
            "operator (yrd-gateway outbox resolve), by domain",
            ["domain"],
            registry=r,
        )
        self.key_expiry = Gauge(
            "yrd_key_expiry_days",
            "Days until a key or certificate in force expires (negative: expired), by "
            "province, kind (signing, eid_issuer, seal, tls_certificate, tls_ca) and key id",
            ["province", "kind", "key_id"],
            registry=r,
        )
        self.descriptor_expiry = Gauge(
            "yrd_descriptor_expiry_days",
            "Days until a province's descriptor held (or this node's own) stops being "
            "trusted (negative: expired, the peer is treated as unavailable), by province",
            ["province"],
            registry=r,
        )
        self.descriptor_refusals = Counter(
            "yrd_descriptor_refusals_total",
            "Descriptors refused, by the province they claimed to be for and reason "
            "(untrusted_certificate, certificate_not_valid, wrong_province, bad_signature, "
            "expired, not_yet_valid, rollback, malformed)",
            ["province", "reason"],
            registry=r,
        )
        self.descriptor_fetches = Counter(
            "yrd_descriptor_fetches_total",
            "Fetches of peers' descriptors by province and outcome (updated, unchanged, "
            "refused, failed)",
            ["province", "outcome"],
            registry=r,
        )
        self.peer_current = Gauge(
            "yrd_peer_descriptor_current",
            "1 when this node holds a current descriptor of the configured peer, else 0 "
            "(missing or expired: the peer is treated as unavailable)",
            ["province"],
            registry=r,
        )
        self.degraded = Gauge(
            "yrd_node_degraded",
            "1 when a configured peer has no current descriptor (health service "
            "yrd.directory NOT_SERVING), else 0",
            registry=r,
        )
        # ---- what operators alert on (docs/runbook.md; monitoring/alerts.yml) ----
        self.refusals = Counter(
            "yrd_refusals_total",
            "Calls this node refused, by origin (a peer's GB/T 2260 code for a federation "
            "envelope, 'client' for a local client's call) and reason (for envelopes the "
            "EnvelopeRejected reason, e.g. bad_signature, replay, expired; for clients "
            "unauthenticated, permission_denied, invalid_argument, rate_limited)",
            ["origin", "reason"],
            registry=r,
        )
        self.backend_calls = Counter(
            "yrd_backend_calls_total",
            "Calls to this province's back-ends by outcome: ok, refused (the back-end's own "
            "decision), translation_error (the adapter could not map the message), "
            "unavailable (unreachable, timed out or failed)",
            ["backend", "outcome"],
            registry=r,
        )
        self.peer_up = Gauge(
            "yrd_peer_up",
            "1 when the last call to the peer (exchange or descriptor fetch) got an answer, "
            "0 after a failure or before any call",
            ["peer"],
            registry=r,
        )
        self.peer_last_success = Gauge(
            "yrd_peer_last_success_timestamp_seconds",
            "Unix time of the last call to the peer that got an answer (0: none since start)",
            ["peer"],
            registry=r,
        )
        self.log_intact = Gauge(
            "yrd_message_log_intact",
            "1 when the last verification of the message log found its hash chain intact, "
            "0 when it found a break (-1 before the first verification)",
            registry=r,
        )
        self.log_intact.set(-1)
        self.log_verified_at = Gauge(
            "yrd_message_log_verified_timestamp_seconds",
            "Unix time of the last verification of the message log (0: none yet)",
            registry=r,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        #: Filled in by the node: refreshes the gauges read at scrape time.
        self.refresh: Callable[[], Awaitable[None]] | None = None

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (on every call
        it is a measurable part of a fast exchange)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_rpc(self, method: str, code: str, started: float) -> None:
        self._child(self.rpcs, method, code).inc()
        self._child(self.rpc_seconds, method).observe(time.monotonic() - started)

    def observe_exchange(
        self, peer: str, service: str, direction: str, outcome: str, started: float
    ) -> None:
        self._child(self.exchanges, peer, service, direction, outcome).inc()
        self._child(self.exchange_seconds, peer, service, direction).observe(
            time.monotonic() - started
        )

    def observe_backend(self, backend: str, outcome: str, started: float) -> None:
        self._child(self.backend_calls, backend, outcome).inc()
        self._child(self.backend_seconds, backend, outcome).observe(time.monotonic() - started)

    async def render(self) -> bytes:
        if self.refresh is not None:
            await self.refresh()
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` in the Prometheus text format, on its own loopback port."""

    def __init__(self, metrics: NodeMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> MetricsServer:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # aiohttp keeps the bound socket here
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self._port
        return self

    async def _handle(self, request: web.Request) -> web.Response:
        body = await self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
