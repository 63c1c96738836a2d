"""Every string field of every public request, sent through a running node with
hostile values: empty, oversize (20 KB), garbage Unicode and control
characters. Each gets a refusal that names the field (INVALID_ARGUMENT,
NOT_FOUND or PERMISSION_DENIED) — never INTERNAL, UNKNOWN, or a
RESOURCE_EXHAUSTED because the status overflowed the client's metadata limit —
in a message of at most 1 KiB that echoes neither the value nor an ID number.
Also: reflection v1 lists the services, and a refused call is logged with the
client it claimed to be and why."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from adapters.catalogue import CATALOGUE
from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import SH, ZJ, full_name_of, fund_holder, payee_account
from tests.integration.test_fuzz import mtls, send_raw
from yrd.case.v1 import case_pb2, case_pb2_grpc
from yrd.certificate.v1 import certificate_pb2, certificate_pb2_grpc
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc
from yrd.identity.v1 import identity_pb2, identity_pb2_grpc

ID_NUMBER = "11010519491231002X"
#: The hostile values, by class. Each carries an ID number, so an echo shows.
VALUES = {
    "empty": "",
    "oversize": ID_NUMBER * 1200,  # 21,600 characters
    "garbage-unicode": f"\u202e{ID_NUMBER}\ufffd\U0010fffd漢\u0300\U0001f600",
    "control-characters": f"\x00\x1b[31m{ID_NUMBER}\x7f\r\n",
}
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
}
HOTEL = (("authorization", f"Bearer dev-hotel-{SH}"),)
OFFICE = (("authorization", f"Bearer dev-office-{SH}"),)
PDF = b"%PDF-1.4 proof of residence"


def set_path(message: Message, path: str, value: str) -> None:
    """Set the string at ``path`` (``a.b[0].c``) of ``message``."""
    *parents, leaf = path.split(".")
    node: Any = message
    for part in parents:
        name, _, index = part.partition("[")
        node = getattr(node, name)
        if index:
            node = node[int(index.rstrip("]"))]
    name, _, index = leaf.partition("[")
    if index:
        getattr(node, name)[int(index.rstrip("]"))] = value
    else:
        setattr(node, name, value)


def withdrawal(federation: LocalFederation) -> fund_pb2.SubmitWithdrawalRequest:
    account, id_number, _ = fund_holder(federation, ZJ, SH)
    return fund_pb2.SubmitWithdrawalRequest(
        application=fund_pb2.WithdrawalApplication(
            idempotency_key=f"wd-{uuid.uuid4().hex}",
            applicant=common_pb2.Person(id_number=id_number, full_name=full_name_of(id_number)),
            fund_province=ZJ,
            fund_account=account,
            reason=fund_pb2.HOUSE_PURCHASE,
            amount_fen=100,
            payee_account=payee_account(),
            payee_bank="Bank of Shanghai",
            supporting_certificates=["CERT-1"],
        )
    )


def case(federation: LocalFederation) -> case_pb2.SubmitCaseRequest:
    _, id_number, _ = fund_holder(federation, ZJ, SH)
    return case_pb2.SubmitCaseRequest(
        application=case_pb2.CaseApplication(
            idempotency_key=f"case-{uuid.uuid4().hex}",
            service_code="KS0101",
            applicant=common_pb2.Party(
                person=common_pb2.Person(id_number=id_number, full_name=full_name_of(id_number))
            ),
            handling_province=ZJ,
            description="moving to Hangzhou",
            materials=[
                common_pb2.AttachmentRef(
                    name="proof.pdf",
                    media_type="application/pdf",
                    size_bytes=len(PDF),
                    sha256=hashlib.sha256(PDF).digest(),
                    content=PDF,
                )
            ],
        )
    )


def certificate_request() -> certificate_pb2.GetCertificateRequest:
    return certificate_pb2.GetCertificateRequest(
        category_code=sorted(CATALOGUE)[0],
        holder_id=ID_NUMBER,
        issuer_province=ZJ,
        consent_reference="consent-0001",
        purpose="MARRIAGE_REGISTRATION",
    )


#: (service stub, method, metadata, request maker, string fields, fields where
#: an empty value is valid: "no value" means "the default", e.g. the caller's
#: own province or id).
Maker = Callable[[LocalFederation], Message]
CASES: list[tuple[type[Any], str, Any, Maker, tuple[str, ...], frozenset[str]]] = [
    (
        identity_pb2_grpc.IdentityServiceStub,
        "VerifyIdentity",
        HOTEL,
        lambda _: identity_pb2.VerifyIdentityRequest(
            qr_payload="a.b.c", purpose=identity_pb2.HOTEL_CHECK_IN
        ),
        (
            "qr_payload",
            "relying_party_id",
            "requested_attributes[0]",
            "client_reference",
            "idempotency_key",
        ),
        frozenset({"relying_party_id", "client_reference", "idempotency_key"}),
    ),
    (
        identity_pb2_grpc.IdentityServiceStub,
        "GetCheckIn",
        HOTEL,
        lambda _: identity_pb2.GetCheckInRequest(),
        ("check_in_id",),
        frozenset(),
    ),
    (
        fund_pb2_grpc.FundServiceStub,
        "SubmitWithdrawal",
        OFFICE,
        withdrawal,
        tuple(
            "application." + name
            for name in (
                "idempotency_key",
                "applicant.id_number",
                "applicant.full_name",
                "fund_province",
                "fund_account",
                "payee_account",
                "payee_bank",
                "supporting_certificates[0]",
                "applicant_province",
            )
        ),
        frozenset({"application.applicant_province"}),
    ),
    (
        fund_pb2_grpc.FundServiceStub,
        "GetWithdrawal",
        OFFICE,
        lambda _: fund_pb2.GetWithdrawalRequest(),
        ("case_id",),
        frozenset(),
    ),
    (
        fund_pb2_grpc.FundServiceStub,
        "QueryFundAccount",
        OFFICE,
        lambda _: fund_pb2.QueryFundAccountRequest(id_number=ID_NUMBER, fund_province=ZJ),
        ("id_number", "fund_province"),
        frozenset(),
    ),
    (
        certificate_pb2_grpc.CertificateServiceStub,
        "GetCertificate",
        OFFICE,
        lambda _: certificate_request(),
        (
            "category_code",
            "holder_id",
            "issuer_province",
            "certificate_number",
            "consent_reference",
            "purpose",
        ),
        frozenset(),
    ),
    (
        case_pb2_grpc.CaseServiceStub,
        "SubmitCase",
        OFFICE,
        case,
        tuple(
            "application." + name
            for name in (
                "idempotency_key",
                "service_code",
                "applicant.person.id_number",
                "applicant.person.full_name",
                "handling_province",
                "submitting_province",
                "description",
                "materials[0].name",
                "materials[0].media_type",
            )
        ),
        frozenset({"application.submitting_province", "application.description"}),
    ),
    (
        case_pb2_grpc.CaseServiceStub,
        "GetCase",
        OFFICE,
        lambda _: case_pb2.GetCaseRequest(),
        ("case_id",),
        frozenset(),
    ),
]


def leaf(path: str) -> str:
    return path.split(".")[-1].split("[")[0]


@pytest.mark.timeout(300)
async def test_every_string_field_of_every_public_request(federation: LocalFederation) -> None:
    channel = federation.channel(SH)
    problems: list[str] = []
    sent = 0
    for stub_type, method, metadata, make, fields, optional in CASES:
        call = getattr(stub_type(channel), method)
        for path in fields:
            for kind, value in VALUES.items():
                request = make(federation)
                if path.endswith("[0]") and path.startswith("requested_attributes"):
                    request.requested_attributes.append("")  # type: ignore[attr-defined]
                set_path(request, path, value)
                what = f"{method} {path} {kind}"
                sent += 1
                try:
                    await call(request, metadata=metadata, timeout=10)
                except grpc.aio.AioRpcError as error:
                    code, message = error.code(), error.details() or ""
                    if code not in REFUSALS:
                        problems.append(f"{what}: {code.name} {message[:200]!r}")
                        continue
                    if len(message.encode()) > 1024:
                        problems.append(f"{what}: a {len(message.encode())}-byte message")
                    if ID_NUMBER in message or (value and value in message):
                        problems.append(f"{what}: the value is echoed: {message[:200]!r}")
                    if code == grpc.StatusCode.INVALID_ARGUMENT:
                        if leaf(path) not in message:
                            problems.append(f"{what}: the field is not named: {message!r}")
                        status = rpc_status.from_call(error)
                        bad = error_details_pb2.BadRequest()
                        if (
                            status is None
                            or not status.details[0].Unpack(bad)
                            or leaf(path) not in bad.field_violations[0].field
                        ):
                            problems.append(f"{what}: no BadRequest naming the field")
                    continue
                if not (kind == "empty" and path in optional):
                    problems.append(f"{what}: accepted")
    assert sent == 4 * sum(len(fields) for _, _, _, _, fields, _ in CASES)
    assert not problems, "\n".join(problems)
    # Still serving: a well-formed request is answered.
    account = await fund_pb2_grpc.FundServiceStub(channel).QueryFundAccount(
        fund_pb2.QueryFundAccountRequest(
            id_number=fund_holder(federation, ZJ, SH)[1], fund_province=ZJ
        ),
        metadata=OFFICE,
        timeout=10,
    )
    assert account.fund_province == ZJ


async def test_reflection_v1_lists_the_services(federation: LocalFederation) -> None:
    # The v1 and v1alpha messages are the same on the wire (same field numbers).
    channel = federation.channel(SH)
    for service in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
        info = channel.stream_stream(
            f"/{service}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = info(timeout=10)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = await call.read()
        await call.write(
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflection"
            )
        )
        described = await call.read()
        await call.done_writing()
        assert isinstance(listed, reflection_pb2.ServerReflectionResponse)
        names = {s.name for s in listed.list_services_response.service}
        assert {
            "yrd.identity.v1.IdentityService",
            "yrd.fund.v1.FundService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names, service
        assert isinstance(described, reflection_pb2.ServerReflectionResponse)
        assert described.file_descriptor_response.file_descriptor_proto, service


async def test_refused_calls_are_logged_with_the_claimed_client(
    federation: LocalFederation,
) -> None:
    channel = federation.channel(SH)
    token = "not-a-registered-token-" + uuid.uuid4().hex
    fingerprint = hashlib.sha256(token.encode()).hexdigest()[:8]
    with structlog.testing.capture_logs() as logs:
        for metadata, stub in (
            ((("authorization", f"Bearer {token}"),), fund_pb2_grpc.FundServiceStub),
            (HOTEL, fund_pb2_grpc.FundServiceStub),  # the hotel may not call the fund
            (OFFICE, fund_pb2_grpc.FundServiceStub),
            ((), fund_pb2_grpc.FundServiceStub),
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub(channel).QueryFundAccount(
                    fund_pb2.QueryFundAccountRequest(id_number=ID_NUMBER[:-1] + "0"),
                    metadata=metadata,
                    timeout=10,
                )
        # The node logs a refusal once its status is on the wire: the caller may
        # hold the last status a moment before its line is written.
        for _ in range(200):
            if sum(line.get("event") == "rpc" for line in logs) >= 4:
                break
            await asyncio.sleep(0.01)
    refused = [line for line in logs if line.get("event") == "rpc" and line["code"] != "OK"]
    by_client = {line["client"]: line for line in refused}
    assert by_client[f"token:{fingerprint}"]["code"] == "UNAUTHENTICATED"
    assert "not registered" in by_client[f"token:{fingerprint}"]["reason"]
    assert by_client[f"hotel-{SH}-001"]["code"] == "PERMISSION_DENIED"
    assert by_client[f"office-{SH}-001"]["code"] == "INVALID_ARGUMENT"
    assert "id_number" in by_client[f"office-{SH}-001"]["reason"]
    assert by_client["-"]["code"] == "UNAUTHENTICATED"
    text = repr(logs)
    assert token not in text
    assert ID_NUMBER[:-1] not in text


async def test_refused_federation_calls_name_the_peer_certificate(
    federation: LocalFederation,
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with mtls(federation, SH) as channel:
            code = await send_raw(channel, b"\x00not an envelope")
        # The node logs a refusal once its status is on the wire: the caller may
        # hold the status a moment before the line is written.
        for _ in range(100):
            if any(line.get("event") == "rpc" for line in logs):
                break
            await asyncio.sleep(0.01)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    refused = [line for line in logs if line.get("event") == "rpc" and line["code"] != "OK"]
    assert refused, logs
    assert refused[-1]["client"] == f"peer:{SH}"
    assert refused[-1]["reason"]
