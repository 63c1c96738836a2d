"""Provident fund: withdrawal from a fund held in another province (DESIGN §2).

Applicant's node: ``SubmitWithdrawal`` validates, writes the case and its outbox
item in one transaction, answers ``QUEUED`` with a case id, and the outbox
delivers the application (``fund.DeliverWithdrawal``) to the fund province's
node. Status updates come back as ``fund.WithdrawalStatus`` deliveries and
move the case forward, never backward.

Fund province's node: a delivered application is stored once per (sender,
idempotency key) — a retry or duplicate returns the same reference and never
reaches the fund centre twice — and the :class:`FundProcessor` hands it to the
fund centre (idempotent by this node's reference), follows the review, and
queues each status change for the applicant's node.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import aiosqlite
import grpc
import structlog

from adapters.base import FundCentre
from adapters.errors import (
    BackendRejected,
    BackendUnavailable,
    TranslationError,
    WithdrawalNotFound,
)
from gateway import crypto
from gateway.clock import Clock
from gateway.config import ClientSection, FederationConfig
from gateway.envelope import OpenedEnvelope
from gateway.errors import (
    AlreadyExists,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    PeerUnavailable,
)
from gateway.federation.client import FederationClient
from gateway.identifiers import (
    validate_bank_account,
    validate_fund_account,
    validate_id_number,
    validate_idempotency_key,
    validate_region_code,
)
from gateway.interceptors import current_client, current_correlation_id
from gateway.metrics import NodeMetrics
from gateway.outbox import Outbox, OutboxRoute
from gateway.store import OutboxItem, StateStore
from yrd.federation.v1 import federation_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc

log = structlog.get_logger("yrd.fund")

DELIVER = "fund.DeliverWithdrawal"
STATUS = "fund.WithdrawalStatus"
QUERY = "fund.QueryAccount"
S = fund_pb2.WithdrawalStatus
FINAL = frozenset({S.PAID, S.REJECTED})
#: Order of the status flow; a case never moves to a lower rank.
RANK: dict[int, int] = {
    S.QUEUED: 1,
    S.DELIVERED: 2,
    S.UNDER_REVIEW: 3,
    S.APPROVED: 4,
    S.PAID: 5,
    S.REJECTED: 5,
}
MAX_SUPPORTING = 20
DEFAULT_TIMEOUT = 5.0


def _now_iso(clock: Clock) -> str:
    return clock.now().isoformat()


def validate_application(
    app: fund_pb2.WithdrawalApplication, *, prefix: str = "application."
) -> None:
    """Every field check of a withdrawal application (both nodes run it)."""
    validate_idempotency_key(prefix + "idempotency_key", app.idempotency_key)
    validate_id_number(prefix + "applicant.id_number", app.applicant.id_number)
    if not app.applicant.full_name.strip() or len(app.applicant.full_name) > 64:
        raise InvalidArgument(
            prefix + "applicant.full_name", "the applicant's name, 1..64 characters"
        )
    validate_region_code(prefix + "fund_province", app.fund_province)
    validate_fund_account(prefix + "fund_account", app.fund_account)
    if app.reason not in fund_pb2.WithdrawalReason.values() or app.reason == 0:
        names = [
            n
            for n in fund_pb2.WithdrawalReason.DESCRIPTOR.values_by_name
            if n != "WITHDRAWAL_REASON_UNSPECIFIED"
        ]
        raise InvalidArgument(prefix + "reason", f"one of {', '.join(names)}")
    if app.amount_fen <= 0:
        raise InvalidArgument(
            prefix + "amount_fen", "a positive whole number of fen (1 yuan = 100 fen)"
        )
    if app.amount_fen > 10**12:
        raise InvalidArgument(prefix + "amount_fen", "at most 10^12 fen")
    validate_bank_account(prefix + "payee_account", app.payee_account)
    if not app.payee_bank.strip() or len(app.payee_bank) > 100:
        raise InvalidArgument(prefix + "payee_bank", "the payee's bank name, 1..100 characters")
    if len(app.supporting_certificates) > MAX_SUPPORTING:
        raise InvalidArgument(
            prefix + "supporting_certificates", f"at most {MAX_SUPPORTING} references"
        )
    for i, reference in enumerate(app.supporting_certificates):
        if not reference.strip() or len(reference) > 128:
            raise InvalidArgument(f"{prefix}supporting_certificates[{i}]", "1..128 characters")


@dataclass(frozen=True)
class _Case:
    case_id: str
    status: int


class FundExchange:
    """Both halves of the withdrawal exchange, and the account query."""

    def __init__(
        self,
        *,
        federation: FederationConfig,
        client: FederationClient,
        store: StateStore,
        centre: FundCentre | None,
        clock: Clock,
    ) -> None:
        self._federation = federation
        self._client = client
        self._store = store
        self._centre = centre
        self._clock = clock
        self.outbox: Outbox | None = None
        self.processor: FundProcessor | None = None

    def update(self, federation: FederationConfig) -> None:
        """A reloaded config: policies, clients and peers as now configured."""
        self._federation = federation

    #: Set by the node: back-end latency goes to its metrics.
    metrics: NodeMetrics | None = None

    @property
    def own(self) -> str:
        return self._federation.own

    def routes(self) -> dict[str, OutboxRoute]:
        return {
            DELIVER: OutboxRoute(fund_pb2.WithdrawalApplication, self._delivered, self._refused),
            STATUS: OutboxRoute(
                fund_pb2.WithdrawalStatusUpdate, self._update_acked, self._update_refused
            ),
        }

    def _centre_or_fail(self) -> FundCentre:
        if self._centre is None:
            raise FailedPrecondition(f"node {self.own} has no fund centre configured")
        return self._centre

    def _check_peer(self, field: str, province: str, service: str) -> None:
        validate_region_code(field, province)
        peer = self._federation.peer(province)
        if peer is None:
            raise InvalidArgument(
                field,
                f"a province of the federation ({', '.join(sorted(self._federation.provinces))})",
            )
        if province == self.own:
            raise InvalidArgument(
                field,
                f"a province other than this node's own ({self.own}); withdrawals from "
                "a fund held here go to the fund centre directly",
            )
        if service not in peer.services.offers or service not in self._federation.me.services.calls:
            raise FailedPrecondition(
                f"{field}: province {province} does not accept {service} from {self.own}"
            )

    # ---- applicant's node ---------------------------------------------------------

    async def submit(
        self, request: fund_pb2.SubmitWithdrawalRequest, client: ClientSection, correlation_id: str
    ) -> fund_pb2.Withdrawal:
        if not request.HasField("application"):
            raise InvalidArgument("application", "a WithdrawalApplication")
        app = fund_pb2.WithdrawalApplication()
        app.CopyFrom(request.application)
        if app.applicant_province and app.applicant_province != self.own:
            raise InvalidArgument(
                "application.applicant_province", f"this node's province {self.own} (or empty)"
            )
        app.applicant_province = self.own
        app.applicant.id_number = app.applicant.id_number.strip().upper()
        validate_application(app)
        self._check_peer("application.fund_province", app.fund_province, DELIVER)
        body = app.SerializeToString(deterministic=True)
        digest = crypto.sha256(body)
        case_id = f"WD-{self.own}-{uuid.uuid4().hex[:20]}"
        now = time.time()
        stamp = _now_iso(self._clock)

        async def op(db: aiosqlite.Connection) -> str:
            async with db.execute(
                "SELECT case_id, body_digest FROM withdrawals WHERE idempotency_key = ?",
                (app.idempotency_key,),
            ) as cursor:
                existing = await cursor.fetchone()
            if existing is not None:
                if bytes(existing[1]) != digest:
                    raise AlreadyExists(
                        "application.idempotency_key: already used for a different application "
                        f"(case {existing[0]}); use a new key for a new application"
                    )
                return str(existing[0])
            await db.execute(
                "INSERT INTO withdrawals (case_id, idempotency_key, body_digest, client_id,"
                " fund_province, application, status, correlation_id, submitted_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    case_id,
                    app.idempotency_key,
                    digest,
                    client.id,
                    app.fund_province,
                    body,
                    S.QUEUED,
                    correlation_id,
                    stamp,
                    stamp,
                ),
            )
            await StateStore.enqueue(
                db,
                OutboxItem(
                    0,
                    app.fund_province,
                    DELIVER,
                    str(uuid.uuid4()),
                    correlation_id,
                    app.idempotency_key,
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
            "withdrawal accepted",
            case_id=stored,
            fund_province=app.fund_province,
            duplicate=stored != case_id,
        )
        return await self.get(stored, client)

    async def get(self, case_id: str, client: ClientSection | None) -> fund_pb2.Withdrawal:
        if not case_id:
            raise InvalidArgument("case_id", "the case id returned by SubmitWithdrawal")
        row = await self._store.fetchone(
            "SELECT status, status_reason, paid_amount_fen, submitted_at, updated_at,"
            " idempotency_key, fund_province, remote_reference, client_id FROM withdrawals"
            " WHERE case_id = ?",
            (case_id,),
        )
        if row is None or (client is not None and row[8] != client.id):
            raise NotFound(f"case_id: no withdrawal case {case_id!r} for this client")
        withdrawal = fund_pb2.Withdrawal(
            case_id=case_id,
            status=row[0],
            status_reason=row[1],
            paid_amount_fen=row[2],
            idempotency_key=row[5],
            fund_province=row[6],
            remote_reference=row[7],
        )
        withdrawal.submitted_at.FromDatetime(datetime.fromisoformat(row[3]))
        withdrawal.updated_at.FromDatetime(datetime.fromisoformat(row[4]))
        return withdrawal

    async def _delivered(
        self, db: aiosqlite.Connection, item: OutboxItem, ack: federation_pb2.DeliveryAck
    ) -> None:
        await db.execute(
            "UPDATE withdrawals SET status = ?, remote_reference = ?, updated_at = ?"
            " WHERE case_id = ? AND status = ?",
            (S.DELIVERED, ack.remote_reference, _now_iso(self._clock), item.subject, S.QUEUED),
        )

    async def _refused(self, db: aiosqlite.Connection, item: OutboxItem, exc: GatewayError) -> None:
        await db.execute(
            "UPDATE withdrawals SET status = ?, status_reason = ?, updated_at = ?"
            " WHERE case_id = ? AND status NOT IN (?, ?)",
            (
                S.REJECTED,
                f"refused by province {item.peer}: {exc.message}"[:500],
                _now_iso(self._clock),
                item.subject,
                S.PAID,
                S.REJECTED,
            ),
        )

    async def apply_status(
        self, sender: str, update: fund_pb2.WithdrawalStatusUpdate
    ) -> federation_pb2.DeliveryAck:
        """A status change from the fund province (applicant's node)."""
        if update.status not in RANK:
            raise InvalidArgument("status", "a withdrawal status after QUEUED")

        async def op(db: aiosqlite.Connection) -> federation_pb2.DeliveryAck:
            async with db.execute(
                "SELECT case_id, status FROM withdrawals WHERE idempotency_key = ?"
                " AND fund_province = ?",
                (update.idempotency_key, sender),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise NotFound(f"idempotency_key: no case delivered to {sender} with this key")
            case_id, status = str(row[0]), int(row[1])
            if status in FINAL or RANK[update.status] <= RANK.get(status, 0):
                return federation_pb2.DeliveryAck(remote_reference=case_id, duplicate=True)
            await db.execute(
                "UPDATE withdrawals SET status = ?, status_reason = ?, paid_amount_fen = ?,"
                " updated_at = ?, remote_reference = CASE WHEN remote_reference = ''"
                " THEN ? ELSE remote_reference END WHERE case_id = ?",
                (
                    update.status,
                    update.status_reason,
                    update.paid_amount_fen,
                    _now_iso(self._clock),
                    update.remote_reference,
                    case_id,
                ),
            )
            return federation_pb2.DeliveryAck(remote_reference=case_id)

        ack = await self._store.write(op)
        log.info(
            "withdrawal status",
            case_id=ack.remote_reference,
            status=S.Name(update.status),
            duplicate=ack.duplicate,
        )
        return ack

    async def query_account(
        self, request: fund_pb2.QueryFundAccountRequest, correlation_id: str, timeout: float
    ) -> fund_pb2.FundAccount:
        request = fund_pb2.QueryFundAccountRequest(
            id_number=validate_id_number("id_number", request.id_number),
            fund_province=request.fund_province,
        )
        validate_region_code("fund_province", request.fund_province)
        if request.fund_province == self.own:
            return await self.local_account(request, timeout)
        self._check_peer("fund_province", request.fund_province, QUERY)
        account, _ = await self._client.call(
            request.fund_province,
            QUERY,
            request,
            fund_pb2.FundAccount,
            correlation_id=correlation_id,
            timeout=timeout,
        )
        return account

    # ---- fund province's node ----------------------------------------------------

    async def local_account(
        self, request: fund_pb2.QueryFundAccountRequest, timeout: float
    ) -> fund_pb2.FundAccount:
        centre = self._centre_or_fail()
        try:
            account = await centre.query_account(request.id_number, timeout=timeout)
        except BackendUnavailable as exc:
            raise PeerUnavailable(f"fund centre of {self.own}: {exc}") from exc
        except (BackendRejected, TranslationError) as exc:
            raise GatewayError(f"fund centre of {self.own} answered unexpectedly: {exc}") from exc
        if account is None:
            raise NotFound(f"id_number: no provident-fund account at {self.own} for this person")
        account.fund_province = self.own
        return account

    async def handle_query(self, opened: OpenedEnvelope, timeout: float) -> fund_pb2.FundAccount:
        request = opened.parse(fund_pb2.QueryFundAccountRequest)
        assert isinstance(request, fund_pb2.QueryFundAccountRequest)
        validate_id_number("id_number", request.id_number)
        if request.fund_province != self.own:
            raise InvalidArgument("fund_province", f"{self.own}, the receiving province")
        return await self.local_account(request, timeout)

    async def handle_delivery(
        self, opened: OpenedEnvelope, timeout: float
    ) -> federation_pb2.DeliveryAck:
        app = opened.parse(fund_pb2.WithdrawalApplication)
        assert isinstance(app, fund_pb2.WithdrawalApplication)
        sender = opened.header.sender
        validate_application(app)
        if app.fund_province != self.own:
            raise InvalidArgument(
                "application.fund_province", f"{self.own}, the receiving province"
            )
        if app.applicant_province != sender:
            raise InvalidArgument("application.applicant_province", f"{sender}, the sender")
        if opened.header.idempotency_key != app.idempotency_key:
            raise InvalidArgument("header.idempotency_key", "the application's idempotency key")
        self._centre_or_fail()
        digest = crypto.sha256(opened.payload)
        reference = f"FW-{self.own}-{uuid.uuid4().hex[:20]}"
        stamp = _now_iso(self._clock)

        async def op(db: aiosqlite.Connection) -> federation_pb2.DeliveryAck:
            async with db.execute(
                "SELECT reference, body_digest FROM incoming_withdrawals"
                " WHERE sender = ? AND idempotency_key = ?",
                (sender, app.idempotency_key),
            ) as cursor:
                existing = await cursor.fetchone()
            if existing is not None:
                if bytes(existing[1]) != digest:
                    raise AlreadyExists(
                        "application.idempotency_key: already delivered with a different body"
                    )
                return federation_pb2.DeliveryAck(remote_reference=str(existing[0]), duplicate=True)
            await db.execute(
                "INSERT INTO incoming_withdrawals (reference, sender, idempotency_key, message_id,"
                " correlation_id, body_digest, application, status, next_poll_at, received_at,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    reference,
                    sender,
                    app.idempotency_key,
                    opened.header.message_id,
                    opened.header.correlation_id,
                    digest,
                    opened.payload,
                    S.DELIVERED,
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
            "withdrawal received",
            sender=sender,
            reference=ack.remote_reference,
            duplicate=ack.duplicate,
        )
        return ack

    async def handle_status(
        self, opened: OpenedEnvelope, timeout: float
    ) -> federation_pb2.DeliveryAck:
        update = opened.parse(fund_pb2.WithdrawalStatusUpdate)
        assert isinstance(update, fund_pb2.WithdrawalStatusUpdate)
        return await self.apply_status(opened.header.sender, update)

    async def _update_acked(
        self, db: aiosqlite.Connection, item: OutboxItem, ack: federation_pb2.DeliveryAck
    ) -> None:
        return None

    async def _update_refused(
        self, db: aiosqlite.Connection, item: OutboxItem, exc: GatewayError
    ) -> None:
        log.error(
            "status update refused by applicant's node",
            peer=item.peer,
            code=exc.code.name,
            reason=exc.message,
        )


class FundProcessor:
    """Hands received applications to the fund centre and follows their review."""

    def __init__(
        self,
        exchange: FundExchange,
        store: StateStore,
        centre: FundCentre,
        clock: Clock,
        *,
        poll_min: float = 0.05,
        poll_max: float = 2.0,
        concurrency: int = 32,
    ) -> None:
        self._exchange = exchange
        self._store = store
        self._centre = centre
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

    async def start(self) -> FundProcessor:
        self._task = asyncio.create_task(self._run(), name="fund-processor")
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
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                self._wake.clear()
                now = time.time()
                rows = await self._store.fetchall(
                    "SELECT reference, sender, idempotency_key, correlation_id, application,"
                    " status, submitted, attempts FROM incoming_withdrawals"
                    " WHERE status NOT IN (?, ?) AND next_poll_at <= ?"
                    " ORDER BY next_poll_at LIMIT 256",
                    (S.PAID, S.REJECTED, now),
                )
                for row in rows:
                    if row[0] in self._inflight:
                        continue
                    self._inflight.add(row[0])
                    task = asyncio.create_task(self._advance(*row))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                upcoming = await self._store.fetchone(
                    "SELECT MIN(next_poll_at) FROM incoming_withdrawals"
                    " WHERE status NOT IN (?, ?) AND next_poll_at > ?",
                    (S.PAID, S.REJECTED, now),
                )
                delay = 1.0
                if upcoming and upcoming[0] is not None:
                    delay = min(delay, max(0.0, float(upcoming[0]) - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

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
        try:
            async with self._limit:
                await self._step(
                    reference, sender, key, correlation_id, body, status, bool(submitted), attempts
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("fund processing step failed", reference=reference)
            await self._schedule(reference, attempts + 1)
        finally:
            self._inflight.discard(reference)
            self._wake.set()

    async def _schedule(self, reference: str, attempts: int) -> None:
        delay = min(self._poll_max, self._poll_min * 2 ** min(attempts, 10))
        when = time.time() + random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not crypto

        async def op(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE incoming_withdrawals SET attempts = ?, next_poll_at = ?"
                " WHERE reference = ?",
                (attempts, when, reference),
            )

        await self._store.write(op)

    async def _resubmit(self, reference: str) -> None:
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE incoming_withdrawals SET submitted = 0, next_poll_at = ?"
                " WHERE reference = ?",
                (time.time() + self._poll_min, reference),
            )

        await self._store.write(op)

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
        app = fund_pb2.WithdrawalApplication.FromString(body)
        try:
            if not submitted:
                update = await self._centre.submit_withdrawal(
                    reference, app, timeout=DEFAULT_TIMEOUT
                )
            else:
                update = await self._centre.withdrawal_status(reference, timeout=DEFAULT_TIMEOUT)
        except BackendUnavailable as exc:
            log.warning("fund centre unavailable", reason=str(exc))
            await self._schedule(reference, attempts + 1)
            return
        except WithdrawalNotFound:
            # The centre does not know the reference (lost its state?): submitting
            # again is safe, the centre is idempotent by reference.
            log.warning("fund centre lost a withdrawal; submitting it again", reference=reference)
            await self._resubmit(reference)
            return
        except (BackendRejected, TranslationError) as exc:
            if submitted:
                log.error("fund centre status answer unusable", reason=str(exc))
                await self._schedule(reference, attempts + 1)
                return
            update = fund_pb2.WithdrawalStatusUpdate(
                status=S.REJECTED, status_reason=f"the fund centre refused the application: {exc}"
            )
        new = update.status if update.status in RANK else status
        trail = (
            [s for s in (S.UNDER_REVIEW, S.APPROVED, S.PAID) if RANK[status] < RANK[s] <= RANK[new]]
            if new != S.REJECTED
            else [S.REJECTED]
        )
        if new == status or (status in FINAL):
            trail = []
        now = time.time()
        changed = self._clock.now()
        next_poll = now + self._poll_min if new not in FINAL else now

        async def op(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE incoming_withdrawals SET status = ?, status_reason = ?,"
                " paid_amount_fen = ?,"
                " centre_reference = CASE WHEN ? != '' THEN ? ELSE centre_reference END,"
                " submitted = 1, attempts = ?, next_poll_at = ?, updated_at = ?"
                " WHERE reference = ?",
                (
                    new,
                    update.status_reason,
                    update.paid_amount_fen,
                    update.remote_reference,
                    update.remote_reference,
                    0 if trail else attempts + 1,
                    next_poll
                    if trail
                    else now + min(self._poll_max, self._poll_min * 2 ** min(attempts, 10)),
                    changed.isoformat(),
                    reference,
                ),
            )
            for step in trail:
                message = fund_pb2.WithdrawalStatusUpdate(
                    idempotency_key=key,
                    status=step,
                    remote_reference=reference,
                    status_reason=update.status_reason if step in FINAL else "",
                    paid_amount_fen=update.paid_amount_fen if step == S.PAID else 0,
                )
                message.changed_at.FromDatetime(changed)
                await StateStore.enqueue(
                    db,
                    OutboxItem(
                        0,
                        sender,
                        STATUS,
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

        await self._store.write(op)
        if trail and self._exchange.outbox is not None:
            self._exchange.outbox.wake()
        if trail:
            log.info(
                "withdrawal progressed",
                reference=reference,
                status=S.Name(fund_pb2.WithdrawalStatus.ValueType(new)),
            )


def _client() -> ClientSection:
    client = current_client.get()
    if client is None:  # pragma: no cover - the interceptor authenticates first
        raise GatewayError("no authenticated client")
    return client


class FundServicer(fund_pb2_grpc.FundServiceServicer):
    def __init__(self, exchange: FundExchange) -> None:
        self._exchange = exchange

    async def SubmitWithdrawal(  # noqa: N802 - gRPC method name
        self, request: fund_pb2.SubmitWithdrawalRequest, context: grpc.aio.ServicerContext
    ) -> fund_pb2.Withdrawal:
        return await self._exchange.submit(request, _client(), current_correlation_id.get())

    async def GetWithdrawal(  # noqa: N802 - gRPC method name
        self, request: fund_pb2.GetWithdrawalRequest, context: grpc.aio.ServicerContext
    ) -> fund_pb2.Withdrawal:
        return await self._exchange.get(request.case_id, _client())

    async def QueryFundAccount(  # noqa: N802 - gRPC method name
        self, request: fund_pb2.QueryFundAccountRequest, context: grpc.aio.ServicerContext
    ) -> fund_pb2.FundAccount:
        remaining = context.time_remaining()
        return await self._exchange.query_account(
            request,
            current_correlation_id.get(),
            DEFAULT_TIMEOUT if remaining is None else remaining,
        )
