"""HTTP connector to a province's housing provident fund centre, driven by the mapping.

The connector knows the exchange (which document goes to which endpoint and
what an answer means); the province's ``[adapter.fund]`` mapping knows the
documents; :mod:`adapters.http` maps HTTP failures to adapter errors. So a
new province's centre is a config section, not code.

Three exchanges (paths from ``[adapter.fund]``):

- account query: POST ``account_path`` with ``fund.account_query`` (the ID
  number travels in the body, never in a URL, which access logs keep);
  ``fund.account`` answers, its ``found`` flag false for "no account";
- submission: POST ``submit_path`` with ``fund.withdrawal`` (the application
  and the gateway's ``reference``); ``fund.submit_answer`` answers;
- status: POST ``status_path`` with ``fund.status_query``, or GET
  ``status_path`` with ``{reference}`` filled in; ``fund.status`` answers.
"""

from __future__ import annotations

from typing import Any

from adapters.connector import REFERENCE as REFERENCE
from adapters.connector import MappedConnector, check_reference
from adapters.errors import TranslationError, WithdrawalNotFound
from adapters.http import BackendHttp
from adapters.mapping import Translator, from_message, to_message
from adapters.spec import AdapterConfig, FundAdapter
from gateway.core.clock import Clock, SystemClock
from yrd.fund.v1 import fund_pb2

ACCOUNT_QUERY = "fund.account_query"
ACCOUNT = "fund.account"
WITHDRAWAL = "fund.withdrawal"
SUBMIT_ANSWER = "fund.submit_answer"
STATUS_QUERY = "fund.status_query"
STATUS = "fund.status"

#: The states a fund centre can report; the earlier ones belong to the gateway.
_CENTRE_STATES = frozenset(
    {fund_pb2.UNDER_REVIEW, fund_pb2.APPROVED, fund_pb2.PAID, fund_pb2.REJECTED}
)
_BACKEND = "fund centre"


class HttpFundCentre(MappedConnector):
    """:class:`~adapters.base.FundCentre` over HTTP, in the province's native format.

    ``clock`` stamps ``as_of`` / ``changed_at`` when the centre's answer
    carries no time of its own. One connection pool per connector.
    """

    def __init__(
        self, adapter: AdapterConfig, base_url: str, *, clock: Clock | None = None
    ) -> None:
        if adapter.fund is None:
            raise ValueError("the adapter config has no [adapter.fund] section")
        self._fund: FundAdapter = adapter.fund
        self._translator = Translator(adapter)
        self._http = BackendHttp(_BACKEND, base_url)
        self._clock: Clock = clock or SystemClock()

    async def query_account(self, id_number: str, *, timeout: float) -> fund_pb2.FundAccount | None:
        body = self._translator.encode(ACCOUNT_QUERY, {"id_number": id_number})
        answer = await self._post(self._fund.account_path, body, timeout, "account query")
        canonical = self._translator.decode(ACCOUNT, answer)
        if not canonical.pop("found"):
            return None
        for name in ("fund_account", "status", "balance_fen"):
            if name not in canonical:
                raise TranslationError(name, "a value when the account is found", message=ACCOUNT)
        canonical["fund_province"] = self._fund.province
        canonical.setdefault("as_of", self._now())
        return to_message(canonical, fund_pb2.FundAccount)

    async def submit_withdrawal(
        self, reference: str, application: fund_pb2.WithdrawalApplication, *, timeout: float
    ) -> fund_pb2.WithdrawalStatusUpdate:
        check_reference(reference, WITHDRAWAL)
        canonical = from_message(application)
        canonical["reference"] = reference
        body = self._translator.encode(WITHDRAWAL, canonical)
        answer = await self._post(self._fund.submit_path, body, timeout, "withdrawal submission")
        update = self._to_update(
            self._translator.decode(SUBMIT_ANSWER, answer), SUBMIT_ANSWER, reference
        )
        update.idempotency_key = application.idempotency_key
        return update

    async def withdrawal_status(
        self, reference: str, *, timeout: float
    ) -> fund_pb2.WithdrawalStatusUpdate:
        check_reference(reference, WITHDRAWAL)
        answer = await self._ask_status(
            self._fund.status_path,
            self._fund.status_by_get,
            STATUS_QUERY,
            reference,
            timeout,
            "withdrawal status query",
        )
        canonical = self._translator.decode(STATUS, answer)
        if not canonical.pop("found"):
            raise WithdrawalNotFound("the fund centre has no withdrawal with this reference")
        return self._to_update(canonical, STATUS, reference)

    def _to_update(
        self, canonical: dict[str, Any], message: str, reference: str
    ) -> fund_pb2.WithdrawalStatusUpdate:
        """The centre's answer as a status update, checked against what was asked."""
        self._check_about(canonical, message, reference, "a withdrawal status")
        status = fund_pb2.WithdrawalStatus.Value(canonical["status"])
        if status not in _CENTRE_STATES:
            raise TranslationError(
                "status", "UNDER_REVIEW, APPROVED, PAID or REJECTED", message=message
            )
        if status != fund_pb2.PAID:
            canonical.pop("paid_amount_fen", None)  # set only when PAID (proto contract)
        self._stamp_changed_at(canonical, message)
        return to_message(canonical, fund_pb2.WithdrawalStatusUpdate)
