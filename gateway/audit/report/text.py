"""The report as text for a terminal: the integrity banner on its first line."""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.audit.report.summary import DASH


def when(text: str | None) -> str:
    """``26 Nov 10:04:05`` from a report's ISO time (the year is in the range line)."""
    if not text:
        return "-"
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return f"{moment.day:>2} {moment:%b %H:%M:%S}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ranked(title: str, rows: list[dict[str, Any]], name: str) -> list[str]:
    lines = ["", f"{title}:"]
    if not rows:
        return [*lines, "  none"]
    lines.append(f"  {name.upper():<32} {'COUNT':>8}  {'FIRST SEEN':<15}  LAST SEEN")
    for row in rows:
        count = f"{row['count']}" + (f"±{row['error']}" if row.get("error") else "")
        lines.append(
            f"  {str(row[name])[:32]:<32} {count:>8}  {when(row['first_seen']):<15}  "
            f"{when(row['last_seen'])}"
        )
    return lines


def render_text(report: dict[str, Any]) -> str:
    latency = report["latency_ms"]
    lines = [
        report["banner"],
        f"audit report: {report['range']['text']}",
        f"requests {report['total']}   allowed {report['allowed']}   denied {report['denied']}"
        f"   rate-limited (429) {report['rate_limited']}",
        "latency ms (allowed, model routes): "
        + "  ".join(f"{q} {_ms(latency['all'].get(q))}" for q in ("p50", "p90", "p99")),
        *(
            f"  {model:<24} n={figures['count']:<8} "
            + "  ".join(f"{q} {_ms(figures.get(q))}" for q in ("p50", "p90", "p99"))
            for model, figures in latency["by_model"].items()
        ),
        "",
        f"over time ({report['bucket_s']} s buckets):",
        f"  {'START':<15} {'REQUESTS':>9} {'ALLOWED':>9} {'DENIED':>9} {'429':>9}",
        *(
            f"  {when(row['start']):<15} {row['requests']:>9} {row['allowed']:>9} "
            f"{row['denied']:>9} {row['rate_limited']:>9}"
            for row in report["over_time"]
        ),
    ]
    lines += _ranked("denials by reason", report["denials_by_reason"], "reason")
    lines += _ranked("denials by principal", report["denials_by_principal"], "principal")
    lines += _ranked("denials by address", report["denials_by_address"], "address")
    lines += _ranked("rate-limit hits", report["rate_limit_hits"], "who")
    bursts = report["failed_auth_bursts"]
    lines += [
        "",
        f"failed-authentication bursts (at least {bursts['min_failures']} failures from one "
        f"address, each within {bursts['gap_s']} s of the last): {bursts['total']}",
        *(
            f"  {b['address']:<32} {b['failures']:>8}  {when(b['start'])} {DASH} {when(b['end'])}  "
            + ", ".join(f"{reason} {n}" for reason, n in b["reasons"].items())
            for b in bursts["bursts"]
        ),
        "",
        "key usage (per key id and generation; last used includes records before the range):",
        f"  {'KEY ID':<18} {'GENERATION':<34} {'PRINCIPAL':<16} {'REQUESTS':>8}  "
        f"{'LAST USED':<15}  CLIENTS",
        *(
            f"  {k['key_id']:<18} {k['key_version']:<34} {str(k['principal'] or '-')[:16]:<16} "
            f"{k['requests']:>8}  {when(k['last_used']):<15}  "
            + ", ".join(f"{c} {n}" for c, n in k["clients"].items())
            for k in report["key_usage"]
        ),
    ]
    first = report["first_calls"]
    lines += [
        "",
        "first calls in the range (principal and model with no record before the range: "
        f"{first['baseline_records']} records read before it"
        + (f", from {when(first['baseline_from'])})" if first["baseline_from"] else ")")
        + ":",
        *(
            f"  {c['principal'][:24]:<24} {c['model'][:16]:<16} {when(c['first_call']):<15} "
            f"{c['requests']:>6} requests ({c['allowed']} allowed, {c['denied']} denied)"
            for c in first["calls"]
        ),
    ]
    probes = report["probes"]
    lines += [
        "",
        f"health probes (counted apart from traffic): {probes['total']}",
        *(f"  {name:<24} {n:>8}" for name, n in probes["by_route_and_status"].items()),
        "",
        "requests by principal and model:",
        *(
            f"  {r['principal'][:24]:<24} {r['model'][:16]:<16} {r['requests']:>8}"
            for r in report["requests_by_principal_and_model"]
        ),
    ]
    if report["bounds"]:
        lines += ["", "approximate figures:", *(f"  {note}" for note in report["bounds"])]
    return "\n".join(lines) + "\n"
