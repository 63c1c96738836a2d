"""Real-world identifiers: resident ID numbers, credit codes, region codes, masking."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date

import grpc
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from adapters.formats import Mismatch
from adapters.mapping import check_gb11643
from gateway.core.errors import InvalidArgument
from gateway.core.identifiers import (
    PROVINCES,
    mask_id_number,
    province_of,
    validate_credit_code,
    validate_id_number,
    validate_region_code,
)

# An oracle written from GB 11643 itself, independent of python-stdnum.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"  # remainder 0..10 -> check character

# ... and from GB 32100.
_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)

#: GB/T 2260 province-level prefixes, written out from the standard.
_PROVINCE_NUMBERS = (*range(11, 16), *range(21, 24), *range(31, 38), *range(41, 47))
PREFIXES = frozenset(
    str(n) for n in (*_PROVINCE_NUMBERS, *range(50, 55), *range(61, 66), 71, *range(81, 84))
)
EXAMPLE_ID = "11010519491231002X"  # the GB 11643 example
FIELD = "guest.id_number"


def id_check_char(body: str) -> str:
    """The ISO 7064 MOD 11-2 check character of a 17-digit body."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]


def uscc_check_char(body: str) -> str:
    total = sum(_USCC_ALPHABET.index(c) * w for c, w in zip(body, _USCC_WEIGHTS, strict=True))
    return _USCC_ALPHABET[(31 - total) % 31]


def outcome(validate: Callable[[str, str], str], field: str, value: str) -> str | InvalidArgument:
    """What a caller gets: the accepted value, or the InvalidArgument raised."""
    try:
        return validate(field, value)
    except InvalidArgument as error:
        return error


regions = st.sampled_from(["110105", "310115", "320583", "330106", "340104", "810000"])
birth_dates = st.dates(min_value=date(1900, 1, 1), max_value=date.today())
sequence_digits = st.text(alphabet="0123456789", min_size=3, max_size=3)


@st.composite
def id_bodies(draw: st.DrawFn) -> str:
    """17-digit bodies with a real region prefix and a plausible birth date."""
    return draw(regions) + draw(birth_dates).strftime("%Y%m%d") + draw(sequence_digits)


@st.composite
def valid_id_numbers(draw: st.DrawFn) -> str:
    body = draw(id_bodies())
    return body + id_check_char(body)


@st.composite
def valid_credit_codes(draw: st.DrawFn) -> str:
    body = draw(st.text(alphabet="0123456789", min_size=8, max_size=8)) + draw(
        st.text(alphabet=_USCC_ALPHABET, min_size=9, max_size=9)
    )
    return body + uscc_check_char(body)


class TestCheckCharacterOracle:
    """The test oracle agrees with the standard's worked example."""

    def test_gb11643_example(self) -> None:
        assert id_check_char(EXAMPLE_ID[:17]) == "X"


class TestValidateIdNumber:
    """A GB 11643 number is accepted exactly when its form, region, birth date and
    check character are right; a rejection names the field and what was expected,
    and never echoes the number."""

    def test_accepts_the_standard_example(self) -> None:
        assert validate_id_number(FIELD, EXAMPLE_ID) == EXAMPLE_ID

    def test_upper_cases_a_lower_case_check_character_and_strips_blanks(self) -> None:
        assert validate_id_number(FIELD, "  11010519491231002x\n") == EXAMPLE_ID

    @given(valid_id_numbers())
    def test_accepts_every_number_with_the_right_check_character(self, number: str) -> None:
        assert validate_id_number(FIELD, number) == number

    @given(id_bodies(), st.sampled_from(_ID_CHECK))
    def test_rejects_every_wrong_check_character(self, body: str, check: str) -> None:
        assume(check != id_check_char(body))
        number = body + check
        with pytest.raises(InvalidArgument) as caught:
            validate_id_number(FIELD, number)
        assert caught.value.field == FIELD
        assert "check character in position 18" in caught.value.message
        assert number not in caught.value.message

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("", "got nothing"),
            ("11010519491231002", "18 characters"),
            ("11010519491231002X1", "18 characters"),
            ("1101051949123100XX", "18 characters"),
            ("11010519491231002Y", "18 characters"),
            ("110105-1949-1231-002X", "18 characters"),
            ("ＡＢ0105194912310021", "18 characters"),
            ("010105194912310021", "region code in characters 1-6"),
            ("910105194912310021", "region code in characters 1-6"),
            ("110105194902300021", "real birth date YYYYMMDD in characters 7-14"),
            ("110105194913010021", "real birth date YYYYMMDD in characters 7-14"),
            ("110105189912310021", "between 1900 and today"),
            ("110105300001010021", "between 1900 and today"),
        ],
    )
    def test_names_what_was_wrong(self, value: str, expected: str) -> None:
        # Give each malformed body its right check character, so only the named part is wrong.
        if re.fullmatch(r"\d{17}\d", value):
            value = value[:17] + id_check_char(value[:17])
        with pytest.raises(InvalidArgument) as caught:
            validate_id_number(FIELD, value)
        error = caught.value
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.field == FIELD
        assert str(error).startswith(f"{FIELD}: expected ")
        assert expected in str(error)
        if value:
            assert value not in str(error)
            assert value[:17] not in str(error)

    @given(st.text(max_size=40))
    @example("11010519491231002Y")
    @example("0" * 18)
    def test_arbitrary_text_is_accepted_or_refused_with_invalid_argument_only(
        self, value: str
    ) -> None:
        result = outcome(validate_id_number, FIELD, value)
        if isinstance(result, InvalidArgument):
            assert result.field == FIELD
            # Short or wordy text can occur in any sentence; what matters is that
            # a number-like value is never echoed.
            if len(value.strip()) >= 8 and any(c.isdigit() for c in value):
                assert value.strip() not in result.message
        else:
            assert re.fullmatch(r"[0-9]{17}[0-9X]", result)
            assert result[17] == id_check_char(result[:17])

    def test_refuses_a_number_outside_every_province(self) -> None:
        # Right form, birth date and check character; 89 is no province.
        number = "890000194912310022"
        assert id_check_char(number[:17]) == number[17]
        with pytest.raises(InvalidArgument) as caught:
            validate_id_number(FIELD, number)
        assert "region code in characters 1-6" in caught.value.message
        assert number not in caught.value.message

    @pytest.mark.parametrize("prefix", sorted(PREFIXES))
    def test_accepts_a_number_from_every_province(self, prefix: str) -> None:
        body = prefix + "0102" + "19900517" + "123"
        assert validate_id_number(FIELD, body + id_check_char(body)) == body + id_check_char(body)

    @given(
        st.text(alphabet="0123456789Xx ", min_size=16, max_size=20)
        | st.builds(
            lambda body: body + id_check_char(body), st.from_regex(r"[0-9]{17}", fullmatch=True)
        )
    )
    def test_the_mapping_engine_applies_the_same_rule(self, value: str) -> None:
        # One validator: what the node accepts, the adapters' gb11643 check
        # accepts (in canonical form), and the other way round.
        result = outcome(validate_id_number, FIELD, value)
        canonical = value.strip().upper()
        try:
            check_gb11643(canonical)
            engine_refusal = ""
        except Mismatch as mismatch:
            engine_refusal = mismatch.expected
        assert (engine_refusal == "") == (not isinstance(result, InvalidArgument))
        if engine_refusal and len(canonical) >= 8:
            assert canonical not in engine_refusal

    @pytest.mark.parametrize(
        "digits",
        [
            pytest.param("０１２３４５６７８９", id="fullwidth"),
            pytest.param("٠١٢٣٤٥٦٧٨٩", id="arabic-indic"),
        ],
    )
    def test_refuses_digits_other_than_ascii(self, digits: str) -> None:
        # `\d` in a Python regex matches every Unicode decimal digit and int()
        # reads them; a number spelled in other digits must not come back "valid".
        spelled = EXAMPLE_ID[0] + "".join(
            digits[int(c)] if c.isdigit() else c for c in EXAMPLE_ID[1:]
        )
        with pytest.raises(InvalidArgument) as caught:
            validate_id_number(FIELD, spelled)
        assert caught.value.field == FIELD


class TestValidateCreditCode:
    """A GB 32100 code is accepted with a valid check character; anything else is
    refused with InvalidArgument naming the field, without echoing the code."""

    def test_accepts_a_known_code(self) -> None:
        assert validate_credit_code("org.credit_code", "91310000775785552L") == (
            "91310000775785552L"
        )

    @given(valid_credit_codes())
    def test_accepts_every_code_with_the_right_check_character(self, code: str) -> None:
        assert validate_credit_code("org.credit_code", code) == code
        assert validate_credit_code("org.credit_code", f" {code.lower()} ") == code

    @given(valid_credit_codes(), st.sampled_from(_USCC_ALPHABET))
    def test_rejects_a_wrong_check_character(self, code: str, check: str) -> None:
        assume(check != code[-1])
        wrong = code[:-1] + check
        with pytest.raises(InvalidArgument) as caught:
            validate_credit_code("org.credit_code", wrong)
        assert caught.value.field == "org.credit_code"
        assert "GB 32100" in caught.value.message
        assert wrong not in caught.value.message

    @pytest.mark.parametrize(
        "value",
        ["", "9131000077578555", "91310000775785552LL", "9131000077578555IL", "ABCDEFGH775785552L"],
    )
    def test_rejects_malformed_codes(self, value: str) -> None:
        with pytest.raises(InvalidArgument) as caught:
            validate_credit_code("org.credit_code", value)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.message.startswith("org.credit_code: expected ")

    @given(st.text(max_size=30))
    def test_arbitrary_text_raises_only_invalid_argument(self, value: str) -> None:
        result = outcome(validate_credit_code, "org.credit_code", value)
        if isinstance(result, InvalidArgument):
            assert result.field == "org.credit_code"
        else:
            assert len(result) == 18
            assert result[-1] == uscc_check_char(result[:17])


class TestValidateRegionCode:
    """Six digits starting with a GB/T 2260 province-level prefix, nothing else;
    the refusal names the field and never echoes the value."""

    @pytest.mark.parametrize("value", ["310000", "320583", "110105", "810000", "710000"])
    def test_accepts_region_codes(self, value: str) -> None:
        assert validate_region_code("hotel.region", value) == value

    @pytest.mark.parametrize(
        "value",
        ["", "31000", "3100000", "010000", "910000", "890000", "160000", "31OOOO", " 310000"],
    )
    def test_refuses_anything_else(self, value: str) -> None:
        with pytest.raises(InvalidArgument) as caught:
            validate_region_code("hotel.region", value)
        assert caught.value.field == "hotel.region"
        assert "six-digit GB/T 2260 region code" in caught.value.message

    def test_refuses_a_trailing_newline(self) -> None:
        # `$` in a Python regex also matches before a final "\n": the code
        # would otherwise come back unchanged, newline included.
        with pytest.raises(InvalidArgument):
            validate_region_code("hotel.region", "310000\n")

    @given(st.text(max_size=10) | st.from_regex(r"[0-9]{6}", fullmatch=True))
    def test_accepted_values_are_six_digits_with_a_province_prefix(self, value: str) -> None:
        result = outcome(validate_region_code, "hotel.region", value)
        if isinstance(result, InvalidArgument):
            assert result.field == "hotel.region"
            assert "six-digit GB/T 2260 region code" in result.message
        else:
            assert re.fullmatch(r"[0-9]{6}", result)
            assert result[:2] in PREFIXES

    @pytest.mark.parametrize("prefix", sorted(PREFIXES))
    def test_accepts_every_province_level_prefix(self, prefix: str) -> None:
        assert validate_region_code("hotel.region", prefix + "0000") == prefix + "0000"
        assert validate_region_code("hotel.region", prefix + "0102") == prefix + "0102"

    @pytest.mark.parametrize(
        "prefix", [f"{n:02d}" for n in range(100) if f"{n:02d}" not in PREFIXES]
    )
    def test_refuses_every_other_prefix(self, prefix: str) -> None:
        with pytest.raises(InvalidArgument) as caught:
            validate_region_code("hotel.region", prefix + "0000")
        assert prefix + "0000" not in caught.value.message

    def test_refuses_digits_other_than_ascii(self) -> None:
        with pytest.raises(InvalidArgument):
            validate_region_code("hotel.region", "3１００００")


class TestProvinceOf:
    """The province of a county code is its first two digits followed by 0000."""

    @pytest.mark.parametrize(
        ("region", "province"),
        [("310115", "310000"), ("320583", "320000"), ("330000", "330000"), ("340104", "340000")],
    )
    def test_province_level_code(self, region: str, province: str) -> None:
        assert province_of(region) == province
        assert province in PROVINCES


class TestMaskIdNumber:
    """The region prefix (4) and the last 4 characters survive; the rest is starred."""

    def test_masks_the_example(self) -> None:
        assert mask_id_number(EXAMPLE_ID) == "1101**********002X"

    @pytest.mark.parametrize("value", ["", "1", "12345678"])
    def test_short_values_are_masked_entirely(self, value: str) -> None:
        assert mask_id_number(value) == "*" * len(value)

    @given(valid_id_numbers())
    def test_keeps_length_and_ends_and_hides_the_birth_date(self, number: str) -> None:
        masked = mask_id_number(number)
        assert len(masked) == len(number)
        assert masked[:4] == number[:4]
        assert masked[-4:] == number[-4:]
        assert masked[4:14] == "*" * 10
        assert number[6:14] not in masked
