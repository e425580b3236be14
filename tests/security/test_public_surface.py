"""The public surface under generated input (Hypothesis): paths, methods, headers, bodies and
token shapes, well-formed and not. Whatever arrives, the answer is ours (JSON error model,
a 4xx or the scorer's 200), never a 500, and the replica stays live and ready.

In process (Quart's test client in front of a real upstream), so hundreds of examples
run in seconds; the real sockets are exercised by tests/security/test_public_answers.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart import Quart

from gateway.identity import lifecycle
from gateway.secretstore.localfile import LocalSecretStore
from gateway.service import build_gateway
from gateway.settings import GatewaySettings
from tests.conftest import write_access, write_ratelimits, write_routes
from tests.gateway.web.test_app import Upstream, upstream  # noqa: F401 - the fixture

PATHS = st.one_of(
    st.sampled_from(
        [
            "/v1/models/iris:predict",
            "/v2/models/iris/infer",
            "/v2/models/iris",
            "/v2/models/iris/ready",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/nope/infer",
        ]
    ),
    st.text(alphabet="/abcdefghijklmnopqrstuvwxyz0123456789:._-%", min_size=1, max_size=40).map(
        lambda p: "/" + p.lstrip("/")
    ),
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)
TENSOR = st.fixed_dictionaries(
    {
        "name": st.text(max_size=6),
        "shape": st.lists(st.integers(min_value=-2, max_value=70), min_size=0, max_size=3),
        "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BOOL", "BYTES", "nope"]),
        "data": st.lists(
            st.one_of(st.floats(allow_nan=False), st.integers(), st.text(max_size=3)), max_size=20
        ),
    }
)
BODIES = st.one_of(
    st.builds(
        lambda rows: {"instances": rows},
        st.lists(st.lists(st.floats(-10, 10), max_size=6), max_size=5),
    ),
    st.builds(lambda tensors: {"inputs": tensors}, st.lists(TENSOR, max_size=3)),
    JSONISH,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


TOKENS = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda header, payload, sig: ".".join(
            [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), sig]
        ),
        JSONISH,
        JSONISH,
        st.text(alphabet="ABCxyz-_=+/ ", max_size=20),
    ),
    st.builds(
        lambda parts: ".".join(parts),
        st.lists(st.text(alphabet="eyJABC123-_=", max_size=12), max_size=6),
    ),
)


@pytest.fixture
async def app(tmp_path: Path, upstream: Upstream) -> AsyncIterator[tuple[Quart, str]]:  # noqa: F811
    from gateway.web.app import create_app

    store = tmp_path / "secrets.json"
    issued = await lifecycle.create(LocalSecretStore(store), owner="fuzz", scopes=["models:iris"])
    gateway = build_gateway(
        GatewaySettings(
            state_dir=tmp_path,
            routes_file=write_routes(tmp_path / "routes.toml", upstream.url),
            access_policy_file=write_access(tmp_path / "access.toml"),
            # No limit trips: each example must be judged on what it is, not on the count.
            rate_limit_policy_file=write_ratelimits(
                tmp_path / "ratelimits.toml",
                per_address="1000000/second",
                failed_auth_per_address="1000000/second",
                per_principal="1000000/second",
            ),
        )
    )
    quart = create_app(gateway)
    async with quart.test_app():
        yield quart, issued.key


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"]),
    path=PATHS,
    body=st.one_of(st.none(), BODIES),
    credential=st.one_of(st.none(), st.just("key"), TOKENS),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "", "application/json; charset=utf-8"]
    ),
    request_id=st.one_of(st.none(), st.text(max_size=40)),
)
async def test_no_input_gets_a_500_and_the_replica_stays_ready(
    app: tuple[Quart, str],
    method: str,
    path: str,
    body: Any,
    credential: str | None,
    content_type: str,
    request_id: str | None,
) -> None:
    quart, key = app
    client = quart.test_client()
    headers: dict[str, str] = {}
    if content_type:
        headers["content-type"] = content_type
    if credential == "key":
        headers["api-key"] = key
    elif credential is not None and credential.isascii() and credential.isprintable():
        headers["authorization"] = f"Bearer {credential}"  # what a header can carry
    if request_id is not None and request_id.isprintable() and request_id.isascii():
        headers["x-request-id"] = request_id
    data = None if body is None else json.dumps(body).encode()
    response = await client.open(path, method=method, headers=headers, data=data)
    assert response.status_code < 500 or response.status_code in (502, 503, 504), (
        response.status_code,
        await response.get_data(as_text=True),
    )
    if response.status_code >= 400 and method != "HEAD":
        error = await response.get_json()
        assert error["code"] != "internal_error"
        assert error["request_id"] == response.headers["x-request-id"]
    ready = await client.get("/v2/health/ready")
    assert ready.status_code == 200, await ready.get_data(as_text=True)
