"""What the HTTP connectors share: the connection, its lifecycle and the mapped exchange.

Every connector (:mod:`adapters.identity`, :mod:`adapters.fund`,
:mod:`adapters.case`, :mod:`adapters.certificate`) talks to its back-end
through one :class:`~adapters.http.BackendHttp` and is closed by ``aclose``
or ``async with`` (:class:`HttpConnector`). The connectors driven by the
province's ``[adapter]`` mapping also share how a document is posted, how a
status is asked for (POST a query, or GET a path with ``{reference}``) and
how a status answer is checked (:class:`MappedConnector`). Which document goes
where, and what an answer means, stays each connector's own.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Self

from adapters.errors import TranslationError
from adapters.formats import Mismatch, canonical_timestamp, format_timestamp
from adapters.http import BackendHttp
from adapters.mapping import Translator
from gateway.core.clock import Clock

#: What a reference may look like: it goes into URLs and native documents, and
#: the gateway derives it from an idempotency key of the same alphabet.
REFERENCE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_reference(reference: str, message: str) -> None:
    """Raise ``TranslationError`` (for ``message``) unless ``reference`` is one."""
    if not REFERENCE.fullmatch(reference):
        raise TranslationError(
            "reference", "a reference of 1..128 characters of [A-Za-z0-9._:-]", message=message
        )


class HttpConnector:
    """A connector over one :class:`~adapters.http.BackendHttp` (``_http``).

    ``base_url``; ``aclose`` (idempotent) and ``async with`` close its connections.
    """

    _http: BackendHttp

    @property
    def base_url(self) -> str:
        return self._http.base_url

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class MappedConnector(HttpConnector):
    """A connector whose documents are the province's mapping (``_translator``).

    ``_clock`` stamps what the back-end's answer carries no time for.
    """

    _translator: Translator
    _clock: Clock

    async def _post(self, path: str, body: bytes, timeout: float, what: str) -> bytes:
        return await self._http.exchange(
            "POST",
            path,
            body,
            content_type=self._translator.content_type,
            timeout=timeout,
            what=what,
        )

    async def _ask_status(
        self, path: str, by_get: bool, query: str, reference: str, timeout: float, what: str
    ) -> bytes:
        """The native status answer: GET ``path`` with ``{reference}`` filled in, or POST
        the mapping's ``query`` document to it."""
        if by_get:
            answer = await self._http.exchange(
                "GET",
                path.replace("{reference}", urllib.parse.quote(reference, safe="")),
                None,
                content_type=self._translator.content_type,
                timeout=timeout,
                what=what,
            )
        else:
            body = self._translator.encode(query, {"reference": reference})
            answer = await self._post(path, body, timeout, what)
        return answer

    def _now(self) -> str:
        return format_timestamp(self._clock.now())

    @staticmethod
    def _check_about(canonical: dict[str, Any], message: str, reference: str, status: str) -> None:
        """An answer must be about ``reference`` (when it names one) and carry a status."""
        echoed = canonical.pop("reference", None)
        if echoed is not None and echoed != reference:
            # An answer about another case would move the wrong one.
            raise TranslationError("reference", "the reference asked about", message=message)
        if "status" not in canonical:
            raise TranslationError("status", status, message=message)

    def _stamp_changed_at(self, canonical: dict[str, Any], message: str) -> None:
        """Check the answer's ``changed_at``; stamp it now when there is none."""
        if "changed_at" in canonical:
            try:
                canonical_timestamp(canonical["changed_at"])
            except Mismatch as exc:  # pragma: no cover - the mapping produced it
                raise TranslationError("changed_at", exc.expected, message=message) from None
        else:
            canonical["changed_at"] = self._now()
