"""Structured logs with personal data masked: no ID number or name reaches a log line."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.core.logs import PERSONAL_KEYS, configure, mask_personal_data, mask_text
from tests.unit.test_identifiers import valid_credit_codes, valid_id_numbers
from yrd.common.v1 import common_pb2
from yrd.identity.v1 import identity_pb2

ID_NUMBER = "11010519491231002X"
MASKED_ID = "1101**********002X"
NAME = "张三"
BANK_CARD = "6222021234567890128"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """structlog configured as a node configures it, writing into a string."""
    stream = io.StringIO()
    configure("INFO", stream)
    yield stream
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestMaskText:
    """ID numbers and credit codes keep their first and last four characters, long
    digit runs their first and last two; the rest of the text is untouched."""

    @pytest.mark.parametrize(
        ("text", "masked"),
        [
            (ID_NUMBER, MASKED_ID),
            ("11010519491231002x", "1101**********002x"),
            (f"guest {ID_NUMBER} checked in", f"guest {MASKED_ID} checked in"),
            (f"id={ID_NUMBER}&x=1", f"id={MASKED_ID}&x=1"),
            (f"身份证号{ID_NUMBER}，已核验", f"身份证号{MASKED_ID}，已核验"),
            (f"{ID_NUMBER},{ID_NUMBER}", f"{MASKED_ID},{MASKED_ID}"),
            ("110105194912310021", "1101**********0021"),
            ("91310000775785552L", "9131**********552L"),
            (f"payee {BANK_CARD}", "payee 62******28"),
            ("account 123456789012", "account 12******12"),
        ],
    )
    def test_masks(self, text: str, masked: str) -> None:
        assert mask_text(text) == masked

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "node started on 127.0.0.1:7310",
            "withdrawal of 12345.67 CNY in 2027",
            "peer 320000 answered in 12 ms",
            "correlation 5f0c2a8e-8a3b-4c1d-9e7f-0a1b2c3d4e5f",
            "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ],
    )
    def test_leaves_ordinary_text_alone(self, text: str) -> None:
        assert mask_text(text) == text

    @given(
        number=valid_id_numbers(),
        before=st.sampled_from(["", " ", "id=", "身份证", "(", "\n", "'"]),
        after=st.sampled_from(["", " ", ")", "，", ";", "\t", "'"]),
    )
    def test_no_id_number_survives(self, number: str, before: str, after: str) -> None:
        masked = mask_text(f"{before}{number}{after}")
        assert number not in masked
        assert masked == f"{before}{number[:4]}{'*' * 10}{number[-4:]}{after}"

    @given(code=valid_credit_codes(), before=st.sampled_from(["", " ", "org="]))
    def test_no_credit_code_survives(self, code: str, before: str) -> None:
        masked = mask_text(before + code)
        assert code not in masked
        assert masked.startswith(before + code[:2])

    @given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz .,:;-_/()张三李四上海江苏"))
    def test_text_without_digits_or_capitals_is_unchanged(self, text: str) -> None:
        assert mask_text(text) == text


class TestMaskPersonalData:
    """The processor replaces personal keys with "[masked]" (at any depth) and masks
    personal patterns in every other string, including inside lists."""

    @pytest.mark.parametrize("key", sorted(PERSONAL_KEYS))
    def test_personal_keys_are_masked(self, key: str) -> None:
        event = mask_personal_data(None, "info", {"event": "x", key: "张三 11010519491231002X"})
        assert event == {"event": "x", key: "[masked]"}

    def test_nested_values(self) -> None:
        event = mask_personal_data(
            None,
            "info",
            {
                "event": f"checked {ID_NUMBER}",
                "request": {"purpose": "HOTEL_CHECK_IN", "guest": {"full_name": NAME}},
                "ids": [ID_NUMBER, {"address": "上海市黄浦区"}],
                "pair": (ID_NUMBER, 1),
                "count": 3,
                "ok": True,
                "nothing": None,
            },
        )
        assert event == {
            "event": f"checked {MASKED_ID}",
            "request": {"purpose": "HOTEL_CHECK_IN", "guest": "[masked]"},
            "ids": [MASKED_ID, {"address": "[masked]"}],
            "pair": [MASKED_ID, 1],
            "count": 3,
            "ok": True,
            "nothing": None,
        }

    def test_with_capture_logs(self) -> None:
        with capture_logs(processors=[mask_personal_data]) as captured:
            structlog.get_logger().info(
                "guest checked in", id_number=ID_NUMBER, full_name=NAME, note=f"ID {ID_NUMBER}"
            )
        assert captured == [
            {
                "event": "guest checked in",
                "id_number": "[masked]",
                "full_name": "[masked]",
                "note": f"ID {MASKED_ID}",
                "log_level": "info",
            }
        ]


class TestConfiguredLogs:
    """A node's configured logger writes JSON lines in which no ID number or name
    appears, whatever key, context or exception carries them."""

    def test_json_line_without_personal_data(self, log_stream: io.StringIO) -> None:
        structlog.get_logger().info(
            "guest checked in",
            id_number=ID_NUMBER,
            full_name=NAME,
            detail=f"checked {ID_NUMBER} for hotel 310101",
            payee=f"card {BANK_CARD}",
        )
        text = log_stream.getvalue()
        assert ID_NUMBER not in text
        assert NAME not in text
        assert json.dumps(NAME) not in text  # not even as a \\u escape
        assert BANK_CARD not in text
        (line,) = lines(log_stream)
        assert line["event"] == "guest checked in"
        assert line["level"] == "info"
        assert line["timestamp"].endswith("Z")
        assert line["id_number"] == line["full_name"] == "[masked]"
        assert line["detail"] == f"checked {MASKED_ID} for hotel 310101"

    def test_context_variables_are_masked(self, log_stream: io.StringIO) -> None:
        structlog.contextvars.bind_contextvars(correlation_id="c-1", guest=NAME, ref=ID_NUMBER)
        structlog.get_logger().info("step")
        (line,) = lines(log_stream)
        assert line["correlation_id"] == "c-1"
        assert line["guest"] == "[masked]"
        assert line["ref"] == MASKED_ID

    def test_exception_text_is_masked(self, log_stream: io.StringIO) -> None:
        try:
            raise ValueError(f"no resident {ID_NUMBER}")
        except ValueError:
            structlog.get_logger().exception("lookup failed")
        text = log_stream.getvalue()
        assert ID_NUMBER not in text
        assert MASKED_ID in lines(log_stream)[0]["exception"]

    def test_level_filtering(self) -> None:
        stream = io.StringIO()
        configure("warning", stream)
        try:
            structlog.get_logger().info("quiet")
            structlog.get_logger().warning("loud")
        finally:
            structlog.reset_defaults()
        assert [line["event"] for line in lines(stream)] == ["loud"]

    def test_console_rendering_is_masked_too(self) -> None:
        stream = io.StringIO()
        configure("INFO", stream, json=False)
        try:
            structlog.get_logger().info("guest", full_name=NAME, note=ID_NUMBER)
        finally:
            structlog.reset_defaults()
        assert NAME not in stream.getvalue()
        assert ID_NUMBER not in stream.getvalue()
        assert MASKED_ID in stream.getvalue()

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param(
                identity_pb2.IdentityClaims(
                    holder=common_pb2.Person(id_number=ID_NUMBER, full_name=NAME)
                ),
                id="protobuf-message",
            ),
            pytest.param(LookupError(f"no resident {ID_NUMBER}"), id="exception-object"),
        ],
    )
    def test_objects_rendered_to_text_are_masked(
        self, log_stream: io.StringIO, value: object
    ) -> None:
        # The renderer turns any non-JSON value into text after the masking
        # processor has run; that text must not carry personal data either.
        structlog.get_logger().info("released", claims=value)
        text = log_stream.getvalue()
        assert ID_NUMBER not in text
        assert NAME not in text
        assert json.dumps(NAME)[1:-1] not in text


class TestRendering:
    """Lines are rendered with orjson: one compact JSON object per line, non-ASCII
    text as UTF-8; what orjson refuses is rendered by the standard library."""

    def test_one_compact_line_per_event(self, log_stream: io.StringIO) -> None:
        structlog.get_logger().info("rpc", code="OK", note="已核验", took=1.5, keys={1: "a"})
        text = log_stream.getvalue()
        assert text.count("\n") == 1
        assert text.startswith('{"')
        assert text.endswith("}\n")
        assert '"event":"rpc"' in text
        assert '"note":"已核验"' in text
        (line,) = lines(log_stream)
        assert (line["note"], line["took"], line["keys"]) == ("已核验", 1.5, {"1": "a"})

    def test_one_write_per_line(self) -> None:
        """A line and its newline go to the stream in one write (one system call
        on a node's stderr, not two)."""

        class Writes(io.StringIO):
            def __init__(self) -> None:
                super().__init__()
                self.writes: list[str] = []

            def write(self, text: str) -> int:
                self.writes.append(text)
                return super().write(text)

        stream = Writes()
        configure("INFO", stream)
        try:
            structlog.get_logger().info("rpc", code="OK")
            structlog.get_logger().warning("store cannot write; NOT_SERVING")
        finally:
            structlog.reset_defaults()
        assert len(stream.writes) == 2
        assert all(w.startswith('{"') and w.endswith("}\n") for w in stream.writes)

    @pytest.mark.parametrize(
        ("value", "parsed"),
        [
            pytest.param(2**70, 2**70, id="integer-past-64-bits"),
            pytest.param("bad \ud800 text", "bad \ud800 text", id="lone-surrogate"),
        ],
    )
    def test_what_orjson_refuses_is_still_logged(
        self, log_stream: io.StringIO, value: object, parsed: object
    ) -> None:
        structlog.get_logger().info("odd", value=value)
        (line,) = lines(log_stream)
        assert line["event"] == "odd"
        assert line["value"] == parsed


def reference_mask_text(text: str) -> str:
    """mask_text as it was before its quick pre-check (issue 16): the patterns
    alone decide, searched on every text."""
    from gateway.core.logs import _CREDIT_CODE, _ID_NUMBER, _LONG_DIGITS

    text = _ID_NUMBER.sub(lambda m: m.group(1) + "*" * 10 + m.group(2), text)
    text = _CREDIT_CODE.sub(lambda m: m.group(1) + "*" * 10 + m.group(2), text)
    return _LONG_DIGITS.sub(lambda m: m.group(1) + "*" * 6 + m.group(2), text)


class TestQuickPaths:
    """What the hot path skips (issue 16) it may skip: the same text is masked."""

    @given(
        st.text(
            alphabet=st.sampled_from("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZxab-_ .:/"),
            max_size=60,
        )
    )
    def test_the_pre_check_lets_through_only_what_needs_no_mask(self, text: str) -> None:
        assert mask_text(text) == reference_mask_text(text)

    @pytest.mark.parametrize("key", ["timestamp", "level"])
    def test_the_stamped_keys_are_the_chains_own(self, log_stream: io.StringIO, key: str) -> None:
        # A caller's value under these keys is overwritten by the chain, so the
        # masking step can leave them unsearched without letting it through.
        structlog.get_logger().info("step", **{key: ID_NUMBER})
        (line,) = lines(log_stream)
        assert ID_NUMBER not in log_stream.getvalue()
        assert line["level"] == "info"
        assert line["timestamp"].endswith("Z")

    def test_mask_personal_data_still_searches_every_key(self) -> None:
        masked = mask_personal_data(None, "info", {"timestamp": ID_NUMBER, "level": ID_NUMBER})
        assert masked == {"timestamp": MASKED_ID, "level": MASKED_ID}
