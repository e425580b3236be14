"""serving.hazmat.llhttp_h1 in process, with Hypercorn's own streams and task group: what
reaches the socket and when. Its answers compared with h11's over real sockets:
tests/serving/test_http1_differential.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.typing import ConnectionState

from serving.hazmat import llhttp_h1

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
async def connection(app: Answering) -> AsyncIterator[tuple[llhttp_h1.LlhttpProtocol, list[Event]]]:
    sent: list[Event] = []

    async def send(event: Event) -> None:
        sent.append(event)

    async with TaskGroup(asyncio.get_running_loop()) as task_group:
        protocol = llhttp_h1.LlhttpProtocol(
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
