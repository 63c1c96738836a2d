"""Every field of every public request, of every type, with random hostile
values (extreme integers, undefined enums, out-of-range timestamps, NaN,
long repeated fields, large bytes, nested messages), sent to a running node
as a hotel and as an office: each call is answered with a status the caller
can act on, never INTERNAL or UNKNOWN, and the node keeps serving.

test_public_input.py goes field by field through the string fields; this
test draws whole requests at random (a fixed seed, so a failure repeats).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import SH, ZJ, Wallet
from tests.integration.test_identity_exchange import verify
from yrd.admin.v1 import admin_pb2
from yrd.case.v1 import case_pb2
from yrd.certificate.v1 import certificate_pb2
from yrd.fund.v1 import fund_pb2
from yrd.identity.v1 import identity_pb2

pytestmark = pytest.mark.timeout(240)

SEED = 20261202
#: Requests per method.
PER_METHOD = 25
CALLERS = (
    (("authorization", f"Bearer dev-hotel-{SH}"),),
    (("authorization", f"Bearer dev-office-{SH}"),),
)
STRINGS = (
    "",
    "x",
    SH,
    "320000",
    "11010519491231002X",
    "a" * 300,
    "\x00\x01",
    "名字",
    "-1",
    "FW-310000-0123456789abcdef0123",
    "2026-01-01T00:00:00Z",
)
INT32 = (0, 1, -1, 2**31 - 1, -(2**31))
INT64 = (*INT32, 2**63 - 1, -(2**63))
UINT32 = (0, 1, 2**32 - 1)
UINT64 = (0, 1, 2**64 - 1)
FLOATS = (0.0, -1.0, float("nan"), float("inf"), 1e308)
SCALARS: dict[int, tuple[Any, ...]] = {
    FieldDescriptor.TYPE_STRING: STRINGS,
    FieldDescriptor.TYPE_BYTES: (b"", b"\x00" * 10, b"x" * 70_000),
    FieldDescriptor.TYPE_BOOL: (False, True),
    FieldDescriptor.TYPE_ENUM: (0, 1, 2, 99, -5),
    FieldDescriptor.TYPE_DOUBLE: FLOATS,
    FieldDescriptor.TYPE_FLOAT: FLOATS,
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
}
#: Statuses a caller can act on; anything else is a node fault.
ACTIONABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # a request over the message size, or the rate limit
    grpc.StatusCode.UNAVAILABLE,  # a peer or back-end the request named is not there
}


def _fill(message: Message, draw: random.Random, depth: int = 0) -> Message:
    for field in message.DESCRIPTOR.fields:
        if draw.random() < 0.4:
            continue
        count = draw.choice((1, 2, 150)) if field.is_repeated else 1
        for _ in range(count):
            _set(message, field, draw, depth)
    return message


def _set(message: Message, field: FieldDescriptor, draw: random.Random, depth: int) -> None:
    target = getattr(message, field.name)
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        value = draw.choice(SCALARS[field.type])
        try:
            if field.is_repeated:
                target.append(value)
            else:
                setattr(message, field.name, value)
        except (TypeError, ValueError):  # an enum value a closed enum refuses
            pass
        return
    if field.message_type.GetOptions().map_entry:
        key, value = (draw.choice(STRINGS) for _ in range(2))
        target[key] = value
        return
    if depth >= 3:
        return
    sub = target.add() if field.is_repeated else target
    if field.message_type.full_name == "google.protobuf.Timestamp":
        sub.seconds = draw.choice((0, -1, 10**12, -(10**12), 1_790_000_000))
        sub.nanos = draw.choice((0, 999_999_999, -1, 10**9 + 5))
    else:
        _fill(sub, draw, depth + 1)


async def test_random_requests_to_every_public_method_never_fault_the_node(
    federation: LocalFederation, wallet: Wallet
) -> None:
    draw = random.Random(SEED)
    channel = federation.channel(SH)
    seen: Counter[tuple[str, str]] = Counter()
    faults: list[str] = []
    methods = 0
    for module in (identity_pb2, fund_pb2, certificate_pb2, case_pb2, admin_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.client_streaming or method.server_streaming:
                    continue
                methods += 1
                request_type = GetMessageClass(method.input_type)
                call = channel.unary_unary(
                    f"/{service.full_name}/{method.name}",
                    request_serializer=request_type.SerializeToString,
                    response_deserializer=GetMessageClass(method.output_type).FromString,
                )
                for _ in range(PER_METHOD):
                    request = _fill(request_type(), draw)
                    try:
                        await call(request, metadata=draw.choice(CALLERS), timeout=10)
                        code = grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as error:
                        code = error.code()
                        if len((error.details() or "").encode()) > 1024:
                            faults.append(f"{method.full_name}: a status message over 1 KiB")
                    seen[(method.name, code.name)] += 1
                    if code not in ACTIONABLE:
                        faults.append(f"{method.full_name}: {code.name}")
    assert not faults, faults
    assert methods >= 19  # identity, fund, certificate, case and admin
    assert sum(seen.values()) == methods * PER_METHOD
    # The node still serves a real guest.
    response = await verify(federation, SH, await wallet.fresh_qr(ZJ))
    assert response.verdict == identity_pb2.VALID
