"""What an operator reads and steers of the exchanges waiting on a node: the
outbox's items (pending, parked), received money-moving cases in
reconciliation, and one exchange's path through the message log.

Shared by the admin RPCs (:mod:`gateway.services.admin`, on the running node's
own stores) and ``yrd-gateway outbox`` (on a stopped node's stores). Every
change is recorded in the message log with the operator's identity before the
caller is answered. Nothing here returns personal data: no payload, no
application, no envelope leaves this module; a logged envelope is read only for
its receipt's decision or a status update's status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError

from gateway.core.clock import Clock
from gateway.core.errors import FailedPrecondition, NotFound, status_from_int
from gateway.services.tracked import Flow, pending_reconciliation, resolve_reconciliation
from gateway.storage.interfaces import NodeState, OperatorLog
from gateway.storage.records import PARKED, PENDING, CaseSummary, LogRow, OutboxEntry
from yrd.federation.v1 import federation_pb2

#: The tracked exchanges of a node by domain ("withdrawal", "case").
Flows = Mapping[str, Flow[Any, Any, Any, Any]]

#: Where an exchange waits: an outbox item pending or parked, a received case in
#: reconciliation.
RECONCILIATION = "reconciliation"
STATES = (PENDING, PARKED, RECONCILIATION)
#: Operator actions on outbox items: (the state they act on, the state they leave).
STEERING = {"retry": (PARKED, PENDING), "park": (PENDING, PARKED)}


@dataclass(frozen=True)
class Waiting:
    """An exchange waiting on this node, as an operator sees it (no personal data)."""

    reference: str
    #: The outbox item's message id ("" for a case in reconciliation).
    message_id: str
    peer: str
    service: str
    state: str
    attempts: int
    #: Unix seconds.
    created_at: float
    #: Unix seconds; None when parked or in reconciliation.
    next_attempt_at: float | None
    last_error: str
    correlation_id: str
    #: The case's status by its enum name ("" when unknown).
    case_status: str
    #: "withdrawal", "case", or "" when the item belongs to neither.
    domain: str


def _seconds(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0


def status_name(flows: Flows, domain: str, status: int) -> str:
    flow = flows.get(domain)
    if flow is None:
        return ""
    try:
        return flow.status_name(status)
    except ValueError:  # a status this release does not know
        return str(status)


async def _cases_of(store: NodeState, references: set[str]) -> dict[str, CaseSummary]:
    return {c.reference: c for c in await store.case_summaries(references=sorted(references))}


async def _as_waiting(store: NodeState, flows: Flows, entries: list[OutboxEntry]) -> list[Waiting]:
    cases = await _cases_of(store, {e.subject for e in entries}) if entries else {}
    found = []
    for e in entries:
        case = cases.get(e.subject)
        found.append(
            Waiting(
                reference=e.subject,
                message_id=e.message_id,
                peer=e.peer,
                service=e.service,
                state=e.state,
                attempts=e.attempts,
                created_at=e.created_at,
                next_attempt_at=None if e.state == PARKED else e.next_attempt_at,
                last_error=e.last_error,
                correlation_id=e.correlation_id,
                case_status="" if case is None else status_name(flows, case.domain, case.status),
                domain="" if case is None else case.domain,
            )
        )
    return found


async def waiting_exchanges(
    store: NodeState,
    flows: Flows,
    *,
    state: str = "",
    peer: str = "",
    min_age: float = 0.0,
    limit: int = 100,
    now: float | None = None,
) -> tuple[list[Waiting], bool]:
    """Exchanges waiting on this node, oldest first: outbox items (``state``
    pending or parked) and received cases in reconciliation, of one ``peer``
    (the receiver of an item, the sender of a case) if given, waiting at least
    ``min_age`` seconds; at most ``limit``, and whether more matched."""
    now = time.time() if now is None else now
    found: list[Waiting] = []
    if state in ("", PENDING, PARKED):
        found += await _as_waiting(store, flows, await store.outbox_entries(state=state or None))
    if state in ("", RECONCILIATION):
        for case in await store.reconciliation_cases():
            flow = flows.get(case.domain)
            found.append(
                Waiting(
                    reference=case.reference,
                    message_id="",
                    peer=case.sender,
                    service="" if flow is None else flow.deliver_service,
                    state=RECONCILIATION,
                    attempts=0,
                    created_at=_seconds(case.since),
                    next_attempt_at=None,
                    last_error="",
                    correlation_id=case.correlation_id,
                    case_status=status_name(flows, case.domain, case.status),
                    domain=case.domain,
                )
            )
    chosen = [w for w in found if (not peer or w.peer == peer) and now - w.created_at >= min_age]
    chosen.sort(key=lambda w: (w.created_at, w.reference))
    return chosen[:limit], len(chosen) > limit


async def exchanges_of(store: NodeState, flows: Flows, reference: str) -> list[Waiting]:
    """The exchanges waiting under ``reference`` (a case id or reference, or an
    outbox item's message id)."""
    found = await _as_waiting(store, flows, await store.outbox_entries(reference=reference))
    waiting, _ = await waiting_exchanges(store, flows, state=RECONCILIATION, limit=10**9)
    return found + [w for w in waiting if w.reference == reference]


@dataclass(frozen=True)
class Steered:
    """What an operator's retry or park changed."""

    #: The outbox items changed, as they were before.
    changed: list[OutboxEntry]
    #: Sequence number of the last message-log row recording the action.
    log_seq: int


async def steer_exchange(
    store: NodeState,
    log: OperatorLog,
    *,
    action: str,
    reference: str,
    operator: str,
    reason: str = "",
) -> Steered:
    """``retry`` (parked items pending and due now) or ``park`` (pending items
    parked) the outbox items of ``reference``; each change is a row of the
    message log naming ``operator``. NotFound when no item is under
    ``reference``, FailedPrecondition when none is in the state acted on."""
    source, target = STEERING[action]
    entries = await store.outbox_entries(reference=reference)
    if not entries:
        raise NotFound("reference: no outbox item under this reference")
    changed, seq = [], 0
    for entry in entries:
        if entry.state != source:
            continue
        if await store.set_outbox_state(entry.id, target, now=time.time()):
            seq = await log.append_operator_action(
                action=action,
                subject=entry.message_id,
                operator=operator,
                reason=reason or f"{entry.service} of {entry.subject} to {entry.peer}",
                correlation_id=entry.correlation_id,
            )
            changed.append(entry)
    if not changed:
        raise FailedPrecondition(f"reference: no {source} outbox item under this reference")
    return Steered(changed, seq)


@dataclass(frozen=True)
class Resolved:
    """A case in reconciliation an operator resolved."""

    flow: Flow[Any, Any, Any, Any]
    sender: str
    #: The case's status afterwards.
    status: int
    log_seq: int


async def resolve_exchange(
    store: NodeState,
    log: OperatorLog,
    flows: Flows,
    *,
    reference: str,
    paid: bool,
    operator: str,
    reason: str,
    clock: Clock,
) -> Resolved:
    """Resolve a received case in reconciliation from its back-end's records:
    the operator's statement is logged first (what follows rests on it), then
    the case is settled PAID (the sender told) or submitted again."""
    case = await pending_reconciliation(store, reference)
    flow = flows.get(case.domain)
    if flow is None:
        raise FailedPrecondition(
            f"reference: a {case.domain} case, which this node does not handle"
        )
    if paid and not flow.moves_money:
        raise FailedPrecondition(f"paid: a {flow.domain} moves no money; resolve it as not paid")
    stored = await store.incoming_case(reference)
    seq = await log.append_operator_action(
        action="resolve_paid" if paid else "resolve_not_paid",
        subject=reference,
        operator=operator,
        reason=reason,
        correlation_id="" if stored is None else stored.correlation_id,
    )
    status = await resolve_reconciliation(store, flow, reference, paid=paid, clock=clock)
    return Resolved(flow, case.sender, status, seq)


# ---- one exchange's path through the message log ---------------------------------------


@dataclass(frozen=True)
class LogLine:
    """A message-log row as an operator's search shows it: no envelope."""

    seq: int
    logged_at: str
    #: "out", "in" or "operator".
    direction: str
    #: "request", "response" or "operator".
    kind: str
    message_id: str
    peer: str
    service: str
    summary: str


#: Status updates whose status a search shows (by its enum value name).
_STATUS_UPDATES = {
    "yrd.fund.v1.WithdrawalStatusUpdate": "withdrawal",
    "yrd.case.v1.CaseStatusUpdate": "case",
}


def summarise(row: LogRow, flows: Flows) -> LogLine:
    """What a row says, free of personal data: a receipt's decision, a status
    update's status, an operator's action and who acted, else the payload type."""
    if row.kind == "operator":
        return LogLine(
            row.seq, row.logged_at, "operator", "operator", row.message_id, "",
            row.service.removeprefix("operator."), _operator_summary(row.envelope),
        )  # fmt: skip
    try:
        signed = federation_pb2.SignedEnvelope.FromString(row.envelope)
        header = federation_pb2.EnvelopeHeader.FromString(signed.header)
    except DecodeError:
        summary = "unreadable envelope"
    else:
        summary = _envelope_summary(row.kind, header, signed.payload, flows)
    return LogLine(
        row.seq, row.logged_at, row.direction, row.kind, row.message_id, row.peer, row.service,
        summary,
    )  # fmt: skip


def _envelope_summary(
    kind: str, header: federation_pb2.EnvelopeHeader, payload: bytes, flows: Flows
) -> str:
    if kind == "response":
        if header.status_code:
            return f"refused: {status_from_int(header.status_code).name}"
        if header.payload_type == "yrd.federation.v1.DeliveryAck":
            try:
                ack = federation_pb2.DeliveryAck.FromString(payload)
            except DecodeError:
                return "accepted"
            return "accepted (duplicate)" if ack.duplicate else "accepted"
        return "answered"
    domain = _STATUS_UPDATES.get(header.payload_type)
    if domain is not None and domain in flows:
        flow = flows[domain]
        try:
            update = flow.update_type.FromString(payload)
        except DecodeError:
            return "status update (unreadable)"
        return status_name(flows, domain, int(update.status))
    return header.payload_type.rsplit(".", 1)[-1]


def _operator_summary(document: bytes) -> str:
    try:
        statement = json.loads(document)["statement"]
        return f"{statement['action']} by {statement['operator']}"
    except (ValueError, KeyError, TypeError):
        return "operator action"


@dataclass(frozen=True)
class Path:
    """One exchange's path through this node, by correlation id."""

    lines: list[LogLine]
    waiting: list[Waiting]
    cases: list[CaseSummary]
    truncated: bool


async def search_log(
    store: NodeState, log: OperatorLog, flows: Flows, correlation_id: str, *, limit: int = 200
) -> Path:
    """Message-log rows (summarised), exchanges still waiting and cases with this
    correlation id."""
    rows = await log.rows_by_correlation(correlation_id, limit + 1)
    lines = [summarise(row, flows) for row in rows[:limit]]
    waiting = await _as_waiting(
        store, flows, await store.outbox_entries(correlation_id=correlation_id)
    )
    cases = await store.case_summaries(correlation_id=correlation_id)
    reconciled = [
        w
        for w in (await waiting_exchanges(store, flows, state=RECONCILIATION, limit=10**9))[0]
        if w.correlation_id == correlation_id
    ]
    return Path(lines, waiting + reconciled, cases, len(rows) > limit)


def iso(seconds: float) -> datetime:
    """Unix seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)
