"""The report's bounded structures and its one-pass summary, against exact answers."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.report.figures import duration, readable_range
from gateway.audit.report.sketch import LADDER_S, MAX_BUCKETS, Histogram, TopN, bucket_width
from gateway.audit.report.summary import BURST_MIN_FAILURES, Limits, Summary


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.001, max_value=600_000), min_size=1, max_size=400))
def test_histogram_percentiles_are_within_four_percent(values: list[float]) -> None:
    hist = Histogram()
    for v in values:
        hist.add(v)
    for q, got in zip((50, 90, 99), hist.percentiles().values(), strict=True):
        exact = nearest_rank(values, q)
        assert got is not None
        assert abs(got - exact) <= 0.04 * exact + 0.001


def test_histogram_is_exact_for_distinct_bins_and_bounded() -> None:
    hist = Histogram()
    for v in (1.0, 2.0, 3.0):
        hist.add(v)
    assert hist.percentiles() == {"p50": 2.0, "p90": 3.0, "p99": 3.0}
    wide = Histogram()
    for i in range(100_000):  # 1 µs .. 10 min, spread over the whole range
        wide.add(0.001 * (6e8 ** (i / 99_999)))
    assert wide.count == 100_000
    assert len(wide.bins) <= 520
    assert Histogram().percentiles() == {"p50": None, "p90": None, "p99": None}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=600))
def test_topn_never_undercounts_and_keeps_the_heavy_hitters(stream: list[int]) -> None:
    top: TopN[str] = TopN(capacity=4)
    for when, value in enumerate(stream):
        top.add(str(value), when)
    assert len(top) <= 8  # 2 * capacity, whatever the stream
    true = Counter(str(v) for v in stream)
    for r in top.top():
        assert true[r.value] <= r.count <= true[r.value] + r.error
    # Space-Saving: a value seen more often than any count that was dropped is kept.
    for value, n in true.items():
        if n > top.floor:
            assert top.get(value) >= n


def test_topn_is_exact_with_first_and_last_seen_under_its_capacity() -> None:
    top: TopN[str] = TopN(capacity=10)
    for when, value in enumerate("abacabad"):
        top.add(value, when)
    assert top.exact
    assert [(r.value, r.count, r.error, r.first, r.last) for r in top.top()] == [
        ("a", 4, 0, 0, 6),
        ("b", 2, 0, 1, 5),
        ("c", 1, 0, 3, 3),
        ("d", 1, 0, 7, 7),
    ]


def test_bucket_width_keeps_charts_under_max_buckets() -> None:
    assert bucket_width(0) == 10
    assert bucket_width(3600) == 30
    assert bucket_width(30 * 86400) == 6 * 3600
    for width, finer in zip(LADDER_S[1:], LADDER_S, strict=False):
        assert width % finer == 0  # buckets merge exactly into the next width
    for span in (59, 3599, 86399, 7 * 86400, 365 * 86400):
        assert span / bucket_width(span) < MAX_BUCKETS


def request(second: float, **fields: Any) -> dict[str, Any]:
    moment = dt.datetime(2026, 12, 2, 3, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=second)
    return {
        "type": "request",
        "time": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "subject": "alice",
        "model": "iris",
        "decision": "allow",
        "reason": "ok",
        "status": 200,
        "latency_ms": 2.0,
        "client": "10.0.0.1",
        "route": "predict",
        **fields,
    }


def test_buckets_widen_as_the_span_grows_and_keep_every_count() -> None:
    summary = Summary()
    for second in range(0, 30 * 86400, 1800):  # a month, a request every 30 min
        summary.add(request(second))
    assert summary.width == 6 * 3600  # 30 days in at most MAX_BUCKETS buckets
    buckets = {key[0] for key in summary.cube}
    assert max(buckets) - min(buckets) < MAX_BUCKETS
    assert sum(summary.cube.values()) == summary.total == 30 * 48
    assert sum(h.count for h in summary.latency_buckets.values()) == 30 * 48


def test_failed_authentication_bursts() -> None:
    summary = Summary()
    failure = {"subject": None, "model": None, "decision": "deny", "status": 401}
    for i in range(BURST_MIN_FAILURES + 2):  # a burst: 7 failures 10 s apart
        summary.add(request(10 * i, client="203.0.113.9", reason="api_key_unknown", **failure))
    for i in range(BURST_MIN_FAILURES - 1):  # too few to be a burst
        summary.add(request(10 * i, client="203.0.113.10", reason="api_key_unknown", **failure))
    for i in range(BURST_MIN_FAILURES):  # spread out: each failure a minute and more apart
        summary.add(request(200 + 90 * i, client="203.0.113.11", reason="jwt_expired", **failure))
    bursts = summary.bursts.finish()
    assert summary.bursts.total == 1
    assert bursts == [
        {
            "address": "203.0.113.9",
            "start": "2026-12-02T03:00:00Z",
            "end": "2026-12-02T03:01:00Z",
            "failures": 7,
            "reasons": {"api_key_unknown": 7},
        }
    ]


def test_cube_and_first_calls_stay_within_their_limits() -> None:
    limits = Limits(principals=3, cells=10, first_calls=2, baseline_pairs=1)
    since = dt.datetime(2026, 12, 2, 3, 0, 10, tzinfo=dt.UTC)
    summary = Summary(since=since, limits=limits)
    summary.add(request(0, subject="old-1"))  # before the range: the baseline
    summary.add(request(1, subject="old-2"))  # over the baseline's limit
    for i in range(20):
        summary.add(request(10 + i * 30, subject=f"p{i}"))
    assert len(summary.principals) <= 4  # three and "(other)"
    assert len(summary.cube) <= 10 + 20  # the cap, then only "(other)" cells per bucket
    assert sum(summary.cube.values()) == 20
    assert summary.cells_folded > 0
    assert len(summary.first_calls) == 2 and summary.first_calls_dropped == 18
    assert summary.baseline_full


def test_probes_are_counted_apart_from_traffic() -> None:
    summary = Summary()
    summary.add({"type": "probes", "time": "2026-12-02T03:00:00.000Z", "counts": {"live 200": 5}})
    summary.add(request(1, route="ready", status=200, subject=None, model=None))
    summary.add(request(2))
    assert summary.total == 1
    assert dict(summary.probes) == {"live 200": 5, "ready 200": 1}


def test_readable_times() -> None:
    start = dt.datetime(2026, 12, 2, 3, 0, tzinfo=dt.UTC)
    assert (
        readable_range(start, start + dt.timedelta(hours=1, minutes=12))
        == "2 Dec 2026 03:00\N{EN DASH}04:12 UTC (1 h 12 min)"
    )
    assert (
        readable_range(start, start + dt.timedelta(days=2, hours=5))
        == "2 Dec 2026 03:00 \N{EN DASH} 4 Dec 2026 08:00 UTC (2 d 5 h)"
    )
    assert readable_range(start, start + dt.timedelta(seconds=45)).endswith("03:00:45 UTC (45 s)")
    assert duration(3600) == "1 h" and duration(90) == "1 min 30 s"
