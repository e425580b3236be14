"""The Open Inference Protocol's standard clients, unchanged, through the gateway.

Triton's HTTP client (tritonclient[http]) and KServe's SDK REST client
(kserve.InferenceRESTClient) run in their own virtual environment (`make clients`), over
TLS verified against our CA, with an API key and with a JWT: server and model metadata,
readiness, inference with JSON and with binary tensors, named outputs, and the error each
client raises for 401, 403, 404, 413, 422 and 429. Their answers are compared with the
scorer's own, asked directly in JSON.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.identity import lifecycle
from gateway.secretstore.localfile import LocalSecretStore
from tests.conftest import ROOT, Stack, write_ratelimits
from tests.e2e.test_identity import mint
from tests.e2e.test_torch_scoring import TorchStack, torch_stack  # noqa: F401 - a fixture

pytestmark = pytest.mark.e2e
CLIENTS = ROOT / ".venv-clients" / "bin" / "python"
SCRIPTS = Path(__file__).parent / "clients"
ROWS = [[5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]]
LIMITED_CALLS = 3  # a limited caller may send 4 rows a minute: the third request is refused


def run_client(script: str, config: dict[str, Any]) -> dict[str, Any]:
    if not CLIENTS.exists():
        pytest.fail(".venv-clients is missing: `make clients` installs the standard clients")
    done = subprocess.run(
        [str(CLIENTS), str(SCRIPTS / script)],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def session_config(
    stack: Stack,
    spawn_module_gateway: Any,
    torch_stack: TorchStack,  # noqa: F811 - the fixture imported above
    tmp_path_factory: Any,
) -> dict[str, Any]:
    """A gateway before the stack's scorer whose policy allows a limited caller of each
    client 4 rows (two requests) a minute, the credentials each session uses, and the
    digits gateway for images."""
    store = LocalSecretStore(stack.state / "secrets.json")
    policy = write_ratelimits(tmp_path_factory.mktemp("limits") / "ratelimits.toml")
    limited = {}
    for client in ("triton", "kserve"):
        owner = f"std-limited-{client}-{secrets.token_hex(4)}"
        issued = asyncio.run(lifecycle.create(store, owner=owner, scopes=["models:iris"]))
        limited[client] = {"api-key": issued.key}
        policy.write_text(
            policy.read_text() + f'\n[[overrides]]\nprincipal = "{owner}"\nlimits = "4/minute"\n'
        )
    gateway = spawn_module_gateway(policy)
    host = gateway.base_url.removeprefix("https://")
    digits_host = torch_stack.gateway.removeprefix("https://")
    samples = torch_stack.samples[:3]
    return {
        "audit": str(gateway.state / "audit" / "audit.jsonl"),
        "host": host,
        "base_url": gateway.base_url,
        "ca": str(stack.ca),
        "rows": ROWS,
        "credentials": {
            "api_key": {"api-key": stack.keys.iris},
            "jwt": {"authorization": f"Bearer {mint(stack, 'models:iris', sub='std-client')}"},
        },
        "bad_key": {"api-key": "sg_nosuchkey_0000000000000000000000000000000000000000_00000000"},
        "unscoped": {"api-key": stack.keys.unscoped},
        "limited": limited["triton"],
        "limited_kserve": limited["kserve"],
        "limited_calls": LIMITED_CALLS,
        "digits": {
            "host": digits_host,
            "base_url": torch_stack.gateway,
            "headers": {"api-key": torch_stack.key},
            "pngs": [s["png"] for s in samples],
            "labels": [str(s["label"]) for s in samples],
        },
    }


@pytest.fixture(scope="module")
def expected(stack: Stack) -> dict[str, Any]:
    """The scorer's own answer for ROWS, asked directly in JSON."""
    request = {
        "inputs": [{"name": "measurements", "shape": [2, 4], "datatype": "FP64", "data": ROWS}],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }
    reply = httpx.post(f"{stack.scorer_url}/v2/models/iris/infer", json=request, timeout=10)
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    proba = outputs["predict_proba"]["data"]
    return {"predict": outputs["predict"]["data"], "predict_proba": [proba[:3], proba[3:]]}


def assert_iris(result: dict[str, Any], expected: dict[str, Any]) -> None:
    assert result["predict"] == expected["predict"] == ["setosa", "virginica"]
    for got, want in zip(result["predict_proba"], expected["predict_proba"], strict=True):
        assert got == pytest.approx(want, abs=1e-12)


def assert_errors(errors: dict[str, Any], status: Any) -> None:
    """Each refusal raised by the client as its own error, carrying our status and
    message (the protocol's {"error": "<message>"})."""
    messages = {
        "401": "missing or invalid credentials",
        "403": "the credentials do not grant access to this model",
        "404": "no such model",
        "413": "at most 8 instances per request",
        "422": "dimension 1 must be 4, got 5",
    }
    for code, message in messages.items():
        error = errors[code]
        assert "value" not in error, (code, error)
        assert error["status"] == status(code), (code, error)
        assert message in error["message"], (code, error)
    limited = errors["429"]
    assert all("value" in r for r in limited[:2]), limited
    assert limited[-1]["status"] == status("429")
    assert "too many requests" in limited[-1]["message"]


def test_tritons_http_client_works_unchanged(
    session_config: dict[str, Any], expected: dict[str, Any]
) -> None:
    report = run_client("triton_session.py", session_config)
    for credential in ("api_key", "jwt"):
        seen = report[credential]
        assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
        assert seen["server"]["name"] == "scoregate"
        assert "binary_tensor_data" in seen["server"]["extensions"]
        outputs = {o["name"]: o for o in seen["model"]["outputs"]}
        assert outputs["predict_proba"] == {
            "name": "predict_proba",
            "datatype": "FP64",
            "shape": [-1, 3],
        }
        for mode in ("json", "binary"):
            assert_iris(seen[mode], expected)
            assert seen[mode]["id"] == "r-7"
        # The JSON answer carries data; the binary one, sizes only (the bytes follow).
        assert all("data" in o for o in seen["json"]["outputs"])
        assert [o["parameters"]["binary_data_size"] for o in seen["binary"]["outputs"]] == [
            4 + len("setosa") + 4 + len("virginica"),
            2 * 3 * 8,
        ]
        # No outputs named: Triton's client asks for every output in binary; the
        # default (predict) comes back in binary.
        assert seen["default"]["predict"] == expected["predict"]
        assert "binary_data_size" in seen["default"]["outputs"][0]["parameters"]
    assert_errors(report["errors"], str)
    assert report["errors"]["metadata_404"]["status"] == "404"
    # Every refusal the client raised is in the trail, a denial with its reason; the
    # binary bodies left their size and digest, nothing of their bytes.
    records = [json.loads(line) for line in Path(session_config["audit"]).read_text().splitlines()]
    reasons = {r.get("reason") for r in records if r.get("decision") == "deny"}
    assert {"too_many_instances", "upstream_rejected_input", "model_unknown"} <= reasons
    assert any(r.get("reason", "").startswith("rate_limit") for r in records)
    binary = [r for r in records if r.get("route") == "infer" and r.get("status") == 200]
    assert binary and all(len(r["payload_sha256"]) == 64 for r in binary)
    labels = session_config["digits"]["labels"]
    assert report["digits"]["json"]["predict"] == report["digits"]["binary"]["predict"] == labels
    for got, want in zip(
        report["digits"]["binary"]["probabilities"],
        report["digits"]["json"]["probabilities"],
        strict=True,
    ):
        assert got == pytest.approx(want, abs=1e-6)


def test_kserves_rest_client_works_unchanged(
    session_config: dict[str, Any], expected: dict[str, Any]
) -> None:
    report = run_client(
        "kserve_session.py", {**session_config, "limited": session_config["limited_kserve"]}
    )
    for credential in ("api_key", "jwt"):
        seen = report[credential]
        assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
        for mode in ("json", "binary"):
            assert_iris(seen[mode], expected)
            assert (seen[mode]["id"], seen[mode]["model_name"]) == ("k-1", "iris")
    assert_errors(report["errors"], int)
    labels = session_config["digits"]["labels"]
    assert report["digits"]["json"]["predict"] == report["digits"]["binary"]["predict"] == labels
