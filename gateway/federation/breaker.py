"""A circuit breaker per peer: fail fast while a province is down."""

from __future__ import annotations

import time
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``reset_after`` seconds one
    trial call is let through (half-open); its success closes the breaker."""

    def __init__(self, threshold: int = 5, reset_after: float = 2.0) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self._failures = 0
        self._opened_at = 0.0
        self._state = BreakerState.CLOSED
        self._trial_in_flight = False
        self._trial_started = 0.0

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and time.monotonic() - self._opened_at >= self.reset_after
        ):
            return BreakerState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go out now?"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and self._take_trial()

    def trial_now(self) -> bool:
        """Let one trial call go now though ``reset_after`` has not passed: the
        caller knows the peer is reachable again. False when the breaker is not
        open or a trial is already under way."""
        return self._state is BreakerState.OPEN and self._take_trial()

    def _take_trial(self) -> bool:
        """The one trial call, unless one is under way. A trial whose outcome
        never came back (cancelled) must not keep the peer marked down for
        ever: another may go after reset_after."""
        if self._trial_in_flight and time.monotonic() - self._trial_started < self.reset_after:
            return False
        self._trial_in_flight = True
        self._trial_started = time.monotonic()
        return True

    def retry_in(self) -> float:
        """Seconds until the next trial call is allowed (0 if allowed now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.reset_after - (time.monotonic() - self._opened_at))

    def record_success(self) -> None:
        self._failures = 0
        self._state = BreakerState.CLOSED
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        self._trial_in_flight = False
        if self._failures >= self.threshold or self.state is BreakerState.HALF_OPEN:
            self._state = BreakerState.OPEN
            self._opened_at = time.monotonic()
