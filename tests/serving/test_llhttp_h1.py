"""serving.hazmat.llhttp_h1 in process, with Hypercorn's own streams and task group: what
reaches the socket and when. Its answers compared with h11's over real sockets:
tests/serving/test_http1_differential.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.typing import ConnectionState

from serving.hazmat import hypercorn_h11, llhttp_h1

DATE = re.compile(rb"date: [^\r]*")
REQUEST = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"


class Answering:
    """An ASGI app that reads the body, then waits for `go` before answering."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        self.requests += 1
        await self.go.wait()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def connection(
    app: Answering, protocol_class: Any = llhttp_h1.LlhttpProtocol
) -> AsyncIterator[tuple[Any, list[Event]]]:
    sent: list[Event] = []

    async def send(event: Event) -> None:
        sent.append(event)

    async with TaskGroup(asyncio.get_running_loop()) as task_group:
        protocol = protocol_class(
            ASGIWrapper(app),  # type: ignore[arg-type]
            Config(),
            WorkerContext(None),
            task_group,
            ConnectionState({}),
            False,
            ("127.0.0.1", 1),
            ("127.0.0.1", 2),
            send,
        )
        yield protocol, sent
        app.go.set()
        await protocol.handle(Closed())


def writes(sent: list[Event]) -> list[bytes]:
    return [event.data for event in sent if isinstance(event, RawData)]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_an_answer_leaves_in_one_write() -> None:
    app = Answering()
    async with connection(app) as (protocol, sent):
        await protocol.handle(RawData(REQUEST))
        app.go.set()
        await settle()
        (answer,) = writes(sent)
        assert answer.startswith(b"HTTP/1.1 200 \r\ncontent-length: 2\r\ndate: ")
        assert answer.endswith(b"\r\n\r\nok")
        assert sent[-1] == Updated(idle=True)  # kept alive, the idle timer restarted


async def test_the_read_timeout_waits_while_the_application_works() -> None:
    app = Answering()
    async with connection(app) as (protocol, sent):
        assert not protocol.application_working()  # nothing asked yet: reads are timed
        await protocol.handle(RawData(REQUEST[:-1]))
        await settle()
        assert not protocol.application_working()  # the body is still coming
        await protocol.handle(RawData(REQUEST[-1:]))
        await settle()
        assert app.requests == 1 and protocol.application_working()
        app.go.set()
        await settle()
        assert writes(sent) and not protocol.application_working()


async def test_a_pipelined_request_waits_for_the_answer_before_it() -> None:
    app = Answering()
    async with connection(app) as (protocol, sent):
        reading = asyncio.create_task(protocol.handle(RawData(REQUEST * 2)))
        await settle()
        # The second request is not read (the read loop is held) until the first is answered.
        assert app.requests == 1 and not reading.done() and writes(sent) == []
        app.go.set()
        await asyncio.wait_for(reading, 1)
        await settle()
        assert app.requests == 2
        assert [w[:12] for w in writes(sent)] == [b"HTTP/1.1 200"] * 2


async def test_a_malformed_request_is_answered_400_and_the_connection_closed() -> None:
    app = Answering()
    async with connection(app) as (protocol, sent):
        await protocol.handle(RawData(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n"))
        (answer,) = writes(sent)
        assert answer.startswith(b"HTTP/1.1 400 \r\ncontent-length: 0\r\nconnection: close\r\n")
        assert isinstance(sent[-1], Closed) and app.requests == 0


@pytest.mark.parametrize(
    "received",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n",  # inside the head
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",  # the body
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",  # between two requests: no answer owed
    ],
    ids=["head", "body", "chunk", "trailer", "between"],
)
async def test_the_end_of_the_stream_inside_a_request_is_met_as_h11_meets_it(
    received: bytes,
) -> None:
    """The client closes its side (the read loop hands over b""): h11 answers 400 when a
    request was cut short and nothing was answered yet (RFC 9112 §8), and so must this.
    Compared in process: over a socket it depends on when the server reads the end."""
    written = {}
    for name, protocol_class in (
        ("h11", hypercorn_h11.CoalescingH11Protocol),
        ("llhttp", llhttp_h1.LlhttpProtocol),
    ):
        async with connection(Answering(), protocol_class) as (protocol, sent):
            await protocol.handle(RawData(received))
            await protocol.handle(RawData(b""))
            await settle()
            written[name] = [DATE.sub(b"date: *", w) for w in writes(sent)], Closed() in sent
    assert written["llhttp"] == written["h11"]
    if received.endswith(b"\r\n\r\n"):
        assert written["h11"] == ([], False)  # the app is still at work: nothing yet
    else:
        assert written["h11"][0][0].startswith(b"HTTP/1.1 400 ") and written["h11"][1]
