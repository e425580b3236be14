"""An HTTP CONNECT proxy that sends a real Key Vault host name to the local stand-in.

`scoregate keys rotate --deliver-to` accepts only Key Vault hosts
(``<vault>.vault.azure.net``), which do not resolve here. A process given
``HTTPS_PROXY=<this proxy>`` (the Azure SDK's aiohttp transport honours it, as it would
a corporate proxy) opens its tunnels here with ``CONNECT <vault>.vault.azure.net:443``
(RFC 9110 §9.3.6), and each named host is piped to a local port: the SDK then speaks TLS
to the stand-in under the vault's real name, so certificate verification (the stand-in's
certificate names the vault host) and the bearer challenge's resource check run as in
production. Any other target is refused with 403 and recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tests.https_server import LoopThread


class ConnectProxy(LoopThread):
    """Runs on its own event loop in a thread, on 127.0.0.1 and a free port."""

    name = "the CONNECT proxy"

    def __init__(self, routes: dict[str, int]) -> None:
        super().__init__()
        self.routes = routes  # "host:port" → local port
        self.connects: list[str] = []  # every CONNECT target asked for, in order
        self.on_connect: Callable[[str], None] | None = None  # runs before the tunnel opens
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a process needs to tunnel through this proxy (local addresses go direct)."""
        return {"HTTPS_PROXY": self.url, "NO_PROXY": "localhost,127.0.0.1"}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        self.connects.append(target)
        port = self.routes.get(target)
        if method != "CONNECT" or port is None:
            writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        if self.on_connect is not None:
            self.on_connect(target)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
