"""Real-world identifiers, validated: resident ID numbers, credit codes, regions;
and the ids the node makes (random, or time-ordered where a store indexes them)."""

from __future__ import annotations

import os
import re
import threading
import time
import unicodedata
from datetime import date

from stdnum import luhn
from stdnum.cn import ric, uscc
from stdnum.exceptions import ValidationError

from gateway.core.errors import InvalidArgument

#: GB/T 2260 codes of the provinces of the federation and their names.
PROVINCES: dict[str, str] = {
    "310000": "Shanghai",
    "320000": "Jiangsu",
    "330000": "Zhejiang",
    "340000": "Anhui",
}

#: GB/T 2260 province-level prefixes: the first two digits of every region code
#: (and so of every resident ID number). Anything else is not a region of China.
PROVINCE_PREFIXES = "11-15, 21-23, 31-37, 41-46, 50-54, 61-65, 71, 81-83"
_PREFIX = r"(?:1[1-5]|2[1-3]|3[1-7]|4[1-6]|5[0-4]|6[1-5]|71|8[1-3])"
# [0-9], not \d: \d also matches full-width and other scripts' digits.
REGION_CODE_PATTERN = _PREFIX + r"[0-9]{4}"
_REGION = re.compile(REGION_CODE_PATTERN)
_ID_FORM = re.compile(r"[0-9]{17}[0-9X]")


def province_of(region_code: str) -> str:
    """The province-level code (``xx0000``) of a six-digit region code."""
    return region_code[:2] + "0000"


def is_region_code(value: str) -> bool:
    """Six ASCII digits starting with a GB/T 2260 province-level prefix."""
    return _REGION.fullmatch(value) is not None


def validate_region_code(field: str, value: str) -> str:
    if not is_region_code(value):
        raise InvalidArgument(
            field,
            f"a six-digit GB/T 2260 region code (province prefix {PROVINCE_PREFIXES})",
        )
    return value


def id_number_problem(value: str, today: date | None = None) -> str | None:
    """What is wrong with an ID number in canonical form (upper-case, no blanks),
    as the expectation it fails, or None when it is a valid GB 11643 number.

    The one rule for resident ID numbers: the node's field checks
    (:func:`validate_id_number`) and the mapping engine's ``gb11643`` check use
    it. It checks the form, the province prefix of the region code, a real
    birth date between 1900 and today, and the ISO 7064 MOD 11-2 check
    character (python-stdnum's). It never includes the number. The county code
    is not looked up in a table: counties are created and merged, and a
    resident keeps the number of a county that no longer exists (stdnum's full
    validate would refuse them, as it refuses codes assigned after the birth).
    """
    if not _ID_FORM.fullmatch(value):
        return "18 characters: 17 digits then a digit or upper-case X (GB 11643)"
    if not _REGION.fullmatch(value[:6]):
        return f"a GB/T 2260 region code in characters 1-6 (province prefix {PROVINCE_PREFIXES})"
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return "a real birth date YYYYMMDD in characters 7-14"
    if born.year < 1900 or born > (today or date.today()):
        return "a birth date between 1900 and today in characters 7-14"
    if ric.calc_check_digit(value) != value[17]:
        return "a valid check character in position 18 (ISO 7064 MOD 11-2)"
    return None


def make_id_number(region: str, birth: date, sequence: int) -> str:
    """An 18-character resident ID number from its parts (sequence 0..999, odd
    for a man), with its ISO 7064 MOD 11-2 check character: synthetic residents
    and generated test data are built by the same rule that checks them."""
    first17 = f"{region}{birth:%Y%m%d}{sequence:03d}"
    # stdnum computes over a whole number: the 18th character is a placeholder.
    return first17 + ric.calc_check_digit(first17 + "0")


def validate_id_number(field: str, value: str) -> str:
    """Validate an 18-character GB 11643 resident ID number; return it upper-cased.

    Blanks around it and a lower-case ``x`` are accepted; the rule is
    :func:`id_number_problem`'s, and a refusal says which part failed without
    echoing the number.
    """
    if not value:
        raise InvalidArgument(field, "an 18-character GB 11643 resident ID number, got nothing")
    candidate = value.strip().upper()
    problem = id_number_problem(candidate)
    if problem is not None:
        raise InvalidArgument(field, problem)
    return candidate


#: Bidirectional embedding, override and isolate controls: text that displays
#: otherwise than it reads.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def is_plain_text(value: str, *, multiline: bool = False) -> bool:
    """No control characters (line breaks and tabs allowed when ``multiline``),
    lone surrogates or bidirectional overrides. Private-use characters pass:
    rare characters in Chinese names are often encoded there."""
    allowed = "\n\r\t" if multiline else ""
    return not any(
        ch not in allowed and (unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI_CONTROLS)
        for ch in value
    )


def validate_text(field: str, value: str, what: str, max_chars: int) -> str:
    """A required one-line text field (a name, a bank): 1..max_chars plain characters."""
    if not value.strip() or len(value) > max_chars or not is_plain_text(value):
        raise InvalidArgument(
            field, f"{what}, 1..{max_chars} characters without control characters"
        )
    return value


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


def validate_idempotency_key(field: str, value: str, *, use: str = "unique per case") -> str:
    """A caller's idempotency key (a case's, a verification's): 8..128 characters
    of [A-Za-z0-9._:-]; ``use`` ends the refusal's "expected" (what the key is for)."""
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidArgument(field, f"8..128 characters of [A-Za-z0-9._:-], {use}")
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


#: Bytes read from the operating system's random source at a time (see random_bytes).
RANDOM_POOL_BYTES = 4096
_pool = b""
_pool_at = 0
_pool_lock = threading.Lock()


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's random source (``os.urandom``),
    read :data:`RANDOM_POOL_BYTES` at a time and each byte handed out once.

    ``os.urandom`` releases the GIL around its system call: on a busy node every
    call let another thread (gRPC's poller, a store writer) take the interpreter
    and the event loop wait to get it back, several times per exchange (message
    ids, nonces, correlation and check-in ids). A child process forgets the
    pool it inherited (``os.register_at_fork``), so no two processes hand out
    the same bytes."""
    global _pool, _pool_at
    with _pool_lock:
        if _pool_at + n > len(_pool):
            _pool, _pool_at = os.urandom(max(RANDOM_POOL_BYTES, n)), 0
        chunk = _pool[_pool_at : _pool_at + n]
        _pool_at += n
    return chunk


def _forget_pool() -> None:
    global _pool, _pool_at, _pool_lock
    _pool, _pool_at, _pool_lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def random_uuid_hex() -> str:
    """``uuid.uuid4().hex`` at a third of the cost: 16 random bytes with the
    version (4) and variant (RFC 4122) bits set, as 32 hex digits."""
    return _uuid_hex(random_bytes(16), 4)


def _uuid_hex(raw: bytes, version: int) -> str:
    """16 bytes as a UUID's 32 hex digits, with its ``version`` and the RFC
    4122 / 9562 variant bits set."""
    stamped = bytearray(raw)
    stamped[6] = (stamped[6] & 0x0F) | (version << 4)
    stamped[8] = (stamped[8] & 0x3F) | 0x80
    return stamped.hex()


def random_uuid() -> str:
    """``str(uuid.uuid4())``, from :func:`random_uuid_hex` (the 8-4-4-4-12 form)."""
    return _hyphenated(random_uuid_hex())


def _hyphenated(digits: str) -> str:
    """A UUID's 32 hex digits in its canonical 8-4-4-4-12 form."""
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


#: The bytes of a time-ordered id that carry the time: Unix milliseconds, big-endian.
TIME_PREFIX_BYTES = 6


def time_ordered_bytes(n: int, at_ms: int | None = None) -> bytes:
    """``n`` bytes (``n`` > 6): Unix time in milliseconds (``at_ms``, else now)
    in the first six, big-endian, then random bytes (:func:`random_bytes`).

    For what a node's stores index as it is made (message ids, nonces): made
    one after another, such values sort one after another, so each new row's
    index entry goes at the end of its B-tree, on the page the ones before it
    went to. A random value puts each entry on a random page of the index, and
    a commit of a few rows rewrote a page per row per index: issue 16 measured
    half the message log's page writes gone, at both nodes, once message ids,
    nonces and correlation ids were time-ordered. The random part keeps the
    values made in one millisecond apart (80 bits for a 16-byte nonce)."""
    if n <= TIME_PREFIX_BYTES:
        raise ValueError(f"time_ordered_bytes: expected more than {TIME_PREFIX_BYTES} bytes")
    if at_ms is None:
        at_ms = time.time_ns() // 1_000_000
    return (at_ms % (1 << 48)).to_bytes(TIME_PREFIX_BYTES, "big") + random_bytes(
        n - TIME_PREFIX_BYTES
    )


def ordered_uuid(at_ms: int | None = None) -> str:
    """A UUID of version 7 (RFC 9562), in the 8-4-4-4-12 form: 48 bits of Unix
    time in milliseconds (``at_ms``, else now), then 74 random bits. What
    :func:`time_ordered_bytes` says of index pages holds for it; the time it
    shows is the time the id was made, which the envelope states anyway."""
    return _hyphenated(_uuid_hex(time_ordered_bytes(16, at_ms), 7))
