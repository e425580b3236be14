"""The benchmarks still run and print their figures (a smoke run: no timing is judged)."""

from __future__ import annotations

import json
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
