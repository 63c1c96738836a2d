"""The *mapped* dialects' shared parts: a region simulated through its own mapping.

The shipped provinces' simulators are written by hand, so that their
mappings are tested against an independent implementation. A region known
only by its config — a new province being added by an operator — has no
such simulator; the dialects (:class:`~yrd_simulators.eid_authority.MappedEidDialect`,
:class:`~yrd_simulators.fund_centre.MappedFundDialect`) read and write its native documents with the
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
from typing import Any

from adapters.mapping import Translator
from yrd_simulators.residents import Resident


def error_document(translator: Translator, message: str) -> bytes:
    if translator.config.format == "xml":
        root = ET.Element("Error")
        ET.SubElement(root, "Message").text = message
        data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return data
    return json.dumps({"error": message}, ensure_ascii=False).encode("utf-8")


def fields_of(translator: Translator, message: str, canonical: dict[str, Any]) -> dict[str, Any]:
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
