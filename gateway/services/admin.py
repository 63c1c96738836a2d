"""The operator service of a node."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import grpc
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway import __version__
from gateway.config.models import FederationConfig
from gateway.core.clock import Clock
from gateway.core.errors import ConfigError, FailedPrecondition, InvalidArgument
from gateway.core.metrics import NodeMetrics
from gateway.federation.client import FederationClient
from gateway.federation.directory import Directory, MapEntry
from gateway.services import operations
from gateway.services.calls import current_client
from gateway.services.tracked import Flow
from gateway.storage.interfaces import NodeState, OperatorLog
from gateway.storage.records import PARKED, PENDING, ChainReport
from gateway.trust.truststore import TrustStore
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc

log = structlog.get_logger("yrd.admin")


class OperatedNode(Protocol):
    """What the operator service reads and steers of its node: the node passes
    itself, and this service needs nothing of the server layer."""

    @property
    def federation(self) -> FederationConfig: ...
    @property
    def federation_client(self) -> FederationClient: ...
    @property
    def trust(self) -> TrustStore: ...
    @property
    def message_log(self) -> OperatorLog: ...
    @property
    def state(self) -> NodeState: ...
    @property
    def metrics(self) -> NodeMetrics: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def config_file(self) -> Path | None: ...
    @property
    def flows(self) -> Mapping[str, Flow[Any, Any, Any, Any]]: ...

    def key_expiries(self) -> list[tuple[str, str, str, datetime]]:
        """(province, kind, key id or certificate name, not after) of every key
        and certificate this node and its peers' descriptors hold."""

    def head_keys(self, province: str, key_id: str, at: datetime) -> Ed25519PublicKey | None: ...

    @property
    def directory(self) -> Directory | None: ...

    async def reload_from_disk(self) -> None: ...


def service_map_message(entries: list[MapEntry]) -> admin_pb2.ServiceMap:
    """The service map as the admin RPC answers it (also what `directory list` prints)."""
    answer = admin_pb2.ServiceMap()
    for entry in entries:
        item = answer.provinces.add(
            province=entry.province,
            name=entry.name,
            state=entry.state,
            last_refusal=entry.last_refusal,
        )
        facts = entry.facts
        if facts is None:
            continue
        item.serial = facts.serial
        item.not_after.FromDatetime(facts.not_after)
        item.endpoints.extend(facts.endpoints)
        item.operator_contact = facts.contact
        for offered in facts.offers:
            service = item.services.add(service=offered.service, version=offered.version)
            service.since.FromDatetime(offered.since)
    return answer


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, node: OperatedNode) -> None:
        self._node = node

    async def GetNodeInfo(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.GetNodeInfoRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.NodeInfo:
        node = self._node
        federation, trust = node.federation, node.trust  # one config for the whole answer
        me = federation.me
        info = admin_pb2.NodeInfo(
            province=me.code,
            name=me.province.name,
            version=__version__,
            signing_key_id=me.signing.key_id,
            message_log_rows=await node.message_log.count(),
        )
        info.started_at.FromDatetime(node.started_at)
        entries = {peer.code: peer for peer in me.peers}
        for code in federation.peer_codes:
            facts = federation.peer(code)
            info.peers.append(
                admin_pb2.Peer(
                    province=code,
                    name=facts.name if facts is not None else entries[code].name,
                    endpoint=facts.peer_endpoint if facts is not None else entries[code].endpoint,
                    breaker_state=node.federation_client.breaker_state(code).value,
                    key_ids=trust.signing_key_ids(code),
                )
            )
        directory = node.directory
        reasons = directory.degraded_reasons() if directory is not None else []
        info.degraded = bool(reasons)
        info.degraded_reasons.extend(reasons)
        return info

    async def GetServiceMap(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.GetServiceMapRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ServiceMap:
        directory = self._node.directory
        if directory is None:
            raise FailedPrecondition("this node runs without a directory (no [tls])")
        return service_map_message(directory.service_map())

    async def VerifyMessageLog(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.VerifyMessageLogRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.VerifyMessageLogResponse:
        report = await verify_message_log(self._node)
        return admin_pb2.VerifyMessageLogResponse(
            intact=report.intact,
            rows_checked=report.rows_checked,
            first_bad_seq=report.first_bad_seq,
            detail=report.detail,
            head_hash=report.head_hash.hex(),
        )

    async def ReloadConfig(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReloadConfigResponse:
        try:
            await self._node.reload_from_disk()
        except ConfigError as exc:
            # Refused: the old config stays in force. Say why, file by file.
            return admin_pb2.ReloadConfigResponse(reloaded=False, detail=str(exc))
        return admin_pb2.ReloadConfigResponse(
            reloaded=True,
            detail=(
                f"config of {self._node.federation.own} in force, "
                f"{len(self._node.federation.peer_codes)} peers named"
            ),
        )

    def _peer_code(self, field: str, value: str) -> None:
        """ "" or the code of a peer of this node."""
        peers = self._node.federation.peer_codes
        if value and value not in peers:
            raise InvalidArgument(
                field, f'"" or the GB/T 2260 code of a peer: one of {", ".join(sorted(peers))}'
            )

    # ---- peers ------------------------------------------------------------------------

    async def ListPeers(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.ListPeersRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListPeersResponse:
        node = self._node
        federation = node.federation
        me = federation.me
        now = node.clock.now()
        keys = node.key_expiries()
        held = {}
        if node.directory is not None:
            held = {entry.province: entry.state for entry in node.directory.service_map()}
        counts: dict[tuple[str, str], int] = {}
        for peer, state, items, _ in await node.state.outbox_by_peer():
            counts[peer, state] = items
        entries = {peer.code: peer for peer in me.peers}
        answer = admin_pb2.ListPeersResponse()
        for code in federation.peer_codes:
            facts = federation.peer(code)
            entry = entries.get(code)
            health = node.federation_client.peer_health(code)
            status = answer.peers.add(
                province=code,
                name=facts.name if facts is not None else (entry.name if entry else ""),
                breaker_state=node.federation_client.breaker_state(code).value,
                reachable=health.reachable,
                last_error=health.last_error,
                descriptor_state=held.get(code, "held" if facts is not None else "missing"),
                pending=counts.get((code, PENDING), 0),
                parked=counts.get((code, PARKED), 0),
            )
            if facts is not None:
                status.endpoints.extend(facts.endpoints)
            elif entry is not None and entry.endpoint:
                status.endpoints.append(entry.endpoint)
            if health.last_success is not None:
                status.last_success.FromDatetime(health.last_success)
            status.keys.extend(_expiry(k, now) for k in keys if k[0] == code)
        answer.own_keys.extend(_expiry(k, now) for k in keys if k[0] == me.code)
        return answer

    # ---- exchanges --------------------------------------------------------------------

    async def ListExchanges(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.ListExchangesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListExchangesResponse:
        if request.state not in ("", *operations.STATES):
            raise InvalidArgument("state", 'one of "", pending, parked, reconciliation')
        self._peer_code("peer", request.peer)
        limit = _limit("limit", request.limit, default=100)
        found, truncated = await operations.waiting_exchanges(
            self._node.state,
            self._node.flows,
            state=request.state,
            peer=request.peer,
            min_age=request.min_age_seconds,
            limit=limit,
        )
        answer = admin_pb2.ListExchangesResponse(truncated=truncated)
        answer.exchanges.extend(_exchange(w) for w in found)
        return answer

    async def RetryExchange(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.SteerExchangeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SteerExchangeResponse:
        return await self._steer("retry", request)

    async def ParkExchange(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.SteerExchangeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SteerExchangeResponse:
        return await self._steer("park", request)

    async def _steer(
        self, action: str, request: admin_pb2.SteerExchangeRequest
    ) -> admin_pb2.SteerExchangeResponse:
        operator = _acting(request.reference, request.operator, request.reason)
        node = self._node
        steered = await operations.steer_exchange(
            node.state,
            node.message_log,
            action=action,
            reference=request.reference,
            operator=operator,
            reason=request.reason,
        )
        log.warning(
            f"operator {action}",
            reference=request.reference,
            items=len(steered.changed),
            # Who acted (a person's name) is in the message log row, not here: the
            # call's own log line names the admin client.
            log_seq=steered.log_seq,
        )
        answer = admin_pb2.SteerExchangeResponse(
            changed=len(steered.changed),
            log_seq=steered.log_seq,
            detail=(
                f"{action}: {len(steered.changed)} item(s) of {request.reference} "
                f"{'pending and due now' if action == 'retry' else 'parked'}; "
                f"message log row {steered.log_seq}"
            ),
        )
        return await self._with_exchanges(answer, request.reference)

    async def ResolveExchange(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.ResolveExchangeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SteerExchangeResponse:
        operator = _acting(request.reference, request.operator, request.reason)
        node = self._node
        resolved = await operations.resolve_exchange(
            node.state,
            node.message_log,
            node.flows,
            reference=request.reference,
            paid=request.paid,
            operator=operator,
            reason=request.reason,
            clock=node.clock,
        )
        flow = resolved.flow
        if request.paid:
            detail = (
                f"{request.reference}: {flow.status_name(resolved.status)} recorded; status"
                f" updates queued for {resolved.sender}; message log row {resolved.log_seq}"
            )
        else:
            detail = (
                f"{request.reference}: out of reconciliation; submitted to the"
                f" {flow.backend_name.replace('_', ' ')} again; message log row {resolved.log_seq}"
            )
        answer = admin_pb2.SteerExchangeResponse(changed=1, log_seq=resolved.log_seq, detail=detail)
        return await self._with_exchanges(answer, request.reference)

    async def _with_exchanges(
        self, answer: admin_pb2.SteerExchangeResponse, reference: str
    ) -> admin_pb2.SteerExchangeResponse:
        """``answer`` with the exchanges of ``reference`` as they are after the action."""
        node = self._node
        answer.exchanges.extend(
            _exchange(w) for w in await operations.exchanges_of(node.state, node.flows, reference)
        )
        return answer

    # ---- the message log ---------------------------------------------------------------

    async def SearchLog(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.SearchLogRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SearchLogResponse:
        if not _CORRELATION_ID.fullmatch(request.correlation_id):
            raise InvalidArgument("correlation_id", "1..128 printable ASCII characters")
        limit = _limit("limit", request.limit, default=200)
        node = self._node
        path = await operations.search_log(
            node.state, node.message_log, node.flows, request.correlation_id, limit=limit
        )
        answer = admin_pb2.SearchLogResponse(truncated=path.truncated)
        for line in path.lines:
            entry = answer.entries.add(
                seq=line.seq,
                direction=line.direction,
                kind=line.kind,
                message_id=line.message_id,
                peer=line.peer,
                service=line.service,
                summary=line.summary,
            )
            logged = _parse_time(line.logged_at)
            if logged is not None:
                entry.logged_at.FromDatetime(logged)
        answer.exchanges.extend(_exchange(w) for w in path.waiting)
        for case in path.cases:
            summary = answer.cases.add(
                reference=case.reference,
                domain=case.domain,
                side=case.side,
                peer=case.peer,
                status=operations.status_name(node.flows, case.domain, case.status),
            )
            updated = _parse_time(case.updated_at)
            if updated is not None:
                summary.updated_at.FromDatetime(updated)
        return answer

    # ---- diagnostics ------------------------------------------------------------------

    async def RunDiagnostics(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.RunDiagnosticsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Diagnostics:
        node = self._node
        me = node.federation.me
        source = node.config_file or me.source
        # Reading files and running the adapter's vectors block: off the event loop.
        return await asyncio.to_thread(_diagnostics, Path(source), me.code, me.adapter)


async def verify_message_log(node: OperatedNode) -> ChainReport:
    """Walk the node's message log (its chain and signed heads) and set the
    metrics operators alert on: yrd_message_log_intact and
    yrd_message_log_verified_timestamp_seconds."""
    report = await node.message_log.verify(node.head_keys)
    node.metrics.log_intact.set(1 if report.intact else 0)
    node.metrics.log_verified_at.set(time.time())
    if not report.intact:
        log.error("message log broken", first_bad_seq=report.first_bad_seq, detail=report.detail)
    return report


#: A case id, reference or message id: printable ASCII without spaces.
_REFERENCE = re.compile(r"[\x21-\x7e]{1,128}")
#: A correlation id as envelope headers carry it.
_CORRELATION_ID = re.compile(r"[\x20-\x7e]{1,128}")
_MAX_LIMIT = 1000
_MAX_REASON = 256


def _reference(field: str, value: str) -> None:
    if not _REFERENCE.fullmatch(value):
        raise InvalidArgument(field, "1..128 printable ASCII characters without spaces")


def _operator_identity(given: str) -> str:
    """``"<operator> (client <id>)"``: who acts, as the message log records it."""
    operator = given.strip()
    if not 1 <= len(operator) <= 64 or not operator.isprintable():
        raise InvalidArgument("operator", "the operator's name, 1..64 printable characters")
    client = current_client.get()
    return f"{operator} (client {client.id if client is not None else 'unknown'})"


def _reason(value: str) -> None:
    if len(value) > _MAX_REASON or not value.isprintable():
        raise InvalidArgument("reason", f"at most {_MAX_REASON} printable characters")


def _acting(reference: str, operator: str, reason: str) -> str:
    """The operator's identity for an action on ``reference``, once the three
    fields every action takes are checked (INVALID_ARGUMENT naming the field)."""
    _reference("reference", reference)
    identity = _operator_identity(operator)
    _reason(reason)
    return identity


def _limit(field: str, value: int, *, default: int) -> int:
    if value > _MAX_LIMIT:
        raise InvalidArgument(field, f"0 (for {default}) up to {_MAX_LIMIT}")
    return value or default


def _parse_time(iso: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _expiry(key: tuple[str, str, str, datetime], now: datetime) -> admin_pb2.KeyExpiry:
    province, kind, key_id, not_after = key
    expiry = admin_pb2.KeyExpiry(
        province=province,
        kind=kind,
        key_id=key_id,
        days_left=round((not_after - now).total_seconds() / 86400, 3),
    )
    expiry.not_after.FromDatetime(not_after)
    return expiry


def _exchange(waiting: operations.Waiting) -> admin_pb2.Exchange:
    exchange = admin_pb2.Exchange(
        reference=waiting.reference,
        message_id=waiting.message_id,
        peer=waiting.peer,
        service=waiting.service,
        state=waiting.state,
        attempts=waiting.attempts,
        last_error=waiting.last_error,
        correlation_id=waiting.correlation_id,
        case_status=waiting.case_status,
        domain=waiting.domain,
    )
    exchange.created_at.FromDatetime(operations.iso(waiting.created_at))
    if waiting.next_attempt_at is not None:
        exchange.next_attempt_at.FromDatetime(operations.iso(waiting.next_attempt_at))
    return exchange


def _diagnostics(config_file: Path, code: str, adapter: Any) -> admin_pb2.Diagnostics:
    """`config check` of the node's config file and its adapter's golden vectors."""
    from adapters import conformance
    from gateway.config.loading import check_files

    problems = check_files([config_file])
    answer = admin_pb2.Diagnostics(config_ok=not problems)
    answer.config_problems.extend(problems)
    report = conformance.check_province(
        adapter,
        config=config_file,
        code=code,
        vectors=config_file.resolve().parent / "golden",
        examples=DIAGNOSTIC_EXAMPLES,
    )
    answer.adapter_ok = report.passed
    answer.adapter_report = report.render()
    return answer


#: Round-trip examples per message the diagnostics run: none. The golden vectors
#: and the plugin are checked; generated round trips are `adapter test`'s (they
#: need hypothesis, a development extra, and would run it on a thread of the node).
DIAGNOSTIC_EXAMPLES = 0
