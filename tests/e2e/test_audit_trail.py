"""The audit trail of real gateway processes: shutdown drains and signs; stdout sink."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.audit.sinks import chain_files
from tests.conftest import Stack, scoregate

pytestmark = pytest.mark.e2e
ROWS = [[5.1, 3.5, 1.4, 0.2]]


def test_sigterm_drains_the_queue_and_signs_the_head(stack: Stack, spawn_gateway: Any) -> None:
    gateway = spawn_gateway()
    with gateway.client() as client:
        ids = [
            client.post(
                "/v1/models/iris:predict",
                json={"instances": ROWS},
                headers={"api-key": stack.keys.iris},
            ).headers["x-request-id"]
            for _ in range(20)
        ]
    gateway.proc.send_signal(signal.SIGTERM)  # as Kubernetes stops a pod
    assert gateway.proc.wait(timeout=20) == 0
    records = gateway.audit_records()
    assert {r["request_id"] for r in records if r["type"] == "request"} >= set(ids)
    assert records[-1]["type"] == "checkpoint"
    assert records[-1]["to_seq"] == records[-2]["seq"]
    out = scoregate("audit", "verify", str(gateway.state / "audit"), state=stack.state)
    assert out.returncode == 0, out.stdout
    assert "0 records after the last one" in out.stdout


def test_rotation_keeps_one_verifiable_chain_across_files(stack: Stack, spawn_gateway: Any) -> None:
    gateway = spawn_gateway(SCOREGATE_AUDIT_ROTATE_BYTES="4096")
    with gateway.client() as client:
        for _ in range(40):
            client.post(
                "/v1/models/iris:predict",
                json={"instances": ROWS},
                headers={"api-key": stack.keys.iris},
            )
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.proc.wait(timeout=20)
    files = chain_files(gateway.state / "audit")
    assert len(files) >= 3
    out = scoregate("audit", "verify", str(gateway.state / "audit"), state=stack.state)
    assert out.returncode == 0, out.stdout


def test_stdout_sink_writes_the_same_sealed_records(
    stack: Stack, spawn_gateway: Any, tmp_path: Path
) -> None:
    gateway = spawn_gateway(SCOREGATE_AUDIT_SINK="stdout")
    with gateway.client() as client:
        rid = client.post(
            "/v1/models/iris:predict",
            json={"instances": ROWS},
            headers={"api-key": stack.keys.iris},
        ).headers["x-request-id"]
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.proc.wait(timeout=20)
    log = next((gateway.state / "logs").glob("gateway-*.log")).read_bytes()
    # The process wrote the trail to stdout and its JSON logs to stderr; this test's log
    # file holds both streams, so it tells them apart by shape (logs name their logger).
    lines = [
        line
        for line in log.splitlines()
        if line.startswith(b'{"') and "logger" not in orjson.loads(line)
    ]
    records = [orjson.loads(line) for line in lines]
    assert rid in {r.get("request_id") for r in records}
    assert not (gateway.state / "audit" / "audit.jsonl").exists()
    trail = tmp_path / "stdout.jsonl"
    trail.write_bytes(b"\n".join(lines) + b"\n")
    out = scoregate("audit", "verify", str(trail), state=stack.state)
    assert out.returncode == 0, out.stdout
