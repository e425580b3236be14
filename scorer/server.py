"""Start a scorer: load every model of the repository for this process's runtimes, serve."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from hypercorn.config import Config
from prometheus_client import CollectorRegistry, start_http_server

from scorer.app import create_app
from scorer.repository import discover
from scorer.runtime import Runtime, load_runtime
from scorer.settings import ScorerSettings
from serving import logs, server, tls
from serving.certwatch import CertificateReloader

log = logging.getLogger("scorer")


def load_models(settings: ScorerSettings) -> dict[str, Runtime]:
    """Load every model; any digest mismatch or bad settings stops the start (ArtifactError)."""
    return {
        model.name: load_runtime(folder, model)
        for folder, model in discover(settings.repository, settings.runtimes)
    }


def hypercorn_config(settings: ScorerSettings) -> Config:
    listener = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
        # TLS 1.3 only (both ends are ours); with a client CA, client certificates required.
        # Renewed files (certificate, key, client CA) serve new handshakes without a restart.
        listener = CertificateReloader(
            lambda: tls.internal_server_context(cert, key, client_ca=client_ca),
            cert=cert,
            key=key,
            client_ca=client_ca,
            interval_s=settings.tls_reload_interval_s,
        )
    return server.hypercorn_config(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        keep_alive_timeout_s=settings.keep_alive_timeout_s,
        http1_parser=settings.http1_parser,
        tls=listener,
    )


async def _serve(settings: ScorerSettings) -> None:
    models = load_models(settings)
    log.warning("scorer serving %s on %s:%s", sorted(models), settings.host, settings.port)
    registry = CollectorRegistry()
    app = create_app(
        models,
        max_body_bytes=settings.max_body_bytes,
        registry=registry,
        inline_budget_s=settings.inline_predict_us / 1e6,
    )

    async def metrics_listener() -> Callable[[], Awaitable[None]] | None:
        if not settings.metrics_port:
            return None
        # prometheus_client's own exposition server: GET /metrics, in a thread of its own.
        httpd, _ = start_http_server(settings.metrics_port, settings.metrics_host, registry)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)

        async def stop() -> None:
            await asyncio.to_thread(httpd.shutdown)
            httpd.server_close()

        return stop

    await server.serve(app, hypercorn_config(settings), around=metrics_listener)


def run(settings: ScorerSettings) -> None:
    logs.configure(settings.log_level, settings.log_format)
    server.run(lambda: _serve(settings))
