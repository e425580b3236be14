"""Metrics on the internal listener only, and JSON logs apart from the audit trail."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.e2e
ROWS = [[5.1, 3.5, 1.4, 0.2]]


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from the Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_by_route_model_status_and_decision(stack: Stack) -> None:
    before = httpx.get(stack.metrics_url, timeout=5).text
    with stack.client() as client:
        allowed = client.post(
            "/v1/models/iris:predict",
            json={"instances": ROWS},
            headers={"api-key": stack.keys.iris},
        )
        denied = client.post(
            "/v1/models/iris-copy:predict",
            json={"instances": ROWS},
            headers={"api-key": stack.keys.iris},
        )
        unknown = client.post(
            "/v1/models/made-up-name:predict",
            json={"instances": ROWS},
            headers={"api-key": stack.keys.iris},
        )
    assert (allowed.status_code, denied.status_code, unknown.status_code) == (200, 403, 404)
    for request in (allowed, denied, unknown):
        stack.audit_for(request.headers["x-request-id"])  # counted with the audit record
    after = httpx.get(stack.metrics_url, timeout=5)
    assert after.status_code == 200
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    name = "scoregate_requests_total"
    ok = {"route": "predict", "model": "iris", "status": "200", "decision": "allow"}
    no = {"route": "predict", "model": "iris-copy", "status": "403", "decision": "deny"}
    assert sample(text, name, **ok) - sample(before, name, **ok) == 1
    assert sample(text, name, **no) - sample(before, name, **no) == 1
    # A name a client made up never becomes a label value (bounded cardinality).
    assert "made-up-name" not in text
    assert sample(text, "scoregate_request_seconds_count", route="predict", model="iris") >= 1
    for gauge in (
        "scoregate_key_staleness_seconds",
        "scoregate_audit_queue_depth",
        "scoregate_audit_lost",
        "scoregate_ratelimit_counters_evicted",
    ):
        assert re.search(rf"^{gauge} \S+$", text, re.MULTILINE), gauge
    assert sample(text, "scoregate_circuit_state", upstream="cpu") == 0


def test_metrics_and_admin_endpoints_are_not_on_the_public_listener(stack: Stack) -> None:
    with stack.client() as client:
        for path in ("/metrics", "/admin", "/docs", "/openapi.json", "/openapi.yaml", "/debug"):
            reply = client.get(path, headers={"api-key": stack.keys.iris})
            assert reply.status_code == 404, path
            assert "scoregate_requests" not in reply.text


def test_gateway_logs_are_json_lines_apart_from_the_audit_trail(stack: Stack) -> None:
    log = (stack.state / "logs" / "gateway.log").read_text().splitlines()
    assert log, "the gateway logged nothing at INFO"
    for line in log:
        entry = json.loads(line)
        assert {"timestamp", "level", "logger", "message"} <= entry.keys(), entry
        assert "request_id" not in entry or entry.get("logger") != "gateway.audit"
    assert any("metrics on http://127.0.0.1" in json.loads(line)["message"] for line in log)
