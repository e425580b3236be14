"""Bounded summaries of a stream: how a report reads ten million records in a few MiB.

Three structures, each with a stated bound, none holding the records themselves:

- `TopN`: the most frequent values, with first and last seen (Space-Saving).
- `Histogram`: latency percentiles from logarithmic bins (relative error under 4 %).
- `bucket_width`: a time bucket width from a ladder, so a chart has at most
  `MAX_BUCKETS` points whatever the range; finer widths merge into coarser ones.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# Time bucket widths in seconds: each a multiple of the one before, so buckets of one
# width merge exactly into buckets of the next (all aligned on the Unix epoch, UTC).
LADDER_S = (
    10,
    30,
    60,
    300,
    900,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    7 * 86400,
    28 * 86400,
)
MAX_BUCKETS = 150


def bucket_width(span_s: float) -> int:
    """The finest width of the ladder that shows ``span_s`` in at most MAX_BUCKETS."""
    for width in LADDER_S:
        if span_s < width * MAX_BUCKETS:
            return width
    return LADDER_S[-1]


@dataclass(frozen=True)
class Ranked(Generic[K]):
    value: K
    count: int
    error: int  # the count may exceed the true one by up to this much (0: exact)
    first: int  # epoch seconds; when error > 0, the first time since it was last tracked
    last: int


class TopN(Generic[K]):
    """The most frequent values of a stream, with first and last seen, in bounded memory.

    Space-Saving (Metwally, Agrawal, El Abbadi, ICDT 2005) with evictions in batches: at
    most ``2 * capacity`` values are tracked. When that many are, the half with the lowest
    counts is dropped and ``floor`` rises to the highest count dropped; a value that comes
    (back) after that starts at ``floor + its count``. So a count is never below the true
    one and exceeds it by at most the ``error`` it carries, and a value seen more often than
    any dropped count is never lost. While nothing was dropped (fewer distinct values than
    the capacity: the usual case for reasons, principals and models) every count is exact.
    """

    __slots__ = ("_items", "capacity", "floor")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.floor = 0
        self._items: dict[K, list[int]] = {}  # value -> [count, error, first, last]

    def add(self, value: K, when: int, n: int = 1) -> None:
        item = self._items.get(value)
        if item is None:
            if len(self._items) >= 2 * self.capacity:
                self._prune()
            self._items[value] = [self.floor + n, self.floor, when, when]
            return
        item[0] += n
        if when < item[2]:
            item[2] = when
        elif when > item[3]:
            item[3] = when

    def _prune(self) -> None:
        ranked = sorted(self._items.items(), key=lambda kv: kv[1][0], reverse=True)
        self.floor = max(self.floor, ranked[self.capacity][1][0])
        self._items = dict(ranked[: self.capacity])

    @property
    def exact(self) -> bool:
        return self.floor == 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, value: K) -> int:
        item = self._items.get(value)
        return 0 if item is None else item[0]

    def top(self, n: int | None = None) -> list[Ranked[K]]:
        """The ``n`` most frequent (all when None), most frequent first, ties by value."""
        ranked = sorted(self._items.items(), key=lambda kv: (-kv[1][0], str(kv[0])))
        return [Ranked(value, *item) for value, item in ranked[:n]]


GAMMA = 1.04  # each bin's upper bound is 4 % above its lower bound
_LOG_GAMMA = math.log(GAMMA)
_ZERO_BIN = -(10**6)  # latencies of 0 (or below: a clock step) have a bin of their own


class Histogram:
    """Latencies in logarithmic bins, for percentiles in bounded memory.

    A value ``v`` goes to bin ``floor(log(v) / log(1.04))``: from 1 µs to 10 minutes that
    is at most 518 bins, however many values. Each bin keeps its count and its sum, and a
    percentile is the mean of the bin the nearest rank falls in: within 4 % of the exact
    nearest-rank value, and exact when the bin holds one distinct value.
    """

    __slots__ = ("bins", "count")

    def __init__(self) -> None:
        self.bins: dict[int, list[float]] = {}  # bin -> [count, sum]
        self.count = 0

    def add(self, value: float) -> None:
        index = math.floor(math.log(value) / _LOG_GAMMA) if value > 0 else _ZERO_BIN
        bin_ = self.bins.get(index)
        if bin_ is None:
            self.bins[index] = [1, value]
        else:
            bin_[0] += 1
            bin_[1] += value
        self.count += 1

    def merge(self, other: Histogram) -> None:
        for index, (n, total) in other.bins.items():
            bin_ = self.bins.get(index)
            if bin_ is None:
                self.bins[index] = [n, total]
            else:
                bin_[0] += n
                bin_[1] += total
        self.count += other.count

    def percentiles(self, qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float | None]:
        """Nearest-rank percentiles (q in 0..100), each rounded to 3 decimals (µs)."""
        out: dict[str, float | None] = {f"p{q:g}": None for q in qs}
        if not self.count:
            return out
        ranks = sorted((max(1, math.ceil(q / 100 * self.count)), q) for q in qs)
        seen, i = 0, 0
        for index in sorted(self.bins):
            n, total = self.bins[index]
            seen += int(n)
            while i < len(ranks) and ranks[i][0] <= seen:
                out[f"p{ranks[i][1]:g}"] = round(total / n, 3)
                i += 1
            if i == len(ranks):
                break
        return out
