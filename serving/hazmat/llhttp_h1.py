"""HAZMAT: Hypercorn's HTTP/1.1 protocol rebuilt on llhttp (httptools), h11's rules kept.

What it replaces: Hypercorn's `H11Protocol` as a whole, on the connections of a config
whose ``http1_parser`` is ``"llhttp"`` (`serving.hazmat.hypercorn_h11.install` picks the
class per config; ``"h11"`` keeps Hypercorn's own, patched). Hypercorn's `HTTPStream`,
`WSStream`, `TCPServer` and `ProtocolWrapper` are untouched: they get from this class
the events they get from `H11Protocol` (Request, Body, EndBody, StreamClosed, WebSocket
Data; H2ProtocolAssumedError and H2CProtocolRequiredError to switch to HTTP/2), and it
answers the events they send it.

Checked against: Hypercorn 0.18.0 (`protocol/h11.py`, mirrored method by method; the
pin of `hypercorn_h11.PATCHED_VERSIONS`), h11 0.16.0 (whose behaviour is copied: its
states, framing, keep-alive and limits) and httptools 0.9 (its llhttp,
`CHECKED_HTTPTOOLS_SERIES`, the bound in pyproject.toml). tests/serving/
test_http1_differential.py sends a corpus of smuggling and malformed-framing requests
and Hypothesis-made ones to both protocols over real sockets: this one refuses all that
h11 refuses, and answers all that both accept byte for byte as h11 does; an upgrade of
any of the three runs it again.

Who does what:
- llhttp parses each request head (request line, fields: RFC 9112 §3 and §5) in C, once
  the head is whole, with its strict defaults: no obs-fold, no bare LF, no lone CR, no
  Content-Length with Transfer-Encoding, no duplicate Content-Length, no control bytes.
- This module frames the messages: where a head ends (h11's rule, the first empty line),
  and a body by Content-Length or chunked coding (RFC 9112 §6.3, §7.1). httptools cannot
  stop between two pipelined messages nor say where one ended, and Hypercorn reads one
  request at a time (the next waits until the answer is out: h11's PAUSED). Bodies are
  never given to llhttp.
- `_checked_head` adds h11's refusals that llhttp lacks (the differential test found
  each): one space between the request line's parts, a visible-ASCII target, Host
  exactly once (HTTP/1.1), at most 20 Content-Length digits, Transfer-Encoding exactly
  ``chunked`` (501 otherwise), no empty line before a request line.
- Answers are framed as h11 frames them (Content-Length, chunked, or to the close for an
  HTTP/1.0 client; HEAD, 204 and 304 without body; `Connection: close` added where the
  connection ends), and a final answer's head leaves with its first body bytes in one
  write, as `CoalescingH11Protocol` does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from time import time
from typing import Final, TypeVar

from httptools import (
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import Body, Data, EndBody, Request, Response, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.typing import AppWrapper, ConnectionState, TaskGroup, WorkerContext

from serving.hazmat.hypercorn_h11 import PIPELINE_DEPTH
from serving.hooks import ProtocolErrorHook

log = logging.getLogger("gateway.transport")
CHECKED_HTTPTOOLS_SERIES: Final = "0.9"
STREAM_ID: Final = 1

# h11's states of each side (h11/_state.py), which RFC 9112 §9 describes in prose.
IDLE: Final = "IDLE"
SEND_RESPONSE: Final = "SEND_RESPONSE"
SEND_BODY: Final = "SEND_BODY"
DONE: Final = "DONE"
MUST_CLOSE: Final = "MUST_CLOSE"
CLOSED: Final = "CLOSED"
MIGHT_SWITCH: Final = "MIGHT_SWITCH_PROTOCOL"
SWITCHED: Final = "SWITCHED_PROTOCOL"
ERROR: Final = "ERROR"
# States in which h11's state-triggered transitions have nothing to do, while the
# connection stays persistent and nobody proposed to leave HTTP/1.1 (`_settle`).
_QUIET_CLIENT = frozenset({IDLE, SEND_BODY, DONE, MUST_CLOSE})
_QUIET_SERVER = frozenset({IDLE, SEND_RESPONSE, SEND_BODY, DONE, MUST_CLOSE, SWITCHED})
# A client's proposals to leave HTTP/1.1: CONNECT, or an Upgrade header.
_CONNECT, _UPGRADE = 1, 2
# How a response body is framed (h11's writers).
_LENGTH, _CHUNKED, _TO_CLOSE = 0, 1, 2
# What `_next_event` returns besides a `_Head` (a request) and bytes (body).
_NEED_DATA: Final = object()
_PAUSED: Final = object()
_END: Final = object()
_CONNECTION_CLOSED: Final = object()
# Hypercorn's events are frozen dataclasses: the constant ones are made once.
_BUSY, _IDLE, _CLOSED = Updated(idle=False), Updated(idle=True), Closed()
_END_BODY, _STREAM_CLOSED = EndBody(stream_id=STREAM_ID), StreamClosed(stream_id=STREAM_ID)

PRIOR_KNOWLEDGE = b"PRI * HTTP/2.0\r\n\r\n"  # RFC 9113 §3.4: the preface's first part
# Request fields this module reads (the others go to the application as they are).
_SPECIAL = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"}
)
# Response fields that h11's framing reads or moves.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"host"})
# RFC 9110 §5.6.2 token; RFC 9112 §5.5 field-value, as h11 reads it (h11/_abnf.py): no NUL,
# no whitespace but single runs of SP/HTAB inside.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_HEADER_FIELD = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*"
)
# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF, chunk-ext = *( BWS ";" BWS name [ BWS "="
# BWS ( token / quoted-string ) ] ). h11 takes any bytes after ";" and whitespace before
# the CRLF; llhttp refuses both, and so does this (a chunk line two servers may read two
# ways is a smuggling vector). At most 20 digits, as h11.
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,20})"
    rb"(?:[ \t]*;[ \t]*[-!#$%&'*+.^_`|~0-9a-zA-Z]+(?:[ \t]*=[ \t]*(?:[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
    rb'|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*'
)
_VISIBLE = bytes(range(0x21, 0x7F))  # RFC 9112 §3.2: a request-target is visible ASCII
_MAX_LENGTH_DIGITS = 20  # h11's CONTENT_LENGTH_MAX_DIGITS
# Response fields already checked (exact bytes) and their lines, so that the gateway's
# constant fields are checked once per process, not once per answer; names, to lower
# case; each bounded.
_CHECKED_LINES: dict[tuple[bytes, bytes], bytes] = {}
_CHECKED_NAMES: dict[bytes, bytes] = {}
_CHECKED_KEPT = 1024
_K = TypeVar("_K")
_V = TypeVar("_V")


class Refused(Exception):
    """A request this protocol does not read further: answered with ``status`` (h11's
    error_status_hint: 400, 431 for a head over the limit, 501 for a transfer coding)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class ResponseRefused(Exception):
    """The application's answer breaks HTTP/1.1 (h11 raises its LocalProtocolError)."""


class _Head:
    """A request head as h11's Request holds it: fields with lower-case names and values
    without surrounding whitespace (`fields`: as llhttp read them, names as sent); and
    what Hypercorn's H11Protocol reads of them (the last Upgrade and Connection values,
    whether a body is announced)."""

    __slots__ = (
        "connection",
        "fields",
        "has_body",
        "headers",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        fields: list[tuple[bytes, bytes]],
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.fields = fields
        self.upgrade = ""
        self.connection = ""
        self.has_body = False


class _Fields:
    """llhttp's callbacks for one head."""

    __slots__ = ("complete", "fields", "url")

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


class LlhttpProtocol:
    """Hypercorn's HTTP/1.1 protocol with llhttp reading request heads (see the module)."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        task_group: TaskGroup,
        connection_state: ConnectionState,
        ssl: bool,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        send: Callable[[Event], Awaitable[None]],
    ) -> None:
        self.app = app
        self.can_read = context.event_class()
        self.client = client
        self.config = config
        self.context = context
        self.keep_alive_requests = 0
        self.send = send
        self.server = server
        self.ssl = ssl
        self.stream: HTTPStream | WSStream | None = None
        self.task_group = task_group
        self.connection_state = connection_state
        self._max_incomplete: int = config.h11_max_incomplete_size
        self._buffer = b""  # received, not yet read (h11's receive buffer)
        self._eof = False
        self._websocket = False  # after a WebSocket upgrade: bytes pass through
        # h11's connection state (h11/_connection.py, _state.py).
        self._their = IDLE
        self._our = IDLE
        self._keep_alive = True
        self._proposals = 0
        self._waiting_100 = False
        self._method: bytes | None = None
        self._their_version: bytes | None = None
        # The request body being read.
        self._chunked = False
        self._left = 0  # bytes of the body (Content-Length) or of the current chunk
        self._footer = b""  # what must follow a chunk's data (its CRLF), not yet seen
        self._trailer = False
        # The response being written.
        self._held = b""  # a final answer's head, waiting for its first body bytes
        self._framing = _LENGTH
        self._to_send = 0
        self._pipelined = 0  # answers given in a row while the next request waited
        self._fields = _Fields()
        self._server_fields: tuple[int, list[tuple[bytes, bytes]]] = (-1, [])

    async def initiate(self) -> None:
        pass

    async def handle(self, event: Event) -> None:
        if isinstance(event, RawData):
            data = event.data
            if data:
                self._buffer = self._buffer + data if self._buffer else bytes(data)
            elif not self._websocket:
                self._eof = True  # the read loop hands over b"" at the end of the stream
            await self._handle_events()
        elif isinstance(event, Closed):
            if self.stream is not None:
                await self._close_stream()

    def application_working(self) -> bool:
        """Whether a request has arrived whole and the application has not begun its
        answer (`serving.hazmat.hypercorn_h11.TimeoutReadTCPServer` waits for it)."""
        stream = self.stream
        return (
            isinstance(stream, HTTPStream)
            and stream.state is ASGIHTTPState.REQUEST
            and self._their is DONE
        )

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, Body):
            await self._send_data(event.data)
        elif isinstance(event, EndBody):
            await self._send_end()
        elif isinstance(event, Response):
            headers = [*event.headers, *self._response_fields()]
            if event.status_code >= 200:
                if self.keep_alive_requests >= self.config.keep_alive_max_requests:
                    headers.append((b"connection", b"close"))
                await self._send_response(event.status_code, headers)
            else:
                await self._send_informational(event.status_code, headers)
        elif isinstance(event, StreamClosed):
            await self._maybe_recycle()
        elif isinstance(event, Data):
            await self.send(RawData(data=event.data))
        # InformationalResponse (ignored for HTTP/1, as Hypercorn does), EndData: nothing.

    def _response_fields(self) -> list[tuple[bytes, bytes]]:
        """``config.response_headers("h11")`` (the Date among them), made once a second."""
        second = int(time())
        if self._server_fields[0] != second:
            self._server_fields = (second, self.config.response_headers("h11"))
        return self._server_fields[1]

    # Reading: Hypercorn's H11Protocol._handle_events, over `_next_event` instead of h11.

    async def _handle_events(self) -> None:
        while True:
            if self._waiting_100 and not self._websocket:
                # RFC 9110 §10.1.1: the client waits for 100 (Continue) before its body.
                await self._send_informational(100, [*self._response_fields()])
            try:
                event = self._next_event()
            except Refused as refused:
                log.debug("refused an HTTP/1.1 request: %s", refused)
                if self._our is IDLE or self._our is SEND_RESPONSE:
                    await self._send_error_response(refused.status)
                await self.send(_CLOSED)
                break
            if isinstance(event, bytes):
                if self.stream is None:
                    break
                await self.stream.handle(Body(stream_id=STREAM_ID, data=event))
            elif isinstance(event, _Head):
                await self.send(_BUSY)
                if event.upgrade or event.method == b"PRI":
                    await self._check_protocol(event)
                await self._create_stream(event)
            elif event is _END:
                if self.stream is None:
                    break
                await self.stream.handle(_END_BODY)
            elif event is _PAUSED:
                await self.can_read.clear()
                await self.can_read.wait()
            elif isinstance(event, Data):
                if self.stream is None:
                    break
                await self.stream.handle(event)  # WebSocket pass through
            else:  # _NEED_DATA, _CONNECTION_CLOSED
                break

    def _next_event(self) -> object:
        """h11's Connection.next_event: what the buffer holds next, by the client's state."""
        if self._websocket:
            if self._buffer:
                data, self._buffer = self._buffer, b""
                return Data(stream_id=STREAM_ID, data=data)
            return _NEED_DATA
        if self._their is ERROR:
            raise Refused(400, "the connection already failed")
        try:
            event = self._read()
            if event is _NEED_DATA:
                if len(self._buffer) > self._max_incomplete:
                    raise Refused(431, "the head (or a chunk line) is over the limit")
                if self._eof:
                    raise Refused(400, "the client closed inside a request")
        except Refused:
            self._their = ERROR
            self._settle()
            raise
        return event

    def _read(self) -> object:
        state = self._their
        if state is IDLE:
            return self._read_head()
        if state is SEND_BODY:
            return self._read_chunked() if self._chunked else self._read_length()
        if state is DONE:
            if self._buffer:
                return _PAUSED  # the next request: read once this one is answered
            return self._closed() if self._eof else _NEED_DATA
        if state is MIGHT_SWITCH or state is SWITCHED:
            return _PAUSED
        # MUST_CLOSE, CLOSED: the connection ends after this answer (RFC 9112 §9.6).
        if self._buffer:
            raise Refused(400, "a request after the one that closes the connection")
        return self._closed() if self._eof else _NEED_DATA

    def _closed(self) -> object:
        self._their = CLOSED
        self._settle()
        return _CONNECTION_CLOSED

    def _read_head(self) -> object:
        buffer = self._buffer
        if not buffer:
            return self._closed() if self._eof else _NEED_DATA
        if buffer[0] < 0x21:
            # RFC 9112 §2.2 lets a server skip an empty line before a request line; h11
            # refuses it, and a head starting with a control byte or a space (a TLS
            # handshake on a plain port), and so does this.
            raise Refused(400, "no request line")
        end = _head_end(buffer)
        if end < 0:
            return _NEED_DATA
        head, self._buffer = buffer[:end], buffer[end:]
        return self._checked_head(head)

    def _checked_head(self, head: bytes) -> _Head:
        """The head read by llhttp, with h11's refusals that llhttp lacks, taken in as h11
        takes in a client's Request event."""
        if head == PRIOR_KNOWLEDGE:
            return self._request(_Head(b"PRI", b"*", b"2.0", [], []), [])  # HTTP/2 follows
        fields = self._fields
        try:
            parser = self._parse(head)
            method = parser.get_method()
        except HttpParserInvalidMethodError:
            # llhttp knows the registered methods alone; any token is a method (RFC 9110
            # §9.1), which the application refuses with 405: the head is read with GET in
            # its place (no method but CONNECT and PRI changes how llhttp reads a request).
            method = head[: head.find(b" ")]
            if _TOKEN.fullmatch(method) is None:
                raise Refused(400, "malformed method") from None
            parser = self._parse(b"GET" + head[len(method) :])
        if not fields.complete:
            raise Refused(400, "the head does not end where its empty line is")
        target = fields.url
        version = parser.get_http_version().encode()
        # RFC 9112 §3: method SP request-target SP HTTP-version, one space each (llhttp
        # takes several); the target visible ASCII (RFC 9112 §3.2).
        if not head.startswith(b"%s %s HTTP/%s\r\n" % (method, target, version)) or (
            target.translate(None, _VISIBLE)
        ):
            raise Refused(400, "malformed request line")
        headers: list[tuple[bytes, bytes]] = []
        special: list[tuple[bytes, bytes]] = []
        for name, value in fields.fields:
            lower = name.lower()
            value = value.rstrip(b" \t")  # RFC 9112 §5.1: trailing OWS is no part of it
            if lower in _SPECIAL:
                if lower == b"transfer-encoding":
                    value = value.lower()  # RFC 9112 §7: codings are case-insensitive
                special.append((lower, value))
            headers.append((lower, value))
        return self._request(_Head(method, target, version, headers, fields.fields), special)

    def _parse(self, head: bytes) -> HttpRequestParser:
        fields = self._fields
        fields.url, fields.fields, fields.complete = b"", [], False
        parser = HttpRequestParser(fields)
        try:
            parser.feed_data(head)
        except HttpParserUpgrade:
            pass  # the head is whole; what follows it is this module's to frame
        except HttpParserInvalidMethodError:
            raise
        except HttpParserError as exc:
            # RFC 9112 §6.1: a transfer coding the server does not implement is a 501, as
            # h11 answers ("Request has invalid `Transfer-Encoding`", "Invalid `Transfer-
            # Encoding` header value"; with Content-Length it stays a 400).
            status = 501 if "`Transfer-Encoding`" in str(exc) else 400
            raise Refused(status, f"llhttp: {exc}") from None
        return parser

    def _request(self, head: _Head, special: list[tuple[bytes, bytes]]) -> _Head:
        """h11's checks of a Request's fields (normalize_and_validate, its Host rule), and
        its processing of the event: states, keep-alive, Expect, proposals, framing."""
        hosts = codings = 0
        connection: list[bytes] = []
        expect: list[bytes] = []
        upgrade = False
        length: bytes | None = None
        for name, value in special:
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                if len(value) > _MAX_LENGTH_DIGITS or not value.isdigit():
                    raise Refused(400, "bad Content-Length")
                length = value
                head.has_body = True
            elif name == b"transfer-encoding":
                # RFC 9112 §6.1: a coding the server does not implement is a 501; chunked
                # alone is supported, once (h11).
                codings += 1
                if codings > 1 or value != b"chunked":
                    raise Refused(501, "a Transfer-Encoding other than chunked")
                head.has_body = True
            elif name == b"connection":
                connection += _tokens(value)
                head.connection = value.decode("latin1").strip()
            elif name == b"upgrade":
                upgrade = upgrade or bool(_tokens(value))
                head.upgrade = value.decode("latin1").strip()
            else:
                expect += _tokens(value)
        version = head.version
        # RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, or any with two.
        if hosts > 1 or (hosts == 0 and version == b"1.1"):
            raise Refused(400, "Host missing or repeated")
        if self._our is not IDLE:
            raise Refused(400, "a request while an answer is being sent")
        if head.method == b"CONNECT":
            self._proposals |= _CONNECT
        if upgrade:
            self._proposals |= _UPGRADE
        self._their, self._our = SEND_BODY, SEND_RESPONSE
        self._method, self._their_version = head.method, version
        if b"close" in connection or version < b"1.1":
            self._keep_alive = False  # RFC 9112 §9.3
        if version >= b"1.1" and b"100-continue" in expect:
            self._waiting_100 = True
        self._chunked = codings == 1
        self._left = 0 if length is None or self._chunked else int(length)
        self._footer, self._trailer = b"", False
        self._settle()
        return head

    def _read_length(self) -> object:
        if self._left == 0:
            return self._end_of_message()
        buffer = self._buffer
        if not buffer:
            if self._eof:
                raise Refused(400, "the client closed before the end of its body")
            return _NEED_DATA
        if len(buffer) <= self._left:
            data, self._buffer = buffer, b""
        else:
            data, self._buffer = buffer[: self._left], buffer[self._left :]
        self._left -= len(data)
        self._waiting_100 = False
        return data

    def _read_chunked(self) -> object:
        """A chunked body (RFC 9112 §7.1), h11's ChunkedReader with RFC chunk lines."""
        while True:
            buffer = self._buffer
            if self._trailer:
                return self._read_trailer()
            if self._footer:
                seen = buffer[: len(self._footer)]
                if not seen:
                    break
                if not self._footer.startswith(seen):
                    raise Refused(400, "chunk data not followed by CRLF")
                self._footer = self._footer[len(seen) :]
                buffer = self._buffer = buffer[len(seen) :]
                if self._footer:
                    break
            if self._left == 0:
                end = buffer.find(b"\r\n")
                if end < 0:
                    break
                line, self._buffer = buffer[:end], buffer[end + 2 :]
                match = _CHUNK_LINE.fullmatch(line)
                if match is None:
                    raise Refused(400, "malformed chunk line")
                size = int(match[1], 16)
                if size >= 1 << 64:
                    raise Refused(400, "chunk size overflow")  # as llhttp
                if size == 0:
                    self._trailer = True
                    continue
                self._left = size
                buffer = self._buffer
            data, self._buffer = buffer[: self._left], buffer[self._left :]
            if not data:
                break
            self._left -= len(data)
            if self._left == 0:
                self._footer = b"\r\n"
            self._waiting_100 = False
            return data
        if self._eof and not self._buffer:
            raise Refused(400, "the client closed inside a chunked body")
        return _NEED_DATA

    def _read_trailer(self) -> object:
        """The trailer section (RFC 9112 §7.1.2): read, checked as h11 checks it (CRLF
        lines only, no obs-fold), and dropped, as Hypercorn drops it."""
        buffer = self._buffer
        if buffer[:2] == b"\r\n":
            self._buffer = buffer[2:]
            return self._end_of_message()
        if buffer[:1] == b"\n":
            raise Refused(400, "bare LF in the trailer section")
        end = _head_end(buffer)
        if end < 0:
            if self._eof and not buffer:
                raise Refused(400, "the client closed inside a chunked body")
            return _NEED_DATA
        block, self._buffer = buffer[:end], buffer[end:]
        if not block.endswith(b"\r\n\r\n"):
            raise Refused(400, "bare LF in the trailer section")
        length: bytes | None = None
        coding = False
        for line in block[:-4].split(b"\r\n"):
            match = _HEADER_FIELD.fullmatch(line)
            if match is None:
                raise Refused(400, "malformed trailer field")
            name, value = match[1].lower(), match[2]
            if name == b"content-length":  # h11 checks framing fields in trailers too
                lengths = {part.strip() for part in value.split(b",")}
                found = lengths.pop() if len(lengths) == 1 else b""
                if not found.isdigit() or len(found) > _MAX_LENGTH_DIGITS:
                    raise Refused(400, "bad Content-Length")
                if length is not None and found != length:
                    raise Refused(400, "conflicting Content-Length")
                length = found
            elif name == b"transfer-encoding":
                if coding or value.lower() != b"chunked":
                    raise Refused(501, "a Transfer-Encoding other than chunked")
                coding = True
        return self._end_of_message()

    def _end_of_message(self) -> object:
        self._their = DONE
        self._waiting_100 = False
        self._settle()
        return _END

    def _settle(self) -> None:
        """h11's state-triggered transitions (ConnectionState._fire_state_triggered_...)."""
        if (
            self._keep_alive
            and not self._proposals
            and self._their in _QUIET_CLIENT
            and self._our in _QUIET_SERVER
        ):
            return  # none applies
        while True:
            start = (self._their, self._our)
            if self._proposals and self._their is DONE:
                self._their = MIGHT_SWITCH
            if not self._proposals and self._their is MIGHT_SWITCH:
                self._their = DONE
            if not self._keep_alive:
                if self._their is DONE:
                    self._their = MUST_CLOSE
                if self._our is DONE:
                    self._our = MUST_CLOSE
            joint = (self._their, self._our)
            if joint == (MIGHT_SWITCH, SWITCHED):
                self._their = SWITCHED
            elif joint in ((CLOSED, DONE), (CLOSED, IDLE), (ERROR, DONE)):
                self._our = MUST_CLOSE
            elif joint in ((DONE, CLOSED), (IDLE, CLOSED), (DONE, ERROR)):
                self._their = MUST_CLOSE
            if (self._their, self._our) == start:
                return

    # Hypercorn's H11Protocol, method for method.

    async def _create_stream(self, request: _Head) -> None:
        method = request.method.decode("ascii").upper()
        self._websocket = bool(
            request.upgrade
            and request.upgrade.lower() == "websocket"
            and method == "GET"
            and any(token.strip() == "upgrade" for token in request.connection.lower().split(","))
        )
        stream_class = WSStream if self._websocket else HTTPStream
        self.stream = stream_class(
            self.app,
            self.config,
            self.context,
            self.task_group,
            self.ssl,
            self.client,
            self.server,
            self.stream_send,
            STREAM_ID,
        )
        headers = request.headers
        if self.config.h11_pass_raw_headers:  # the names as sent, the values as h11's
            pairs = zip(request.fields, headers, strict=True)
            headers = [(raw, value) for (raw, _), (_, value) in pairs]
        await self.stream.handle(
            Request(
                stream_id=STREAM_ID,
                headers=headers,
                http_version=request.version.decode(),
                method=method,
                raw_path=request.target,
                state=self.connection_state,
            )
        )
        self.keep_alive_requests += 1
        await self.context.mark_request()

    async def _check_protocol(self, request: _Head) -> None:
        # An h2c upgrade with a body is answered in HTTP/1.1, as Hypercorn does.
        if request.upgrade.lower() == "h2c" and not request.has_body:
            await self._send_informational(
                101,
                [*self._response_fields(), (b"connection", b"upgrade"), (b"upgrade", b"h2c")],
            )
            raise H2CProtocolRequiredError(self._buffer, request)  # type: ignore[arg-type]
        if request.method == b"PRI" and request.target == b"*" and request.version == b"2.0":
            raise H2ProtocolAssumedError(PRIOR_KNOWLEDGE + self._buffer)

    async def _maybe_recycle(self) -> None:
        """Between two requests (CoalescingH11Protocol's): past PIPELINE_DEPTH pipelined
        answers in a row the connection is closed (RFC 9112 §9.3.2), and between pipelined
        requests the loop lets other connections take their turn."""
        waiting = bool(self._buffer) and not self._websocket
        self._pipelined = self._pipelined + 1 if waiting else 0
        if self._pipelined > PIPELINE_DEPTH:
            log.info("closing a connection after %d pipelined requests", self._pipelined)
            await self._close_stream()
            await self.send(_CLOSED)
            return
        await self._close_stream()
        if (
            self._our is DONE
            and self._their is DONE
            and not self._websocket
            and not self.context.terminated.is_set()
        ):
            self._their = self._our = IDLE  # h11's start_next_cycle
            self._method = None
            await self.can_read.set()
            await self.send(_IDLE)
        else:
            await self.can_read.set()
            await self.send(_CLOSED)
        if waiting:
            await asyncio.sleep(0)

    async def _close_stream(self) -> None:
        if self.stream is not None:
            await self.stream.handle(_STREAM_CLOSED)
            self.stream = None

    async def _send_error_response(self, status_code: int) -> None:
        """A request that could not be read: the application's answer when it gives one
        (its error model and headers, audited), else Hypercorn's empty one."""
        hook: ProtocolErrorHook | None = getattr(self.config, "protocol_error_hook", None)
        if hook is None:
            framing = [(b"content-length", b"0"), (b"connection", b"close")]
            await self._send_response(status_code, [*framing, *self._response_fields()])
            await self._send_end()
            return
        peer = self.client[0] if self.client else None
        status, headers, body = await hook(peer, status_code)
        framing = [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await self._send_response(status, [*framing, *headers, *self._response_fields()])
        await self._send_data(body)
        await self._send_end()

    # Writing: h11's Connection.send for the server, and CoalescingH11Protocol's one write.
    # As Hypercorn does, an answer refused after the request failed is dropped silently.

    async def _send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            data = self._informational(status, headers)
        except ResponseRefused:
            if self._their is not ERROR:
                raise
            return
        await self._write(data)

    async def _send_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            self._held += self._response(status, headers)  # leaves with what follows it
        except ResponseRefused:
            if self._their is not ERROR:
                raise

    async def _send_data(self, data: bytes) -> None:
        try:
            framed = self._data(data)
        except ResponseRefused:
            if self._their is not ERROR:
                raise
            return
        await self._write(framed)

    async def _send_end(self) -> None:
        try:
            framed = self._end()
        except ResponseRefused:
            if self._their is not ERROR:
                raise
            return
        await self._write(framed)

    async def _write(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        if data:
            await self.send(RawData(data=data))

    def _informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        if not 100 <= status < 200:
            raise ResponseRefused(f"informational status {status}")
        lines, _ = _field_lines(headers)
        if self._our is ERROR:
            raise ResponseRefused("the connection already failed")
        switch = status == 101
        if self._our is not SEND_RESPONSE or (switch and not self._proposals & _UPGRADE):
            self._failed()
        if switch:
            self._our = SWITCHED
        self._waiting_100 = False
        self._settle()
        return b"HTTP/1.1 %d \r\n%s\r\n" % (status, b"".join(lines))

    def _response(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """A final answer's head, framed as h11 frames it (its `_clean_up_response_headers_
        for_sending`, `_body_framing` and writers)."""
        if not 200 <= status < 1000:
            raise ResponseRefused(f"status {status}")
        lines, framing = _field_lines(headers)
        if self._our is ERROR:
            raise ResponseRefused("the connection already failed")
        if self._our is not IDLE and self._our is not SEND_RESPONSE:
            self._failed()
        method = self._method
        if len(framing) == 1 and framing[0][1] == b"content-length" and self._keep_alive:
            # The common answer: its length known, the connection kept: nothing to change.
            head = b"".join(lines)
            length = int(framing[0][2])
            self._proposals = 0
            self._our = SEND_BODY
        else:
            head, length = self._cleaned(status, lines, framing)
        self._waiting_100 = False
        self._settle()
        if self._our is SEND_BODY:
            if status in (204, 304) or method == b"HEAD" or (method == b"CONNECT" and status < 300):
                self._framing, self._to_send = _LENGTH, 0
            else:
                self._framing, self._to_send = (_LENGTH, length) if length >= 0 else (-length, 0)
        return b"HTTP/1.1 %d \r\n%s\r\n" % (status, head)

    def _cleaned(
        self, status: int, lines: list[bytes], framing: list[tuple[int, bytes, bytes]]
    ) -> tuple[bytes, int]:
        """h11's _clean_up_response_headers_for_sending and the states the answer leads to:
        its head's fields, and its Content-Length (or -_CHUNKED, -_TO_CLOSE)."""
        marks: list[bytes | None] = [None] * len(lines)
        for index, name, _ in framing:
            marks[index] = name
        items = list(zip(marks, lines, strict=True))
        method = self._method
        need_close = False
        # The fields are chosen as for a GET when the request is a HEAD (RFC 9110 §9.3.2).
        if status not in (204, 304) and not (method == b"CONNECT" and status < 300):
            if _length_or_kind(items) < 0:  # RFC 9112 §6.3: a body of unknown length
                items = [i for i in items if i[0] not in (b"content-length", b"transfer-encoding")]
                if self._their_version is None or self._their_version < b"1.1":
                    need_close = method != b"HEAD"  # delimited by the close
                else:
                    items.append((b"transfer-encoding", b"Transfer-Encoding: chunked\r\n"))
        if not self._keep_alive or need_close:
            tokens = {
                t for name, line in items if name == b"connection" for t in _line_tokens(line)
            }
            tokens.discard(b"keep-alive")
            tokens.add(b"close")
            items = [i for i in items if i[0] != b"connection"]
            items += [(b"connection", b"Connection: %s\r\n" % t) for t in sorted(tokens)]
        if self._proposals & _CONNECT and 200 <= status < 300:
            self._our = SWITCHED
        else:
            self._proposals = 0
            self._our = SEND_BODY
        if any(b"close" in _line_tokens(line) for name, line in items if name == b"connection"):
            self._keep_alive = False
        head = b"".join(
            [line for name, line in items if name == b"host"]
            + [line for name, line in items if name != b"host"]
        )
        return head, _length_or_kind(items)

    def _data(self, data: bytes) -> bytes:
        if self._our is ERROR:
            raise ResponseRefused("the connection already failed")
        if self._our is not SEND_BODY:
            self._failed()
        if self._framing == _CHUNKED:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if self._framing == _LENGTH:
            self._to_send -= len(data)
            if self._to_send < 0:
                self._failed()  # more than its Content-Length
        return data

    def _end(self) -> bytes:
        if self._our is ERROR:
            raise ResponseRefused("the connection already failed")
        if self._our is not SEND_BODY:
            self._failed()
        self._our = DONE
        self._settle()
        if self._framing == _LENGTH and self._to_send != 0:
            self._failed()  # less than its Content-Length
        return b"0\r\n\r\n" if self._framing == _CHUNKED else b""

    def _failed(self) -> None:
        """h11's _process_error for our side: an answer that breaks the protocol."""
        self._our = ERROR
        self._settle()
        raise ResponseRefused("an answer HTTP/1.1 does not allow here")


def _head_end(buffer: bytes) -> int:
    """Where a head ends: after its first empty line, or -1. h11 also ends a head at a
    bare LF line ("\\n\\n"); llhttp refuses a head with a bare LF wherever it is cut, so
    that one is looked for only when there is no CRLF one (to refuse at once)."""
    end = buffer.find(b"\n\r\n")
    if end >= 0:
        return end + 3
    bare = buffer.find(b"\n\n")
    return bare + 2 if bare >= 0 else -1


def _tokens(value: bytes) -> list[bytes]:
    """A list-valued field's elements, lower-case (h11's get_comma_header)."""
    return [token for token in (part.strip() for part in value.lower().split(b",")) if token]


def _line_tokens(line: bytes) -> list[bytes]:
    return _tokens(line[line.index(b":") + 2 : -2])


def _field_lines(
    headers: list[tuple[bytes, bytes]],
) -> tuple[list[bytes], list[tuple[int, bytes, bytes]]]:
    """h11's normalize_and_validate of an answer's fields: each field's line, and where
    the fields that framing reads are (position, lower-case name, value). Names are
    tokens, values field-values (RFC 9110 §5.5: no CR, LF or NUL, so no response
    splitting), one Content-Length, Transfer-Encoding chunked alone."""
    lines: list[bytes] = []
    framing: list[tuple[int, bytes, bytes]] = []
    length: bytes | None = None
    coding = False
    for field in headers:
        line = _CHECKED_LINES.get(field)
        if line is not None:
            lines.append(line)
            continue
        name, value = field
        lower = _CHECKED_NAMES.get(name)
        if lower is None:
            if _TOKEN.fullmatch(name) is None:
                raise ResponseRefused(f"invalid field name {name!r}")
            lower = _remember(_CHECKED_NAMES, name, name.lower())
        plain = value.isalnum()  # letters and digits alone: a valid value, seldom repeated
        if not plain and _FIELD_VALUE.fullmatch(value) is None:
            raise ResponseRefused(f"invalid value of {name!r}")
        if lower in _FRAMING:
            if lower == b"content-length":
                if not plain:
                    lengths = {part.strip() for part in value.split(b",")}
                    value = lengths.pop() if len(lengths) == 1 else b""
                if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                    raise ResponseRefused("bad Content-Length")
                if length is not None:
                    if value != length:
                        raise ResponseRefused("conflicting Content-Length")
                    continue  # h11 keeps the first of equal ones
                length = value
            elif lower == b"transfer-encoding":
                value = value.lower()
                if coding or value != b"chunked":
                    raise ResponseRefused("Transfer-Encoding other than chunked")
                coding = True
            framing.append((len(lines), lower, value))
            lines.append(b"%s: %s\r\n" % (name, value))
            continue
        line = b"%s: %s\r\n" % field
        if not plain:  # a request id or a length would only crowd the others out
            _remember(_CHECKED_LINES, field, line)
        lines.append(line)
    return lines, framing


def _remember(kept: dict[_K, _V], key: _K, value: _V) -> _V:
    if len(kept) >= _CHECKED_KEPT:
        kept.clear()
    kept[key] = value
    return value


def _length_or_kind(items: list[tuple[bytes | None, bytes]]) -> int:
    """h11's _body_framing from an answer's fields: its Content-Length, or -_CHUNKED when it
    has Transfer-Encoding (which wins), or -_TO_CLOSE when it has neither."""
    length: int | None = None
    for name, line in items:
        if name == b"transfer-encoding":
            return -_CHUNKED
        if name == b"content-length" and length is None:
            length = int(line[line.index(b":") + 2 : -2])
    return -_TO_CLOSE if length is None else length
