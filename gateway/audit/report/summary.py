"""One pass over the audit records: every figure of the report, in bounded memory.

`Summary.add` takes the records of every trail read, in time order, and keeps counters,
`TopN` maps, histograms and a time cube, never the records. Each structure's bound is in
`Limits`; when a bound is reached the report says which figures became approximate
(``bounds``), it never grows past it.

The range: records with ``since <= time < until`` are summarised. Records before
``since`` are read too (the trail is verified from its first record anyway) and feed two
baselines: which principal called which model before (for "first calls in the range")
and when each key generation was last used.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, OrderedDict
from dataclasses import dataclass
from heapq import heappush, heappushpop
from typing import Any

from gateway.audit.report.sketch import MAX_BUCKETS, Histogram, TopN, bucket_width

ANONYMOUS = "(anonymous)"
DASH = "\N{EN DASH}"  # a range, as in 03:00-04:12 (typeset)
OTHER = "(other)"
PROBE_ROUTES = frozenset({"live", "ready"})


@dataclass(frozen=True)
class Limits:
    """How much a summary may hold, whatever the trail's size."""

    principals: int = 1000  # principals told apart in the time cube; then "(other)"
    models: int = 200  # models told apart in the time cube; then "(other)"
    cells: int = 400_000  # time cube cells; then principal and model become "(other)"
    latency_models: int = 20  # models with latency of their own; then "(other)"
    top: int = 1000  # TopN capacity: denials by principal, address; rate limits; pairs
    baseline_pairs: int = 200_000  # (principal, model) pairs remembered from before the range
    first_calls: int = 10_000  # pairs first called in the range
    keys: int = 10_000  # key generations
    open_bursts: int = 10_000  # addresses with a failed-authentication burst under way
    bursts_kept: int = 100  # the largest bursts are kept; the others only counted


# A burst: at least BURST_MIN_FAILURES failed authentications (401) from one client
# address, each within BURST_GAP_S of the one before.
BURST_MIN_FAILURES = 5
BURST_GAP_S = 60


def iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Bursts:
    """Failed-authentication bursts per client address, closed once quiet for BURST_GAP_S.

    Open bursts live in an LRU map of at most ``limits.open_bursts`` addresses (the
    oldest is closed first); closed ones are counted, the ``bursts_kept`` largest kept.
    """

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        # address -> [start, last, failures, reasons]
        self._open: OrderedDict[str, list[Any]] = OrderedDict()
        self._kept: list[tuple[int, int, str, int, dict[str, int]]] = []
        self.total = 0

    def add(self, address: str, when: int, reason: str) -> None:
        self._expire(when)
        burst = self._open.get(address)
        if burst is not None and when - burst[1] <= BURST_GAP_S:
            burst[1] = max(burst[1], when)
            burst[2] += 1
            burst[3][reason] = burst[3].get(reason, 0) + 1
            self._open.move_to_end(address)
            return
        if burst is not None:
            self._close(address, self._open.pop(address))
        self._open[address] = [when, when, 1, {reason: 1}]
        if len(self._open) > self._limits.open_bursts:
            self._close(*self._open.popitem(last=False))

    def _expire(self, now: int) -> None:
        while self._open:
            address, burst = next(iter(self._open.items()))
            if now - burst[1] <= BURST_GAP_S:
                return
            del self._open[address]
            self._close(address, burst)

    def _close(self, address: str, burst: list[Any]) -> None:
        start, last, failures, reasons = burst
        if failures < BURST_MIN_FAILURES:
            return
        self.total += 1
        entry = (failures, -start, address, last, reasons)
        if len(self._kept) < self._limits.bursts_kept:
            heappush(self._kept, entry)
        else:
            heappushpop(self._kept, entry)

    def finish(self) -> list[dict[str, Any]]:
        while self._open:
            self._close(*self._open.popitem(last=False))
        return [
            {
                "address": address,
                "start": iso(-neg_start),
                "end": iso(last),
                "failures": failures,
                "reasons": dict(sorted(reasons.items())),
            }
            for failures, neg_start, address, last, reasons in sorted(self._kept, reverse=True)
        ]


class KeyUsage:
    """Per key id and generation: requests in the range, first and last use, clients.

    ``last_used`` counts records before the range too: a generation nobody used in the
    range still shows when it was last used. The list a rotation script reads before it
    revokes an old generation (`scoregate audit query --key-usage --json`).
    """

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._keys: dict[tuple[str, str], dict[str, Any]] = {}
        self.dropped = 0

    def add(self, record: dict[str, Any], when: int, *, in_range: bool) -> None:
        key = (str(record["key_id"]), str(record.get("key_version")))
        usage = self._keys.get(key)
        if usage is None:
            if len(self._keys) >= self._limits.keys:
                self.dropped += 1
                return
            usage = self._keys[key] = {
                "principals": TopN[str](4),
                "clients": TopN[str](8),
                "requests": 0,
                "allowed": 0,
                "denied": 0,
                "first_used": None,
                "last_used": when,
            }
        usage["last_used"] = max(usage["last_used"], when)
        if not in_range:
            return
        usage["requests"] += 1
        usage["allowed" if record.get("decision") == "allow" else "denied"] += 1
        if usage["first_used"] is None or when < usage["first_used"]:
            usage["first_used"] = when
        usage["principals"].add(str(record.get("subject") or ANONYMOUS), when)
        usage["clients"].add(str(record.get("client") or "-"), when)

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for (key_id, version), usage in self._keys.items():
            principals = usage["principals"].top()
            rows.append(
                {
                    "key_id": key_id,
                    "key_version": version,
                    "principal": principals[0].value if principals else None,
                    "requests": usage["requests"],
                    "allowed": usage["allowed"],
                    "denied": usage["denied"],
                    "first_used": iso(usage["first_used"]),
                    "last_used": iso(usage["last_used"]),
                    "clients": {r.value: r.count for r in usage["clients"].top()},
                }
            )
        # Per key, its generations in the order they came into use.
        return sorted(rows, key=lambda r: (r["key_id"], r["first_used"] or "", r["key_version"]))


class Summary:
    """Every figure of the report, fed one record at a time (`add`)."""

    def __init__(
        self,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits = limits or Limits()
        self.since, self.until = since, until
        # Records carry `gateway.audit.record.utc_timestamp` times, which sort as text.
        self._since = since.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if since else None
        self._until = until.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if until else None
        span = (until - since).total_seconds() if since and until else 0
        self.width = bucket_width(span)
        self.first: int | None = None  # epoch seconds of the first and last record summarised
        self.last: int | None = None
        self._prefix = ""
        self._epoch = 0
        self.total = self.allowed = self.rate_limited = 0
        self.by_status: Counter[int] = Counter()
        # (bucket, principal id, model id, decision, status, reason) -> requests
        self.cube: dict[tuple[int, int, int, str, int, str], int] = {}
        self.principals: dict[str, int] = {OTHER: 0}
        self.models: dict[str, int] = {OTHER: 0}
        self.denials_by_reason: TopN[str] = TopN(limits.top)
        self.denials_by_principal: TopN[str] = TopN(limits.top)
        self.denials_by_address: TopN[str] = TopN(limits.top)
        self.rate_limit_hits: TopN[str] = TopN(limits.top)
        self.pairs: TopN[tuple[str, str]] = TopN(limits.top)
        self.latency: dict[str, Histogram] = {}
        self.latency_buckets: dict[tuple[int, str], Histogram] = {}
        self.bursts = Bursts(limits)
        self.keys = KeyUsage(limits)
        self.baseline: set[tuple[str, str]] = set()
        self.baseline_records = 0
        self.baseline_first: int | None = None
        self.baseline_full = False
        self.first_calls: dict[tuple[str, str], list[Any]] = {}
        self.first_calls_dropped = 0
        self.probes: Counter[str] = Counter()
        self.probe_records = 0
        self.cells_folded = 0
        self.malformed = 0  # records after a break too malformed to count

    # -- reading -------------------------------------------------------------------------
    def _seconds(self, text: str) -> int:
        """Epoch seconds of a record's time (``2026-11-26T10:04:05.123Z``): the day is
        parsed once per day, the clock read from its fixed places."""
        day = text[:10]
        if day != self._prefix:
            self._prefix = day
            self._epoch = int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp())
        return self._epoch + int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])

    def add(self, record: dict[str, Any]) -> None:
        kind = record.get("type", "request")
        if kind == "checkpoint":
            return
        text = str(record.get("time", ""))
        if self._until is not None and text >= self._until:
            return
        when = self._seconds(text)
        if self._since is not None and text < self._since:
            if kind == "request":
                self._before(record, when)
            return
        if kind == "probes":
            self.probe_records += 1
            for name, n in record.get("counts", {}).items():
                self.probes[str(name)] += int(n)
        elif kind == "request":
            if record.get("route") in PROBE_ROUTES:  # a trail from before probes were counted
                self.probes[f"{record['route']} {record.get('status')}"] += 1
            else:
                self._request(record, when)

    def _before(self, record: dict[str, Any], when: int) -> None:
        self.baseline_records += 1
        if self.baseline_first is None:
            self.baseline_first = when
        if record.get("key_id"):
            self.keys.add(record, when, in_range=False)
        subject, model = record.get("subject"), record.get("model")
        if subject and model:
            if len(self.baseline) < self.limits.baseline_pairs:
                self.baseline.add((str(subject), str(model)))
            elif (subject, model) not in self.baseline:
                self.baseline_full = True

    def _request(self, record: dict[str, Any], when: int) -> None:
        self._extend(when)
        subject, model = record.get("subject"), record.get("model")
        principal = str(subject) if subject else ANONYMOUS
        model_name = str(model) if model else "-"
        decision = str(record.get("decision"))
        status = int(record.get("status", 0))
        reason = str(record.get("reason"))
        client = str(record.get("client") or "-")
        self.total += 1
        self.by_status[status] += 1
        self._count(when // self.width, principal, model_name, decision, status, reason)
        self.pairs.add((principal, model_name), when)
        if decision == "allow":
            self.allowed += 1
            if model:
                latency = float(record.get("latency_ms", 0.0))
                name = self._latency_model(model_name)
                self.latency[name].add(latency)
                bucket = (when // self.width, name)
                hist = self.latency_buckets.get(bucket)
                if hist is None:
                    hist = self.latency_buckets[bucket] = Histogram()
                hist.add(latency)
        else:
            self.denials_by_reason.add(reason, when)
            self.denials_by_principal.add(principal, when)
            self.denials_by_address.add(client, when)
        if status == 429:
            self.rate_limited += 1
            self.rate_limit_hits.add(principal if subject else client, when)
        if status == 401:
            self.bursts.add(client, when, reason)
        if record.get("key_id"):
            self.keys.add(record, when, in_range=True)
        if subject and model:
            self._first_call(principal, model_name, decision, when)

    def _count(
        self, bucket: int, principal: str, model: str, decision: str, status: int, reason: str
    ) -> None:
        pid = self.principals.get(principal)
        if pid is None:
            pid = 0 if len(self.principals) > self.limits.principals else len(self.principals)
            if pid:
                self.principals[principal] = pid
        mid = self.models.get(model)
        if mid is None:
            mid = 0 if len(self.models) > self.limits.models else len(self.models)
            if mid:
                self.models[model] = mid
        key = (bucket, pid, mid, decision, status, reason)
        if key not in self.cube and len(self.cube) >= self.limits.cells:
            self.cells_folded += 1
            key = (bucket, 0, 0, decision, status, reason)
        self.cube[key] = self.cube.get(key, 0) + 1

    def _latency_model(self, model: str) -> str:
        if model not in self.latency:
            if len(self.latency) >= self.limits.latency_models:
                model = OTHER
            self.latency.setdefault(model, Histogram())
        return model

    def _first_call(self, principal: str, model: str, decision: str, when: int) -> None:
        pair = (principal, model)
        if pair in self.baseline:
            return
        call = self.first_calls.get(pair)
        if call is None:
            if len(self.first_calls) >= self.limits.first_calls:
                self.first_calls_dropped += 1
                return
            call = self.first_calls[pair] = [when, 0, 0, 0]
        call[0] = min(call[0], when)
        call[1] += 1
        call[2 if decision == "allow" else 3] += 1

    def _extend(self, when: int) -> None:
        """Widen the time buckets when the records' span outgrows MAX_BUCKETS of them."""
        if self.first is None or self.last is None:
            self.first = self.last = when
            return
        if when < self.first:
            self.first = when
        elif when > self.last:
            self.last = when
        else:
            return
        width = self.width
        while self.last // width - self.first // width >= MAX_BUCKETS:
            width = bucket_width((self.last - self.first) + width)
            if width == self.width:
                break
            self._rebucket(width)

    def _rebucket(self, width: int) -> None:
        old, self.width = self.width, width
        cube: dict[tuple[int, int, int, str, int, str], int] = {}
        for (bucket, pid, mid, decision, status, reason), n in self.cube.items():
            key = (bucket * old // width, pid, mid, decision, status, reason)
            cube[key] = cube.get(key, 0) + n
        self.cube = cube
        latency: dict[tuple[int, str], Histogram] = {}
        for (bucket, model), hist in self.latency_buckets.items():
            merged = latency.setdefault((bucket * old // width, model), Histogram())
            merged.merge(hist)
        self.latency_buckets = latency
