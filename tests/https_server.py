"""Servers on their own event loop in a thread: an aiohttp application over TLS on
127.0.0.1, what the stand-ins for Key Vault, Azure Resource Manager and the Kubernetes API
run on, and the base the CONNECT proxy runs on."""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path

from aiohttp import web


class LoopThread:
    """A server on its own event loop in a daemon thread: ``_open`` starts it on the loop
    (and sets ``port``), ``_close`` shuts it down there. The stand-ins and the proxy of
    the suite all run this way, beside the tests' own loops."""

    name = "the test server"

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._open())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class AiohttpOverTls(LoopThread):
    """An aiohttp application over TLS on 127.0.0.1 (``port`` 0: a free one)."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext, port: int = 0) -> None:
        super().__init__()
        self.app = app
        self.port = port
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    async def _open(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def server_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    return context


class ThreadedHttpsApp(AiohttpOverTls):
    name = "the HTTPS stand-in"

    def __init__(self, app: web.Application, cert: Path, key: Path) -> None:
        super().__init__(app, server_context(cert, key))
