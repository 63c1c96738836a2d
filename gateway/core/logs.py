"""Structured JSON logs (structlog) with personal data masked.

Personal data never reaches a log line: a processor masks anything shaped like
a resident ID number, an account number or a credit code in every string value,
and drops keys that name personal attributes. The message log is the only place
personal data is kept.
"""

from __future__ import annotations

import json as stdlib_json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

#: Keys whose values are personal data and are never logged.
PERSONAL_KEYS = frozenset(
    {
        "full_name",
        "name",
        "photo",
        "address",
        "birth_date",
        "id_number",
        "payee_account",
        "fund_account",
        "holder",
        "attributes",
        "guest",
        "person",
        "applicant",
    }
)
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(\d{4})\d{10}(\d{3}[\dXx])(?![0-9A-Za-z])")
_LONG_DIGITS = re.compile(r"(?<![0-9A-Za-z])(\d{2})\d{8,}(\d{2})(?![0-9A-Za-z])")
_CREDIT_CODE = re.compile(
    r"(?<![0-9A-Za-z])([0-9A-HJ-NPQRTUWXY]{4})[0-9A-HJ-NPQRTUWXY]{10}([0-9A-HJ-NPQRTUWXY]{4})(?![0-9A-Za-z])"
)


#: The shortest text any of the patterns above can match.
_SHORTEST = 12
#: What every match of them contains: twelve digits in a row (ID numbers and
#: account numbers) or eighteen credit-code characters in a row. Text without
#: it (correlation ids, method names, times) is left as it is, unsearched.
_CANDIDATE = re.compile(r"\d{12}|[0-9A-HJ-NPQRTUWXY]{18}")
#: What every candidate contains (digits are credit-code characters), found about
#: twice as fast as the candidate itself: most text is let through on it alone.
_RUN = re.compile(r"[0-9A-HJ-NPQRTUWXY]{12}")


def mask_text(text: str) -> str:
    """Mask ID numbers, account-like digit runs and credit codes inside free text."""
    if len(text) < _SHORTEST or _RUN.search(text) is None or _CANDIDATE.search(text) is None:
        return text
    text = _ID_NUMBER.sub(lambda m: m.group(1) + "*" * 10 + m.group(2), text)
    text = _CREDIT_CODE.sub(lambda m: m.group(1) + "*" * 10 + m.group(2), text)
    return _LONG_DIGITS.sub(lambda m: m.group(1) + "*" * 6 + m.group(2), text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: ("[masked]" if k in PERSONAL_KEYS else _mask_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Message):
        # Structured, so personal attributes are dropped by name, not guessed at.
        return _mask_value(MessageToDict(value, preserving_proto_field_name=True))
    # Anything else (a protobuf message, an exception) is rendered to text by the
    # JSON renderer after this processor: render and mask it here instead.
    return mask_text(str(value))


def mask_personal_data(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: drop personal keys, mask personal patterns in strings."""
    return _mask_event(event_dict, frozenset())


#: Keys that :func:`configure`'s chain has just set itself (add_log_level and
#: TimeStamper overwrite whatever a caller passed): known text, nothing to mask.
_STAMPED = frozenset({"level", "timestamp"})


def _mask_stamped_event(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """:func:`mask_personal_data` after add_log_level and TimeStamper: their keys unsearched."""
    return _mask_event(event_dict, _STAMPED)


def _mask_event(
    event_dict: MutableMapping[str, Any], stamped: frozenset[str]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():  # values replaced in place: no key added
        if key in PERSONAL_KEYS:
            event_dict[key] = "[masked]"
        elif type(value) is str:
            if key not in stamped:
                event_dict[key] = mask_text(value)
        else:
            event_dict[key] = _mask_value(value)
    return event_dict


def render_json(event_dict: Any, *, default: Any = repr, **_: Any) -> str:
    """One event as one line of JSON, with orjson (about a third of a line's cost
    less than the standard library's encoder). Compact separators; non-ASCII text
    is written as UTF-8. What orjson refuses (an integer past 64 bits, a lone
    surrogate) is rendered by the standard library instead, never dropped.
    ``default``: structlog's fallback for values neither knows (masking has made
    them text before this)."""
    try:
        return orjson.dumps(event_dict, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return stdlib_json.dumps(event_dict, default=default, separators=(",", ":"))


def configure(
    level: str = "INFO", stream: TextIO | None = None, *, json: bool = True, cache: bool = False
) -> None:
    """Configure structlog for a node process: JSON lines, UTC timestamps, masking.

    ``cache=True`` (a served node) lets each logger resolve its configuration
    once; tests and the demo, which reconfigure logging, leave it off.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=render_json)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _mask_stamped_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write per line (PrintLogger writes the line and its newline apart:
        # two system calls, each letting go of the interpreter lock).
        logger_factory=structlog.WriteLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=cache,
    )
