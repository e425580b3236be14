"""Build the gateway from settings and serve it with Hypercorn over our own TLS context."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from hypercorn.asyncio import serve
from hypercorn.config import Config

from gateway import logs, metrics, tls, transport
from gateway.app import Gateway, create_app
from gateway.audit import AuditSink, AuditTrail, FileSink, StdoutSink
from gateway.forward import Forwarder
from gateway.jwtauth import JWTValidator
from gateway.keyring import KeyRing
from gateway.policy import AccessPolicy, RouteTable
from gateway.ratelimit import Limiter, RateLimitPolicy
from gateway.secretstore import open_store
from gateway.settings import GatewaySettings
from gateway.tokens import load_issuers


class TLSConfig(Config):
    """Hypercorn config that serves our `ssl.SSLContext` instead of building its own.

    Hypercorn's `create_ssl_context` resets the options and pins its own ciphers; ours
    follows Mozilla's profiles exactly (see `gateway.tls`).
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self._context = context

    def create_ssl_context(self) -> ssl.SSLContext:
        return self._context


def build_audit(settings: GatewaySettings) -> AuditTrail:
    sink: AuditSink
    if settings.audit_sink == "stdout":
        sink = StdoutSink()
    else:
        sink = FileSink(
            settings.audit_file,
            fsync=settings.audit_fsync,
            rotate_bytes=settings.audit_rotate_bytes,
            rotate_interval_s=settings.audit_rotate_interval_s,
        )
    return AuditTrail(
        sink,
        queue_size=settings.audit_queue_size,
        checkpoint_every=settings.audit_checkpoint_every,
        checkpoint_interval_s=settings.audit_checkpoint_interval_s,
        linger_s=settings.audit_linger_ms / 1000,
    )


def build_gateway(settings: GatewaySettings) -> Gateway:
    routes = RouteTable.load(settings.routes_file)
    store = open_store(settings)
    limits = RateLimitPolicy.load(settings.rate_limit_policy_file, routes.models)
    validator = JWTValidator(load_issuers(settings.jwt_issuers_file))
    return Gateway(
        settings=settings,
        store=store,
        keys=KeyRing(
            store,
            refresh_interval_s=settings.key_refresh_interval_s,
            on_jwt_keys=validator.set_keys,
        ),
        jwt=validator,
        routes=routes,
        access=AccessPolicy.load(settings.access_policy_file, routes),
        forwarder=Forwarder(
            max_response_bytes=settings.max_response_bytes,
            tls=tls.upstream_context(
                settings.upstream_ca, settings.upstream_client_cert, settings.upstream_client_key
            ),
        ),
        limiter=Limiter(
            limits,
            settings.rate_limit_storage,
            settings.rate_limit_on_storage_failure,
            settings.rate_limit_memory_max_keys,
        ),
        audit=build_audit(settings),
    )


def hypercorn_config(settings: GatewaySettings) -> Config:
    context = tls.server_context(
        settings.cert_path, settings.key_path, profile=settings.tls_profile
    )
    config = TLSConfig(context)
    config.bind = [f"{settings.host}:{settings.port}"]
    # Hypercorn serves TLS only when these are set; the files are the ones in our context.
    config.certfile = str(settings.cert_path)
    config.keyfile = str(settings.key_path)
    config.alpn_protocols = tls.ALPN
    config.include_server_header = False  # no banner naming the software
    config.ssl_handshake_timeout = settings.handshake_timeout_s
    config.keep_alive_timeout = settings.keep_alive_timeout_s
    # Every read must complete within read_timeout: a client that stalls (or whose TLS
    # layer stops reading because it never takes our answers) is closed; uvloop then
    # bounds the TLS shutdown to 30 s before aborting (SECURITY.md: known limits).
    config.read_timeout = settings.read_timeout_s
    config.h11_max_incomplete_size = settings.max_header_bytes
    config.h2_max_header_list_size = settings.max_header_bytes
    config.graceful_timeout = 10.0
    config.accesslog = None  # the audit trail is the access record
    # Hypercorn's own messages go through our (JSON) root handler, not a handler of its own.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.loglevel = settings.log_level
    return config


async def _serve(settings: GatewaySettings) -> None:
    transport.install()  # one write per response, no task per read (gateway/transport.py)
    config = hypercorn_config(settings)
    gw = build_gateway(settings)
    app = create_app(gw)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics_server = None
    if settings.metrics_port:
        metrics_server = await metrics.serve(
            gw.metrics, settings.metrics_host, settings.metrics_port
        )
    try:
        # SIGTERM (Kubernetes stopping the pod): stop accepting, let in-flight requests
        # finish within graceful_timeout, then drain the audit queue (`Gateway.stop`).
        await serve(app, config, shutdown_trigger=stop.wait)
    finally:
        if metrics_server is not None:
            await metrics_server.cleanup()


def run(settings: GatewaySettings) -> None:
    logs.configure(settings.log_level, settings.log_format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(_serve(settings))
    else:
        uvloop.run(_serve(settings))
