"""Start a scorer: load every model of the repository for this process's runtimes, serve."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from hypercorn.asyncio import serve
from hypercorn.config import Config
from pythonjsonlogger.json import JsonFormatter

from gateway import transport
from scorer.app import create_app
from scorer.repository import discover
from scorer.runtime import Runtime, load_runtime
from scorer.settings import ScorerSettings

log = logging.getLogger("scorer")


def load_models(settings: ScorerSettings) -> dict[str, Runtime]:
    """Load every model; any digest mismatch or bad settings stops the start (ArtifactError)."""
    return {
        model.name: load_runtime(folder, model)
        for folder, model in discover(settings.repository, settings.runtimes)
    }


class _TLSConfig(Config):
    """Hypercorn with our own TLS context (its own would overwrite our options)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self._context = context

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._context


def server_context(settings: ScorerSettings) -> ssl.SSLContext:
    """TLS 1.3 only (both ends are ours); with a client CA, client certificates required."""
    assert settings.tls_cert is not None and settings.tls_key is not None  # noqa: S101
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_client_ca is not None:
        # Mutual TLS: no certificate, or one from another CA, fails the handshake.
        context.load_verify_locations(str(settings.tls_client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def hypercorn_config(settings: ScorerSettings) -> Config:
    if settings.tls_cert is not None and settings.tls_key is not None:
        config: Config = _TLSConfig(server_context(settings))
        # Hypercorn serves TLS only when these are set; the files are those in our context.
        config.certfile, config.keyfile = str(settings.tls_cert), str(settings.tls_key)
    else:
        config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.include_server_header = False
    config.keep_alive_timeout = settings.keep_alive_timeout_s
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our JSON handler
    config.loglevel = settings.log_level
    return config


async def _serve(settings: ScorerSettings) -> None:
    transport.install()  # one write per response, no task per read (gateway/transport.py)
    models = load_models(settings)
    log.warning("scorer serving %s on %s:%s", sorted(models), settings.host, settings.port)
    app = create_app(
        models,
        max_body_bytes=settings.max_body_bytes,
        inline_budget_s=settings.inline_predict_us / 1e6,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(app, hypercorn_config(settings), shutdown_trigger=stop.wait)


def configure_logging(settings: ScorerSettings) -> None:
    """One JSON object per line on stderr (python-json-logger), or text for a terminal."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp=True,
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().handlers = [handler]
    logging.getLogger().setLevel(settings.log_level.upper())


def run(settings: ScorerSettings) -> None:
    configure_logging(settings)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(_serve(settings))
    else:
        uvloop.run(_serve(settings))
