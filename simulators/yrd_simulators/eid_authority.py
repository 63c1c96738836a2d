"""A province's e-ID authority, simulated: a real HTTP server on loopback.

It stands for the province's *existing* system, so its native status endpoint
is written by hand for each province below and deliberately does **not** use
the mapping engine: when a province's mapping config is wrong, the gateway's
translation of this simulator's answers fails, as it would against the real
system.

Endpoints:

``POST /wallet/qr`` (the resident's phone wallet, uniform JSON)
    ``{"credential_id", "ttl_seconds"?: 1..300 (default 120), "issued_at"?: epoch s}``
    → ``{"qr_payload", "token_id", "expires_at"}``; the token is signed with
    the authority's issuer key.
``GET /residents`` (test and demo harness, uniform JSON)
    ``[{"credential_id", "id_number", "full_name", "gender", "state"}]``.
``POST /admin/credentials/{credential_id}/state`` (harness, uniform JSON)
    ``{"state": "CREDENTIAL_REVOKED"}`` changes a credential's state.
``POST /admin/faults`` (harness, uniform JSON)
    ``{"status_answer": "malformed" | "refuse" | "fail" | "normal"}``: from now
    on the native status endpoint answers every well-formed query with HTTP 200
    and a document no mapping reads (``malformed``), HTTP 400 (``refuse``),
    HTTP 503 (``fail``), or as usual (``normal``); a faulty answer marks no
    token used.
The province's native status endpoint (path and documents per province)
    The credential's state, whether the token id was used before, and the
    holder's record. It marks the token used: the first query of a token id
    answers "not used", every later one "used". An unknown credential gets the
    province's "unknown" answer; a malformed request gets HTTP 400.
The province's session endpoint (Anhui only: ``POST /eid/session``)
    Anhui answers status queries only within a session: the caller opens one
    with its application id and sends the token in ``X-Session-Token``; a
    query without a live token gets HTTP 401 (and marks nothing used). The
    gateway's side is the ``anhui-session`` plug-in (:mod:`adapters.session`).

A region with no hand-written dialect (one known only by its config, such as
a new province being added) is served by the *mapped* dialect of
:mod:`yrd_simulators.mapped`, which writes its documents through the
region's own ``[adapter]`` mapping: good for trying a new region end to end,
no independent check of its mapping (its golden vectors are that check).
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
import xml.etree.ElementTree as ET  # building only; parsing uses defusedxml
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import defusedxml.ElementTree as SafeET
from aiohttp import web

from adapters.errors import TranslationError
from adapters.formats import format_timestamp
from adapters.mapping import Translator
from adapters.spec import AdapterConfig
from gateway.core.clock import Clock, SystemClock
from gateway.core.crypto import load_private_key
from gateway.core.eid_token import issue_token
from yrd_simulators import mapped
from yrd_simulators.documents import BadNativeRequest as BadNativeRequest
from yrd_simulators.documents import dumps as _dumps
from yrd_simulators.documents import json_object as _json_object
from yrd_simulators.residents import Resident, synthetic_residents
from yrd_simulators.server import (
    SimulatorServer,
    admin_set_choice,
    json_error,
    json_object,
    not_an_object,
)

_CST = ZoneInfo("Asia/Shanghai")
#: How the native status endpoint may be told to answer (``POST /admin/faults``).
STATUS_FAULTS = ("normal", "malformed", "refuse", "fail")
_MAX_TTL_SECONDS = 300
_DEFAULT_TTL_SECONDS = 120
_STATES = (
    "CREDENTIAL_ACTIVE",
    "CREDENTIAL_REVOKED",
    "CREDENTIAL_LOST",
    "CREDENTIAL_SUSPENDED",
)


class _Dialect(ABC):
    """One province's native status endpoint: its path, request and answer documents."""

    path: str
    content_type: str = "application/json; charset=utf-8"

    @abstractmethod
    def parse_request(self, body: bytes) -> tuple[str, str]:
        """(credential id, token id) from the native request; raises BadNativeRequest."""

    @abstractmethod
    def answer(
        self, state: str | None, used: bool, resident: Resident | None, now: datetime
    ) -> bytes:
        """The native answer; ``state`` None means the credential is unknown."""

    @abstractmethod
    def error(self, message: str) -> bytes:
        """The native body of an HTTP 400 answer."""

    #: POST here to open a session; when set, status queries need a live session token.
    session_path: str | None = None
    #: The header that carries the session token.
    session_header = "X-Session-Token"

    def parse_session_request(self, body: bytes) -> str:  # pragma: no cover - session dialects
        """The application id of a session request; raises BadNativeRequest."""
        raise BadNativeRequest("this authority has no sessions")

    def accepts(self, app_id: str) -> bool:
        """True when ``app_id`` may open a session."""
        return False

    def session_answer(
        self, token: str | None, lifetime: int
    ) -> bytes:  # pragma: no cover - session dialects
        """The answer to a session request (token None: the application is refused)."""
        raise NotImplementedError


def _json_request(body: bytes, credential_key: str, token_key: str) -> tuple[str, str]:
    document = _json_object(body)
    values = []
    for key in (credential_key, token_key):
        value = document.get(key)
        if not isinstance(value, str) or not value:
            raise BadNativeRequest(f"{key} must be a non-empty string")
        values.append(value)
    return values[0], values[1]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Shanghai(_Dialect):
    """JSON, pinyin-initial keys, yyyyMMdd, GB/T 2261.1 gender, YX/ZX/GS/DJ states."""

    path = "/api/sfrz/zt"
    _STATES: ClassVar[dict[str, str]] = {
        "CREDENTIAL_ACTIVE": "YX",
        "CREDENTIAL_REVOKED": "ZX",
        "CREDENTIAL_LOST": "GS",
        "CREDENTIAL_SUSPENDED": "DJ",
    }

    def parse_request(self, body: bytes) -> tuple[str, str]:
        return _json_request(body, "pzbh", "lpbh")

    def answer(
        self, state: str | None, used: bool, resident: Resident | None, now: datetime
    ) -> bytes:
        data: dict[str, Any] = {
            "pzzt": "WZ" if state is None else self._STATES[state],
            "lpysy": "1" if used else "0",
            "cxsj": now.astimezone(_CST).strftime("%Y%m%d%H%M%S"),
        }
        if resident is not None:
            data["jg"] = {
                "sfzh": resident.id_number,
                "xm": resident.full_name,
                "xb": "1" if resident.gender == "GENDER_MALE" else "2",
                "csrq": resident.birth_date.strftime("%Y%m%d"),
                "mz": resident.ethnicity,
                "zz": resident.address,
                "hjdq": resident.registered_region,
                "gj": resident.nationality,
                "zp": _b64(resident.photo),
            }
        return _dumps({"fhdm": "00", "fhxx": "成功", "sj": data})

    def error(self, message: str) -> bytes:
        return _dumps({"fhdm": "40", "fhxx": message})


class _Jiangsu(_Dialect):
    """JSON, camelCase English keys, ISO dates, M/F, RFC 3339 check time."""

    path = "/eid/v1/credential-status"
    _STATES: ClassVar[dict[str, str]] = {
        "CREDENTIAL_ACTIVE": "ACTIVE",
        "CREDENTIAL_REVOKED": "REVOKED",
        "CREDENTIAL_LOST": "LOST",
        "CREDENTIAL_SUSPENDED": "SUSPENDED",
    }

    def parse_request(self, body: bytes) -> tuple[str, str]:
        return _json_request(body, "credentialNo", "tokenId")

    def answer(
        self, state: str | None, used: bool, resident: Resident | None, now: datetime
    ) -> bytes:
        data: dict[str, Any] = {
            "credentialStatus": "NOT_FOUND" if state is None else self._STATES[state],
            "tokenUsed": used,
            "checkedAt": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if resident is not None:
            data["holder"] = {
                "idNumber": resident.id_number,
                "fullName": resident.full_name,
                "gender": "M" if resident.gender == "GENDER_MALE" else "F",
                "birthDate": resident.birth_date.isoformat(),
                "ethnicCode": resident.ethnicity,
                "homeAddress": resident.address,
                "regionCode": resident.registered_region,
                "nationality": resident.nationality,
                "photoBase64": _b64(resident.photo),
            }
        return _dumps(data)

    def error(self, message: str) -> bytes:
        return _dumps({"error": "BAD_REQUEST", "message": message})


class _Zhejiang(_Dialect):
    """JSON, snake_case keys, epoch milliseconds, Chinese gender and state words."""

    path = "/zjeid/status_query"
    _STATES: ClassVar[dict[str, str]] = {
        "CREDENTIAL_ACTIVE": "正常",
        "CREDENTIAL_REVOKED": "吊销",
        "CREDENTIAL_LOST": "挂失",
        "CREDENTIAL_SUSPENDED": "冻结",
    }

    def parse_request(self, body: bytes) -> tuple[str, str]:
        return _json_request(body, "credential_no", "token_no")

    def answer(
        self, state: str | None, used: bool, resident: Resident | None, now: datetime
    ) -> bytes:
        document: dict[str, Any] = {
            "result": {
                "status": "不存在" if state is None else self._STATES[state],
                "token_used": "Y" if used else "N",
                "query_time_ms": int(now.timestamp() * 1000),
            }
        }
        if resident is not None:
            birth = resident.birth_date
            # The register stores a birth date as the instant its day began in
            # Beijing time (UTC+9 during the 1986-1991 summers).
            midnight = datetime(birth.year, birth.month, birth.day, tzinfo=_CST)
            document["resident"] = {
                "id_card_no": resident.id_number,
                "name": resident.full_name,
                "gender": "男" if resident.gender == "GENDER_MALE" else "女",
                "birth_millis": int(midnight.timestamp()) * 1000,
                "nation_code": resident.ethnicity,
                "domicile_address": resident.address,
                "domicile_region": resident.registered_region,
                "nationality": resident.nationality,
                "photo_b64": _b64(resident.photo),
            }
        return _dumps(document)

    def error(self, message: str) -> bytes:
        return _dumps({"result": {"code": 400, "msg": message}})


class _Anhui(_Dialect):
    """XML documents, yyyy/MM/dd, male/female, two-digit state codes, and sessions."""

    path = "/eid/status"
    content_type = "application/xml; charset=utf-8"
    session_path = "/eid/session"
    #: Application ids the authority has registered: the gateways of the federation.
    _APP_ID = re.compile(r"YRD-GW-[1-9][0-9]{5}")

    def parse_session_request(self, body: bytes) -> str:
        try:
            root = SafeET.fromstring(body, forbid_dtd=True)
        except (SafeET.ParseError, ValueError):
            raise BadNativeRequest("body is not a well-formed XML document") from None
        if root.tag != "SessionRequest":
            raise BadNativeRequest("document element must be <SessionRequest>")
        app_id = root.findtext("AppId")
        if not app_id:
            raise BadNativeRequest("<AppId> is required")
        return str(app_id)

    def accepts(self, app_id: str) -> bool:
        return self._APP_ID.fullmatch(app_id) is not None

    def session_answer(self, token: str | None, lifetime: int) -> bytes:
        if token is None:
            root = ET.Element("SessionReply", code="1")
            ET.SubElement(root, "Message").text = "应用未注册"
        else:
            root = ET.Element("SessionReply", code="0")
            ET.SubElement(root, "Token").text = token
            ET.SubElement(root, "ExpiresIn").text = str(lifetime)
        data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return data

    _STATES: ClassVar[dict[str, str]] = {
        "CREDENTIAL_ACTIVE": "01",
        "CREDENTIAL_REVOKED": "02",
        "CREDENTIAL_LOST": "03",
        "CREDENTIAL_SUSPENDED": "04",
    }

    def parse_request(self, body: bytes) -> tuple[str, str]:
        try:
            root = SafeET.fromstring(body, forbid_dtd=True)
        except (SafeET.ParseError, ValueError):
            raise BadNativeRequest("body is not a well-formed XML document") from None
        if root.tag != "StatusQuery":
            raise BadNativeRequest("document element must be <StatusQuery>")
        values = []
        for tag in ("CredentialNo", "TokenId"):
            text = root.findtext(tag)
            if not text:
                raise BadNativeRequest(f"<{tag}> is required")
            values.append(text)
        return values[0], values[1]

    def answer(
        self, state: str | None, used: bool, resident: Resident | None, now: datetime
    ) -> bytes:
        root = ET.Element(
            "StatusResult", checkedAt=now.astimezone(_CST).strftime("%Y-%m-%d %H:%M:%S")
        )
        ET.SubElement(root, "CredentialState").text = "09" if state is None else self._STATES[state]
        ET.SubElement(root, "TokenUsed").text = "true" if used else "false"
        if resident is not None:
            info = ET.SubElement(root, "ResidentInfo")
            for tag, text in (
                ("IdNo", resident.id_number),
                ("Name", resident.full_name),
                ("Gender", "male" if resident.gender == "GENDER_MALE" else "female"),
                ("BirthDate", resident.birth_date.strftime("%Y/%m/%d")),
                ("Nation", resident.ethnicity),
                ("Address", resident.address),
                ("RegionCode", resident.registered_region),
                ("Nationality", resident.nationality),
                ("Photo", _b64(resident.photo)),
            ):
                ET.SubElement(info, tag).text = text
        data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return data

    def error(self, message: str) -> bytes:
        root = ET.Element("Error")
        ET.SubElement(root, "Message").text = message
        data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return data


DIALECTS: dict[str, Callable[[], _Dialect]] = {
    "310000": _Shanghai,
    "320000": _Jiangsu,
    "330000": _Zhejiang,
    "340000": _Anhui,
}


class EidAuthoritySimulator(SimulatorServer):
    """A province's e-ID authority on loopback, with synthetic residents.

    ``clock`` stamps tokens and answers (a frozen clock makes expiry testable);
    ``seed`` picks the residents. ``requests_served`` counts every HTTP request
    answered, so a test can assert that a call did — or did not — reach it.
    ``adapter`` (the region's ``[adapter]`` config) serves a region without a
    hand-written dialect through its own mapping. ``session_lifetime``
    (seconds) is how long a session of a session dialect lasts.
    """

    def __init__(
        self,
        province: str,
        issuer_key_path: Path,
        key_id: str,
        *,
        clock: Clock | None = None,
        seed: int = 0,
        adapter: AdapterConfig | None = None,
        session_lifetime: int = 600,
    ) -> None:
        super().__init__()
        self.province = province
        self.key_id = key_id
        self._key = load_private_key(Path(issuer_key_path))
        self._clock: Clock = clock or SystemClock()
        self._dialect = _dialect_for(province, adapter)
        self._residents = {r.credential_id: r for r in synthetic_residents(province, seed)}
        self._used_tokens: set[str] = set()
        #: Open sessions (session dialects): token -> when it lapses.
        self._sessions: dict[str, datetime] = {}
        self.session_lifetime = session_lifetime
        #: Native status queries answered (a subset of requests_served).
        self.status_queries = 0
        #: How the status endpoint answers (``POST /admin/faults``; one of STATUS_FAULTS).
        self.status_answer = "normal"

    @property
    def residents(self) -> tuple[Resident, ...]:
        """The residents with their current credential states."""
        return tuple(self._residents.values())

    @property
    def status_path(self) -> str:
        """Path of the province's native status endpoint."""
        return self._dialect.path

    def expire_sessions(self) -> None:
        """Drop every open session, as a restart of the authority would (tests)."""
        self._sessions.clear()

    def set_state(self, credential_id: str, state: str) -> None:
        """Change a credential's state (what the admin endpoint does)."""
        if state not in _STATES:
            raise ValueError(f"state must be one of {_STATES}")
        resident = self._residents[credential_id]
        self._residents[credential_id] = replace(resident, state=state)

    # Serving: start / stop / url / ``async with`` are :class:`SimulatorServer`'s.

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/wallet/qr", self._wallet_qr)
        router.add_get("/residents", self._list_residents)
        router.add_post("/admin/credentials/{credential_id}/state", self._admin_state)
        router.add_post("/admin/faults", self._admin_faults)
        router.add_post(self._dialect.path, self._native_status)
        if self._dialect.session_path is not None:
            router.add_post(self._dialect.session_path, self._native_session)

    def _native_media(self) -> str:
        return self._dialect.content_type.split(";", 1)[0]

    async def _wallet_qr(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if body is None:
            return not_an_object()
        credential_id = body.get("credential_id")
        if not isinstance(credential_id, str) or credential_id not in self._residents:
            return json_error(404, "unknown credential_id")
        ttl = body.get("ttl_seconds", _DEFAULT_TTL_SECONDS)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= _MAX_TTL_SECONDS:
            return json_error(400, f"ttl_seconds must be an integer in 1..{_MAX_TTL_SECONDS}")
        issued_at = body.get("issued_at")
        if issued_at is None:
            issued = self._clock.now()
        elif isinstance(issued_at, int) and not isinstance(issued_at, bool) and issued_at > 0:
            issued = datetime.fromtimestamp(issued_at, UTC)
        else:
            return json_error(400, "issued_at must be epoch seconds (integer)")
        token_id = str(uuid.uuid4())
        qr = issue_token(
            self._key,
            key_id=self.key_id,
            issuer=self.province,
            credential_id=credential_id,
            token_id=token_id,
            issued_at=issued,
            ttl=timedelta(seconds=ttl),
        )
        return web.json_response(
            {"qr_payload": qr, "token_id": token_id, "expires_at": int(issued.timestamp()) + ttl}
        )

    async def _list_residents(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "credential_id": r.credential_id,
                    "id_number": r.id_number,
                    "full_name": r.full_name,
                    "gender": r.gender,
                    "state": r.state,
                }
                for r in self._residents.values()
            ]
        )

    async def _admin_state(self, request: web.Request) -> web.Response:
        return await admin_set_choice(
            request,
            key="credential_id",
            known=self._residents,
            answer_key="credential_id",
            field="state",
            choices=_STATES,
            apply=self.set_state,
        )

    async def _admin_faults(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if body is None:
            return not_an_object()
        answer = body.get("status_answer")
        if answer not in STATUS_FAULTS:
            return json_error(400, f"status_answer must be one of {', '.join(STATUS_FAULTS)}")
        self.status_answer = answer
        return web.json_response({"status_answer": self.status_answer})

    async def _native_session(self, request: web.Request) -> web.Response:
        dialect = self._dialect
        try:
            app_id = dialect.parse_session_request(await request.read())
        except BadNativeRequest as exc:
            return self._native(dialect.error(str(exc)), 400)
        token = None
        if dialect.accepts(app_id):
            token = secrets.token_hex(16)
            now = self._clock.now()
            self._sessions = {t: end for t, end in self._sessions.items() if end > now}
            self._sessions[token] = now + timedelta(seconds=self.session_lifetime)
        return self._native(dialect.session_answer(token, self.session_lifetime))

    async def _native_status(self, request: web.Request) -> web.Response:
        dialect = self._dialect
        if dialect.session_path is not None:
            token = request.headers.get(dialect.session_header, "")
            lapses = self._sessions.get(token)
            if lapses is None or lapses <= self._clock.now():
                return self._native(dialect.error("session token missing or expired"), 401)
        body = await request.read()
        try:
            credential_id, token_id = dialect.parse_request(body)
        except BadNativeRequest as exc:
            return self._native(dialect.error(str(exc)), 400)
        self.status_queries += 1
        if self.status_answer == "malformed":
            return self._native(b"\x00 not a status document")
        if self.status_answer == "refuse":
            return self._native(dialect.error("request refused (simulated fault)"), 400)
        if self.status_answer == "fail":
            return self._native(dialect.error("internal failure (simulated fault)"), 503)
        # Check-and-mark with no await in between: atomic on the event loop,
        # so two concurrent queries of one token cannot both see "unused".
        used = token_id in self._used_tokens
        self._used_tokens.add(token_id)
        resident = self._residents.get(credential_id)
        answer = dialect.answer(
            None if resident is None else resident.state, used, resident, self._clock.now()
        )
        return self._native(answer)


def _dialect_for(province: str, adapter: AdapterConfig | None) -> _Dialect:
    """The hand-written dialect of a shipped province, else the region's mapped one."""
    if province in DIALECTS:
        return DIALECTS[province]()
    if adapter is None:
        raise ValueError(
            f"no simulated e-ID authority for province {province!r}: pass its [adapter] "
            "config to serve it through its mapping"
        )
    return MappedEidDialect(adapter)


class MappedEidDialect(_Dialect):
    """The e-ID authority's status endpoint in the region's ``[adapter.identity]`` documents."""

    def __init__(self, adapter: AdapterConfig) -> None:
        if adapter.identity is None:
            raise ValueError("the region's [adapter] has no [adapter.identity] section")
        self._translator = Translator(adapter)
        self.path = adapter.identity.status_path
        self.content_type = self._translator.content_type

    def parse_request(self, body: bytes) -> tuple[str, str]:
        try:
            request = self._translator.decode("identity.status_request", body)
        except TranslationError as exc:
            raise BadNativeRequest(str(exc)) from None
        return str(request["credential_id"]), str(request["token_id"])

    def answer(
        self, state: str | None, used: bool, resident: Resident | None, now: datetime
    ) -> bytes:
        canonical: dict[str, Any] = {
            "state": state or "CREDENTIAL_UNKNOWN",
            "token_already_used": used,
            "checked_at": format_timestamp(now),
        }
        if resident is not None:
            canonical["holder"] = mapped.person(resident)
        return self._translator.encode("identity.status_response", canonical)

    def error(self, message: str) -> bytes:
        return mapped.error_document(self._translator, message)
