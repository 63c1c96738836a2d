"""A province node: one ``grpc.aio`` server hosting the public services and the
federation service, with its trust store, message log and back-end adapters.

A node is an async context manager with an idempotent :meth:`Node.stop`:
health goes NOT_SERVING, the server stops with a grace period for in-flight
calls, then the message log is flushed and the stores are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from adapters import (
    build_case_system,
    build_certificate_library,
    build_fund_centre,
    build_identity_authority,
)
from adapters.base import CaseSystem, CertificateLibrary, FundCentre, IdentityAuthority
from gateway.config.holder import ConfigHolder
from gateway.config.loading import load_federation
from gateway.config.models import FederationConfig, ProvinceConfig, key_expiries
from gateway.config.peers import PeerFacts
from gateway.core.channels import balanced_aio_channel
from gateway.core.clock import Clock, SystemClock
from gateway.core.errors import ConfigError, FailedPrecondition, GatewayError
from gateway.core.metrics import BREAKER_VALUES, MetricsServer, NodeMetrics
from gateway.federation.client import CHANNEL_OPTIONS, FederationClient
from gateway.federation.directory import Directory, DirectoryServicer
from gateway.federation.outbox import Outbox
from gateway.federation.server import FederationServicer
from gateway.server.console import Console
from gateway.server.interceptors import GatewayInterceptor
from gateway.server.reflection import enable_server_reflection
from gateway.services.admin import AdminServicer, verify_message_log
from gateway.services.case import SERVICE_CASE, CaseServicer
from gateway.services.certificate import CertificateExchange, CertificateServicer
from gateway.services.fund import WITHDRAWAL, FundExchange, FundServicer
from gateway.services.identity import IdentityExchange, IdentityServicer
from gateway.services.tracked import TrackedExchange, TrackedProcessor
from gateway.storage.descriptors import DescriptorCache
from gateway.storage.engines import MESSAGE_LOG_FILE, STATE_FILE, store_location
from gateway.storage.messagelog import HeadKeys, MessageLog
from gateway.storage.records import StoreClosedError, StoreOpenError
from gateway.storage.shared_descriptor import SharedDescriptor
from gateway.storage.state import StateStore
from gateway.trust.envelope import (
    MAX_ENVELOPE_BYTES,
    EnvelopeSigner,
    EnvelopeVerifier,
    signing_keys,
)
from gateway.trust.tls import TlsMaterial, certificate_not_after
from gateway.trust.truststore import TrustStore
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc
from yrd.case.v1 import case_pb2, case_pb2_grpc
from yrd.certificate.v1 import certificate_pb2, certificate_pb2_grpc
from yrd.directory.v1 import directory_pb2_grpc
from yrd.federation.v1 import federation_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

log = structlog.get_logger("yrd.node")

#: A store's writability is logged at most once per this many seconds (the
#: changes between are counted in the next line); health follows every change.
WRITABLE_LOG_SECONDS = 5.0

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


class _GenericHandlersOnly:
    """What the generated ``add_*Servicer_to_server`` functions and reflection
    call on a server, passing the generic handlers through and leaving out
    the registered-method copies of the same handlers.

    grpc.aio keeps one pending request task per registered method and, for
    every call it accepts, waits on all of them at once (``asyncio.wait``, whose
    cost grows with their number): with this node's 25 methods registered, 16 µs
    of the event loop per call accepted, against 7 with one pending request (a
    do-nothing server's). Served as generic handlers, a call waits on
    one pending request; the interceptor resolves each method's handler once
    (:meth:`GatewayInterceptor.intercept_service`), so the lookup among the
    generic handlers is not paid per call either."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        #: Services added as generic handlers so far.
        self._services: set[str] = set()

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        for handler in handlers:
            if isinstance(handler, grpc.ServiceRpcHandler):
                self._services.add(handler.service_name())
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """The generated code passes the same handlers to
        :meth:`add_generic_rpc_handlers` just before: nothing to do then. A
        service given only here is added as a generic handler."""
        if service not in self._services:
            self.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, handlers),)
            )


#: gRPC health service name of the directory: SERVING while every configured peer
#: has a current descriptor; NOT_SERVING when the node is degraded (a peer
#: missing or expired). The node itself ("") stays SERVING: it still does its work.
DIRECTORY_HEALTH = "yrd.directory"


#: Long-lived streams (health Watch of load-balanced client channels) a node
#: takes beyond its max_concurrent_calls unary calls, before gRPC refuses.
STREAMS_ALLOWED = 10_000


class NodeStartError(Exception):
    """The node cannot start. The message names the cause in one line; nothing
    the node opened is left open (no listener, no store, no lock)."""


class LogIntegrityError(NodeStartError):
    """The message log does not verify from its last signed head to its tail."""


class AddressUnavailable(NodeStartError, RuntimeError):
    """A port the node cannot bind. Also a RuntimeError, what grpc raises for it,
    so a harness that retries on another port (LocalFederation) still does."""


def probe_address(address: str | None) -> None:
    """Raise AddressUnavailable if ``address`` (HOST:PORT) cannot be bound now.

    Bound without SO_REUSEPORT, so a listener that shares its port with others
    (another node's workers) is found too; port 0 is always free."""
    if address is None:
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or int(port) == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise AddressUnavailable(f"cannot listen on {address}: {exc.strerror}") from exc


class StoreLock:
    """An OS lock (``flock``) on ``node.lock`` in the node's local folder (the
    store folder, or ``local_dir`` when the stores are a database), held for the
    node's life: a second node on the same stores (or replica on the same
    local folder) is refused before it opens them. The worker processes of one
    node (``serve --workers N``) share the supervisor's lock: they inherit its
    open file (the lock belongs to it), so the stores stay locked until the
    last process of the node has exited."""

    FILE = "node.lock"

    def __init__(self, store_dir: Path, fd: int) -> None:
        self.path = store_dir / self.FILE
        self.fd: int | None = fd

    @classmethod
    def acquire(cls, store_dir: Path) -> StoreLock:
        path = store_dir / cls.FILE
        try:
            store_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise NodeStartError(f"cannot lock the folder {store_dir}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise NodeStartError(
                f"the folder {store_dir} is in use by another node (pid {holder}); "
                "one node per store folder (one replica per local_dir)"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(store_dir, fd)

    @classmethod
    def inherited(cls, store_dir: Path, fd: int) -> StoreLock:
        """The lock a supervisor passed to its worker (its open file ``fd``)."""
        path = store_dir / cls.FILE
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
            # Our own open file already holds the lock: this succeeds at once;
            # any other file of a node holding the lock is refused.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise NodeStartError(f"the folder {store_dir} is not locked for this worker") from exc
        if not same:
            raise NodeStartError(f"the folder {store_dir} is not locked for this worker")
        return cls(store_dir, fd)

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def check_keys(me: ProvinceConfig) -> None:
    """Read every private key and certificate this node will use, so that an
    unreadable one stops the start with its config key and file named."""
    paths: list[tuple[str, Path | None]] = [("signing.private_key", me.signing.private_key)]
    paths += [
        (f"signing.public_keys[{k.key_id}].private_key", k.private_key)
        for k in me.signing.public_keys
    ]
    if me.tls is not None:
        paths += [
            ("tls.private_key", me.tls.private_key),
            ("tls.certificate", me.tls.certificate),
            ("tls.ca", me.tls.ca),
        ]
    for name, path in paths:
        if path is None:
            continue
        try:
            data = path.read_bytes()
            if name.endswith("private_key"):
                serialization.load_pem_private_key(data, password=None)
            elif b"-----BEGIN CERTIFICATE-----" not in data:
                raise ValueError("not a PEM certificate")
        except OSError as exc:
            raise NodeStartError(f"cannot read {name} ({path}): {exc.strerror}") from exc
        except (ValueError, TypeError) as exc:
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise NodeStartError(f"cannot read {name} ({path}): {cause}") from exc


async def check_log_at_start(
    message_log: MessageLog, keys: HeadKeys, *, continue_past_break: bool
) -> None:
    """Verify an open message log as a node does before serving
    (MessageLog.check_at_start). A break no segment acknowledges raises
    LogIntegrityError naming the row and the cause, unless the operator asked to
    continue past it: then a new signed segment records it."""
    report = await message_log.check_at_start(keys)
    broken = report.unacknowledged
    if broken is None:
        return
    if not continue_past_break:
        raise LogIntegrityError(
            f"refusing to start: the message log {message_log.location} is broken at "
            f"row {broken.seq}: {broken.detail} (see `yrd-gateway audit verify`; "
            "`serve --continue-past-break` records it and continues)"
        )
    seq = await message_log.continue_past_break(report)
    log.warning(
        "continued past a break in the message log",
        broken_row=broken.seq,
        cause=broken.detail,
        segment_row=seq,
    )


async def prepare_node_stores(federation: FederationConfig, *, continue_past_break: bool) -> None:
    """Open a node's stores once without starting the node, before the workers of
    ``serve --workers N`` do: the message log is checked once
    (check_log_at_start), and the state store is created (or migrated) by one
    process rather than raced for by several on a fresh folder."""
    me = federation.me
    signer = EnvelopeSigner.from_config(me, SystemClock())

    def sign(statement: bytes) -> tuple[str, bytes]:
        key_id, private_key = signer.current()
        return key_id, private_key.sign(statement)

    try:
        message_log = await MessageLog(
            store_location(me.node.store, MESSAGE_LOG_FILE), province=me.code, head_signer=sign
        ).open()
    except (OSError, StoreOpenError) as exc:
        raise NodeStartError(f"cannot open the message log: {exc}") from exc
    try:
        await check_log_at_start(
            message_log, TrustStore(federation).head_key, continue_past_break=continue_past_break
        )
    finally:
        await message_log.close()
    state = StateStore(store_location(me.node.store, STATE_FILE))
    try:
        await state.open()
    except (OSError, StoreOpenError) as exc:
        raise NodeStartError(f"cannot open the state store {state.location}: {exc}") from exc
    finally:
        await state.close()


@dataclass
class Backends:
    """This province's back-end connectors: the e-ID authority always, the others
    when configured (or given by a test). The node closes them all at stop."""

    identity: IdentityAuthority
    fund: FundCentre | None = None
    case: CaseSystem | None = None
    certificate: CertificateLibrary | None = None

    def connect(self, me: ProvinceConfig, clock: Clock) -> None:
        """Connect those the config names that were not given (each one is set as
        soon as it is built, so that aclose() closes whatever was built)."""
        if self.fund is None and me.fund is not None and me.adapter.fund is not None:
            self.fund = build_fund_centre(me.adapter, me.fund.centre_url, clock=clock)
        if me.case is not None and me.adapter.case is not None:
            self.case = build_case_system(me.adapter, me.case.system_url, clock=clock)
        if (
            me.certificate is not None
            and me.certificate.library_url is not None
            and me.adapter.certificate is not None
        ):
            self.certificate = build_certificate_library(
                me.adapter, me.certificate.library_url, clock=clock
            )

    async def aclose(self) -> None:
        for backend in (self.identity, self.fund, self.case, self.certificate):
            if backend is not None:
                await backend.aclose()


class Node:
    """One province's gateway node.

    Assembled in named steps, each a method below. The constructor prepares
    what needs no I/O: the config holder, TLS material, :meth:`_make_stores`
    and :meth:`_make_envelopes` (signer, verifier, federation client).
    :meth:`start` then runs, in order: :meth:`_lock_store`, :meth:`_bind`,
    :meth:`_open_stores`, :meth:`_connect_backends`, :meth:`_build_services`,
    :meth:`_mount_services`, :meth:`_serve`, :meth:`_start_metrics`,
    :meth:`_start_background_work`. :meth:`stop` undoes whatever was done.
    """

    def __init__(
        self,
        federation: FederationConfig,
        *,
        clock: Clock | None = None,
        authority: IdentityAuthority | None = None,
        fund_centre: FundCentre | None = None,
        store_dir: Path | str | None = None,
        local_dir: Path | None = None,
        listen: str | None = None,
        federation_listen: str | None = None,
        grace: float = 5.0,
        config_file: Path | None = None,
        workers: int = 1,
        worker_index: int = 0,
        continue_past_break: bool = False,
        check_log: bool = True,
        lock_fd: int | None = None,
    ) -> None:
        me = federation.me
        check_keys(me)
        #: The config in force: every service reads it per call; reload swaps it.
        self.config = ConfigHolder(federation)
        #: Where the config was read from: SIGHUP and ReloadConfig re-read it.
        self.config_file = config_file
        self.reloads = 0
        self.clock = clock or SystemClock()
        #: Several worker processes may serve one node on the same ports
        #: (SO_REUSEPORT); the first one also runs the background work (outbox,
        #: back-end processors), the others only serve calls.
        self.workers = workers
        self.worker_index = worker_index
        #: Start-up: verify the message log (check_at_start) and refuse a break,
        #: or record a new segment past it (``serve --continue-past-break``).
        self.check_log = check_log
        self.continue_past_break = continue_past_break
        self.listen = listen or me.node.endpoint
        self.federation_listen = federation_listen or me.node.federation_endpoint
        #: The stores' folder or database URL; the node's own files (lock,
        #: directory cache) are in local_dir: the same folder, or [node] local_dir.
        self.store_dir: Path | str = store_dir or me.node.store
        self.local_dir: Path = local_dir or (
            store_dir if isinstance(store_dir, Path) else me.node.local_folder
        )
        self.shared_descriptor: SharedDescriptor | None = None
        self.grace = grace
        self.tls = (
            TlsMaterial.load(me.tls.certificate, me.tls.private_key, me.tls.ca) if me.tls else None
        )
        self.metrics = NodeMetrics(me.code)
        self.metrics_server: MetricsServer | None = None
        #: The web console ([console]), started after the gRPC server.
        self.console: Console | None = None
        # Back-ends given by the caller (tests); the others are connected at start.
        self._authority = authority
        self._fund_centre = fund_centre
        self.backends: Backends | None = None
        self._make_stores()
        self._make_envelopes()
        # Made at start.
        self.outbox: Outbox | None = None
        self.directory: Directory | None = None
        self.processors: list[TrackedProcessor[Any, Any, Any, Any]] = []
        self._log_verifier: asyncio.Task[None] | None = None
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.federation_server: FederationServicer | None = None
        self.port = 0
        self.federation_port = 0
        self.started_at = self.clock.now()
        # Lifecycle.
        self._lock_fd = lock_fd
        self._store_lock: StoreLock | None = None
        self._quiet_stop = False
        self._stopped = False
        self._stop_lock = asyncio.Lock()

    def _serving(self) -> bool:
        """Whether the node serves, as its health says (what balanced channels
        follow): started, not stopping, and every store can write. Read from the
        node's own state, which health follows (grpc_health has no getter)."""
        return self.server is not None and not self._stopped and not self.unwritable

    def _make_stores(self) -> None:
        """The message log and the state store (opened at start, by _open_stores);
        health follows whether they can write."""
        me = self.config.me
        self.message_log = MessageLog(
            store_location(self.store_dir, MESSAGE_LOG_FILE),
            # A measuring knob (docs/operations.md): 1 turns grouping off.
            batch_max=int(os.environ.get("YRD_MESSAGE_LOG_BATCH_MAX", "512")),
            clock=self.clock,
            province=me.code,
            head_signer=self.sign_statement,
        )
        self.state = StateStore(store_location(self.store_dir, STATE_FILE))
        #: Stores that cannot write now: health is NOT_SERVING while any is here.
        self.unwritable: set[str] = set()
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._probing: asyncio.Task[Any] | None = None
        #: Per store: when its writability was last logged, and the changes
        #: since that were not (a store that flaps is one line per window).
        self._writable_logged: dict[str, float] = {}
        self._writable_unlogged: dict[str, int] = {}
        self.state.on_writable = self._store_writable("state store")
        self.message_log.on_writable = self._store_writable("message log")

    def _make_envelopes(self) -> None:
        """The envelope signer and verifier and the federation client: all three
        read keys, peers and endpoints from the config in force."""
        self.signer = EnvelopeSigner.for_config(self.config, self.clock)
        self.verifier = EnvelopeVerifier(self.config, self.clock)
        tls = self.tls
        self.federation_client = FederationClient(
            self.config,
            self.signer,
            self.verifier,
            self.message_log,
            metrics=self.metrics,
            stream=self.federation.me.node.federation_stream,
            channel_factory=(
                None
                if tls is None
                else lambda endpoints: balanced_aio_channel(
                    endpoints, tls.channel_credentials(), options=CHANNEL_OPTIONS
                )
            ),
        )

    @property
    def federation(self) -> FederationConfig:
        """The federation config in force (read-only: :meth:`reload` changes it)."""
        return self.config.federation

    @property
    def trust(self) -> TrustStore:
        """The trust store of the config in force."""
        return self.config.derived(TrustStore)

    @property
    def code(self) -> str:
        return self.federation.own

    def _store_writable(self, name: str) -> Callable[[bool], None]:
        """The callback a store calls when it stops or starts being writable."""

        def changed(writable: bool) -> None:
            (self.unwritable.discard if writable else self.unwritable.add)(name)
            self.metrics.store_writable.set(0 if self.unwritable else 1)
            tasks = [self._follow_writable()]
            if self._log_writable(name):
                tasks.append(self._log_writable_later(name))
            if not writable and self._probing is None:
                tasks.append(self._probe_stores())
            for coroutine in tasks:
                task = asyncio.create_task(coroutine)
                self._health_tasks.add(task)
                task.add_done_callback(self._health_tasks.discard)

        return changed

    def _log_writable(self, name: str) -> bool:
        """Log the store's change of writability, unless one was logged less than
        :data:`WRITABLE_LOG_SECONDS` ago: then count it, and True when a line
        saying how the store ends that window is yet to be scheduled. A failing
        disk can make a store flap (a commit that fits in the WAL succeeds, the
        next one fails) many times a second: its health follows every change,
        its log one line per window."""
        now = time.monotonic()
        last = self._writable_logged.get(name)
        if last is None or now - last >= WRITABLE_LOG_SECONDS:
            self._writable_logged[name] = now
            self._writable_unlogged.pop(name, None)
            self._writable_line(name, changes=1)
            return False
        unlogged = self._writable_unlogged.get(name, 0)
        self._writable_unlogged[name] = unlogged + 1
        return unlogged == 0

    async def _log_writable_later(self, name: str) -> None:
        """At the end of the window: the store's state now, and how often it changed."""
        await asyncio.sleep(
            max(0.0, self._writable_logged.get(name, 0.0) + WRITABLE_LOG_SECONDS - time.monotonic())
        )
        changes = self._writable_unlogged.pop(name, 0)
        if changes and not self._stopped:
            self._writable_logged[name] = time.monotonic()
            self._writable_line(name, changes=changes)

    def _writable_line(self, name: str, *, changes: int) -> None:
        writable = name not in self.unwritable
        fields: dict[str, Any] = {"store": name}
        if changes > 1:
            fields["changes"] = changes  # since the last line, within the window
        log.warning(
            "store writable again" if writable else "store cannot write; NOT_SERVING", **fields
        )

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

    @property
    def flows(self) -> dict[str, Any]:
        """The tracked exchanges by domain, as the operator service steers them."""
        return {flow.domain: flow for flow in (WITHDRAWAL, SERVICE_CASE)}

    def key_expiries(self) -> list[tuple[str, str, str, datetime]]:
        """Every key and certificate whose expiry the node exports: the federation's
        keys and its own TLS files (:func:`_expiries`), and its peers' certificates."""
        found = list(self.config.derived(_expiries))
        if self.directory is not None:
            found += self.directory.peer_certificates()
        return found

    def head_keys(self, province: str, key_id: str, at: datetime) -> Ed25519PublicKey | None:
        return self.trust.head_key(province, key_id, at)

    async def start(self) -> Node:
        """Lock the stores, bind the ports, then open and check the stores, then
        serve. Any failure undoes what was done and raises (NodeStartError with a
        one-line cause for what an operator can fix)."""
        try:
            return await self._start()
        except BaseException:
            self._quiet_stop = True  # it never served: no "node stopped" line
            await self.stop(0)
            raise

    async def _start(self) -> Node:
        """The start-up, part by part (stop() undoes whatever was done)."""
        if self.config.me.console is not None and self.tls is None:
            raise NodeStartError("[console] needs [tls]: the console is served over HTTPS")
        self._lock_store()
        server = self._bind(self.config.me)
        await self._open_stores()
        await self._start_directory()
        backends = self._connect_backends()
        self._build_services(backends)
        self._mount_services(server)
        await self._serve(server)
        await self._start_metrics()
        await self._start_console()
        await self._start_background_work()
        self.started_at = self.clock.now()
        log.info("node started", province=self.code, listen=self.listen, port=self.port)
        return self

    def _lock_store(self) -> None:
        if self._lock_fd is not None:
            self._store_lock = StoreLock.inherited(self.local_dir, self._lock_fd)
        else:
            self._store_lock = StoreLock.acquire(self.local_dir)

    def _bind(self, me: ProvinceConfig) -> grpc.aio.Server:
        """The server with its ports bound (before any store is opened)."""
        server = grpc.aio.server(
            interceptors=[GatewayInterceptor(self.config, self.metrics)],
            # The interceptor refuses unary calls past max_concurrent_calls; gRPC's
            # own limit, which counts streams too, is only a backstop above it
            # (a health Watch stream per load-balanced client channel).
            maximum_concurrent_rpcs=me.node.max_concurrent_calls + STREAMS_ALLOWED,
            options=(*SERVER_OPTIONS, ("grpc.so_reuseport", 1 if self.workers > 1 else 0)),
        )
        self.server = server
        if self.tls is not None and self.federation_listen is None:
            raise NodeStartError("node.federation_endpoint is required with [tls]")
        for address, credentials in (
            (self.listen, None if self.tls is None else self.tls.public_server_credentials()),
            (
                self.federation_listen,
                None if self.tls is None else self.tls.mutual_server_credentials(),
            ),
        ):
            if address is None:
                continue
            if self.workers == 1:  # (the supervisor of several workers probed already)
                probe_address(address)
            try:
                port = (
                    server.add_insecure_port(address)
                    if credentials is None
                    else server.add_secure_port(address, credentials)
                )
            except RuntimeError:  # grpc: "Failed to bind to address ..."
                port = 0
            if port == 0:
                raise AddressUnavailable(
                    f"cannot listen on {address}: the address is in use or not available here"
                )
            if address == self.listen:
                self.port = port
            else:
                self.federation_port = port
        return server

    async def _open_stores(self) -> None:
        """Open the message log, check it (see MessageLog.check_at_start), then
        the state store."""
        try:
            await self.message_log.open()
        except (OSError, StoreOpenError) as exc:
            raise NodeStartError(
                f"cannot open the message log {self.message_log.location}: {exc}"
            ) from exc
        if self.check_log:
            await check_log_at_start(
                self.message_log, self.head_keys, continue_past_break=self.continue_past_break
            )
        try:
            await self.state.open()
        except (OSError, StoreOpenError) as exc:
            raise NodeStartError(
                f"cannot open the state store {self.state.location}: {exc}"
            ) from exc

    async def _start_directory(self) -> None:
        """Publish this node's descriptor and put its peers' in force: the copies
        on disk at once, then fetched from the peers in the background (the
        first worker fetches; the others read the files it writes)."""
        tls = self.tls
        if tls is None:
            return  # no federation CA: a node without [tls] names no peers
        if isinstance(self.store_dir, str):
            # Replicas on one database serve one own descriptor, kept in it.
            self.shared_descriptor = SharedDescriptor(self.store_dir, self.code)
        directory = Directory(
            self.config,
            DescriptorCache(self.local_dir / "directory", own=self.shared_descriptor),
            clock=self.clock,
            apply=self._apply_peers,
            # Round robin without health checking: any replica that is up serves
            # the descriptor, and a fetch now and then holds no stream on the peer.
            channel_factory=lambda endpoints: balanced_aio_channel(
                endpoints, tls.channel_credentials(), options=CHANNEL_OPTIONS, health_checked=False
            ),
            metrics=self.metrics,
            fetching=self.worker_index == 0,
            on_contact=self.federation_client.contact,
        )
        try:
            # Blocking reads of the descriptor (a file, or the database's row).
            await asyncio.to_thread(directory.publish)
            await directory.start()
        except (OSError, ValueError) as exc:
            raise NodeStartError(f"cannot publish this node's descriptor: {exc}") from exc
        self.directory = directory
        self.config.refresh_peer = directory.refresh_peer

    async def _apply_peers(self, peers: dict[str, PeerFacts]) -> None:
        """The directory's peers in force changed: every call from now on sees them."""
        self.config.swap(self.federation.with_peers(peers))
        await self.federation_client.follow_config()
        log.info("directory changed", province=self.code, peers_in_force=sorted(peers))
        await self._follow_directory_health()

    async def _follow_directory_health(self) -> None:
        if self.server is None or self._stopped or self.directory is None:
            return
        degraded = bool(self.directory.degraded_reasons())
        await self.health.set(
            DIRECTORY_HEALTH,
            health_pb2.HealthCheckResponse.NOT_SERVING
            if degraded
            else health_pb2.HealthCheckResponse.SERVING,
        )

    def _connect_backends(self) -> Backends:
        """This province's back-end connectors: those given to the node, then
        those its config names."""
        me = self.config.me
        backends = self.backends = Backends(
            self._authority
            or build_identity_authority(me.adapter, me.eid.authority_url, clock=self.clock),
            self._fund_centre,
        )
        backends.connect(me, self.clock)
        return backends

    def _build_services(self, backends: Backends) -> None:
        """The exchanges (identity, fund, cases, certificates), the outbox that
        delivers the tracked ones and the processors that drive their back-ends."""
        self.identity = IdentityExchange(
            config=self.config,
            client=self.federation_client,
            authority=backends.identity,
            store=self.state,
            clock=self.clock,
        )
        self.fund = FundExchange(
            WITHDRAWAL,
            config=self.config,
            client=self.federation_client,
            store=self.state,
            backend=backends.fund,
            clock=self.clock,
        )
        self.cases = TrackedExchange(
            SERVICE_CASE,
            config=self.config,
            client=self.federation_client,
            store=self.state,
            backend=backends.case,
            clock=self.clock,
        )
        self.certificates = CertificateExchange(
            config=self.config,
            client=self.federation_client,
            library=backends.certificate,
            clock=self.clock,
        )
        self.identity.metrics = self.certificates.metrics = self.metrics
        idle_poll = 1.0 if self.workers == 1 else 0.1
        tracked: list[TrackedExchange[Any, Any, Any, Any]] = [self.fund, self.cases]
        me = self.config.me
        #: This node's name in the leases it takes on outbox items and incoming
        #: cases: its replica, process and a random part (a restart, or another
        #: node in the same process, is another owner).
        self.lease_owner = f"{me.node.replica}/{os.getpid()}/{secrets.token_hex(4)}"
        self.outbox = Outbox(
            self.state,
            self.federation_client,
            {name: route for exchange in tracked for name, route in exchange.routes().items()},
            max_backoff=me.node.outbox_max_backoff_seconds,
            park_after=me.node.park_after_seconds,
            metrics=self.metrics,
            idle_poll=idle_poll,
            owner=self.lease_owner,
            lease_seconds=me.node.lease_seconds,
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
                    idle_poll=idle_poll,
                    owner=self.lease_owner,
                    lease_seconds=me.node.lease_seconds,
                )
                exchange.processor = processor
                self.processors.append(processor)

    def _mount_services(self, grpc_server: grpc.aio.Server) -> None:
        """The public services, the operator service, the federation service,
        health and reflection, on the one server (as generic handlers only:
        :class:`_GenericHandlersOnly`)."""
        server = _GenericHandlersOnly(grpc_server)
        identity, fund, cases, certificates = (
            self.identity,
            self.fund,
            self.cases,
            self.certificates,
        )
        identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(identity), server)
        fund_pb2_grpc.add_FundServiceServicer_to_server(FundServicer(fund), server)
        certificate_pb2_grpc.add_CertificateServiceServicer_to_server(
            CertificateServicer(certificates), server
        )
        case_pb2_grpc.add_CaseServiceServicer_to_server(CaseServicer(cases), server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(self), server)
        if self.directory is not None:
            directory_pb2_grpc.add_DirectoryServiceServicer_to_server(
                DirectoryServicer(self.directory), server
            )
        federation = FederationServicer(
            self.signer,
            self.verifier,
            self.message_log,
            require_peer_certificate=self.tls is not None,
            metrics=self.metrics,
            serving=self._serving,
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

    async def _serve(self, server: grpc.aio.Server) -> None:
        """Start serving; health says SERVING for every service."""
        await server.start()
        for name in PUBLIC_SERVICE_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._follow_directory_health()

    async def _start_metrics(self) -> None:
        """The Prometheus endpoint, if configured (worker i serves on port + i)."""
        self.metrics.refresh = self._refresh_metrics
        endpoint = self.config.me.node.metrics_endpoint
        if endpoint is None:
            return
        host, _, port = endpoint.rpartition(":")
        metrics_port = int(port) + self.worker_index if int(port) else 0
        try:
            self.metrics_server = await MetricsServer(self.metrics, host, metrics_port).start()
        except OSError as exc:
            raise NodeStartError(
                f"cannot listen on {host}:{metrics_port} (metrics): {exc.strerror}"
            ) from exc

    async def _start_console(self) -> None:
        """The web console, if configured (first worker only: sessions live in it)."""
        me = self.config.me
        if me.console is None or me.tls is None or self.worker_index != 0:
            return
        host = self.listen.rpartition(":")[0]
        if host.strip("[]") in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard is called on loopback
            host = "127.0.0.1"
        console = Console(
            me.console,
            certificate=me.tls.certificate,
            private_key=me.tls.private_key,
            ca=me.tls.ca.read_bytes(),
            node_target=f"{host}:{self.port}",
            metrics=self.metrics,
            province=f"{me.code} {me.province.name}",
            peer_codes=lambda: self.federation.peer_codes,
        )
        self.console = console
        try:
            await console.start()
        except OSError as exc:
            raise NodeStartError(
                f"cannot listen on {me.console.endpoint} (console): {exc.strerror}"
            ) from exc

    async def _start_background_work(self) -> None:
        """The outbox and the back-end processors: in the first worker only."""
        if self.worker_index != 0 or self.outbox is None:
            return
        # A store this node holds alone (SQLite): leases left by a killed process
        # are cleared rather than waited out.
        await self.state.clear_abandoned_leases()
        await self.outbox.start()
        for processor in self.processors:
            await processor.start()
        if self.config.me.node.log_verify_seconds > 0:
            self._log_verifier = asyncio.create_task(self._verify_log_every())

    async def _verify_log_every(self) -> None:
        """Verify the message log now and then (``[node] log_verify_seconds``):
        the metrics yrd_message_log_intact / _verified_timestamp_seconds."""
        while True:
            try:
                await verify_message_log(self)
            except (GatewayError, StoreOpenError, StoreClosedError, OSError, ValueError) as exc:
                # A store that cannot be read now (unavailable, closing): next time.
                log.error("message log verification failed", error=str(exc))
            await asyncio.sleep(self.config.me.node.log_verify_seconds or 3600.0)

    async def _refresh_metrics(self) -> None:
        now = self.clock.now()
        self.metrics.key_expiry.clear()  # a key a reload dropped is no longer shown
        for province, kind, key_id, not_after in self.config.derived(_expiries):
            days = (not_after - now).total_seconds() / 86400
            self.metrics.key_expiry.labels(province, kind, key_id).set(round(days, 3))
        if self.directory is not None:
            self.directory.export_metrics()
        for code in self.federation.peer_codes:  # peer health, as ListPeers tells it
            health = self.federation_client.peer_health(code)
            self.metrics.peer_up.labels(code).set(1 if health.reachable else 0)
            last = health.last_success
            self.metrics.peer_last_success.labels(code).set(0 if last is None else last.timestamp())
        await self._refresh_store_metrics()

    async def _refresh_store_metrics(self) -> None:
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
        for sender, cases, since in await self.state.reconciliation_by_sender():
            self.metrics.outbox_items.labels(sender, "reconciliation").set(cases)
            self.metrics.outbox_items_oldest.labels(sender, "reconciliation").set(
                max(0.0, (self.clock.now() - since).total_seconds())
            )
        self.metrics.log_rows.set(await self.message_log.count())
        self.metrics.log_commits.set(self.message_log.commits)
        in_reconciliation = await self.state.reconciliation_counts()
        for domain in ("withdrawal", "case"):
            self.metrics.reconciliation.labels(domain).set(in_reconciliation.get(domain, 0))
        for code in self.federation.peer_codes:
            state = self.federation_client.breaker_state(code).value
            self.metrics.breaker.labels(code).set(BREAKER_VALUES[state])

    async def reload(self, federation: FederationConfig) -> None:
        """Take a new, already validated config of this node without dropping calls.

        Calls in flight finish with the config they started with; new calls see
        the new one. Keys, peers and their bootstrap endpoints, clients,
        disclosure policies and services change; this node's own listening
        addresses, TLS certificate and ``max_concurrent_calls`` need a restart.
        The peers in force stay those the directory holds (a peer no longer
        named leaves); the descriptor is published again if what it says changed.

        Check (nothing changes if this raises), swap the config in the holder
        every part reads, react where a part must act at once, log.
        """
        self._check_reload(federation)
        if self.directory is None:
            self.config.swap(federation)  # no directory: the peers given are those in force
        else:
            self.config.swap(self.federation.with_me(federation.me))
            try:
                await self.directory.config_changed()
            except (OSError, ValueError) as exc:
                log.error("descriptor not published again", error=str(exc))
        await self.federation_client.follow_config()  # channels to moved peers
        self.reloads += 1
        log.info("config reloaded", province=federation.own, peers=list(federation.peer_codes))

    def _check_reload(self, federation: FederationConfig) -> None:
        """Refuse a config for another province, or with keys this node cannot load."""
        if federation.own != self.federation.own:
            raise ConfigError.one(
                federation.me.source,
                "province.code",
                federation.own,
                f"this node's province {self.federation.own} (a reload cannot change it)",
            )
        # Built again from the holder on first use; loaded here so that an
        # unreadable key refuses the reload instead of failing the calls after it.
        signing_keys(federation)
        TrustStore(federation)

    async def reload_from_disk(self) -> None:
        """Re-read the config file; a bad config raises ConfigError and changes nothing."""
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
            if self.console is not None:  # first: no operator action starts during the drain
                await self.console.stop()
            await self.health.enter_graceful_shutdown()
            grace = self.grace if grace is None else grace
            draining = time.monotonic()
            if self.federation_server is not None:  # streams: answer what was read, end OK
                await self.federation_server.drain(grace)
            if self.server is not None:  # the rest of the grace period for unary calls
                await self.server.stop(max(0.0, grace - (time.monotonic() - draining)))
            if self.federation_server is not None:  # requests whose asker went away
                await self.federation_server.settle(grace - (time.monotonic() - draining))
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            if self._log_verifier is not None:
                self._log_verifier.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._log_verifier
            if self.outbox is not None:
                await self.outbox.stop()
            for processor in self.processors:
                await processor.stop()
            if self.directory is not None:
                await self.directory.stop()
            if self.shared_descriptor is not None:
                await asyncio.to_thread(self.shared_descriptor.close)
            await self.federation_client.close()
            if self.backends is not None:
                await self.backends.aclose()
            elif self._authority is not None:  # given, start failed before: still ours to close
                await self._authority.aclose()
            await self.message_log.close()
            await self.state.close()
            if self._store_lock is not None:
                self._store_lock.release()
            if not self._quiet_stop:
                log.info("node stopped", province=self.code)

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()


def _expiries(federation: FederationConfig) -> list[tuple[str, str, str, datetime]]:
    """Every key and certificate whose expiry the node exports: the federation's
    published keys, and this node's TLS certificate and CA (read once per config)."""
    found = key_expiries(federation)
    tls = federation.me.tls
    if tls is not None:
        for kind, path in (("tls_certificate", tls.certificate), ("tls_ca", tls.ca)):
            with contextlib.suppress(OSError, ValueError):  # checked when the node started
                found.append(
                    (federation.own, kind, path.name, certificate_not_after(path.read_bytes()))
                )
    return found
