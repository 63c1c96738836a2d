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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar, cast, runtime_checkable

import structlog
from google.protobuf.message import Message

from adapters.errors import BackendRejected, BackendUnavailable, TranslationError
from gateway.config.holder import ConfigHolder
from gateway.config.models import ClientSection
from gateway.core import crypto
from gateway.core.backoff import backoff_delay
from gateway.core.clock import Clock, Pacer, set_timestamp
from gateway.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    shown,
)
from gateway.core.identifiers import ordered_uuid, random_uuid_hex
from gateway.core.metrics import NodeMetrics
from gateway.federation.client import FederationClient
from gateway.federation.outbox import Outbox, OutboxRoute
from gateway.services.backendcalls import backend_call
from gateway.services.calls import current_correlation_id, require_client
from gateway.storage.interfaces import (
    OutboxWrites,
    ReconciliationStore,
    StateTransaction,
    TrackedCaseStore,
    Transactional,
)
from gateway.storage.records import (
    LEASE_SECONDS,
    IncomingWork,
    NewIncomingCase,
    NewOutgoingCase,
    OutboxItem,
    OutgoingCase,
    Progress,
    lease_owner,
)
from gateway.trust.envelope import OpenedEnvelope
from yrd.federation.v1 import federation_pb2

log = structlog.get_logger("yrd.tracked")

#: The type parameters of a flow: its back-end connector, its application, its
#: status update and its public record (what Get* answers).
B = TypeVar("B")
A = TypeVar("A", bound=Message)
U = TypeVar("U", bound=Message)
P = TypeVar("P", bound=Message)
M = TypeVar("M", bound=Message)


def _message(message_type: type[M], **fields: Any) -> M:
    """``message_type(**fields)`` for a flow's message type known only as a
    subclass of ``Message``: the protobuf stubs give the base class no fields to
    set, each generated class its own."""
    return cast("Callable[..., M]", message_type)(**fields)


DEFAULT_TIMEOUT = 5.0
#: Cases a processor holds at once (running or waiting for a back-end slot).
MAX_QUEUED = 256
#: Shortest time between two reads of the due cases while steps keep finishing.
READ_INTERVAL = 0.005
#: Case ids as ``submit`` assigns them (``WD-310000-<20 hex>``), a little looser.
_CASE_ID = re.compile(r"[A-Z]{2}-[0-9]{6}-[0-9a-f]{1,32}")


@runtime_checkable
class Keyed(Protocol):
    """What every flow's application and status update carries."""

    @property
    def idempotency_key(self) -> str: ...


@runtime_checkable
class StatusFields(Keyed, Protocol):
    """What the machinery reads of every flow's status update."""

    @property
    def status(self) -> int: ...

    @property
    def status_reason(self) -> str: ...

    @property
    def remote_reference(self) -> str: ...


#: Message types found to be Keyed / StatusFields: the Protocol check
#: (``isinstance`` on a runtime-checkable Protocol) looks up every member each
#: time, about 50 µs on a protobuf message, and a message type's fields are fixed.
_CONFORMING: dict[type, set[type]] = {Keyed: set(), StatusFields: set()}


def _conforms(message: Message, protocol: type) -> bool:
    """``isinstance(message, protocol)``, checked once per message type."""
    known = _CONFORMING[protocol]
    if type(message) in known:
        return True
    if not isinstance(message, protocol):
        return False
    known.add(type(message))
    return True


def key_of(message: Message) -> str:
    """The idempotency key of a flow's application or status update."""
    if not _conforms(message, Keyed):  # pragma: no cover - every flow's messages have one
        raise TypeError(f"{type(message).__name__} has no idempotency_key")
    return cast(Keyed, message).idempotency_key


def status_of(update: Message) -> StatusFields:
    """A flow's status update, as the machinery reads it."""
    if not _conforms(update, StatusFields):  # pragma: no cover - checked per flow by tests
        raise TypeError(f"{type(update).__name__} is not a status update")
    return cast(StatusFields, update)


@dataclass(frozen=True)
class Flow(Generic[B, A, U, P]):
    """Everything that differs between two tracked exchanges."""

    #: Stored with each record: "withdrawal", "case".
    domain: str
    #: Prefixes of the ids this node assigns (submitting side, handling side).
    case_prefix: str
    reference_prefix: str
    deliver_service: str
    status_service: str
    application_type: type[A]
    update_type: type[U]
    #: The public record of a case (Get*); it has the fields ``case_id``,
    #: ``status``, ``status_reason``, ``idempotency_key``, ``remote_reference``,
    #: ``submitted_at``, ``updated_at``, the ``target_field`` (the peer) and the
    #: ``amount_field`` (if any).
    public_type: type[P]
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
    validate: Callable[[A], None]
    #: Normalises an application before validation (e.g. upper-case ID numbers).
    normalise: Callable[[A], None]
    #: Back-end calls of the handling node: (back-end, reference, application,
    #: timeout) and (back-end, reference, timeout), each answering a status update.
    backend_name: str
    backend_submit: Callable[[B, str, A, float], Awaitable[U]]
    backend_status: Callable[[B, str, float], Awaitable[U]]
    #: The back-end error meaning "no such reference". A flow that moves no money
    #: submits again (idempotent by reference); a money-moving one goes to
    #: reconciliation when the case was, or may have been, submitted already.
    backend_not_found: type[BackendRejected]
    #: Field of the update (and of the public record) carrying an amount
    #: (withdrawals), if any.
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

    @property
    def final_statuses(self) -> tuple[int, int]:
        """(success, refusal): the two statuses a case ends in."""
        return (self.progression[-1], self.rejected)

    def make_update(
        self, key: str, status: int, reason: str, amount: int, reference: str, when: datetime
    ) -> U:
        update = _message(
            self.update_type,
            idempotency_key=key,
            status=status,
            status_reason=reason,
            remote_reference=reference,
        )
        if self.amount_field is not None:
            setattr(update, self.amount_field, amount)
        set_timestamp(update.changed_at, when)  # type: ignore[attr-defined]  # every flow's update has it
        return update

    def amount_of(self, update: Message) -> int:
        return int(getattr(update, self.amount_field)) if self.amount_field else 0

    def applied_amount(self, app: A) -> int:
        """The amount an application applied for (0 for a flow that moves no money)."""
        field_name = self.applied_amount_field
        return int(getattr(app, field_name)) if field_name else 0

    def public(self, case: OutgoingCase) -> P:
        """The public record of a stored case."""
        record = _message(
            self.public_type,
            case_id=case.case_id,
            status=case.status,
            status_reason=case.status_reason,
            idempotency_key=case.idempotency_key,
            remote_reference=case.remote_reference,
        )
        setattr(record, self.target_field, case.peer)
        if self.amount_field is not None:
            setattr(record, self.amount_field, case.amount_fen)
        set_timestamp(record.submitted_at, case.submitted_at)  # type: ignore[attr-defined]  # every public record has it
        set_timestamp(record.updated_at, case.updated_at)  # type: ignore[attr-defined]  # as above
        return record

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
        tx: OutboxWrites,
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
        """Queue, inside a unit of work, one status update per step of ``trail``
        for the submitting node (``reason`` on a final step, ``amount`` on success)."""
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
            tx.enqueue(
                OutboxItem(
                    0,
                    sender,
                    self.status_service,
                    ordered_uuid(),
                    correlation_id,
                    key,
                    message.SerializeToString(),
                    reference,
                    0,
                    now,
                    now,
                )
            )


class TrackedExchange(Generic[B, A, U, P]):
    """Both halves of one tracked flow."""

    #: Set by the node: back-end latency goes to its metrics.
    metrics: NodeMetrics | None = None

    def __init__(
        self,
        flow: Flow[B, A, U, P],
        *,
        config: ConfigHolder,
        client: FederationClient,
        store: TrackedCaseStore,
        backend: B | None,
        clock: Clock,
    ) -> None:
        self.flow = flow
        self._config = config
        self._client = client
        self._store = store
        self.backend = backend
        self._clock = clock
        self.outbox: Outbox | None = None
        self.processor: TrackedProcessor[B, A, U, P] | None = None

    @property
    def own(self) -> str:
        return self._config.federation.own

    def routes(self) -> dict[str, OutboxRoute]:
        flow = self.flow
        return {
            flow.deliver_service: OutboxRoute(
                flow.application_type, self._delivered, self._refused
            ),
            flow.status_service: OutboxRoute(
                flow.update_type,
                self._update_acked,
                self._update_refused,
                # The submitting node refused a status of its own case: an
                # operator should look (the outbox logs it once it is recorded).
                refused_event="status update refused by the submitting node",
                refused_level="error",
            ),
        }

    def handlers(self) -> dict[str, Callable[[OpenedEnvelope, float], Awaitable[Message]]]:
        return {
            self.flow.deliver_service: self.handle_delivery,
            self.flow.status_service: self.handle_status,
        }

    # ---- the client API (Submit*, Get*) ----------------------------------------------

    async def submit_call(self, application: A | None, expected: str) -> P:
        """A client's Submit* call: ``application`` is None when the request has
        none (``expected`` says what it should be)."""
        if application is None:
            raise InvalidArgument("application", expected)
        return await self.submit(application, require_client(), current_correlation_id.get())

    async def get_call(self, case_id: str) -> P:
        """A client's Get* call: the case, if it is the calling client's."""
        return await self.get(case_id, require_client())

    # ---- submitting node ------------------------------------------------------------

    def _accepted(self, application: A) -> A:
        """The application as this node sends it: from this province, normalised,
        valid, for a peer that takes it (InvalidArgument / FailedPrecondition)."""
        flow = self.flow
        federation = self._config.federation
        own = federation.own
        app = flow.application_type()
        app.CopyFrom(application)
        origin = getattr(app, flow.origin_field)
        if origin and origin != own:
            raise InvalidArgument(
                f"application.{flow.origin_field}", f"this node's province {own} (or empty)"
            )
        setattr(app, flow.origin_field, own)
        flow.normalise(app)
        flow.validate(app)
        target = getattr(app, flow.target_field)
        federation.require_peer(f"application.{flow.target_field}", target, flow.deliver_service)
        return app

    async def submit(self, application: A, client: ClientSection, correlation_id: str) -> P:
        flow = self.flow
        app = self._accepted(application)
        own, target, key = self.own, getattr(app, flow.target_field), key_of(app)
        body = app.SerializeToString(deterministic=True)
        digest = crypto.sha256(body)
        case_id = f"{flow.case_prefix}-{own}-{random_uuid_hex()[:20]}"
        now, stamp = time.time(), self._clock.now()
        new = NewOutgoingCase(
            case_id=case_id,
            domain=flow.domain,
            idempotency_key=key,
            body_digest=digest,
            client_id=client.id,
            peer=target,
            application=body,
            status=flow.queued,
            correlation_id=correlation_id,
            submitted_at=stamp,
        )

        def work(tx: StateTransaction) -> str:
            existing = tx.outgoing_by_key(flow.domain, key)
            if existing is not None:
                if existing.body_digest != digest:
                    raise AlreadyExists(
                        "application.idempotency_key: already used for a different application "
                        f"(case {existing.case}); use a new key for a new application"
                    )
                return existing.case
            # The case and its delivery: committed together or not at all.
            tx.insert_outgoing(new)
            tx.enqueue(
                OutboxItem(
                    0,
                    target,
                    flow.deliver_service,
                    ordered_uuid(),
                    correlation_id,
                    key,
                    body,
                    case_id,
                    0,
                    now,
                    now,
                )
            )
            return case_id

        stored = await self._store.unit_of_work(work)
        if self.outbox is not None:
            self.outbox.wake()
        # Carried by the call's own `rpc` line (the interceptor's, which merges
        # what is bound): one info line per submission, not two.
        structlog.contextvars.bind_contextvars(
            case_id=stored, peer=target, duplicate=stored != case_id
        )
        log.debug(f"{flow.domain} accepted")
        if stored == case_id:
            # New: the case as just committed, without reading it back.
            return flow.public(new.as_stored())
        return await self.get(stored, client)  # a repeat: the case as it is now

    async def get(self, case_id: str, client: ClientSection | None) -> P:
        if not _CASE_ID.fullmatch(case_id):
            raise InvalidArgument(
                "case_id", "the case id returned when it was submitted (<prefix>-<province>-<hex>)"
            )
        case = await self._store.outgoing_case(case_id, self.flow.domain)
        if case is None or (client is not None and case.client_id != client.id):
            raise NotFound(f"case_id: no {self.flow.domain} case {shown(case_id)} for this client")
        return self.flow.public(case)

    def _delivered(
        self, tx: StateTransaction, item: OutboxItem, ack: federation_pb2.DeliveryAck
    ) -> None:
        tx.outgoing_delivered(
            item.subject,
            was=self.flow.queued,
            status=self.flow.delivered,
            remote_reference=ack.remote_reference,
            at=self._clock.now(),
        )

    def _refused(self, tx: StateTransaction, item: OutboxItem, exc: Exception) -> None:
        message = getattr(exc, "message", str(exc))
        tx.outgoing_refused(
            item.subject,
            status=self.flow.rejected,
            reason=f"refused by province {item.peer}: {message}"[:500],
            at=self._clock.now(),
            unless=self.flow.final_statuses,
        )

    async def apply_status(self, sender: str, update: U) -> federation_pb2.DeliveryAck:
        """A status change from the handling province (submitting node)."""
        flow = self.flow
        fields = status_of(update)
        if fields.status not in flow.rank or fields.status == flow.queued:
            raise InvalidArgument("status", f"a {flow.domain} status after delivery")

        def work(tx: StateTransaction) -> federation_pb2.DeliveryAck:
            case = tx.outgoing_by_key(flow.domain, fields.idempotency_key, peer=sender)
            if case is None:
                raise NotFound(f"idempotency_key: no case delivered to {sender} with this key")
            if case.status in flow.final or flow.rank[fields.status] <= flow.rank.get(
                case.status, 0
            ):
                return federation_pb2.DeliveryAck(remote_reference=case.case, duplicate=True)
            moved = tx.outgoing_status(
                case.case,
                status=fields.status,
                reason=fields.status_reason,
                amount_fen=flow.amount_of(update),
                remote_reference=fields.remote_reference,
                at=self._clock.now(),
                # As far along already (another replica applied a later update
                # meanwhile), or final: this one changes nothing.
                unless=flow.final
                | {s for s, rank in flow.rank.items() if rank >= flow.rank[fields.status]},
            )
            return federation_pb2.DeliveryAck(remote_reference=case.case, duplicate=not moved)

        ack = await self._store.unit_of_work(work)
        log.info(
            f"{flow.domain} status",
            case_id=ack.remote_reference,
            status=flow.status_name(fields.status),
            duplicate=ack.duplicate,
        )
        return ack

    # ---- handling node ------------------------------------------------------------

    async def handle_delivery(
        self, opened: OpenedEnvelope, timeout: float
    ) -> federation_pb2.DeliveryAck:
        flow = self.flow
        own = self.own
        app = opened.parse(flow.application_type)
        assert isinstance(app, flow.application_type)
        sender = opened.header.sender
        flow.validate(app)
        if getattr(app, flow.target_field) != own:
            raise InvalidArgument(
                f"application.{flow.target_field}", f"{own}, the receiving province"
            )
        if getattr(app, flow.origin_field) != sender:
            raise InvalidArgument(f"application.{flow.origin_field}", f"{sender}, the sender")
        key = key_of(app)
        if opened.header.idempotency_key != key:
            raise InvalidArgument("header.idempotency_key", "the application's idempotency key")
        if self.backend is None:
            raise FailedPrecondition(f"node {own} has no {flow.backend_name} configured")
        digest = crypto.sha256(opened.payload)
        reference = f"{flow.reference_prefix}-{own}-{random_uuid_hex()[:20]}"
        stamp = self._clock.now()

        def work(tx: StateTransaction) -> federation_pb2.DeliveryAck:
            existing = tx.incoming_by_key(flow.domain, sender, key)
            if existing is not None:
                if existing.body_digest != digest:
                    raise AlreadyExists(
                        "application.idempotency_key: already delivered with a different body"
                    )
                return federation_pb2.DeliveryAck(remote_reference=existing.case, duplicate=True)
            tx.insert_incoming(
                NewIncomingCase(
                    reference=reference,
                    domain=flow.domain,
                    sender=sender,
                    idempotency_key=key,
                    message_id=opened.header.message_id,
                    correlation_id=opened.header.correlation_id,
                    body_digest=digest,
                    application=opened.payload,
                    status=flow.delivered,
                    next_poll_at=time.time(),
                    received_at=stamp,
                )
            )
            return federation_pb2.DeliveryAck(remote_reference=reference)

        ack = await self._store.unit_of_work(work)
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
        update = opened.parse(self.flow.update_type)
        assert isinstance(update, self.flow.update_type)
        return await self.apply_status(opened.header.sender, update)

    def _update_acked(
        self, tx: StateTransaction, item: OutboxItem, ack: federation_pb2.DeliveryAck
    ) -> None:
        return None

    def _update_refused(self, tx: StateTransaction, item: OutboxItem, exc: Exception) -> None:
        """Nothing to record: the item leaves the outbox (its line is the route's)."""


class TrackedProcessor(Generic[B, A, U, P]):
    """Hands received applications to the back-end and follows them to the end.

    One step of a case (:meth:`_step`): ask the back-end (:meth:`_ask_backend`),
    which either answers a status update or ends the step by itself (back-end
    unavailable: :meth:`_unavailable`; the back-end does not know the case:
    :meth:`_not_found`; its answer refuses or cannot be read: :meth:`_rejected`);
    then record the answer and queue its status updates (:meth:`_record`).
    """

    def __init__(
        self,
        exchange: TrackedExchange[B, A, U, P],
        store: TrackedCaseStore,
        backend: B,
        clock: Clock,
        *,
        poll_min: float = 0.05,
        poll_max: float = 2.0,
        concurrency: int = 32,
        idle_poll: float = 1.0,
        owner: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        #: Longest sleep with nothing due (work stored by another worker process).
        self.idle_poll = idle_poll
        #: This process's name in the leases it takes on cases (replicas share
        #: the store: a case is worked by the one replica holding its lease, so
        #: no two hand one withdrawal to the back-end at once), and their length.
        self.owner = owner or lease_owner()
        if lease_seconds <= 2 * DEFAULT_TIMEOUT:
            raise ValueError(f"lease_seconds: more than {2 * DEFAULT_TIMEOUT} (a back-end call)")
        self.lease_seconds = lease_seconds
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
        self._renewer: asyncio.Task[None] | None = None
        #: Until when this process holds the lease of each case in hand (its clock).
        self._lease_until: dict[str, float] = {}
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> TrackedProcessor[B, A, U, P]:
        self._task = asyncio.create_task(self._run(), name=f"{self._flow.domain}-processor")
        self._renewer = asyncio.create_task(self._renew(), name=f"{self._flow.domain}-leases")
        return self

    async def stop(self) -> None:
        """Stop; the cases in hand are released for any replica to take at once."""
        if self._stopping:
            return
        self._stopping = True
        for background in (self._task, self._renewer):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        if self._task is not None:
            try:
                await self._store.release_incoming_leases(self.owner)
            except Exception as exc:  # they expire instead
                log.warning("case leases not released; they expire", error=str(exc)[:200])

    async def _renew(self) -> None:
        """Every third of a lease, extend the leases of the cases in hand."""
        while not self._stopping:
            await asyncio.sleep(self.lease_seconds / 3)
            references = list(self._inflight)
            if not references:
                continue
            until = time.time() + self.lease_seconds
            try:
                ours = await self._store.renew_incoming_leases(
                    references, owner=self.owner, until=until
                )
            except Exception as exc:  # the next round tries again
                log.warning("case leases not renewed", error=str(exc)[:200])
                continue
            for reference in ours:
                if reference in self._lease_until:
                    self._lease_until[reference] = until
            lost = [r for r in references if r not in ours and r in self._inflight]
            if lost:
                log.warning(
                    f"{self._flow.domain} cases taken over by another replica", cases=len(lost)
                )

    async def _run(self) -> None:
        domain, final = self._flow.domain, self._flow.final_statuses
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
                due: list[IncomingWork] = []
                if len(inflight) < MAX_QUEUED:
                    try:
                        due = await self._store.claim_incoming(
                            domain,
                            now=now,
                            final=final,
                            limit=MAX_QUEUED - len(inflight),
                            owner=self.owner,
                            lease_seconds=self.lease_seconds,
                            skip=inflight,
                        )
                    except Exception as exc:  # the store cannot write: try again later
                        log.warning("due cases not claimed", error=str(exc)[:200])
                for work in due:
                    if work.reference in self._inflight:
                        continue
                    self._inflight.add(work.reference)
                    self._lease_until[work.reference] = now + self.lease_seconds
                    task = asyncio.create_task(self._advance(work))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                upcoming = await self._store.next_incoming_poll(domain, after=now, final=final)
                delay = self.idle_poll
                if upcoming is not None:
                    delay = min(delay, max(0.0, upcoming - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _backoff(self, attempts: int) -> float:
        return backoff_delay(attempts, base=self._poll_min, cap=self._poll_max)

    async def _advance(self, work: IncomingWork) -> None:
        """One step of a case; nothing escapes this task. When the store cannot
        record the next attempt, the case stays out of the reads (in flight) until
        a backoff at the cap has passed: a failing disk makes no retry storm."""
        reference = work.reference
        hold = 0.0
        try:
            async with self._limit:
                await self._step(work)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            try:
                await self._reschedule(reference, work.attempts + 1, submitted=work.submitted)
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
                self._lease_until.pop(reference, None)
                self._wake.set()

            if hold:
                asyncio.get_running_loop().call_later(hold, release)
            else:
                release()

    async def _reschedule(self, reference: str, attempts: int, *, submitted: bool) -> None:
        """Record the next attempt (raises if the store cannot write: the caller
        then keeps it in memory)."""
        when = time.time() + self._backoff(attempts)
        await self._store.unit_of_work(
            lambda tx: tx.incoming_schedule(
                reference,
                owner=self.owner,
                attempts=attempts,
                next_poll_at=when,
                submitted=submitted,
            )
        )

    async def _call_backend(self, reference: str, app: A, submitted: bool) -> U:
        flow = self._flow
        async with backend_call(self._exchange.metrics, flow.backend_name):
            if submitted:
                return await flow.backend_status(self._backend, reference, DEFAULT_TIMEOUT)
            return await flow.backend_submit(self._backend, reference, app, DEFAULT_TIMEOUT)

    async def _step(self, work: IncomingWork) -> None:
        if self._lease_until.get(work.reference, 0.0) < time.time() + DEFAULT_TIMEOUT:
            # The lease may end before the back-end answers (renewals failing,
            # or taken over): no call, so no two replicas ever submit it at once.
            log.warning(
                f"{self._flow.domain} lease too short for a back-end call; left for later",
                reference=work.reference,
            )
            return
        update = await self._ask_backend(work)
        if update is not None:
            await self._record(work, update)

    async def _ask_backend(self, work: IncomingWork) -> U | None:
        """The back-end's answer for the case, or None when this step ended
        without one (rescheduled, or in reconciliation)."""
        flow = self._flow
        app = flow.application_type.FromString(work.application)
        try:
            return await self._call_backend(work.reference, app, work.submitted)
        except BackendUnavailable as exc:
            await self._unavailable(work, exc)
        except flow.backend_not_found:
            await self._not_found(work)
        except (BackendRejected, TranslationError) as exc:
            return await self._rejected(work, exc)
        return None

    async def _unavailable(self, work: IncomingWork, exc: BackendUnavailable) -> None:
        log.warning(f"{self._flow.backend_name} unavailable", reason=str(exc))
        # A submission whose answer was lost may have reached the back-end:
        # from now on its status is asked for, it is not taken as absent.
        maybe_submitted = work.submitted or exc.may_have_arrived
        await self._reschedule(work.reference, work.attempts + 1, submitted=maybe_submitted)

    async def _not_found(self, work: IncomingWork) -> None:
        flow = self._flow
        if flow.moves_money and work.submitted:
            # Submitting again could pay twice: an operator confirms from the
            # back-end's own records what happened (`outbox resolve`).
            await self._to_reconciliation(work)
            return
        # The back-end does not know the reference (it lost its state?):
        # submitting again is safe, it is idempotent by reference.
        log.warning(
            f"{flow.backend_name} lost a case; submitting it again", reference=work.reference
        )
        await self._reschedule(work.reference, 0, submitted=False)

    async def _rejected(
        self, work: IncomingWork, exc: BackendRejected | TranslationError
    ) -> U | None:
        """The back-end refused the application (the refusal to report), or its
        answer cannot be read (None: asked again later)."""
        flow = self._flow
        if work.submitted or (flow.moves_money and isinstance(exc, TranslationError)):
            # A status answer, or a money-moving submission's answer, that the
            # adapter cannot read: the back-end may have taken it, so it is not
            # refused; its status is asked for (and an operator reconciles it
            # if the back-end does not know it).
            log.error(f"{flow.backend_name} answer unusable", reason=str(exc))
            await self._reschedule(work.reference, work.attempts + 1, submitted=True)
            return None
        return flow.make_update(
            work.idempotency_key,
            flow.rejected,
            f"the {flow.backend_name.replace('_', ' ')} refused the application: {exc}",
            0,
            "",
            self._clock.now(),
        )

    async def _record(self, work: IncomingWork, update: U) -> None:
        """The back-end's answer: the case's new state, and one status update per
        step it moved forward, for the submitting node, in one unit of work."""
        flow = self._flow
        fields = status_of(update)
        new = fields.status if fields.status in flow.rank else work.status
        trail = flow.trail(work.status, new)
        changed = self._clock.now()
        progress = Progress(
            status=new,
            status_reason=fields.status_reason,
            amount_fen=flow.amount_of(update),
            backend_reference=fields.remote_reference,
            attempts=0 if trail else work.attempts + 1,
            next_poll_at=time.time() + (self._poll_min if trail else self._backoff(work.attempts)),
            updated_at=changed,
        )

        def record(tx: StateTransaction) -> bool:
            if not tx.incoming_progress(work.reference, progress, owner=self.owner):
                return False  # another replica took the case over: its step counts
            flow.queue_updates(
                tx,
                trail,
                sender=work.sender,
                key=work.idempotency_key,
                correlation_id=work.correlation_id,
                reason=progress.status_reason,
                amount=progress.amount_fen,
                reference=work.reference,
                changed=changed,
            )
            return True

        if not await self._store.unit_of_work(record):
            log.warning(f"{flow.domain} taken over by another replica", reference=work.reference)
            return
        if trail:
            if self._exchange.outbox is not None:
                self._exchange.outbox.wake()
            log.info(
                f"{flow.domain} progressed", reference=work.reference, status=flow.status_name(new)
            )

    async def _to_reconciliation(self, work: IncomingWork) -> None:
        """The back-end lost a money-moving case: leave it alone until an operator
        resolves it. Logged at error level with the reference only."""
        stamp = self._clock.now()
        ours = await self._store.unit_of_work(
            lambda tx: tx.incoming_to_reconciliation(work.reference, owner=self.owner, at=stamp)
        )
        if not ours:
            return
        log.error(
            f"{self._flow.backend_name} does not know a {self._flow.domain} it was given;"
            " not submitted again, waiting for reconciliation (yrd-gateway outbox resolve)",
            reference=work.reference,
            sender=work.sender,
            last_status=self._flow.status_name(work.status),
        )


# ---- reconciliation (the operator's side) -------------------------------------------


@dataclass(frozen=True)
class Reconciliation:
    """An incoming case waiting for an operator, as read before resolving it."""

    reference: str
    domain: str
    sender: str
    status: int


async def pending_reconciliation(store: ReconciliationStore, reference: str) -> Reconciliation:
    """The incoming case ``reference`` if it is in reconciliation (NotFound /
    FailedPrecondition otherwise)."""
    case = await store.incoming_case(reference)
    if case is None:
        raise NotFound(f"reference: no case received by this node under {reference!r}")
    if not case.in_reconciliation:
        raise FailedPrecondition(f"reference: case {reference} is not in reconciliation")
    return Reconciliation(reference, case.domain, case.sender, case.status)


async def resolve_reconciliation(
    store: Transactional,
    flow: Flow[Any, Any, Any, Any],
    reference: str,
    *,
    paid: bool,
    clock: Clock,
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

    def work(tx: StateTransaction) -> int:
        case = tx.incoming_in_reconciliation(reference, flow.domain)
        if case is None:
            raise FailedPrecondition(f"reference: case {reference} is not in reconciliation")
        if not paid:
            tx.incoming_resubmit(reference, next_poll_at=time.time(), at=changed)
            return case.status
        amount = flow.applied_amount(flow.application_type.FromString(case.application))
        new = flow.progression[-1]
        reason = f"paid; confirmed from the {flow.backend_name.replace('_', ' ')}'s records"
        tx.incoming_settled(
            reference,
            status=new,
            reason=reason,
            amount_fen=amount,
            next_poll_at=time.time(),
            at=changed,
        )
        flow.queue_updates(
            tx,
            flow.trail(case.status, new),
            sender=case.sender,
            key=case.idempotency_key,
            correlation_id=case.correlation_id,
            reason=reason,
            amount=amount,
            reference=reference,
            changed=changed,
        )
        return new

    status = await store.unit_of_work(work)
    log.warning(
        f"{flow.domain} reconciliation resolved",
        reference=reference,
        outcome="paid" if paid else "not paid; submitted again",
    )
    return status
