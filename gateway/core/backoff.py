"""The one backoff formula of the gateway: the outbox, the back-end processor and
the federation client's retries all wait by it (exponential, capped, jittered)."""

from __future__ import annotations

import random


def backoff_delay(failures: int, *, base: float, cap: float) -> float:
    """Seconds to wait after ``failures`` failed attempts (0 = after the first one):
    ``base * 2**failures`` capped at ``cap``, drawn from its upper half so that
    retries of many items spread out yet none comes back much sooner than planned."""
    delay = min(cap, base * 2 ** min(max(failures, 0), 30))
    return random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not crypto
