"""The operator service of a node."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway import __version__
from gateway.config.models import FederationConfig
from gateway.core.errors import ConfigError, FailedPrecondition
from gateway.federation.client import FederationClient
from gateway.federation.directory import Directory, MapEntry
from gateway.storage.interfaces import MessageLogReader
from gateway.trust.truststore import TrustStore
from yrd.admin.v1 import admin_pb2, admin_pb2_grpc


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
    def message_log(self) -> MessageLogReader: ...
    @property
    def started_at(self) -> datetime: ...

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
        report = await self._node.message_log.verify(self._node.head_keys)
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
