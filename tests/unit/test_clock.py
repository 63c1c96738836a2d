"""gateway.core.clock.set_timestamp: what Timestamp.FromDatetime sets, quicker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.clock import set_timestamp

#: Aware instants anywhere in datetime's range, in zones east and west of UTC.
ZONES = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
INSTANTS = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=ZONES
)


@given(INSTANTS)
def test_an_aware_instant_sets_what_from_datetime_sets(when: datetime) -> None:
    expected, got = Timestamp(), Timestamp()
    expected.FromDatetime(when)
    set_timestamp(got, when)
    assert (got.seconds, got.nanos) == (expected.seconds, expected.nanos)
    assert got.ToDatetime(tzinfo=UTC) == when


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
def test_a_naive_instant_is_read_as_utc_as_from_datetime_reads_it(when: datetime) -> None:
    expected, got = Timestamp(), Timestamp()
    expected.FromDatetime(when)
    set_timestamp(got, when)
    assert got == expected


def test_before_the_epoch_the_nanos_stay_positive() -> None:
    stamp = Timestamp()
    set_timestamp(stamp, datetime(1969, 12, 31, 23, 59, 59, 250000, tzinfo=UTC))
    assert (stamp.seconds, stamp.nanos) == (-1, 250_000_000)
