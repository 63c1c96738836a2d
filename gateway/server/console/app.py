"""The web console: an aiohttp application served over HTTPS by the node.

Every request passes one middleware: language, session, the login gate (a GET
without a session is sent to /login; any other request without one is
refused), the CSRF check of every POST, the security headers. Every page asks
the node's own AdminService (:mod:`.calls`) with the session's token.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import structlog
from aiohttp import web
from google.protobuf.message import Message

from gateway.config.models import ConsoleSection
from gateway.core.metrics import NodeMetrics
from gateway.server.console.calls import AdminCalls, NodeRefused
from gateway.server.console.charts import MetricsSampler
from gateway.server.console.i18n import LANG_COOKIE, LANGUAGES, choose_language
from gateway.server.console.pages import (
    ACTIONS,
    STYLESHEET,
    View,
    confirm_page,
    diagnostics_page,
    error_page,
    exchanges_page,
    log_page,
    login_page,
    overview_page,
    search_page,
)
from gateway.server.console.sessions import SESSION_COOKIE, Session, SessionStore
from yrd.admin.v1 import admin_pb2

#: An AdminService answer a page asks for.
_Answer = TypeVar("_Answer", bound=Message)

log = structlog.get_logger("yrd.console")

#: Cookie of the login form's CSRF token (double submit: cookie and form field).
LOGIN_COOKIE = "yrd_console_login"

#: What the middleware finds out for the handlers: the language, the session.
LANG_KEY = web.RequestKey("lang", str)
SESSION_KEY: web.RequestKey[Session | None] = web.RequestKey("session")

#: Paths reachable without a session.
PUBLIC_PATHS = frozenset({"/login", "/static/console.css"})

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _session(request: web.Request) -> Session:
    """The session of a request past the login gate."""
    session = request[SESSION_KEY]
    assert session is not None, "the middleware lets no request without a session through"
    return session


def _printable(text: str, limit: int) -> bool:
    return 0 < len(text) <= limit and text.isprintable()


class Console:
    """The console of one node: ``await start()``, ``url``, ``await stop()``.

    ``node_target`` is the node's client endpoint (host:port) as the console
    calls it; ``ca`` the federation CA that endpoint's certificate chains to."""

    def __init__(
        self,
        section: ConsoleSection,
        *,
        certificate: Path,
        private_key: Path,
        ca: bytes,
        node_target: str,
        metrics: NodeMetrics,
        province: str = "",
        peer_codes: Callable[[], Sequence[str]] = tuple,
        sample_interval: float = 5.0,
    ) -> None:
        self.section = section
        self.sessions = SessionStore(
            max_sessions=section.max_sessions, idle_seconds=section.session_idle_seconds
        )
        self.sampler = MetricsSampler(metrics, interval=sample_interval)
        self.province = province
        self.peer_codes = peer_codes
        self._certificate, self._private_key, self._ca = certificate, private_key, ca
        self.node_target = node_target
        self.calls: AdminCalls | None = None
        self._runner: web.AppRunner | None = None
        self.host, _, port = section.endpoint.rpartition(":")
        self.port = int(port)

    @property
    def url(self) -> str:
        host = self.host.strip("[]")
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding it
            host = "127.0.0.1"
        shown = f"[{host}]" if ":" in host else host
        return f"https://{shown}:{self.port}/"

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024)
        routes = (
            ("GET", "/login", self.login_form),
            ("POST", "/login", self.login),
            ("POST", "/logout", self.logout),
            ("GET", "/", self.overview),
            ("GET", "/exchanges", self.exchanges),
            ("GET", "/exchanges/confirm", self.confirm),
            ("POST", "/exchanges/act", self.act),
            ("GET", "/search", self.search),
            ("GET", "/log", self.log_page),
            ("POST", "/log/verify", self.verify_log),
            ("GET", "/diagnostics", self.diagnostics),
            ("GET", "/static/console.css", self.stylesheet),
        )
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        return app

    async def start(self) -> Console:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._certificate, self._private_key)
        self.calls = AdminCalls(self.node_target, self._ca)
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host.strip("[]"), self.port, ssl_context=context)
        await site.start()
        server = site._server  # aiohttp keeps the bound socket here
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self.sampler.start()
        log.info("console started", url=self.url)
        return self

    async def stop(self) -> None:
        await self.sampler.stop()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self.calls is not None:
            calls, self.calls = self.calls, None
            await calls.close()
        self.sessions.clear()

    # ---- the one middleware -------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        query_lang = request.query.get("lang")
        request[LANG_KEY] = choose_language(
            query_lang, request.cookies.get(LANG_COOKIE), request.headers.get("Accept-Language")
        )
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        request[SESSION_KEY] = session
        response = await self._gate(request, handler, session)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if query_lang in LANGUAGES:
            response.set_cookie(
                LANG_COOKIE,
                query_lang,
                max_age=365 * 86400,
                secure=True,
                httponly=True,
                samesite="Strict",
            )
        return response

    async def _gate(
        self, request: web.Request, handler: Handler, session: Session | None
    ) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS and session is None:
            if request.method in ("GET", "HEAD"):
                return _redirect("/login")
            return self._refused(request, "log in first")
        if request.method == "POST" and request.path != "/login":
            form = await request.post()
            given = form.get("csrf")
            if session is None or not session.csrf_matches(
                given if isinstance(given, str) else None
            ):
                return self._refused(request, "the form's CSRF token is missing or wrong")
        try:
            return await handler(request)
        except NodeRefused as exc:
            if exc.signed_out and session is not None:
                self.sessions.end(session.id)
                return _redirect("/login?expired=1")
            return _html(error_page(self.view(request), exc.details or exc.code.name), status=502)

    def _refused(self, request: web.Request, reason: str) -> web.Response:
        view = self.view(request)
        return _html(error_page(view, view.t("forbidden", reason=reason)), status=403)

    def view(self, request: web.Request) -> View:
        session: Session | None = request.get(SESSION_KEY)
        query = {k: v for k, v in request.query.items() if k != "lang"}
        return View(
            lang=request[LANG_KEY],
            path=request.path,
            query=query,
            operator=session.operator if session else "",
            csrf=session.csrf if session else "",
            province=self.province,
        )

    async def _call(self, request: web.Request, method: str, message: object) -> object:
        session = _session(request)
        assert self.calls is not None
        return await self.calls.call(method, message, session.token)  # type: ignore[arg-type]

    async def _ask(
        self, request: web.Request, method: str, message: object, answer_type: type[_Answer]
    ) -> tuple[_Answer | None, str]:
        """The node's answer, or None and why the node refused, for the page to
        show; a refusal that ends the session (the token no longer admitted)
        propagates to the session's end."""
        try:
            answer = await self._call(request, method, message)
        except NodeRefused as exc:
            if exc.signed_out:
                raise
            return None, f"{exc.code.name}: {exc.details}"
        assert isinstance(answer, answer_type)
        return answer, ""

    # ---- login ----------------------------------------------------------------------

    def _login_response(
        self, request: web.Request, error: str = "", status: int = 200
    ) -> web.Response:
        # One token per browser until it logs in: a second login page (another
        # tab, the browser's own favicon request sent here) keeps the first valid.
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        response = _html(login_page(self.view(request), token, error), status=status)
        response.set_cookie(
            LOGIN_COOKIE, token, secure=True, httponly=True, samesite="Strict", path="/login"
        )
        return response

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if request[SESSION_KEY] is not None:
            return _redirect("/")
        view = self.view(request)
        error = view.t("login.expired") if request.query.get("expired") else ""
        return self._login_response(request, error)

    async def login(self, request: web.Request) -> web.StreamResponse:
        view = self.view(request)
        form = await request.post()
        given, expected = form.get("csrf"), request.cookies.get(LOGIN_COOKIE)
        if (
            not isinstance(given, str)
            or not expected
            or not secrets.compare_digest(given.encode(), expected.encode())
        ):
            return self._refused(request, "the form's CSRF token is missing or wrong")
        token = str(form.get("token") or "").strip()
        operator = " ".join(str(form.get("operator") or "").split())
        if not token or not _printable(operator, 64) or not token.isprintable():
            return self._login_response(request, view.t("login.missing"), status=400)
        assert self.calls is not None
        try:
            # The node says whether this token opens its AdminService.
            await self.calls.call("GetNodeInfo", admin_pb2.GetNodeInfoRequest(), token)
        except NodeRefused as exc:
            log.info("console login refused", code=exc.code.name)
            return self._login_response(
                request, view.t("login.refused", reason=exc.code.name), status=403
            )
        old = request[SESSION_KEY]
        if old is not None:
            self.sessions.end(old.id)
        session = self.sessions.create(token=token, operator=operator)
        log.info("console login")  # the operator's name is a person's: not logged
        response = _redirect("/")
        response.set_cookie(
            SESSION_COOKIE, session.id, secure=True, httponly=True, samesite="Strict", path="/"
        )
        response.del_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = _session(request)
        self.sessions.end(session.id)
        response = _redirect("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    # ---- pages ----------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.StreamResponse:
        info = await self._call(request, "GetNodeInfo", admin_pb2.GetNodeInfoRequest())
        assert isinstance(info, admin_pb2.NodeInfo)
        peers, error = await self._ask(
            request, "ListPeers", admin_pb2.ListPeersRequest(), admin_pb2.ListPeersResponse
        )
        return _html(overview_page(self.view(request), info, peers, error, self.sampler.minutes()))

    async def exchanges(self, request: web.Request) -> web.StreamResponse:
        state = request.query.get("state", "")
        peer = request.query.get("peer", "")
        older = request.query.get("older_than", "").strip()
        view = self.view(request)
        response: admin_pb2.ListExchangesResponse | None = None
        error = ""
        minutes = int(older) if older.isdigit() else 0
        if older and not older.isdigit():
            error = "older_than: expected a whole number of minutes (0 or more)"
        else:
            response, error = await self._ask(
                request,
                "ListExchanges",
                admin_pb2.ListExchangesRequest(
                    state=state, peer=peer, min_age_seconds=min(minutes * 60, 2**32 - 1)
                ),
                admin_pb2.ListExchangesResponse,
            )
        session = _session(request)
        notice, ok = session.notice, session.notice_ok
        session.notice = ""
        page = exchanges_page(
            view,
            response,
            error,
            state=state,
            peer=peer,
            older_than=older,
            peer_codes=list(self.peer_codes()),
            notice=notice,
            notice_ok=ok,
        )
        return _html(page)

    async def confirm(self, request: web.Request) -> web.StreamResponse:
        action = request.query.get("action", "")
        reference = request.query.get("reference", "")
        view = self.view(request)
        if action not in ACTIONS or not _printable(reference, 128):
            return _html(
                error_page(
                    view, "action or reference: expected an exchange's action and reference"
                ),
                status=400,
            )
        return _html(confirm_page(view, action, reference))

    async def act(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        action = str(form.get("action") or "")
        reference = str(form.get("reference") or "")
        reason = str(form.get("reason") or "")[:256]
        session = _session(request)
        if action not in ACTIONS or not _printable(reference, 128):
            return _html(
                error_page(
                    self.view(request),
                    "action or reference: expected an exchange's action and reference",
                ),
                status=400,
            )
        message: object
        if action == "retry":
            method = "RetryExchange"
            message = admin_pb2.SteerExchangeRequest(
                reference=reference, operator=session.operator, reason=reason
            )
        elif action == "park":
            method = "ParkExchange"
            message = admin_pb2.SteerExchangeRequest(
                reference=reference, operator=session.operator, reason=reason
            )
        else:
            method = "ResolveExchange"
            message = admin_pb2.ResolveExchangeRequest(
                reference=reference,
                paid=action == "resolve_paid",
                operator=session.operator,
                reason=reason,
            )
        view = self.view(request)
        answer, refused = await self._ask(request, method, message, admin_pb2.SteerExchangeResponse)
        if answer is None:
            session.notice, session.notice_ok = view.t("refused", reason=refused), False
        else:
            session.notice, session.notice_ok = (
                view.t("done", detail=answer.detail or f"{answer.changed}"),
                True,
            )
            # Who acted is in the message log row the node wrote, not in this line.
            log.info("console action", action=action, reference=reference)
        return _redirect("/exchanges")

    async def search(self, request: web.Request) -> web.StreamResponse:
        correlation_id = request.query.get("correlation_id", "").strip()
        response: admin_pb2.SearchLogResponse | None = None
        error = ""
        if correlation_id:
            response, error = await self._ask(
                request,
                "SearchLog",
                admin_pb2.SearchLogRequest(correlation_id=correlation_id),
                admin_pb2.SearchLogResponse,
            )
        return _html(search_page(self.view(request), correlation_id, response, error))

    async def log_page(self, request: web.Request) -> web.StreamResponse:
        return _html(log_page(self.view(request), None, ""))

    async def verify_log(self, request: web.Request) -> web.StreamResponse:
        result, error = await self._ask(
            request,
            "VerifyMessageLog",
            admin_pb2.VerifyMessageLogRequest(),
            admin_pb2.VerifyMessageLogResponse,
        )
        return _html(log_page(self.view(request), result, error))

    async def diagnostics(self, request: web.Request) -> web.StreamResponse:
        result, error = await self._ask(
            request, "RunDiagnostics", admin_pb2.RunDiagnosticsRequest(), admin_pb2.Diagnostics
        )
        return _html(diagnostics_page(self.view(request), result, error))

    async def stylesheet(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            text=STYLESHEET,
            content_type="text/css",
            charset="utf-8",
            headers={"Cache-Control": "max-age=3600"},
        )
