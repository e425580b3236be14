"""In-process rate-limit counters for `limits`' strategies, with bounded cost per request.

    RateLimits ─▶ limits strategy (fixed / moving / sliding-window-counter) ─▶ LocalCounters

`limits`' own async ``MemoryStorage`` (5.8) starts a task after each hit that walks every
key it holds (and, for moving windows, hops to a thread per key). The work behind each
request so grows with the number of distinct callers in the window: measured here, 18 µs
of CPU per hit with one key, 0.9 ms with 10,000 and 12.8 ms with 100,000. Callers with
fresh addresses could make every request scan every counter, a CPU amplification (OWASP
API4, unrestricted resource consumption).

This storage keeps the same counts, in the same keys, with expiry on a heap: a key is
pushed once when it is created (and a moving window once per expiry while it is used),
and each operation pops at most `_POPS_PER_OPERATION` expired entries, so a mass expiry
is spread over the requests that follow it (a key read before its entry is popped is
treated as expired on the spot). Every operation is synchronous on the event loop, so
none needs a lock. Its time follows the monotonic clock, so a stepped wall clock neither
freezes nor revives a count. It is per process, as the memory storage is.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from math import floor

from limits.aio.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage
from limits.storage.base import TimestampedSlidingWindow

log = logging.getLogger("gateway.ratelimit")
# The `limits` release series whose storage internals this module subclasses and was
# checked against; pyproject.toml admits that series alone (tests/test_dependencies.py).
CHECKED_LIMITS_SERIES = "5.8"
_COUNTER, _EVENTS = 0, 1
# Each operation pushes at most one entry, so popping up to this many keeps the heap
# draining while bounding what one request pays when many keys expire together.
_POPS_PER_OPERATION = 32


class LocalCounters(Storage, MovingWindowSupport, SlidingWindowCounterSupport):
    """`limits` async storage held in this process; cost per operation O(log keys)."""

    STORAGE_SCHEME = None  # built by the gateway, never from a URI

    def __init__(
        self, clock: Callable[[], float] | None = None, max_keys: int | None = None
    ) -> None:
        super().__init__()
        self._clock = clock or _steady_wall_clock()
        self._max_keys = max_keys
        self.evicted = 0  # keys forgotten early to stay under max_keys
        self._warned = -math.inf
        self._counts: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._now = 0.0
        self._events: dict[str, deque[float]] = {}  # acquisition times, oldest first
        self._event_expiry: dict[str, int] = {}
        self._event_due: dict[str, float] = {}  # a moving window's one live heap entry
        self._deadlines: list[tuple[float, str, int]] = []  # (when, key, kind), a min-heap

    @property
    def base_exceptions(self) -> type[Exception]:
        return ValueError

    def keys_held(self) -> int:
        """Counters and moving windows held now, expired ones not yet popped included."""
        return len(self._counts) + len(self._events)

    # -- expiry ----------------------------------------------------------------------
    def _time(self) -> float:
        """The clock, never going backwards: a stepped-back clock must not unsort the
        moving windows or make an expired counter live again."""
        now = self._clock()
        if now > self._now:
            self._now = now
        return self._now

    def _pop(self) -> tuple[str, int] | None:
        """Pop the earliest deadline: its key and kind, or None when the entry is stale
        (its key was cleared, expired on sight, or made again since it was pushed)."""
        when, key, kind = heapq.heappop(self._deadlines)
        due = self._expires.get(key) if kind == _COUNTER else self._event_due.get(key)
        return (key, kind) if due == when else None

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        again: list[tuple[float, str, int]] = []
        for _ in range(_POPS_PER_OPERATION):
            if not deadlines or deadlines[0][0] > now:
                break
            popped = self._pop()
            if popped is None:
                continue
            key, kind = popped
            if kind == _COUNTER:
                self._drop_counter(key)
                continue
            events, expiry = self._events[key], self._event_expiry[key]
            _prune(events, now - expiry)
            if events:  # still in use: look again when its newest entry expires
                due = max(events[-1] + expiry, now + 1.0)
                self._event_due[key] = due
                again.append((due, key, _EVENTS))
            else:
                self._drop_events(key)
        for entry in again:  # after the loop: an entry pushed back is never popped twice
            heapq.heappush(deadlines, entry)

    def _made(self, now: float) -> None:
        """A key was made: over the cap, forget the counts closest to expiring.

        Each caller and limit holds a key, so callers from enough distinct addresses
        could fill the process's memory (OWASP API4). At the cap the keys that would
        expire soonest go first, the short windows' counts worth least; long windows
        (the failed-authentication hour) are kept longest.
        """
        if self._max_keys is None or self.keys_held() <= self._max_keys:
            return
        while self._deadlines and self.keys_held() > self._max_keys:
            popped = self._pop()
            if popped is not None:
                key, kind = popped
                if kind == _COUNTER:
                    self._drop_counter(key)
                else:
                    self._drop_events(key)
                self.evicted += 1
        if now - self._warned > 60:
            self._warned = now
            log.warning(
                "rate-limit counters at their cap (%d keys): forgetting the counts closest "
                "to expiry (%d so far)",
                self._max_keys,
                self.evicted,
            )

    def _drop_counter(self, key: str) -> None:
        self._counts.pop(key, None)
        self._expires.pop(key, None)

    def _drop_events(self, key: str) -> None:
        self._events.pop(key, None)
        self._event_expiry.pop(key, None)
        self._event_due.pop(key, None)

    def _count(self, key: str, now: float) -> int:
        expires = self._expires.get(key)
        if expires is None:
            return 0
        if expires <= now:  # expired but not yet popped: the heap entry will find it gone
            self._drop_counter(key)
            return 0
        return self._counts[key]

    def _add(self, key: str, expiry: float, amount: int, now: float) -> int:
        count = self._count(key, now) + amount
        self._counts[key] = count
        if count == amount:  # made now: it expires `expiry` from now, as limits' storages do
            when = now + expiry
            self._expires[key] = when
            heapq.heappush(self._deadlines, (when, key, _COUNTER))
            self._made(now)
        return count

    # -- Storage ---------------------------------------------------------------------
    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = self._time()
        self._expire(now)
        return self._add(key, expiry, amount, now)

    async def decr(self, key: str, amount: int = 1) -> int:
        now = self._time()
        count = self._count(key, now)
        if key in self._counts:
            count = self._counts[key] = max(count - amount, 0)
        return count

    async def get(self, key: str) -> int:
        return self._count(key, self._time())

    async def get_expiry(self, key: str) -> float:
        return self._expires.get(key, self._time())

    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        held = max(len(self._counts), len(self._events))
        for table in (self._counts, self._expires, self._events, self._event_expiry):
            table.clear()
        self._event_due.clear()
        self._deadlines.clear()
        return held

    async def clear(self, key: str) -> None:
        self._drop_counter(key)
        self._drop_events(key)

    # -- moving window ---------------------------------------------------------------
    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = self._time()
        self._expire(now)
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = deque()
            self._event_expiry[key] = expiry
            self._event_due[key] = now + expiry
            heapq.heappush(self._deadlines, (now + expiry, key, _EVENTS))
            self._made(now)
            if key not in self._events:  # forgotten at once: the cap holds
                return True
        _prune(events, now - expiry)
        if len(events) + amount > limit:
            return False
        events.extend([now] * amount)
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = self._time()
        events = self._events.get(key)
        if events:
            _prune(events, now - expiry)
        if not events:
            return now, 0
        return events[0], len(events)

    # -- sliding window counter ------------------------------------------------------
    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        if amount > limit:
            return False
        now = self._time()
        self._expire(now)
        previous_key, current_key = TimestampedSlidingWindow.sliding_window_keys(key, expiry, now)
        previous, previous_ttl, current, _ = self._window(previous_key, current_key, expiry, now)
        if floor(previous * previous_ttl / expiry + current) + amount > limit:
            return False
        # The current window's counter lives two windows, as in limits' storages.
        self._add(current_key, 2 * expiry, amount, now)
        return True

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = self._time()
        previous_key, current_key = TimestampedSlidingWindow.sliding_window_keys(key, expiry, now)
        return self._window(previous_key, current_key, expiry, now)

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous_key, current_key = TimestampedSlidingWindow.sliding_window_keys(
            key, expiry, self._time()
        )
        await self.clear(current_key)
        await self.clear(previous_key)

    def _window(
        self, previous_key: str, current_key: str, expiry: int, now: float
    ) -> tuple[int, float, int, float]:
        """(previous count, its remaining weight in seconds, current count, current ttl),
        computed as limits' memory storage computes them."""
        previous = self._count(previous_key, now)
        previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current = self._count(current_key, now)
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous, previous_ttl, current, current_ttl


def _steady_wall_clock() -> Callable[[], float]:
    """Wall-clock seconds that advance with the monotonic clock from now on.

    A wall clock stepped forward and back again (NTP, a resumed VM) would otherwise
    freeze every window until it caught up, or revive expired counts; the monotonic
    clock does neither. Windows are still numbered from the epoch, as `limits` numbers
    them.
    """
    offset = time.time() - time.monotonic()
    return lambda: offset + time.monotonic()


def _prune(events: deque[float], cutoff: float) -> None:
    """Drop acquisitions at or before ``cutoff`` (limits counts those after it)."""
    while events and events[0] <= cutoff:
        events.popleft()
