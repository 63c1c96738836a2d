"""The engine's cheap paths give exactly what the general ones gave (issue 16).

``to_message`` builds flat messages field by field instead of through
``json_format.ParseDict``; ``format_timestamp`` writes the digits itself
instead of calling ``strftime``. Both must agree with the general path on
every value, and every value the cheap path does not take must still be
refused the way ParseDict refused it.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import TranslationError
from adapters.formats import format_timestamp
from adapters.mapping import _flat_message, to_message
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2

_PERSON_STRINGS = [
    "id_number",
    "full_name",
    "birth_date",
    "ethnicity",
    "address",
    "registered_region",
    "nationality",
]
_GENDERS = ["GENDER_UNSPECIFIED", "GENDER_MALE", "GENDER_FEMALE", "GENDER_NOT_STATED"]

# Values of every JSON kind, and strings ParseDict treats specially.
_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(["\ud800", "a\udc00b", "\ud83d\ude00", "1", "-1", "GENDER_MALE"]),
    st.lists(st.text(max_size=2), max_size=2),
    st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=1),
)
_BASE64ISH = st.one_of(
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode("ascii")),
    st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode("ascii")),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode("ascii").rstrip("=")),
    st.text("ABCabc+/-_=!. ", max_size=12),
)


def _general(canonical: dict[str, Any], message_type: type[Message]) -> Message | str:
    """What to_message gave before: ParseDict's message, or the error it raised."""
    try:
        return json_format.ParseDict(dict(canonical), message_type())
    except json_format.ParseError:
        return f"'': a valid {message_type.DESCRIPTOR.full_name}"
    except Exception as exc:
        return f"raised {type(exc).__name__}"


def _fast(canonical: dict[str, Any], message_type: type[Message]) -> Message | str:
    try:
        return to_message(canonical, message_type)
    except TranslationError as exc:
        return f"{exc.path!r}: {exc.expected}"
    except Exception as exc:
        return f"raised {type(exc).__name__}"


@st.composite
def person_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Person dicts, mostly valid, with odd keys and values mixed in."""
    result: dict[str, Any] = {}
    for name in _PERSON_STRINGS:
        if draw(st.booleans()):
            result[name] = draw(st.one_of(st.text(max_size=10), _ODD))
    if draw(st.booleans()):
        result["gender"] = draw(st.one_of(st.sampled_from(_GENDERS), _ODD))
    if draw(st.booleans()):
        result["photo"] = draw(st.one_of(_BASE64ISH, _ODD))
    if draw(st.integers(0, 9)) == 0:
        result[draw(st.sampled_from(["idNumber", "fullName", "unknown", "registeredRegion"]))] = (
            draw(st.text(max_size=4))
        )
    return result


_STATUSES = ["WITHDRAWAL_STATUS_UNSPECIFIED", "PAID", "REJECTED", "IN_PROGRESS"]
_TIMESTAMPISH = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda d: format_timestamp(d.replace(tzinfo=UTC))
    ),
    st.builds(
        "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}{}".format,
        st.integers(0, 9999),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 24),
        st.integers(0, 60),
        st.integers(0, 61),
        st.sampled_from(["", ".5", ".123", ".123456789", ".1234567891", "."]),
        st.sampled_from(["Z", "z", "+08:00", "", "Z "]),
    ),
    # Digits of another script, which a Unicode \d would match.
    st.sampled_from(["٢٠٢٦-05-01T08:00:00Z", "2026-05-01T08:00:0٠Z", "2026-05-01T08:00:00.٥Z"]),
)


@st.composite
def status_update_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """WithdrawalStatusUpdate dicts (strings, an enum, an int64, a Timestamp),
    mostly valid, with odd values mixed in."""
    result: dict[str, Any] = {}
    for name in ("idempotency_key", "status_reason", "remote_reference"):
        if draw(st.booleans()):
            result[name] = draw(st.one_of(st.text(max_size=6), _ODD))
    if draw(st.booleans()):
        result["status"] = draw(st.one_of(st.sampled_from(_STATUSES), _ODD))
    if draw(st.booleans()):
        result["paid_amount_fen"] = draw(
            st.one_of(
                st.integers(-(2**63), 2**63 - 1),
                st.sampled_from([2**63, -(2**63) - 1, 2**64]),
                _ODD,
            )
        )
    if draw(st.booleans()):
        result["changed_at"] = draw(st.one_of(_TIMESTAMPISH, _ODD))
    return result


class TestToMessage:
    @settings(max_examples=600, deadline=None)
    @given(status_update_dicts())
    def test_integers_and_timestamps_as_parse_dict_makes_them(
        self, canonical: dict[str, Any]
    ) -> None:
        kind = fund_pb2.WithdrawalStatusUpdate
        assert _fast(canonical, kind) == _general(canonical, kind)

    @pytest.mark.parametrize(
        "text",
        [
            "2026-05-01T08:00:00Z",
            "2026-05-01T08:00:00.5Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "1969-12-31T23:59:59.999Z",
        ],
    )
    def test_a_timestamp_takes_the_flat_path(self, text: str) -> None:
        canonical = {"changed_at": text, "paid_amount_fen": 7}
        kind = fund_pb2.WithdrawalStatusUpdate
        assert _flat_message(canonical, kind) is not None
        assert _fast(canonical, kind) == _general(canonical, kind)

    @settings(max_examples=400, deadline=None)
    @given(person_dicts())
    def test_person_as_parse_dict_makes_it(self, canonical: dict[str, Any]) -> None:
        assert _fast(canonical, common_pb2.Person) == _general(canonical, common_pb2.Person)

    def test_a_valid_person(self) -> None:
        canonical = {
            "id_number": "33010619900101002X",
            "full_name": "王芳",
            "gender": "GENDER_FEMALE",
            "birth_date": "1990-01-01",
            "nationality": "CHN",
            "photo": base64.b64encode(b"\xff\xd8 jpeg").decode("ascii"),
        }
        message = to_message(canonical, common_pb2.Person)
        assert message == _general(canonical, common_pb2.Person)
        assert message.photo == b"\xff\xd8 jpeg"
        assert message.gender == common_pb2.GENDER_FEMALE

    @pytest.mark.parametrize(
        "canonical",
        [
            {"gender": "GENDER_NONE"},
            {"full_name": 7},
            {"full_name": "a\ud800"},
            {"photo": "A"},
            {"unknown": "x"},
        ],
        ids=["unknown-enum-name", "number-for-string", "surrogate", "bad-base64", "unknown-key"],
    )
    def test_refused_as_before(self, canonical: dict[str, Any]) -> None:
        with pytest.raises(TranslationError) as caught:
            to_message(canonical, common_pb2.Person)
        assert caught.value.expected == "a valid yrd.common.v1.Person"
        assert caught.value.path == ""

    def test_json_names_and_nulls_still_read(self) -> None:
        canonical = {"idNumber": "330106199001010028", "address": None, "gender": 1}
        assert _fast(canonical, common_pb2.Person) == _general(canonical, common_pb2.Person)

    @pytest.mark.parametrize(
        "canonical",
        [
            {"fund_account": "12345678", "status": "NORMAL", "balance_fen": 100},
            {"fund_account": "12345678", "as_of": "2026-05-01T08:00:00Z"},
            {"fund_account": "12345678", "balance_fen": "12"},
            {"status": "NORMAL", "as_of": "not a time"},
        ],
        ids=["int64", "timestamp", "int64-text", "bad-timestamp"],
    )
    def test_other_kinds_take_the_general_path(self, canonical: dict[str, Any]) -> None:
        assert _fast(canonical, fund_pb2.FundAccount) == _general(canonical, fund_pb2.FundAccount)


def _strftime_timestamp(instant: datetime) -> str:
    """format_timestamp as it was written before (strftime)."""
    instant = instant.astimezone(UTC)
    text = instant.strftime("%Y-%m-%dT%H:%M:%S")
    if instant.microsecond % 1000 == 0 and instant.microsecond:
        text += f".{instant.microsecond // 1000:03d}"
    elif instant.microsecond:
        text += f".{instant.microsecond:06d}"
    return text + "Z"


class TestFormatTimestamp:
    @settings(max_examples=400, deadline=None)
    @given(
        st.datetimes(
            min_value=datetime(1, 1, 2),
            max_value=datetime(9999, 12, 30),
            timezones=st.sampled_from([UTC, None]),
        ),
        st.integers(-14 * 60, 14 * 60),
    )
    def test_as_strftime_writes_it(self, instant: datetime, offset_minutes: int) -> None:
        aware = instant.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
        assert format_timestamp(aware) == _strftime_timestamp(aware)

    @pytest.mark.parametrize(
        "instant",
        [
            datetime(1970, 1, 1, tzinfo=UTC),
            datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),
            datetime(1000, 1, 1, tzinfo=UTC),
            datetime(2026, 5, 1, 8, 0, 0, 123000, tzinfo=UTC),
            datetime(2026, 5, 1, 8, 0, 0, 123456, tzinfo=UTC),
        ],
        ids=["epoch", "year-999", "year-1000", "millis", "micros"],
    )
    def test_edges(self, instant: datetime) -> None:
        assert format_timestamp(instant) == _strftime_timestamp(instant)
