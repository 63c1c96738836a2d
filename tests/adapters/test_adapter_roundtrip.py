"""Property tests: canonical → native → canonical is the identity for every province,
and no byte string makes translation fail with anything but TranslationError."""

from __future__ import annotations

import base64
import contextlib
from datetime import UTC, date, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import TranslationError, Translator
from adapters.mapping import to_message
from adapters.spec import AdapterConfig
from gateway.core.identifiers import REGION_CODE_PATTERN
from gateway.core.identifiers import make_id_number as id_number
from tests.adapters.native_documents import documents
from yrd.common.v1 import common_pb2

_GENDERS = ["GENDER_UNSPECIFIED", "GENDER_MALE", "GENDER_FEMALE", "GENDER_NOT_STATED"]
_STATES = [
    "CREDENTIAL_ACTIVE",
    "CREDENTIAL_REVOKED",
    "CREDENTIAL_LOST",
    "CREDENTIAL_SUSPENDED",
    "CREDENTIAL_UNKNOWN",
]
# Text that XML 1.0 can carry (no control characters, surrogates or non-characters).
_TEXT = st.characters(blacklist_categories=("Cs", "Cc", "Cn"))
_HAN = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)


@st.composite
def persons(draw: st.DrawFn) -> dict[str, Any]:
    """A valid canonical Person dict; optional attributes sometimes empty."""
    birth = draw(st.dates(min_value=date(1900, 1, 1), max_value=date.today()))
    region = draw(st.from_regex(REGION_CODE_PATTERN, fullmatch=True))
    return {
        "id_number": id_number(region, birth, draw(st.integers(0, 999))),
        "full_name": draw(st.text(_HAN, min_size=1, max_size=6)),
        "gender": draw(st.sampled_from(_GENDERS)),
        "birth_date": birth.isoformat(),
        "ethnicity": draw(st.sampled_from(["", "01", "03", "56"])),
        "address": draw(st.text(_TEXT, max_size=30)),
        "registered_region": draw(st.sampled_from(["", region])),
        "nationality": draw(st.sampled_from(["CHN", "HKG", "TWN"])),
        "photo": base64.b64encode(draw(st.binary(max_size=48))).decode(),
    }


@st.composite
def status_responses(draw: st.DrawFn) -> dict[str, Any]:
    instant = draw(
        st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31))
    ).replace(microsecond=0, tzinfo=UTC)
    response: dict[str, Any] = {
        "state": draw(st.sampled_from(_STATES)),
        "token_already_used": draw(st.booleans()),
        "checked_at": instant.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if draw(st.booleans()):
        response["holder"] = draw(persons())
    return response


def _as_person(canonical: dict[str, Any]) -> common_pb2.Person:
    return to_message(canonical, common_pb2.Person)


class TestRoundTrip:
    """Writing then reading gives back what was written (compared as protobuf)."""

    @settings(max_examples=150)
    @given(person=persons())
    def test_person(self, province: tuple[str, AdapterConfig], person: dict[str, Any]) -> None:
        translator = Translator(province[1])
        body = translator.encode("identity.person", person)
        back = translator.decode("identity.person", body)
        assert _as_person(back) == _as_person(person)

    @settings(max_examples=100)
    @given(response=status_responses())
    def test_status_response(
        self, province: tuple[str, AdapterConfig], response: dict[str, Any]
    ) -> None:
        translator = Translator(province[1])
        body = translator.encode("identity.status_response", response)
        back = translator.decode("identity.status_response", body)
        if "holder" in response:
            assert _as_person(back.pop("holder")) == _as_person(response.pop("holder"))
        assert back == response

    @given(
        credential=st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
        token=st.uuids().map(str),
    )
    def test_status_request(
        self, province: tuple[str, AdapterConfig], credential: str, token: str
    ) -> None:
        translator = Translator(province[1])
        canonical = {"credential_id": credential, "token_id": token}
        body = translator.encode("identity.status_request", canonical)
        assert translator.decode("identity.status_request", body) == canonical


class TestArbitraryInput:
    """Whatever a back-end sends, the only failure is a TranslationError."""

    @settings(max_examples=300)
    @given(body=st.binary(max_size=300))
    def test_bytes(self, province: tuple[str, AdapterConfig], body: bytes) -> None:
        translator = Translator(province[1])
        with contextlib.suppress(TranslationError):
            translator.decode("identity.status_response", body)

    @settings(max_examples=150)
    @given(data=st.data())
    def test_documents(self, province: tuple[str, AdapterConfig], data: st.DataObject) -> None:
        # JSON objects or XML element trees, as the province's format is: every
        # province's reader is exercised (XML included), with its own keys.
        translator = Translator(province[1])
        extra = ["sj", "jg", "holder", "result", "resident", "tokenUsed"]
        document = data.draw(documents(translator, "identity.status_response", extra))
        with contextlib.suppress(TranslationError):
            translator.to_canonical("identity.status_response", document)
