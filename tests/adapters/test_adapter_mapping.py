"""The mapping engine: strict reading, errors that name the native path, safe XML."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar

import pytest

from adapters import TranslationError, Translator
from adapters.mapping import from_message, to_message
from adapters.spec import AdapterConfig
from yrd.common.v1 import common_pb2

Table = Callable[[str], dict[str, Any]]


@pytest.fixture(scope="module")
def translators(adapter_table: Table) -> dict[str, Translator]:
    return {
        stem: Translator(AdapterConfig.model_validate(adapter_table(stem)))
        for stem in ("shanghai", "jiangsu", "zhejiang", "anhui")
    }


def _shanghai_person(**changes: Any) -> dict[str, Any]:
    person = {
        "sfzh": "310104198807151230",
        "xm": "张伟",
        "xb": "1",
        "csrq": "19880715",
        "mz": "01",
        "hjdq": "310104",
    }
    person.update(changes)
    return {k: v for k, v in person.items() if v is not None}


def _status(person: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {"pzzt": "YX", "lpysy": "0", "cxsj": "20260501160000"}
    if person is not None:
        data["jg"] = person
    return {"fhdm": "00", "sj": data}


class TestReadingErrors:
    """A native document that does not match raises TranslationError naming the path."""

    def test_missing_required_field(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match=r"sj\.jg\.xm: expected a value \(required"):
            translators["shanghai"].to_canonical(
                "identity.status_response", _status(_shanghai_person(xm=None))
            )

    def test_empty_required_field_is_missing(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match=r"^identity\.person: xm: expected a value"):
            translators["shanghai"].to_canonical("identity.person", _shanghai_person(xm=""))

    def test_bad_date(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match=r"csrq: expected a date yyyyMMdd") as info:
            translators["shanghai"].to_canonical(
                "identity.person", _shanghai_person(csrq="1988-07-15")
            )
        assert info.value.path == "csrq"
        assert "1988" not in str(info.value), "the value itself is personal data"

    def test_date_that_does_not_exist(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match="exists in the calendar"):
            translators["shanghai"].to_canonical(
                "identity.person", _shanghai_person(csrq="19880230")
            )

    def test_unknown_code(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match=r"xb: expected a code of table 'gender'.*'M'"):
            translators["shanghai"].to_canonical("identity.person", _shanghai_person(xb="M"))

    def test_code_of_wrong_json_type(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match=r"xb: expected a code of table 'gender'"):
            translators["shanghai"].to_canonical("identity.person", _shanghai_person(xb=1))

    def test_unknown_state_code(self, translators: dict[str, Translator]) -> None:
        document = _status(None)
        document["sj"]["pzzt"] = "XX"
        with pytest.raises(TranslationError, match=r"sj\.pzzt: expected a code of table"):
            translators["shanghai"].to_canonical("identity.status_response", document)

    def test_string_expected(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match=r"xm: expected a string, got a number"):
            translators["shanghai"].to_canonical("identity.person", _shanghai_person(xm=42))

    def test_object_expected_on_the_way(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match=r"sj: expected an object, got a list"):
            translators["shanghai"].to_canonical(
                "identity.status_response", {"fhdm": "00", "sj": []}
            )

    def test_constant_checked(self, translators: dict[str, Translator]) -> None:
        document = _status(None)
        document["fhdm"] = "99"
        with pytest.raises(TranslationError, match=r"fhdm: expected '00'"):
            translators["shanghai"].to_canonical("identity.status_response", document)

    def test_invalid_id_number(self, translators: dict[str, Translator]) -> None:
        bad = _shanghai_person(sfzh="310104198807151231")  # wrong check character
        with pytest.raises(TranslationError, match=r"sfzh: expected .*valid check character"):
            translators["shanghai"].to_canonical("identity.person", bad)

    def test_lower_case_x_refused(self, translators: dict[str, Translator]) -> None:
        bad = _shanghai_person(sfzh="31010419750308058x")
        with pytest.raises(TranslationError, match=r"sfzh: expected .*upper-case X"):
            translators["shanghai"].to_canonical("identity.person", bad)

    def test_pattern_checked(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match=r"hjdq: expected a value matching"):
            translators["shanghai"].to_canonical("identity.person", _shanghai_person(hjdq="31"))

    def test_json_bool_required(self, translators: dict[str, Translator]) -> None:
        document = {"credentialStatus": "ACTIVE", "tokenUsed": "false"}
        with pytest.raises(TranslationError, match=r"tokenUsed: expected a boolean"):
            translators["jiangsu"].to_canonical("identity.status_response", document)

    def test_epoch_millis_must_be_integer(self, translators: dict[str, Translator]) -> None:
        person = {"id_card_no": "330106198807151237", "name": "张伟", "gender": "男"}
        with pytest.raises(TranslationError, match=r"birth_millis: expected epoch milliseconds"):
            translators["zhejiang"].to_canonical(
                "identity.person", {**person, "birth_millis": "584895600000"}
            )

    def test_epoch_millis_must_be_local_midnight(self, translators: dict[str, Translator]) -> None:
        # 1988-07-15T00:00Z is UTC midnight, the classic bug: Beijing midnight
        # (daylight time) was 15:00Z the day before.
        person = {"id_card_no": "330106198807151237", "name": "张伟", "gender": "男"}
        with pytest.raises(TranslationError, match=r"midnight in Asia/Shanghai"):
            translators["zhejiang"].to_canonical(
                "identity.person", {**person, "birth_millis": 584928000000}
            )

    def test_xml_nested_path(self, translators: dict[str, Translator]) -> None:
        body = (
            b"<StatusResult><CredentialState>01</CredentialState><TokenUsed>no</TokenUsed>"
            b"</StatusResult>"
        )
        with pytest.raises(TranslationError, match=r"TokenUsed: expected true or false"):
            translators["anhui"].decode("identity.status_response", body)

    def test_xml_repeated_element(self, translators: dict[str, Translator]) -> None:
        body = (
            b"<StatusResult><CredentialState>01</CredentialState>"
            b"<CredentialState>02</CredentialState><TokenUsed>true</TokenUsed></StatusResult>"
        )
        with pytest.raises(TranslationError, match=r"CredentialState: expected one <"):
            translators["anhui"].decode("identity.status_response", body)

    def test_xml_wrong_document_element(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match=r"document element <StatusResult>"):
            translators["anhui"].decode("identity.status_response", b"<Other/>")

    def test_not_json(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match="JSON"):
            translators["jiangsu"].decode("identity.status_response", b"<html>502</html>")

    def test_json_array_refused(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match="a JSON object, got a list"):
            translators["jiangsu"].decode("identity.status_response", b"[]")


class TestXmlSafety:
    """XML answers cannot expand entities or reach outside (defusedxml, no DTD)."""

    @pytest.mark.parametrize(
        "body",
        [
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><StatusResult>&b;</StatusResult>',
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b"<StatusResult>&x;</StatusResult>",
            b'<!DOCTYPE StatusResult SYSTEM "http://127.0.0.1:1/dtd"><StatusResult/>',
        ],
        ids=["entity-expansion", "external-entity", "external-dtd"],
    )
    def test_dtd_refused(self, translators: dict[str, Translator], body: bytes) -> None:
        with pytest.raises(TranslationError, match="without DTD"):
            translators["anhui"].decode("identity.status_response", body)

    def test_malformed_refused(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match="well-formed XML"):
            translators["anhui"].decode("identity.status_response", b"<StatusResult>")


class TestReadingSemantics:
    """Optional, default and unknown native fields."""

    def test_default_fills_absent(self, translators: dict[str, Translator]) -> None:
        canonical = translators["shanghai"].to_canonical("identity.person", _shanghai_person())
        assert canonical["nationality"] == "CHN"
        assert "address" not in canonical
        assert "photo" not in canonical

    def test_unknown_native_fields_ignored(self, translators: dict[str, Translator]) -> None:
        canonical = translators["shanghai"].to_canonical(
            "identity.person", _shanghai_person(bz="备注")
        )
        assert canonical["full_name"] == "张伟"

    def test_null_is_absent(self, translators: dict[str, Translator]) -> None:
        person = _shanghai_person()
        person["zz"] = None
        assert "address" not in translators["shanghai"].to_canonical("identity.person", person)

    def test_dst_birth_date(self, translators: dict[str, Translator]) -> None:
        # 1988-07-15 00:00 Beijing daylight time = 1988-07-14T15:00Z.
        person = {
            "id_card_no": "330106198807151237",
            "name": "张伟",
            "gender": "男",
            "birth_millis": 584895600000,
        }
        canonical = translators["zhejiang"].to_canonical("identity.person", person)
        assert canonical["birth_date"] == "1988-07-15"
        assert translators["zhejiang"].to_native("identity.person", canonical) == {
            **person,
            "nationality": "CHN",
        }

    #: The days whose midnight Shanghai's clocks skipped (daylight saving began at
    #: 00:00): each began at the instant of the change, shown as 01:00 (UTC+9),
    #: i.e. 16:00Z the day before. A resident born on one is 76 or older.
    SKIPPED_MIDNIGHTS: ClassVar[list[tuple[str, str]]] = [
        ("1919-04-13", "330106191904131236"),
        ("1940-06-01", "330106194006011236"),
        ("1941-03-15", "330106194103151230"),
        ("1942-01-31", "330106194201311234"),
        ("1946-05-15", "330106194605151230"),
        ("1947-04-15", "330106194704151236"),
        ("1948-05-01", "330106194805011232"),
        ("1949-05-01", "33010619490501123X"),
    ]

    @pytest.mark.parametrize(("birth_date", "id_number"), SKIPPED_MIDNIGHTS)
    def test_a_birth_date_whose_midnight_the_clocks_skipped(
        self, translators: dict[str, Translator], birth_date: str, id_number: str
    ) -> None:
        day = date.fromisoformat(birth_date)
        began = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=8)
        person = {
            "id_card_no": id_number,
            "name": "张伟",
            "gender": "男",
            "birth_millis": int(began.timestamp()) * 1000,
        }
        canonical = translators["zhejiang"].to_canonical("identity.person", person)
        assert canonical["birth_date"] == birth_date
        assert translators["zhejiang"].to_native("identity.person", canonical) == {
            **person,
            "nationality": "CHN",
        }

    def test_one_in_the_morning_of_an_ordinary_day_is_refused(
        self, translators: dict[str, Translator]
    ) -> None:
        # 1942-02-01 01:00 in Shanghai (UTC+9 that year) = 1942-01-31T16:00Z: not
        # the start of that day, which began an hour earlier.
        person = {"id_card_no": "330106194202011233", "name": "张伟", "gender": "男"}
        at_one = int(datetime(1942, 1, 31, 16, tzinfo=UTC).timestamp()) * 1000
        with pytest.raises(TranslationError, match=r"midnight in Asia/Shanghai"):
            translators["zhejiang"].to_canonical(
                "identity.person", {**person, "birth_millis": at_one}
            )


class TestWriting:
    """Canonical → native: required fields, code tables and proto helpers."""

    def test_required_canonical_missing(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(
            TranslationError, match=r"lpbh: expected a value for required canonical"
        ):
            translators["shanghai"].encode("identity.status_request", {"credential_id": "EID1"})

    def test_value_not_in_code_table(self, translators: dict[str, Translator]) -> None:
        canonical = {"state": "CREDENTIAL_STATE_UNSPECIFIED", "token_already_used": False}
        with pytest.raises(TranslationError, match=r"pzzt: expected canonical 'state' as"):
            translators["shanghai"].to_native("identity.status_response", canonical)

    def test_unknown_canonical_key(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match=r"unknown \['token'\]"):
            translators["jiangsu"].to_native(
                "identity.status_request", {"credential_id": "a", "token_id": "b", "token": "c"}
            )

    def test_nested_error_names_canonical_path(self, translators: dict[str, Translator]) -> None:
        canonical = {
            "state": "CREDENTIAL_ACTIVE",
            "token_already_used": False,
            "holder": {"id_number": "310104198807151230", "full_name": "张伟"},
        }
        with pytest.raises(TranslationError, match=r"holder\.gender"):
            translators["jiangsu"].to_native("identity.status_response", canonical)

    def test_xml_writes_text_and_attributes(self, translators: dict[str, Translator]) -> None:
        body = translators["anhui"].encode(
            "identity.status_response",
            {
                "state": "CREDENTIAL_LOST",
                "token_already_used": True,
                "checked_at": "2026-05-01T08:00:00Z",
            },
        )
        assert body == (
            b"<?xml version='1.0' encoding='utf-8'?>\n"
            b'<StatusResult checkedAt="2026-05-01 16:00:00"><CredentialState>03</CredentialState>'
            b"<TokenUsed>true</TokenUsed></StatusResult>"
        )

    def test_proto_helpers_round_trip(self, translators: dict[str, Translator]) -> None:
        person = common_pb2.Person(
            id_number="310104198807151230",
            full_name="张伟",
            gender=common_pb2.GENDER_UNSPECIFIED,
            birth_date="1988-07-15",
            photo=b"\x00\xff",
        )
        native = translators["shanghai"].to_native("identity.person", from_message(person))
        assert isinstance(native, dict)
        assert native["xb"] == "0"  # an explicit GENDER_UNSPECIFIED reaches the code table
        back = to_message(
            translators["shanghai"].to_canonical("identity.person", native), common_pb2.Person
        )
        person.nationality = "CHN"  # the default
        assert back == person

    def test_unknown_message_name(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(KeyError, match=r"identity\.person"):
            translators["jiangsu"].mapper("identity.persons")
