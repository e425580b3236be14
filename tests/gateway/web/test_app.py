"""The gateway's request path through the Quart test client, against a real HTTP upstream.

The upstream is a small aiohttp server whose behaviour each test picks (healthy, slow,
redirecting, huge, not JSON, down) so every forwarding rule is exercised for real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import werkzeug.exceptions
from aiohttp import web
from quart import Quart
from quart.typing import TestClientProtocol as QuartClient

from gateway.identity import lifecycle
from gateway.secretstore.localfile import LocalSecretStore
from gateway.service import build_gateway
from gateway.settings import GatewaySettings
from tests import binary_framing as framing
from tests.conftest import ROOT, free_port, write_access, write_routes

ROWS = [[5.1, 3.5, 1.4, 0.2]]


@dataclass
class Upstream:
    url: str
    mode: str = "ok"
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream(url="")

    async def handle(request: web.Request) -> web.StreamResponse:
        state.seen.append(
            {
                "path": request.path_qs,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": await request.read(),
            }
        )
        if request.path == "/v2/health/ready":
            return web.json_response({"ready": True})
        mode = state.mode
        if mode == "slow":
            await asyncio.sleep(5)
        if mode == "redirect":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data")
        if mode == "huge":
            return web.Response(
                body=b"[" + b"1," * 600_000 + b"1]", content_type="application/json"
            )
        if mode == "html":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if mode == "error500":
            return web.json_response({"error": "Traceback: secret", "code": "x"}, status=500)
        if mode in ("binary", "binary-lying"):
            header = b'{"model_name":"iris","outputs":[{"name":"predict","shape":[1],'
            header += b'"datatype":"INT64","parameters":{"binary_data_size":8}}]}'
            size = len(header) if mode == "binary" else len(header) + 100
            return web.Response(
                body=header + (2).to_bytes(8, "little"),
                headers={
                    "content-type": "application/octet-stream",
                    "inference-header-content-length": str(size),
                },
            )
        if mode in ("version_not_found", "model_not_found"):
            return web.json_response({"error": "not here", "code": mode}, status=404)
        if mode == "reject":
            return web.json_response(
                {"error": "input dimension 1 must be 4", "code": "invalid_input"},
                status=422,
            )
        return web.json_response({"predictions": ["setosa"]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@dataclass
class GatewayUnderTest:
    client: QuartClient
    app: Quart
    key: str
    audit: Path

    def records(self) -> list[dict[str, Any]]:
        return (
            [orjson.loads(line) for line in self.audit.read_bytes().splitlines()]
            if self.audit.exists()
            else []
        )

    async def record_for(self, request_id: str) -> dict[str, Any]:
        for _ in range(100):
            found = [r for r in self.records() if r["request_id"] == request_id]
            if found:
                return found[0]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no audit record for {request_id}")


async def make_gateway(
    tmp_path: Path, upstream_url: str, routes: dict[str, float] | None = None, **settings: Any
) -> tuple[Quart, str, Path]:
    from gateway.web.app import create_app

    store_path = tmp_path / "secrets.json"
    issued = await lifecycle.create(
        LocalSecretStore(store_path), owner="alice", scopes=["models:iris"]
    )
    config = GatewaySettings(
        state_dir=tmp_path,
        routes_file=write_routes(tmp_path / "routes.toml", upstream_url, **(routes or {})),
        access_policy_file=write_access(tmp_path / "access.toml"),
        **settings,
    )
    return create_app(build_gateway(config)), issued.key, config.audit_file


@pytest.fixture
async def gw(tmp_path: Path, upstream: Upstream) -> AsyncIterator[GatewayUnderTest]:
    app, key, audit = await make_gateway(
        tmp_path, upstream.url, max_body_bytes=64 * 1024, max_response_bytes=256 * 1024
    )
    async with app.test_app() as test_app:
        yield GatewayUnderTest(test_app.test_client(), app, key, audit)


async def predict(gw: GatewayUnderTest, **kwargs: Any) -> Any:
    headers = {"api-key": gw.key, **kwargs.pop("headers", {})}
    return await gw.client.post("/v1/models/iris:predict", headers=headers, **kwargs)


async def test_allowed_request_is_forwarded_and_audited(
    gw: GatewayUnderTest, upstream: Upstream
) -> None:
    r = await predict(gw, json={"instances": ROWS})
    assert r.status_code == 200
    assert await r.get_json() == {"predictions": ["setosa"]}
    record = await gw.record_for(r.headers["x-request-id"])
    assert record["decision"] == "allow"
    assert (
        record["payload_sha256"]
        == __import__("hashlib").sha256(upstream.seen[-1]["body"]).hexdigest()
    )
    assert upstream.seen[-1]["path"] == "/v1/models/iris:predict"


async def test_forwarded_headers_are_an_allow_list(
    gw: GatewayUnderTest, upstream: Upstream
) -> None:
    await predict(
        gw,
        json={"instances": ROWS},
        headers={
            "cookie": "session=1",
            "proxy-authorization": "Basic eA==",
            "x-forwarded-host": "evil",
            "connection": "close",
        },
    )
    sent = {k.lower() for k in upstream.seen[-1]["headers"]}
    assert not sent & {
        "api-key",
        "cookie",
        "proxy-authorization",
        "x-forwarded-host",
        "accept-encoding",
    }
    assert "x-request-id" in sent


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("slow", 504, "upstream_timeout"),
        ("redirect", 502, "bad_upstream"),
        ("huge", 502, "bad_upstream"),
        ("html", 502, "bad_upstream"),
        ("error500", 502, "bad_upstream"),
        ("reject", 422, "invalid_request"),
    ],
)
async def test_upstream_faults_map_to_gateway_statuses(
    gw: GatewayUnderTest, upstream: Upstream, mode: str, status: int, code: str
) -> None:
    upstream.mode = mode
    started = time.monotonic()
    r = await predict(gw, json={"instances": ROWS})
    elapsed = time.monotonic() - started
    body = await r.get_json()
    assert (r.status_code, body["code"]) == (status, code)
    assert "Traceback" not in str(body)
    if mode == "redirect":
        assert all("meta-data" not in s["path"] for s in upstream.seen)  # never followed
    if mode == "slow":
        assert 1.8 < elapsed < 4.0  # at the route's 2 s timeout, not the scorer's 5 s
    # The gateway stays healthy throughout: alive, and serving once the scorer behaves.
    assert (await gw.client.get("/v2/health/live")).status_code == 200
    upstream.mode = "ok"
    assert (await predict(gw, json={"instances": ROWS})).status_code == 200


@pytest.mark.parametrize("when", ["while_forwarded", "while_sending_the_body"])
async def test_client_that_disconnects_is_audited_as_499_and_frees_the_gateway(
    gw: GatewayUnderTest, upstream: Upstream, when: str
) -> None:
    # A client that leaves (the scorer is slow, or it stops half-way through its body)
    # gets no answer, and the trail says so: one record with 499, never a 200 or a 504
    # for an answer nobody received. The scorer call is abandoned, not awaited.
    upstream.mode = "slow"
    headers = {"api-key": gw.key, "content-type": "application/json"}
    body = orjson.dumps({"instances": ROWS})
    started = time.monotonic()
    async with gw.client.request(
        "/v1/models/iris:predict", method="POST", headers=headers
    ) as connection:
        if when == "while_forwarded":
            await connection.send(body)
            await connection.send_complete()
            for _ in range(100):  # until the gateway's call reaches the scorer
                if upstream.seen:
                    break
                await asyncio.sleep(0.02)
            assert upstream.seen
        else:
            await connection.send(body[:5])
        await connection.disconnect()
    assert time.monotonic() - started < 1.5  # not held for the scorer's 2 s timeout
    for _ in range(100):
        records = [r for r in gw.records() if r["route"] == "predict"]
        if records:
            break
        await asyncio.sleep(0.01)
    assert [(r["status"], r["reason"]) for r in records] == [(499, "client_disconnected")]
    assert records[0]["decision"] == "allow"  # it had been admitted
    upstream.mode = "ok"
    assert (await predict(gw, json={"instances": ROWS})).status_code == 200


async def test_scorer_down_is_503_fast(tmp_path: Path) -> None:
    app, key, _ = await make_gateway(tmp_path, f"http://127.0.0.1:{free_port()}")
    async with app.test_app() as test_app:
        started = time.monotonic()
        r = await test_app.test_client().post(
            "/v1/models/iris:predict", json={"instances": ROWS}, headers={"api-key": key}
        )
        assert time.monotonic() - started < 1.0  # refused at connect, not at a timeout
        assert (r.status_code, (await r.get_json())["code"]) == (
            503,
            "upstream_unavailable",
        )
        # Its model is unavailable; the replica is not (readiness per replica, DESIGN.md).
        model = await test_app.test_client().get("/v2/models/iris/ready", headers={"api-key": key})
        assert model.status_code == 503
        ready = await test_app.test_client().get("/v2/health/ready")
        assert ready.status_code == 200
        assert "upstreams" not in await ready.get_json()


async def test_too_many_instances_is_413_before_forwarding(
    gw: GatewayUnderTest, upstream: Upstream
) -> None:
    r = await predict(gw, json={"instances": ROWS * 9})
    assert (r.status_code, (await r.get_json())["code"]) == (413, "payload_too_large")
    assert [s for s in upstream.seen if "predict" in s["path"]] == []
    assert (await gw.record_for(r.headers["x-request-id"]))["reason"] == "too_many_instances"


async def test_v2_instances_are_counted_from_the_shape(gw: GatewayUnderTest) -> None:
    body = {"inputs": [{"name": "m", "shape": [9, 4], "datatype": "FP64", "data": [0.0] * 36}]}
    r = await gw.client.post("/v2/models/iris/infer", json=body, headers={"api-key": gw.key})
    assert r.status_code == 413


@pytest.mark.parametrize("shape", [[0, 4], [-1, 4], ["1", 4], [True, 4], []])
async def test_v2_batch_must_be_at_least_one_so_nothing_is_free(
    gw: GatewayUnderTest, upstream: Upstream, shape: list[object]
) -> None:
    body = {"inputs": [{"name": "m", "shape": shape, "datatype": "FP64", "data": [0.0] * 4000}]}
    r = await gw.client.post("/v2/models/iris/infer", json=body, headers={"api-key": gw.key})
    assert (r.status_code, (await r.get_json())["code"]) == (422, "invalid_request")
    assert [s for s in upstream.seen if "infer" in s["path"]] == []


async def test_v2_cost_is_the_largest_batch_of_any_input(gw: GatewayUnderTest) -> None:
    body = {
        "inputs": [
            {"name": "a", "shape": [1, 4], "datatype": "FP64", "data": [0.0] * 4},
            {"name": "b", "shape": [9, 4], "datatype": "FP64", "data": [0.0] * 36},
        ]
    }
    r = await gw.client.post("/v2/models/iris/infer", json=body, headers={"api-key": gw.key})
    assert r.status_code == 413  # 9 > max_instances 8, though the first input says 1


async def test_unknown_route_and_method_are_json_and_audited(gw: GatewayUnderTest) -> None:
    r = await gw.client.get("/admin")
    assert (r.status_code, (await r.get_json())["code"]) == (404, "not_found")
    assert (await gw.record_for(r.headers["x-request-id"]))["reason"] == "route_unknown"
    r = await gw.client.delete("/v1/models/iris:predict", headers={"api-key": gw.key})
    assert (r.status_code, (await r.get_json())["code"]) == (405, "method_not_allowed")


async def test_request_id_is_always_ours_and_the_clients_is_recorded_beside_it(
    gw: GatewayUnderTest, upstream: Upstream
) -> None:
    r1 = await predict(gw, json={"instances": ROWS}, headers={"x-request-id": "client-req-0001"})
    r2 = await predict(gw, json={"instances": ROWS}, headers={"x-request-id": "client-req-0001"})
    ours = r1.headers["x-request-id"]
    assert ours != "client-req-0001" and ours != r2.headers["x-request-id"]
    assert upstream.seen[-2]["headers"]["x-request-id"] == ours
    record = await gw.record_for(ours)
    assert record["client_request_id"] == "client-req-0001"


async def test_options_is_405_not_an_automatic_answer(gw: GatewayUnderTest) -> None:
    r = await gw.client.options("/v1/models/iris:predict")
    assert (r.status_code, (await r.get_json())["code"]) == (405, "method_not_allowed")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/models/iris:predict", "POST"),
        ("PUT", "/v2/models/iris/infer", "POST"),
        ("POST", "/v2/models/iris", "GET, HEAD"),
        ("TRACE", "/v2/health/live", "GET, HEAD"),
        ("OPTIONS", "/v2/health/ready", "GET, HEAD"),
    ],
)
async def test_405_names_the_methods_the_path_serves(
    gw: GatewayUnderTest, method: str, path: str, allowed: str
) -> None:
    # RFC 9110 §15.5.6: the origin server MUST send Allow with a 405.
    r = await gw.client.open(path, method=method, headers={"api-key": gw.key})
    assert (r.status_code, (await r.get_json())["code"]) == (405, "method_not_allowed")
    assert r.headers["allow"] == allowed


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_not_declared_as_json_is_415_and_never_forwarded(
    gw: GatewayUnderTest, upstream: Upstream, content_type: str | None
) -> None:
    headers = {"api-key": gw.key} | ({"content-type": content_type} if content_type else {})
    r = await gw.client.post(
        "/v1/models/iris:predict", data=orjson.dumps({"instances": ROWS}), headers=headers
    )
    assert (r.status_code, (await r.get_json())["code"]) == (
        415,
        "unsupported_media_type",
    )
    assert [s for s in upstream.seen if "predict" in s["path"]] == []
    assert (await gw.record_for(r.headers["x-request-id"]))["reason"] == "content_type_not_json"


async def test_json_with_a_charset_parameter_is_accepted(
    gw: GatewayUnderTest, upstream: Upstream
) -> None:
    r = await gw.client.post(
        "/v1/models/iris:predict",
        data=orjson.dumps({"instances": ROWS}),
        headers={"api-key": gw.key, "content-type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200


TENSOR = {"name": "m", "shape": [1, 4], "datatype": "FP64", "data": [0.0] * 4}


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [{k: v for k, v in TENSOR.items() if k != "name"}]},
        {"inputs": [TENSOR | {"name": 7}]},
        {"inputs": [{k: v for k, v in TENSOR.items() if k != "datatype"}]},
        {"inputs": [TENSOR | {"datatype": ["FP64"]}]},
        {"inputs": [{k: v for k, v in TENSOR.items() if k != "data"}]},
        {"inputs": [TENSOR | {"data": "0,0,0,0"}]},
        {"inputs": [TENSOR | {"parameters": "x"}]},
        {"inputs": [TENSOR], "id": 5},
        {"inputs": [TENSOR], "parameters": []},
        {"inputs": [TENSOR], "outputs": []},
        {"inputs": [TENSOR], "outputs": None},
        {"inputs": [TENSOR], "outputs": {"name": "predict"}},
        {"inputs": [TENSOR], "outputs": [{"name": 1}]},
        {"inputs": [TENSOR], "outputs": [{"name": "predict", "parameters": 1}]},
    ],
)
async def test_v2_envelope_that_breaks_the_protocol_is_422_and_never_forwarded(
    gw: GatewayUnderTest, upstream: Upstream, body: dict[str, Any]
) -> None:
    r = await gw.client.post("/v2/models/iris/infer", json=body, headers={"api-key": gw.key})
    assert (r.status_code, (await r.get_json())["code"]) == (422, "invalid_request")
    assert [s for s in upstream.seen if "infer" in s["path"]] == []


async def test_v2_envelope_as_the_protocol_writes_it_is_forwarded(
    gw: GatewayUnderTest, upstream: Upstream
) -> None:
    body = {
        "id": "r-1",
        "parameters": {},
        "inputs": [TENSOR | {"parameters": {}}],
        "outputs": [{"name": "predict", "parameters": {}}],
    }
    r = await gw.client.post("/v2/models/iris/infer", json=body, headers={"api-key": gw.key})
    assert r.status_code == 200
    assert orjson.loads(upstream.seen[-1]["body"]) == body


async def test_unexpected_exception_is_a_generic_500(
    gw: GatewayUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.steps import path as steps_path

    def explode(*args: object) -> None:
        raise RuntimeError("/etc/secret-path leaked detail")

    monkeypatch.setattr(steps_path, "measure", explode)
    r = await predict(gw, json={"instances": ROWS})
    text = await r.get_data(as_text=True)
    assert r.status_code == 500
    assert "secret-path" not in text and "RuntimeError" not in text
    assert (await r.get_json())["code"] == "internal_error"
    assert (await gw.record_for(r.headers["x-request-id"]))["status"] == 500


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [
        (werkzeug.exceptions.RequestTimeout, 408, "request_timeout"),
        (werkzeug.exceptions.BadRequest, 400, "bad_request"),
        (werkzeug.exceptions.RequestedRangeNotSatisfiable, 400, "bad_request"),
        (werkzeug.exceptions.InternalServerError, 500, "internal_error"),
    ],
)
async def test_http_layer_errors_get_a_status_and_code_that_agree(
    gw: GatewayUnderTest,
    monkeypatch: pytest.MonkeyPatch,
    raised: type[werkzeug.exceptions.HTTPException],
    status: int,
    code: str,
) -> None:
    # Quart raises Werkzeug's exceptions (a body slower than BODY_TIMEOUT is a 408) on the
    # routes it serves (here: model metadata): each becomes one of our documented statuses
    # with its own code, never "bad_request" 408.
    from gateway.upstream.forwarder import Forwarder

    async def fail(*args: object) -> None:
        raise raised()

    monkeypatch.setattr(Forwarder, "send", fail)
    r = await gw.client.get("/v2/models/iris", headers={"api-key": gw.key})
    assert (r.status_code, (await r.get_json())["code"]) == (status, code)
    assert (await gw.record_for(r.headers["x-request-id"]))["status"] == status


async def test_client_address_uses_every_forwarded_for_line(
    tmp_path: Path, upstream: Upstream
) -> None:
    app, key, audit = await make_gateway(tmp_path, upstream.url, trusted_proxy_hops=1)
    async with app.test_app() as test_app:
        # The client sends its own line; our one trusted proxy appends another line.
        r = await test_app.test_client().post(
            "/v1/models/iris:predict",
            json={"instances": ROWS},
            headers=[
                ("api-key", key),
                ("x-forwarded-for", "10.9.9.9"),
                ("x-forwarded-for", "198.51.100.7"),
            ],
        )
        request_id = r.headers["x-request-id"]
    records = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    record = next(rec for rec in records if rec.get("request_id") == request_id)
    assert record["client"] == "198.51.100.7"


async def test_a_bearer_token_is_never_forwarded(tmp_path: Path, upstream: Upstream) -> None:
    from gateway.dev import issuer
    from gateway.identity.issuers import load_issuers

    root = ROOT
    dev = {c.name: c for c in load_issuers(root / "policies" / "issuers.toml")}["dev"]
    token = await issuer.mint(
        LocalSecretStore(tmp_path / "secrets.json"),
        dev,
        subject="t",
        scopes=["models:iris"],
        ttl_s=60,
    )
    app, _, _ = await make_gateway(tmp_path, upstream.url)  # loads the dev key at start
    async with app.test_app() as test_app:
        r = await test_app.test_client().post(
            "/v1/models/iris:predict",
            json={"instances": ROWS},
            headers={"authorization": f"Bearer {token}"},
        )
    assert r.status_code == 200
    sent = upstream.seen[-1]["headers"]
    assert "authorization" not in sent
    assert token not in str(sent)


async def test_circuit_breaker_opens_on_a_failing_scorer_and_closes_when_it_recovers(
    tmp_path: Path, upstream: Upstream
) -> None:
    app, key, audit = await make_gateway(
        tmp_path, upstream.url, routes={"breaker_failures": 3, "breaker_reset_s": 0.4}
    )
    async with app.test_app() as test_app:
        gw = GatewayUnderTest(test_app.test_client(), app, key, audit)
        upstream.mode = "error500"
        statuses = [(await predict(gw, json={"instances": ROWS})).status_code for _ in range(3)]
        assert statuses == [502, 502, 502]
        calls = len(upstream.seen)

        # Open: refused at once, the scorer is not called, the client is told when to retry.
        upstream.mode = "ok"
        refused = await predict(gw, json={"instances": ROWS})
        assert refused.status_code == 503
        assert (await refused.get_json())["code"] == "upstream_unavailable"
        assert refused.headers["Retry-After"] == "1"
        assert len(upstream.seen) == calls
        record = await gw.record_for(refused.headers["X-Request-Id"])
        assert (record["status"], record["reason"]) == (503, "circuit_open")
        assert (await gw.client.get("/v2/health/live")).status_code == 200

        # Half-open after the reset time: one trial reaches the recovered scorer; closed again.
        await asyncio.sleep(0.45)
        assert (await predict(gw, json={"instances": ROWS})).status_code == 200
        assert (await predict(gw, json={"instances": ROWS})).status_code == 200
        assert len(upstream.seen) == calls + 2


async def test_a_failed_trial_opens_the_breaker_again(tmp_path: Path, upstream: Upstream) -> None:
    app, key, audit = await make_gateway(
        tmp_path, upstream.url, routes={"breaker_failures": 2, "breaker_reset_s": 0.3}
    )
    async with app.test_app() as test_app:
        gw = GatewayUnderTest(test_app.test_client(), app, key, audit)
        upstream.mode = "html"  # malformed answers count as failures too
        for _ in range(2):
            assert (await predict(gw, json={"instances": ROWS})).status_code == 502
        await asyncio.sleep(0.35)
        assert (await predict(gw, json={"instances": ROWS})).status_code == 502  # the trial
        assert (await predict(gw, json={"instances": ROWS})).status_code == 503  # open again


async def test_client_errors_never_open_the_breaker(tmp_path: Path, upstream: Upstream) -> None:
    app, key, audit = await make_gateway(tmp_path, upstream.url, routes={"breaker_failures": 2})
    async with app.test_app() as test_app:
        gw = GatewayUnderTest(test_app.test_client(), app, key, audit)
        upstream.mode = "reject"  # the scorer refuses the input: 422, the scorer is fine
        for _ in range(5):
            assert (await predict(gw, json={"instances": ROWS})).status_code == 422
        upstream.mode = "ok"
        assert (await predict(gw, json={"instances": ROWS})).status_code == 200


async def test_a_background_task_that_ended_makes_the_replica_not_live(
    tmp_path: Path, upstream: Upstream
) -> None:
    """The audit writer stops after repeated faults (or any background task ends): liveness
    fails so Kubernetes restarts the container, rather than a replica answering 503."""
    from gateway.web.app import create_app

    gateway = build_gateway(
        GatewaySettings(
            state_dir=tmp_path,
            routes_file=write_routes(tmp_path / "routes.toml", upstream.url),
            access_policy_file=write_access(tmp_path / "access.toml"),
        )
    )
    app = create_app(gateway)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/v2/health/live")).status_code == 200
        writer = next(t for t in gateway._tasks if t.get_name() == "audit-writer")
        writer.cancel()
        await asyncio.wait([writer])
        r = await client.get("/v2/health/live")
        assert (r.status_code, await r.get_json()) == (503, {"live": False})


# -- the Open Inference Protocol as its clients speak it ------------------------------
V2_ROW = {"inputs": [{"name": "m", "shape": [1, 4], "datatype": "FP64", "data": ROWS[0]}]}


@pytest.mark.parametrize("path", ["/v1/models/iris:predict", "/v2/models/iris/infer"])
async def test_a_body_without_content_type_is_read_as_json(
    gw: GatewayUnderTest, upstream: Upstream, path: str
) -> None:
    # Triton's HTTP client sends its inference requests with no Content-Type at all.
    body = {"instances": ROWS} if path.startswith("/v1") else V2_ROW
    r = await gw.client.post(path, data=orjson.dumps(body), headers={"api-key": gw.key})
    assert r.status_code == 200, await r.get_data()
    assert upstream.seen[-1]["headers"]["content-type"] == "application/json"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
async def test_a_compressed_body_is_415_not_inflated(
    gw: GatewayUnderTest, upstream: Upstream, coding: str
) -> None:
    r = await gw.client.post(
        "/v2/models/iris/infer",
        data=orjson.dumps(V2_ROW),
        headers={"api-key": gw.key, "content-encoding": coding},
    )
    assert (r.status_code, (await r.get_json())["code"]) == (415, "unsupported_media_type")
    assert (await gw.record_for(r.headers["x-request-id"]))["reason"] == "content_encoding"
    assert [s for s in upstream.seen if "infer" in s["path"]] == []


def binary_body(shape: list[int], raw: bytes, datatype: str = "FP64") -> tuple[bytes, str]:
    """One binary tensor's body, and its JSON header's length."""
    body, headers = framing.request([({"name": "m", "shape": shape, "datatype": datatype}, raw)])
    return body, headers[framing.HEADER]


@pytest.mark.parametrize("content_type", [None, "application/octet-stream"])
async def test_binary_tensors_are_checked_and_forwarded_byte_for_byte(
    gw: GatewayUnderTest, upstream: Upstream, content_type: str | None
) -> None:
    body, size = binary_body([2, 4], b"\x00" * 64)
    headers = {"api-key": gw.key, "inference-header-content-length": size}
    if content_type:
        headers["content-type"] = content_type
    r = await gw.client.post("/v2/models/iris/infer", data=body, headers=headers)
    assert r.status_code == 200, await r.get_data()
    seen = upstream.seen[-1]
    assert seen["body"] == body
    assert seen["headers"]["inference-header-content-length"] == size
    assert seen["headers"]["content-type"] == "application/octet-stream"
    record = await gw.record_for(r.headers["x-request-id"])
    assert (record["instances"], record["bytes_in"]) == (2, len(body))


async def test_binary_outputs_come_back_framed_as_the_scorer_framed_them(
    gw: GatewayUnderTest, upstream: Upstream
) -> None:
    upstream.mode = "binary"
    r = await gw.client.post("/v2/models/iris/infer", json=V2_ROW, headers={"api-key": gw.key})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    size = int(r.headers["inference-header-content-length"])
    raw = await r.get_data()
    assert orjson.loads(raw[:size])["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert raw[size:] == (2).to_bytes(8, "little")
    # A scorer whose framing does not hold together is a bad upstream, never relayed.
    upstream.mode = "binary-lying"
    r = await gw.client.post("/v2/models/iris/infer", json=V2_ROW, headers={"api-key": gw.key})
    assert (r.status_code, (await r.get_json())["code"]) == (502, "bad_upstream")


@pytest.mark.parametrize(
    ("shape", "raw", "size", "status", "reason"),
    [
        ([1, 4], b"\x00" * 31, None, 422, "binary_data_invalid"),  # one byte short
        ([1, 4], b"\x00" * 33, None, 422, "binary_data_invalid"),  # one byte over
        ([1, 4], b"\x00" * 32, "0", 422, "binary_data_invalid"),
        ([1, 4], b"\x00" * 32, "1e3", 422, "binary_data_invalid"),
        ([1, 4], b"\x00" * 32, "999999", 422, "binary_data_invalid"),
        ([1, 4], b"\x00" * 32, "20", 422, "body_not_json"),  # cuts the JSON header
        # The elements are charged before anything is forwarded: 10,000 rows of four
        # are over the route's 64 Ki elements, however few bytes precede the claim.
        ([20_000, 4], b"\x00" * 8, None, 413, "too_many_elements"),
    ],
)
async def test_binary_framing_faults_are_refused_at_the_gateway(
    gw: GatewayUnderTest,
    upstream: Upstream,
    shape: list[int],
    raw: bytes,
    size: str | None,
    status: int,
    reason: str,
) -> None:
    body, declared = binary_body(shape, b"\x00" * 32 if len(raw) == 32 else raw)
    if len(raw) != 32 and shape == [1, 4]:
        # The header claims 32 bytes; the body carries another count.
        header = body[: int(declared)].replace(
            f'"binary_data_size":{len(raw)}'.encode(), b'"binary_data_size":32'
        )
        body, declared = header + raw, str(len(header))
    r = await gw.client.post(
        "/v2/models/iris/infer",
        data=body,
        headers={"api-key": gw.key, "inference-header-content-length": size or declared},
    )
    assert r.status_code == status, await r.get_data()
    assert (await gw.record_for(r.headers["x-request-id"]))["reason"] == reason
    assert [s for s in upstream.seen if "infer" in s["path"]] == []


async def test_binary_tensors_on_v1_or_declared_as_text_are_415(gw: GatewayUnderTest) -> None:
    body, size = binary_body([1, 4], b"\x00" * 32)
    r = await gw.client.post(
        "/v1/models/iris:predict",
        data=body,
        headers={"api-key": gw.key, "inference-header-content-length": size},
    )
    assert (r.status_code, (await r.get_json())["code"]) == (415, "unsupported_media_type")
    r = await gw.client.post(
        "/v2/models/iris/infer",
        data=body,
        headers={
            "api-key": gw.key,
            "inference-header-content-length": size,
            "content-type": "text/plain",
        },
    )
    assert r.status_code == 415
    r = await gw.client.post(
        "/v2/models/iris/infer",
        data=body,
        headers={"api-key": gw.key, "content-type": "application/octet-stream"},
    )
    assert (r.status_code, (await r.get_json())["code"]) == (422, "invalid_request")
    assert (await gw.record_for(r.headers["x-request-id"]))["reason"] == "binary_header_missing"


async def test_server_metadata_is_for_authenticated_callers(gw: GatewayUnderTest) -> None:
    r = await gw.client.get("/v2")
    assert (r.status_code, (await r.get_json())["code"]) == (401, "unauthenticated")
    r = await gw.client.get("/v2", headers={"api-key": gw.key})
    assert r.status_code == 200
    body = await r.get_json()
    assert body["name"] == "scoregate"
    assert body["extensions"] == ["binary_tensor_data"]
    assert body["version"]
    assert (await gw.record_for(r.headers["x-request-id"]))["decision"] == "allow"


async def test_versioned_model_paths_go_to_the_scorer_and_odd_versions_are_404(
    gw: GatewayUnderTest, upstream: Upstream
) -> None:
    headers = {"api-key": gw.key}
    assert (await gw.client.get("/v2/models/iris/versions/1", headers=headers)).status_code == 200
    assert upstream.seen[-1]["path"] == "/v2/models/iris/versions/1"
    r = await gw.client.post("/v2/models/iris/versions/1/infer", json=V2_ROW, headers=headers)
    assert r.status_code == 200
    assert upstream.seen[-1]["path"] == "/v2/models/iris/versions/1/infer"
    count = len(upstream.seen)
    for odd in ("..", ".hidden", "a" * 65):
        r = await gw.client.post(
            f"/v2/models/iris/versions/{odd}/infer", json=V2_ROW, headers=headers
        )
        assert r.status_code == 404, odd
        r = await gw.client.get(f"/v2/models/iris/versions/{odd}/ready", headers=headers)
        assert r.status_code == 404, odd
    assert len(upstream.seen) == count


async def test_a_version_the_scorer_does_not_serve_is_404_a_missing_model_502(
    gw: GatewayUnderTest, upstream: Upstream
) -> None:
    headers = {"api-key": gw.key}
    upstream.mode = "version_not_found"
    r = await gw.client.post("/v2/models/iris/versions/2/infer", json=V2_ROW, headers=headers)
    assert (r.status_code, (await r.get_json())["code"]) == (404, "model_not_found")
    assert (await gw.record_for(r.headers["x-request-id"]))["reason"] == "version_unknown"
    r = await gw.client.get("/v2/models/iris/versions/2", headers=headers)
    assert r.status_code == 404
    # A scorer that does not know a routed model is misrouted: the gateway's fault, 502.
    upstream.mode = "model_not_found"
    r = await gw.client.post("/v2/models/iris/infer", json=V2_ROW, headers=headers)
    assert (r.status_code, (await r.get_json())["code"]) == (502, "bad_upstream")
