"""Real-world identifiers, validated: resident ID numbers, credit codes, regions."""

from __future__ import annotations

import re
from datetime import date

from stdnum import luhn
from stdnum.cn import ric, uscc
from stdnum.exceptions import ValidationError

from gateway.errors import InvalidArgument

#: GB/T 2260 codes of the provinces of the federation and their names.
PROVINCES: dict[str, str] = {
    "310000": "Shanghai",
    "320000": "Jiangsu",
    "330000": "Zhejiang",
    "340000": "Anhui",
}

_REGION = re.compile(r"[1-8][0-9]{5}")


def province_of(region_code: str) -> str:
    """The province-level code (``xx0000``) of a six-digit region code."""
    return region_code[:2] + "0000"


def validate_region_code(field: str, value: str) -> str:
    if not _REGION.fullmatch(value):
        raise InvalidArgument(field, f"a six-digit GB/T 2260 region code, got {value!r}")
    return value


def validate_id_number(field: str, value: str) -> str:
    """Validate an 18-character GB 11643 resident ID number; return it upper-cased.

    Checks the form, the region prefix, a real birth date (not in the future)
    and the ISO 7064 MOD 11-2 check character (python-stdnum's), and says
    which failed without echoing the number. The county code is not looked up
    in a table: counties are created and merged, and a resident keeps the
    number of a county that no longer exists (stdnum's full validate would
    refuse them).
    """
    if not value:
        raise InvalidArgument(field, "an 18-character GB 11643 resident ID number, got nothing")
    candidate = value.strip().upper()
    if not re.fullmatch(r"[0-9]{17}[0-9X]", candidate):
        raise InvalidArgument(field, "18 characters: 17 digits then a digit or 'X' (GB 11643)")
    if not _REGION.fullmatch(candidate[:6]):
        raise InvalidArgument(field, "a GB/T 2260 region code in characters 1-6")
    try:
        born = date(int(candidate[6:10]), int(candidate[10:12]), int(candidate[12:14]))
    except ValueError as exc:
        raise InvalidArgument(field, "a real birth date YYYYMMDD in characters 7-14") from exc
    if born.year < 1900 or born > date.today():
        raise InvalidArgument(field, "a birth date between 1900 and today in characters 7-14")
    if ric.calc_check_digit(candidate) != candidate[17]:
        raise InvalidArgument(field, "a valid ISO 7064 MOD 11-2 check character in position 18")
    return candidate


def validate_credit_code(field: str, value: str) -> str:
    """Validate an 18-character GB 32100 unified social credit code."""
    candidate = value.strip().upper()
    try:
        return str(uscc.validate(candidate))
    except ValidationError as exc:
        raise InvalidArgument(
            field, "an 18-character GB 32100 unified social credit code with a valid check"
        ) from exc


def mask_id_number(value: str) -> str:
    """Mask an ID number for logs: region prefix (4) and last 4 kept."""
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{8,128}")


def validate_idempotency_key(field: str, value: str) -> str:
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidArgument(field, "8..128 characters of [A-Za-z0-9._:-], unique per case")
    return value


def validate_bank_account(field: str, value: str) -> str:
    """A payee bank card/account number: 12..19 digits with a valid Luhn check digit."""
    if not re.fullmatch(r"[0-9]{12,19}", value):
        raise InvalidArgument(field, "a bank account number of 12..19 digits")
    if not luhn.is_valid(value):
        raise InvalidArgument(field, "a bank account number with a valid Luhn check digit")
    return value


def validate_fund_account(field: str, value: str) -> str:
    if not re.fullmatch(r"[0-9]{8,20}", value):
        raise InvalidArgument(field, "a provident-fund account number of 8..20 digits")
    return value
