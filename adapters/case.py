"""Inter-provincial service cases: service catalogue, material limits, case-system connector.

A case ("handled in another province", 跨省通办) is submitted in one province
and handled by another; the submitting node delivers it, through the
federation, to the handling node, which hands it to its province's case
system with :class:`HttpCaseSystem`.

Service catalogue (:data:`SERVICES`): national service item codes
(``KS`` + four digits, defined here), with who may apply and how many
materials the service needs at least. Which services a province handles is
the province's own business: its case system refuses a case for a service
it does not handle (REFUSED, "service not handled in this province").

Materials travel by digest (:class:`~yrd.common.v1.common_pb2.AttachmentRef`
name, media type, size and SHA-256); their content never enters a native
document (those are at most 1 MiB). Limits, checked before anything is sent
(:func:`check_application`):

- at most :data:`MAX_MATERIALS` (20) materials per case;
- each declares a size of 1 byte .. :data:`MAX_MATERIAL_BYTES` (20 MiB);
- a media type of :data:`MEDIA_TYPES` (PDF, OFD, JPEG, PNG);
- a name of 1..255 UTF-8 bytes, a 32-byte SHA-256 digest;
- content, when present, matches the declared size and digest, and all
  content of a message totals at most :data:`MAX_CONTENT_BYTES` (4 MiB);
- a description of at most 4096 UTF-8 bytes.

The exchange (paths from ``[adapter.case]``):

- submission: POST ``submit_path`` with ``case.submission`` (the application,
  the gateway's ``reference`` and the materials at ``materials_path``);
  ``case.submit_answer`` answers: ACCEPTED, or REFUSED with a reason.
  Idempotent by reference: the case system answers a repeated submission
  with the case's current state.
- status: POST ``status_path`` with ``case.status_query``, or GET
  ``status_path`` with ``{reference}`` filled in; ``case.status`` answers,
  its ``found`` flag false for "no such case".
"""

from __future__ import annotations

import hashlib
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from adapters.connector import REFERENCE as REFERENCE
from adapters.connector import MappedConnector, check_reference
from adapters.errors import CaseNotFound, TranslationError
from adapters.formats import FormatContext, Mismatch
from adapters.http import BackendHttp
from adapters.mapping import Translator, check_gb11643, check_gb32100, from_message, to_message
from adapters.native import JsonNode, XmlNode
from adapters.repeated import read_messages, write_messages
from adapters.spec import AdapterConfig, CaseAdapter
from gateway.core.clock import Clock, SystemClock
from gateway.core.identifiers import is_plain_text, is_region_code
from yrd.case.v1 import case_pb2
from yrd.common.v1 import common_pb2

SUBMISSION = "case.submission"
MATERIAL = "case.material"
SUBMIT_ANSWER = "case.submit_answer"
STATUS_QUERY = "case.status_query"
STATUS = "case.status"

MAX_MATERIALS = 20
MAX_MATERIAL_BYTES = 20 * 1024 * 1024
MAX_CONTENT_BYTES = 4 * 1024 * 1024
MAX_NAME_BYTES = 255
MAX_DESCRIPTION_BYTES = 4096
MEDIA_TYPES = frozenset({"application/pdf", "application/ofd", "image/jpeg", "image/png"})

_SERVICE_CODE = re.compile(r"KS[0-9]{4}")

#: The states a case system can report; QUEUED and DELIVERED belong to the gateway.
SYSTEM_STATES = frozenset(
    {
        case_pb2.CASE_ACCEPTED,
        case_pb2.CASE_IN_PROGRESS,
        case_pb2.CASE_COMPLETED,
        case_pb2.CASE_REFUSED,
    }
)
_BACKEND = "case system"


@dataclass(frozen=True)
class Service:
    """One inter-provincial service of the national catalogue."""

    code: str
    name_zh: str
    name_en: str
    #: Who may apply.
    applicant: Literal["person", "organisation"]
    #: How many materials the service needs at least.
    min_materials: int


_SERVICES = (
    Service("KS0101", "养老保险待遇资格认证", "pension entitlement certification", "person", 1),
    Service("KS0102", "户口迁移", "household registration transfer", "person", 2),
    Service("KS0103", "社会保险关系转移接续", "social insurance transfer", "person", 1),
    Service("KS0104", "异地就医备案", "medical insurance filing for care elsewhere", "person", 1),
    Service("KS0105", "企业登记事项变更", "business registration change", "organisation", 2),
    Service("KS0106", "住房公积金转移接续", "provident fund transfer", "person", 1),
    Service("KS0107", "机动车驾驶证换证", "driving licence renewal", "person", 1),
    Service("KS0108", "婚姻登记档案查询", "marriage record inquiry", "person", 1),
    Service("KS0109", "学历公证", "notarisation of education records", "person", 2),
    Service("KS0110", "生育登记", "birth registration", "person", 1),
)

#: The national catalogue of inter-provincial services, by service code.
SERVICES: Mapping[str, Service] = MappingProxyType({s.code: s for s in _SERVICES})


def check_application(application: case_pb2.CaseApplication) -> None:
    """Check an application's shape and materials against the limits (TranslationError).

    Messages name the canonical field and what was expected, never a value.
    """
    if not _SERVICE_CODE.fullmatch(application.service_code):
        raise TranslationError("service_code", "a national service item code KS + 4 digits")
    kind = application.applicant.WhichOneof("party")
    # Each check names its own field (applicant.person.full_name, ...).
    field = f"applicant.{kind}" if kind else "applicant"
    try:
        if kind == "person":
            field = "applicant.person.id_number"
            check_gb11643(application.applicant.person.id_number)
            field = "applicant.person.full_name"
            name = application.applicant.person.full_name
            if not name.strip() or len(name) > 64 or not is_plain_text(name):
                raise Mismatch("the applicant's name, 1..64 characters")
        elif kind == "organisation":
            field = "applicant.organisation.credit_code"
            check_gb32100(application.applicant.organisation.credit_code)
            field = "applicant.organisation.name"
            name = application.applicant.organisation.name
            if not name.strip() or len(name) > 200 or not is_plain_text(name):
                raise Mismatch("the organisation's name, 1..200 characters")
        else:
            raise Mismatch("a person or an organisation")
    except Mismatch as exc:
        raise TranslationError(field, exc.expected) from None
    for name in ("submitting_province", "handling_province"):
        value = getattr(application, name)
        if value and not is_region_code(value):
            raise TranslationError(name, "a GB/T 2260 six-digit province code")
    description = application.description
    if len(description.encode("utf-8")) > MAX_DESCRIPTION_BYTES or not is_plain_text(
        description, multiline=True
    ):
        raise TranslationError(
            "description", f"at most {MAX_DESCRIPTION_BYTES} UTF-8 bytes of text"
        )
    if len(application.materials) > MAX_MATERIALS:
        raise TranslationError("materials", f"at most {MAX_MATERIALS} materials")
    content_total = 0
    for index, material in enumerate(application.materials):
        at = f"materials[{index}]"
        if not 1 <= len(material.name.encode("utf-8")) <= MAX_NAME_BYTES or not is_plain_text(
            material.name
        ):
            raise TranslationError(f"{at}.name", f"1..{MAX_NAME_BYTES} UTF-8 bytes")
        if material.media_type not in MEDIA_TYPES:
            raise TranslationError(f"{at}.media_type", f"one of {sorted(MEDIA_TYPES)}")
        if not 1 <= material.size_bytes <= MAX_MATERIAL_BYTES:
            raise TranslationError(f"{at}.size_bytes", f"1..{MAX_MATERIAL_BYTES} bytes")
        if len(material.sha256) != 32:
            raise TranslationError(f"{at}.sha256", "a 32-byte SHA-256 digest")
        if material.content:
            content_total += len(material.content)
            if len(material.content) != material.size_bytes:
                raise TranslationError(f"{at}.content", "content of the declared size")
            if hashlib.sha256(material.content).digest() != material.sha256:
                raise TranslationError(f"{at}.content", "content matching the SHA-256 digest")
    if content_total > MAX_CONTENT_BYTES:
        raise TranslationError("materials", f"content of at most {MAX_CONTENT_BYTES} bytes in all")


class HttpCaseSystem(MappedConnector):
    """:class:`~adapters.base.CaseSystem` over HTTP, in the province's native format.

    ``clock`` stamps ``changed_at`` when the case system's answer carries no
    time of its own. One connection pool per connector.
    """

    def __init__(
        self, adapter: AdapterConfig, base_url: str, *, clock: Clock | None = None
    ) -> None:
        if adapter.case is None:
            raise ValueError("the adapter config has no [adapter.case] section")
        self._case: CaseAdapter = adapter.case
        if adapter.format == "xml" and self._case.material_item is None:
            raise ValueError("case.material_item: expected an element name (format is xml)")
        self._translator = Translator(adapter)
        self._ctx = FormatContext(
            timezone=zoneinfo.ZoneInfo(adapter.timezone), textual=adapter.format == "xml"
        )
        self._materials_path = tuple(self._case.materials_path.split("."))
        self._http = BackendHttp(_BACKEND, base_url)
        self._clock: Clock = clock or SystemClock()

    @property
    def province(self) -> str:
        return self._case.province

    def encode_submission(self, reference: str, application: case_pb2.CaseApplication) -> bytes:
        """The native submission document (also what a mapped simulator would read)."""
        check_reference(reference, SUBMISSION)
        try:
            check_application(application)
        except TranslationError as exc:
            raise TranslationError(exc.path, exc.expected, message=SUBMISSION) from None
        if application.handling_province and application.handling_province != self.province:
            raise TranslationError(
                "handling_province",
                f"this case system's province {self.province}",
                message=SUBMISSION,
            )
        canonical = from_message(application)
        canonical.pop("handling_province", None)
        materials = canonical.pop("materials", [])
        for material in materials:
            material.pop("content", None)  # materials travel by digest
        canonical["reference"] = reference
        document = self._translator.to_native(SUBMISSION, canonical)
        node = XmlNode(document) if not isinstance(document, dict) else JsonNode(document)
        try:
            write_messages(
                self._translator.mapper(MATERIAL),
                node,
                self._materials_path,
                self._case.material_item,
                materials,
                self._ctx,
            )
        except TranslationError as exc:
            raise TranslationError(exc.path, exc.expected, message=SUBMISSION) from None
        return _serialize(document)

    def decode_submission(self, body: bytes) -> tuple[str, case_pb2.CaseApplication]:
        """A native submission: (reference, application with materials, handling province set)."""
        document = self._translator.parse(SUBMISSION, body)
        canonical = self._translator.to_canonical(SUBMISSION, document)
        reference = canonical.pop("reference")
        node = XmlNode(document) if not isinstance(document, dict) else JsonNode(document)
        try:
            materials = read_messages(
                self._translator.mapper(MATERIAL),
                node,
                self._materials_path,
                self._case.material_item,
                self._ctx,
            )
        except TranslationError as exc:
            raise TranslationError(exc.path, exc.expected, message=SUBMISSION) from None
        application = to_message(canonical, case_pb2.CaseApplication)
        for material in materials:
            application.materials.append(to_message(material, common_pb2.AttachmentRef))
        application.handling_province = self.province
        return str(reference), application

    async def submit_case(
        self, reference: str, application: case_pb2.CaseApplication, *, timeout: float
    ) -> case_pb2.CaseStatusUpdate:
        body = self.encode_submission(reference, application)
        answer = await self._post(self._case.submit_path, body, timeout, "case submission")
        update = self._to_update(
            self._translator.decode(SUBMIT_ANSWER, answer), SUBMIT_ANSWER, reference
        )
        update.idempotency_key = application.idempotency_key
        return update

    async def case_status(self, reference: str, *, timeout: float) -> case_pb2.CaseStatusUpdate:
        check_reference(reference, SUBMISSION)
        answer = await self._ask_status(
            self._case.status_path,
            self._case.status_by_get,
            STATUS_QUERY,
            reference,
            timeout,
            "case status query",
        )
        canonical = self._translator.decode(STATUS, answer)
        if not canonical.pop("found"):
            raise CaseNotFound("the case system has no case with this reference")
        return self._to_update(canonical, STATUS, reference)

    def _to_update(
        self, canonical: dict[str, Any], message: str, reference: str
    ) -> case_pb2.CaseStatusUpdate:
        """The case system's answer as a status update, checked against what was asked."""
        self._check_about(canonical, message, reference, "a case status")
        status = case_pb2.CaseStatus.Value(canonical["status"])
        if status not in SYSTEM_STATES:
            raise TranslationError(
                "status",
                "CASE_ACCEPTED, CASE_IN_PROGRESS, CASE_COMPLETED or CASE_REFUSED",
                message=message,
            )
        self._stamp_changed_at(canonical, message)
        return to_message(canonical, case_pb2.CaseStatusUpdate)


def _serialize(document: Any) -> bytes:
    from adapters import native

    if isinstance(document, dict):
        return native.serialize_json(document)
    return native.serialize_xml(document)
