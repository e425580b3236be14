"""Reading the audit trail: verify, query and report, for the people who review it.

Everything here reads files and never writes them; `scoregate audit …` is its interface.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.record import GENESIS, canonical
from gateway.audit.signing import check_signature
from gateway.audit.sinks import chain_files


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory becomes its trail files in chain order."""
    out: list[Path] = []
    for path in paths:
        out.extend(chain_files(path) if path.is_dir() else [path])
    return out


def read_records(paths: Iterable[Path]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    for path in expand(paths):
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                yield path, lineno, orjson.loads(raw)


# -- verify ----------------------------------------------------------------------------
@dataclass
class VerifyResult:
    ok: bool = True
    records: int = 0
    checkpoints: int = 0
    signed_through: int | None = None  # seq of the last record covered by a good checkpoint
    last_seq: int | None = None
    line: int | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)
    last_type: str | None = None  # the last record's type ("checkpoint" when it drained)

    @property
    def ended_without_checkpoint(self) -> bool:
        return self.records > 0 and self.last_type != "checkpoint"

    @property
    def unsigned_tail(self) -> int:
        """Records after the last good checkpoint: complete only as far as the chain shows."""
        if self.last_seq is None or self.signed_through is None:
            return self.records
        return self.last_seq - self.signed_through

    def fail(self, line: int, problem: str) -> VerifyResult:
        self.ok, self.line, self.problem = False, line, problem
        return self


def verify(
    paths: Iterable[Path],
    keys: dict[str, Ed25519PublicKey] | None = None,
    *,
    partial: bool = False,
    max_unsigned: int | None = None,
) -> VerifyResult:
    """Check hashes, links and sequence across files in order, and the signed checkpoints.

    The trail must start at the chain's first record (seq 1), so records removed from the
    front are caught too; ``partial`` accepts a later range (e.g. after old files were
    archived) and says where it starts. With ``keys``, every checkpoint's signature is
    checked and so is the cadence it signs: more unsigned records in a row than the writer
    allows means checkpoints were removed. With ``keys`` None only the chain is checked (a
    rewrite that recomputes every hash then goes unnoticed: give the public key for proof).
    ``max_unsigned`` is the writer's cadence, for a live trail not yet signed at all.
    """
    result = VerifyResult()
    prev: str | None = None
    seq: int | None = None
    last_checkpoint: dict[str, Any] | None = None
    for path in expand(paths):
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                where = f"{path}:{lineno}"
                try:
                    record = orjson.loads(raw)
                    claimed = record.pop("hash")
                    record_seq = int(record["seq"])
                except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError):
                    return result.fail(lineno, f"{where}: not a sealed record")
                if hashlib.sha256(canonical(record)).hexdigest() != claimed:
                    return result.fail(lineno, f"{where}: record was altered")
                if raw.rstrip(b"\n") != canonical({**record, "hash": claimed}):
                    # Same fields, other bytes (a duplicated key, spacing): what another
                    # parser or grep reads may differ from what was sealed.
                    return result.fail(lineno, f"{where}: record is not in its sealed form")
                if prev is None and (record.get("prev") != GENESIS or record_seq != 1):
                    if not partial:
                        return result.fail(
                            lineno,
                            f"{where}: the trail starts at seq {record_seq}, not at the chain's "
                            "first record (records removed from the front?); "
                            "use --partial to verify a later range",
                        )
                    result.notes.append(f"the range starts mid-chain at seq {record_seq}")
                if prev is not None and record.get("prev") != prev:
                    return result.fail(
                        lineno, f"{where}: chain broken (a record is missing or out of order)"
                    )
                if seq is not None and record_seq != seq + 1:
                    return result.fail(
                        lineno, f"{where}: sequence jumps from {seq} to {record_seq}"
                    )
                if record.get("type") == "checkpoint":
                    problem = _check_checkpoint(record, seq, keys)
                    if problem is None and keys is not None:
                        problem = _check_cadence(record, last_checkpoint, result)
                    if problem:
                        return result.fail(lineno, f"{where}: checkpoint {problem}")
                    result.checkpoints += 1
                    last_checkpoint = record
                    if keys is not None:
                        result.signed_through = record_seq
                prev, seq = claimed, record_seq
                result.records += 1
                result.last_seq = record_seq
                result.last_type = str(record.get("type", "request"))
    return _check_end(result, last_checkpoint, keys, max_unsigned)


def describe_signing(result: VerifyResult) -> str:
    if result.checkpoints == 0:
        return f"no checkpoint yet ({result.records} records, within the signing cadence)"
    return (
        f"{result.checkpoints} signed checkpoints, "
        f"{result.unsigned_tail} records after the last one"
    )


def _check_checkpoint(
    record: dict[str, Any], seq: int | None, keys: dict[str, Ed25519PublicKey] | None
) -> str | None:
    if record.get("head") != record.get("prev") or (
        seq is not None and record.get("to_seq") != seq
    ):
        return "does not sign the record before it"
    return None if keys is None else check_signature(record, keys)


def _check_cadence(
    record: dict[str, Any], last: dict[str, Any] | None, result: VerifyResult
) -> str | None:
    """The records since the previous checkpoint must all be covered by this one."""
    expected_from = int(last["seq"]) + 1 if last is not None else None
    from_seq, every = int(record["from_seq"]), int(record["every"])
    if expected_from is not None and from_seq < expected_from:
        return f"claims records from seq {from_seq}, already covered up to {expected_from - 1}"
    if expected_from is not None and from_seq > expected_from:
        gap = from_seq - expected_from
        if gap > every:
            return (
                f"follows {gap} records no checkpoint covers, more than the cadence of {every}: "
                "checkpoints were removed"
            )
        result.notes.append(
            f"records {expected_from}..{from_seq - 1} were never signed (the writer stopped "
            "without its closing checkpoint)"
        )
    if int(record["to_seq"]) - from_seq + 1 > every:
        return f"covers more records than its cadence of {every}"
    return None


def _check_end(
    result: VerifyResult,
    last: dict[str, Any] | None,
    keys: dict[str, Ed25519PublicKey] | None,
    max_unsigned: int | None,
) -> VerifyResult:
    if result.records == 0:
        return result.fail(0, "the trail holds no records")
    if keys is None:
        return result
    if last is None:
        if max_unsigned is not None and result.records <= max_unsigned:
            result.notes.append(
                f"no checkpoint yet: a live trail is signed every {max_unsigned} records "
                "or when its interval passes"
            )
            return result
        return result.fail(0, "no signed checkpoint in the trail: nothing proves it complete")
    tail = result.unsigned_tail
    if tail > int(last["every"]):
        return result.fail(
            0,
            f"{tail} records after the last checkpoint, more than its cadence of "
            f"{last['every']}: later checkpoints were removed",
        )
    return result


# -- query -----------------------------------------------------------------------------
_RELATIVE = re.compile(r"(\d+)([smhd])")


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """ISO 8601 (``2026-11-26T10:00:00Z``) or an age (``15m``, ``2h``, ``7d``) before now."""
    match = _RELATIVE.fullmatch(text)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=int(match.group(1)) * unit)
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def record_time(record: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))


@dataclass(frozen=True)
class Filter:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    subject: str | None = None
    key_id: str | None = None
    model: str | None = None
    decision: str | None = None
    status: int | None = None
    reason: str | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if record.get("type", "request") != "request":
            return False
        for name in ("subject", "key_id", "model", "decision", "status", "reason"):
            wanted = getattr(self, name)
            if wanted is not None and record.get(name) != wanted:
                return False
        if self.since or self.until:
            when = record_time(record)
            if (self.since and when < self.since) or (self.until and when >= self.until):
                return False
        return True


def query(paths: Iterable[Path], where: Filter) -> Iterator[dict[str, Any]]:
    for _, _, record in read_records(paths):
        if where.matches(record):
            yield record


TABLE_COLUMNS = (
    ("time", 24),
    ("request_id", 32),
    ("subject", 14),
    ("key_id", 16),
    ("model", 10),
    ("decision", 8),
    ("status", 6),
    ("reason", 24),
    ("latency_ms", 10),
)


def table_row(record: dict[str, Any]) -> str:
    cells = []
    for name, width in TABLE_COLUMNS:
        value = record.get(name)
        text = "-" if value is None else str(value)
        cells.append(text[:width].ljust(width))
    return " ".join(cells).rstrip()


def table_header() -> str:
    return " ".join(name.upper().ljust(width) for name, width in TABLE_COLUMNS).rstrip()


# -- report ----------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Report:
    since: str | None
    until: str | None
    total: int
    allowed: int
    denied: int
    by_principal_model: Counter[tuple[str, str]]
    denials_by_reason: Counter[str]
    rate_limit_hits: Counter[str]
    by_status: Counter[int]
    latency_ms: dict[str, float | None]

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "total": self.total,
            "allowed": self.allowed,
            "denied": self.denied,
            "requests_by_principal_and_model": [
                {"principal": p, "model": m, "requests": n}
                for (p, m), n in self.by_principal_model.most_common()
            ],
            "denials_by_reason": dict(self.denials_by_reason.most_common()),
            "rate_limit_hits": dict(self.rate_limit_hits.most_common()),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "latency_ms": self.latency_ms,
        }


def build_report(
    records: Iterable[dict[str, Any]], since: str | None = None, until: str | None = None
) -> Report:
    by_pm: Counter[tuple[str, str]] = Counter()
    reasons: Counter[str] = Counter()
    limited: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    total = allowed = 0
    for r in records:
        total += 1
        statuses[int(r["status"])] += 1
        by_pm[(r.get("subject") or "(anonymous)", r.get("model") or "-")] += 1
        if r["decision"] == "allow":
            allowed += 1
        else:
            reasons[r["reason"]] += 1
        if str(r["reason"]).startswith("rate_limit"):
            limited[r.get("subject") or r.get("client") or "-"] += 1
        if r.get("route") not in {"live", "ready"}:
            latencies.append(float(r["latency_ms"]))
    return Report(
        since=since,
        until=until,
        total=total,
        allowed=allowed,
        denied=total - allowed,
        by_principal_model=by_pm,
        denials_by_reason=reasons,
        rate_limit_hits=limited,
        by_status=statuses,
        latency_ms={f"p{q}": percentile(latencies, q) for q in (50, 90, 99)},
    )


def render_text(report: Report) -> str:
    lines = [
        f"audit report {report.since or 'start'} .. {report.until or 'now'}",
        f"requests {report.total}   allowed {report.allowed}   denied {report.denied}",
        "latency ms (model routes): "
        + "  ".join(
            f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in report.latency_ms.items()
        ),
        "",
        "requests by principal and model:",
        *(f"  {p:<24} {m:<16} {n:>8}" for (p, m), n in report.by_principal_model.most_common()),
        "",
        "denials by reason:",
        *(f"  {reason:<32} {n:>8}" for reason, n in report.denials_by_reason.most_common()),
        "",
        "rate-limit hits:",
        *(f"  {who:<32} {n:>8}" for who, n in report.rate_limit_hits.most_common()),
    ]
    return "\n".join(lines) + "\n"


def _bars(title: str, rows: list[tuple[str, int]]) -> str:
    """A horizontal bar chart as inline SVG: no script, no external resource."""
    if not rows:
        return f"<h2>{html.escape(title)}</h2><p class=empty>none</p>"
    top = max(n for _, n in rows) or 1
    height = 24 * len(rows) + 8
    bars = []
    for i, (label, n) in enumerate(rows):
        y = 4 + 24 * i
        width = max(1, round(420 * n / top))
        bars.append(
            f'<text x="0" y="{y + 15}">{html.escape(label[:40])}</text>'
            f'<rect x="260" y="{y}" width="{width}" height="18" rx="2"></rect>'
            f'<text x="{268 + width}" y="{y + 15}">{n}</text>'
        )
    label = html.escape(title)
    return (
        f"<h2>{label}</h2>"
        f'<svg role="img" aria-label="{label}" width="760" height="{height}">{"".join(bars)}</svg>'
    )


def render_html(report: Report) -> str:
    """A self-contained page (inline CSS and SVG) a reviewer can open or attach anywhere."""
    latency = ", ".join(
        f"{k} {'-' if v is None else f'{v:.2f}'} ms" for k, v in report.latency_ms.items()
    )
    charts = [
        _bars(
            "Requests by principal and model",
            [(f"{p} · {m}", n) for (p, m), n in report.by_principal_model.most_common(20)],
        ),
        _bars("Denials by reason", report.denials_by_reason.most_common(20)),
        _bars("Rate-limit hits", report.rate_limit_hits.most_common(20)),
        _bars("Responses by status", [(str(k), v) for k, v in sorted(report.by_status.items())]),
    ]
    period = f"{report.since or 'start'} .. {report.until or 'now'}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>scoregate audit report</title>
<style>
body{{font:14px system-ui,sans-serif;margin:2rem;color:#1b1f24}}
h1{{font-size:1.4rem}} h2{{font-size:1.05rem;margin-top:1.6rem}}
.kpi{{display:inline-block;margin-right:2rem}} .kpi b{{font-size:1.3rem;display:block}}
svg text{{font:12px system-ui,sans-serif;fill:#1b1f24}} svg rect{{fill:#2f6fdb}}
.empty{{color:#777}}
</style></head><body>
<h1>scoregate audit report</h1>
<p>{html.escape(period)}</p>
<div class="kpi"><b>{report.total}</b>requests</div>
<div class="kpi"><b>{report.allowed}</b>allowed</div>
<div class="kpi"><b>{report.denied}</b>denied</div>
<p>Latency (model routes): {html.escape(latency)}</p>
{"".join(charts)}
</body></html>
"""
