"""What the gateway's metrics count, from audit events."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from gateway.audit.record import AuditEvent
from gateway.metrics import GatewayMetrics


def event(**fields: Any) -> AuditEvent:
    base: dict[str, Any] = {
        "time": "2026-01-01T00:00:00.000Z",
        "request_id": "r",
        "client_request_id": None,
        "client": "127.0.0.1",
        "method": "POST",
        "path": "/v1/models/iris:predict",
        "route": "predict_v1",
        "model": "iris",
        "subject": "alice",
        "credential": "api_key",
        "key_id": "k",
        "key_version": "1",
        "decision": "allow",
        "reason": "ok",
        "status": 200,
        "latency_ms": 12.5,
        "bytes_in": 10,
        "bytes_out": 20,
        "payload_sha256": None,
        "instances": 1,
        "limiter": "memory",
    }
    return AuditEvent(**{**base, **fields})


def test_upstream_faults_and_rate_limits_are_counted_apart_from_client_errors() -> None:
    m = GatewayMetrics(CollectorRegistry())
    m.observe(event(status=504, decision="allow", reason="upstream_timeout"), "cpu")
    m.observe(event(status=503, decision="allow", reason="circuit_open"), "cpu")
    m.observe(event(status=422, decision="deny", reason="upstream_rejected_input"), "cpu")
    m.observe(event(status=429, decision="deny", reason="rate_limit_per_principal"), "cpu")
    m.observe(event(status=401, decision="deny", reason="api_key_unknown", model=None), None)
    get = m.registry.get_sample_value
    assert (
        get("scoregate_upstream_errors_total", {"upstream": "cpu", "reason": "upstream_timeout"})
        == 1
    )
    assert (
        get("scoregate_upstream_errors_total", {"upstream": "cpu", "reason": "circuit_open"}) == 1
    )
    assert (
        get(
            "scoregate_upstream_errors_total",
            {"upstream": "cpu", "reason": "upstream_rejected_input"},
        )
        is None
    )
    assert get("scoregate_rate_limited_total", {"limit": "per_principal"}) == 1
    assert (
        get(
            "scoregate_requests_total",
            {"route": "predict_v1", "model": "-", "status": "401", "decision": "deny"},
        )
        == 1
    )
    assert (
        get("scoregate_request_seconds_sum", {"route": "predict_v1", "model": "iris"}) == 0.05
    )  # 4 x 12.5 ms


def test_circuit_state_follows_the_breaker() -> None:
    m = GatewayMetrics(CollectorRegistry())
    change = m.circuit_changed("gpu")
    assert m.registry.get_sample_value("scoregate_circuit_state", {"upstream": "gpu"}) == 0
    change("open")
    assert m.registry.get_sample_value("scoregate_circuit_state", {"upstream": "gpu"}) == 2
    change("half_open")
    assert m.registry.get_sample_value("scoregate_circuit_state", {"upstream": "gpu"}) == 1
