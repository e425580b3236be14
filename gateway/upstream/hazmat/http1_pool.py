"""HAZMAT: a hand-written HTTP/1.1 client to the scorers; answers parsed by httptools.

What it bypasses: an HTTP client library (aiohttp, httpx). The request line and headers
are written by this module, the connections pooled by it; only the parsing of answers is
a library's (httptools' llhttp). Imported by `gateway.upstream.forwarder` alone, which
decides what may be sent (an allow-list of headers, paths it built) and what an answer
means. Checked against: httptools 0.9.0 over asyncio and uvloop transports (the parser's
callbacks on_message_begin, on_header, on_headers_complete, on_body, on_message_complete,
`get_status_code` and `should_keep_alive`); `tests/gateway/upstream/test_http1_pool.py`
pins its framing rules.

Keep-alive HTTP/1.1 connections to one scorer; answers parsed by httptools (llhttp).

    Forwarder ──▶ UpstreamPool (one per upstream: idle connections, a cap on open ones)
                      └─▶ _Connection (asyncio.Protocol + httptools' C response parser)

Chosen by measurement (CPU per forwarded request, same loopback server, one process):
aiohttp's client about 90 µs, h11 over asyncio streams about 98, httpcore about 880, an
asyncio Protocol with httptools' parser (llhttp, the parser of Node.js and uvicorn) about
15. The HTTP grammar stays in that library; this module only pools connections.

Rules (OWASP API10, unsafe consumption of APIs):
- the request is written whole by us: a method, a path we built, and the headers the
  Forwarder passes (never the client's), so nothing the client sent can split it;
- an answer must be framed (Content-Length or chunked) and is bounded: its head by
  `MAX_HEAD_BYTES`, its body by the Forwarder's limit, its time by the caller's timeout;
- anything malformed, unframed, unsolicited, or cut short makes the connection unusable;
  a connection whose exchange was interrupted (timeout, cancellation) is closed, never
  reused with an answer still on its way;
- a reused connection that the scorer had already closed (it answers nothing) is retried
  once on a new connection: the scorer never saw that request.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

MAX_HEAD_BYTES = 64 * 1024
# Idle connections older than this are closed rather than reused (the scorer keeps them
# for 75 s; anything shorter than its keep-alive makes stale reuse rare).
IDLE_S = 30.0
_TARGET = re.compile(r"/[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]*")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r"[\x20-\x7e]*")


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class UpstreamError(Exception):
    """The exchange with the scorer failed; subclasses say how."""


class ConnectFailed(UpstreamError):
    """No connection: refused, unreachable, TLS handshake refused, or too slow to connect."""


class ProtocolFailed(UpstreamError):
    """The answer was malformed, unframed, unsolicited, or cut short."""


class AnswerTooLarge(UpstreamError):
    """The answer's body is over the limit (declared or as it arrived)."""


class _ClosedBeforeAnswer(ProtocolFailed):
    """The connection closed before any byte of the answer arrived."""


class BufferBudget:
    """Bytes of answers being received, across every connection that shares it: a broken
    or compromised scorer filling many connections at once cannot hold more than this
    (64 connections x 8 MiB would be the gateway pod's whole memory limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    # Inference-Header-Content-Length, as the scorer sent it (binary tensor outputs).
    inference_header: str | None = None


class _Connection(asyncio.Protocol):
    """One connection: one exchange at a time, the answer parsed as its bytes arrive."""

    def __init__(self, max_body: int, budget: BufferBudget | None = None) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._max_body = max_body
        self._budget = budget or BufferBudget(1 << 62)
        # Everything an answer may be: its head, its body, chunk framing, trailers.
        self._max_answer = 2 * (MAX_HEAD_BYTES + max_body)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[Answer] | None = None
        self._received = 0  # bytes of the current answer so far
        self._head_done = False
        self._content_type = b""
        self._inference_header: bytes | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self.usable = False
        self.idle_since = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)
        self.usable = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        if self._received:
            self._fail(ProtocolFailed("the scorer closed the connection mid-answer"))
        else:
            self._fail(_ClosedBeforeAnswer("the scorer closed the connection"))

    def data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is None or answer.done():
            # Bytes nobody asked for: this connection can no longer be trusted.
            self.abort()
            return
        self._received += len(data)
        if self._received > self._max_answer:
            # Past the body: endless chunk framing or trailers, which the parser would
            # otherwise take for as long as the scorer sends them.
            self._fail(AnswerTooLarge("the answer (framing and trailers) is too large"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(ProtocolFailed("the answer is not valid HTTP/1.1"))
            return
        # After the bytes are parsed: one read may hold a whole small head and a large
        # piece of body, which is no reason to refuse it.
        if not self._head_done and self._received > MAX_HEAD_BYTES:
            self._fail(ProtocolFailed("the answer's head is too large"))

    # -- httptools callbacks -------------------------------------------------------
    def on_message_begin(self) -> None:
        answer = self._answer
        if answer is None or answer.done():
            self.abort()  # a second answer to one request: this connection is not trusted
            return
        self._head_done = False
        self._content_type = b""
        self._inference_header = None
        self._release()
        self._chunks = []
        self._size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a trailer: nothing of it is used, and it never changes the head's
        lowered = name.lower()
        if lowered == b"content-type":
            self._content_type = value
        elif lowered == b"inference-header-content-length":
            self._inference_header = value
        elif lowered == b"content-length" and value.isdigit() and int(value) > self._max_body:
            self._fail(AnswerTooLarge("declared body over the limit"))

    def on_headers_complete(self) -> None:
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        if self._answer is None or self._answer.done():
            return  # failed already: the rest of this read is dropped, not counted
        if self._size + len(body) > self._max_body:
            self._fail(AnswerTooLarge("body over the limit"))
        elif not self._budget.take(len(body)):
            self._fail(AnswerTooLarge("the gateway's buffer budget for answers is spent"))
        else:
            self._size += len(body)
            self._chunks.append(body)

    def _release(self) -> None:
        """Give the answer's bytes back to the budget (they go to the caller, or away)."""
        self._budget.give(self._size)
        self._size = 0

    def on_message_complete(self) -> None:
        answer = self._answer
        status = self._parser.get_status_code()
        if answer is None or answer.done() or status < 200:
            return  # an interim (1xx) answer: the real one follows
        if not self._parser.should_keep_alive():
            self.usable = False
            self.close()
        content_type = self._content_type.split(b";", 1)[0].strip().lower()
        body = b"".join(self._chunks)
        self._chunks = []
        self._release()
        header = self._inference_header
        answer.set_result(
            Answer(
                status,
                content_type.decode("latin-1"),
                body,
                None if header is None else header.decode("latin-1"),
            )
        )

    # -- used by the pool ----------------------------------------------------------
    def send(self, data: bytes) -> asyncio.Future[Answer]:
        assert self._transport is not None  # noqa: S101 - connected before use
        self._answer = asyncio.get_running_loop().create_future()
        self._received = 0
        self._transport.write(data)
        return self._answer

    def _fail(self, exc: UpstreamError) -> None:
        self.usable = False
        self._chunks = []
        self._release()
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        self.abort()

    def close(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.abort()


class UpstreamPool:
    """Connections to one upstream URL: idle ones reused last-in first-out, at most
    ``max_connections`` open; a request waits for a free one within its timeout."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int,
        max_body: int,
        tls: ssl.SSLContext | None = None,
        budget: BufferBudget | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http:// or https://, not {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        self._host_header = f"host: {parts.netloc.rpartition('@')[2]}\r\n"
        self._max_body = max_body
        self._budget = budget
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self._max_body, self._budget),
                self._host,
                self._port,
                ssl=self._tls,
                server_hostname=self._host if self._tls is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:  # refused, unreachable, handshake refused
            raise ConnectFailed(type(exc).__name__) from None
        return connection

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable and now - connection.idle_since < IDLE_S:
                return connection
            connection.close()
        return None

    def _head(self, method: str, target: str, headers: dict[str, str], length: int | None) -> bytes:
        # RFC 9112 §3: the request line and headers are ours; refuse anything that could
        # end a line early (request splitting), though our callers only pass safe values.
        if not _TARGET.fullmatch(target):
            raise ValueError("unsafe request target")
        lines = [f"{method} {target} HTTP/1.1\r\n", self._host_header]
        for name, value in headers.items():
            if not (_HEADER.fullmatch(name) and _VALUE.fullmatch(value)):
                raise ValueError("unsafe header")
            lines.append(f"{name}: {value}\r\n")
        if length is not None:
            lines.append(f"content-length: {length}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("ascii")

    async def exchange(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
        *,
        connect_timeout_s: float,
    ) -> Answer:
        """One request and its whole answer. The caller bounds the total time."""
        data = self._head(method, self._prefix + path, headers, None if body is None else len(body))
        if body:
            data += body
        async with self._slots:
            for attempt in (1, 2):
                connection = self._take_idle()
                reused = connection is not None
                if connection is None:
                    try:
                        async with asyncio.timeout(connect_timeout_s):
                            connection = await self._connect()
                    except TimeoutError:
                        raise ConnectFailed("connect timeout") from None
                try:
                    answer = await connection.send(data)
                except _ClosedBeforeAnswer:
                    # RFC 9110 §9.2.2: only an idempotent request is sent again. A close
                    # after our request was written reads the same whether the connection
                    # had gone stale or the request killed the scorer; a POST is never
                    # re-sent, so one poison request cannot take down a second scorer.
                    if reused and attempt == 1 and method in _IDEMPOTENT:
                        continue
                    raise
                except BaseException:
                    connection.abort()  # interrupted: an answer may still be on its way
                    raise
                if connection.usable:
                    connection.idle_since = time.monotonic()
                    self._idle.append(connection)
                return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
