"""HAZMAT: three classes of Hypercorn replaced, measured under `make bench`.

What it bypasses: Hypercorn's own `H11Protocol._send_h11_event` (how an HTTP/1.1
response reaches the socket), `H11Protocol._send_error_response` (its answer to a request
it cannot parse), `H11Protocol._maybe_recycle` (between two requests of a connection),
`H2Protocol._close_stream` (a stream closed, by the client's reset among others) and
`TCPServer._read_data` (how a connection reads under its read timeout). All are private
methods; the replacement classes are swapped into `hypercorn.protocol` and
`hypercorn.asyncio.run` by `install()`, which only `serving.server` calls, once per
process, before serving. For HTTP/1.1, `install()` puts `http1_protocol` in the place of
Hypercorn's H11Protocol class: each connection gets the protocol its config's
``http1_parser`` names, the class below ("h11") or `serving.hazmat.llhttp_h1`'s.

Checked against: Hypercorn 0.18.0 (`PATCHED_VERSIONS`), the one release pyproject.toml
admits. Any other version runs unpatched (`install()` logs it and returns False), and
`tests/serving/test_hypercorn_h11.py` fails until this module is read against it.

1. A response's head and body leave in one write. Hypercorn 0.18 writes the head, the
   body and an empty end-of-message as three writes, each through its send lock and
   `drain()`; over TLS each is an SSL record and a send(2). We hold a final response's
   head until its first body bytes (or its end), and skip empty writes.
2. Each read waits under `asyncio.timeout` instead of `asyncio.wait_for`, which on
   Python 3.11 wraps every read in a task of its own; and not at all while the
   application works on a request it has whole. Hypercorn's read timeout otherwise runs
   on while a slow scorer is awaited, and closes the connection (every HTTP/2 stream on
   it) instead of the route's timeout answering 504.
3. A request h11 cannot parse (a malformed request line, a header section over
   `h11_max_incomplete_size`) is answered by the application's `protocol_error_hook`
   when the config has one: the gateway's JSON error model, security headers, a record.
4. An HTTP/2 connection that resets more than `RESET_BUDGET` streams before their
   answers within `RESET_WINDOW_S` is closed with GOAWAY (rapid reset, CVE-2023-44487);
   an HTTP/1.1 connection is closed after `PIPELINE_DEPTH` pipelined answers in a row,
   and between pipelined requests the loop lets other connections take their turn.

Apart from 2, 3 and 4, nothing changes what is sent or when a connection is closed: the
bytes on the wire are the same, in the same order. (One exception: an app
that fails after starting its answer but before any body sends no head at all, where
Hypercorn would send the head alone; the client sees the connection close either way.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import version
from ssl import SSLError
from typing import ClassVar

import h2.errors
import h11
import hypercorn.asyncio.run
import hypercorn.protocol
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.typing import AppWrapper, ConnectionState, TaskGroup, WorkerContext

from serving.hooks import ProtocolErrorHook

log = logging.getLogger("gateway.transport")
# Streams a connection may reset before their answer, in a window (a client cancelling
# now and then stays far below; a rapid-reset flood passes it within a second).
RESET_BUDGET = 200
RESET_WINDOW_S = 10.0
RESET_PEERS = 10_000
# Requests one HTTP/1.1 connection may have answered in a row while its next request was
# already waiting (pipelined); then it is closed and the client retries on a new one.
PIPELINE_DEPTH = 16
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

    _pipelined = 0  # answers given in a row while the next request was already waiting

    async def _maybe_recycle(self) -> None:
        """Between two requests of a connection: past PIPELINE_DEPTH pipelined answers in a
        row the connection is closed (RFC 9112 §9.3.2), and between pipelined requests the
        loop lets other connections take their turn."""
        waiting = bool(self.connection.trailing_data[0])
        self._pipelined = self._pipelined + 1 if waiting else 0
        if self._pipelined > PIPELINE_DEPTH:
            log.info("closing a connection after %d pipelined requests", self._pipelined)
            await self._close_stream()
            await self.send(Closed())
            return
        await super()._maybe_recycle()
        if waiting:
            await asyncio.sleep(0)

    async def _send_error_response(self, status_code: int) -> None:
        """A request h11 could not parse: the application's answer when it gives one
        (its error model and headers, audited), else Hypercorn's empty one."""
        hook: ProtocolErrorHook | None = getattr(self.config, "protocol_error_hook", None)
        if hook is None:
            await super()._send_error_response(status_code)
            return
        peer = self.client[0] if self.client else None
        status, headers, body = await hook(peer, status_code)
        framing = [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        response_headers = [*framing, *headers, *self.config.response_headers("h11")]
        await self._send_h11_event(h11.Response(status_code=status, headers=response_headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


class TimeoutReadTCPServer(TCPServer):
    """Hypercorn's connection loop, reading under `asyncio.timeout` (no task per read)."""

    async def _read_data(self) -> None:
        while not self.reader.at_eof():
            # The read timeout is for the client's bytes: while the application works on a
            # request it has whole, waiting for the client is no stall (a slow scorer is
            # the route's timeout to judge: 504, counted by its breaker).
            timeout = None if _application_working(self.protocol) else self.config.read_timeout
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(MAX_RECV)
            except (ConnectionError, OSError, TimeoutError, SSLError):
                break
            else:
                await self.protocol.handle(RawData(data))
        await self.protocol.handle(Closed())


class ResetLimitedH2Protocol(H2Protocol):
    """Hypercorn's HTTP/2 protocol, closing a connection that resets streams faster than a
    client cancels requests (CVE-2023-44487, "rapid reset"): each stream reset before its
    answer started its request's work for nothing. Past ``RESET_BUDGET`` such resets in
    ``RESET_WINDOW_S`` from one client address, counted across its connections, the
    connection gets GOAWAY (ENHANCE_YOUR_CALM, RFC 9113 §7) and closes, and so does each
    new one from that address at its next reset until the window has passed; other
    clients' connections are not touched."""

    # Resets per client address, across its connections: a client that reconnects after
    # each GOAWAY starts with the budget it spent (at most RESET_PEERS addresses kept).
    _resets_by_peer: ClassVar[OrderedDict[str, deque[float]]] = OrderedDict()
    _ending = False  # the connection is closing: its streams close with it, no reset counted

    async def handle(self, event: Event) -> None:
        if isinstance(event, Closed):
            self._ending = True
        await super().handle(event)

    async def _close_stream(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if (
            not self._ending
            and isinstance(stream, HTTPStream)
            and stream.state is ASGIHTTPState.REQUEST
        ):
            # Closed before the application answered, the connection alive: a reset.
            now = time.monotonic()
            peer = self.client[0] if self.client else "-"
            resets = self._resets_by_peer.pop(peer, None) or deque()
            self._resets_by_peer[peer] = resets  # the most recent last
            while len(self._resets_by_peer) > RESET_PEERS:
                self._resets_by_peer.popitem(last=False)
            resets.append(now)
            while resets and now - resets[0] > RESET_WINDOW_S:
                resets.popleft()
            if len(resets) > RESET_BUDGET:
                self._ending = True
                log.warning(
                    "HTTP/2 connection reset %d streams in %s s: closing it",
                    len(resets),
                    RESET_WINDOW_S,
                )
                self.connection.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                await self._flush()
                await super()._close_stream(stream_id)
                await self.send(Closed())
                return
        await super()._close_stream(stream_id)


def _application_working(wrapper: object) -> bool:
    """Whether a request has arrived whole and the application has not begun its answer
    (HTTP/1.1), or some HTTP/2 stream awaits its answer (its body's pace is bounded by
    the application's own body timeout)."""
    protocol = getattr(wrapper, "protocol", None)
    working = getattr(protocol, "application_working", None)  # llhttp_h1.LlhttpProtocol's
    if working is not None:
        return bool(working())
    if isinstance(protocol, H11Protocol):
        stream = protocol.stream
        return (
            isinstance(stream, HTTPStream)
            and stream.state is ASGIHTTPState.REQUEST
            and protocol.connection.their_state is h11.DONE
        )
    if isinstance(protocol, H2Protocol):
        return any(
            isinstance(stream, HTTPStream) and stream.state is ASGIHTTPState.REQUEST
            for stream in protocol.streams.values()
        )
    return False


def install(http1: Mapping[str, Callable[..., object]] | None = None) -> bool:
    """Use the classes above in this process's Hypercorn, if its version is one we know.
    For HTTP/1.1, the protocol each config's ``http1_parser`` names: "h11" (the class
    above) or one of ``http1`` (`serving.server` adds llhttp_h1's)."""
    found = version("hypercorn")
    if found not in PATCHED_VERSIONS:
        log.warning("hypercorn %s is not one of %s: serving unpatched", found, PATCHED_VERSIONS)
        return False
    HTTP1_PROTOCOLS.update(http1 or {})
    hypercorn.protocol.H11Protocol = http1_protocol  # type: ignore[attr-defined,assignment]
    hypercorn.protocol.H2Protocol = ResetLimitedH2Protocol  # type: ignore[attr-defined]
    hypercorn.asyncio.run.TCPServer = TimeoutReadTCPServer  # type: ignore[attr-defined]
    return True


# HTTP/1.1 protocols by the name a config's ``http1_parser`` gives (`serving.server`);
# a config without one gets h11, Hypercorn's own.
HTTP1_PROTOCOLS: dict[str, Callable[..., object]] = {"h11": CoalescingH11Protocol}


def http1_protocol(
    app: AppWrapper,
    config: Config,
    context: WorkerContext,
    task_group: TaskGroup,
    connection_state: ConnectionState,
    ssl: bool,
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
    send: Callable[[Event], Awaitable[None]],
) -> object:
    """What Hypercorn's ProtocolWrapper builds for an HTTP/1.1 connection (it calls this
    in place of its H11Protocol class)."""
    protocol = HTTP1_PROTOCOLS[getattr(config, "http1_parser", "h11")]
    return protocol(app, config, context, task_group, connection_state, ssl, client, server, send)
