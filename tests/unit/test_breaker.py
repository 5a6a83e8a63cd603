"""The circuit breaker's states, on a clock the test controls."""

from __future__ import annotations

import pytest

from openhqm.errors import CircuitOpen
from openhqm.forward.breaker import CircuitBreaker, State
from openhqm.forward.settings import CircuitSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(**settings: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    defaults = {"failure_threshold": 3, "reset_timeout_s": 10.0, "half_open_max_calls": 1}
    return CircuitBreaker("api", CircuitSettings(**{**defaults, **settings}), clock=clock), clock  # type: ignore[arg-type]


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.release(breaker.acquire(), "failure")


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    breaker, _ = make()
    fail(breaker, 2)
    breaker.release(breaker.acquire(), "success")
    fail(breaker, 2)
    assert breaker.state is State.CLOSED
    fail(breaker)
    assert breaker.state is State.OPEN


def test_open_refuses_with_the_remaining_cool_down() -> None:
    breaker, clock = make()
    fail(breaker, 3)
    clock.now += 4
    with pytest.raises(CircuitOpen) as info:
        breaker.acquire()
    assert info.value.retry_after_s == pytest.approx(6.0)
    assert info.value.retryable and info.value.endpoint == "api"


def test_after_the_cool_down_trials_are_limited_and_a_success_closes() -> None:
    breaker, clock = make(half_open_max_calls=2)
    fail(breaker, 3)
    clock.now += 10
    assert breaker.state is State.HALF_OPEN
    first, second = breaker.acquire(), breaker.acquire()
    assert first and second
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    breaker.release(first, "success")
    assert breaker.state is State.CLOSED
    assert breaker.acquire() is False


def test_a_failed_trial_opens_it_for_a_new_cool_down() -> None:
    breaker, clock = make()
    fail(breaker, 3)
    clock.now += 10
    breaker.release(breaker.acquire(), "failure")
    assert breaker.state is State.OPEN
    clock.now += 9
    with pytest.raises(CircuitOpen):
        breaker.acquire()


def test_a_neutral_trial_frees_its_slot_without_deciding() -> None:
    breaker, clock = make()
    fail(breaker, 3)
    clock.now += 10
    breaker.release(breaker.acquire(), "neutral")
    assert breaker.state is State.HALF_OPEN
    assert breaker.acquire() is True


def test_late_results_of_calls_started_before_opening_are_ignored() -> None:
    breaker, _ = make()
    early = breaker.acquire()
    fail(breaker, 3)
    breaker.release(early, "success")
    assert breaker.state is State.OPEN


def test_disabled_breaker_never_refuses() -> None:
    breaker = CircuitBreaker("api", CircuitSettings(enabled=False, failure_threshold=1))
    fail(breaker, 5)
    assert breaker.acquire() is False
