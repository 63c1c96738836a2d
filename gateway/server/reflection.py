"""Server reflection under both names: ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection serves only ``grpc.reflection.v1alpha.ServerReflection``;
current tools (grpcurl, grpcui, Postman) ask for ``grpc.reflection.v1`` first.
The two protos have the same shape — the same messages with the same field
numbers and one bidirectional method — so a v1 request is read with the
v1alpha message classes and answered by the same servicer over the same
descriptor pool. The v1 proto's own descriptor is added to the pool (derived
from the v1alpha one, only the package renamed) so that a tool can describe
the v1 service it lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = ".grpc.reflection.v1alpha."
_V1_PACKAGE = ".grpc.reflection.v1."


class HandlerRegistry(Protocol):
    """Where handlers are added: a grpc.aio.Server, or a node's view of it that
    takes generic handlers only (``gateway.server.node._GenericHandlersOnly``)."""

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler], /) -> None: ...

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler], /
    ) -> None: ...


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` in ``pool`` unless it is there."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(_V1ALPHA_PACKAGE):
                field.type_name = _V1_PACKAGE + field.type_name[len(_V1ALPHA_PACKAGE) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = _V1_PACKAGE + method.input_type[len(_V1ALPHA_PACKAGE) :]
            method.output_type = _V1_PACKAGE + method.output_type[len(_V1ALPHA_PACKAGE) :]
    pool.Add(proto)


def enable_server_reflection(service_names: Iterable[str], server: HandlerRegistry) -> None:
    """Serve reflection for ``service_names`` (and both reflection services) on ``server``."""
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    names = (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
