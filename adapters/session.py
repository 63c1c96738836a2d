"""Plug-in ``anhui-session``: Anhui's e-ID authority answers only within a session.

Anhui's authority (its interface specification, section "会话") does not take
a status query on its own: the caller first opens a session with its
application id and then presents the session token in an HTTP header on
every query; the token lapses after ``ExpiresIn`` seconds, and an unknown or
lapsed token is answered with HTTP 401. That is a stateful handshake, not a
document layout, so the declarative mapping cannot say it; this plug-in adds
it around the declarative status documents (which stay in
``[adapter.identity]`` and keep their golden vectors).

The session documents (XML, like the rest of Anhui's interface)::

    POST <session_path>
    <SessionRequest><AppId>YRD-GW-340000</AppId></SessionRequest>
    → <SessionReply code="0"><Token>…</Token><ExpiresIn>600</ExpiresIn></SessionReply>
    → <SessionReply code="1"><Message>…</Message></SessionReply>   (application refused)

Behaviour: one session is shared by all queries of a connector and renewed
``refresh_margin_seconds`` before it lapses; concurrent queries wait for one
login rather than each opening a session; a 401 on a query (the authority
restarted, or dropped the session early) opens a new session and repeats the
query once — safe, because a refused query did not mark the token used. All
of it stays within the caller's timeout. The session token is a credential:
it is never logged nor put in a message.

Config::

    [adapter.plugin]
    name = "anhui-session"

    [adapter.plugin.settings]
    app_id = "YRD-GW-340000"          # the application id Anhui registered for the gateway
    session_path = "/eid/session"     # default
    token_header = "X-Session-Token"  # default
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET  # building only; parsing goes through adapters.native
from collections.abc import Mapping
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from adapters.base import FundCentre, IdentityAuthority
from adapters.errors import BackendRejected, BackendUnavailable, TranslationError
from adapters.identity import HttpIdentityAuthority
from adapters.native import parse_xml, serialize_xml
from adapters.spec import AdapterConfig
from gateway.core.clock import Clock

_log = structlog.get_logger(__name__)

_SESSION_REPLY = "session reply"


class AnhuiSessionSettings(BaseModel):
    """``[adapter.plugin.settings]`` of the ``anhui-session`` plug-in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app_id: StrictStr = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    session_path: StrictStr = Field("/eid/session", pattern=r"^/[^\s]*$")
    token_header: StrictStr = Field("X-Session-Token", pattern=r"^[A-Za-z0-9-]{1,64}$")
    #: Renew a session this long before the authority would let it lapse.
    refresh_margin_seconds: float = Field(5.0, ge=0, le=3600)


class SessionIdentityAuthority(HttpIdentityAuthority):
    """The declarative e-ID connector, with Anhui's session handshake around each query."""

    def __init__(
        self,
        adapter: AdapterConfig,
        base_url: str,
        settings: AnhuiSessionSettings,
        *,
        clock: Clock | None = None,
    ) -> None:
        if adapter.format != "xml":
            raise ValueError("the anhui-session plug-in speaks XML: [adapter] format = 'xml'")
        super().__init__(adapter, base_url, clock=clock)
        self._settings = settings
        self._token: str | None = None
        self._renew_at = 0.0  # time.monotonic() after which the token is not used again
        self._login_lock = asyncio.Lock()
        #: Sessions opened so far (tests and metrics).
        self.sessions_opened = 0

    async def _post_status(self, body: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        token = await self._session(deadline)
        try:
            return await self._query(body, token, deadline)
        except BackendRejected as exc:
            if exc.http_status != 401:
                raise
        # The authority no longer knows the token: open a new session, ask once more.
        _log.info("backend_session_expired", backend=self._http.backend)
        self._forget(token)
        token = await self._session(deadline)
        return await self._query(body, token, deadline)

    async def _query(self, body: bytes, token: str, deadline: float) -> bytes:
        return await self._http.exchange(
            "POST",
            self._path,
            body,
            content_type=self._translator.content_type,
            timeout=deadline - time.monotonic(),
            what="status request",
            headers={self._settings.token_header: token},
        )

    def _forget(self, token: str) -> None:
        if self._token == token:
            self._token = None

    async def _session(self, deadline: float) -> str:
        """A live session token: the current one, or a new one (one login at a time)."""
        token = self._token
        if token is not None and time.monotonic() < self._renew_at:
            return token
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                await self._login_lock.acquire()
        except TimeoutError:
            raise BackendUnavailable("no time left to open an e-ID authority session") from None
        try:
            token = self._token
            if token is not None and time.monotonic() < self._renew_at:
                return token  # another query logged in while this one waited
            return await self._login(deadline)
        finally:
            self._login_lock.release()

    async def _login(self, deadline: float) -> str:
        request = ET.Element("SessionRequest")
        ET.SubElement(request, "AppId").text = self._settings.app_id
        answer = await self._http.exchange(
            "POST",
            self._settings.session_path,
            serialize_xml(request),
            content_type=self._translator.content_type,
            timeout=deadline - time.monotonic(),
            what="session request",
        )
        reply = parse_xml(answer, "SessionReply")
        if reply.get("code") != "0":
            # The message may say why; it carries no personal data, but it is
            # the authority's text: logged, not passed on.
            _log.warning("backend_session_refused", backend=self._http.backend)
            raise BackendRejected(
                f"{self._http.backend} refused to open a session for application "
                f"{self._settings.app_id!r}: check [adapter.plugin.settings].app_id"
            )
        token = reply.findtext("Token") or ""
        lifetime = reply.findtext("ExpiresIn") or ""
        if not token or any(c.isspace() for c in token):
            raise TranslationError("Token", "a session token", message=_SESSION_REPLY)
        if not lifetime.isascii() or not lifetime.isdigit() or int(lifetime) <= 0:
            raise TranslationError(
                "ExpiresIn", "a positive whole number of seconds", message=_SESSION_REPLY
            )
        self._token = token
        self._renew_at = time.monotonic() + int(lifetime) - self._settings.refresh_margin_seconds
        self.sessions_opened += 1
        _log.info("backend_session_opened", backend=self._http.backend, lifetime_s=int(lifetime))
        return token


class AnhuiSessionPlugin:
    """:class:`~adapters.base.AdapterPlugin`: the session handshake for e-ID queries.

    The fund centre needs no code: ``fund_centre`` returns None, so the
    declarative connector serves it.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = AnhuiSessionSettings.model_validate(dict(settings))

    def identity_authority(
        self, adapter: AdapterConfig, base_url: str, *, clock: Clock
    ) -> IdentityAuthority | None:
        return SessionIdentityAuthority(adapter, base_url, self.settings, clock=clock)

    def fund_centre(
        self, adapter: AdapterConfig, base_url: str, *, clock: Clock
    ) -> FundCentre | None:
        return None
