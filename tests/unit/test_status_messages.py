"""What a caller sees of an error: echoed values cut by ``shown``, status
messages cut to 1 KiB, details built with grpc_status (BadRequest, RetryInfo)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.errors import GatewayError, InvalidArgument, ResourceExhausted, shown
from gateway.server.interceptors import MAX_STATUS_MESSAGE, bounded, status_of


class TestShown:
    """A value is shown as its repr, at most ``limit`` characters, control characters escaped."""

    def test_short_values_are_shown_whole(self) -> None:
        assert shown("WD-310000-abc") == "'WD-310000-abc'"

    @given(st.text(), st.integers(min_value=2, max_value=200))
    def test_never_longer_than_the_limit(self, value: str, limit: int) -> None:
        rendered = shown(value, limit)
        assert len(rendered) <= limit
        if len(repr(value)) > limit:
            assert rendered.endswith("…")
            assert value not in rendered or len(value) < limit

    def test_control_characters_are_escaped(self) -> None:
        assert "\x00" not in shown("a\x00b\x1b[31m")
        assert "\\x1b" in shown("a\x00b\x1b[31m")


class TestBounded:
    @given(st.text(max_size=3000))
    def test_at_most_the_limit_in_utf8_bytes(self, text: str) -> None:
        cut = bounded(text)
        assert len(cut.encode()) <= MAX_STATUS_MESSAGE
        if len(text.encode()) <= MAX_STATUS_MESSAGE:
            assert cut == text


class SlowDown(GatewayError):
    """Any error with retry_after gets a RetryInfo, whatever its class."""

    code = grpc.StatusCode.UNAVAILABLE
    retry_after = 2.5


def _details(status: grpc.Status) -> status_pb2.Status:
    (key, value), *_ = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


class TestStatusOf:
    def test_a_20_kb_message_is_cut_and_fits_the_client_metadata_limit(self) -> None:
        status = status_of(InvalidArgument("f" * 20_000, "x" * 20_000))
        assert status.code == grpc.StatusCode.INVALID_ARGUMENT
        assert len(status.details.encode()) <= MAX_STATUS_MESSAGE
        # Everything in the trailers, percent/base64-encoded, stays well under 16 KiB.
        assert sum(len(v) for _, v in status.trailing_metadata) * 4 // 3 < 8 * 1024
        bad = error_details_pb2.BadRequest()
        assert _details(status).details[0].Unpack(bad)
        assert len(bad.field_violations[0].field) <= 128

    def test_retry_after_becomes_retry_info(self) -> None:
        for error, seconds in (
            (ResourceExhausted("over the limit", 0.25), 0.25),
            (SlowDown("x"), 2.5),
        ):
            info = error_details_pb2.RetryInfo()
            assert _details(status_of(error)).details[0].Unpack(info)
            assert info.retry_delay.ToMilliseconds() == int(seconds * 1000)
