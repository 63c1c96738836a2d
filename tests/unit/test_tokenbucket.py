"""The one token bucket (local clients' rate limits, retries per peer)."""

from __future__ import annotations

from gateway.core.tokenbucket import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestTokenBucket:
    """Spends a token when there is one; otherwise says how long until there is."""

    def test_burst_then_wait(self) -> None:
        time = FakeTime()
        bucket = TokenBucket(rate=2.0, capacity=3, clock=time)
        assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
        assert bucket.take() == 0.5  # one token needs half a second at 2 per second
        time.now += 0.5
        assert bucket.try_take()
        assert not bucket.try_take()

    def test_refills_no_higher_than_capacity(self) -> None:
        time = FakeTime()
        bucket = TokenBucket(rate=10.0, capacity=2, clock=time)
        time.now += 3600
        assert [bucket.try_take() for _ in range(3)] == [True, True, False]

    def test_a_new_rate_applies_from_the_next_take(self) -> None:
        time = FakeTime()
        bucket = TokenBucket(rate=1.0, capacity=1, clock=time)
        assert bucket.try_take()
        bucket.rate = 4.0
        assert bucket.take() == 0.25
