"""HttpCaseSystem against each province's case-system simulator, and the case limits."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdnum.cn import uscc

from adapters import CaseNotFound, CaseSystem, TranslationError, build_case_system
from adapters.case import (
    MAX_MATERIALS,
    SERVICES,
    HttpCaseSystem,
    check_application,
)
from adapters.golden import load_vectors
from adapters.spec import AdapterConfig
from gateway.core.clock import FrozenClock
from gateway.core.identifiers import make_id_number as id_number
from yrd.case.v1 import case_pb2
from yrd_simulators.case_system import HANDLED, CaseSystemSimulator

NOW = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
COMPANY = "91310115MA1K4B7C8" + str(uscc.calc_check_digit("91310115MA1K4B7C8"))
DELAY = 5.0
_HAN = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)
# Plain text as the case checks define it: no bidirectional controls either.
_TEXT = st.characters(
    blacklist_categories=("Cs", "Cc", "Cn"),
    blacklist_characters="\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
)
Running = tuple[CaseSystemSimulator, HttpCaseSystem, FrozenClock]


@pytest.fixture
async def running(province: tuple[str, AdapterConfig]) -> AsyncIterator[Running]:
    code, config = province
    clock = FrozenClock(NOW)
    simulator = CaseSystemSimulator(code, processing_delay=DELAY, clock=clock)
    url = await simulator.start()
    system = build_case_system(config, url, clock=clock)
    assert isinstance(system, HttpCaseSystem)
    assert isinstance(system, CaseSystem)
    yield simulator, system, clock
    await system.aclose()
    await simulator.stop()


def _application(
    service: str = "KS0102", materials: int = 2, handling: str = ""
) -> case_pb2.CaseApplication:
    application = case_pb2.CaseApplication(
        idempotency_key="case-key-0001",
        service_code=service,
        submitting_province="310000",
        handling_province=handling,
        description="户口迁入配偶户籍地",
    )
    application.applicant.person.id_number = id_number("310104", date(1991, 4, 3), 21)
    application.applicant.person.full_name = "陈静"
    for n in range(materials):
        content = f"material {n}".encode()
        application.materials.add(
            name=f"材料{n}.pdf",
            media_type="application/pdf",
            size_bytes=len(content),
            sha256=hashlib.sha256(content).digest(),
            content=content,
        )
    return application


def _unhandled(code: str) -> str:
    return next(iter(sorted(set(SERVICES) - HANDLED[code])))


class TestLifecycle:
    """ACCEPTED → IN_PROGRESS → COMPLETED after the processing delay; submissions idempotent."""

    async def test_accepted_then_completed(self, running: Running) -> None:
        sim, system, clock = running
        update = await system.submit_case("YRD-case-0001", _application(), timeout=5)
        assert update.status == case_pb2.CASE_ACCEPTED
        assert update.idempotency_key == "case-key-0001"
        assert update.remote_reference == sim.cases["YRD-case-0001"].case_no
        assert len(sim.cases["YRD-case-0001"].submission.materials) == 2
        status = await system.case_status("YRD-case-0001", timeout=5)
        assert status.status == case_pb2.CASE_ACCEPTED
        clock.advance(timedelta(seconds=DELAY))
        status = await system.case_status("YRD-case-0001", timeout=5)
        assert status.status == case_pb2.CASE_IN_PROGRESS
        clock.advance(timedelta(seconds=DELAY))
        status = await system.case_status("YRD-case-0001", timeout=5)
        assert status.status == case_pb2.CASE_COMPLETED
        assert status.changed_at.ToDatetime(UTC) == NOW + timedelta(seconds=2 * DELAY)
        assert status.remote_reference == update.remote_reference

    async def test_resubmission_opens_no_second_case(self, running: Running) -> None:
        sim, system, clock = running
        first = await system.submit_case("YRD-case-0002", _application(), timeout=5)
        clock.advance(timedelta(seconds=DELAY))
        again = await system.submit_case("YRD-case-0002", _application(), timeout=5)
        assert len(sim.cases) == 1
        assert again.remote_reference == first.remote_reference
        assert again.status == case_pb2.CASE_IN_PROGRESS

    async def test_unknown_reference(self, running: Running) -> None:
        _, system, _ = running
        with pytest.raises(CaseNotFound):
            await system.case_status("YRD-never", timeout=5)


class TestRefusals:
    """Refused at once, with a reason free of personal data; REFUSED is final."""

    async def test_service_not_handled(self, running: Running) -> None:
        sim, system, clock = running
        update = await system.submit_case(
            "YRD-case-0003", _application(_unhandled(sim.province)), timeout=5
        )
        assert update.status == case_pb2.CASE_REFUSED
        assert update.status_reason
        clock.advance(timedelta(seconds=3 * DELAY))
        status = await system.case_status("YRD-case-0003", timeout=5)
        assert status.status == case_pb2.CASE_REFUSED

    async def test_materials_missing(self, running: Running) -> None:
        _, system, _ = running
        update = await system.submit_case("YRD-case-0004", _application(materials=1), timeout=5)
        assert update.status == case_pb2.CASE_REFUSED
        assert "陈静" not in update.status_reason

    async def test_wrong_kind_of_applicant(self, running: Running) -> None:
        _, system, _ = running
        # KS0101 (pension entitlement) is for persons, and every province handles it.
        update = await system.submit_case("YRD-case-0005", _organisation("KS0101"), timeout=5)
        assert update.status == case_pb2.CASE_REFUSED

    async def test_organisation_applicant(self, running: Running) -> None:
        sim, system, _ = running
        update = await system.submit_case("YRD-case-0006", _organisation("KS0105"), timeout=5)
        handled = "KS0105" in sim.handled
        assert update.status == (case_pb2.CASE_ACCEPTED if handled else case_pb2.CASE_REFUSED)


def _organisation(service: str) -> case_pb2.CaseApplication:
    application = _application(service)
    application.applicant.organisation.credit_code = COMPANY
    application.applicant.organisation.name = "上海长江科技有限公司"
    return application


class TestLimits:
    """Materials outside the documented limits never leave the node."""

    @pytest.mark.parametrize(
        ("change", "path"),
        [
            (lambda a: setattr(a.materials[0], "media_type", "text/html"), "media_type"),
            (lambda a: setattr(a.materials[0], "size_bytes", 0), "size_bytes"),
            (lambda a: setattr(a.materials[0], "sha256", b"short"), "sha256"),
            (lambda a: setattr(a.materials[0], "content", b"other"), "content"),
            (lambda a: setattr(a.materials[0], "name", ""), "name"),
            (lambda a: setattr(a, "description", "x" * 4097), "description"),
            (lambda a: setattr(a, "service_code", "ABC"), "service_code"),
            (lambda a: a.applicant.ClearField("person"), "applicant"),
            (
                lambda a: [
                    a.materials.add().CopyFrom(a.materials[0]) for _ in range(MAX_MATERIALS)
                ],
                "materials",
            ),
        ],
    )
    def test_refused(self, change: object, path: str) -> None:
        application = _application()
        assert callable(change)
        change(application)
        with pytest.raises(TranslationError, match=path):
            check_application(application)

    async def test_content_is_not_sent(self, running: Running) -> None:
        _, system, _ = running
        body = system.encode_submission("YRD-case-0007", _application())
        assert b"material 0" not in body
        reference, back = system.decode_submission(body)
        assert reference == "YRD-case-0007"
        assert [m.content for m in back.materials] == [b"", b""]

    async def test_other_handling_province_refused(self, running: Running) -> None:
        sim, system, _ = running
        other = "320000" if sim.province != "320000" else "330000"
        with pytest.raises(TranslationError, match="handling_province"):
            await system.submit_case("YRD-case-0008", _application(handling=other), timeout=5)


@st.composite
def applications(draw: st.DrawFn, handling: str) -> case_pb2.CaseApplication:
    application = case_pb2.CaseApplication(
        idempotency_key=draw(st.from_regex(r"[A-Za-z0-9._:-]{8,32}", fullmatch=True)),
        service_code=draw(st.sampled_from(sorted(SERVICES))),
        submitting_province=draw(st.sampled_from(["310000", "320000", "330000", "340000"])),
        handling_province=handling,
        description=draw(st.text(_TEXT, max_size=40).filter(lambda s: s.strip() == s)),
    )
    birth = draw(st.dates(date(1930, 1, 1), date(2010, 12, 31)))
    application.applicant.person.id_number = id_number("330106", birth, draw(st.integers(0, 999)))
    application.applicant.person.full_name = draw(st.text(_HAN, min_size=1, max_size=5))
    for _ in range(draw(st.integers(0, 4))):
        application.materials.add(
            name=draw(st.text(_TEXT, min_size=1, max_size=30).filter(lambda s: s.strip() == s)),
            media_type=draw(st.sampled_from(["application/pdf", "image/png", "image/jpeg"])),
            size_bytes=draw(st.integers(1, 20 * 1024 * 1024)),
            sha256=draw(st.binary(min_size=32, max_size=32)),
        )
    return application


class TestRoundTrip:
    """A submission written in the province's format reads back as the same application."""

    @settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(data=st.data())
    def test_submissions(self, province: tuple[str, AdapterConfig], data: st.DataObject) -> None:
        code, config = province
        system = HttpCaseSystem(config, "http://127.0.0.1:9")
        application = data.draw(applications(code))
        reference = data.draw(st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True))
        assert system.decode_submission(system.encode_submission(reference, application)) == (
            reference,
            application,
        )

    def test_golden_submission(self, province: tuple[str, AdapterConfig], config_dir: Path) -> None:
        code, config = province
        system = HttpCaseSystem(config, "http://127.0.0.1:9")
        (vector,) = [
            v
            for v in load_vectors(config_dir / code / "golden" / "case")
            if v.message == "case.submission"
        ]
        whole = json.loads(vector.path.read_text(encoding="utf-8"))["application"]
        application = json_format.ParseDict(whole, case_pb2.CaseApplication())
        body = (
            vector.native.encode("utf-8")
            if isinstance(vector.native, str)
            else json.dumps(vector.native, ensure_ascii=False).encode("utf-8")
        )
        assert system.decode_submission(body) == (vector.canonical["reference"], application)
        written = system.encode_submission(vector.canonical["reference"], application)
        if isinstance(vector.native, dict):
            assert json.loads(written) == vector.native
        else:

            def c14n(text: str) -> str:
                return ET.canonicalize(text.split("?>", 1)[-1], strip_text=True)

            assert c14n(written.decode("utf-8")) == c14n(vector.native)
