"""LocalCounters: the same answers as `limits`' memory storage, at a cost that does not
grow with the number of callers."""

from __future__ import annotations

import asyncio
import random
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest
from limits import parse
from limits.aio import strategies
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from gateway.errors import RateLimited
from gateway.identity.principal import Principal
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.memory import LocalCounters
from gateway.ratelimit.policy import RateLimitPolicy

STRATEGIES = [FixedWindowRateLimiter, MovingWindowRateLimiter, SlidingWindowCounterRateLimiter]


class Clock:
    def __init__(self, start: float = 1_800_000_000.25) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """One clock for both storages and the strategies (limits reads `time.time()`)."""
    import limits.aio.storage.memory as memory

    clock = Clock()
    fake_time = types.SimpleNamespace(time=clock)
    monkeypatch.setattr(memory, "time", fake_time)
    monkeypatch.setattr(strategies, "time", fake_time)
    return clock


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.__name__)
async def test_every_answer_matches_limits_memory_storage(
    clock: Clock, strategy: Callable[[Any], RateLimiter]
) -> None:
    ours, theirs = strategy(LocalCounters(clock=clock)), strategy(MemoryStorage())
    items = [parse("5/second"), parse("20/minute"), parse("3/10 seconds")]
    rng = random.Random(7)
    for step in range(3000):
        item = rng.choice(items)
        who = rng.choice(["a", "b", "c"])
        cost = rng.choice([1, 1, 1, 2, 4])
        op = rng.random()
        got: object
        want: object
        if op < 0.7:
            got, want = await ours.hit(item, who, cost=cost), await theirs.hit(item, who, cost=cost)
        elif op < 0.9:
            got = await ours.test(item, who, cost=cost)
            want = await theirs.test(item, who, cost=cost)
        elif op < 0.97:
            our_stats = await ours.get_window_stats(item, who)
            their_stats = await theirs.get_window_stats(item, who)
            got, want = our_stats, their_stats
            if their_stats.remaining == item.amount:
                # An empty moving window: limits answers with the start of an expired entry
                # (a reset time in the past); ours says "now". Nothing is refused either way.
                got, want = our_stats.remaining, their_stats.remaining
        else:
            await ours.clear(item, who)
            await theirs.clear(item, who)
            got, want = await ours.test(item, who), await theirs.test(item, who)
        assert got == want, f"step {step}: {op=:.2f} {item} {who} cost {cost}"
        clock.advance(rng.uniform(0.0, 0.4))


async def test_expired_counters_are_dropped_without_walking_the_live_ones(clock: Clock) -> None:
    counters = LocalCounters(clock=clock)
    limiter = SlidingWindowCounterRateLimiter(counters)
    item = parse("10/minute")
    for n in range(500):
        assert await limiter.hit(item, "address", f"10.0.{n}")
    assert counters.keys_held() == 500
    clock.advance(60)  # the current window's counters live two windows
    assert await limiter.hit(item, "address", "late")
    assert counters.keys_held() == 501
    clock.advance(60.5)
    assert await limiter.hit(item, "address", "later")
    # One operation pops a bounded number of what expired: a mass expiry is spread out.
    assert 502 - 32 <= counters.keys_held() < 502
    assert await limiter.hit(item, "address", "10.0.499")  # expired on sight, counted anew
    assert (await limiter.get_window_stats(item, "address", "10.0.499")).remaining == 9
    for _ in range(20):
        await limiter.test(item, "address", "later")
        await counters.incr("other", 1)
    assert counters.keys_held() == 4  # "late", "later", "10.0.499", "other": the rest are gone
    moving = MovingWindowRateLimiter(counters)
    assert await moving.hit(item, "principal", "p", cost=10)
    assert not await moving.hit(item, "principal", "p")
    clock.advance(61)
    assert await moving.hit(item, "principal", "p")  # the window moved on
    clock.advance(121)
    assert await limiter.hit(item, "address", "x")
    assert counters.keys_held() == 1  # idle moving windows go too


async def test_a_clock_that_steps_back_neither_hangs_nor_revives_counts(clock: Clock) -> None:
    counters = LocalCounters(clock=clock)
    moving, fixed = MovingWindowRateLimiter(counters), FixedWindowRateLimiter(counters)
    item = parse("5/minute")
    for step in (0.0, 55.0, 4.9):
        clock.advance(step)
        assert await moving.hit(item, "p")
    clock.advance(-29.9)  # an NTP step back, or a resumed VM
    assert await moving.hit(item, "p")  # counted at the storage's latest time, not earlier
    for _ in range(2):  # each pops p's deadline, which p's window pushes back (this hung)
        clock.advance(30)
        assert await fixed.hit(item, "q")
    # 90 s after the first hit by the stepped clock: only it has left the window.
    stats = await moving.get_window_stats(item, "p")
    assert stats.remaining == 2


async def test_a_wall_clock_stepped_forward_and_back_does_not_freeze_the_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gateway.ratelimit.memory as counters_module

    wall, steady = Clock(1_800_000_000.0), Clock(5_000.0)
    monkeypatch.setattr(counters_module, "time", types.SimpleNamespace(time=wall, monotonic=steady))
    counters = LocalCounters()  # the default clock
    limiter = SlidingWindowCounterRateLimiter(counters)
    item = parse("3/minute")
    admitted = []
    for minute in range(6):
        if minute == 1:
            wall.advance(3600)  # a wrong time, corrected a minute later
        if minute == 2:
            wall.advance(-3600)
        admitted.append(await limiter.hit(item, "p"))
        wall.advance(60)
        steady.advance(60)
    assert admitted == [True] * 6  # one a minute under three a minute: never refused


async def test_keys_cleared_and_made_again_leave_no_live_heap_entries(clock: Clock) -> None:
    counters = LocalCounters(clock=clock)
    moving = MovingWindowRateLimiter(counters)
    item = parse("1000/minute")
    for _ in range(100):
        assert await moving.hit(item, "p")
        await moving.clear(item, "p")
    for _ in range(40):  # the window stays in use for ten minutes
        assert await moving.hit(item, "p")
        clock.advance(15)
    assert len(counters._deadlines) <= 2  # the stale entries died; one live entry is left


def counters_held(limiter: Limiter) -> int:
    storage = limiter._shared
    assert isinstance(storage, LocalCounters)
    return storage.keys_held()


async def profiled(action: Callable[[], Any]) -> int:
    """Calls made while `action` runs and the loop runs whatever it scheduled."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        await action()
        for _ in range(5):  # let any task the hit started run to completion
            await asyncio.sleep(0)
    finally:
        sys.setprofile(None)
    return count


async def test_many_distinct_addresses_cannot_make_every_request_walk_every_counter() -> None:
    """CPU amplification through the limiter (OWASP API4): callers from many addresses
    (an IPv6 prefix holds billions) leave a counter each; the work behind one more request
    must not grow with them. `limits`' own memory storage walks every key after each hit."""
    policy = RateLimitPolicy.model_validate(
        {
            "defaults": {
                "per_principal": "100000/minute",
                "per_address": "1000/minute",
                "failed_auth_per_address": "",
                "per_principal_model": "",
            }
        }
    )
    limiter = Limiter(policy, "memory://", "closed")
    who = Principal(subject="caller", credential="api_key", scopes=frozenset())

    async def request(address: str) -> None:
        await limiter.check_address(address)
        await limiter.check_principal(who, "iris", 1)

    # One address per /64: an IPv6 caller is counted by its /64 (gateway/ratelimit/addresses.py).
    for n in range(20):
        await request(f"2001:db8:0:{n:x}::1")
    few = await profiled(lambda: request("2001:db8:ffff:1::1"))
    for n in range(20_000):
        await request(f"2001:db8:1:{n:x}::1")
    many = await profiled(lambda: request("2001:db8:ffff:2::1"))
    assert counters_held(limiter) >= 20_000
    # The same work, give or take a heap level; walking 20,000 counters would be 20,000+ calls.
    assert many <= few + 50, (few, many)
    with pytest.raises(RateLimited):  # and the counts still hold
        for _ in range(1001):
            await limiter.check_address("2001:db8:ffff:3::1")
    await limiter.close()


async def test_a_flood_of_distinct_callers_holds_the_counters_at_their_cap(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Memory exhaustion through the limiter (OWASP API4): every distinct caller leaves a
    counter; past the cap, the counts closest to expiry are forgotten first."""
    counters = LocalCounters(clock=clock, max_keys=1_000)
    limiter = SlidingWindowCounterRateLimiter(counters)
    hour, second = parse("2/hour"), parse("5/second")
    assert await limiter.hit(hour, "failed", "guesser")
    assert await limiter.hit(hour, "failed", "guesser")
    for n in range(5_000):  # a flood of fresh callers on a short window
        await limiter.hit(second, "address", f"2001:db8:{n:x}::1")
        assert counters.keys_held() <= 1_000
    assert counters.evicted >= 4_000
    assert "at their cap" in caplog.text
    # The long window was kept: the guesser is still refused.
    assert not await limiter.hit(hour, "failed", "guesser")
    moving = MovingWindowRateLimiter(counters)
    for n in range(2_000):
        await moving.hit(second, "moving", str(n))
    assert counters.keys_held() <= 1_000
    assert not await limiter.hit(hour, "failed", "guesser")


async def test_the_gateway_limiter_caps_its_counters() -> None:
    policy = RateLimitPolicy.model_validate(
        {
            "defaults": {
                "per_principal": "",
                "per_address": "100/second",
                "failed_auth_per_address": "",
                "per_principal_model": "",
            }
        }
    )
    limiter = Limiter(policy, "memory://", "closed", memory_max_keys=1_000)
    for n in range(3_000):
        await limiter.check_address(f"198.18.{n >> 8}.{n & 255}")
    assert counters_held(limiter) <= 1_000
    assert limiter.evicted >= 2_000
    await limiter.close()
