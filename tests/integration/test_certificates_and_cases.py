"""E-certificates fetched across provinces with verified seals and consent, and
inter-provincial service cases tracked to their end, through real nodes and the
certificate-library and case-system simulators."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
import uuid

import grpc
import pytest

from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import AH, JS, SH, ZJ
from yrd.case.v1 import case_pb2, case_pb2_grpc
from yrd.certificate.v1 import certificate_pb2, certificate_pb2_grpc
from yrd.common.v1 import common_pb2
from yrd_simulators.residents import synthetic_residents

MARRIAGE = "11100000"


def office(province: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer dev-office-{province}"),)


def holder_of(cert: certificate_pb2.Certificate) -> str:
    party = cert.holder.WhichOneof("party")
    return (
        cert.holder.organisation.credit_code
        if party == "organisation"
        else (cert.holder.person.id_number)
    )


def library(federation: LocalFederation, province: str):  # type: ignore[no-untyped-def]
    found = federation.provinces[province].certificate_library
    assert found is not None
    return found


def a_certificate(
    federation: LocalFederation, province: str, category: str = MARRIAGE, kind: str = "good"
) -> certificate_pb2.Certificate:
    lib = library(federation, province)
    bad = {c.licence_id for c in lib.forged} | {c.licence_id for c in lib.expired}
    pool = {
        "good": [c for c in lib.certificates if c.licence_id not in bad],
        "forged": lib.forged,
        "expired": lib.expired,
    }[kind]
    for cert in pool:
        if kind != "good" or cert.category_code == category:
            return cert
    raise LookupError(category)


def consent(
    federation: LocalFederation, issuer: str, holder: str, requester: str = SH, days: int = 30
) -> str:
    reference: str = library(federation, issuer).add_consent(
        holder, requester, dt.datetime.now(dt.UTC) + dt.timedelta(days=days), "test"
    )
    return reference


async def fetch(
    federation: LocalFederation,
    cert: certificate_pb2.Certificate,
    consent_ref: str,
    *,
    issuer: str = AH,
    purpose: str = "MARRIAGE_REGISTRATION",
    requester: str = SH,
) -> certificate_pb2.GetCertificateResponse:
    stub = certificate_pb2_grpc.CertificateServiceStub(federation.channel(requester))
    answer: certificate_pb2.GetCertificateResponse = await stub.GetCertificate(
        certificate_pb2.GetCertificateRequest(
            category_code=cert.category_code,
            holder_id=holder_of(cert),
            issuer_province=issuer,
            certificate_number=cert.certificate_number,
            consent_reference=consent_ref,
            purpose=purpose,
        ),
        metadata=office(requester),
        timeout=5,
    )
    return answer


class TestCertificates:
    """A Shanghai service window fetches an Anhui resident's certificates."""

    async def test_marriage_certificate_verified_and_in_shanghai_terms(
        self, federation: LocalFederation
    ) -> None:
        cert = a_certificate(federation, AH)
        answer = await fetch(federation, cert, consent(federation, AH, holder_of(cert)))
        assert answer.seal_verdict == certificate_pb2.SEAL_VALID
        assert answer.certificate.licence_id == cert.licence_id
        assert answer.certificate.fields == cert.fields
        assert answer.local_category_code  # Shanghai's own code for marriage certificates
        assert answer.local_category_code != ""
        # every release is logged at both nodes
        for code in (SH, AH):
            services = [r.entry.service async for r in federation.node(code).message_log.rows()]
            assert services.count("certificate.Fetch") == 2

    @pytest.mark.parametrize("category", ["11100000", "10200000"])
    async def test_other_categories(self, federation: LocalFederation, category: str) -> None:
        try:
            cert = a_certificate(federation, AH, category)
        except LookupError:
            pytest.skip(f"no certificate of {category} in the simulated library")
        answer = await fetch(
            federation,
            cert,
            consent(federation, AH, holder_of(cert)),
            purpose="HOUSEHOLD_REGISTRATION",
        )
        assert answer.seal_verdict == certificate_pb2.SEAL_VALID

    async def test_forged_seal_is_a_verdict_not_valid(self, federation: LocalFederation) -> None:
        cert = a_certificate(federation, AH, kind="forged")
        answer = await fetch(
            federation,
            cert,
            consent(federation, AH, holder_of(cert)),
            purpose="HOUSEHOLD_REGISTRATION",
        )
        assert answer.seal_verdict == certificate_pb2.SEAL_FORGED

    async def test_expired_certificate(self, federation: LocalFederation) -> None:
        cert = a_certificate(federation, AH, kind="expired")
        answer = await fetch(
            federation,
            cert,
            consent(federation, AH, holder_of(cert)),
            purpose="HOUSEHOLD_REGISTRATION",
        )
        assert answer.seal_verdict == certificate_pb2.CERTIFICATE_EXPIRED

    @pytest.mark.parametrize(
        "problem", ["missing", "expired", "other_holder", "other_province", "absent"]
    )
    async def test_consent_refusals(self, federation: LocalFederation, problem: str) -> None:
        cert = a_certificate(federation, AH)
        holder = holder_of(cert)
        reference = {
            "missing": lambda: "CONSENT-340000-9999",
            "expired": lambda: consent(federation, AH, holder, days=-1),
            "other_holder": lambda: consent(federation, AH, "11010519491231002X"),
            "other_province": lambda: consent(federation, AH, holder, requester=ZJ),
            "absent": lambda: "",
        }[problem]()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await fetch(federation, cert, reference)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "consent" in (info.value.details() or "")

    async def test_not_found(self, federation: LocalFederation) -> None:
        cert = certificate_pb2.Certificate()
        cert.CopyFrom(a_certificate(federation, AH))
        cert.holder.person.id_number = synthetic_residents(SH)[3].id_number
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await fetch(federation, cert, consent(federation, AH, holder_of(cert)))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_unknown_category_and_unregistered_purpose(
        self, federation: LocalFederation
    ) -> None:
        cert = certificate_pb2.Certificate()
        cert.CopyFrom(a_certificate(federation, AH))
        reference = consent(federation, AH, holder_of(cert))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await fetch(federation, cert, reference, purpose="CURIOSITY")
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        cert.category_code = "99999999"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await fetch(federation, cert, reference)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "category_code" in (info.value.details() or "")


def pdf(text: bytes = b"%PDF-1.7 synthetic material") -> common_pb2.AttachmentRef:
    return common_pb2.AttachmentRef(
        name="身份证明.pdf",
        media_type="application/pdf",
        size_bytes=len(text),
        sha256=hashlib.sha256(text).digest(),
        content=text,
    )


def case_application(
    service: str = "KS0101",
    handling: str = ZJ,
    materials: list[common_pb2.AttachmentRef] | None = None,
) -> case_pb2.CaseApplication:
    resident = synthetic_residents(JS)[2]
    return case_pb2.CaseApplication(
        idempotency_key=f"case-{uuid.uuid4().hex}",
        service_code=service,
        applicant=common_pb2.Party(
            person=common_pb2.Person(id_number=resident.id_number, full_name=resident.full_name)
        ),
        handling_province=handling,
        description="retired in Hangzhou, pension paid by Jiangsu",
        materials=materials if materials is not None else [pdf()],
    )


async def submit_case(federation: LocalFederation, app: case_pb2.CaseApplication) -> case_pb2.Case:
    stub = case_pb2_grpc.CaseServiceStub(federation.channel(JS))
    case: case_pb2.Case = await stub.SubmitCase(
        case_pb2.SubmitCaseRequest(application=app), metadata=office(JS), timeout=5
    )
    return case


async def until_final(
    federation: LocalFederation, case_id: str, seconds: float = 20
) -> tuple[case_pb2.Case, list[int]]:
    stub = case_pb2_grpc.CaseServiceStub(federation.channel(JS))
    seen: list[int] = []
    deadline = time.monotonic() + seconds
    while True:
        case = await stub.GetCase(
            case_pb2.GetCaseRequest(case_id=case_id), metadata=office(JS), timeout=5
        )
        if not seen or seen[-1] != case.status:
            seen.append(case.status)
        if case.status in (case_pb2.CASE_COMPLETED, case_pb2.CASE_REFUSED) or (
            time.monotonic() > deadline
        ):
            return case, seen
        await asyncio.sleep(0.02)


class TestCases:
    """A Jiangsu system submits a case handled in Zhejiang and tracks it."""

    async def test_case_round_trip(self, federation: LocalFederation) -> None:
        app = case_application()
        case = await submit_case(federation, app)
        assert case.status == case_pb2.CASE_QUEUED
        final, seen = await until_final(federation, case.case_id)
        assert final.status == case_pb2.CASE_COMPLETED, final.status_reason
        assert seen == sorted(seen)
        system = federation.provinces[ZJ].case_system
        assert system is not None
        assert len(system.cases) == 1
        again = await submit_case(federation, app)
        assert again.case_id == case.case_id
        assert len(system.cases) == 1

    async def test_service_not_handled_there_is_refused(self, federation: LocalFederation) -> None:
        case = await submit_case(federation, case_application(service="KS0108"))
        final, _ = await until_final(federation, case.case_id)
        assert final.status == case_pb2.CASE_REFUSED
        assert final.status_reason

    async def test_case_survives_the_handling_node_being_down(
        self, federation: LocalFederation
    ) -> None:
        await federation.stop_node(ZJ)
        case = await submit_case(federation, case_application())
        await asyncio.sleep(0.5)
        await federation.start_node(ZJ)
        final, _ = await until_final(federation, case.case_id, seconds=30)
        assert final.status == case_pb2.CASE_COMPLETED

    @pytest.mark.parametrize(
        ("material", "field"),
        [
            (
                common_pb2.AttachmentRef(
                    name="a.pdf",
                    media_type="application/pdf",
                    size_bytes=4,
                    sha256=hashlib.sha256(b"abcd").digest(),
                    content=b"abce",
                ),
                "materials[0]",
            ),
            (
                common_pb2.AttachmentRef(
                    name="a.exe",
                    media_type="application/x-msdownload",
                    size_bytes=4,
                    sha256=b"\0" * 32,
                ),
                "materials[0].media_type",
            ),
            (
                common_pb2.AttachmentRef(
                    name="a.pdf",
                    media_type="application/pdf",
                    size_bytes=21 * 1024 * 1024,
                    sha256=b"\0" * 32,
                ),
                "materials[0].size_bytes",
            ),
            (
                common_pb2.AttachmentRef(
                    name="a.pdf", media_type="application/pdf", size_bytes=4, sha256=b"short"
                ),
                "materials[0].sha256",
            ),
        ],
        ids=["digest-mismatch", "media-type", "too-large", "bad-digest"],
    )
    async def test_bad_materials(
        self, federation: LocalFederation, material: common_pb2.AttachmentRef, field: str
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await submit_case(federation, case_application(materials=[material]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (info.value.details() or "")

    async def test_too_many_materials(self, federation: LocalFederation) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await submit_case(federation, case_application(materials=[pdf()] * 21))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "materials" in (info.value.details() or "")
