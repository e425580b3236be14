"""`scoregate score`, the client in the box, as a user runs it against a real gateway and
real scorers: v1 instances, a v2 request file, an image file; an API key or a JWT from a
file or the environment, never from the command line; the gateway's errors by their code."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from certs.authority import CertPaths, create_ca
from gateway.identity import apikeys
from tests.conftest import ROOT, Stack, free_port, scoregate
from tests.e2e.test_torch_scoring import TorchStack, torch_stack, v2_images

pytestmark = pytest.mark.e2e
__all__ = ["torch_stack"]  # a fixture: the digits model behind its own gateway
ROW, OTHER = [5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]


def score(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`scoregate score` in its own process, with only the credentials the test gives."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCOREGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "score", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        input=stdin,
        env={**clean, **env},
    )


def at(stack: Stack) -> list[str]:
    return ["--url", stack.base_url, "--ca", str(stack.ca)]


def secret_file(path: Path, value: str) -> str:
    """A credential file as a user keeps one (0600; named .key, which the suite's
    leak check knows to hold a secret on purpose)."""
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def body(out: subprocess.CompletedProcess[str]) -> Any:
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_v1_instances_with_a_key_from_a_file_stdin_or_the_environment(
    stack: Stack, tmp_path: Path
) -> None:
    key_file = secret_file(tmp_path / "client.key", stack.keys.iris)
    rows = json.dumps([ROW, OTHER])
    expected = {"predictions": ["setosa", "virginica"]}
    assert body(score("iris", "--instances", rows, "--api-key", key_file, *at(stack))) == expected
    from_env = score("iris", "--instances", rows, *at(stack), SCOREGATE_API_KEY=stack.keys.iris)
    assert body(from_env) == expected
    from_stdin = score(
        "iris", "--instances", rows, "--api-key", "-", *at(stack), stdin=stack.keys.iris
    )
    assert body(from_stdin) == expected
    bare = score(
        "iris", "--instances", rows, "--api-key", *at(stack), SCOREGATE_API_KEY=stack.keys.iris
    )
    assert body(bare) == expected


def test_a_v2_request_file_with_a_jwt_from_a_file_or_the_environment(
    stack: Stack, tmp_path: Path
) -> None:
    minted = scoregate(
        "token", "mint", "--sub", "cli-user", "--scope", "models:iris", state=stack.state
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    token_file = secret_file(tmp_path / "token", token)
    request = tmp_path / "request.json"
    tensor = {"name": "measurements", "datatype": "FP64", "shape": [2, 4], "data": ROW + OTHER}
    request.write_text(json.dumps({"id": "cli-1", "inputs": [tensor]}))
    args = ["iris", "--input", str(request), "--jwt", token_file, *at(stack)]
    deadline = time.monotonic() + 5  # the dev issuer's key reaches the gateway on its refresh
    out = score(*args)
    while out.returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        out = score(*args)
    answer = body(out)
    assert (answer["model_name"], answer["id"]) == ("iris", "cli-1")
    assert answer["outputs"] == [
        {"name": "predict", "shape": [2], "datatype": "BYTES", "data": ["setosa", "virginica"]}
    ]
    probabilities = body(score(*args, "--output", "predict_proba"))["outputs"]
    assert [(o["name"], o["shape"]) for o in probabilities] == [("predict_proba", [2, 3])]
    from_env = score("iris", "--input", str(request), *at(stack), SCOREGATE_JWT=token)
    assert body(from_env)["outputs"] == answer["outputs"]
    records = [r for r in stack.audit_records() if r.get("subject") == "cli-user"]
    assert records and all(r["credential"] == "jwt" for r in records)


def test_the_gateways_errors_exit_1_with_their_code_on_stderr(stack: Stack, tmp_path: Path) -> None:
    unknown_key = apikeys.new_key(apikeys.new_key_id())
    cases = [
        ("iris", ["--instances", "[[5.1, 3.5, 1.4, 0.2]]"], unknown_key, 401, "unauthenticated"),
        ("iris", ["--instances", "[[5.1, 3.5, 1.4, 0.2]]"], stack.keys.unscoped, 403, "forbidden"),
        ("nope", ["--instances", "[[5.1, 3.5, 1.4, 0.2]]"], stack.keys.iris, 404, None),
        ("iris", ["--instances", "[[5.1, 3.5]]"], stack.keys.iris, 422, None),
    ]
    for model, request, key, status, code in cases:
        out = score(model, *request, *at(stack), SCOREGATE_API_KEY=key)
        assert out.returncode == 1, out.stderr
        assert out.stdout == ""
        assert f"HTTP {status} {code or ''}" in out.stderr, out.stderr
        assert "(request id " in out.stderr
        assert key not in out.stderr
    bad_tensor = tmp_path / "bad.json"
    bad_tensor.write_text(
        json.dumps({"inputs": [{"name": "m", "datatype": "FP64", "shape": [2, 4], "data": ROW}]})
    )
    out = score("iris", "--input", str(bad_tensor), *at(stack), SCOREGATE_API_KEY=stack.keys.iris)
    assert out.returncode == 1 and "HTTP 422 " in out.stderr


def test_an_unreachable_or_untrusted_gateway_exits_3(stack: Stack, tmp_path: Path) -> None:
    rows = ["iris", "--instances", "[[5.1, 3.5, 1.4, 0.2]]"]
    closed = f"https://localhost:{free_port()}"
    out = score(*rows, "--url", closed, "--ca", str(stack.ca), SCOREGATE_API_KEY=stack.keys.iris)
    assert out.returncode == 3 and f"cannot reach {closed}" in out.stderr
    other = CertPaths(tmp_path / "other-ca")
    create_ca(other)  # a CA that did not sign the gateway's certificate
    out = score(
        *rows,
        "--url",
        stack.base_url,
        "--ca",
        str(other.ca_cert),
        SCOREGATE_API_KEY=stack.keys.iris,
    )
    assert out.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in out.stderr


def test_credentials_on_the_command_line_and_other_misuse_exit_2(
    stack: Stack, tmp_path: Path
) -> None:
    rows = ["iris", "--instances", "[[5.1, 3.5, 1.4, 0.2]]", *at(stack)]
    key = stack.keys.iris
    on_argv = score(*rows, "--api-key", key)
    assert on_argv.returncode == 2
    assert "never the credential itself" in on_argv.stderr and key not in on_argv.stderr
    token_like = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    assert "never the credential itself" in score(*rows, "--jwt", token_like).stderr
    key_file = secret_file(tmp_path / "client.key", key)
    request = tmp_path / "request.json"
    request.write_text('{"no": "inputs"}')
    not_json = tmp_path / "not.json"
    not_json.write_text("{")
    not_image = tmp_path / "digit.png"
    not_image.write_text("GIF89a")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    env = {"SCOREGATE_API_KEY": key}
    for args, extra_env, message in [
        ([*rows, "--api-key", key_file, "--jwt", key_file], {}, "not both"),
        (rows, {**env, "SCOREGATE_JWT": "x"}, "both $SCOREGATE_API_KEY and $SCOREGATE_JWT"),
        (rows, {}, "no credential"),
        ([*rows, "--api-key", str(tmp_path / "missing")], {}, "cannot read"),
        ([*rows, "--api-key", str(empty)], {}, "is empty"),
        (["iris", "--instances", "[[5.1,", *at(stack)], env, "--instances must be JSON"),
        (["iris", "--input", str(not_json), *at(stack)], env, "is not JSON"),
        (["iris", "--input", str(request), *at(stack)], env, "not a v2 inference request"),
        (["digits", "--image", str(not_image), *at(stack)], env, "not a PNG or JPEG"),
        ([*rows, "--output", "predict"], env, "--output is for v2"),
        (["iris", "--instances", "[]", "--url", "http://localhost:1"], env, "https"),
    ]:
        out = score(*args, **extra_env)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr, (message, out.stderr)
    assert score("iris", *at(stack), **env).returncode == 2  # no request given (argparse)


def test_an_image_file_is_scored_by_the_digits_model(
    torch_stack: TorchStack, tmp_path: Path
) -> None:
    sample = torch_stack.samples[0]
    png = tmp_path / "digit.png"
    png.write_bytes(base64.b64decode(sample["png"]))
    key_file = secret_file(tmp_path / "client.key", torch_stack.key)
    where = ["--url", torch_stack.gateway, "--ca", str(torch_stack.ca), "--api-key", key_file]
    with torch_stack.client() as client:
        direct = client.post("/v2/models/digits/infer", json=v2_images([sample["png"]]))
    assert direct.status_code == 200, direct.text
    answer = body(score("digits", "--image", str(png), *where))
    assert answer["model_name"] == "digits"
    assert answer["outputs"] == direct.json()["outputs"]
    (predicted,) = answer["outputs"][0]["data"]
    assert predicted in [str(d) for d in range(10)]

    jpeg = tmp_path / "digit.jpg"
    buffer = io.BytesIO()
    Image.open(png).convert("L").save(buffer, format="JPEG", quality=95)
    jpeg.write_bytes(buffer.getvalue())
    outputs = body(score("digits", "--image", str(jpeg), "--output", "probabilities", *where))
    assert [(o["name"], o["shape"]) for o in outputs["outputs"]] == [("probabilities", [1, 10])]
