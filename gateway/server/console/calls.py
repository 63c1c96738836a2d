"""The console's only way into the node: its own AdminService over gRPC.

Loopback TLS with the node's CA, the operator's token as ``authorization:
Bearer …``: the node's interceptor authenticates and authorises every read and
action exactly as for ``yrd-gateway admin``. gRPC errors become
:class:`NodeRefused` here, in one place.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message

from gateway.federation.client import CHANNEL_OPTIONS
from yrd.admin.v1 import admin_pb2_grpc

#: Deadline of every call the console makes (seconds); diagnostics run the
#: adapter's golden vectors, hence not shorter.
CALL_DEADLINE = 20.0

#: Codes that mean the token no longer opens the node: the session ends.
SIGNED_OUT_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class NodeRefused(Exception):
    """The node answered a console call with an error status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @property
    def signed_out(self) -> bool:
        return self.code in SIGNED_OUT_CODES


class AdminCalls:
    """A channel to the node's client endpoint and its AdminService stub."""

    def __init__(self, target: str, ca: bytes, *, deadline: float = CALL_DEADLINE) -> None:
        self.target = target
        self.deadline = deadline
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        self._channel = grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    async def call(self, method: str, request: Message, token: str) -> Any:
        """``AdminService/<method>(request)`` with ``token``; NodeRefused on an error."""
        rpc = getattr(self._stub, method)
        try:
            return await rpc(
                request,
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=self.deadline,
            )
        except grpc.aio.AioRpcError as exc:
            raise NodeRefused(exc.code(), exc.details() or "") from None

    async def close(self) -> None:
        await self._channel.close()
