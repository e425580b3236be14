"""The benchmarks still run and print their figures (a smoke run: no timing is judged)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_batching_benchmark_prints_b6_as_a_table_and_as_json(tmp_path: Path) -> None:
    out_file = tmp_path / "b6.json"
    run = subprocess.run(
        [sys.executable, "bench/batching.py", "--quick", "--json", str(out_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "B6: dynamic batching" in run.stdout
    figures = json.loads(out_file.read_text())
    assert json.loads(run.stdout.strip().splitlines()[-1]) == figures
    rows = figures["rows"]
    assert [(r["model"], r["concurrency"]) for r in rows] == [("digits", 1), ("digits", 16)]
    for row in rows:
        assert row["errors"] == 0
        assert row["ceiling_ips"] > 0 and row["batched_ips"] > 0 and row["batch1_ips"] > 0
        assert row["of_ceiling"] == pytest.approx(row["batched_ips"] / row["ceiling_ips"])
    # Sixteen clients at once: the scorer's own metrics show batches of more than one.
    assert rows[1]["mean_rows_per_pass"] > 1


FIGURES = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9")


def _bench_tools() -> str | None:
    """Why `make bench`'s tools are unavailable, or None when they are (installed if need be)."""
    if all(shutil.which(tool) for tool in ("wrk", "hey", "haproxy")):
        return None
    if os.geteuid() != 0:
        return "wrk, hey or haproxy is missing and cannot be installed without root"
    install = subprocess.run(
        ["bash", "bench/ensure-tools"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    if install.returncode != 0:
        return f"bench/ensure-tools could not install wrk, hey and haproxy: {install.stderr[-500:]}"
    return None


@pytest.mark.timeout(600)
def test_make_bench_quick_prints_b1_to_b9_as_a_table_and_as_json(tmp_path: Path) -> None:
    """`bench/run.py --quick`: every server starts, every target answers, every figure is
    reported (MLServer and Flask left out here: their side virtualenv is a large download)."""
    missing = _bench_tools()
    if missing:
        pytest.skip(missing)
    out_file = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--quick",
            "--without",
            "mlserver,flask",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out_file),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out_file.read_text())
    assert json.loads(run.stdout.strip().splitlines()[-1]) == result
    assert result["mode"] == "quick"
    figures = result["figures"]
    assert tuple(figures) == FIGURES
    for fid in FIGURES:
        assert fid in run.stdout
        assert {"value", "unit", "what"} <= figures[fid].keys()
    # Measured in a quick run; B3 needs MLServer (left out) and B6 is not run.
    for fid in ("B1", "B2", "B4", "B5", "B7", "B8", "B9"):
        assert isinstance(figures[fid]["value"], int | float), (fid, figures[fid])
    # B9: a polite client beside each abuse, as ratios; it was answered throughout.
    assert set(figures["B9"]["ratios"]) == {"wide_rows", "pipelining", "h2_rapid_reset"}
    assert not any(figures["B9"]["polite_failures"].values())
    assert figures["B3"]["value"] is None and figures["B3"]["skipped"]
    assert figures["B6"]["value"] is None and figures["B6"]["skipped"]
    assert figures["B1"]["api_key"] is not None and figures["B1"]["hey_cross_check"] is not None
    assert figures["B2"]["haproxy_added_ms"] is not None
    assert set(figures["B7"]["peak_rss_mib"]) == {"gateway", "scorer", "haproxy"}
    runs = {(r["tool"], r["target"], r["connections"]) for r in result["runs"]}
    assert runs == {
        ("wrk", "direct", 16),
        ("wrk", "gateway-jwt", 16),
        ("wrk", "gateway-apikey", 16),
        ("wrk", "haproxy", 16),
        ("wrk", "direct", 1),
        ("wrk", "gateway-jwt", 1),
        ("wrk", "haproxy", 1),
        ("hey", "gateway-jwt", 16),
        ("hey", "haproxy", 16),
    }
    for r in result["runs"]:
        assert r["requests"] > 0 and r["errors"] == 0, r
    # The gateway served them for real: every request audited, the chain verified.
    gateway_requests = sum(r["requests"] for r in result["runs"] if "gateway" in r["target"])
    assert result["audit"]["verified"] is True
    assert result["audit"]["records"] >= gateway_requests
