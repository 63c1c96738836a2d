"""HTTP connector to a province's e-ID authority, driven by the declarative mapping.

The connector knows HTTP; the mapping knows the province's documents. It
sends the canonical status request written in the native format to
``[adapter.identity].status_path`` and reads the native answer back into a
:class:`CredentialCheck`. Failures are mapped once, here, at the layer
boundary:

=====================================  ==========================
what happened                          raised
=====================================  ==========================
connection refused / reset, DNS, TLS   ``BackendUnavailable``
no complete answer within ``timeout``  ``BackendUnavailable``
HTTP 5xx (or any non-2xx, non-4xx)     ``BackendUnavailable``
HTTP 4xx                               ``BackendRejected``
answer does not match the mapping      ``TranslationError``
=====================================  ==========================
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import structlog

from adapters.base import CredentialCheck
from adapters.errors import BackendRejected, BackendUnavailable, TranslationError
from adapters.formats import Mismatch, canonical_timestamp
from adapters.mapping import Translator, to_message
from adapters.native import MAX_DOCUMENT_BYTES
from adapters.spec import AdapterConfig
from gateway.clock import Clock, SystemClock
from yrd.common.v1 import common_pb2
from yrd.federation.v1 import federation_pb2

_log = structlog.get_logger(__name__)

STATUS_REQUEST = "identity.status_request"
STATUS_RESPONSE = "identity.status_response"


class HttpIdentityAuthority:
    """:class:`~adapters.base.IdentityAuthority` over HTTP, in the province's native format.

    One ``aiohttp.ClientSession`` (connection pool) per connector, created on
    first use so the object can be built outside an event loop (config
    loading). ``clock`` stamps ``checked_at`` when the province's answer
    carries no time of its own.
    """

    def __init__(
        self, adapter: AdapterConfig, base_url: str, *, clock: Clock | None = None
    ) -> None:
        if adapter.identity is None:
            raise ValueError("the adapter config has no [adapter.identity] section")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"expected an http(s) base URL for the e-ID authority, got {base_url!r}"
            )
        self._translator = Translator(adapter)
        self._url = base_url.rstrip("/") + adapter.identity.status_path
        self._clock: Clock = clock or SystemClock()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def url(self) -> str:
        """The native status endpoint this connector posts to."""
        return self._url

    async def check_credential(
        self, credential_id: str, token_id: str, *, timeout: float
    ) -> CredentialCheck:
        body = self._translator.encode(
            STATUS_REQUEST, {"credential_id": credential_id, "token_id": token_id}
        )
        status, payload = await self._post(body, timeout)
        if 400 <= status < 500:
            raise BackendRejected(f"e-ID authority refused the status request: HTTP {status}")
        if not 200 <= status < 300:
            raise BackendUnavailable(f"e-ID authority failed: HTTP {status}")
        return self._to_check(self._translator.decode(STATUS_RESPONSE, payload))

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> HttpIdentityAuthority:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _post(self, body: bytes, timeout: float) -> tuple[int, bytes]:
        if self._closed:
            raise BackendUnavailable("e-ID authority connector is closed")
        if timeout <= 0:
            raise BackendUnavailable("no time left to ask the e-ID authority")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": self._translator.content_type}
        try:
            async with asyncio.timeout(timeout):
                async with self._session.post(self._url, data=body, headers=headers) as response:
                    return response.status, await _read_limited(response)
        except TimeoutError:
            _log.warning("eid_authority_timeout", url=self._url, timeout_s=timeout)
            raise BackendUnavailable(
                f"e-ID authority did not answer within {timeout:.3f} s"
            ) from None
        except aiohttp.ClientError as exc:
            _log.warning("eid_authority_unreachable", url=self._url, error=type(exc).__name__)
            raise BackendUnavailable(f"e-ID authority unreachable: {type(exc).__name__}") from exc

    def _to_check(self, canonical: dict[str, Any]) -> CredentialCheck:
        state = federation_pb2.CredentialState.Value(canonical["state"])
        holder = None
        if "holder" in canonical:
            holder = to_message(canonical["holder"], common_pb2.Person)
        elif state == federation_pb2.CREDENTIAL_ACTIVE:
            raise TranslationError(
                "holder", "the holder's record for an active credential", message=STATUS_RESPONSE
            )
        checked_at = self._clock.now()
        if "checked_at" in canonical:
            try:
                checked_at = canonical_timestamp(canonical["checked_at"])
            except Mismatch as exc:  # pragma: no cover - the mapping produced it
                raise TranslationError(
                    "checked_at", exc.expected, message=STATUS_RESPONSE
                ) from None
        return CredentialCheck(
            state=state,
            token_already_used=bool(canonical["token_already_used"]),
            holder=holder,
            checked_at=checked_at,
        )


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
