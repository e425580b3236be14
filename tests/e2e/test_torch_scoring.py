"""The PyTorch scorer end to end: a digit PNG through the real gateway and the real torch
scorer process, batches forming under concurrent load with results equal to unbatched."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.tls import client_context
from tests.conftest import (
    Stack,
    free_port,
    gateway_env,
    new_key,
    start,
    stop,
    wait_ready,
)
from tests.security.test_image_inputs import b64, bomb_png

pytestmark = pytest.mark.e2e


@dataclass
class TorchStack:
    gateway: str
    scorer: str
    key: str
    ca: Path
    state: Path
    samples: list[dict[str, Any]]

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.gateway,
            verify=client_context(self.ca),
            timeout=20,
            headers={"api-key": self.key},
        )

    def audit_for(self, request_id: str) -> dict[str, Any]:
        """The audit record of one request (written asynchronously: poll briefly)."""
        trail = self.state / "audit" / "audit.jsonl"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = trail.read_text().splitlines() if trail.exists() else []
            found = [json.loads(line) for line in lines if request_id in line]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no audit record for {request_id}")

    def batches(self) -> tuple[float, float]:
        """(forward passes, rows) the torch scorer has run so far, from its /metrics."""
        text = httpx.get(f"{self.scorer}/metrics", timeout=5).text
        count = re.search(r'scoregate_scorer_batch_rows_count\{model="digits"\} (\S+)', text)
        rows = re.search(r'scoregate_scorer_batch_rows_sum\{model="digits"\} (\S+)', text)
        assert count is not None and rows is not None, text[:500]
        return float(count.group(1)), float(rows.group(1))


@pytest.fixture(scope="module")
def torch_stack(
    stack: Stack, digits_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TorchStack]:
    state = tmp_path_factory.mktemp("torch-stack")
    shutil.copytree(stack.state / "certs", state / "certs")
    scorer_port, gateway_port = free_port(), free_port()
    scorer = f"http://127.0.0.1:{scorer_port}"
    routes = state / "routes.toml"
    routes.write_text(
        f'[upstreams.gpu]\nurl = "{scorer}"\nkind = "gpu"\ntimeout_s = 15.0\n\n'
        '[models.digits]\nupstream = "gpu"\nmax_instances = 64\n'
    )
    access = state / "access.toml"
    access.write_text('[scopes]\n"models:digits" = ["digits"]\n')
    env = gateway_env(
        state,
        routes,
        access,
        gateway_port,
        SCOREGATE_LOCAL_STORE_PATH=str(stack.state / "secrets.json"),
        # The batching test sends all its images at once from one key (48): a batch client
        # its operator allows more than the default 32 requests in flight.
        SCOREGATE_MAX_IN_FLIGHT_PER_PRINCIPAL="64",
        SCOREGATE_MAX_IN_FLIGHT_PER_MODEL="64",
    )
    key, _ = asyncio.run(new_key(stack.state / "secrets.json", ["models:digits"]))
    logs = state / "logs"
    procs = {
        "torch-scorer": start(
            "torch-scorer",
            [
                sys.executable,
                "-m",
                "scorer",
                "serve",
                "--repository",
                str(digits_repo),
                "--runtime",
                "torch",
                "--port",
                str(scorer_port),
            ],
            env,
            logs,
        ),
        "gateway": start("gateway", [sys.executable, "-m", "gateway", "serve"], env, logs),
    }
    base = f"https://localhost:{gateway_port}"
    try:
        wait_ready(f"{scorer}/v2/health/ready", None, procs, logs)  # the model warmed up
        wait_ready(f"{base}/v2/health/ready", client_context(stack.ca), procs, logs)
        samples = json.loads((digits_repo / "digits" / "samples.json").read_text())
        yield TorchStack(base, scorer, key, stack.ca, state, samples)
    finally:
        stop(procs)


def v2_images(pngs: list[str], outputs: tuple[str, ...] = ("predict",)) -> dict[str, Any]:
    return {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(pngs)], "data": pngs}],
        "outputs": [{"name": name} for name in outputs],
    }


def test_a_digit_png_is_scored_through_the_gateway_by_the_torch_scorer(
    torch_stack: TorchStack,
) -> None:
    samples = torch_stack.samples
    with torch_stack.client() as client:
        v2 = client.post("/v2/models/digits/infer", json=v2_images([s["png"] for s in samples]))
        v1 = client.post(
            "/v1/models/digits:predict", json={"instances": [{"b64": s["png"]} for s in samples]}
        )
    assert v2.status_code == 200, v2.text
    assert v1.status_code == 200, v1.text
    predicted = v2.json()["outputs"][0]["data"]
    assert v1.json()["predictions"] == predicted
    truth = [str(s["label"]) for s in samples]
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= len(samples) - 1
    record = torch_stack.audit_for(v2.headers["x-request-id"])
    assert (record["model"], record["decision"], record["status"]) == ("digits", "allow", 200)
    assert samples[0]["png"][:40] not in json.dumps(record)  # never the payload


def test_under_concurrent_load_batches_form_and_results_equal_unbatched_ones(
    torch_stack: TorchStack,
) -> None:
    pngs = [s["png"] for s in torch_stack.samples] * 3
    outputs = ("predict", "probabilities")
    with torch_stack.client() as client:
        alone = []
        for png in pngs:  # one at a time: every forward pass holds one image
            reply = client.post("/v2/models/digits/infer", json=v2_images([png], outputs))
            assert reply.status_code == 200, reply.text
            alone.append(reply.json()["outputs"])
    passes_before, rows_before = torch_stack.batches()

    async def concurrently() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=torch_stack.gateway,
            verify=client_context(torch_stack.ca),
            timeout=30,
            headers={"api-key": torch_stack.key},
            limits=httpx.Limits(max_connections=len(pngs)),
        ) as client:
            return await asyncio.gather(
                *(
                    client.post("/v2/models/digits/infer", json=v2_images([p], outputs))
                    for p in pngs
                )
            )

    replies = asyncio.run(concurrently())
    passes, rows = torch_stack.batches()
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies[:3]]
    assert rows - rows_before == len(pngs)
    assert passes - passes_before < len(pngs), "no batch larger than one image formed"
    for reply, expected in zip(replies, alone, strict=True):
        got = reply.json()["outputs"]
        assert got[0] == expected[0]  # the label, exactly
        assert got[1]["data"] == pytest.approx(expected[1]["data"], abs=1e-5)


@pytest.mark.parametrize(
    ("image", "status", "message"),
    [
        ("R0lGODlhAQABAAAAACw=", 422, "not a readable PNG/JPEG"),  # a GIF header
        ("not base64!", 422, "not valid base64"),
        (b64(bomb_png(4000, 4000)), 413, "pixel limit"),
    ],
    ids=["gif", "not-base64", "decompression-bomb"],
)
def test_bad_images_through_the_gateway_are_4xx_and_audited(
    torch_stack: TorchStack, image: str, status: int, message: str
) -> None:
    with torch_stack.client() as client:
        reply = client.post("/v1/models/digits:predict", json={"instances": [{"b64": image}]})
    assert reply.status_code == status, reply.text
    error = reply.json()
    assert error["code"] == {422: "invalid_request", 413: "payload_too_large"}[status]
    assert message in error["error"]
    record = torch_stack.audit_for(reply.headers["x-request-id"])
    assert (record["model"], record["status"]) == ("digits", status)
