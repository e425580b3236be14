"""The spine end to end: real gateway and scorer processes, real TLS, a real HTTPS client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from certs.authority import CertPaths
from gateway.audit.review import verify
from tests.azurite import AzuriteServer
from tests.conftest import Stack, free_port, scoregate
from tests.keyvault_server import IDENTITY_HEADER, KeyVaultServer

pytestmark = pytest.mark.e2e

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]


def test_v1_predict_returns_real_predictions(stack: Stack) -> None:
    with stack.client() as client:
        r = client.post(
            "/v1/models/iris:predict",
            json={"instances": ROWS},
            headers={"api-key": stack.keys.iris},
        )
    assert r.status_code == 200
    assert r.json() == {"predictions": ["setosa", "versicolor", "virginica"]}
    record = stack.audit_for(r.headers["x-request-id"])
    assert record["decision"] == "allow"
    assert record["status"] == 200
    assert record["model"] == "iris"
    assert record["key_id"] == stack.keys.ids["iris"]
    assert record["subject"] == "test-iris"


def test_v2_infer_returns_open_inference_protocol_response(stack: Stack) -> None:
    tensor = {"name": "m", "shape": [2, 4], "datatype": "FP64", "data": ROWS[0] + ROWS[2]}
    with stack.client() as client:
        default = client.post(
            "/v2/models/iris/infer",
            json={"id": "r1", "inputs": [tensor]},
            headers={"api-key": stack.keys.iris},
        )
        both = client.post(
            "/v2/models/iris/infer",
            json={"inputs": [tensor], "outputs": [{"name": "predict"}, {"name": "predict_proba"}]},
            headers={"api-key": stack.keys.iris},
        )
    assert default.status_code == 200
    payload = default.json()
    assert (payload["model_name"], payload["id"]) == ("iris", "r1")
    assert payload["outputs"] == [
        {"name": "predict", "shape": [2], "datatype": "BYTES", "data": ["setosa", "virginica"]}
    ]
    outputs = {o["name"]: o for o in both.json()["outputs"]}
    assert outputs["predict"]["data"] == ["setosa", "virginica"]
    assert outputs["predict_proba"]["shape"] == [2, 3]
    probabilities = outputs["predict_proba"]["data"]
    assert abs(sum(probabilities[:3]) - 1) < 1e-9 and probabilities[0] > 0.9


def test_model_metadata_and_ready_are_forwarded(stack: Stack) -> None:
    with stack.client() as client:
        meta = client.get("/v2/models/iris", headers={"api-key": stack.keys.iris})
        ready = client.get("/v2/models/iris/ready", headers={"api-key": stack.keys.iris})
    assert meta.status_code == 200
    assert meta.json()["inputs"] == [{"name": "measurements", "datatype": "FP64", "shape": [-1, 4]}]
    assert ready.json() == {"name": "iris", "ready": True}


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "credentials_missing"),
        ({"api-key": "not-a-key"}, "api_key_malformed"),
    ],
)
def test_missing_or_malformed_key_is_401_with_json_error_and_audit(
    stack: Stack, headers: dict[str, str], reason: str
) -> None:
    with stack.client() as client:
        r = client.post("/v1/models/iris:predict", json={"instances": ROWS}, headers=headers)
    assert r.status_code == 401
    assert r.json()["code"] == "unauthenticated"
    assert r.headers["www-authenticate"] == (
        'Bearer realm="scoregate", ApiKey realm="scoregate", header="api-key"'
    )
    record = stack.audit_for(r.headers["x-request-id"])
    assert (record["decision"], record["reason"], record["status"]) == ("deny", reason, 401)


def test_key_without_the_models_scope_is_403_and_audited(stack: Stack) -> None:
    with stack.client() as client:
        r = client.post(
            "/v1/models/iris:predict",
            json={"instances": ROWS},
            headers={"api-key": stack.keys.unscoped},
        )
    assert r.status_code == 403
    assert r.json()["code"] == "forbidden"
    record = stack.audit_for(r.headers["x-request-id"])
    assert (record["decision"], record["reason"], record["key_id"]) == (
        "deny",
        "scope_missing",
        stack.keys.ids["unscoped"],
    )


def test_unknown_model_is_404_and_audited(stack: Stack) -> None:
    with stack.client() as client:
        r = client.post(
            "/v1/models/nosuch:predict",
            json={"instances": ROWS},
            headers={"api-key": stack.keys.iris},
        )
    assert r.status_code == 404
    assert r.json()["code"] == "model_not_found"
    assert stack.audit_for(r.headers["x-request-id"])["reason"] == "model_unknown"


@pytest.mark.parametrize(
    ("body", "reason", "message"),
    [
        (b"{not json", "body_not_json", "the body is not valid JSON"),
        (b'{"rows": []}', "body_invalid", "'instances' must be a non-empty list"),
        (
            b'{"instances": [[1, 2, 3]]}',
            "upstream_rejected_input",
            # The scorer checks each instance's width before converting (OWASP API4).
            "each instance must have 4 elements",
        ),
        (
            b'{"instances": [["a", 2, 3, 4]]}',
            "upstream_rejected_input",
            "input data must be numbers",
        ),
    ],
)
def test_malformed_body_is_422_and_audited(
    stack: Stack, body: bytes, reason: str, message: str
) -> None:
    with stack.client() as client:
        r = client.post(
            "/v1/models/iris:predict",
            content=body,
            headers={"api-key": stack.keys.iris, "content-type": "application/json"},
        )
    assert r.status_code == 422
    error = r.json()
    # One public code; the message says what is wrong (the scorer's own words pass through).
    assert (error["code"], error["error"]) == ("invalid_request", message)
    record = stack.audit_for(r.headers["x-request-id"])
    # Authorized, then refused for its body: the decision is a denial, the reason says why.
    assert (record["decision"], record["reason"], record["status"]) == ("deny", reason, 422)


def test_http2_is_negotiated_over_alpn(stack: Stack) -> None:
    with stack.client(http2=True) as client:
        r = client.post(
            "/v1/models/iris:predict",
            json={"instances": ROWS[:1]},
            headers={"api-key": stack.keys.iris},
        )
    assert r.http_version == "HTTP/2"
    assert r.json() == {"predictions": ["setosa"]}


def test_readiness_reports_the_replicas_own_parts_and_names_nothing_internal(
    stack: Stack,
) -> None:
    with stack.client() as client:
        r = client.get("/v2/health/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    assert body["keys_loaded"] is True
    assert body["audit_accepting"] is True
    assert body["rate_limit_storage"] == "memory"
    assert "upstreams" not in body


def test_audit_chain_verifies_and_counts_every_request(stack: Stack) -> None:
    with stack.client() as client:
        ids = [
            client.post(
                "/v1/models/iris:predict", json={"instances": ROWS[:1]}, headers={"api-key": key}
            ).headers["x-request-id"]
            for key in (stack.keys.iris, stack.keys.unscoped, "wrong")
        ]
    for request_id in ids:
        stack.audit_for(request_id)
    # Exactly one record per request (counted by id: other tests' records may still land).
    mine = [r["request_id"] for r in stack.request_records() if r["request_id"] in ids]
    assert sorted(mine) == sorted(ids)
    result = verify([stack.audit_file])
    assert result.ok, result.problem
    assert result.records == len(stack.audit_records())


def test_scoregate_score_command_calls_the_gateway(stack: Stack) -> None:
    out = scoregate(
        "score",
        "iris",
        "--instances",
        "[[5.1, 3.5, 1.4, 0.2]]",
        "--url",
        stack.base_url,
        "--ca",
        str(stack.ca),
        SCOREGATE_API_KEY=stack.keys.iris,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '{"predictions": ["setosa"]}'


def demo_once(state: Path, **env: str) -> Any:
    """`scoregate demo --once` on free ports, as `make demo ONCE=1` runs it."""
    ports = ("--port", "--scorer-port", "--gpu-scorer-port")
    args = [part for flag in ports for part in (flag, str(free_port()))]
    return scoregate(
        "demo", "--once", *args, state=state, SCOREGATE_METRICS_PORT=str(free_port()), **env
    )


def test_demo_once_exits_zero_after_real_predictions(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    state = tmp_path_factory.mktemp("demo")
    out = demo_once(state)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[ok ] v1 predict HTTP 200" in out.stdout
    assert "[ok ] JWT        HTTP 200" in out.stdout
    assert "[7.7, 3.0, 6.1, 2.3] → virginica" in out.stdout
    assert "curl --cacert" in out.stdout
    assert "Audit records of these requests" in out.stdout
    assert "Audit trail verified:" in out.stdout and "0 records after the last one" in out.stdout
    assert verify([state / "audit" / "audit.jsonl"]).ok
    # The review of the demo's trail opens with its verification (issue 19).
    report = scoregate("audit", "report", state=state)
    assert report.returncode == 0, report.stdout + report.stderr
    banner = report.stdout.splitlines()[0]
    assert banner.startswith("INTACT: ") and "chain unbroken" in banner, banner
    assert "0 records after the last one" in banner


def test_demo_once_with_the_audit_trail_in_blob_storage(
    tmp_path_factory: pytest.TempPathFactory,
    vault: KeyVaultServer,
    azurite: AzuriteServer,
    audit_container: str,
    pki: CertPaths,
) -> None:
    """`make demo` with SCOREGATE_AUDIT_SINK set to a container (Azurite here): the records
    go to the spool, then to the store, and the demo verifies the store's copy."""
    state = tmp_path_factory.mktemp("demo-store")
    out = demo_once(
        state,
        SCOREGATE_AUDIT_SINK=audit_container,
        IDENTITY_ENDPOINT=f"{vault.url}/msi/token",
        IDENTITY_HEADER=IDENTITY_HEADER,
        SSL_CERT_FILE=str(pki.ca_cert),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Audit records of these requests" in out.stdout
    assert f"Audit trail: {audit_container}" in out.stdout
    assert (
        "Audit trail verified (replica " in out.stdout
        and "0 records after the last one" in out.stdout
    )
    assert not (state / "audit").exists()  # nothing in the file sink
