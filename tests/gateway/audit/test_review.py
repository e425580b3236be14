"""`scoregate audit verify|query|report|public-key` on a real signed trail."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pytest

from gateway.audit import signing
from gateway.audit.review import Filter, parse_time, query
from gateway.secretstore.localfile import LocalSecretStore
from tests.conftest import scoregate
from tests.gateway.audit.test_trail import event, write


@pytest.fixture
def state(tmp_path: Path) -> Path:
    async def make() -> None:
        signer = await signing.load_signer(LocalSecretStore(tmp_path / "secrets.json"), create=True)
        events = [
            event(
                1, subject="alice", model="iris", latency_ms=1.0, time="2026-11-26T10:00:00.000Z"
            ),
            event(
                2, subject="alice", model="iris", latency_ms=2.0, time="2026-11-26T10:01:00.000Z"
            ),
            event(3, subject="bob", model="wine", latency_ms=3.0, time="2026-11-26T10:02:00.000Z"),
            event(
                4,
                subject="bob",
                model="iris",
                decision="deny",
                reason="scope_missing",
                status=403,
                latency_ms=0.5,
                time="2026-11-26T10:03:00.000Z",
            ),
            event(
                5,
                subject="bob",
                model="iris",
                decision="deny",
                reason="rate_limit_principal",
                status=429,
                latency_ms=0.4,
                time="2026-11-26T10:04:00.000Z",
            ),
            event(
                6,
                subject=None,
                key_id=None,
                model=None,
                decision="deny",
                reason="api_key_unknown",
                status=401,
                latency_ms=0.3,
                time="2026-11-26T11:00:00.000Z",
            ),
        ]
        await write(tmp_path / "audit" / "audit.jsonl", events, signer=signer, checkpoint_every=4)

    asyncio.run(make())
    return tmp_path


def audit(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return scoregate("audit", *args, state=state)


def test_verify_checks_chain_and_signatures(state: Path) -> None:
    out = audit(state, "verify")
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.strip()
        == "ok: 8 records, chain intact; 2 signed checkpoints, 0 records after the last one"
    )


def test_verify_with_an_exported_public_key(state: Path, tmp_path: Path) -> None:
    exported = audit(state, "public-key")
    assert exported.returncode == 0
    pem = tmp_path / "audit.pub"
    pem.write_text(exported.stdout)
    assert "PRIVATE" not in exported.stdout
    out = audit(tmp_path / "elsewhere", "verify", "--public-key", str(pem), str(state / "audit"))
    assert out.returncode == 0, out.stdout + out.stderr
    wrong = tmp_path / "other.pub"
    other = asyncio.run(signing.generate(LocalSecretStore(tmp_path / "other.json")))
    wrong.write_text(signing.public_key_pem(other.private_key.public_key()))
    bad = audit(tmp_path / "elsewhere", "verify", "--public-key", str(wrong), str(state / "audit"))
    assert bad.returncode == 1
    assert "unknown key" in bad.stdout


def test_verify_without_any_key_refuses_unless_chain_only(tmp_path: Path, state: Path) -> None:
    assert audit(tmp_path / "nokeys", "verify", str(state / "audit")).returncode == 2
    chain = audit(tmp_path / "nokeys", "verify", "--chain-only", str(state / "audit"))
    assert chain.returncode == 0
    assert "signatures not checked" in chain.stdout


def test_query_filters_and_formats(state: Path) -> None:
    out = audit(state, "query", "--subject", "bob", "--decision", "deny", "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["reason"] for r in rows] == ["scope_missing", "rate_limit_principal"]
    table = audit(state, "query", "--model", "iris", "--status", "200").stdout.splitlines()
    assert table[0].startswith("TIME")
    assert len(table) == 3  # header + alice's two
    ranged = audit(
        state,
        "query",
        "--since",
        "2026-11-26T10:01:30Z",
        "--until",
        "2026-11-26T10:03:30Z",
        "--json",
    )
    assert [json.loads(x)["request_id"] for x in ranged.stdout.splitlines()] == [
        "req-00000003",
        "req-00000004",
    ]


def test_report_as_json_text_and_html(state: Path, tmp_path: Path) -> None:
    out = audit(state, "report", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert list(data)[:2] == ["banner", "integrity"]  # integrity first
    assert data["banner"] == (
        "INTACT: 8 records (seq 1\N{EN DASH}8), chain unbroken; 2 checkpoints signed by key "
        f"{signer_id(state)} (2); 0 records after the last one"
    )
    assert (data["total"], data["allowed"], data["denied"], data["rate_limited"]) == (6, 3, 3, 1)
    assert data["range"]["text"] == "26 Nov 2026 10:00\N{EN DASH}11:00 UTC (1 h)"
    by_pm = {
        (r["principal"], r["model"]): r["requests"] for r in data["requests_by_principal_and_model"]
    }
    assert by_pm == {
        ("alice", "iris"): 2,
        ("bob", "iris"): 2,
        ("bob", "wine"): 1,
        ("(anonymous)", "-"): 1,
    }
    assert [(r["reason"], r["count"]) for r in data["denials_by_reason"]] == [
        ("api_key_unknown", 1),
        ("rate_limit_principal", 1),
        ("scope_missing", 1),
    ]
    bob = next(r for r in data["denials_by_principal"] if r["principal"] == "bob")
    assert (bob["count"], bob["first_seen"], bob["last_seen"]) == (
        2,
        "2026-11-26T10:03:00Z",
        "2026-11-26T10:04:00Z",
    )
    assert [(r["who"], r["count"]) for r in data["rate_limit_hits"]] == [("bob", 1)]
    # Latency of allowed requests only: 1, 2 and 3 ms.
    assert data["latency_ms"]["all"] == {"count": 3, "p50": 2.0, "p90": 3.0, "p99": 3.0}
    assert data["latency_ms"]["by_model"]["wine"] == {
        "count": 1,
        "p50": 3.0,
        "p90": 3.0,
        "p99": 3.0,
    }
    # An hour's range: 30 s buckets; the records fall in 6 of them.
    assert data["bucket_s"] == 30
    assert [(r["start"], r["requests"], r["denied"]) for r in data["over_time"]] == [
        ("2026-11-26T10:00:00Z", 1, 0),
        ("2026-11-26T10:01:00Z", 1, 0),
        ("2026-11-26T10:02:00Z", 1, 0),
        ("2026-11-26T10:03:00Z", 1, 1),
        ("2026-11-26T10:04:00Z", 1, 1),
        ("2026-11-26T11:00:00Z", 1, 1),
    ]
    text = audit(state, "report").stdout
    assert text.splitlines()[0] == data["banner"]
    assert "requests 6   allowed 3   denied 3   rate-limited (429) 1" in text
    page = tmp_path / "report.html"
    written = audit(state, "report", "--html", str(page))
    assert written.returncode == 0
    assert written.stdout.splitlines() == [data["banner"], f"wrote {page}"]
    html = page.read_text()
    assert html.startswith("<!doctype html>")
    assert f'role="status">{data["banner"]}</p>' in html
    # Self-contained: nothing loads from elsewhere, and the policy says so.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "default-src 'none'; script-src 'sha256-" in html and "unsafe-inline" not in html


def signer_id(state: Path) -> str:
    keys = asyncio.run(signing.public_keys(LocalSecretStore(state / "secrets.json")))
    return next(iter(keys))


def test_report_of_a_broken_trail_says_so_first_and_exits_1(state: Path, tmp_path: Path) -> None:
    trail = state / "audit" / "audit.jsonl"
    lines = trail.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"subject":"alice"', b'"subject":"mallory"')  # an edit
    trail.write_bytes(b"".join(lines))
    text = audit(state, "report")
    assert text.returncode == 1
    first = text.stdout.splitlines()[0]
    assert first == (
        f"BROKEN: {trail}:2: record was altered; the 1 record before it verified, "
        "7 after it not verified"
    )
    data = json.loads(audit(state, "report", "--json").stdout)
    assert data["banner"] == first and data["integrity"]["ok"] is False
    # What follows the break is still shown (marked as not verified), the edit included.
    assert data["total"] == 6
    assert {r["principal"] for r in data["requests_by_principal_and_model"]} >= {"mallory"}
    page = tmp_path / "broken.html"
    assert audit(state, "report", "--html", str(page)).returncode == 1
    html = page.read_text()
    assert "<title>BROKEN" in html
    assert f'<p id="banner" class="banner broken" role="alert">{first}</p>' in html


def test_report_needs_a_key_or_chain_only(state: Path, tmp_path: Path) -> None:
    nokeys = audit(tmp_path / "nokeys", "report", str(state / "audit"))
    assert nokeys.returncode == 2
    assert "give --public-key or --chain-only" in nokeys.stderr
    chain = audit(tmp_path / "nokeys", "report", "--chain-only", str(state / "audit"))
    assert chain.returncode == 0
    assert chain.stdout.startswith("INTACT (chain only, signatures not checked): 8 records")
    missing = audit(state, "report", str(tmp_path / "nowhere.jsonl"))
    assert missing.returncode == 2
    assert "nowhere.jsonl: no such audit trail file" in missing.stderr


def test_report_range_and_first_calls_against_the_records_before_it(state: Path) -> None:
    data = json.loads(audit(state, "report", "--json", "--since", "2026-11-26T10:02:00Z").stdout)
    assert data["total"] == 4
    first = data["first_calls"]
    assert (first["baseline_records"], first["baseline_from"]) == (2, "2026-11-26T10:00:00Z")
    # alice called iris before the range; bob's calls are all new.
    assert [(c["principal"], c["model"], c["requests"]) for c in first["calls"]] == [
        ("bob", "wine", 1),
        ("bob", "iris", 2),
    ]
    assert data["range"]["text"].startswith("26 Nov 2026 10:02\N{EN DASH}11:00 UTC")


def test_query_key_usage(state: Path) -> None:
    out = audit(state, "query", "--key-usage", "--json", "--since", "2026-11-26T10:03:00Z")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows == [
        {
            "key_id": "k" * 16,
            "key_version": "v1",
            "principal": "bob",
            "requests": 2,
            "allowed": 0,
            "denied": 2,
            "first_used": "2026-11-26T10:03:00Z",
            "last_used": "2026-11-26T10:04:00Z",
            "clients": {"127.0.0.1": 2},
        }
    ]


def test_report_escapes_hostile_names(tmp_path: Path) -> None:
    from gateway.audit.report import Integrity, Summary
    from gateway.audit.report.figures import figures
    from gateway.audit.report.page import render_html

    summary = Summary()
    summary.add(
        dict(
            time="2026-11-26T10:00:00.000Z",
            subject="</script><script>alert(1)</script>",
            model="<img src=x onerror=alert(2)>",
            decision="deny",
            reason="scope_missing",
            status=403,
            latency_ms=1.0,
            route="predict",
            client="x",
            key_id="k",
            key_version="v",
        )
    )
    html = render_html(figures(summary, Integrity([])), summary)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in html  # in the tables, escaped
    assert "\\u003c/script>\\u003cscript>alert(1)" in html  # in the data block


def test_helpers() -> None:
    assert parse_time("2026-11-26T10:00:00Z").hour == 10
    assert (parse_time("0s") - parse_time("1h")).total_seconds() == pytest.approx(3600, abs=5)
    assert not Filter(subject="a").matches({"type": "checkpoint"})
    assert list(query([], Filter())) == []


async def test_replicas_are_verified_each_and_summarised_on_one_timeline(tmp_path: Path) -> None:
    """A container's replicas: each chain verified and named, the records merged by time
    (a burst of failed authentications spread over two replicas is still one burst)."""
    from gateway.audit.report import summarise
    from gateway.audit.report.figures import figures

    store = LocalSecretStore(tmp_path / "secrets.json")
    signer = await signing.load_signer(store, create=True)
    keys = await signing.public_keys(store)
    failure = dict(subject=None, key_id=None, model=None, decision="deny", status=401)
    for replica, offset in (("replica-a", 0), ("replica-b", 1)):
        events = [
            event(
                10 * i + offset,
                client="203.0.113.5",
                reason="api_key_unknown",
                time=f"2026-11-26T10:00:{10 * i + offset:02d}.000Z",
                **failure,
            )
            for i in range(3)
        ]
        await write(tmp_path / replica / "audit.jsonl", events, signer=signer, checkpoint_every=10)
    trails = {name: [tmp_path / name] for name in ("replica-a", "replica-b")}
    summary, integrity = summarise(trails, keys)
    report = figures(summary, integrity)
    assert integrity.ok
    assert report["banner"].startswith("INTACT: 2 trails, 8 records, every chain unbroken; ")
    assert "replica-a: 4 records (seq 1\N{EN DASH}4)" in report["banner"]
    assert report["total"] == 6
    assert [(b["address"], b["failures"]) for b in report["failed_auth_bursts"]["bursts"]] == [
        ("203.0.113.5", 6)
    ]
    # One replica edited: the report names it.
    broken = tmp_path / "replica-b" / "audit.jsonl"
    broken.write_bytes(broken.read_bytes().replace(b"203.0.113.5", b"203.0.113.6", 1))
    summary, integrity = summarise(trails, keys)
    assert not integrity.ok
    assert integrity.banner == (
        f"BROKEN: replica-b: {broken}:1: record was altered; the 0 records before it "
        "verified, 4 after it not verified"
    )
