"""The report's figures as one plain dictionary: the JSON output, and what the text and
HTML renderers draw from. Its first two keys are the integrity banner and its details."""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.audit.report.integrity import Integrity
from gateway.audit.report.sketch import Histogram, Ranked
from gateway.audit.report.summary import (
    BURST_GAP_S,
    BURST_MIN_FAILURES,
    DASH,
    Summary,
    iso,
)


def duration(seconds: float) -> str:
    """``1 h 12 min``: the two largest units, for a reader."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total} s"
    parts: list[tuple[int, str]] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if total >= size or parts:
            amount, total = divmod(total, size)
            parts.append((amount, unit))
    shown = parts[:2]
    if len(shown) == 2 and shown[1][0] == 0:
        shown = shown[:1]
    return " ".join(f"{n} {unit}" for n, unit in shown)


def readable_range(start: dt.datetime, end: dt.datetime) -> str:
    """``2 Dec 2026 03:00\N{EN DASH}04:12 UTC (1 h 12 min)``, in UTC, the way a reviewer says it."""
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    span = (end - start).total_seconds()
    clock = "%H:%M:%S" if span < 600 else "%H:%M"
    first = f"{start.day} {start:%b %Y} {start.strftime(clock)}"
    if start.date() == end.date():
        text = f"{first}{DASH}{end.strftime(clock)}"
    else:
        text = f"{first} {DASH} {end.day} {end:%b %Y} {end.strftime(clock)}"
    return f"{text} UTC ({duration(span)})"


def _epoch_dt(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def _ranked(rows: list[Ranked[str]], name: str) -> list[dict[str, Any]]:
    return [
        {
            name: r.value,
            "count": r.count,
            **({"error": r.error} if r.error else {}),
            "first_seen": iso(r.first),
            "last_seen": iso(r.last),
        }
        for r in rows
    ]


def _range(summary: Summary) -> dict[str, Any]:
    start = summary.since or (_epoch_dt(summary.first) if summary.first is not None else None)
    end = summary.until or (_epoch_dt(summary.last) if summary.last is not None else None)
    return {
        "since": summary.since.isoformat() if summary.since else None,
        "until": summary.until.isoformat() if summary.until else None,
        "first_record": iso(summary.first),
        "last_record": iso(summary.last),
        "text": readable_range(start, end) if start and end else "no records in the range",
    }


def figures(summary: Summary, integrity: Integrity, top: int = 20) -> dict[str, Any]:
    """Everything the report shows, top lists cut at ``top``."""
    width = summary.width
    over_time: dict[int, dict[str, int]] = {}
    for (bucket, _, _, decision, status, _), n in summary.cube.items():
        row = over_time.setdefault(
            bucket, {"requests": 0, "allowed": 0, "denied": 0, "rate_limited": 0}
        )
        row["requests"] += n
        row["allowed" if decision == "allow" else "denied"] += n
        if status == 429:
            row["rate_limited"] += n
    all_latency = Histogram()
    for hist in summary.latency.values():
        all_latency.merge(hist)
    bursts = summary.bursts.finish()  # closes the bursts still open: counts them too
    calls = sorted(summary.first_calls.items(), key=lambda kv: (kv[1][0], kv[0]))
    bounds = _bounds(summary)
    return {
        "banner": integrity.banner,
        "integrity": integrity.as_dict(),
        "range": _range(summary),
        "bucket_s": width,
        "total": summary.total,
        "allowed": summary.allowed,
        "denied": summary.total - summary.allowed,
        "rate_limited": summary.rate_limited,
        "by_status": {str(k): v for k, v in sorted(summary.by_status.items())},
        "over_time": [
            {"start": iso(bucket * width), **row} for bucket, row in sorted(over_time.items())
        ],
        "latency_ms": {
            "all": {"count": all_latency.count, **all_latency.percentiles()},
            "by_model": {
                model: {"count": hist.count, **hist.percentiles()}
                for model, hist in sorted(summary.latency.items())
            },
        },
        "latency_over_time": [
            {"start": iso(bucket * width), "model": model, "count": h.count, **h.percentiles()}
            for (bucket, model), h in sorted(summary.latency_buckets.items())
        ],
        "requests_by_principal_and_model": [
            {"principal": r.value[0], "model": r.value[1], "requests": r.count}
            for r in summary.pairs.top(top)
        ],
        "denials_by_reason": _ranked(summary.denials_by_reason.top(top), "reason"),
        "denials_by_principal": _ranked(summary.denials_by_principal.top(top), "principal"),
        "denials_by_address": _ranked(summary.denials_by_address.top(top), "address"),
        "rate_limit_hits": _ranked(summary.rate_limit_hits.top(top), "who"),
        "failed_auth_bursts": {
            "min_failures": BURST_MIN_FAILURES,
            "gap_s": BURST_GAP_S,
            "total": summary.bursts.total,
            "bursts": bursts[:top],
        },
        "key_usage": summary.keys.rows(),
        "first_calls": {
            "baseline_records": summary.baseline_records,
            "baseline_from": iso(summary.baseline_first),
            "complete": not (summary.baseline_full or summary.first_calls_dropped),
            "calls": [
                {
                    "principal": principal,
                    "model": model,
                    "first_call": iso(first),
                    "requests": requests,
                    "allowed": allowed,
                    "denied": denied,
                }
                for (principal, model), (first, requests, allowed, denied) in calls
            ],
        },
        "probes": {
            "records": summary.probe_records,
            "total": sum(summary.probes.values()),
            "by_route_and_status": dict(sorted(summary.probes.items())),
        },
        "bounds": bounds,
    }


def _bounds(summary: Summary) -> list[str]:
    """Where a bound of `Limits` was reached: which figures became approximate."""
    notes = []
    for name, top in (
        ("denials by reason", summary.denials_by_reason),
        ("denials by principal", summary.denials_by_principal),
        ("denials by address", summary.denials_by_address),
        ("rate-limit hits", summary.rate_limit_hits),
        ("requests by principal and model", summary.pairs),
    ):
        if not top.exact:
            notes.append(
                f"{name}: more distinct values than {top.capacity}; counts may exceed the true "
                f"ones by the error shown (at most {top.floor})"
            )
    if summary.cells_folded:
        notes.append(
            f"time cube full: {summary.cells_folded} requests counted under '(other)' "
            "principal and model in the charts"
        )
    if summary.baseline_full or summary.first_calls_dropped:
        notes.append("first calls: more pairs than the limit; the list is incomplete")
    if summary.malformed:
        notes.append(f"{summary.malformed} unverified records too malformed to count")
    if summary.keys.dropped:
        notes.append(f"key usage: {summary.keys.dropped} requests of further keys not counted")
    return notes
