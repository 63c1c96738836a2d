"""The circuit breaker per peer: fail fast while a province is down."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.federation.breaker import BreakerState, CircuitBreaker
from gateway.federation.client import _Peer, retry_budget

READY = grpc.ChannelConnectivity.READY
CONNECTING = grpc.ChannelConnectivity.CONNECTING
TRANSIENT_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE

RESET = 0.05  # seconds; small so the tests stay fast
PAST_RESET = RESET * 1.6


def state(breaker: CircuitBreaker) -> BreakerState:
    """The state now (a call, so that each read is a fresh look at the clock)."""
    return breaker.state


def opened(threshold: int = 3, reset_after: float = RESET) -> CircuitBreaker:
    breaker = CircuitBreaker(threshold=threshold, reset_after=reset_after)
    for _ in range(threshold):
        assert breaker.allow()
        breaker.record_failure()
    return breaker


class TestClosed:
    """A new breaker is closed and lets every call through until ``threshold``
    consecutive failures; a success in between starts the count again."""

    def test_starts_closed(self) -> None:
        breaker = CircuitBreaker()
        assert state(breaker) is BreakerState.CLOSED
        assert all(breaker.allow() for _ in range(100))
        assert breaker.retry_in() == 0.0

    def test_stays_closed_below_the_threshold(self) -> None:
        breaker = CircuitBreaker(threshold=3, reset_after=RESET)
        breaker.record_failure()
        breaker.record_failure()
        assert state(breaker) is BreakerState.CLOSED
        assert breaker.allow()

    def test_opens_at_the_threshold(self) -> None:
        breaker = CircuitBreaker(threshold=3, reset_after=60)
        for _ in range(3):
            breaker.record_failure()
        assert state(breaker) is BreakerState.OPEN
        assert not breaker.allow()

    def test_a_success_resets_the_count(self) -> None:
        breaker = CircuitBreaker(threshold=3, reset_after=60)
        for _ in range(10):
            breaker.record_failure()
            breaker.record_failure()
            breaker.record_success()
        assert state(breaker) is BreakerState.CLOSED

    def test_threshold_of_one(self) -> None:
        breaker = CircuitBreaker(threshold=1, reset_after=60)
        breaker.record_failure()
        assert state(breaker) is BreakerState.OPEN


class TestOpen:
    """An open breaker refuses every call and says how long until the next trial."""

    def test_refuses_calls(self) -> None:
        breaker = opened(reset_after=60)
        assert not any(breaker.allow() for _ in range(10))
        assert state(breaker) is BreakerState.OPEN

    def test_retry_in_counts_down(self) -> None:
        breaker = opened(reset_after=0.5)
        first = breaker.retry_in()
        assert 0.0 < first <= 0.5
        time.sleep(0.02)
        assert breaker.retry_in() < first

    def test_failures_while_open_keep_it_open(self) -> None:
        breaker = opened(reset_after=60)
        breaker.record_failure()
        assert state(breaker) is BreakerState.OPEN


class TestHalfOpen:
    """After ``reset_after`` one trial call goes through; its success closes the
    breaker, its failure opens it again for another ``reset_after``."""

    def test_half_open_after_reset_after(self) -> None:
        breaker = opened()
        time.sleep(PAST_RESET)
        assert state(breaker) is BreakerState.HALF_OPEN
        assert breaker.retry_in() == 0.0

    async def test_half_open_after_reset_after_on_the_event_loop(self) -> None:
        breaker = opened()
        await asyncio.sleep(PAST_RESET)
        assert breaker.allow()

    def test_exactly_one_trial_goes_through(self) -> None:
        breaker = opened()
        time.sleep(PAST_RESET)
        assert breaker.allow()
        assert not breaker.allow()
        assert not breaker.allow()

    def test_trial_success_closes(self) -> None:
        breaker = opened()
        time.sleep(PAST_RESET)
        assert breaker.allow()
        breaker.record_success()
        assert state(breaker) is BreakerState.CLOSED
        assert all(breaker.allow() for _ in range(5))

    def test_after_closing_it_takes_a_full_threshold_to_open_again(self) -> None:
        breaker = opened(threshold=3)
        time.sleep(PAST_RESET)
        assert breaker.allow()
        breaker.record_success()
        breaker.record_failure()
        breaker.record_failure()
        assert state(breaker) is BreakerState.CLOSED
        breaker.record_failure()
        assert state(breaker) is BreakerState.OPEN

    def test_trial_failure_reopens_for_another_reset_after(self) -> None:
        breaker = opened()
        time.sleep(PAST_RESET)
        assert breaker.allow()
        breaker.record_failure()
        assert state(breaker) is BreakerState.OPEN
        assert not breaker.allow()
        assert breaker.retry_in() == pytest.approx(RESET, abs=0.02)
        time.sleep(PAST_RESET)
        assert state(breaker) is BreakerState.HALF_OPEN
        assert breaker.allow()

    def test_a_trial_that_never_reports_does_not_keep_the_breaker_shut(self) -> None:
        # The caller of the trial was cancelled (or failed before the call) and
        # never recorded an outcome. The peer must not stay marked down forever:
        # after another reset_after, another trial is let through.
        breaker = opened()
        time.sleep(PAST_RESET)
        assert breaker.allow()
        time.sleep(PAST_RESET * 2)
        assert breaker.allow()


class TestModel:
    """With no time passing, the breaker is open exactly when the last ``threshold``
    outcomes since the last success were all failures."""

    @given(
        threshold=st.integers(1, 5),
        outcomes=st.lists(st.booleans(), max_size=30),
    )
    def test_opens_on_consecutive_failures_only(self, threshold: int, outcomes: list[bool]) -> None:
        breaker = CircuitBreaker(threshold=threshold, reset_after=3600)
        streak = 0
        for success in outcomes:
            if success:
                breaker.record_success()
                streak = 0
            else:
                breaker.record_failure()
                streak += 1
            expected = BreakerState.OPEN if streak >= threshold else BreakerState.CLOSED
            assert breaker.state is expected
            assert breaker.allow() is (expected is BreakerState.CLOSED)


class TestTrialNow:
    """A caller that knows the peer is reachable again (a replica connected) may
    let one trial go before ``reset_after`` has passed."""

    def test_not_while_closed(self) -> None:
        assert not CircuitBreaker().trial_now()

    def test_one_trial_while_open(self) -> None:
        breaker = opened(reset_after=60)
        assert breaker.trial_now()
        assert not breaker.trial_now()  # one under way
        assert not breaker.allow()

    def test_its_success_closes(self) -> None:
        breaker = opened(reset_after=60)
        assert breaker.trial_now()
        breaker.record_success()
        assert state(breaker) is BreakerState.CLOSED

    def test_its_failure_opens_for_a_whole_wait_again(self) -> None:
        breaker = opened(reset_after=60)
        assert breaker.trial_now()
        breaker.record_failure()
        assert state(breaker) is BreakerState.OPEN
        assert breaker.retry_in() > 59


class _Channel:
    def __init__(self, state: grpc.ChannelConnectivity) -> None:
        self.state = state

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.state


def _peer(*channels: _Channel) -> _Peer:
    return _Peer(
        "320000",
        tuple(f"127.0.0.1:{n}" for n in range(len(channels))),
        channels[0],  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        opened(reset_after=60),
        retry_budget(),
        stream_channels=list(channels),  # type: ignore[arg-type]
    )


class TestReconnected:
    """While a peer's breaker is open, a replica that connects again (its channel
    READY) after a call found none connected lets one trial go at once."""

    def test_a_replica_connected_again_lets_one_trial_go(self) -> None:
        first, second = _Channel(TRANSIENT_FAILURE), _Channel(TRANSIENT_FAILURE)
        peer = _peer(first, second)
        assert not peer.reconnected()  # none connected: the breaker's wait holds
        second.state = READY
        assert peer.reconnected()
        assert not peer.reconnected()  # one trial; the others wait for its outcome
        peer.breaker.record_success()
        assert peer.breaker.allow()

    def test_a_peer_connected_all_along_gets_no_early_trial(self) -> None:
        # Its calls failed while it was connected: reachable, not well.
        peer = _peer(_Channel(READY), _Channel(TRANSIENT_FAILURE))
        assert not peer.reconnected()
        assert not peer.reconnected()

    def test_a_failed_trial_needs_another_reconnection(self) -> None:
        channel = _Channel(CONNECTING)
        peer = _peer(channel)
        assert not peer.reconnected()
        channel.state = READY
        assert peer.reconnected()
        peer.breaker.record_failure()
        assert not peer.reconnected()  # still READY, not connected again
        channel.state = TRANSIENT_FAILURE
        assert not peer.reconnected()
        channel.state = READY
        assert peer.reconnected()
