"""Injectable clocks, so that expiry, skew and freshness are testable."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp


class Clock(Protocol):
    """Source of the current UTC instant."""

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that moves only when told to (tests, demos)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware start instant")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, instant: datetime) -> None:
        self._now = instant.astimezone(UTC)


class OffsetClock:
    """The system clock shifted by a fixed offset (a province whose clock is off)."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Pacer:
    """At most one pass per ``interval`` seconds: :meth:`wait` returns at once when
    the last pass began longer ago, else sleeps the rest (a polling loop that many
    events wake serves them in one pass)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -interval

    async def wait(self) -> None:
        pause = self._last + self.interval - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        self._last = time.monotonic()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_timestamp(stamp: Timestamp, when: datetime) -> None:
    """``stamp.FromDatetime(when)``: the same seconds and nanos, at about a
    sixth of its cost for an aware ``when`` (every envelope's ``created_at``,
    every answer's time). A naive ``when`` goes to FromDatetime (read as UTC)."""
    if when.tzinfo is None:
        stamp.FromDatetime(when)
        return
    elapsed = when - _EPOCH
    stamp.seconds = elapsed.days * 86400 + elapsed.seconds
    stamp.nanos = elapsed.microseconds * 1000
