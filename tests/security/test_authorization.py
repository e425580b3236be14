"""Authorization and routing (OWASP API1, API5, API7, API9), against the live gateway."""

from __future__ import annotations

import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.e2e
ROWS = [[5.1, 3.5, 1.4, 0.2]]


def test_principal_scoped_to_model_a_asking_for_model_b_is_403_and_audited(stack: Stack) -> None:
    with stack.client() as client:
        ok = client.post(
            "/v1/models/iris-copy:predict",
            json={"instances": ROWS},
            headers={"api-key": stack.keys.copy_only},
        )
        denied = client.post(
            "/v1/models/iris:predict",
            json={"instances": ROWS},
            headers={"api-key": stack.keys.copy_only},
        )
        meta = client.get("/v2/models/iris", headers={"api-key": stack.keys.copy_only})
    assert ok.status_code == 200
    assert (denied.status_code, denied.json()["code"]) == (403, "forbidden")
    assert meta.status_code == 403
    record = stack.audit_for(denied.headers["x-request-id"])
    assert (record["decision"], record["reason"], record["model"]) == (
        "deny",
        "scope_missing",
        "iris",
    )


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/IRIS:predict",
        "/v1/models/iris%20:predict",
        "/v1/models/iris.:predict",
        "/v1/models/iris%2F..:predict",
        "/v1/models/..%2Firis:predict",
        "/v1/models/iris%00:predict",
        "/v2/models/iris/../iris-copy/infer",
    ],
)
def test_model_names_are_matched_exactly(stack: Stack, path: str) -> None:
    with stack.client() as client:
        r = client.post(path, json={"instances": ROWS}, headers={"api-key": stack.keys.iris})
    assert r.status_code in {403, 404}
    assert r.status_code != 200


def test_upstream_address_never_comes_from_the_request(stack: Stack) -> None:
    with stack.client() as client:
        r = client.post(
            "/v1/models/iris:predict",
            json={"instances": ROWS},
            headers={
                "api-key": stack.keys.iris,
                "host": "169.254.169.254",
                "x-forwarded-host": "169.254.169.254",
                "x-original-url": "http://169.254.169.254/",
            },
        )
    # Served by the scorer of the routing table, not sent to the address in the headers.
    assert (r.status_code, r.json()) == (200, {"predictions": ["setosa"]})


@pytest.mark.parametrize(
    "path",
    [
        "/metrics",
        "/docs",
        "/openapi.json",
        "/openapi.yaml",
        "/static/openapi.yaml",
        "/admin",
        "/v2/repository/index",
        "/debug",
    ],
)
def test_admin_metrics_and_docs_are_not_on_the_public_listener(stack: Stack, path: str) -> None:
    with stack.client() as client:
        r = client.get(path, headers={"api-key": stack.keys.iris})
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
