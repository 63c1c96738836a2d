"""One HTTP exchange with a province back-end, with its failures mapped once.

Connectors know which document goes where; this module knows HTTP. Every
failure becomes an :mod:`adapters.errors` error here, by one table, so that
no connector lets a raw ``aiohttp`` exception reach the gateway:

=====================================  ==========================
what happened                          raised
=====================================  ==========================
connection refused / reset, DNS, TLS   ``BackendUnavailable``
no complete answer within ``timeout``  ``BackendUnavailable``
HTTP 5xx (or any non-2xx, non-4xx)     ``BackendUnavailable``
HTTP 4xx                               ``BackendRejected``
an answer larger than any document     ``TranslationError``
=====================================  ==========================

Only a failed connection (``aiohttp.ClientConnectorError``) tells that the
request never reached the back-end (``BackendUnavailable.may_have_arrived``
False); after a timeout, a reset or a 5xx it may have been acted on.

Log lines and messages name the back-end and the endpoint path, never a
document: those carry personal data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Literal

import aiohttp
import structlog

from adapters.errors import BackendRejected, BackendUnavailable, TranslationError
from adapters.native import MAX_DOCUMENT_BYTES

_log = structlog.get_logger(__name__)

#: Header sets kept per connector; connectors use one or two content types.
_MAX_HEADER_SETS = 8


class BackendHttp:
    """A connection pool to one back-end and the failure table above.

    ``backend`` names the back-end in messages and log events ("fund centre").
    The ``aiohttp.ClientSession`` is created on first use, so the object can be
    built outside an event loop (while configs are loaded).
    """

    def __init__(self, backend: str, base_url: str) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) base URL for the {backend}, got {base_url!r}")
        self.backend = backend
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        #: Header sets without extra headers, by (content type, with a body).
        self._headers: dict[tuple[str, bool], dict[str, str]] = {}

    async def exchange(
        self,
        method: Literal["GET", "POST"],
        path: str,
        body: bytes | None,
        *,
        content_type: str,
        timeout: float,
        what: str,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Send one request to ``path``; the body of a 2xx answer, or an error.

        ``what`` names the request in messages ("account query"); ``headers``
        are sent besides Accept / Content-Type (a plug-in's session token).
        Header values are never logged.
        """
        if self._closed:
            raise BackendUnavailable(f"{self.backend} connector is closed", may_have_arrived=False)
        if timeout <= 0:
            raise BackendUnavailable(
                f"no time left to ask the {self.backend}", may_have_arrived=False
            )
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = self.base_url + path
        sent: Mapping[str, str]
        if headers:
            extra = {**headers, "Accept": content_type}
            if body is not None:
                extra["Content-Type"] = content_type
            sent = extra
        else:
            sent = self._plain_headers(content_type, body is not None)
        try:
            async with asyncio.timeout(timeout):
                async with self._session.request(method, url, data=body, headers=sent) as response:
                    status = response.status
                    payload = await _read_limited(response)
        except TimeoutError:
            _log.warning("backend_timeout", backend=self.backend, request=what, timeout_s=timeout)
            raise BackendUnavailable(
                f"{self.backend} did not answer the {what} within {timeout:.3f} s"
            ) from None
        except aiohttp.ClientError as exc:
            _log.warning(
                "backend_unreachable", backend=self.backend, request=what, error=type(exc).__name__
            )
            raise BackendUnavailable(
                f"{self.backend} unreachable for the {what}: {type(exc).__name__}",
                # No connection, nothing sent; any later failure may follow its arrival.
                may_have_arrived=not isinstance(exc, aiohttp.ClientConnectorError),
            ) from exc
        if 400 <= status < 500:
            raise BackendRejected(
                f"{self.backend} refused the {what}: HTTP {status}", http_status=status
            )
        if not 200 <= status < 300:
            _log.warning("backend_failed", backend=self.backend, request=what, http_status=status)
            raise BackendUnavailable(f"{self.backend} failed the {what}: HTTP {status}")
        return payload

    def _plain_headers(self, content_type: str, with_body: bool) -> dict[str, str]:
        """Accept (and Content-Type with a body) for ``content_type``, built once
        (aiohttp copies the headers it is given; nothing here changes them)."""
        key = (content_type, with_body)
        sent = self._headers.get(key)
        if sent is None:
            headers = {"Accept": content_type}
            if with_body:
                headers["Content-Type"] = content_type
            sent = headers
            if len(self._headers) < _MAX_HEADER_SETS:
                self._headers[key] = sent
        return sent

    async def aclose(self) -> None:
        """Close the connection pool; idempotent. Later calls fail as unavailable."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    """Read the body, refusing one larger than any native document may be."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise TranslationError("", f"an answer of at most {MAX_DOCUMENT_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
