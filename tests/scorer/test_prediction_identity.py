"""The scorer answers what the model itself computes, whatever it skips to get there.

The scorer leaves scikit-learn's finiteness and parameter checks to the data plane
(`scorer.runtimes.sklearn`), runs small predictions inline, writes outputs with orjson's
numpy support and picks torch labels from a prepared array. So every demo model is asked,
through the real ASGI path (`scorer.fastpath`), about a few hundred random rows in
batches of many sizes, as JSON (v2 and v1) and as binary tensors; its answers are
compared with the model called plainly: the iris ``Pipeline.predict``/``predict_proba``
(equal to the last bit) and the digits CNN's forward (torch's batched kernels may round
differently, so within float tolerance).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import skops.io as sio
from prometheus_client import CollectorRegistry
from quart import Quart
from quart import typing as quart_typing

from scorer.app import create_app
from scorer.repository import read_model_settings
from scorer.server import load_models
from scorer.settings import ScorerSettings
from tests import binary_framing as framing

IRIS_BATCHES = (1, 1, 2, 3, 5, 8, 13, 21, 34, 64, 64, 1, 40)  # 257 rows
DIGITS_BATCHES = (1, 2, 3, 4, 7, 16, 32, 64, 1, 9, 33, 64)  # 236 images


def iris_rows(rng: np.random.Generator, size: int) -> np.ndarray[Any, Any]:
    """Rows near the flowers, far from them, tiny, huge and whole numbers."""
    kind = rng.integers(5)
    if kind == 0:
        return rng.normal([5.8, 3.0, 3.8, 1.2], [0.8, 0.4, 1.8, 0.8], (size, 4))
    if kind == 1:
        return rng.uniform(-1e3, 1e3, (size, 4))
    if kind == 2:
        return rng.normal(0, 1e-300, (size, 4))
    if kind == 3:
        return rng.normal(0, 1e150, (size, 4))
    return rng.integers(-20, 20, (size, 4)).astype(np.float64)


async def infer(
    client: quart_typing.TestClientProtocol,
    model: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    r = await client.post(f"/v2/models/{model}/infer", data=body, headers=headers or {})
    data = await r.get_data(as_text=False)
    assert r.status_code == 200, data
    return data, dict(r.headers)


# -- iris: a scikit-learn Pipeline, bit for bit ---------------------------------------------
@pytest.fixture(scope="module")
def pipeline(model_repo: Path) -> Any:
    """The artifact loaded on its own, outside the scorer: the plain Pipeline."""
    settings = read_model_settings(model_repo / "iris")
    artifact = model_repo / "iris" / settings.artifact
    return sio.load(artifact, trusted=sio.get_untrusted_types(file=artifact))


@pytest.mark.parametrize("inline_us", [ScorerSettings().inline_predict_us, 0.0])
async def test_iris_answers_equal_plain_pipeline_predict(
    model_repo: Path, pipeline: Any, inline_us: float
) -> None:
    app = create_app(
        load_models(ScorerSettings(repository=model_repo)),
        max_body_bytes=1 << 20,
        inline_budget_s=inline_us / 1e6,
    )
    client = app.test_client()
    rng = np.random.default_rng(20240617)
    outputs = [{"name": "predict"}, {"name": "predict_proba"}]
    for size in IRIS_BATCHES:
        rows = iris_rows(rng, size)
        want_labels = pipeline.predict(rows)
        want_proba = pipeline.predict_proba(rows)
        tensor = {"name": "measurements", "shape": [size, 4], "datatype": "FP64"}

        # v2, JSON: orjson writes every float64 so that it parses back to the same bits.
        raw, _ = await infer(
            client,
            "iris",
            orjson.dumps(
                {"inputs": [{**tensor, "data": rows.ravel().tolist()}], "outputs": outputs}
            ),
        )
        got = {o["name"]: o for o in orjson.loads(raw)["outputs"]}
        assert got["predict"]["data"] == want_labels.tolist()
        proba = np.asarray(got["predict_proba"]["data"]).reshape(got["predict_proba"]["shape"])
        assert np.array_equal(proba, want_proba)

        # v2, binary in and out: the model's own float64 bytes.
        body, headers = framing.request(
            [(tensor, rows.astype("<f8").tobytes())],
            outputs=outputs,
            parameters={"binary_data_output": True},
        )
        raw, answer = await infer(client, "iris", body, headers)
        _, parts = framing.outputs(raw, int(answer["inference-header-content-length"]))
        assert [b.decode() for b in framing.bytes_items(parts["predict"])] == want_labels.tolist()
        proba = np.frombuffer(parts["predict_proba"], "<f8").reshape(want_proba.shape)
        assert np.array_equal(proba, want_proba)

        # v2, binary FP32 into the FP64 model: widened exactly, as the plain call sees it.
        if np.abs(rows).max() < np.finfo(np.float32).max:
            narrow = rows.astype(np.float32)
            body, headers = framing.request(
                [({**tensor, "datatype": "FP32"}, narrow.astype("<f4").tobytes())],
                outputs=outputs,
            )
            raw, _ = await infer(client, "iris", body, headers)
            got = {o["name"]: o for o in orjson.loads(raw)["outputs"]}
            wide = narrow.astype(np.float64)
            assert got["predict"]["data"] == pipeline.predict(wide).tolist()
            assert np.array_equal(
                np.asarray(got["predict_proba"]["data"]).reshape(size, -1),
                pipeline.predict_proba(wide),
            )

        # v1 instances.
        r = await client.post("/v1/models/iris:predict", json={"instances": rows.tolist()})
        assert r.status_code == 200, await r.get_data()
        assert (await r.get_json())["predictions"] == want_labels.tolist()


# -- digits: a torch CNN, within float tolerance --------------------------------------------
@pytest.fixture(scope="module")
def network(digits_repo: Path) -> Any:
    """The exported program loaded on its own, outside the scorer."""
    import torch

    settings = read_model_settings(digits_repo / "digits")
    return torch.export.load(str(digits_repo / "digits" / settings.artifact)).module()


def forward(network: Any, images: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    import torch

    with torch.inference_mode():
        logits: np.ndarray[Any, Any] = network(torch.from_numpy(images.copy())).numpy()
    return logits


def digit_images(rng: np.random.Generator, size: int) -> np.ndarray[Any, Any]:
    from scorer.dev.digits import _data

    if rng.integers(2):
        return rng.normal(0, 1.5, (size, 1, 8, 8)).astype(np.float32)
    images = _data()[0][rng.integers(0, 1797, size)]
    return ((images - 0.33) / 0.37).astype(np.float32)[:, None]


async def test_digits_answers_equal_the_networks_forward(digits_repo: Path, network: Any) -> None:
    registry = CollectorRegistry()
    app: Quart = create_app(
        load_models(ScorerSettings(repository=digits_repo, runtimes=("torch",))),
        max_body_bytes=1 << 20,
        registry=registry,
    )
    rng = np.random.default_rng(8)
    labels = read_model_settings(digits_repo / "digits").labels
    outputs = [{"name": "predict"}, {"name": "probabilities"}, {"name": "logits"}]
    batches = [digit_images(rng, size) for size in DIGITS_BATCHES]
    async with app.test_app() as started:  # the batcher's loop runs
        client = started.test_client()

        async def both(images: np.ndarray[Any, Any]) -> list[dict[str, Any]]:
            tensor = {"name": "image", "shape": list(images.shape), "datatype": "FP32"}
            data = images.ravel().tolist()  # float32 values, exact as JSON doubles
            raw, _ = await infer(
                client,
                "digits",
                orjson.dumps({"inputs": [{**tensor, "data": data}], "outputs": outputs}),
            )
            body, headers = framing.request(
                [(tensor, images.astype("<f4").tobytes())],
                outputs=outputs,
                parameters={"binary_data_output": True},
            )
            binary, answer = await infer(client, "digits", body, headers)
            _, parts = framing.outputs(binary, int(answer["inference-header-content-length"]))
            from_json = {o["name"]: o["data"] for o in orjson.loads(raw)["outputs"]}
            from_binary = {
                "predict": [b.decode() for b in framing.bytes_items(parts["predict"])],
                "probabilities": np.frombuffer(parts["probabilities"], "<f4").tolist(),
                "logits": np.frombuffer(parts["logits"], "<f4").tolist(),
            }
            return [from_json, from_binary]

        # All at once, so that the batcher stacks requests of different sizes together.
        answers = await asyncio.gather(*(both(images) for images in batches))
    passes = registry.get_sample_value("scoregate_scorer_batch_requests_count", {"model": "digits"})
    served = registry.get_sample_value("scoregate_scorer_batch_requests_sum", {"model": "digits"})
    assert served == 2 * len(batches)
    assert passes is not None and passes < served  # some forward passes served several
    for images, pair in zip(batches, answers, strict=True):
        logits = forward(network, images)
        order = np.sort(logits, axis=1)
        clear = order[:, -1] - order[:, -2] > 1e-3  # no near tie for the top class
        for got in pair:
            got_logits = np.asarray(got["logits"], np.float32).reshape(logits.shape)
            np.testing.assert_allclose(got_logits, logits, rtol=1e-5, atol=1e-5)
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            np.testing.assert_allclose(
                np.asarray(got["probabilities"], np.float32).reshape(logits.shape),
                exp / exp.sum(axis=1, keepdims=True),
                rtol=1e-5,
                atol=1e-6,
            )
            want = np.asarray(labels)[logits.argmax(axis=1)]
            assert (np.asarray(got["predict"])[clear] == want[clear]).all()
