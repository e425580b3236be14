"""The forwarding client (`gateway.upstream.hazmat.http1_pool`) against a real socket
server that says exactly the bytes each test picks: well-behaved, stale, unframed,
oversized, hostile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.upstream.hazmat.http1_pool import (
    MAX_HEAD_BYTES,
    AnswerTooLarge,
    BufferBudget,
    ConnectFailed,
    ProtocolFailed,
    UpstreamPool,
)
from tests.conftest import free_port

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawServer"], Awaitable[None]]


@dataclass
class RawServer:
    url: str = ""
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    handler: Handler | None = None


async def read_request(reader: asyncio.StreamReader, server: RawServer) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    request = head + await reader.readexactly(length)
    server.requests.append(request)
    return request


async def answer_ok(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
) -> None:
    while await read_request(reader, server) is not None:
        writer.write(OK)
        await writer.drain()


def replying(answer: bytes) -> Handler:
    """A scorer that reads one request, says exactly ``answer`` and closes."""

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: RawServer
    ) -> None:
        if await read_request(reader, state) is not None:
            writer.write(answer)
            await writer.drain()

    return handler


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    state = RawServer(handler=answer_ok)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        assert state.handler is not None
        try:
            await state.handler(reader, writer, state)
        except (asyncio.CancelledError, ConnectionError):
            pass  # the test ended, or the client closed first
        finally:
            writer.close()

    port = free_port()
    listener = await asyncio.start_server(on_connect, "127.0.0.1", port)
    state.url = f"http://127.0.0.1:{port}"
    yield state
    listener.close()


def pool_for(server: RawServer, **kwargs: int) -> UpstreamPool:
    return UpstreamPool(
        server.url,
        max_connections=kwargs.get("max_connections", 8),
        max_body=kwargs.get("max_body", 1024),
    )


async def exchange(pool: UpstreamPool, body: bytes | None = b"{}", path: str = "/x") -> object:
    return await pool.exchange(
        "POST" if body is not None else "GET",
        path,
        {"x-request-id": "r1", "content-type": "application/json"},
        body,
        connect_timeout_s=1.0,
    )


async def test_connections_are_kept_alive_and_reused(server: RawServer) -> None:
    pool = pool_for(server)
    for _ in range(3):
        answer = await exchange(pool)
        assert answer == type(answer)(200, "application/json", b"{}")
    assert server.connections == 1
    assert len(server.requests) == 3
    # The request is ours, whole: the method, path, host and only the headers we passed.
    first = server.requests[0].decode()
    assert first.startswith("POST /x HTTP/1.1\r\nhost: 127.0.0.1:")
    assert "x-request-id: r1\r\n" in first and "content-length: 2\r\n" in first
    pool.close()


async def test_a_connection_the_scorer_closed_while_idle_is_retried_once(
    server: RawServer,
) -> None:
    server.handler = replying(OK)  # answers once, then closes the connection
    pool = pool_for(server)
    await exchange(pool)
    await asyncio.sleep(0.05)  # the scorer's close reaches us while the connection idles
    assert (await exchange(pool)).status == 200  # type: ignore[attr-defined]
    assert server.connections == 2
    assert len(server.requests) == 2  # the retried request reached the scorer once


async def crashes_on_the_second_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: RawServer
) -> None:
    """A scorer that answers, then dies on the next request it reads (a crash, an OOM
    kill): the connection closes without an answer, after the request arrived."""
    while await read_request(reader, state) is not None:
        if len(state.requests) == 2:
            return
        writer.write(OK)
        await writer.drain()


async def test_a_post_the_scorer_closed_on_is_never_sent_again(server: RawServer) -> None:
    """RFC 9110 §9.2.2: a POST is not retried unless it provably never left. A close
    after the request was written looks the same whether the connection was stale or the
    request killed the scorer; re-sending it would let one poison request take down a
    second scorer (before: it was sent again, on a new connection)."""
    server.handler = crashes_on_the_second_request
    pool = pool_for(server)
    await exchange(pool)
    with pytest.raises(ProtocolFailed):
        await exchange(pool)
    assert len(server.requests) == 2  # the poison request reached one scorer, once
    pool.close()


async def test_a_get_on_a_connection_that_closed_under_it_is_retried_once(
    server: RawServer,
) -> None:
    """An idempotent request may be sent again (RFC 9110 §9.2.2)."""
    server.handler = crashes_on_the_second_request
    pool = pool_for(server)
    await exchange(pool, body=None)
    assert (await exchange(pool, body=None)).status == 200  # type: ignore[attr-defined]
    assert len(server.requests) == 3
    pool.close()


async def test_connect_refused_is_connect_failed() -> None:
    pool = UpstreamPool(f"http://127.0.0.1:{free_port()}", max_connections=1, max_body=10)
    with pytest.raises(ConnectFailed):
        await exchange(pool)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        # No framing: the body would run to the close; we refuse to guess where it ends.
        (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}", ProtocolFailed),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n", AnswerTooLarge),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"x" * 1024
            + b"\r\n"
            + b"400\r\n"
            + b"x" * 1024
            + b"\r\n0\r\n\r\n",
            AnswerTooLarge,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}", ProtocolFailed),  # cut short
        (b"SMTP ready\r\n\r\n", ProtocolFailed),
        (b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n", ProtocolFailed),
    ],
    ids=[
        "unframed",
        "declared-too-large",
        "chunked-too-large",
        "cut-short",
        "not-http",
        "bad-header",
    ],
)
async def test_malformed_or_oversized_answers_are_refused(
    server: RawServer, answer: bytes, error: type[Exception]
) -> None:
    server.handler = replying(answer)
    pool = pool_for(server)
    with pytest.raises(error):
        await asyncio.wait_for(exchange(pool), 2)
    # The connection is not reused: the next request opens a new one.
    server.handler = answer_ok
    assert (await exchange(pool)).status == 200  # type: ignore[attr-defined]
    assert server.connections == 2


async def test_an_endless_answer_head_is_cut_at_the_head_limit(server: RawServer) -> None:
    async def endless(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: RawServer
    ) -> None:
        await read_request(reader, state)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(200):
            writer.write(b"x-filler: " + b"a" * 1000 + b"\r\n")
            await writer.drain()
        await asyncio.sleep(5)

    server.handler = endless
    with pytest.raises(ProtocolFailed, match="head"):
        await asyncio.wait_for(exchange(pool_for(server)), 2)
    assert 200 * 1000 > MAX_HEAD_BYTES  # the server offered more than the limit


async def test_response_desync_a_late_answer_never_reaches_the_next_request(
    server: RawServer,
) -> None:
    # Response queue poisoning: if a timed-out exchange left its connection in the pool,
    # its late answer would be read as the answer to the next request (another client's).
    async def slow_then_fast(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: RawServer
    ) -> None:
        while (request := await read_request(reader, state)) is not None:
            if b"/slow" in request:
                await asyncio.sleep(0.3)
                body = b'{"for":"slow"}'
            else:
                body = b'{"for":"fast"}'
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()

    server.handler = slow_then_fast
    pool = pool_for(server, max_connections=1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await exchange(pool, path="/slow")
    answer = await exchange(pool, path="/fast")
    assert answer.body == b'{"for":"fast"}'  # type: ignore[attr-defined]
    await asyncio.sleep(0.4)  # the slow answer has arrived by now, on a closed connection
    answer = await exchange(pool, path="/fast")
    assert answer.body == b'{"for":"fast"}'  # type: ignore[attr-defined]


async def test_unsolicited_bytes_make_an_idle_connection_unusable(server: RawServer) -> None:
    async def answer_twice(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: RawServer
    ) -> None:
        while await read_request(reader, state) is not None:
            writer.write(OK + OK)  # a second answer nobody asked for
            await writer.drain()

    server.handler = answer_twice
    pool = pool_for(server)
    await exchange(pool)
    await asyncio.sleep(0.05)
    server.handler = answer_ok
    assert (await exchange(pool)).body == b"{}"  # type: ignore[attr-defined]
    assert server.connections == 2


async def test_interim_1xx_answers_are_skipped(server: RawServer) -> None:
    server.handler = replying(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    assert (await exchange(pool_for(server))).status == 200  # type: ignore[attr-defined]


async def test_open_connections_are_capped_per_upstream(server: RawServer) -> None:
    async def slow(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: RawServer
    ) -> None:
        while await read_request(reader, state) is not None:
            await asyncio.sleep(0.05)
            writer.write(OK)
            await writer.drain()

    server.handler = slow
    pool = pool_for(server, max_connections=2)
    answers = await asyncio.gather(*(exchange(pool) for _ in range(6)))
    assert [a.status for a in answers] == [200] * 6  # type: ignore[attr-defined]
    assert server.connections == 2


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/x HTTP/1.1\r\nx-injected: 1\r\n\r\nGET /admin", {}),
        ("/x", {"x-request-id": "r1\r\nx-injected: 1"}),
        ("/x", {"bad name": "v"}),
    ],
    ids=["target", "header-value", "header-name"],
)
async def test_request_splitting_is_refused_before_anything_is_sent(
    server: RawServer, path: str, headers: dict[str, str]
) -> None:
    pool = pool_for(server)
    with pytest.raises(ValueError, match="unsafe"):
        await pool.exchange("GET", path, headers, None, connect_timeout_s=1.0)
    assert server.connections == 0


async def endless_trailers(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: RawServer
) -> None:
    """A chunked answer whose body ends, then a trailer that never does."""
    if await read_request(reader, state) is None:
        return
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n"
        b"\r\n2\r\n{}\r\n0\r\nx-trailer: "
    )
    while True:
        writer.write(b"a" * 65536)
        await writer.drain()  # keeps sending until the client gives up


async def test_endless_trailers_are_cut_at_the_answer_bound(server: RawServer) -> None:
    """Before: once the head was complete nothing bounded what followed the body; the
    parser took trailer bytes (buffering the value) for as long as the scorer sent them."""
    server.handler = endless_trailers
    pool = pool_for(server, max_body=1024)
    with pytest.raises(AnswerTooLarge):
        async with asyncio.timeout(5):
            await exchange(pool)
    pool.close()


async def slow_big_answers(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: RawServer
) -> None:
    """600 KiB bodies, sent in pieces with pauses: many answers are half-received at once."""
    while await read_request(reader, state) is not None:
        size = 600 * 1024
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {size}\r\n\r\n".encode()
        )
        for _ in range(6):
            writer.write(b"1" * (size // 6))
            await writer.drain()
            await asyncio.sleep(0.05)


async def test_answers_in_flight_share_one_buffer_budget(server: RawServer) -> None:
    """A scorer filling many connections at once holds at most the budget of the gateway's
    memory (before: each connection up to the body limit, 64 x 8 MiB per upstream)."""
    server.handler = slow_big_answers
    budget = BufferBudget(1024 * 1024)
    pool = UpstreamPool(server.url, max_connections=8, max_body=1024 * 1024, budget=budget)
    results = await asyncio.gather(*(exchange(pool) for _ in range(6)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, AnswerTooLarge)]
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert refused and answered  # some refused, the budget's worth answered
    assert len(answered) <= 1  # 2 x 600 KiB is over the 1 MiB budget
    assert budget.used == 0  # every byte given back, answered or refused
    pool.close()


async def test_a_large_answer_arriving_in_one_read_is_not_taken_for_a_large_head(
    server: RawServer,
) -> None:
    """Before: the head's size was checked before the read was parsed, so a small head and
    more than 64 KiB of body in one read (loopback, a fast scorer) was refused as 502."""
    body = b"[" + b"1," * 100_000 + b"1]"
    server.handler = replying(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    pool = pool_for(server, max_body=1024 * 1024)
    answer = await exchange(pool)
    assert answer.body == body  # type: ignore[attr-defined]
    pool.close()
