"""The report as one self-contained HTML page: open it from disk, attach it anywhere.

No request leaves the page: its Content-Security-Policy (stated in a meta element, since
a file has no headers) allows nothing from anywhere, and the one inline script and style
sheet by their SHA-256 hashes only (CSP Level 3, "hash-source"; no 'unsafe-inline').
The figures travel as JSON in a data block (``type="application/json"``, never executed),
with ``<`` escaped so no string in them can close the element (OWASP XSS prevention,
rule 3.1); every name in the markup is HTML-escaped. The script (`page.js`) draws the
charts as inline SVG and filters them by principal, model, decision and time; each chart's
numbers are also a table for screen readers.

The charts are the page's own SVG, not a library's: five line and bar charts take about
200 lines of script, where a charting library (uPlot, ~50 KB; Chart.js, ~200 KB) would
ride inline in every report, to be audited and updated like any other dependency.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
from importlib import resources
from typing import Any

import orjson

from gateway.audit.report.figures import duration
from gateway.audit.report.summary import DASH, OTHER, Summary

_ASSETS = resources.files("gateway.audit.report")
SCRIPT = (_ASSETS / "page.js").read_text(encoding="utf-8")
STYLE = (_ASSETS / "page.css").read_text(encoding="utf-8")
PAGE_PRINCIPALS = 50  # principals the page tells apart; the rest are "(other)"
PAGE_MODELS = 50


def _hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


CSP = (
    f"default-src 'none'; script-src '{_hash(SCRIPT)}'; style-src '{_hash(STYLE)}'; "
    "img-src 'none'; base-uri 'none'; form-action 'none'"
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def page_data(summary: Summary) -> dict[str, Any]:
    """The time cube and latency series the script filters, ids made dense and small."""
    width = summary.width
    first = summary.first // width if summary.first is not None else 0
    last = summary.last // width if summary.last is not None else 0
    by_id = {pid: name for name, pid in summary.principals.items()}
    model_by_id = {mid: name for name, mid in summary.models.items()}
    volume: dict[str, int] = {}
    model_volume: dict[str, int] = {}
    for (_, pid, mid, *_rest), n in summary.cube.items():
        volume[by_id[pid]] = volume.get(by_id[pid], 0) + n
        model_volume[model_by_id[mid]] = model_volume.get(model_by_id[mid], 0) + n
    principals = _dense(volume, PAGE_PRINCIPALS)
    models = _dense(model_volume, PAGE_MODELS)
    reasons: dict[str, int] = {}
    cells: dict[tuple[int, int, int, int, int, int], int] = {}
    for (bucket, pid, mid, decision, status, reason), n in summary.cube.items():
        key = (
            bucket - first,
            principals.get(by_id[pid], 0),
            models.get(model_by_id[mid], 0),
            1 if decision == "allow" else 0,
            status,
            reasons.setdefault(reason, len(reasons)),
        )
        cells[key] = cells.get(key, 0) + n
    # Busiest first: without a model chosen, the page draws the first three.
    latency_models = sorted(summary.latency, key=lambda m: (-summary.latency[m].count, m))
    return {
        "bucket_s": width,
        "start": first * width,
        "buckets": last - first + 1 if summary.first is not None else 0,
        "principals": _names(principals),
        "models": _names(models),
        "reasons": list(reasons),
        "cells": [[*key, n] for key, n in sorted(cells.items())],
        "latency": {
            "models": latency_models,
            "points": [
                [
                    bucket - first,
                    latency_models.index(model),
                    hist.count,
                    *hist.percentiles().values(),
                ]
                for (bucket, model), hist in sorted(summary.latency_buckets.items())
            ],
        },
    }


def _dense(volume: dict[str, int], keep: int) -> dict[str, int]:
    """Id 0 is "(other)"; the ``keep`` busiest names get 1, 2, … by volume."""
    ranked = sorted((n for n in volume if n != OTHER), key=lambda n: (-volume[n], n))
    return {name: i for i, name in enumerate(ranked[:keep], start=1)}


def _names(ids: dict[str, int]) -> list[str]:
    return [OTHER, *sorted(ids, key=ids.__getitem__)]


def _json_block(value: Any) -> str:
    # "<" as \u003c: the JSON stays the same value and no "</script" can end the block.
    return orjson.dumps(value).decode("utf-8").replace("<", "\\u003c")


def _epoch(text: str | None) -> str:
    if not text:
        return "0"
    return str(int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()))


class When(str):
    """A time for a table cell (kept on one line)."""

    __slots__ = ()


def _when(text: str | None) -> When:
    """``26 Nov 2026 10:00:35``, UTC like every time in the report."""
    if not text:
        return When(DASH)
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return When(f"{moment.day} {moment:%b %Y %H:%M:%S}")


def _rows(
    head: list[str], rows: list[tuple[dict[str, str], list[object]]], caption: str, note: str = ""
) -> str:
    """A server-rendered table whose rows the filters show or hide (see `page.js` rows)."""
    cells = "".join(f'<th scope="col"{_num(h)}>{_e(h)}</th>' for h in head)
    body = []
    for attrs, values in rows:
        data = "".join(f' data-{k}="{_e(v)}"' for k, v in attrs.items())
        tds = "".join(_cell(v) for v in values)
        body.append(f"<tr{data}>{tds}</tr>")
    if not rows:
        body.append(f'<tr><td colspan="{len(head)}" class="empty">none</td></tr>')
    hint = f'<p class="note">{_e(note)}</p>' if note else ""
    return (
        f"<table><caption>{_e(caption)}</caption><thead><tr>{cells}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>{hint}"
    )


def _cell(value: object) -> str:
    if isinstance(value, int):
        return f'<td class="n">{value:,}</td>'
    if isinstance(value, When):
        return f'<td class="t">{_e(value)}</td>'
    return f"<td>{_e(value)}</td>"


def _num(head: str) -> str:
    return ' class="n"' if head in {"count", "requests", "failures", "allowed", "denied"} else ""


def _span(first: str | None, last: str | None) -> dict[str, str]:
    return {"t0": _epoch(first), "t1": _epoch(last)}


def _integrity(report: dict[str, Any]) -> str:
    rows = []
    for t in report["integrity"]["trails"]:
        seq = f"{t['first_seq']:,}{DASH}{t['last_seq']:,}" if t["first_seq"] is not None else DASH
        signed = ", ".join(f"{k} ({n})" for k, n in t["signed_by"].items()) or DASH
        state = "intact" if t["ok"] else f"BROKEN: {t['problem']}"
        rows.append(
            f"<tr><td>{_e(t['trail'])}</td><td>{_e(state)}</td>"
            f'<td class="n">{t["records"]:,}</td><td>{_e(seq)}</td>'
            f'<td class="n">{t["checkpoints"]:,}</td><td>{_e(signed)}'
            f"{'' if t['signatures_checked'] else ' (not checked)'}</td>"
            f'<td class="n">{t["unsigned_tail"]:,}</td><td class="n">{t["not_verified"]:,}</td>'
            f"<td>{_e('; '.join(t['notes']))}</td></tr>"
        )
    return (
        "<table><caption>Verification, per trail</caption><thead><tr>"
        '<th scope="col">trail</th><th scope="col">state</th><th scope="col" class="n">records</th>'
        '<th scope="col">seq</th><th scope="col" class="n">checkpoints</th>'
        '<th scope="col">signed by key</th><th scope="col" class="n">after last checkpoint</th>'
        '<th scope="col" class="n">not verified</th><th scope="col">notes</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _chart(name: str, title: str, head: list[str], *, lines: bool = False, note: str = "") -> str:
    """A figure the script draws: SVG for the eye, the same numbers as a table for
    screen readers (the SVG is hidden from them: the table says it all)."""
    cols = "".join(
        f'<th scope="col"{"" if i == 0 else " class=n"}>{_e(h)}</th>' for i, h in enumerate(head)
    )
    legend = f'<ul class="legend" id="legend-{name}" aria-hidden="true"></ul>' if lines else ""
    size = (
        'viewBox="0 0 960 220" width="100%"' if lines else 'class="bars" width="100%" height="24"'
    )
    hint = f'<p class="note">{_e(note)}</p>' if note else ""
    return (
        f'<figure aria-labelledby="title-{name}"><figcaption id="title-{name}">{_e(title)}'
        f'</figcaption>{legend}<svg id="chart-{name}" {size} aria-hidden="true" '
        f'focusable="false"></svg>{hint}'
        f'<table class="sr-only" id="table-{name}"><caption>{_e(title)}</caption>'
        f"<thead><tr>{cols}</tr></thead><tbody></tbody></table></figure>"
    )


DECISIONS = (
    '<option value="">all</option><option value="allow">allowed</option>'
    '<option value="deny">denied</option>'
)


def render_html(report: dict[str, Any], summary: Summary) -> str:
    intact = report["integrity"]["ok"]
    state = "ok" if intact else "broken"
    role = "status" if intact else "alert"
    burst = report["failed_auth_bursts"]
    first = report["first_calls"]
    probes = report["probes"]
    sections = [
        _chart(
            "time",
            "Requests, denials and 429s over time",
            ["bucket", "requests", "denied", "429"],
            lines=True,
        ),
        _chart(
            "latency",
            "Latency over time per model (ms; p50 solid, p99 dashed)",
            ["bucket · model", "requests", "p50", "p90", "p99"],
            lines=True,
            note="Allowed requests of model routes; the principal and decision filters do "
            "not apply (latency is kept per model and time bucket). Without a model chosen, "
            "the three busiest models are shown.",
        ),
        _chart("reasons", "Denials by reason", ["reason", "denials"]),
        _chart("principals", "Denials by principal", ["principal", "denials"]),
        _chart("status", "Responses by status", ["status", "responses"]),
        "<h2>Denials: first and last seen</h2>",
        *(
            _rows(
                [key, "count", "first seen", "last seen"],
                [
                    (
                        # Rows filter by principal; reasons and addresses by time alone.
                        ({"p": r[key]} if key == "principal" else {})
                        | _span(r["first_seen"], r["last_seen"]),
                        [r[key], r["count"], _when(r["first_seen"]), _when(r["last_seen"])],
                    )
                    for r in report[f"denials_by_{key}"]
                ],
                title,
            )
            for key, title in (
                ("reason", "By reason"),
                ("principal", "By principal"),
                ("address", "By client address"),
            )
        ),
        f"<h2>Failed-authentication bursts: {burst['total']:,}</h2>",
        _rows(
            ["address", "failures", "from", "to", "reasons"],
            [
                (
                    _span(b["start"], b["end"]),
                    [
                        b["address"],
                        b["failures"],
                        _when(b["start"]),
                        _when(b["end"]),
                        ", ".join(f"{k} {v}" for k, v in b["reasons"].items()),
                    ],
                )
                for b in burst["bursts"]
            ],
            "Bursts, largest first",
            f"A burst: at least {burst['min_failures']} failed authentications (401) from one "
            f"address, each within {burst['gap_s']} s of the one before.",
        ),
        "<h2>Key generation usage</h2>",
        _rows(
            [
                "key id",
                "generation",
                "principal",
                "requests",
                "allowed",
                "denied",
                "first used",
                "last used",
                "clients",
            ],
            [
                (
                    {
                        **({"p": k["principal"]} if k["principal"] else {}),
                        **_span(k["first_used"] or k["last_used"], k["last_used"]),
                    },
                    [
                        k["key_id"],
                        k["key_version"],
                        k["principal"] or DASH,
                        k["requests"],
                        k["allowed"],
                        k["denied"],
                        _when(k["first_used"]),
                        _when(k["last_used"]),
                        ", ".join(f"{c} ({n})" for c, n in k["clients"].items()),
                    ],
                )
                for k in report["key_usage"]
            ],
            "Per key id and generation",
            "Requests in the range; last used counts records before the range too. The same "
            "list: scoregate audit query --key-usage --json.",
        ),
        "<h2>First calls in the range</h2>",
        _rows(
            ["principal", "model", "first call", "requests", "allowed", "denied"],
            [
                (
                    {
                        "p": c["principal"],
                        "m": c["model"],
                        **_span(c["first_call"], c["first_call"]),
                    },
                    [
                        c["principal"],
                        c["model"],
                        _when(c["first_call"]),
                        c["requests"],
                        c["allowed"],
                        c["denied"],
                    ],
                )
                for c in first["calls"]
            ],
            "Principals calling a model with no record of that pair before the range",
            f"Compared with the {first['baseline_records']:,} records of the trail read before "
            "the range"
            + (
                f" (from {_when(first['baseline_from'])})."
                if first["baseline_from"]
                else ": none, so every pair is new."
            ),
        ),
        f"<h2>Health probes (not traffic): {probes['total']:,}</h2>",
        _rows(
            ["route and status", "count"],
            [({}, [name, n]) for name, n in probes["by_route_and_status"].items()],
            "Counted by the gateway, one summary record per interval",
        ),
        "<h2>Requests by principal and model</h2>",
        _rows(
            ["principal", "model", "requests"],
            [
                (
                    {"p": r["principal"], "m": r["model"], "t0": "0", "t1": "99999999999"},
                    [r["principal"], r["model"], r["requests"]],
                )
                for r in report["requests_by_principal_and_model"]
            ],
            "Whole range",
        ),
    ]
    if report["bounds"]:
        notes = "".join(f"<li>{_e(n)}</li>" for n in report["bounds"])
        sections.append(f"<h2>Approximate figures</h2><ul>{notes}</ul>")
    title = ("INTACT" if intact else "BROKEN") + " · scoregate audit report"
    buckets = _width(report["bucket_s"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{STYLE}</style></head><body>
<p id="banner" class="banner {state}" role="{role}">{_e(report["banner"])}</p>
<h1>scoregate audit report</h1>
<p class="meta" id="range">{_e(report["range"]["text"])} · buckets of {_e(buckets)}</p>
{_integrity(report)}
<form id="filters" class="filters" aria-label="Filters">
<label>Principal<select name="principal"><option value="">all</option></select></label>
<label>Model<select name="model"><option value="">all</option></select></label>
<label>Decision<select name="decision">{DECISIONS}</select></label>
<label>From<select name="from"></select></label>
<label>To<select name="to"></select></label>
<button type="reset">Reset</button>
</form>
<dl class="kpis" aria-live="polite">
<div><dt>requests</dt><dd id="kpi-requests">{report["total"]:,}</dd></div>
<div><dt>allowed</dt><dd id="kpi-allowed">{report["allowed"]:,}</dd></div>
<div><dt>denied</dt><dd id="kpi-denied">{report["denied"]:,}</dd></div>
<div><dt>rate-limited (429)</dt><dd id="kpi-limited">{report["rate_limited"]:,}</dd></div>
</dl>
{"".join(sections)}
<script type="application/json" id="report-data">{_json_block(page_data(summary))}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def _width(seconds: int) -> str:
    return duration(seconds)
