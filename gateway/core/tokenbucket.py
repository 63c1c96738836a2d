"""The one token bucket of the gateway: local clients' rate limits and the
federation client's retry budget per peer both draw from it."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second on average, at most ``capacity`` at once.

    ``take()`` spends one token when there is one; otherwise it spends nothing
    and returns how many seconds until one is there. Rate and capacity may
    change between calls (a reloaded config): the bucket keeps its level.
    """

    def __init__(
        self, rate: float, capacity: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._at = clock()

    def take(self) -> float:
        """0.0 when a token was spent, else the seconds until one is available."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def try_take(self) -> bool:
        """Spend one token if there is one."""
        return self.take() == 0.0
