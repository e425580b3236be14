"""Per-request cost of Hypercorn's HTTP/1.1 protocol, h11 against llhttp (issue 17).

    python bench/http1.py [--n 20000] [--json out.json]

CPU microseconds per request (process time: steadier than the clock on a shared machine),
median of five runs after a warm-up, for each protocol that
`serving.server` can choose (`http1_parser`): Hypercorn's H11Protocol as patched
(`serving.hazmat.hypercorn_h11.CoalescingH11Protocol`) and `serving.hazmat.llhttp_h1`.

- ``protocol``: the bench's request (wrk's POST of the iris V2 body with an API key, as
  `make bench` sends it) handed to the protocol as one read, the events it gives its
  stream kept by a stand-in, and the gateway's answer (its fields: security headers, a
  request id of its own each time, the JSON type and length) written back through
  `stream_send` as Hypercorn's HTTPStream would: parse and answer, nothing else.
- ``with_stream``: the same through Hypercorn's own HTTPStream and task group to an ASGI
  app that answers at once, on the event loop the servers run (uvloop): what one
  keep-alive request costs below the application.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hypercorn.protocol.h11
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Event, RawData, Updated
from hypercorn.protocol.events import Body, EndBody, Response, StreamClosed
from hypercorn.typing import ConnectionState

from bench.peers import V2_BODY, V2_PATH
from serving.hazmat import hypercorn_h11, llhttp_h1

BODY = json.dumps(V2_BODY).encode()
REQUEST = (
    f"POST {V2_PATH} HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nContent-Type: application/json\r\n"
    "api-key: sg_abcdefghijklmnop_abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx"
    f"_0123abcd\r\nContent-Length: {len(BODY)}\r\n\r\n"
).encode() + BODY
ANSWER = (
    b'{"model_name":"iris","model_version":"1","id":"0f1e2d3c","outputs":[{"name":"predict",'
    b'"shape":[1],"datatype":"BYTES","data":["setosa"]}]}'
)
SECURITY = [
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
PROTOCOLS: dict[str, Callable[..., Any]] = {
    "h11": hypercorn_h11.CoalescingH11Protocol,
    "llhttp": llhttp_h1.LlhttpProtocol,
}


def config() -> Config:
    config = Config()
    config.keep_alive_max_requests = 10**9  # one connection throughout
    return config


def answer_headers(n: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(ANSWER)),
        *SECURITY,
        (b"x-request-id", b"%032x" % n),
    ]


class KeptStream:
    """Stands in for Hypercorn's HTTPStream: keeps what the protocol gives it."""

    def __init__(self, *args: object) -> None:
        self.events: list[object] = []

    async def handle(self, event: object) -> None:
        self.events.append(event)


def median_us(run: Callable[[int], Awaitable[float]], n: int) -> float:
    async def runs() -> list[float]:
        await run(min(n, 1000))
        return [await run(n) for _ in range(5)]

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return statistics.median(asyncio.run(runs()))
    return statistics.median(uvloop.run(runs()))


def protocol_cost(name: str) -> Callable[[int], Awaitable[float]]:
    async def run(n: int) -> float:
        written = 0

        async def send(event: Event) -> None:
            nonlocal written
            if isinstance(event, RawData):
                written += 1

        protocol = PROTOCOLS[name](
            None,
            config(),
            WorkerContext(None),
            None,
            ConnectionState({}),
            True,
            ("127.0.0.1", 50000),
            ("127.0.0.1", 8443),
            send,
        )
        stream_send = protocol.stream_send
        started = time.process_time()
        for i in range(n):
            await protocol.handle(RawData(REQUEST))
            await stream_send(Response(stream_id=1, headers=answer_headers(i), status_code=200))
            await stream_send(Body(stream_id=1, data=ANSWER))
            await stream_send(EndBody(stream_id=1))
            await stream_send(StreamClosed(stream_id=1))
        elapsed = time.process_time() - started
        assert written == n, (name, written)  # noqa: S101 - one write per answer
        return elapsed / n * 1e6

    return run


def stream_cost(name: str) -> Callable[[int], Awaitable[float]]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        headers = answer_headers(app.count)  # type: ignore[attr-defined]
        app.count += 1  # type: ignore[attr-defined]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})

    async def run(n: int) -> float:
        app.count = 0  # type: ignore[attr-defined]
        cycled: asyncio.Future[None] | None = None

        async def send(event: Event) -> None:
            if event == Updated(idle=True) and cycled is not None:
                cycled.set_result(None)

        loop = asyncio.get_running_loop()
        async with TaskGroup(loop) as task_group:
            protocol = PROTOCOLS[name](
                ASGIWrapper(app),  # type: ignore[arg-type]
                config(),
                WorkerContext(None),
                task_group,
                ConnectionState({}),
                True,
                ("127.0.0.1", 50000),
                ("127.0.0.1", 8443),
                send,
            )
            started = time.process_time()
            for _ in range(n):
                cycled = loop.create_future()
                await protocol.handle(RawData(REQUEST))
                await cycled
            elapsed = time.process_time() - started
        return elapsed / n * 1e6

    return run


def main(n: int) -> dict[str, Any]:
    hypercorn_h11.install({"llhttp": llhttp_h1.LlhttpProtocol})
    figures: dict[str, Any] = {}
    original = hypercorn.protocol.h11.HTTPStream, llhttp_h1.HTTPStream
    hypercorn.protocol.h11.HTTPStream = llhttp_h1.HTTPStream = KeptStream  # type: ignore[misc]
    try:
        for name in PROTOCOLS:
            figures[f"{name}_protocol_us"] = round(median_us(protocol_cost(name), n), 2)
    finally:
        hypercorn.protocol.h11.HTTPStream, llhttp_h1.HTTPStream = original  # type: ignore[misc]
    for name in PROTOCOLS:
        figures[f"{name}_with_stream_us"] = round(median_us(stream_cost(name), n // 2), 2)
    figures["protocol_h11_over_llhttp"] = round(
        figures["h11_protocol_us"] / figures["llhttp_protocol_us"], 1
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = main(args.n)
    for key, value in result.items():
        print(f"{key:<28} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
