"""A province's case system for inter-provincial services, simulated on loopback.

It stands for the province's *existing* system, so its native endpoints are
written by hand for each province below and deliberately do **not** use the
mapping engine. It shares with the gateway only the national service
catalogue (:data:`adapters.case.SERVICES`); which services it handles is its
own (:data:`HANDLED`: every province leaves one out).

Native endpoints (paths and documents per province, see the dialects):

- submission under a gateway-chosen reference → case number and status.
  Idempotent by reference: a repeated submission answers the case's current
  state and never opens a second case. A case is ACCEPTED, or REFUSED at once
  when the service is not handled here, the applicant is of the wrong kind
  (a business registration change is for organisations), or it has fewer
  materials than the service needs. A document that cannot be read, or has no
  reference, gets HTTP 400.
- status query by reference → status, reason, case number, time of change;
  an unknown reference gets the province's "not found" answer.

Processing: an accepted case is IN_PROGRESS ``processing_delay`` seconds
after its submission and COMPLETED another ``processing_delay`` later,
decided from ``clock`` when asked (so a frozen clock makes it deterministic).
REFUSED and COMPLETED are final.

Harness endpoints (uniform JSON, for tests and demos):

- ``GET /admin/cases`` → ``[{"reference", "case_no", "service_code",
  "status", "reason", "materials", "submitted_at"}]`` (status a CaseStatus name);
- ``GET /admin/services`` → ``[{"service_code", "name", "handled"}]``;
- ``POST /admin/forget`` → ``{"forgotten_cases": n}``: the system loses every
  case (as one that lost its state).

Submissions are idempotent by reference and by (submitting province,
idempotency key): the same application under another reference is the same
case. With a ``state_file`` (``--state-dir`` of
``python -m yrd_simulators``) cases are kept in SQLite and survive a
restart.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET  # building only; parsing uses defusedxml
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web

from adapters.case import SERVICES
from gateway.core.clock import Clock, SystemClock
from yrd_simulators.documents import BadNativeRequest as BadNativeRequest
from yrd_simulators.documents import dumps as _dumps
from yrd_simulators.documents import json_object as _json_object
from yrd_simulators.documents import local as _local
from yrd_simulators.documents import millis as _millis
from yrd_simulators.documents import sub as _sub
from yrd_simulators.documents import text as _text
from yrd_simulators.documents import xml as _xml
from yrd_simulators.documents import xml_root as _xml_root
from yrd_simulators.durable import DurableState
from yrd_simulators.server import SimulatorServer

ACCEPTED, IN_PROGRESS, COMPLETED, REFUSED = (
    "CASE_ACCEPTED",
    "CASE_IN_PROGRESS",
    "CASE_COMPLETED",
    "CASE_REFUSED",
)

#: Services each province handles (every province leaves one out).
HANDLED: dict[str, frozenset[str]] = {
    "310000": frozenset(SERVICES) - {"KS0109"},
    "320000": frozenset(SERVICES) - {"KS0110"},
    "330000": frozenset(SERVICES) - {"KS0108"},
    "340000": frozenset(SERVICES) - {"KS0105"},
}

#: Why a case is refused: a key per rule, worded by each province's dialect.
_REFUSALS = {
    "not_handled": "service not handled in this province",
    "materials": "materials missing",
    "applicant": "wrong kind of applicant for this service",
    "incomplete": "incomplete application",
}
_REFUSALS_ZH = {
    "not_handled": "本省不办理该事项",
    "materials": "申请材料不全",
    "applicant": "申请人类型与事项不符",
    "incomplete": "申请信息不完整",
}


@dataclass(frozen=True)
class Material:
    name: str
    media_type: str
    size_bytes: int
    sha256: bytes


@dataclass(frozen=True)
class Submission:
    """A case as the native submission stated it."""

    reference: str
    idempotency_key: str = ""
    service_code: str = ""
    applicant_kind: str = ""  # "person" / "organisation" / ""
    applicant_id: str = ""
    applicant_name: str = ""
    submitting_province: str = ""
    description: str = ""
    materials: tuple[Material, ...] = ()


@dataclass
class Case:
    case_no: str
    submission: Submission
    submitted_at: datetime
    #: Refusal key (a key of _REFUSALS); "" when accepted.
    refusal: str = ""


# ---- Native helpers ------------------------------------------------------------------


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(document: dict[str, Any], key: str) -> int:
    value = document.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadNativeRequest(f"{key} must be an integer")
    return value


def _digest(text: str, encoding: str) -> bytes:
    try:
        data = bytes.fromhex(text) if encoding == "hex" else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise BadNativeRequest(f"digest must be {encoding}") from None
    if len(data) != 32:
        raise BadNativeRequest("digest must be a SHA-256 digest")
    return data


def _json_materials(
    items: Any, keys: tuple[str, str, str, str], encoding: str
) -> tuple[Material, ...]:
    if items is None:
        return ()
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadNativeRequest(f"{keys[0]} list must be an array of objects")
    name, media, size, digest = keys
    return tuple(
        Material(
            _text(i, name, required=True),
            _text(i, media, required=True),
            _int(i, size),
            _digest(_text(i, digest, required=True), encoding),
        )
        for i in items
    )


@dataclass(frozen=True)
class CaseView:
    """A case's state at one instant."""

    status: str
    changed_at: datetime
    reason: str


# ---- Dialects ------------------------------------------------------------------------


class _Dialect(ABC):
    submit_path: str
    status_path: str
    content_type: str = "application/json"
    states: ClassVar[dict[str, str]]
    wording: ClassVar[dict[str, str]] = _REFUSALS

    @property
    def status_by_get(self) -> bool:
        return "{reference}" in self.status_path

    @abstractmethod
    def parse_submission(self, body: bytes) -> Submission: ...

    def parse_status_query(self, body: bytes) -> str:
        raise BadNativeRequest("status is queried by GET")  # pragma: no cover

    @abstractmethod
    def case_answer(self, case: Case | None, view: CaseView | None) -> bytes: ...

    @abstractmethod
    def error(self, message: str) -> bytes: ...


class _Shanghai(_Dialect):
    """JSON, pinyin-initial keys, yyyyMMddHHmmss times, fhdm result codes."""

    submit_path = "/api/kssb/sq"  # 跨省办事 / 申请
    status_path = "/api/kssb/cx"  # 查询
    states: ClassVar[dict[str, str]] = {
        ACCEPTED: "SL",  # 受理
        IN_PROGRESS: "BLZ",  # 办理中
        COMPLETED: "BJ",  # 办结
        REFUSED: "BYSL",  # 不予受理
    }
    wording = _REFUSALS_ZH

    def parse_submission(self, body: bytes) -> Submission:
        d = _json_object(body)
        applicant = _object(d.get("sqr"))
        person, org = _object(applicant.get("gr")), _object(applicant.get("dw"))
        return Submission(
            reference=_text(d, "ywlsh", required=True),
            idempotency_key=_text(d, "qqbs"),
            service_code=_text(d, "sxbm"),
            applicant_kind="person" if person else "organisation" if org else "",
            applicant_id=_text(person, "sfzh") if person else _text(org, "tyshxydm"),
            applicant_name=_text(person, "xm") if person else _text(org, "mc"),
            submitting_province=_text(d, "sldq"),
            description=_text(d, "sqsm"),
            materials=_json_materials(d.get("cl"), ("wjm", "wjlx", "wjdx", "zy"), "hex"),
        )

    def parse_status_query(self, body: bytes) -> str:
        return _text(_json_object(body), "ywlsh", required=True)

    def case_answer(self, case: Case | None, view: CaseView | None) -> bytes:
        if case is None or view is None:
            return _dumps({"fhdm": "04", "fhxx": "未查询到办件"})
        data: dict[str, Any] = {
            "ywlsh": case.submission.reference,
            "ajbh": case.case_no,
            "blzt": self.states[view.status],
            "bgsj": _local(view.changed_at, "%Y%m%d%H%M%S"),
        }
        if view.reason:
            data["ztsm"] = view.reason
        return _dumps({"fhdm": "00", "fhxx": "成功", "sj": data})

    def error(self, message: str) -> bytes:
        return _dumps({"fhdm": "40", "fhxx": message})


class _Jiangsu(_Dialect):
    """JSON, camelCase keys, RFC 3339 UTC times, digests in base64; status by GET."""

    submit_path = "/cases/v1/submissions"
    status_path = "/cases/v1/submissions/{reference}"
    states: ClassVar[dict[str, str]] = {
        ACCEPTED: "ACCEPTED",
        IN_PROGRESS: "PROCESSING",
        COMPLETED: "COMPLETED",
        REFUSED: "REFUSED",
    }

    def parse_submission(self, body: bytes) -> Submission:
        d = _json_object(body)
        applicant = _object(d.get("applicant"))
        person, org = _object(applicant.get("person")), _object(applicant.get("organisation"))
        return Submission(
            reference=_text(d, "requestRef", required=True),
            idempotency_key=_text(d, "idempotencyKey"),
            service_code=_text(d, "serviceCode"),
            applicant_kind="person" if person else "organisation" if org else "",
            applicant_id=_text(person, "idNumber") if person else _text(org, "creditCode"),
            applicant_name=_text(person, "fullName") if person else _text(org, "name"),
            submitting_province=_text(d, "originRegion"),
            description=_text(d, "description"),
            materials=_json_materials(
                d.get("materials"), ("fileName", "mediaType", "sizeBytes", "sha256"), "base64"
            ),
        )

    def case_answer(self, case: Case | None, view: CaseView | None) -> bytes:
        if case is None or view is None:
            return _dumps({"resultCode": "NOT_FOUND", "message": "no such case"})
        data: dict[str, Any] = {
            "resultCode": "OK",
            "requestRef": case.submission.reference,
            "caseNo": case.case_no,
            "state": self.states[view.status],
            "updatedAt": view.changed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if view.reason:
            data["stateReason"] = view.reason
        return _dumps(data)

    def error(self, message: str) -> bytes:
        return _dumps({"resultCode": "BAD_REQUEST", "message": message})


class _Zhejiang(_Dialect):
    """JSON, snake_case keys, epoch milliseconds, Chinese state words, digests in hex."""

    submit_path = "/zjsx/case_submit"
    status_path = "/zjsx/case_query"
    states: ClassVar[dict[str, str]] = {
        ACCEPTED: "已受理",
        IN_PROGRESS: "办理中",
        COMPLETED: "已办结",
        REFUSED: "不予受理",
    }
    wording = _REFUSALS_ZH

    def parse_submission(self, body: bytes) -> Submission:
        d = _json_object(body)
        applicant = _object(d.get("applicant"))
        person, org = _object(applicant.get("person")), _object(applicant.get("org"))
        return Submission(
            reference=_text(d, "biz_ref", required=True),
            idempotency_key=_text(d, "idem_key"),
            service_code=_text(d, "item_code"),
            applicant_kind="person" if person else "organisation" if org else "",
            applicant_id=_text(person, "id_card_no") if person else _text(org, "credit_code"),
            applicant_name=_text(person, "name") if person else _text(org, "org_name"),
            submitting_province=_text(d, "accept_region"),
            description=_text(d, "remark"),
            materials=_json_materials(
                d.get("materials"), ("file_name", "mime", "size", "sha256_hex"), "hex"
            ),
        )

    def parse_status_query(self, body: bytes) -> str:
        return _text(_json_object(body), "biz_ref", required=True)

    def case_answer(self, case: Case | None, view: CaseView | None) -> bytes:
        if case is None or view is None:
            return _dumps({"ret_code": "1004", "ret_msg": "办件不存在"})
        data: dict[str, Any] = {
            "biz_ref": case.submission.reference,
            "case_no": case.case_no,
            "state": self.states[view.status],
            "update_time_ms": _millis(view.changed_at),
        }
        if view.reason:
            data["remark"] = view.reason
        return _dumps({"ret_code": "0000", "ret_msg": "成功", "data": data})

    def error(self, message: str) -> bytes:
        return _dumps({"ret_code": "4000", "ret_msg": message})


class _Anhui(_Dialect):
    """XML, two-digit state codes, local times "yyyy-MM-dd HH:mm:ss", digests in hex."""

    submit_path = "/sx/case"
    status_path = "/sx/case/status"
    content_type = "application/xml"
    states: ClassVar[dict[str, str]] = {
        ACCEPTED: "10",
        IN_PROGRESS: "20",
        COMPLETED: "30",
        REFUSED: "40",
    }
    wording = _REFUSALS_ZH

    def parse_submission(self, body: bytes) -> Submission:
        root = _xml_root(body, "CaseApply")
        reference = root.findtext("SerialNo")
        if not reference:
            raise BadNativeRequest("<SerialNo> is required")
        person, org = root.find("Applicant/Person"), root.find("Applicant/Org")
        materials = []
        for element in root.findall("Materials/Material"):
            size = element.findtext("Size") or ""
            if not size.isdigit():
                raise BadNativeRequest("<Size> must be decimal digits")
            materials.append(
                Material(
                    element.findtext("FileName") or "",
                    element.findtext("MediaType") or "",
                    int(size),
                    _digest(element.findtext("Digest") or "", "hex"),
                )
            )
        if person is not None:
            kind, ident, name = "person", person.findtext("IdNo"), person.findtext("Name")
        elif org is not None:
            kind, ident, name = "organisation", org.findtext("CreditCode"), org.findtext("OrgName")
        else:
            kind, ident, name = "", "", ""
        return Submission(
            reference=reference,
            idempotency_key=root.findtext("IdemKey") or "",
            service_code=root.findtext("ItemCode") or "",
            applicant_kind=kind,
            applicant_id=ident or "",
            applicant_name=name or "",
            submitting_province=root.findtext("OriginRegion") or "",
            description=root.findtext("Description") or "",
            materials=tuple(materials),
        )

    def parse_status_query(self, body: bytes) -> str:
        text = _xml_root(body, "CaseQuery").findtext("SerialNo")
        if not text:
            raise BadNativeRequest("<SerialNo> is required")
        return text

    def case_answer(self, case: Case | None, view: CaseView | None) -> bytes:
        if case is None or view is None:
            root = ET.Element("CaseResult", code="1")
            _sub(root, "Message", "办件不存在")
            return _xml(root)
        root = ET.Element("CaseResult", code="0")
        _sub(root, "SerialNo", case.submission.reference)
        _sub(root, "CaseNo", case.case_no)
        _sub(root, "State", self.states[view.status])
        if view.reason:
            _sub(root, "Remark", view.reason)
        _sub(root, "UpdateTime", _local(view.changed_at, "%Y-%m-%d %H:%M:%S"))
        return _xml(root)

    def error(self, message: str) -> bytes:
        root = ET.Element("Error")
        _sub(root, "Message", message)
        return _xml(root)


DIALECTS: dict[str, Callable[[], _Dialect]] = {
    "310000": _Shanghai,
    "320000": _Jiangsu,
    "330000": _Zhejiang,
    "340000": _Anhui,
}


class CaseSystemSimulator(SimulatorServer):
    """A province's case system on loopback (see the module docstring).

    ``processing_delay`` (seconds) spaces ACCEPTED → IN_PROGRESS → COMPLETED;
    ``clock`` decides when. State lives in the object and survives
    :meth:`stop` / :meth:`start`; with ``state_file`` it is kept in that SQLite
    file too, and survives a restart of the process. ``seed`` is accepted for
    symmetry with the other simulators (the case system starts empty).
    """

    def __init__(
        self,
        province: str,
        *,
        seed: int = 0,
        processing_delay: float = 0.05,
        clock: Clock | None = None,
        state_file: Path | None = None,
    ) -> None:
        if province not in DIALECTS:
            raise ValueError(f"no simulated case system for province {province!r}")
        super().__init__()
        if processing_delay < 0:
            raise ValueError("processing_delay must not be negative")
        self.province = province
        self.seed = seed
        self.processing_delay = processing_delay
        self.handled = HANDLED[province]
        self._clock: Clock = clock or SystemClock()
        self._dialect = DIALECTS[province]()
        #: Cases by the gateway's reference.
        self.cases: dict[str, Case] = {}
        #: Cases by (submitting province, idempotency key).
        self._by_key: dict[tuple[str, str], Case] = {}
        self._opened = 0
        self._durable = None if state_file is None else DurableState(state_file)
        if self._durable is not None:
            for reference, saved in self._durable.records("case"):
                self.cases[reference] = _case_from(saved)
                self._index(self.cases[reference])
            for _, saved in self._durable.records("meta"):
                self._opened = int(saved.get("opened", 0))

    def _index(self, case: Case) -> None:
        s = case.submission
        if s.idempotency_key:
            self._by_key.setdefault((s.submitting_province, s.idempotency_key), case)

    def forget(self) -> int:
        """Lose every case (a system that lost its state); how many were dropped."""
        dropped = len(self.cases)
        self.cases.clear()
        self._by_key.clear()
        if self._durable is not None:
            self._durable.forget("case")
        return dropped

    def close_state(self) -> None:
        """Close the state file (after :meth:`stop`, when done with the system)."""
        if self._durable is not None:
            self._durable.close()
            self._durable = None

    @property
    def paths(self) -> dict[str, str]:
        return {"submit": self._dialect.submit_path, "status": self._dialect.status_path}

    def submit(self, submission: Submission) -> Case:
        """Open a case, or return the one already open under its reference."""
        existing = self.cases.get(submission.reference)
        if existing is None and submission.idempotency_key:
            # The same application under another reference (from a gateway that
            # lost its own records and received it again) is the same case.
            keyed = self._by_key.get((submission.submitting_province, submission.idempotency_key))
            if keyed is not None and replace(keyed.submission, reference=submission.reference) == (
                submission
            ):
                existing = keyed
        if existing is not None:
            return existing
        self._opened += 1
        case = Case(
            case_no=f"{self.province[:2]}KS{self._opened:08d}",
            submission=submission,
            submitted_at=self._clock.now(),
        )
        case.refusal = self._intake(submission)
        self.cases[submission.reference] = case
        self._index(case)
        if self._durable is not None:
            self._durable.put("case", submission.reference, _case_record(case))
            self._durable.put("meta", "counters", {"opened": self._opened})
        return case

    def _intake(self, s: Submission) -> str:
        if not (s.service_code and s.applicant_kind and s.applicant_id and s.applicant_name):
            return "incomplete"
        service = SERVICES.get(s.service_code)
        if service is None or s.service_code not in self.handled:
            return "not_handled"
        if s.applicant_kind != service.applicant:
            return "applicant"
        if len(s.materials) < service.min_materials:
            return "materials"
        return ""

    def view(self, case: Case) -> CaseView:
        """The case's state now (decided from the clock)."""
        if case.refusal:
            return CaseView(REFUSED, case.submitted_at, self._dialect.wording[case.refusal])
        delay = timedelta(seconds=self.processing_delay)
        elapsed = self._clock.now() - case.submitted_at
        if elapsed >= 2 * delay:
            return CaseView(COMPLETED, case.submitted_at + 2 * delay, "")
        if elapsed >= delay:
            return CaseView(IN_PROGRESS, case.submitted_at + delay, "")
        return CaseView(ACCEPTED, case.submitted_at, "")

    # Serving (start / stop / url / ``async with``: :class:`SimulatorServer`); cases are kept.

    def _routes(self, router: web.UrlDispatcher) -> None:
        d = self._dialect
        router.add_post(d.submit_path, self._native_submit)
        if d.status_by_get:
            router.add_get(d.status_path, self._native_status)
        else:
            router.add_post(d.status_path, self._native_status)
        router.add_get("/admin/cases", self._admin_cases)
        router.add_get("/admin/services", self._admin_services)
        router.add_post("/admin/forget", self._admin_forget)

    def _native_media(self) -> str:
        return self._dialect.content_type

    async def _native_submit(self, request: web.Request) -> web.Response:
        try:
            submission = self._dialect.parse_submission(await request.read())
        except BadNativeRequest as exc:
            return self._native(self._dialect.error(str(exc)), 400)
        case = self.submit(submission)
        return self._native(self._dialect.case_answer(case, self.view(case)))

    async def _native_status(self, request: web.Request) -> web.Response:
        if self._dialect.status_by_get:
            reference = request.match_info["reference"]
        else:
            try:
                reference = self._dialect.parse_status_query(await request.read())
            except BadNativeRequest as exc:
                return self._native(self._dialect.error(str(exc)), 400)
        case = self.cases.get(reference)
        view = self.view(case) if case is not None else None
        return self._native(self._dialect.case_answer(case, view))

    async def _admin_cases(self, request: web.Request) -> web.Response:
        rows = []
        for reference, case in self.cases.items():
            view = self.view(case)
            rows.append(
                {
                    "reference": reference,
                    "case_no": case.case_no,
                    "service_code": case.submission.service_code,
                    "status": view.status,
                    "reason": _REFUSALS.get(case.refusal, ""),
                    "materials": len(case.submission.materials),
                    "submitted_at": case.submitted_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                }
            )
        return web.json_response(rows)

    async def _admin_forget(self, request: web.Request) -> web.Response:
        return web.json_response({"forgotten_cases": self.forget()})

    async def _admin_services(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"service_code": s.code, "name": s.name_en, "handled": s.code in self.handled}
                for s in SERVICES.values()
            ]
        )


def _case_record(case: Case) -> dict[str, Any]:
    s = case.submission
    return {
        "case_no": case.case_no,
        "submitted_at": case.submitted_at.isoformat(),
        "refusal": case.refusal,
        "submission": {
            "reference": s.reference,
            "idempotency_key": s.idempotency_key,
            "service_code": s.service_code,
            "applicant_kind": s.applicant_kind,
            "applicant_id": s.applicant_id,
            "applicant_name": s.applicant_name,
            "submitting_province": s.submitting_province,
            "description": s.description,
            "materials": [
                [m.name, m.media_type, m.size_bytes, m.sha256.hex()] for m in s.materials
            ],
        },
    }


def _case_from(saved: dict[str, Any]) -> Case:
    fields = dict(saved["submission"])
    fields["materials"] = tuple(
        Material(str(name), str(media), int(size), bytes.fromhex(digest))
        for name, media, size, digest in fields["materials"]
    )
    return Case(
        case_no=str(saved["case_no"]),
        submission=Submission(**fields),
        submitted_at=datetime.fromisoformat(saved["submitted_at"]),
        refusal=str(saved["refusal"]),
    )
