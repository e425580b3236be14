"""The circuit breaker's state machine, on a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.errors import CircuitOpen
from gateway.upstream.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[str] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=3,
        reset_s=10.0,
        clock=clock,
        on_change=changes.append if changes is not None else None,
    )


def test_opens_after_consecutive_failures_only() -> None:
    b = breaker(Clock())
    for _ in range(2):
        b.before()
        b.failure()
    b.before()
    b.success()  # a success in between resets the count
    for _ in range(2):
        b.before()
        b.failure()
    assert b.state == "closed"
    b.before()
    b.failure()
    assert b.state == "open"


def test_open_refuses_with_the_time_left_then_lets_one_trial_through() -> None:
    clock, changes = Clock(), []
    b = breaker(clock, changes)
    for _ in range(3):
        b.before()
        b.failure()
    clock.now += 2.5
    with pytest.raises(CircuitOpen) as refused:
        b.before()
    assert refused.value.headers == {"Retry-After": "8"}
    assert refused.value.reason == "circuit_open" and refused.value.status == 503
    clock.now += 7.5
    b.before()  # the trial
    assert b.state == "half_open"
    with pytest.raises(CircuitOpen):
        b.before()  # one trial at a time
    b.success()
    assert b.state == "closed"
    b.before()
    assert changes == ["open", "half_open", "closed"]


def test_a_failed_trial_reopens_for_a_full_reset_period() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.before()
        b.failure()
    clock.now += 10
    b.before()
    b.failure()
    assert b.state == "open"
    clock.now += 9
    with pytest.raises(CircuitOpen):
        b.before()


def test_a_cancelled_trial_frees_its_slot() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.before()
        b.failure()
    clock.now += 10
    b.before()
    b.release()
    b.before()  # another trial may go
    assert b.state == "half_open"
