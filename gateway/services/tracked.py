"""Tracked asynchronous exchanges: an application accepted by one node, delivered
through the outbox to the province that handles it, worked by that province's
back-end, and its status changes sent back (DESIGN §2). Provident-fund
withdrawals and inter-provincial service cases are two :class:`Flow` s of this
one machinery.

Submitting node: ``submit`` validates, writes the case and its outbox item in one
transaction, and answers at once (first status, e.g. QUEUED) with a case id.
The same idempotency key with the same body returns the same case; with another
body it is refused (ALREADY_EXISTS). The outbox delivers; an acknowledgement
moves the case to DELIVERED, a refusal to the flow's rejected state, with the
peer's reason. Status updates move a case forward only, never back.

Handling node: a delivery is stored once per (sender, idempotency key) — a retry
or duplicate returns the same reference and never reaches the back-end twice —
and the :class:`TrackedProcessor` hands it to the back-end (with this node's
reference and the exchange's idempotency key), follows it, and queues each
change for the submitting node. When a back-end no longer knows a case it was
(or may have been) given, a flow that moves money (``Flow.moves_money``) is
never submitted again on its own: the case goes to reconciliation until an
operator resolves it from the back-end's records (:func:`resolve_reconciliation`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import structlog
from google.protobuf.message import Message

from adapters.errors import BackendRejected, BackendUnavailable, TranslationError
from gateway.config.models import ClientSection, FederationConfig
from gateway.core import crypto
from gateway.core.backoff import backoff_delay
from gateway.core.clock import Clock, Pacer
from gateway.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    shown,
)
from gateway.core.metrics import NodeMetrics
from gateway.federation.client import FederationClient
from gateway.federation.outbox import Outbox, OutboxRoute
from gateway.storage.state import OutboxItem, StateStore
from gateway.trust.envelope import OpenedEnvelope
from yrd.federation.v1 import federation_pb2

log = structlog.get_logger("yrd.tracked")

B = TypeVar("B")  # the back-end connector type of a flow
DEFAULT_TIMEOUT = 5.0
#: Cases a processor holds at once (running or waiting for a back-end slot).
MAX_QUEUED = 256
#: Shortest time between two reads of the due cases while steps keep finishing.
READ_INTERVAL = 0.005
#: Case ids as ``submit`` assigns them (``WD-310000-<20 hex>``), a little looser.
_CASE_ID = re.compile(r"[A-Z]{2}-[0-9]{6}-[0-9a-f]{1,32}")


@dataclass(frozen=True)
class Flow(Generic[B]):
    """Everything that differs between two tracked exchanges."""

    #: Stored with each record: "withdrawal", "case".
    domain: str
    #: Prefixes of the ids this node assigns (submitting side, handling side).
    case_prefix: str
    reference_prefix: str
    deliver_service: str
    status_service: str
    application_type: type[Message]
    update_type: type[Message]
    #: Statuses: first (accepted, not delivered), delivered, refused (final).
    queued: int
    delivered: int
    rejected: int
    #: Statuses a handled case passes through after delivery, in order; the
    #: last one is the successful final state.
    progression: tuple[int, ...]
    status_name: Callable[[int], str]
    #: Field names in the application.
    origin_field: str
    target_field: str
    #: Raises InvalidArgument naming the field (both nodes run it).
    validate: Callable[[Any], None]
    #: Normalises an application before validation (e.g. upper-case ID numbers).
    normalise: Callable[[Any], None]
    #: The public record for a stored case.
    to_public: Callable[[dict[str, Any]], Message]
    #: Back-end calls of the handling node.
    backend_name: str
    backend_submit: Callable[[B, str, Any, float], Awaitable[Any]]
    backend_status: Callable[[B, str, float], Awaitable[Any]]
    #: The back-end error meaning "no such reference". A flow that moves no money
    #: submits again (idempotent by reference); a money-moving one goes to
    #: reconciliation when the case was, or may have been, submitted already.
    backend_not_found: type[BackendRejected]
    #: Field of the update carrying an amount (withdrawals), if any.
    amount_field: str | None = None
    #: The back-end moves money for it (withdrawals): never submitted twice
    #: automatically (DESIGN §5).
    moves_money: bool = False
    #: Field of the application carrying the amount applied for (money flows).
    applied_amount_field: str | None = None
    rank: dict[int, int] = field(init=False)
    final: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        rank = {self.queued: 1, self.delivered: 2}
        for i, status in enumerate(self.progression):
            rank[status] = 3 + i
        rank[self.rejected] = rank[self.progression[-1]]
        object.__setattr__(self, "rank", rank)
        object.__setattr__(self, "final", frozenset({self.progression[-1], self.rejected}))

    def make_update(
        self, key: str, status: int, reason: str, amount: int, reference: str, when: datetime
    ) -> Message:
        update = self.update_type(
            idempotency_key=key, status=status, status_reason=reason, remote_reference=reference
        )
        if self.amount_field is not None:
            setattr(update, self.amount_field, amount)
        update.changed_at.FromDatetime(when)  # type: ignore[attr-defined]
        return update

    def amount_of(self, update: Any) -> int:
        return int(getattr(update, self.amount_field)) if self.amount_field else 0

    def trail(self, status: int, new: int) -> list[int]:
        """The statuses to report, in order, when a case moves from ``status`` to
        ``new`` (nothing when it does not move forward or was final already)."""
        if new == status or status in self.final:
            return []
        if new == self.rejected:
            return [self.rejected]
        return [s for s in self.progression if self.rank[status] < self.rank[s] <= self.rank[new]]

    def queue_updates(
        self,
        db: sqlite3.Connection,
        trail: list[int],
        *,
        sender: str,
        key: str,
        correlation_id: str,
        reason: str,
        amount: int,
        reference: str,
        changed: datetime,
    ) -> None:
        """Queue, inside a write op, one status update per step of ``trail`` for
        the submitting node (``reason`` on a final step, ``amount`` on success)."""
        now = time.time()
        for step in trail:
            message = self.make_update(
                key,
                step,
                reason if step in self.final else "",
                amount if step == self.progression[-1] else 0,
                reference,
                changed,
            )
            StateStore.enqueue(
                db,
                OutboxItem(
                    0,
                    sender,
                    self.status_service,
                    str(uuid.uuid4()),
                    correlation_id,
                    key,
                    message.SerializeToString(),
                    reference,
                    0,
                    now,
                    now,
                ),
            )


class TrackedExchange(Generic[B]):
    """Both halves of one tracked flow."""

    #: Set by the node: back-end latency goes to its metrics.
    metrics: NodeMetrics | None = None

    def __init__(
        self,
        flow: Flow[B],
        *,
        federation: FederationConfig,
        client: FederationClient,
        store: StateStore,
        backend: B | None,
        clock: Clock,
    ) -> None:
        self.flow = flow
        self._federation = federation
        self._client = client
        self._store = store
        self.backend = backend
        self._clock = clock
        self.outbox: Outbox | None = None
        self.processor: TrackedProcessor[B] | None = None

    def update(self, federation: FederationConfig) -> None:
        """A reloaded config: peers and services as now configured."""
        self._federation = federation

    @property
    def own(self) -> str:
        return self._federation.own

    def routes(self) -> dict[str, OutboxRoute]:
        flow = self.flow
        return {
            flow.deliver_service: OutboxRoute(
                flow.application_type, self._delivered, self._refused
            ),
            flow.status_service: OutboxRoute(
                flow.update_type, self._update_acked, self._update_refused
            ),
        }

    def handlers(self) -> dict[str, Callable[[OpenedEnvelope, float], Awaitable[Message]]]:
        return {
            self.flow.deliver_service: self.handle_delivery,
            self.flow.status_service: self.handle_status,
        }

    def _now(self) -> str:
        return self._clock.now().isoformat()

    # ---- submitting node ------------------------------------------------------------

    async def submit(
        self, application: Message, client: ClientSection, correlation_id: str
    ) -> Message:
        flow = self.flow
        app = flow.application_type()
        app.CopyFrom(application)
        origin = getattr(app, flow.origin_field)
        if origin and origin != self.own:
            raise InvalidArgument(
                f"application.{flow.origin_field}", f"this node's province {self.own} (or empty)"
            )
        setattr(app, flow.origin_field, self.own)
        flow.normalise(app)
        flow.validate(app)
        target = getattr(app, flow.target_field)
        self._federation.require_peer(
            f"application.{flow.target_field}", target, flow.deliver_service
        )
        key = app.idempotency_key  # type: ignore[attr-defined]
        body = app.SerializeToString(deterministic=True)
        digest = crypto.sha256(body)
        case_id = f"{flow.case_prefix}-{self.own}-{uuid.uuid4().hex[:20]}"
        now, stamp = time.time(), self._now()

        def op(db: sqlite3.Connection) -> str:
            existing = db.execute(
                "SELECT case_id, body_digest FROM outgoing_cases WHERE domain = ?"
                " AND idempotency_key = ?",
                (flow.domain, key),
            ).fetchone()
            if existing is not None:
                if bytes(existing[1]) != digest:
                    raise AlreadyExists(
                        "application.idempotency_key: already used for a different application "
                        f"(case {existing[0]}); use a new key for a new application"
                    )
                return str(existing[0])
            db.execute(
                "INSERT INTO outgoing_cases (case_id, domain, idempotency_key, body_digest,"
                " client_id, peer, application, status, correlation_id, submitted_at,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    case_id,
                    flow.domain,
                    key,
                    digest,
                    client.id,
                    target,
                    body,
                    flow.queued,
                    correlation_id,
                    stamp,
                    stamp,
                ),
            )
            StateStore.enqueue(
                db,
                OutboxItem(
                    0,
                    target,
                    flow.deliver_service,
                    str(uuid.uuid4()),
                    correlation_id,
                    key,
                    body,
                    case_id,
                    0,
                    now,
                    now,
                ),
            )
            return case_id

        stored = await self._store.write(op)
        if self.outbox is not None:
            self.outbox.wake()
        log.info(
            f"{flow.domain} accepted", case_id=stored, peer=target, duplicate=stored != case_id
        )
        return await self.get(stored, client)

    async def get(self, case_id: str, client: ClientSection | None) -> Message:
        if not _CASE_ID.fullmatch(case_id):
            raise InvalidArgument(
                "case_id", "the case id returned when it was submitted (<prefix>-<province>-<hex>)"
            )
        row = await self._store.fetchone(
            "SELECT status, status_reason, amount_fen, submitted_at, updated_at,"
            " idempotency_key, peer, remote_reference, client_id FROM outgoing_cases"
            " WHERE case_id = ? AND domain = ?",
            (case_id, self.flow.domain),
        )
        if row is None or (client is not None and row[8] != client.id):
            raise NotFound(f"case_id: no {self.flow.domain} case {shown(case_id)} for this client")
        return self.flow.to_public(
            {
                "case_id": case_id,
                "status": row[0],
                "status_reason": row[1],
                "amount_fen": row[2],
                "submitted_at": datetime.fromisoformat(row[3]),
                "updated_at": datetime.fromisoformat(row[4]),
                "idempotency_key": row[5],
                "peer": row[6],
                "remote_reference": row[7],
            }
        )

    def _delivered(
        self, db: sqlite3.Connection, item: OutboxItem, ack: federation_pb2.DeliveryAck
    ) -> None:
        db.execute(
            "UPDATE outgoing_cases SET status = ?, remote_reference = ?, updated_at = ?"
            " WHERE case_id = ? AND status = ?",
            (
                self.flow.delivered,
                ack.remote_reference,
                self._now(),
                item.subject,
                self.flow.queued,
            ),
        )

    def _refused(self, db: sqlite3.Connection, item: OutboxItem, exc: Exception) -> None:
        message = getattr(exc, "message", str(exc))
        final = (self.flow.progression[-1], self.flow.rejected)
        db.execute(
            "UPDATE outgoing_cases SET status = ?, status_reason = ?, updated_at = ?"
            " WHERE case_id = ? AND status NOT IN (?, ?)",
            (
                self.flow.rejected,
                f"refused by province {item.peer}: {message}"[:500],
                self._now(),
                item.subject,
                *final,
            ),
        )

    async def apply_status(self, sender: str, update: Any) -> federation_pb2.DeliveryAck:
        """A status change from the handling province (submitting node)."""
        flow = self.flow
        if update.status not in flow.rank or update.status == flow.queued:
            raise InvalidArgument("status", f"a {flow.domain} status after delivery")

        def op(db: sqlite3.Connection) -> federation_pb2.DeliveryAck:
            row = db.execute(
                "SELECT case_id, status FROM outgoing_cases WHERE domain = ?"
                " AND idempotency_key = ? AND peer = ?",
                (flow.domain, update.idempotency_key, sender),
            ).fetchone()
            if row is None:
                raise NotFound(f"idempotency_key: no case delivered to {sender} with this key")
            case_id, status = str(row[0]), int(row[1])
            if status in flow.final or flow.rank[update.status] <= flow.rank.get(status, 0):
                return federation_pb2.DeliveryAck(remote_reference=case_id, duplicate=True)
            db.execute(
                "UPDATE outgoing_cases SET status = ?, status_reason = ?, amount_fen = ?,"
                " updated_at = ?, remote_reference = CASE WHEN remote_reference = ''"
                " THEN ? ELSE remote_reference END WHERE case_id = ?",
                (
                    update.status,
                    update.status_reason,
                    flow.amount_of(update),
                    self._now(),
                    update.remote_reference,
                    case_id,
                ),
            )
            return federation_pb2.DeliveryAck(remote_reference=case_id)

        ack = await self._store.write(op)
        log.info(
            f"{flow.domain} status",
            case_id=ack.remote_reference,
            status=flow.status_name(update.status),
            duplicate=ack.duplicate,
        )
        return ack

    # ---- handling node ------------------------------------------------------------

    async def handle_delivery(
        self, opened: OpenedEnvelope, timeout: float
    ) -> federation_pb2.DeliveryAck:
        flow = self.flow
        app: Any = opened.parse(flow.application_type)
        sender = opened.header.sender
        flow.validate(app)
        if getattr(app, flow.target_field) != self.own:
            raise InvalidArgument(
                f"application.{flow.target_field}", f"{self.own}, the receiving province"
            )
        if getattr(app, flow.origin_field) != sender:
            raise InvalidArgument(f"application.{flow.origin_field}", f"{sender}, the sender")
        if opened.header.idempotency_key != app.idempotency_key:
            raise InvalidArgument("header.idempotency_key", "the application's idempotency key")
        if self.backend is None:
            raise FailedPrecondition(f"node {self.own} has no {flow.backend_name} configured")
        digest = crypto.sha256(opened.payload)
        reference = f"{flow.reference_prefix}-{self.own}-{uuid.uuid4().hex[:20]}"
        stamp = self._now()

        def op(db: sqlite3.Connection) -> federation_pb2.DeliveryAck:
            existing = db.execute(
                "SELECT reference, body_digest FROM incoming_cases WHERE domain = ?"
                " AND sender = ? AND idempotency_key = ?",
                (flow.domain, sender, app.idempotency_key),
            ).fetchone()
            if existing is not None:
                if bytes(existing[1]) != digest:
                    raise AlreadyExists(
                        "application.idempotency_key: already delivered with a different body"
                    )
                return federation_pb2.DeliveryAck(remote_reference=str(existing[0]), duplicate=True)
            db.execute(
                "INSERT INTO incoming_cases (reference, domain, sender, idempotency_key,"
                " message_id, correlation_id, body_digest, application, status, next_poll_at,"
                " received_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    reference,
                    flow.domain,
                    sender,
                    app.idempotency_key,
                    opened.header.message_id,
                    opened.header.correlation_id,
                    digest,
                    opened.payload,
                    flow.delivered,
                    time.time(),
                    stamp,
                    stamp,
                ),
            )
            return federation_pb2.DeliveryAck(remote_reference=reference)

        ack = await self._store.write(op)
        if self.processor is not None:
            self.processor.wake()
        log.info(
            f"{flow.domain} received",
            sender=sender,
            reference=ack.remote_reference,
            duplicate=ack.duplicate,
        )
        return ack

    async def handle_status(
        self, opened: OpenedEnvelope, timeout: float
    ) -> federation_pb2.DeliveryAck:
        return await self.apply_status(opened.header.sender, opened.parse(self.flow.update_type))

    def _update_acked(
        self, db: sqlite3.Connection, item: OutboxItem, ack: federation_pb2.DeliveryAck
    ) -> None:
        return None

    def _update_refused(self, db: sqlite3.Connection, item: OutboxItem, exc: Exception) -> None:
        log.error(
            "status update refused by the submitting node",
            peer=item.peer,
            domain=self.flow.domain,
            reason=getattr(exc, "message", str(exc)),
        )


class TrackedProcessor(Generic[B]):
    """Hands received applications to the back-end and follows them to the end."""

    def __init__(
        self,
        exchange: TrackedExchange[B],
        store: StateStore,
        backend: B,
        clock: Clock,
        *,
        poll_min: float = 0.05,
        poll_max: float = 2.0,
        concurrency: int = 32,
        idle_poll: float = 1.0,
    ) -> None:
        #: Longest sleep with nothing due (work stored by another worker process).
        self.idle_poll = idle_poll
        self._exchange = exchange
        self._flow = exchange.flow
        self._store = store
        self._backend = backend
        self._clock = clock
        self._poll_min = poll_min
        self._poll_max = poll_max
        self._limit = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[str] = set()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> TrackedProcessor[B]:
        self._task = asyncio.create_task(self._run(), name=f"{self._flow.domain}-processor")
        return self

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        final = (self._flow.progression[-1], self._flow.rejected)
        tasks: set[asyncio.Task[None]] = set()
        try:
            pacer = Pacer(READ_INTERVAL)
            while not self._stopping:
                await pacer.wait()
                self._wake.clear()
                now = time.time()
                # Only new work: what is in flight (or queued for a slot) is not
                # read again, and nothing is read while the queue is full.
                inflight = tuple(self._inflight)
                rows: list[tuple[Any, ...]] = []
                if len(inflight) < MAX_QUEUED:
                    skip = f" AND reference NOT IN ({','.join('?' * len(inflight))})"
                    rows = await self._store.fetchall(
                        "SELECT reference, sender, idempotency_key, correlation_id, application,"  # noqa: S608 - only placeholders are added
                        " status, submitted, attempts FROM incoming_cases WHERE domain = ?"
                        " AND status NOT IN (?, ?) AND reconciliation = 0"
                        f" AND next_poll_at <= ?{skip if inflight else ''}"
                        " ORDER BY next_poll_at LIMIT ?",
                        (self._flow.domain, *final, now, *inflight, MAX_QUEUED - len(inflight)),
                    )
                for row in rows:
                    if row[0] in self._inflight:
                        continue
                    self._inflight.add(row[0])
                    task = asyncio.create_task(self._advance(*row))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                upcoming = await self._store.fetchone(
                    "SELECT MIN(next_poll_at) FROM incoming_cases WHERE domain = ?"
                    " AND status NOT IN (?, ?) AND reconciliation = 0 AND next_poll_at > ?",
                    (self._flow.domain, *final, now),
                )
                delay = self.idle_poll
                if upcoming and upcoming[0] is not None:
                    delay = min(delay, max(0.0, float(upcoming[0]) - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _backoff(self, attempts: int) -> float:
        return backoff_delay(attempts, base=self._poll_min, cap=self._poll_max)

    async def _advance(
        self,
        reference: str,
        sender: str,
        key: str,
        correlation_id: str,
        body: bytes,
        status: int,
        submitted: int,
        attempts: int,
    ) -> None:
        """One step of a case; nothing escapes this task. When the store cannot
        record the next attempt, the case stays out of the reads (in flight) until
        a backoff at the cap has passed: a failing disk makes no retry storm."""
        hold = 0.0
        try:
            async with self._limit:
                await self._step(
                    reference, sender, key, correlation_id, body, status, bool(submitted), attempts
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            try:
                await self._reschedule(reference, attempts + 1, submitted=bool(submitted))
            except Exception as failure:
                hold = self._backoff(10)  # the cap: the store is failing, no hurry
                log.warning(
                    "processing step failed; the next attempt is kept in memory"
                    " (store cannot write)",
                    domain=self._flow.domain,
                    reference=reference,
                    error=str(exc)[:200],
                    store_error=str(failure)[:200],
                    retry_in=round(hold, 3),
                )
            else:
                log.warning(
                    "processing step failed; retrying",
                    domain=self._flow.domain,
                    reference=reference,
                    error=f"{type(exc).__name__}: {exc}"[:200],
                    exc_info=not isinstance(exc, GatewayError),
                )
        finally:

            def release() -> None:
                self._inflight.discard(reference)
                self._wake.set()

            if hold:
                asyncio.get_running_loop().call_later(hold, release)
            else:
                release()

    async def _reschedule(self, reference: str, attempts: int, *, submitted: bool) -> None:
        """Record the next attempt (raises if the store cannot write: the caller
        then keeps it in memory)."""
        when = time.time() + self._backoff(attempts)

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE incoming_cases SET attempts = ?, next_poll_at = ?, submitted = ?"
                " WHERE reference = ?",
                (attempts, when, int(submitted), reference),
            )

        await self._store.write(op)

    async def _call_backend(self, reference: str, app: Any, submitted: bool) -> Any:
        flow = self._flow
        started, outcome = time.monotonic(), "error"
        try:
            if submitted:
                result = await flow.backend_status(self._backend, reference, DEFAULT_TIMEOUT)
            else:
                result = await flow.backend_submit(self._backend, reference, app, DEFAULT_TIMEOUT)
            outcome = "ok"
            return result
        except BackendUnavailable:
            outcome = "unavailable"
            raise
        finally:
            if self._exchange.metrics is not None:
                self._exchange.metrics.observe_backend(flow.backend_name, outcome, started)

    async def _step(
        self,
        reference: str,
        sender: str,
        key: str,
        correlation_id: str,
        body: bytes,
        status: int,
        submitted: bool,
        attempts: int,
    ) -> None:
        flow = self._flow
        app = flow.application_type.FromString(body)
        try:
            update = await self._call_backend(reference, app, submitted)
        except BackendUnavailable as exc:
            log.warning(f"{flow.backend_name} unavailable", reason=str(exc))
            # A submission whose answer was lost may have reached the back-end:
            # from now on its status is asked for, it is not taken as absent.
            maybe_submitted = submitted or exc.may_have_arrived
            await self._reschedule(reference, attempts + 1, submitted=maybe_submitted)
            return
        except flow.backend_not_found:
            if flow.moves_money and submitted:
                # Submitting again could pay twice: an operator confirms from the
                # back-end's own records what happened (`outbox resolve`).
                await self._to_reconciliation(reference, sender, status)
                return
            # The back-end does not know the reference (it lost its state?):
            # submitting again is safe, it is idempotent by reference.
            log.warning(
                f"{flow.backend_name} lost a case; submitting it again", reference=reference
            )
            await self._reschedule(reference, 0, submitted=False)
            return
        except (BackendRejected, TranslationError) as exc:
            if submitted or (flow.moves_money and isinstance(exc, TranslationError)):
                # A status answer, or a money-moving submission's answer, that the
                # adapter cannot read: the back-end may have taken it, so it is not
                # refused; its status is asked for (and an operator reconciles it
                # if the back-end does not know it).
                log.error(f"{flow.backend_name} answer unusable", reason=str(exc))
                await self._reschedule(reference, attempts + 1, submitted=True)
                return
            update = flow.make_update(
                key,
                flow.rejected,
                f"the {flow.backend_name.replace('_', ' ')} refused the application: {exc}",
                0,
                "",
                self._clock.now(),
            )
        new = update.status if update.status in flow.rank else status
        trail = flow.trail(status, new)
        changed = self._clock.now()
        next_poll = time.time() + (self._poll_min if trail else self._backoff(attempts))
        amount = flow.amount_of(update)

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE incoming_cases SET status = ?, status_reason = ?, amount_fen = ?,"
                " backend_reference = CASE WHEN ? != '' THEN ? ELSE backend_reference END,"
                " submitted = 1, attempts = ?, next_poll_at = ?, updated_at = ?"
                " WHERE reference = ?",
                (
                    new,
                    update.status_reason,
                    amount,
                    update.remote_reference,
                    update.remote_reference,
                    0 if trail else attempts + 1,
                    next_poll,
                    changed.isoformat(),
                    reference,
                ),
            )
            flow.queue_updates(
                db,
                trail,
                sender=sender,
                key=key,
                correlation_id=correlation_id,
                reason=update.status_reason,
                amount=amount,
                reference=reference,
                changed=changed,
            )

        await self._store.write(op)
        if trail:
            if self._exchange.outbox is not None:
                self._exchange.outbox.wake()
            log.info(f"{flow.domain} progressed", reference=reference, status=flow.status_name(new))

    async def _to_reconciliation(self, reference: str, sender: str, status: int) -> None:
        """The back-end lost a money-moving case: leave it alone until an operator
        resolves it. Logged at error level with the reference only."""
        stamp = self._clock.now().isoformat()

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE incoming_cases SET reconciliation = 1, submitted = 1, attempts = 0,"
                " updated_at = ? WHERE reference = ?",
                (stamp, reference),
            )

        await self._store.write(op)
        log.error(
            f"{self._flow.backend_name} does not know a {self._flow.domain} it was given;"
            " not submitted again, waiting for reconciliation (yrd-gateway outbox resolve)",
            reference=reference,
            sender=sender,
            last_status=self._flow.status_name(status),
        )


# ---- reconciliation (the operator's side) -------------------------------------------


@dataclass(frozen=True)
class Reconciliation:
    """An incoming case waiting for an operator, as read before resolving it."""

    reference: str
    domain: str
    sender: str
    status: int


async def pending_reconciliation(store: StateStore, reference: str) -> Reconciliation:
    """The incoming case ``reference`` if it is in reconciliation (NotFound /
    FailedPrecondition otherwise)."""
    row = await store.fetchone(
        "SELECT domain, sender, status, reconciliation FROM incoming_cases WHERE reference = ?",
        (reference,),
    )
    if row is None:
        raise NotFound(f"reference: no case received by this node under {reference!r}")
    if not row[3]:
        raise FailedPrecondition(f"reference: case {reference} is not in reconciliation")
    return Reconciliation(reference, str(row[0]), str(row[1]), int(row[2]))


async def resolve_reconciliation(
    store: StateStore, flow: Flow[Any], reference: str, *, paid: bool, clock: Clock
) -> int:
    """Resolve a case in reconciliation from the back-end's own records.

    ``paid``: it was paid — record the final status with the amount applied for
    and queue the status updates for the submitting node, as the processor
    would. Otherwise no money moved: clear the flag so the processor submits it
    again. Returns the case's status afterwards.
    """
    if paid and not flow.moves_money:
        raise FailedPrecondition(f"--paid: a {flow.domain} moves no money; use --not-paid")
    changed = clock.now()

    def op(db: sqlite3.Connection) -> int:
        row = db.execute(
            "SELECT sender, idempotency_key, correlation_id, application, status"
            " FROM incoming_cases WHERE reference = ? AND domain = ? AND reconciliation = 1",
            (reference, flow.domain),
        ).fetchone()
        if row is None:
            raise FailedPrecondition(f"reference: case {reference} is not in reconciliation")
        sender, key, correlation_id, body, status = (
            str(row[0]),
            str(row[1]),
            str(row[2]),
            bytes(row[3]),
            int(row[4]),
        )
        if not paid:
            db.execute(
                "UPDATE incoming_cases SET reconciliation = 0, submitted = 0, attempts = 0,"
                " next_poll_at = ?, updated_at = ? WHERE reference = ?",
                (time.time(), changed.isoformat(), reference),
            )
            return status
        app = flow.application_type.FromString(body)
        amount = int(getattr(app, flow.applied_amount_field)) if flow.applied_amount_field else 0
        new = flow.progression[-1]
        reason = f"paid; confirmed from the {flow.backend_name.replace('_', ' ')}'s records"
        db.execute(
            "UPDATE incoming_cases SET status = ?, status_reason = ?, amount_fen = ?,"
            " reconciliation = 0, submitted = 1, attempts = 0, next_poll_at = ?, updated_at = ?"
            " WHERE reference = ?",
            (new, reason, amount, time.time(), changed.isoformat(), reference),
        )
        flow.queue_updates(
            db,
            flow.trail(status, new),
            sender=sender,
            key=key,
            correlation_id=correlation_id,
            reason=reason,
            amount=amount,
            reference=reference,
            changed=changed,
        )
        return new

    status: int = await store.write(op)
    log.warning(
        f"{flow.domain} reconciliation resolved",
        reference=reference,
        outcome="paid" if paid else "not paid; submitted again",
    )
    return status
