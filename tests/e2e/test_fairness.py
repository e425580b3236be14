"""Fair under abuse, with real sockets: a slow scorer is judged by the route's timeout, not
by the client connection's read timeout."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from serving.tls import client_context
from tests.conftest import Stack, free_port

pytestmark = pytest.mark.e2e
ROWS = [[5.1, 3.5, 1.4, 0.2]]


class SlowScorer:
    """An upstream that answers every scoring request after ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def predict(request: web.Request) -> web.Response:
            await request.read()
            await asyncio.sleep(self.delay_s)
            return web.json_response({"predictions": ["setosa"]})

        async def ready(request: web.Request) -> web.Response:
            return web.json_response({"ready": True})

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/v1/models/{name}", predict)
            app.router.add_get("/v2/health/ready", ready)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()
        assert self._runner is not None
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def slow_scorer() -> Iterator[SlowScorer]:
    scorer = SlowScorer(delay_s=3.0)
    scorer.start()
    yield scorer
    scorer.stop()


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
def test_a_scorer_slower_than_the_read_timeout_is_awaited_until_the_routes_timeout(
    stack: Stack, slow_scorer: SlowScorer, spawn_gateway: Any, http2: bool
) -> None:
    """Before: the client connection's read timeout (1 s here, 10 s by default) kept
    running while the scorer was awaited: the connection closed (on HTTP/2 with every
    stream on it), the record said 499 and the breaker never counted the slow scorer."""
    gateway = spawn_gateway(
        scorer_url=slow_scorer.url,
        upstream={"timeout_s": 6.0},
        SCOREGATE_READ_TIMEOUT_S="1",
    )
    with httpx.Client(
        base_url=gateway.base_url, verify=client_context(stack.ca), timeout=20, http2=http2
    ) as client:
        started = time.monotonic()
        r = client.post(
            "/v1/models/iris:predict",
            json={"instances": ROWS},
            headers={"api-key": stack.keys.iris},
        )
        took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert 2.9 < took < 6.0
    assert gateway.records_of("test-iris", 1)[-1]["status"] == 200
