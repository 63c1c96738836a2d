"""What every simulator's HTTP server shares: its lifecycle and the harness's JSON.

Each simulator (:mod:`~yrd_simulators.eid_authority`,
:mod:`~yrd_simulators.fund_centre`,
:mod:`~yrd_simulators.certificate_library`,
:mod:`~yrd_simulators.case_system`) is a :class:`SimulatorServer`: a
real ``aiohttp`` server on loopback, started on a free port unless told
otherwise, that counts every request it answers. Its native endpoints and
documents stay its own, written by hand per province; only the plumbing
lives here.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Any, Self

from aiohttp import web

_NOT_AN_OBJECT = "body must be a JSON object"


class SimulatorServer(ABC):
    """A simulator's HTTP server: start, ``url``, stop (idempotent), ``async with``.

    ``requests_served`` counts every HTTP request answered. Subclasses add
    their routes (:meth:`_routes`), name the media type of their native
    documents (:meth:`_native_media`), and may act once serving
    (:meth:`_started`) and before the server closes (:meth:`_stopping`).
    """

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.requests_served = 0

    @property
    def url(self) -> str:
        """Base URL (``http://127.0.0.1:PORT``); only while started."""
        if self._url is None:
            raise RuntimeError("simulator is not started")
        return self._url

    @abstractmethod
    def _routes(self, router: web.UrlDispatcher) -> None:
        """Add the simulator's endpoints."""

    @abstractmethod
    def _native_media(self) -> str:
        """The Content-Type of the native documents (without charset)."""

    def _started(self) -> None:  # noqa: B027 - a hook, empty by default
        """Called once serving, before :meth:`start` returns."""

    async def _stopping(self) -> None:  # noqa: B027 - a hook, empty by default
        """Called by :meth:`stop` before the server closes."""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host``:``port`` (0: a free port); the base URL. Started already: its URL."""
        if self._runner is not None:
            return self.url
        app = web.Application(middlewares=[self._count])
        self._routes(app.router)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        self._runner = runner
        self._url = f"http://{bound_host}:{bound_port}"
        self._started()
        return self._url

    async def stop(self) -> None:
        """Stop serving; idempotent. What the simulator holds is kept."""
        runner, self._runner = self._runner, None
        self._url = None
        await self._stopping()
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @web.middleware
    async def _count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests_served += 1
        return await handler(request)

    def _native(self, body: bytes, status: int = 200) -> web.Response:
        """A native document as the answer."""
        return web.Response(
            status=status, body=body, content_type=self._native_media(), charset="utf-8"
        )


def json_error(status: int, message: str) -> web.Response:
    """A harness error: ``{"error": message}`` with HTTP ``status``."""
    return web.json_response({"error": message}, status=status)


async def json_object(request: web.Request) -> dict[str, Any] | None:
    """The request's body as a JSON object; None when it is not one."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


async def admin_set_choice(
    request: web.Request,
    *,
    key: str,
    known: Container[str],
    answer_key: str,
    field: str,
    choices: Sequence[str],
    apply: Callable[[str, str], None],
) -> web.Response:
    """An admin endpoint that sets ``field`` of the thing named by ``{key}`` in the path.

    Unknown thing → 404 ``unknown <key>``; a body that is not JSON → 400; a
    ``field`` not among ``choices`` → 400. Otherwise ``apply(name, value)``
    and answer ``{answer_key: name, field: value}``.
    """
    name = request.match_info[key]
    if name not in known:
        return json_error(404, f"unknown {key}")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return json_error(400, _NOT_AN_OBJECT)
    value = body.get(field) if isinstance(body, dict) else None
    if not isinstance(value, str) or value not in choices:
        return json_error(400, f"{field} must be one of {', '.join(choices)}")
    apply(name, value)
    return web.json_response({answer_key: name, field: value})


def not_an_object() -> web.Response:
    """The harness's answer to a body that is not a JSON object."""
    return json_error(400, _NOT_AN_OBJECT)
