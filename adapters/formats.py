"""Value formats: how one native scalar is written, and its canonical form.

Each format converts in both directions and is strict, so that a value that
does not match is reported rather than silently read as something else
(``datetime.strptime`` would accept ``"199011"`` for ``yyyyMMdd``; these do not).

Date formats (canonical ``"YYYY-MM-DD"``):
    ``yyyyMMdd``, ``yyyy-MM-dd``, ``yyyy/MM/dd``
        strings.
    ``epoch_millis``
        integer milliseconds since 1970-01-01T00:00Z of **midnight at the start
        of that calendar date in the adapter's time zone** (``Asia/Shanghai``
        unless configured). A birth date is a calendar date, not an instant: it
        is stored as the instant its day began where it was registered. Reading
        requires that exact instant, so every date round-trips, including the
        1986–1991 summers when China observed daylight saving time (midnight
        was then UTC+9, not UTC+8) and the days of the 1940s whose midnight
        the clocks skipped (1942-01-31 began at 01:00 in Shanghai; its start is
        that instant, as Java's ``atStartOfDay`` gives). A value that is not
        the start of a local day (for instance UTC midnight, a common bug) is
        refused.

Timestamp formats (canonical RFC 3339 in UTC, as protobuf JSON writes it):
    ``rfc3339`` (any offset read, ``Z`` written), ``epoch_millis``,
    ``epoch_seconds`` (integers), and the local-time strings
    ``yyyyMMddHHmmss`` and ``yyyy-MM-dd HH:mm:ss`` in the adapter's time zone.

Bytes formats (canonical standard base64, as protobuf JSON writes it):
    ``base64`` (default), ``base64url``, ``hex``.

Integer formats (canonical an ``int`` in the int64 range; on writing the
decimal string protobuf JSON makes of an int64 is accepted too):
    ``integer`` (default)
        a JSON integer (in XML, decimal digits with an optional minus sign).
    ``fen``
        an amount of money in fen (1 yuan = 100 fen) as a non-negative
        integer; a negative amount is refused in both directions.
    ``yuan``
        an amount of money written as a yuan decimal string with at most two
        decimals (``"1234.56"`` is 123456 fen; written always with two). The
        conversion is exact, by integer arithmetic on the digits, never
        through a float: ``"0.1"`` is 10 fen, ``"12.345"`` and ``"-1.00"`` are
        refused, and a JSON number is refused (a float would already have
        lost the exact amount).

In XML every native value is text, so integers and booleans are read from
and written as their decimal / ``true``-``false`` spelling; in JSON they must
be real JSON numbers and booleans.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from types import MappingProxyType

from adapters.canonical import Kind

#: JSON-compatible native scalar (XML values are always ``str``).
NativeScalar = str | int | bool

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLI = timedelta(milliseconds=1)
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_INTEGER = re.compile(r"-?[0-9]{1,15}")
# ASCII digits only: ``\d`` and ``int()`` would also take "１" (full-width) and others.
_INT64_TEXT = re.compile(r"-?[0-9]{1,19}")
_YUAN = re.compile(r"(0|[1-9][0-9]{0,16})(?:\.([0-9]{1,2}))?")
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


class Mismatch(Exception):
    """A value does not match its format; ``expected`` says what would have."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


@dataclass(frozen=True)
class FormatContext:
    """What a conversion needs beyond the value itself."""

    timezone: tzinfo
    #: True for XML: native values are text.
    textual: bool


@dataclass(frozen=True)
class ValueFormat:
    name: str
    kind: Kind
    #: native scalar -> canonical value; raises Mismatch.
    to_canonical: Callable[[NativeScalar, FormatContext], object]
    #: canonical value -> native scalar; raises Mismatch.
    to_native: Callable[[object, FormatContext], NativeScalar]


def describe(value: object) -> str:
    """Say what a value is without repeating it (it may be personal data)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return f"a {len(value)}-character string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _text(raw: NativeScalar, what: str) -> str:
    if not isinstance(raw, str):
        raise Mismatch(f"{what} (a string), got {describe(raw)}")
    return raw


def _integer(raw: NativeScalar, ctx: FormatContext, what: str) -> int:
    if ctx.textual and isinstance(raw, str) and _INTEGER.fullmatch(raw):
        return int(raw)
    if not ctx.textual and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    kind = "decimal digits" if ctx.textual else "an integer"
    raise Mismatch(f"{what} ({kind}), got {describe(raw)}")


def _native_int(value: int, ctx: FormatContext) -> NativeScalar:
    return str(value) if ctx.textual else value


def canonical_date(value: object) -> date:
    """Parse a canonical ``YYYY-MM-DD`` date (raises Mismatch)."""
    what = "an ISO 8601 date YYYY-MM-DD"
    if not isinstance(value, str):
        raise Mismatch(f"{what}, got {describe(value)}")
    match = _ISO_DATE.fullmatch(value)
    if not match:
        raise Mismatch(f"{what}, got {describe(value)}")
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise Mismatch(f"{what} that exists in the calendar") from None


def _pattern_date(name: str, sep: str) -> ValueFormat:
    regex = re.compile(sep.join([r"(\d{4})", r"(\d{2})", r"(\d{2})"]))
    what = f"a date {name}"

    def to_canonical(raw: NativeScalar, ctx: FormatContext) -> object:
        match = regex.fullmatch(_text(raw, what))
        if not match:
            raise Mismatch(f"{what}, got {describe(raw)}")
        try:
            return date(int(match[1]), int(match[2]), int(match[3])).isoformat()
        except ValueError:
            raise Mismatch(f"{what} that exists in the calendar") from None

    def to_native(value: object, ctx: FormatContext) -> NativeScalar:
        d = canonical_date(value)
        return sep.join([f"{d.year:04d}", f"{d.month:02d}", f"{d.day:02d}"])

    return ValueFormat(name, Kind.DATE, to_canonical, to_native)


def _date_epoch_millis(raw: NativeScalar, ctx: FormatContext) -> object:
    millis = _integer(raw, ctx, "epoch milliseconds")
    try:
        local = (_EPOCH + millis * _MILLI).astimezone(ctx.timezone)
    except OverflowError:
        raise Mismatch("epoch milliseconds within years 1..9999") from None
    day = local.date()
    if millis != _start_of_day_millis(day, ctx):
        raise Mismatch(f"epoch milliseconds of a midnight in {ctx.timezone}")
    return day.isoformat()


def _start_of_day_millis(d: date, ctx: FormatContext) -> int:
    """The first instant of calendar date ``d`` in the adapter's time zone, in
    epoch milliseconds: its midnight, or where the clocks skipped midnight (a
    daylight-saving change at 00:00, as in Shanghai on 1942-01-31 and in some
    other years of the 1940s), the moment they jumped, which the zone shows as
    01:00. Java's ``LocalDate.atStartOfDay(zone)`` gives the same instant."""
    # A wall time in a gap (fold 0) is read with the offset before the change:
    # exactly the instant of the change.
    midnight = datetime(d.year, d.month, d.day, tzinfo=ctx.timezone)
    return (midnight - _EPOCH) // _MILLI


def _date_to_epoch_millis(value: object, ctx: FormatContext) -> NativeScalar:
    return _native_int(_start_of_day_millis(canonical_date(value), ctx), ctx)


def canonical_timestamp(value: object) -> datetime:
    """Parse a canonical RFC 3339 timestamp into an aware UTC datetime."""
    what = "an RFC 3339 timestamp with an offset"
    if not isinstance(value, str):
        raise Mismatch(f"{what}, got {describe(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Mismatch(f"{what}, got {describe(value)}") from None
    if parsed.tzinfo is None:
        raise Mismatch(f"{what}, got one without an offset")
    return parsed.astimezone(UTC)


def format_timestamp(instant: datetime) -> str:
    """An aware datetime as protobuf JSON writes a Timestamp (UTC, ``Z``)."""
    instant = instant.astimezone(UTC)
    if instant.year >= 1000:
        # What strftime writes, without its cost (it is on every answer's time).
        text = (
            f"{instant.year}-{instant.month:02d}-{instant.day:02d}"
            f"T{instant.hour:02d}:{instant.minute:02d}:{instant.second:02d}"
        )
    else:  # strftime's own spelling of years 1..999 (not padded by every C library)
        text = instant.strftime("%Y-%m-%dT%H:%M:%S")
    if instant.microsecond % 1000 == 0 and instant.microsecond:
        text += f".{instant.microsecond // 1000:03d}"
    elif instant.microsecond:
        text += f".{instant.microsecond:06d}"
    return text + "Z"


def _rfc3339(raw: NativeScalar, ctx: FormatContext) -> object:
    return format_timestamp(canonical_timestamp(_text(raw, "an RFC 3339 timestamp")))


def _to_rfc3339(value: object, ctx: FormatContext) -> NativeScalar:
    return format_timestamp(canonical_timestamp(value))


def _epoch(unit: timedelta, what: str) -> ValueFormat:
    def to_canonical(raw: NativeScalar, ctx: FormatContext) -> object:
        count = _integer(raw, ctx, what)
        try:
            return format_timestamp(_EPOCH + count * unit)
        except OverflowError:
            raise Mismatch(f"{what} within years 1..9999") from None

    def to_native(value: object, ctx: FormatContext) -> NativeScalar:
        return _native_int((canonical_timestamp(value) - _EPOCH) // unit, ctx)

    name = "epoch_millis" if unit == _MILLI else "epoch_seconds"
    return ValueFormat(name, Kind.TIMESTAMP, to_canonical, to_native)


def _local_time(name: str, strftime: str, regex: str) -> ValueFormat:
    pattern = re.compile(regex)
    what = f"a local time {name}"

    def to_canonical(raw: NativeScalar, ctx: FormatContext) -> object:
        match = pattern.fullmatch(_text(raw, what))
        if not match:
            raise Mismatch(f"{what}, got {describe(raw)}")
        try:
            y, mo, d, h, mi, s = (int(p) for p in match.groups())
            local = datetime(y, mo, d, h, mi, s, tzinfo=ctx.timezone)
        except ValueError:
            raise Mismatch(f"{what} that exists in the calendar") from None
        return format_timestamp(local)

    def to_native(value: object, ctx: FormatContext) -> NativeScalar:
        return canonical_timestamp(value).astimezone(ctx.timezone).strftime(strftime)

    return ValueFormat(name, Kind.TIMESTAMP, to_canonical, to_native)


def _bytes(
    name: str, encode: Callable[[bytes], str], decode: Callable[[str], bytes]
) -> ValueFormat:
    what = f"{name}-encoded bytes"

    def to_canonical(raw: NativeScalar, ctx: FormatContext) -> object:
        try:
            data = decode(_text(raw, what))
        except (binascii.Error, ValueError):
            raise Mismatch(f"{what}, got {describe(raw)}") from None
        return base64.b64encode(data).decode("ascii")

    def to_native(value: object, ctx: FormatContext) -> NativeScalar:
        return encode(canonical_bytes(value))

    return ValueFormat(name, Kind.BYTES, to_canonical, to_native)


def canonical_bytes(value: object) -> bytes:
    """Decode canonical base64 (standard or URL-safe, as protobuf JSON accepts)."""
    if not isinstance(value, str):
        raise Mismatch(f"base64 text, got {describe(value)}")
    text = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Mismatch(f"base64 text, got {describe(value)}") from None


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _b64url_decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _hex_decode(text: str) -> bytes:
    if not re.fullmatch(r"(?:[0-9A-Fa-f]{2})*", text):
        raise ValueError("not hex")
    return bytes.fromhex(text)


def canonical_int(value: object) -> int:
    """A canonical int64: an ``int`` or the decimal string protobuf JSON writes."""
    what = "an integer in the int64 range"
    if isinstance(value, str) and _INT64_TEXT.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Mismatch(f"{what}, got {describe(value)}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise Mismatch(what)
    return value


def _int64(raw: NativeScalar, ctx: FormatContext, what: str) -> int:
    if ctx.textual and isinstance(raw, str) and _INT64_TEXT.fullmatch(raw):
        number = int(raw)
    elif not ctx.textual and isinstance(raw, int) and not isinstance(raw, bool):
        number = raw
    else:
        kind = "decimal digits" if ctx.textual else "a JSON integer"
        raise Mismatch(f"{what} ({kind}), got {describe(raw)}")
    if not INT64_MIN <= number <= INT64_MAX:
        raise Mismatch(f"{what} in the int64 range")
    return number


def _integer_to_canonical(raw: NativeScalar, ctx: FormatContext) -> object:
    return _int64(raw, ctx, "an integer")


def _integer_to_native(value: object, ctx: FormatContext) -> NativeScalar:
    return _native_int(canonical_int(value), ctx)


def _fen_to_canonical(raw: NativeScalar, ctx: FormatContext) -> object:
    fen = _int64(raw, ctx, "an amount in fen")
    if fen < 0:
        raise Mismatch("an amount in fen that is not negative")
    return fen


def _fen_to_native(value: object, ctx: FormatContext) -> NativeScalar:
    fen = canonical_int(value)
    if fen < 0:
        raise Mismatch("an amount in fen that is not negative")
    return _native_int(fen, ctx)


def _yuan_to_canonical(raw: NativeScalar, ctx: FormatContext) -> object:
    what = "an amount in yuan as a decimal string with at most two decimals (e.g. '1234.56')"
    match = _YUAN.fullmatch(_text(raw, what))
    if not match:
        raise Mismatch(f"{what}, got {describe(raw)}")
    fen = int(match[1]) * 100 + int((match[2] or "").ljust(2, "0"))
    if fen > INT64_MAX:
        raise Mismatch("an amount in yuan within the int64 range of fen")
    return fen


def _yuan_to_native(value: object, ctx: FormatContext) -> NativeScalar:
    fen = canonical_int(value)
    if fen < 0:
        raise Mismatch("an amount in fen that is not negative")
    return f"{fen // 100}.{fen % 100:02d}"


_ALL: tuple[ValueFormat, ...] = (
    _pattern_date("yyyyMMdd", ""),
    _pattern_date("yyyy-MM-dd", "-"),
    _pattern_date("yyyy/MM/dd", "/"),
    ValueFormat("epoch_millis", Kind.DATE, _date_epoch_millis, _date_to_epoch_millis),
    ValueFormat("rfc3339", Kind.TIMESTAMP, _rfc3339, _to_rfc3339),
    _epoch(_MILLI, "epoch milliseconds"),
    _epoch(timedelta(seconds=1), "epoch seconds"),
    _local_time("yyyyMMddHHmmss", "%Y%m%d%H%M%S", r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})"),
    _local_time(
        "yyyy-MM-dd HH:mm:ss",
        "%Y-%m-%d %H:%M:%S",
        r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})",
    ),
    _bytes("base64", lambda b: base64.b64encode(b).decode("ascii"), _b64decode),
    _bytes("base64url", _b64url_encode, _b64url_decode),
    _bytes("hex", bytes.hex, _hex_decode),
    ValueFormat("integer", Kind.INT64, _integer_to_canonical, _integer_to_native),
    ValueFormat("fen", Kind.INT64, _fen_to_canonical, _fen_to_native),
    ValueFormat("yuan", Kind.INT64, _yuan_to_canonical, _yuan_to_native),
)

#: Formats by canonical kind, then by name (the ``format`` key of a field rule).
FORMATS: Mapping[Kind, Mapping[str, ValueFormat]] = MappingProxyType(
    {
        kind: MappingProxyType({f.name: f for f in _ALL if f.kind is kind})
        for kind in (Kind.DATE, Kind.TIMESTAMP, Kind.BYTES, Kind.INT64)
    }
)

#: The format used when a rule names none.
DEFAULT_FORMAT: Mapping[Kind, str] = MappingProxyType(
    {
        Kind.DATE: "yyyy-MM-dd",
        Kind.TIMESTAMP: "rfc3339",
        Kind.BYTES: "base64",
        Kind.INT64: "integer",
    }
)
