"""A hostile peer over mutual TLS (issue 12, items 1-3): classes of bad envelopes
sent to a running node by a client holding a real peer's signing key and TLS
certificate (Shanghai's), against Zhejiang's federation endpoint.

For each class: the status every input gets (a bare gRPC error for an envelope
that cannot be trusted, a signed decision for a trusted envelope with a bad
request; never INTERNAL or UNKNOWN), then the node still serves a real
VerifyIdentity, its answer memory and nonce cache stay within their byte
bounds, no log line exceeds MAX_LOG_LINE, and both message logs verify.

The number of inputs per class is printed (``-s``) and kept in SENT.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from stdnum.cn import ric
from structlog.testing import capture_logs

from gateway.config.loading import parse_province_file
from gateway.config.models import FEDERATION_SERVICES
from gateway.core import crypto
from gateway.core.clock import SystemClock
from gateway.core.logs import mask_personal_data
from gateway.federation.server import REUSED_MESSAGE_ID
from gateway.testing.localfed import LocalFederation
from gateway.testing.procfed import ProcessFederation
from gateway.trust.envelope import HEADER_BOUNDS, EnvelopeSigner
from tests.integration.conftest import JS, SH, ZJ, Wallet, fund_holder, payee_account
from tests.integration.test_fuzz import mtls
from yrd.case.v1 import case_pb2
from yrd.certificate.v1 import certificate_pb2
from yrd.common.v1 import common_pb2
from yrd.federation.v1 import federation_pb2
from yrd.fund.v1 import fund_pb2
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc
from yrd_simulators.residents import synthetic_residents

pytestmark = pytest.mark.timeout(300)

Header = federation_pb2.EnvelopeHeader
Signed = federation_pb2.SignedEnvelope
S = grpc.StatusCode

#: No log line (rendered as JSON) may be longer than this, whatever a peer sends.
MAX_LOG_LINE = 4096
#: Codes of a refused untrusted envelope (bare gRPC errors).
BARE = {
    S.INVALID_ARGUMENT,
    S.UNAUTHENTICATED,
    S.PERMISSION_DENIED,
    S.FAILED_PRECONDITION,
    S.ALREADY_EXISTS,
    S.RESOURCE_EXHAUSTED,
}
#: Signed answers a request may get: success or a decision about it.
DECIDED = {
    S.OK,
    S.INVALID_ARGUMENT,
    S.PERMISSION_DENIED,
    S.FAILED_PRECONDITION,
    S.ALREADY_EXISTS,
    S.NOT_FOUND,
    S.OUT_OF_RANGE,
}
#: Inputs sent per class (printed, and quoted in the issue's closing note).
SENT: dict[str, int] = {}


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    signed: bool
    message: str
    payload: bytes = b""
    payload_type: str = ""


def _code(value: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == value)


class Peer:
    """Shanghai's node as a hostile peer: its real key and TLS certificate."""

    def __init__(self, federation: LocalFederation, channel: grpc.aio.Channel) -> None:
        self.federation = federation
        self._call = channel.unary_unary(
            "/yrd.federation.v1.FederationService/Exchange",
            request_serializer=None,
            response_deserializer=None,
        )
        self.sent = 0

    @property
    def signer(self) -> EnvelopeSigner:
        return self.federation.node(SH).signer

    def seal(
        self,
        service: str,
        payload: Message,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Signed:
        key = idempotency_key
        if key is None:
            key = str(getattr(payload, "idempotency_key", ""))
        return self.signer.seal(
            receiver=ZJ,
            service=service,
            payload=payload,
            correlation_id=correlation_id or str(uuid.uuid4()),
            message_id=message_id,
            idempotency_key=key,
        )

    def reseal(
        self, signed: Signed, change: Callable[[Header], None], payload: bytes | None = None
    ) -> Signed:
        """Change the header (and payload) and sign it again with the real key."""
        header = Header.FromString(signed.header)
        change(header)
        if payload is not None:
            header.payload_digest = crypto.sha256(payload)
        header.nonce = random.randbytes(16) if len(header.nonce) == 16 else header.nonce
        data = header.SerializeToString()
        return Signed(
            header=data,
            payload=signed.payload if payload is None else payload,
            signature=self.signer.current()[1].sign(data),
        )

    async def send(self, envelope: Signed | bytes) -> Answer:
        data = envelope if isinstance(envelope, bytes) else envelope.SerializeToString()
        self.sent += 1
        return await self._answer(self._call, data)

    @classmethod
    async def exchange(cls, channel: grpc.aio.Channel, data: bytes) -> Answer:
        """One call on a channel of its own."""
        call = channel.unary_unary(
            "/yrd.federation.v1.FederationService/Exchange",
            request_serializer=None,
            response_deserializer=None,
        )
        return await cls._answer(call, data)

    @staticmethod
    async def _answer(call: Any, data: bytes) -> Answer:
        try:
            raw = await call(data, timeout=10)
        except grpc.aio.AioRpcError as error:
            return Answer(error.code(), False, error.details() or "")
        response = Signed.FromString(raw)
        header = Header.FromString(response.header)
        return Answer(
            _code(header.status_code),
            True,
            header.status_message,
            response.payload,
            header.payload_type,
        )


@pytest.fixture
async def peer(federation: LocalFederation) -> AsyncIterator[Peer]:
    async with mtls(federation) as channel:
        yield Peer(federation, channel)


@contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    """Every log line of every node while inside, as it would be rendered."""
    with capture_logs(
        processors=[structlog.contextvars.merge_contextvars, mask_personal_data]
    ) as logs:
        yield logs


@asynccontextmanager
async def fuzz_class(
    name: str, federation: LocalFederation, wallet: Wallet, peer: Peer
) -> AsyncIterator[list[dict[str, Any]]]:
    """Run one class of inputs (yielding the log lines captured meanwhile), then
    check the node is sound and record the count."""
    before = peer.sent
    with captured() as logs:
        yield logs
    SENT[name] = peer.sent - before
    print(f"\nfuzz class {name}: {SENT[name]} inputs")
    longest = max((len(json.dumps(line, default=str)) for line in logs), default=0)
    assert longest <= MAX_LOG_LINE, f"{name}: a log line of {longest} characters"
    await assert_still_sound(federation, wallet)


async def assert_still_sound(federation: LocalFederation, wallet: Wallet) -> None:
    stub = identity_pb2_grpc.IdentityServiceStub(federation.channel(SH))
    answer = await stub.VerifyIdentity(
        identity_pb2.VerifyIdentityRequest(qr_payload=await wallet.fresh_qr(ZJ), purpose=1),
        metadata=(("authorization", f"Bearer dev-hotel-{SH}"),),
        timeout=10,
    )
    assert answer.verdict == identity_pb2.VALID
    node = federation.node(ZJ)
    entries, size = node.federation_server.remembered
    max_entries, max_bytes = node.federation_server.remembered_bounds
    assert entries <= max_entries
    assert size <= max_bytes
    nonces = node.verifier.nonces
    assert len(nonces) <= nonces.max_entries
    assert nonces.nbytes() <= 200 * len(nonces) + 1  # bounded keys: < 200 bytes an entry
    for code in (SH, ZJ):
        assert (await federation.node(code).message_log.verify()).intact


# ---- valid requests of every payload type, to mutate ---------------------------


def id_number(seed: int) -> str:
    body = f"31011519{80 + seed % 20:02d}0101{seed % 1000:03d}"
    return body + ric.calc_check_digit(body)


def valid_payloads(federation: LocalFederation) -> dict[str, Message]:
    """A well-formed request of each federation service, Shanghai to Zhejiang."""
    account, holder_id, _ = fund_holder(federation, ZJ, SH)
    resident = synthetic_residents(SH)[0]
    check = federation_pb2.CredentialCheckRequest(
        token_id=str(uuid.uuid4()),
        credential_id="EID-FUZZ-0001",
        purpose=identity_pb2.HOTEL_CHECK_IN,
        relying_party_id="hotel-310000-001",
        requested_attributes=["full_name"],
    )
    withdrawal = fund_pb2.WithdrawalApplication(
        idempotency_key=f"fuzz-{uuid.uuid4().hex}",
        applicant=common_pb2.Person(id_number=holder_id, full_name=resident.full_name),
        fund_province=ZJ,
        fund_account=account,
        reason=fund_pb2.RENT,
        amount_fen=100,
        payee_account=payee_account(7),
        payee_bank="Bank of Shanghai",
        applicant_province=SH,
    )
    return {
        "identity.CheckCredential": check,
        "fund.QueryAccount": fund_pb2.QueryFundAccountRequest(
            id_number=holder_id, fund_province=ZJ
        ),
        "fund.DeliverWithdrawal": withdrawal,
        "fund.WithdrawalStatus": fund_pb2.WithdrawalStatusUpdate(
            idempotency_key=f"fuzz-{uuid.uuid4().hex}", status=fund_pb2.PAID, paid_amount_fen=1
        ),
        "certificate.Fetch": certificate_pb2.GetCertificateRequest(
            category_code="11100000",
            holder_id=resident.id_number,
            issuer_province=ZJ,
            consent_reference="consent-fuzz-1",
            purpose="MARRIAGE_REGISTRATION",
        ),
        "case.DeliverCase": case_pb2.CaseApplication(
            idempotency_key=f"fuzz-{uuid.uuid4().hex}",
            service_code="KS0101",
            applicant=common_pb2.Party(
                person=common_pb2.Person(id_number=resident.id_number, full_name=resident.full_name)
            ),
            handling_province=ZJ,
            submitting_province=SH,
            description="fuzz case",
        ),
        "case.CaseStatus": case_pb2.CaseStatusUpdate(
            idempotency_key=f"fuzz-{uuid.uuid4().hex}", status=case_pb2.CASE_COMPLETED
        ),
    }


def fresh(message: Message) -> Message:
    """A copy with a new idempotency key (if it has one): a new request."""
    copy = type(message)()
    copy.CopyFrom(message)
    if "idempotency_key" in copy.DESCRIPTOR.fields_by_name:
        copy.idempotency_key = f"fuzz-{uuid.uuid4().hex}"  # type: ignore[attr-defined]  # every such payload has one
    return copy


def another(message: Message) -> Message:
    """A different request of the same type."""
    copy = fresh(message)
    if copy == message:
        if isinstance(copy, federation_pb2.CredentialCheckRequest):
            copy.token_id = str(uuid.uuid4())
        elif isinstance(copy, fund_pb2.QueryFundAccountRequest):
            copy.id_number = id_number(len(copy.id_number))
        elif isinstance(copy, certificate_pb2.GetCertificateRequest):
            copy.consent_reference = f"consent-{uuid.uuid4().hex}"
    assert copy != message
    return copy


def garbage_values(field: FieldDescriptor) -> list[Any]:
    """Empty, oversize and garbage values for one scalar field."""
    if field.type == FieldDescriptor.TYPE_STRING:
        return ["", " ", "x" * 5000, "\x00\x01", "ü" * 200, "9" * 19, "<script>"]
    if field.type == FieldDescriptor.TYPE_BYTES:
        return [b"", b"\xff" * 300]
    if field.type == FieldDescriptor.TYPE_ENUM:
        return [0, 999, -1]
    if field.type == FieldDescriptor.TYPE_BOOL:
        return [True]
    if field.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_INT32):
        return [0, -1, 2**31 - 1]
    return []


def mutations(message: Message, prefix: str = "") -> Iterator[tuple[str, Message]]:
    """Copies of a message with one field (at any depth) empty or garbage."""
    for field in message.DESCRIPTOR.fields:
        path = prefix + field.name
        if field.message_type is not None:
            if field.is_repeated:
                continue
            if field.message_type.full_name == "google.protobuf.Timestamp":
                for seconds in (-(2**40), 2**40):
                    copy = fresh(message)
                    getattr(copy, field.name).seconds = seconds
                    yield path, copy
                continue
            for sub_path, sub in mutations(getattr(message, field.name), path + "."):
                copy = fresh(message)
                getattr(copy, field.name).CopyFrom(sub)
                yield sub_path, copy
            continue
        for value in garbage_values(field):
            copy = fresh(message)
            if field.is_repeated:
                getattr(copy, field.name)[:] = [value] * (1 if value else 200)
            else:
                setattr(copy, field.name, value)
            yield path, copy


# ---- the classes ----------------------------------------------------------------


async def test_random_bytes(federation: LocalFederation, wallet: Wallet, peer: Peer) -> None:
    rng = random.Random(1)
    async with fuzz_class("random bytes", federation, wallet, peer):
        for _ in range(150):
            data = rng.randbytes(rng.choice([0, 1, 7, 64, 300, 4096]))
            answer = await peer.send(data)
            assert (answer.code, answer.signed) == (S.INVALID_ARGUMENT, False)


async def test_truncations_and_bit_flips(
    federation: LocalFederation, wallet: Wallet, peer: Peer
) -> None:
    rng = random.Random(2)
    check = valid_payloads(federation)["identity.CheckCredential"]
    async with fuzz_class("truncations", federation, wallet, peer):
        data = peer.seal("identity.CheckCredential", check).SerializeToString()
        for cut in range(0, len(data), max(1, len(data) // 60)):
            answer = await peer.send(data[:cut])
            assert answer.code in BARE, (cut, answer)
            assert not answer.signed
    async with fuzz_class("bit flips", federation, wallet, peer):
        for _ in range(120):
            data = bytearray(peer.seal("identity.CheckCredential", check).SerializeToString())
            bit = rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
            answer = await peer.send(bytes(data))
            assert answer.code in BARE, (bit, answer)
            assert not answer.signed


def _header_mutations() -> list[tuple[str, Callable[[Header], None], grpc.StatusCode]]:
    def setter(field: str, value: Any) -> Callable[[Header], None]:
        return lambda header: setattr(header, field, value)

    return [
        ("receiver elsewhere", setter("receiver", "340000"), S.PERMISSION_DENIED),
        ("receiver unknown", setter("receiver", "999999"), S.PERMISSION_DENIED),
        ("unknown service", setter("service", "identity.Anything"), S.PERMISSION_DENIED),
        (
            "wrong payload type",
            setter("payload_type", "yrd.fund.v1.FundAccount"),
            S.INVALID_ARGUMENT,
        ),
        ("payload digest", setter("payload_digest", b"\x00" * 32), S.INVALID_ARGUMENT),
        ("short digest", setter("payload_digest", b"\x00" * 3), S.INVALID_ARGUMENT),
        ("short nonce", setter("nonce", b"\x01" * 4), S.INVALID_ARGUMENT),
        ("no created_at", lambda header: header.ClearField("created_at"), S.INVALID_ARGUMENT),
        ("algorithm", setter("algorithm", "SM2"), S.UNAUTHENTICATED),
        ("other key id", setter("key_id", "310000-sig-1999"), S.UNAUTHENTICATED),
        ("other sender", setter("sender", "320000"), S.UNAUTHENTICATED),
        ("unknown sender", setter("sender", "350000"), S.UNAUTHENTICATED),
        ("no message id", setter("message_id", ""), S.INVALID_ARGUMENT),
        ("no correlation id", setter("correlation_id", ""), S.INVALID_ARGUMENT),
        ("request digest", setter("request_digest", b"\x01" * 5), S.INVALID_ARGUMENT),
        (
            "far future",
            lambda header: setattr(header.created_at, "seconds", 2**40),
            S.INVALID_ARGUMENT,
        ),
    ]


async def test_resigned_mutations(federation: LocalFederation, wallet: Wallet, peer: Peer) -> None:
    """Envelopes correctly signed with the real key but saying something wrong."""
    payloads = valid_payloads(federation)
    async with fuzz_class("re-signed mutations", federation, wallet, peer):
        for service in sorted(payloads):
            for name, change, expected in _header_mutations():
                signed = peer.reseal(peer.seal(service, fresh(payloads[service])), change)
                answer = await peer.send(signed)
                assert (answer.code, answer.signed) == (expected, False), (service, name, answer)


async def test_skewed_times_replays_and_unknown_keys(
    federation: LocalFederation, wallet: Wallet, peer: Peer
) -> None:
    check = valid_payloads(federation)["identity.CheckCredential"]
    async with fuzz_class("skewed times", federation, wallet, peer):
        for offset in (-7200, -600, -121, 121, 600, 7200, 10**6):

            def skew(header: Header, offset: int = offset) -> None:
                header.created_at.seconds += offset

            answer = await peer.send(
                peer.reseal(peer.seal("identity.CheckCredential", check), skew)
            )
            assert (answer.code, answer.signed) == (S.FAILED_PRECONDITION, False), offset
        for offset in (-60, 60):

            def near(header: Header, offset: int = offset) -> None:
                header.created_at.seconds += offset

            answer = await peer.send(
                peer.reseal(peer.seal("identity.CheckCredential", check), near)
            )
            assert (answer.code, answer.signed) == (S.OK, True)
    async with fuzz_class("replays", federation, wallet, peer):
        for _ in range(10):
            data = peer.seal("identity.CheckCredential", fresh(check)).SerializeToString()
            assert (await peer.send(data)).code == S.OK
            for _ in range(2):
                answer = await peer.send(data)
                assert (answer.code, answer.signed) == (S.ALREADY_EXISTS, False)
    async with fuzz_class("unknown keys", federation, wallet, peer):
        for key_id in ("310000-sig-2026", "310000-sig-1999", "k" * 128, "330000-sig-2026"):
            for _ in range(5):
                stranger = EnvelopeSigner(
                    SH, key_id, crypto.generate_private_key(), federation.node(SH).clock
                )
                signed = stranger.seal(
                    receiver=ZJ,
                    service="identity.CheckCredential",
                    payload=check,
                    correlation_id=str(uuid.uuid4()),
                )
                answer = await peer.send(signed)
                assert (answer.code, answer.signed) == (S.UNAUTHENTICATED, False), key_id


async def test_oversize_and_deep_nesting(
    federation: LocalFederation, wallet: Wallet, peer: Peer
) -> None:
    check = valid_payloads(federation)["identity.CheckCredential"]
    rows = await federation.node(ZJ).message_log.count()
    async with fuzz_class("oversize", federation, wallet, peer):
        for size in (4 * 1024 * 1024 + 1, 6 * 1024 * 1024):
            signed = peer.seal("identity.CheckCredential", check)
            signed.payload = b"\x00" * size
            answer = await peer.send(signed)
            assert answer.code in {S.INVALID_ARGUMENT, S.RESOURCE_EXHAUSTED}
            assert not answer.signed
        assert await federation.node(ZJ).message_log.count() == rows
        for size in (200_000, 3 * 1024 * 1024):
            big = fresh(check)
            assert isinstance(big, federation_pb2.CredentialCheckRequest)
            big.token_id = "t" * size
            answer = await peer.send(peer.seal("identity.CheckCredential", big))
            assert (answer.code, answer.signed) == (S.INVALID_ARGUMENT, True)
            assert answer.message.startswith("token_id: expected")
            assert len(answer.message) < 200
    async with fuzz_class("deep nesting", federation, wallet, peer):
        for depth in (50, 101, 1000, 100_000):
            # Nested groups of an unknown field number: parsed recursively.
            tag_open, tag_close = bytes([0x9B, 0x06]), bytes([0x9C, 0x06])  # field 99
            nested = tag_open * depth + tag_close * depth
            signed = peer.reseal(
                peer.seal("identity.CheckCredential", check), lambda _: None, payload=nested
            )
            answer = await peer.send(signed)
            assert (answer.code, answer.signed) == (S.INVALID_ARGUMENT, True), depth
            envelope = peer.seal("identity.CheckCredential", check).SerializeToString()
            answer = await peer.send(envelope + bytes([0xA3, 0x06]) * depth)  # field 100
            assert answer.code in BARE, (depth, answer)
            assert not answer.signed


async def test_wrong_payload_types(federation: LocalFederation, wallet: Wallet, peer: Peer) -> None:
    """A payload of another service's type, declared or smuggled under the right name."""
    payloads = valid_payloads(federation)
    async with fuzz_class("wrong payload types", federation, wallet, peer):
        for service in sorted(payloads):
            for other in sorted(payloads):
                if other == service:
                    continue
                smuggled = peer.reseal(
                    peer.seal(service, fresh(payloads[service])),
                    lambda _: None,
                    payload=payloads[other].SerializeToString(),
                )
                answer = await peer.send(smuggled)
                assert answer.signed, (service, other, answer)
                assert answer.code in DECIDED - {S.OK}, (service, other, answer)


async def test_same_message_id_for_another_request(
    federation: LocalFederation, wallet: Wallet, peer: Peer
) -> None:
    """Item 1: a message id is bound to its first request; a retry gets its answer,
    another request under it a signed ALREADY_EXISTS, and never that answer, also
    after the node restarted (the message log is its memory then)."""
    payloads = valid_payloads(federation)
    services = sorted(payloads)
    firsts: dict[str, tuple[str, str, Message, Answer]] = {}
    async with fuzz_class("same message id, another request", federation, wallet, peer):
        for index, service in enumerate(services):
            message_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
            request = fresh(payloads[service])
            first = await peer.send(
                peer.seal(service, request, message_id=message_id, correlation_id=correlation_id)
            )
            assert first.signed, (service, first)
            assert first.code in DECIDED, (service, first)
            firsts[service] = (message_id, correlation_id, request, first)
            other_service = services[(index + 1) % len(services)]
            variants = [
                (service, another(request), correlation_id),  # another payload
                (service, request, str(uuid.uuid4())),  # another exchange
                (other_service, another(payloads[other_service]), correlation_id),
            ]
            for other, payload, other_correlation in variants:
                answer = await peer.send(
                    peer.seal(
                        other, payload, message_id=message_id, correlation_id=other_correlation
                    )
                )
                assert (answer.code, answer.signed) == (S.ALREADY_EXISTS, True), (service, other)
                assert answer.message.startswith(REUSED_MESSAGE_ID)
                assert answer.payload_type == "yrd.federation.v1.DeliveryAck"
                assert answer.payload == b""  # nothing of the first request's answer
            retry = await peer.send(
                peer.seal(service, request, message_id=message_id, correlation_id=correlation_id)
            )
            assert retry == first, service
        # Both in flight at once: one is handled, the other refused.
        message_id = str(uuid.uuid4())
        one, two = await asyncio.gather(
            peer.send(
                peer.seal("fund.QueryAccount", payloads["fund.QueryAccount"], message_id=message_id)
            ),
            peer.send(
                peer.seal(
                    "case.CaseStatus", fresh(payloads["case.CaseStatus"]), message_id=message_id
                )
            ),
        )
        assert sorted([one.code == S.ALREADY_EXISTS, two.code == S.ALREADY_EXISTS]) == [False, True]
    refusals = [
        row
        async for row in federation.node(ZJ).message_log.rows(
            message_id=firsts["fund.QueryAccount"][0]
        )
    ]
    statuses = [
        Header.FromString(Signed.FromString(row.entry.envelope).header).status_code
        for row in refusals
        if row.entry.kind == "response"
    ]
    assert statuses.count(S.ALREADY_EXISTS.value[0]) == 3  # each refusal is logged, signed
    await federation.stop_node(ZJ)
    await federation.start_node(ZJ)
    async with mtls(federation) as channel:
        after = Peer(federation, channel)
        async with fuzz_class("same message id after a restart", federation, wallet, after):
            for index, service in enumerate(services):
                message_id, correlation_id, request, first = firsts[service]
                other_service = services[(index + 3) % len(services)]
                refused = await after.send(
                    after.seal(
                        other_service,
                        fresh(payloads[other_service]),
                        message_id=message_id,
                        correlation_id=correlation_id,
                    )
                )
                assert (refused.code, refused.signed) == (S.ALREADY_EXISTS, True), service
                retry = await after.send(
                    after.seal(
                        service, request, message_id=message_id, correlation_id=correlation_id
                    )
                )
                assert retry == first, service


async def test_oversize_header_fields(
    federation: LocalFederation, wallet: Wallet, peer: Peer
) -> None:
    """Item 2: a header string out of its bound is refused before it is stored,
    cached or logged: the log does not grow, nor does the answer memory."""
    check = valid_payloads(federation)["identity.CheckCredential"]
    node = federation.node(ZJ)
    rows = await node.message_log.count()
    remembered = node.federation_server.remembered
    async with fuzz_class("oversize header fields", federation, wallet, peer):
        for field in sorted(HEADER_BOUNDS):
            for value in ("x" * 129, "9" * (1024 * 1024), "\x00", "é" * 10):
                signed = peer.reseal(
                    peer.seal("identity.CheckCredential", fresh(check)),
                    lambda header, field=field, value=value: setattr(header, field, value),
                )
                answer = await peer.send(signed)
                if field == "algorithm" and len(value) <= 32 and value.isascii():
                    continue  # a short unknown name: refused as unsupported (UNAUTHENTICATED)
                assert (answer.code, answer.signed) == (S.INVALID_ARGUMENT, False), field
                assert answer.message.startswith(f"header.{field}: expected"), answer.message
                assert len(answer.message) < 200
        assert await node.message_log.count() == rows
    assert node.federation_server.remembered[1] <= remembered[1] + 64 * 1024


def _payload_type(service: str) -> type[Message]:
    name = FEDERATION_SERVICES[service][0]
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))


async def test_empty_and_garbage_fields_of_every_payload_type(
    federation: LocalFederation, wallet: Wallet, peer: Peer
) -> None:
    """Item 3: each field of each payload type empty or garbage gets a signed
    decision (INVALID_ARGUMENT naming the field, or NOT_FOUND, PERMISSION_DENIED,
    ...), never INTERNAL or UNKNOWN, and no refusal echoes a long value."""
    payloads = valid_payloads(federation)
    async with fuzz_class("empty/garbage payload fields", federation, wallet, peer) as logs:
        for service in sorted(payloads):
            assert isinstance(payloads[service], _payload_type(service))
            for path, payload in mutations(payloads[service]):
                # The header's copy of a garbage key is refused by the verifier (bare).
                key = str(getattr(payload, "idempotency_key", ""))
                fits = key.isascii() and key.isprintable() and len(key) <= 128
                answer = await peer.send(
                    peer.seal(service, payload, idempotency_key=key if fits else "")
                )
                assert answer.signed, (service, path, answer)
                assert answer.code in DECIDED, (service, path, answer)
                assert "x" * 65 not in answer.message, path
                assert "ü" * 65 not in answer.message, path
                assert len(answer.message.encode()) <= 1024
    # Zhejiang's answers to the garbage cases it accepted go back to Shanghai,
    # which never sent them and refuses them: that line is about this fabricated
    # traffic, not a fault of the receiving path. No other line is at error level.
    errors = [
        line
        for line in logs
        if line.get("log_level") in ("error", "critical")
        and line.get("event") != "status update refused by the submitting node"
    ]
    assert errors == [], errors[:3]


async def test_credential_check_with_empty_ids_is_invalid_not_internal(
    federation: LocalFederation, wallet: Wallet, peer: Peer
) -> None:
    """The case the issue found: empty credential_id or token_id."""
    check = valid_payloads(federation)["identity.CheckCredential"]
    for field in ("credential_id", "token_id"):
        payload = fresh(check)
        setattr(payload, field, "")
        answer = await peer.send(peer.seal("identity.CheckCredential", payload))
        assert (answer.code, answer.signed) == (S.INVALID_ARGUMENT, True)
        assert answer.message.startswith(f"{field}: expected")


async def test_a_handler_bug_is_a_signed_fault_logged_once_without_personal_data(
    federation: LocalFederation, wallet: Wallet, peer: Peer
) -> None:
    """An unexpected exception inside a handler is answered (signed INTERNAL, which
    the peer retries), logged once by its type only, and not remembered: a retry
    is handled again."""
    server = federation.node(ZJ).federation_server
    calls = 0

    async def broken(opened: Any, timeout: float) -> Message:
        nonlocal calls
        calls += 1
        raise RuntimeError("holder 11010519491231002X broke it")

    server._handlers["case.CaseStatus"] = broken  # test-only: a handler with a bug
    update = valid_payloads(federation)["case.CaseStatus"]
    message_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    with captured() as logs:
        answers = [
            await peer.send(
                peer.seal(
                    "case.CaseStatus", update, message_id=message_id, correlation_id=correlation_id
                )
            )
            for _ in range(2)
        ]
    for answer in answers:
        assert (answer.code, answer.signed) == (S.INTERNAL, True)
        assert "11010519491231002X" not in answer.message
    assert calls == 2  # a fault is not remembered: the retry is handled again
    failures = [line for line in logs if line["event"] == "federation handler failed"]
    assert [line["error_type"] for line in failures] == ["RuntimeError", "RuntimeError"]
    assert not any("11010519491231002X" in json.dumps(line, default=str) for line in logs)


async def test_a_retry_gets_the_remembered_answer_byte_for_byte(
    federation: LocalFederation, wallet: Wallet, peer: Peer
) -> None:
    """A retry of an answered request (same message id, same request) is answered
    from memory, kept serialized: the same payload bytes, the handler not run again.
    The payload is serialized once: the bytes the response envelope carries are
    the bytes the memory keeps, and the retry's envelope carries them again."""
    server = federation.node(ZJ).federation_server
    handler = server._handlers["fund.QueryAccount"]
    calls = 0
    sealed: list[bytes | None] = []
    seal = server._signer.seal

    def seal_counted(**fields: Any) -> federation_pb2.SignedEnvelope:
        sealed.append(fields.get("payload_bytes"))
        return seal(**fields)

    server._signer.seal = seal_counted  # type: ignore[method-assign] # test-only

    async def counted(opened: Any, timeout: float) -> Message:
        nonlocal calls
        calls += 1
        return await handler(opened, timeout)

    server._handlers["fund.QueryAccount"] = counted  # test-only: count the handlings
    query = valid_payloads(federation)["fund.QueryAccount"]
    message_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    answers = [
        await peer.send(
            peer.seal(
                "fund.QueryAccount", query, message_id=message_id, correlation_id=correlation_id
            )
        )
        for _ in range(2)
    ]
    assert calls == 1
    assert [(a.code, a.signed) for a in answers] == [(S.OK, True)] * 2
    assert answers[0].payload
    assert answers[1].payload == answers[0].payload
    assert answers[1].payload_type == answers[0].payload_type
    remembered = server._done[SH, message_id].payload
    assert len(sealed) == 2
    assert sealed[0] is remembered
    assert sealed[1] is remembered


async def test_the_answer_memory_stays_within_its_byte_bound(
    federation: LocalFederation, wallet: Wallet, peer: Peer
) -> None:
    """Remembered answers are evicted by bytes as well as by number and age."""
    server = federation.node(ZJ).federation_server
    server._dedupe_bytes = 16 * 1024  # test-only: a small bound to reach quickly
    query = valid_payloads(federation)["fund.QueryAccount"]
    async with fuzz_class("answer memory bound", federation, wallet, peer):
        for _ in range(60):
            answer = await peer.send(peer.seal("fund.QueryAccount", query))
            assert (answer.code, answer.signed) == (S.OK, True)
            entries, size = server.remembered
            assert size <= 16 * 1024
    assert 0 < entries < 60


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_reused_message_id_is_refused_by_every_worker(tmp_path: Path) -> None:
    """Item 1 across worker processes: Jiangsu served by two workers on one port;
    each attempt on a fresh connection (the kernel spreads them over the workers).
    The retry always gets the first answer, another request always a signed
    ALREADY_EXISTS, whichever worker (and its empty memory) receives it."""
    processes = ProcessFederation(tmp_path, (SH, JS))
    try:
        processes.start(workers={JS: 2})
        jiangsu = processes.nodes[JS]
        assert len(jiangsu.children()) == 2
        shanghai = parse_province_file(processes.nodes[SH].config)
        signer = EnvelopeSigner.from_config(shanghai, SystemClock())
        keys = processes.nodes[SH].config.parent / "keys"  # Shanghai's own keys
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(keys / "ca.crt.pem").read_bytes(),
            private_key=(keys / "tls.key.pem").read_bytes(),
            certificate_chain=(keys / "tls.crt.pem").read_bytes(),
        )
        text = jiangsu.config.read_text(encoding="utf-8")
        endpoint = text.split('federation_endpoint = "', 1)[1].split('"', 1)[0]
        message_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())

        def seal(token_id: str) -> bytes:
            return signer.seal(
                receiver=JS,
                service="identity.CheckCredential",
                payload=federation_pb2.CredentialCheckRequest(
                    token_id=token_id,
                    credential_id="EID-FUZZ-WORKERS",
                    purpose=identity_pb2.HOTEL_CHECK_IN,
                ),
                correlation_id=correlation_id,
                message_id=message_id,
            ).SerializeToString()

        async def attempts() -> tuple[Answer, list[Answer], list[Answer]]:
            async def once(data: bytes) -> Answer:
                async with grpc.aio.secure_channel(endpoint, credentials) as channel:
                    return await Peer.exchange(channel, data)

            token = str(uuid.uuid4())
            first = await once(seal(token))
            retries, others = [], []
            for _ in range(6):
                others.append(await once(seal(str(uuid.uuid4()))))
                retries.append(await once(seal(token)))
            return first, retries, others

        first, retries, others = asyncio.run(attempts())
        assert (first.code, first.signed) == (S.OK, True)
        assert retries == [first] * 6
        assert {(o.code, o.signed, o.payload) for o in others} == {(S.ALREADY_EXISTS, True, b"")}
    finally:
        processes.stop()
