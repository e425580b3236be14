"""`scoregate audit verify|query|report|public-key` on a real signed trail."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from gateway.audit import signing
from gateway.audit.review import Filter, build_report, parse_time, percentile, query
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
    data = json.loads(audit(state, "report", "--json").stdout)
    assert (data["total"], data["allowed"], data["denied"]) == (6, 3, 3)
    by_pm = {
        (r["principal"], r["model"]): r["requests"] for r in data["requests_by_principal_and_model"]
    }
    assert by_pm == {
        ("alice", "iris"): 2,
        ("bob", "iris"): 2,
        ("bob", "wine"): 1,
        ("(anonymous)", "-"): 1,
    }
    assert data["denials_by_reason"] == {
        "scope_missing": 1,
        "rate_limit_principal": 1,
        "api_key_unknown": 1,
    }
    assert data["rate_limit_hits"] == {"bob": 1}
    assert data["latency_ms"] == {"p50": 0.5, "p90": 3.0, "p99": 3.0}  # nearest rank of 6
    text = audit(state, "report").stdout
    assert "requests 6   allowed 3   denied 3" in text
    page = tmp_path / "report.html"
    assert audit(state, "report", "--html", str(page)).returncode == 0
    html = page.read_text()
    assert html.startswith("<!doctype html>")
    assert html.count("<svg") == 4
    assert (
        "<script" not in html and "http://" not in html and "https://" not in html
    )  # self-contained


def test_report_escapes_hostile_names(tmp_path: Path) -> None:
    from gateway.audit.review import render_html

    records = [
        dict(
            subject="<script>alert(1)</script>",
            model="iris",
            decision="allow",
            reason="ok",
            status=200,
            latency_ms=1.0,
            route="predict",
            client="x",
        )
    ]
    html = render_html(build_report(records))
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_helpers() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert parse_time("2026-11-26T10:00:00Z").hour == 10
    assert (parse_time("0s") - parse_time("1h")).total_seconds() == pytest.approx(3600, abs=5)
    assert not Filter(subject="a").matches({"type": "checkpoint"})
    assert list(query([], Filter())) == []
