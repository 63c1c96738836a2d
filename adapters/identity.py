"""HTTP connector to a province's e-ID authority, driven by the declarative mapping.

The connector knows the exchange; the mapping knows the province's documents;
:mod:`adapters.http` maps HTTP failures to adapter errors, by the one table
shared with the fund connector (unreachable, timeout or 5xx →
``BackendUnavailable``; 4xx → ``BackendRejected``). It sends the canonical
status request written in the native format to
``[adapter.identity].status_path`` and reads the native answer back into a
:class:`CredentialCheck`; an answer that does not match the mapping raises
``TranslationError``.
"""

from __future__ import annotations

from typing import Any

from adapters.base import CredentialCheck
from adapters.connector import MappedConnector
from adapters.errors import TranslationError
from adapters.formats import Mismatch, canonical_timestamp
from adapters.http import BackendHttp
from adapters.mapping import Translator, to_message
from adapters.spec import AdapterConfig
from gateway.core.clock import Clock, SystemClock
from yrd.common.v1 import common_pb2
from yrd.federation.v1 import federation_pb2

STATUS_REQUEST = "identity.status_request"
STATUS_RESPONSE = "identity.status_response"


class HttpIdentityAuthority(MappedConnector):
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
        self._http = BackendHttp("e-ID authority", base_url)
        self._translator = Translator(adapter)
        self._path = adapter.identity.status_path
        self._clock: Clock = clock or SystemClock()

    @property
    def url(self) -> str:
        """The native status endpoint this connector posts to."""
        return self._http.base_url + self._path

    async def check_credential(
        self, credential_id: str, token_id: str, *, timeout: float
    ) -> CredentialCheck:
        body = self._translator.encode(
            STATUS_REQUEST, {"credential_id": credential_id, "token_id": token_id}
        )
        payload = await self._post_status(body, timeout)
        return self._to_check(self._translator.decode(STATUS_RESPONSE, payload))

    async def _post_status(self, body: bytes, timeout: float) -> bytes:
        """Send the native status request; the native answer. Plug-ins override this
        to add what the exchange needs beyond the documents (a session, a signature)."""
        return await self._post(self._path, body, timeout, "status request")

    def _to_check(self, canonical: dict[str, Any]) -> CredentialCheck:
        state = federation_pb2.CredentialState.Value(canonical["state"])
        holder = None
        if "holder" in canonical:
            holder = to_message(canonical["holder"], common_pb2.Person)
        elif state == federation_pb2.CREDENTIAL_ACTIVE:
            raise TranslationError(
                "holder", "the holder's record for an active credential", message=STATUS_RESPONSE
            )
        if "checked_at" in canonical:
            try:
                checked_at = canonical_timestamp(canonical["checked_at"])
            except Mismatch as exc:  # pragma: no cover - the mapping produced it
                raise TranslationError(
                    "checked_at", exc.expected, message=STATUS_RESPONSE
                ) from None
        else:  # the clock is read only when the answer carries no time
            checked_at = self._clock.now()
        return CredentialCheck(
            state=state,
            token_already_used=bool(canonical["token_already_used"]),
            holder=holder,
            checked_at=checked_at,
        )
