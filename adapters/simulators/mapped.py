"""The *mapped* dialect: a region's back-ends simulated through its own ``[adapter]`` mapping.

The shipped provinces' simulators are written by hand, so that their
mappings are tested against an independent implementation. A region known
only by its config — a new province being added by an operator — has no
such simulator; these dialects read and write its native documents with the
region's :class:`~adapters.mapping.Translator`, so that its node can be
started and exchanged with end to end before its real back-ends are
connected. They check the exchange, not the mapping: that is what the
region's golden vectors (``yrd-gateway adapter test``) are for.

Paths, document elements and code tables all come from the config; the
simulators' business (residents, tokens, accounts, review rules) is the same
as for every province. A malformed or unmappable request gets HTTP 400 with
``{"error": …}`` (JSON regions) or ``<Error><Message>…</Message></Error>``
(XML regions).
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET  # building only
from datetime import datetime
from typing import Any, ClassVar

from adapters.errors import TranslationError
from adapters.formats import format_timestamp
from adapters.mapping import Translator
from adapters.simulators import eid_authority, fund_centre
from adapters.simulators.fund_centre import PAID, REJECTED, Case, FundAccount, Submission
from adapters.simulators.residents import Resident
from adapters.spec import AdapterConfig


def _error_document(translator: Translator, message: str) -> bytes:
    if translator.config.format == "xml":
        root = ET.Element("Error")
        ET.SubElement(root, "Message").text = message
        data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return data
    return json.dumps({"error": message}, ensure_ascii=False).encode("utf-8")


def _fields(translator: Translator, message: str, canonical: dict[str, Any]) -> dict[str, Any]:
    """``canonical`` without the fields the message's schema does not have."""
    schema = translator.mapper(message).schema.fields
    return {name: value for name, value in canonical.items() if name in schema}


def person(resident: Resident) -> dict[str, Any]:
    """A synthetic resident as a canonical Person dict."""
    return {
        "id_number": resident.id_number,
        "full_name": resident.full_name,
        "gender": resident.gender,
        "birth_date": resident.birth_date.isoformat(),
        "ethnicity": resident.ethnicity,
        "address": resident.address,
        "registered_region": resident.registered_region,
        "nationality": resident.nationality,
        "photo": base64.b64encode(resident.photo).decode("ascii"),
    }


class MappedEidDialect(eid_authority._Dialect):
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
            raise eid_authority.BadNativeRequest(str(exc)) from None
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
            canonical["holder"] = person(resident)
        return self._translator.encode("identity.status_response", canonical)

    def error(self, message: str) -> bytes:
        return _error_document(self._translator, message)


class MappedFundDialect(fund_centre._Dialect):
    """The fund centre's endpoints in the region's ``[adapter.fund]`` documents."""

    # Codes are the region's own: reading and writing go through its code tables.
    reasons: ClassVar[dict[str, str]] = {}
    states: ClassVar[dict[str, str]] = {}
    account_states: ClassVar[dict[str, str]] = {}

    def __init__(self, adapter: AdapterConfig) -> None:
        if adapter.fund is None:
            raise ValueError("the region's [adapter] has no [adapter.fund] section")
        self._translator = Translator(adapter)
        self.account_path = adapter.fund.account_path
        self.submit_path = adapter.fund.submit_path
        self.status_path = adapter.fund.status_path
        self.content_type = self._translator.content_type.split(";", 1)[0]

    def _decode(self, message: str, body: bytes) -> dict[str, Any]:
        try:
            return self._translator.decode(message, body)
        except TranslationError as exc:
            raise fund_centre.BadNativeRequest(str(exc)) from None

    def parse_account_query(self, body: bytes) -> str:
        return str(self._decode("fund.account_query", body)["id_number"])

    def account_answer(self, account: FundAccount | None, now: datetime) -> bytes:
        if account is None:
            return self._translator.encode("fund.account", {"found": False})
        canonical = {
            "found": True,
            "fund_account": account.account_no,
            "status": account.status,
            "balance_fen": account.balance_fen,
            "as_of": format_timestamp(now),
        }
        return self._translator.encode(
            "fund.account", _fields(self._translator, "fund.account", canonical)
        )

    def parse_submission(self, body: bytes) -> Submission:
        application = self._decode("fund.withdrawal", body)
        applicant = application.get("applicant", {})
        return Submission(
            reference=str(application["reference"]),
            id_number=str(applicant.get("id_number", "")),
            full_name=str(applicant.get("full_name", "")),
            account_no=str(application.get("fund_account", "")),
            reason=application.get("reason"),
            amount_fen=int(application.get("amount_fen", 0)),
            payee_account=str(application.get("payee_account", "")),
            payee_bank=str(application.get("payee_bank", "")),
            certificates=tuple(application.get("supporting_certificates", ())),
            applicant_province=str(application.get("applicant_province", "")),
            idempotency_key=str(application.get("idempotency_key", "")),
        )

    def parse_status_query(self, body: bytes) -> str:
        return str(self._decode("fund.status_query", body)["reference"])

    def _case(self, message: str, case: Case | None) -> bytes:
        if case is None:
            return self._translator.encode(message, {"found": False})
        canonical: dict[str, Any] = {
            "found": True,
            "reference": case.submission.reference,
            "remote_reference": case.case_no,
            "status": case.status,
            "changed_at": format_timestamp(case.changed_at),
        }
        if case.status == REJECTED:
            canonical["status_reason"] = self.rejection_text(case)
        if case.status == PAID:
            canonical["paid_amount_fen"] = case.paid_fen
        return self._translator.encode(message, _fields(self._translator, message, canonical))

    def case_answer(self, case: Case | None) -> bytes:
        return self._case("fund.status", case)

    def submit_answer(self, case: Case) -> bytes:
        return self._case("fund.submit_answer", case)

    def error(self, message: str) -> bytes:
        return _error_document(self._translator, message)
