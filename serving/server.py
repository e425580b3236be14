"""Hypercorn for both processes: one config builder, our TLS context, run until SIGTERM.

    gateway.server ─┐
                    ├─▶ hypercorn_config() ─▶ serve() ─▶ Hypercorn (patched, see hazmat)
    scorer.server  ─┘                          run(): uvloop when present

Each process adds only its own settings to the config (the gateway: handshake, read and
header limits, ALPN; the scorer: nothing more). With TLS, `serve` also runs the
certificate reloader (`serving.certwatch`): renewed files are served without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework

from serving.certwatch import CertificateReloader
from serving.hazmat import hypercorn_h11, llhttp_h1

# Which code reads HTTP/1.1 requests: llhttp (httptools; serving/hazmat/llhttp_h1.py) or
# h11, Hypercorn's own. The same answers byte for byte (tests/serving/
# test_http1_differential.py); llhttp costs a fifth of h11's CPU (bench/http1.py).
HTTP1Parser = Literal["llhttp", "h11"]


class TLSConfig(Config):
    """Hypercorn config that serves our `ssl.SSLContext` instead of building its own.

    Hypercorn's `create_ssl_context` resets the options and pins its own ciphers; ours
    follows the profile `serving.tls` builds. Hypercorn calls it once, at start: the
    reloader's listening context hands each new handshake the latest certificate.
    """

    def __init__(self, tls: CertificateReloader) -> None:
        super().__init__()
        self.tls = tls

    def create_ssl_context(self) -> ssl.SSLContext:
        return self.tls.context


def hypercorn_config(
    *,
    host: str,
    port: int,
    log_level: str,
    keep_alive_timeout_s: float,
    http1_parser: HTTP1Parser,
    tls: CertificateReloader | None = None,
) -> Config:
    """The settings both processes share; ``tls``: serve TLS from the reloader's files."""
    if tls is not None:
        config: Config = TLSConfig(tls)
        # Hypercorn serves TLS only when these are set; the files are those in our context.
        config.certfile, config.keyfile = str(tls.cert), str(tls.key)
    else:
        config = Config()
    config.bind = [f"{host}:{port}"]
    config.include_server_header = False  # no banner naming the software
    config.keep_alive_timeout = keep_alive_timeout_s
    config.http1_parser = http1_parser  # type: ignore[attr-defined]  # read by serving.hazmat
    config.accesslog = None  # the gateway's audit trail is the access record
    # Hypercorn's own messages go through our (JSON) root handler, not a handler of its own.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.loglevel = log_level
    return config


async def serve(
    app: ASGIFramework,
    config: Config,
    *,
    around: Callable[[], Awaitable[Callable[[], Awaitable[None]] | None]] | None = None,
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then stop as Hypercorn does: stop accepting,
    let in-flight requests finish within ``graceful_timeout``, run the app's shutdown.

    ``around``, when given, starts something beside the app (the metrics listener) and
    returns how to stop it once serving has ended (None: nothing was started).
    """
    # One write per response, no task per read, the HTTP/1.1 parser chosen (serving.hazmat).
    hypercorn_h11.install({"llhttp": llhttp_h1.LlhttpProtocol})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    cleanup = await around() if around is not None else None
    reload = (
        asyncio.create_task(config.tls.watch(), name="certificate-reload")
        if isinstance(config, TLSConfig)
        else None
    )
    try:
        await hypercorn_serve(app, config, shutdown_trigger=stop.wait)
    finally:
        if reload is not None:
            reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reload
        if cleanup is not None:
            await cleanup()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop where it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(main())
    else:
        uvloop.run(main())
