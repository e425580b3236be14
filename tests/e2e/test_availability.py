"""Readiness per replica, availability per model: one scorer down takes only its models.

A gateway in front of two scorers, as on AKS: the CPU scorer (iris) and the GPU scorer
(digits, torch on the CPU here). The GPU scorer is stopped; iris keeps scoring with zero
errors and the replica stays ready (a load balancer keeps sending it traffic), while
digits answers 503 and says so on `/v2/models/digits/ready`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.tls import client_context
from tests.conftest import Stack, free_port, gateway_env, new_key, start, stop, wait_ready

pytestmark = pytest.mark.e2e


def test_a_stopped_gpu_scorer_takes_only_its_models_down_and_the_replica_stays_ready(
    stack: Stack, digits_repo: Path, tmp_path: Path
) -> None:
    shutil.copytree(stack.state / "certs", tmp_path / "certs")
    gpu_port, gateway_port = free_port(), free_port()
    routes = tmp_path / "routes.toml"
    routes.write_text(
        f'[upstreams.cpu]\nurl = "{stack.scorer_url}"\ntimeout_s = 5.0\n\n'
        f'[upstreams.gpu]\nurl = "http://127.0.0.1:{gpu_port}"\nkind = "gpu"\n'
        "timeout_s = 5.0\nconnect_timeout_s = 0.5\nbreaker_failures = 2\n\n"
        '[models.iris]\nupstream = "cpu"\nmax_instances = 8\n\n'
        '[models.digits]\nupstream = "gpu"\nmax_instances = 8\n'
    )
    access = tmp_path / "access.toml"
    access.write_text('[scopes]\n"models:iris" = ["iris"]\n"models:digits" = ["digits"]\n')
    env = gateway_env(
        tmp_path,
        routes,
        access,
        gateway_port,
        SCOREGATE_LOCAL_STORE_PATH=str(stack.state / "secrets.json"),
    )
    key, _ = asyncio.run(new_key(stack.state / "secrets.json", ["models:iris", "models:digits"]))
    logs = tmp_path / "logs"
    gpu_command = [sys.executable, "-m", "scorer", "serve", "--repository", str(digits_repo)]
    procs = {
        "gpu-scorer": start(
            "gpu-scorer", [*gpu_command, "--runtime", "torch", "--port", str(gpu_port)], env, logs
        ),
        "gateway": start("gateway", [sys.executable, "-m", "gateway", "serve"], env, logs),
    }
    base = f"https://localhost:{gateway_port}"
    png = json.loads((digits_repo / "digits" / "samples.json").read_text())[0]["png"]
    digit = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [png]}]}
    try:
        wait_ready(f"{base}/v2/health/ready", client_context(stack.ca), procs, logs)
        with httpx.Client(
            base_url=base, verify=client_context(stack.ca), timeout=10, headers={"api-key": key}
        ) as client:
            started = time.monotonic()  # the torch scorer warms its model before it listens
            while client.get("/v2/models/digits/ready").status_code != 200:
                assert time.monotonic() - started < 60, "the GPU scorer never became ready"
                time.sleep(0.2)
            assert client.post("/v2/models/digits/infer", json=digit).status_code == 200
            stop({"gpu-scorer": procs.pop("gpu-scorer")})  # the GPU scorer goes away
            iris, ready, digits, digits_ready = [], [], [], []
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                iris.append(
                    client.post(
                        "/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}
                    ).status_code
                )
                ready.append(client.get("/v2/health/ready").status_code)
                answer = client.post("/v2/models/digits/infer", json=digit)
                digits.append((answer.status_code, answer.json()["code"]))
                digits_ready.append(client.get("/v2/models/digits/ready").status_code)
            body = client.get("/v2/health/ready").json()
            refused = client.post("/v2/models/digits/infer", json=digit)
    finally:
        stop(procs)
    assert iris == [200] * len(iris) and len(iris) > 5  # zero errors for the CPU model
    assert ready == [200] * len(ready)  # the replica never leaves the load balancer
    assert {code for code, _ in digits} == {503}
    assert {reason for _, reason in digits} == {"upstream_unavailable"}
    assert set(digits_ready) == {503}
    assert refused.headers["retry-after"]  # the breaker opened: callers are told when to retry
    # The public readiness body names nothing internal: no upstream, no issuer.
    assert "upstreams" not in body and "cpu" not in json.dumps(body)
    assert "gpu" not in json.dumps(body)
