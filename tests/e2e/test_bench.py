"""The benchmarks still run and print their figures (a smoke run: no timing is judged)."""

from __future__ import annotations

import base64
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


FIGURES = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11")
CLIENTS = ROOT / ".venv-clients" / "bin" / "python"
# Triton's HTTP client builds the bodies B10 and B11 time, as tests/e2e/clients/
# triton_session.py calls it: images as BYTES (base64 text in JSON, raw in binary), iris
# rows as FP64, both outputs named with binary_data as the inputs.
TRITON_BODIES = """
import base64, json, sys
import numpy as np
import tritonclient.http as triton
cfg = json.load(sys.stdin)
pngs = [base64.b64decode(p) for p in cfg["pngs"]]
rows = np.asarray(cfg["rows"], dtype=np.float64)
out = {}
for binary in (False, True):
    items = pngs if binary else [base64.b64encode(p) for p in pngs]
    image = triton.InferInput("image", [len(items)], "BYTES")
    image.set_data_from_numpy(np.asarray(items, dtype=np.object_), binary_data=binary)
    table = triton.InferInput("measurements", list(rows.shape), "FP64")
    table.set_data_from_numpy(rows, binary_data=binary)
    for name, tensor, outputs in (
        ("digits", image, ("predict", "probabilities")),
        ("iris", table, ("predict", "predict_proba")),
    ):
        wanted = [triton.InferRequestedOutput(o, binary_data=binary) for o in outputs]
        body, size = triton.InferenceServerClient.generate_request_body([tensor], wanted)
        out[f"{name}-{'binary' if binary else 'json'}"] = [base64.b64encode(body).decode(), size]
json.dump(out, sys.stdout)
"""


def test_binary_bench_bodies_are_the_ones_tritonclient_builds() -> None:
    """B10 and B11 time the bytes a standard client sends: the bench's bodies and header
    sizes equal tritonclient.http's, byte for byte, JSON and binary."""
    from bench import binary

    if not CLIENTS.exists():
        pytest.fail(".venv-clients is missing: `make clients` installs the standard clients")
    pngs = [b"\x89PNG\r\n\x1a\n" + bytes(range(n, n + 40)) for n in range(3)]
    rows = binary.iris_rows(1000)
    built = subprocess.run(
        [str(CLIENTS), "-c", TRITON_BODIES],
        input=json.dumps(
            {"pngs": [base64.b64encode(p).decode() for p in pngs], "rows": rows.tolist()}
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    triton = {k: (base64.b64decode(b), size) for k, (b, size) in json.loads(built.stdout).items()}
    for encoding in ("json", "binary"):
        is_binary = encoding == "binary"
        items = pngs if is_binary else [base64.b64encode(p) for p in pngs]
        digits = binary.v2_request(
            "image", "BYTES", [len(items)], items, binary.DIGITS_OUTPUTS, binary=is_binary
        )
        iris = binary.v2_request(
            "measurements", "FP64", [1000, 4], rows, binary.IRIS_OUTPUTS, binary=is_binary
        )
        assert digits == triton[f"digits-{encoding}"]
        assert iris == triton[f"iris-{encoding}"]
    # Binary: the header, then 4-byte little-endian lengths and the raw PNGs; FP64 rows.
    body, size = triton["digits-binary"]
    assert body[size:] == b"".join(len(p).to_bytes(4, "little") + p for p in pngs)
    body, size = triton["iris-binary"]
    assert body[size:] == rows.astype("<f8").tobytes()


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
def test_make_bench_quick_prints_b1_to_b11_as_a_table_and_as_json(
    tmp_path: Path, digits_repo: Path
) -> None:
    """`bench/run.py --quick`: every server starts, every target answers, every figure is
    reported (MLServer and Flask left out here: their side virtualenv is a large download;
    B10's digits CNN is the suite's, trained once)."""
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
            "--digits-repo",
            str(digits_repo),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=420,
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
    for fid in ("B1", "B2", "B4", "B5", "B7", "B8", "B9", "B10", "B11"):
        assert isinstance(figures[fid]["value"], int | float), (fid, figures[fid])
    # B9: a polite client beside each abuse, as ratios; it was answered throughout.
    assert set(figures["B9"]["ratios"]) == {"wide_rows", "pipelining", "h2_rapid_reset"}
    assert not any(figures["B9"]["polite_failures"].values())
    assert figures["B3"]["value"] is None and figures["B3"]["skipped"]
    assert figures["B6"]["value"] is None and figures["B6"]["skipped"]
    assert figures["B1"]["api_key"] is not None and figures["B1"]["hey_cross_check"] is not None
    assert figures["B2"]["haproxy_added_ms"] is not None
    assert figures["B2"]["over_haproxy"] == pytest.approx(
        figures["B2"]["value"] / figures["B2"]["haproxy_added_ms"], rel=0.01
    )
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
    # B10 and B11: both paths of both models answered (checked once before timing) and
    # were timed without a failure, on their own stack whose audit trail verified.
    binary = result["binary"]
    assert binary["audit"]["verified"] is True
    assert {(r["model"], r["encoding"]) for r in binary["runs"]} == {
        (m, e) for m in ("digits", "iris") for e in ("json", "binary")
    }
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in binary["runs"])
    assert binary["audit"]["records"] >= sum(r["requests"] for r in binary["runs"])
    for fid in ("B10", "B11"):
        fig = figures[fid]
        assert fig["value"] == pytest.approx(fig["binary_rps"] / fig["json_rps"], rel=1e-2)
        assert fig["errors"] == 0 and fig["binary_p50_ms"] > 0 and fig["json_p50_ms"] > 0
        # Binary outputs are smaller than the same numbers and labels written in JSON.
        assert fig["response_bytes"]["binary"] < fig["response_bytes"]["json"]
        assert f"{fid:<4} {'digits' if fid == 'B10' else 'iris'}: JSON" in run.stdout
    # Raw PNGs are smaller than their base64; 1,000 FP64 rows are 32,000 bytes after the
    # header (iris's short decimals are fewer bytes as JSON text).
    assert figures["B10"]["request_bytes"]["binary"] < figures["B10"]["request_bytes"]["json"]
    assert 32_000 < figures["B11"]["request_bytes"]["binary"] < 32_400
