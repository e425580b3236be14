"""HAZMAT: two classes of Hypercorn replaced, measured under `make bench`.

What it bypasses: Hypercorn's own `H11Protocol._send_h11_event` (how an HTTP/1.1
response reaches the socket) and `TCPServer._read_data` (how a connection reads under
its read timeout). Both are private methods; the replacement classes are swapped into
`hypercorn.protocol` and `hypercorn.asyncio.run` by `install()`, which only
`serving.server` calls, once per process, before serving.

Checked against: Hypercorn 0.18.0 (`PATCHED_VERSIONS`), the one release pyproject.toml
admits. Any other version runs unpatched (`install()` logs it and returns False), and
`tests/serving/test_hypercorn_h11.py` fails until this module is read against it.

1. A response's head and body leave in one write. Hypercorn 0.18 writes the head, the
   body and an empty end-of-message as three writes, each through its send lock and
   `drain()`; over TLS each is an SSL record and a send(2). We hold a final response's
   head until its first body bytes (or its end), and skip empty writes.
2. Each read waits under `asyncio.timeout` instead of `asyncio.wait_for`, which on
   Python 3.11 wraps every read in a task of its own.

Neither changes what is sent or when a connection is closed: the bytes on the wire are
the same, in the same order, and the read timeout is the same. (One exception: an app
that fails after starting its answer but before any body sends no head at all, where
Hypercorn would send the head alone; the client sees the connection close either way.)
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import version
from ssl import SSLError

import h11
import hypercorn.asyncio.run
import hypercorn.protocol
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h11 import H11Protocol

log = logging.getLogger("gateway.transport")
PATCHED_VERSIONS = frozenset({"0.18.0"})
_Sendable = h11.Data | h11.EndOfMessage | h11.InformationalResponse | h11.Response


class CoalescingH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, writing a response's head with its body."""

    _held = b""

    async def _send_h11_event(self, event: _Sendable) -> None:
        try:
            data = self.connection.send(event) or b""
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        if isinstance(event, h11.Response):
            self._held += data  # a final head: it leaves with what follows it
            return
        if self._held:
            data, self._held = self._held + data, b""
        if data:
            await self.send(RawData(data=data))


class TimeoutReadTCPServer(TCPServer):
    """Hypercorn's connection loop, reading under `asyncio.timeout` (no task per read)."""

    async def _read_data(self) -> None:
        while not self.reader.at_eof():
            try:
                async with asyncio.timeout(self.config.read_timeout):
                    data = await self.reader.read(MAX_RECV)
            except (ConnectionError, OSError, TimeoutError, SSLError):
                break
            else:
                await self.protocol.handle(RawData(data))
        await self.protocol.handle(Closed())


def install() -> bool:
    """Use the classes above in this process's Hypercorn, if its version is one we know."""
    found = version("hypercorn")
    if found not in PATCHED_VERSIONS:
        log.warning("hypercorn %s is not one of %s: serving unpatched", found, PATCHED_VERSIONS)
        return False
    hypercorn.protocol.H11Protocol = CoalescingH11Protocol  # type: ignore[attr-defined]
    hypercorn.asyncio.run.TCPServer = TimeoutReadTCPServer  # type: ignore[attr-defined]
    return True
