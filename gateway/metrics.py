"""Prometheus metrics, served on an internal port only (SECURITY-CATALOG: "admin,
metrics and docs endpoints are not on the public listener"; OWASP API9).

Every request is counted once, from its audit event, so metrics and the audit trail can
never disagree on what happened. Label values are bounded: the route is the matched
endpoint name, the model only a routed model's name (never a name a client made up),
the status an integer, the decision allow or deny.

The listener is a small aiohttp server in the gateway's own event loop, plain HTTP,
bound to ``metrics_host:metrics_port`` (loopback by default; on AKS the pod IP, reached
only by the monitoring namespace through a NetworkPolicy).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as render

from gateway.audit.record import AuditEvent

log = logging.getLogger("gateway.metrics")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_CIRCUIT = {"closed": 0, "half_open": 1, "open": 2}


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "scoregate_requests",
            "Requests by route, model, status and decision",
            ["route", "model", "status", "decision"],
            registry=r,
        )
        self.latency = Histogram(
            "scoregate_request_seconds",
            "Time from the first byte of a request to its response",
            ["route", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "scoregate_upstream_errors",
            "Scorer faults by upstream and reason (connect, timeout, malformed, circuit open)",
            ["upstream", "reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "scoregate_rate_limited", "Requests refused with 429, by limit", ["limit"], registry=r
        )
        self.circuit = Gauge(
            "scoregate_circuit_state",
            "Circuit breaker per upstream: 0 closed, 1 half-open, 2 open",
            ["upstream"],
            registry=r,
        )
        self.key_staleness = Gauge(
            "scoregate_key_staleness_seconds",
            "Seconds since the keys were last loaded from the secret store",
            registry=r,
        )
        self.audit_depth = Gauge(
            "scoregate_audit_queue_depth", "Audit records waiting to be written", registry=r
        )
        self.audit_lost = Gauge(
            "scoregate_audit_lost",
            "Audit records lost (only with audit_on_failure=open)",
            registry=r,
        )
        self.audit_unshipped = Gauge(
            "scoregate_audit_unshipped_bytes",
            "Audit spool bytes not yet in the audit store (Blob Storage sink only)",
            registry=r,
        )
        self.tls_not_after = Gauge(
            "scoregate_tls_certificate_expiry_timestamp_seconds",
            "When the TLS certificate served to new handshakes expires (Unix time)",
            registry=r,
        )
        self.tls_reload_failures = Counter(
            "scoregate_tls_reload_failures",
            "Renewed TLS files refused (unreadable, key mismatch, outside their validity);"
            " the previous certificate is still served",
            registry=r,
        )
        self.ratelimit_evicted = Gauge(
            "scoregate_ratelimit_counters_evicted",
            "In-process rate-limit counts forgotten early to stay under their memory cap",
            registry=r,
        )

    def observe(self, event: AuditEvent, upstream: str | None) -> None:
        model = event.model or "-"
        self.requests.labels(event.route, model, str(event.status), event.decision).inc()
        self.latency.labels(event.route, model).observe(event.latency_ms / 1000)
        reason = event.reason
        if upstream is not None and (reason.startswith("upstream_") or reason == "circuit_open"):
            if reason != "upstream_rejected_input":  # the client's input, not a fault
                self.upstream_errors.labels(upstream, reason).inc()
        elif reason.startswith("rate_limit_"):
            self.rate_limited.labels(reason.removeprefix("rate_limit_")).inc()

    def watch(
        self,
        *,
        staleness: Callable[[], float | None],
        audit_depth: Callable[[], int],
        audit_lost: Callable[[], int],
        ratelimit_evicted: Callable[[], int],
    ) -> None:
        """Gauges read at scrape time, from the components that own the numbers."""
        self.key_staleness.set_function(lambda: staleness() or 0.0)
        self.audit_depth.set_function(audit_depth)
        self.audit_lost.set_function(audit_lost)
        self.ratelimit_evicted.set_function(ratelimit_evicted)

    def watch_certificate(self, not_after: Callable[[], dt.datetime]) -> Callable[[str], None]:
        """The served certificate's expiry, read at scrape time; returns what counts a
        refused reload (`serving.certwatch.CertificateReloader.on_refused`)."""
        self.tls_not_after.set_function(lambda: not_after().timestamp())
        return lambda _reason: self.tls_reload_failures.inc()

    def circuit_changed(self, upstream: str) -> Callable[[str], None]:
        gauge = self.circuit.labels(upstream)
        gauge.set(0)
        return lambda state: gauge.set(_CIRCUIT[state])


async def serve(metrics: GatewayMetrics, host: str, port: int) -> web.AppRunner:
    """Start the internal listener: ``GET /metrics`` and nothing else."""

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(
            body=render(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("metrics on http://%s:%d/metrics", host, port)
    return runner
