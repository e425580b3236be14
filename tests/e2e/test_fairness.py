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
        self.requests = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def predict(request: web.Request) -> web.Response:
            self.requests += 1
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


def concurrently(
    base: str, ca: Any, calls: list[tuple[str, str, dict[str, Any]]]
) -> list[httpx.Response]:
    """Each (path, api key, body) at once, each on its own connection."""
    import concurrent.futures

    def one(call: tuple[str, str, dict[str, Any]]) -> httpx.Response:
        path, key, body = call
        with httpx.Client(base_url=base, verify=client_context(ca), timeout=20) as client:
            return client.post(path, json=body, headers={"api-key": key})

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


PREDICT = "/v1/models/iris:predict"


def test_one_caller_flooding_a_slow_model_leaves_the_others_their_share(
    stack: Stack, slow_scorer: SlowScorer, spawn_gateway: Any
) -> None:
    """Bulkhead per principal: before, every request queued for the scorer's connections
    behind the flood, the other caller's among them."""
    from tests.conftest import new_key

    other, _ = asyncio.run(new_key(stack.state / "secrets.json"))
    gateway = spawn_gateway(
        scorer_url=slow_scorer.url,
        upstream={"timeout_s": 8.0, "max_connections": 4},
        SCOREGATE_MAX_IN_FLIGHT_PER_PRINCIPAL="2",
    )
    time.sleep(1)  # the new key reaches the gateway's key ring
    body = {"instances": ROWS}
    calls = [(PREDICT, stack.keys.iris, body)] * 6 + [(PREDICT, other, body)]
    started = time.monotonic()
    answers = concurrently(gateway.base_url, stack.ca, calls)
    flood, polite = answers[:6], answers[6]
    assert sorted(r.status_code for r in flood) == [200, 200, 429, 429, 429, 429]
    for refused in (r for r in flood if r.status_code == 429):
        assert refused.json()["code"] == "too_many_in_flight"
        assert refused.headers["retry-after"] == "1"
    assert polite.status_code == 200
    assert time.monotonic() - started < 7  # the polite caller waited one scorer delay
    reasons = {r["reason"] for r in gateway.records_of("test-iris", 6)}
    assert "bulkhead_principal" in reasons  # refused and audited


def test_a_flood_on_one_model_leaves_the_other_models_of_its_scorer_their_share(
    stack: Stack, slow_scorer: SlowScorer, spawn_gateway: Any
) -> None:
    """Bulkhead per model: before, a flood on iris held every connection to the scorer,
    and iris-copy (same scorer) waited behind it until its timeout."""
    gateway = spawn_gateway(
        scorer_url=slow_scorer.url,
        upstream={"timeout_s": 8.0, "max_connections": 4},
        SCOREGATE_MAX_IN_FLIGHT_PER_MODEL="3",
    )
    body = {"instances": ROWS}
    calls = [(PREDICT, stack.keys.iris, body)] * 6
    calls.append(("/v1/models/iris-copy:predict", stack.keys.copy_only, body))
    answers = concurrently(gateway.base_url, stack.ca, calls)
    flood, other_model = answers[:6], answers[6]
    assert sorted(r.status_code for r in flood) == [200, 200, 200, 503, 503, 503]
    busy = [r for r in flood if r.status_code == 503]
    assert {r.json()["code"] for r in busy} == {"model_busy"}
    assert other_model.status_code == 200


def test_a_row_half_a_million_wide_is_refused_before_it_reaches_the_scorer(
    stack: Stack, slow_scorer: SlowScorer, spawn_gateway: Any
) -> None:
    """Cost follows work: before, `shape: [1, 200000]` cost 1 and was forwarded, and the
    scorer converted all of it on its event loop before seeing it was not one row."""
    gateway = spawn_gateway(scorer_url=slow_scorer.url, upstream={"timeout_s": 8.0})
    wide = [0] * 200_000
    v2 = {"inputs": [{"name": "x", "shape": [1, 200_000], "datatype": "FP64", "data": wide}]}
    lying = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": wide}]}
    with gateway.client() as client:
        key = {"api-key": stack.keys.iris}
        too_many = client.post("/v2/models/iris/infer", json=v2, headers=key)
        mismatch = client.post("/v2/models/iris/infer", json=lying, headers=key)
        v1 = client.post(PREDICT, json={"instances": [wide]}, headers=key)
    assert (too_many.status_code, too_many.json()["code"]) == (413, "payload_too_large")
    assert (mismatch.status_code, mismatch.json()["code"]) == (422, "invalid_request")
    assert v1.status_code == 413
    assert slow_scorer.requests == 0  # nothing of it was forwarded
