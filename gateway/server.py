"""`scoregate serve`: the gateway built from settings, served by Hypercorn over our TLS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hypercorn.config import Config

from gateway import metrics
from gateway.service import build_gateway
from gateway.settings import GatewaySettings
from gateway.web.app import create_app
from gateway.web.protocol_errors import protocol_error_answers
from serving import logs, server, tls
from serving.certwatch import CertificateReloader

# After SIGTERM: requests in flight may take this long to finish (k8s: the pod's
# terminationGracePeriodSeconds covers it, tests/k8s/test_rollouts.py).
GRACEFUL_TIMEOUT_S = 10.0


def certificate(settings: GatewaySettings) -> CertificateReloader:
    """The listener's TLS context, rebuilt with the same profile when its files change."""
    cert, key = settings.cert_path, settings.key_path
    return CertificateReloader(
        lambda: tls.server_context(cert, key, profile=settings.tls_profile),
        cert=cert,
        key=key,
        interval_s=settings.tls_reload_interval_s,
    )


def hypercorn_config(settings: GatewaySettings, reloader: CertificateReloader) -> Config:
    config = server.hypercorn_config(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        keep_alive_timeout_s=settings.keep_alive_timeout_s,
        http1_parser=settings.http1_parser,
        tls=reloader,
    )
    config.alpn_protocols = tls.ALPN
    config.ssl_handshake_timeout = settings.handshake_timeout_s
    # Every read must complete within read_timeout: a client that stalls (or whose TLS
    # layer stops reading because it never takes our answers) is closed; uvloop then
    # bounds the TLS shutdown to 30 s before aborting (SECURITY.md: known limits).
    config.read_timeout = settings.read_timeout_s
    config.h11_max_incomplete_size = settings.max_header_bytes
    config.h2_max_header_list_size = settings.max_header_bytes
    # Streams one HTTP/2 connection may have open at once (Hypercorn's default is 100): one
    # connection holds no more than one caller may have in flight (the bulkhead).
    config.h2_max_concurrent_streams = settings.max_in_flight_per_principal
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    return config


async def _serve(settings: GatewaySettings) -> None:
    reloader = certificate(settings)
    config = hypercorn_config(settings, reloader)
    gw = build_gateway(settings)
    reloader.on_refused(gw.metrics.watch_certificate(lambda: reloader.served.not_after))
    app = create_app(gw)
    # Requests Hypercorn cannot parse are answered, limited and recorded like the rest.
    config.protocol_error_hook = protocol_error_answers(gw.request_path())  # type: ignore[attr-defined]

    async def metrics_listener() -> Callable[[], Awaitable[None]] | None:
        if not settings.metrics_port:
            return None
        runner = await metrics.serve(gw.metrics, settings.metrics_host, settings.metrics_port)
        return runner.cleanup

    # SIGTERM (Kubernetes stopping the pod): stop accepting, let in-flight requests
    # finish within graceful_timeout, then drain the audit queue (`Gateway.stop`).
    await server.serve(app, config, around=metrics_listener)


def run(settings: GatewaySettings) -> None:
    logs.configure(settings.log_level, settings.log_format)
    server.run(lambda: _serve(settings))
