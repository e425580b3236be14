"""The PyTorch runtime on the real digits CNN: batched equals unbatched, images equal
tensors, outputs and load-time checks."""

from __future__ import annotations

import asyncio
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from scorer import dataplane
from scorer.batching import BatchMetrics, DynamicBatcher
from scorer.dev.digits import DigitsNet, _data, held_out_indices
from scorer.errors import ArtifactError
from scorer.hazmat import file_sha256
from scorer.repository import read_model_settings
from scorer.runtime import load_runtime
from scorer.runtimes.pytorch import CLASSIFIER_OUTPUTS, TorchRuntime


@pytest.fixture(scope="module")
def runtime(digits_repo: Path) -> TorchRuntime:
    folder = digits_repo / "digits"
    loaded = load_runtime(folder, read_model_settings(folder))
    assert isinstance(loaded, TorchRuntime)
    return loaded


def tensors(runtime: TorchRuntime, indices: list[int]) -> np.ndarray[Any, Any]:
    """Data-set images preprocessed as the model's settings say (no PNG involved)."""
    images = _data()[0][indices]
    spec = runtime.settings.image
    assert spec is not None
    return ((images - spec.mean[0]) / spec.std[0]).astype(np.float32)[:, None, :, :]


def copy_model(digits_repo: Path, tmp_path: Path, **replace: str) -> Path:
    folder = tmp_path / "digits"
    shutil.copytree(digits_repo / "digits", folder)
    settings = folder / "model-settings.toml"
    text = settings.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    settings.write_text(text)
    return folder


def test_a_classifier_offers_labels_probabilities_and_logits(runtime: TorchRuntime) -> None:
    assert runtime.outputs == CLASSIFIER_OUTPUTS
    rows = tensors(runtime, [0, 1, 2])
    out = runtime.predict(rows, CLASSIFIER_OUTPUTS)
    assert out["predict"].tolist() == ["0", "1", "2"]
    assert out["probabilities"].shape == (3, 10)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    assert out["logits"].argmax(axis=1).tolist() == [0, 1, 2]
    assert list(runtime.predict(rows, ("logits",))) == ["logits"]


def test_held_out_digits_sent_as_png_are_scored_correctly(
    runtime: TorchRuntime, digits_repo: Path
) -> None:
    samples = json.loads((digits_repo / "digits" / "samples.json").read_text())
    body = {"instances": [{"b64": s["png"]} for s in samples]}
    rows = dataplane.decode_v1(body, runtime.settings)
    predicted = runtime.predict(rows, ("predict",))["predict"].tolist()
    truth = [str(s["label"]) for s in samples]
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= len(samples) - 1


def test_a_png_scores_exactly_as_the_preprocessed_tensor(
    runtime: TorchRuntime, digits_repo: Path
) -> None:
    samples = json.loads((digits_repo / "digits" / "samples.json").read_text())
    from_png = dataplane.decode_v2(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [4],
                    "data": [s["png"] for s in samples[:4]],
                }
            ]
        },
        runtime.settings,
    )
    direct = tensors(runtime, held_out_indices()[:4])
    spec = runtime.settings.image
    assert spec is not None
    # The PNG holds 8-bit grey levels: at most half a level of rounding, nothing more.
    np.testing.assert_allclose(from_png, direct, rtol=0, atol=0.5 / 255 / spec.std[0] + 1e-6)
    png_out = runtime.predict(from_png, ("predict", "logits"))
    direct_out = runtime.predict(direct, ("predict", "logits"))
    assert png_out["predict"].tolist() == direct_out["predict"].tolist()
    np.testing.assert_allclose(png_out["logits"], direct_out["logits"], atol=0.1)


async def test_batched_results_equal_unbatched_ones_and_keep_their_order(
    runtime: TorchRuntime,
) -> None:
    registry = CollectorRegistry()
    assert runtime.settings.batching is not None
    batcher = DynamicBatcher(
        "digits", runtime.predict, runtime.settings.batching, BatchMetrics(registry)
    )
    await batcher.start()
    indices = list(range(60))
    rows = [tensors(runtime, [i, i + 100][: 1 + i % 2]) for i in indices]
    batched = await asyncio.gather(*(batcher.run(r, CLASSIFIER_OUTPUTS) for r in rows))
    await batcher.stop()
    for r, got in zip(rows, batched, strict=True):
        alone = runtime.predict(r, CLASSIFIER_OUTPUTS)
        assert got["predict"].tolist() == alone["predict"].tolist()
        np.testing.assert_allclose(got["logits"], alone["logits"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got["probabilities"], alone["probabilities"], atol=1e-5)
    forward_passes = registry.get_sample_value(
        "scoregate_scorer_batch_rows_count", {"model": "digits"}
    )
    assert forward_passes is not None and forward_passes < len(rows)


def test_cuda_asked_for_where_there_is_none_is_a_clear_load_error(
    digits_repo: Path, tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    folder = copy_model(digits_repo, tmp_path, **{'device = "auto"': 'device = "cuda:0"'})
    with pytest.raises(ArtifactError, match="CUDA is not available"):
        load_runtime(folder, read_model_settings(folder))


def test_half_precision_applies_on_a_gpu_only(digits_repo: Path, tmp_path: Path) -> None:
    folder = copy_model(
        digits_repo, tmp_path, **{'device = "auto"': 'device = "auto"\nhalf = true'}
    )
    loaded = load_runtime(folder, read_model_settings(folder))
    assert isinstance(loaded, TorchRuntime)
    expected = torch.float16 if torch.cuda.is_available() else torch.float32
    assert loaded.dtype == expected


def test_labels_that_do_not_match_the_output_refuse_to_load(
    digits_repo: Path, tmp_path: Path
) -> None:
    folder = copy_model(digits_repo, tmp_path, **{'"8", "9"]': '"8"]'})
    with pytest.raises(ArtifactError, match="9 labels"):
        load_runtime(folder, read_model_settings(folder))


def test_a_model_that_fails_its_warm_up_never_serves(digits_repo: Path, tmp_path: Path) -> None:
    # Settings that promise 3 channels to a 1-channel network: caught before serving.
    folder = copy_model(
        digits_repo,
        tmp_path,
        **{"shape = [-1, 1, 8, 8]": "shape = [-1, 3, 8, 8]", 'mode = "L"': 'mode = "RGB"'},
    )
    with pytest.raises(ArtifactError, match="warm-up"):
        load_runtime(folder, read_model_settings(folder))


def test_torchscript_artifacts_load_too(
    digits_repo: Path, tmp_path: Path, runtime: TorchRuntime
) -> None:
    model = DigitsNet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch deprecates TorchScript
        scripted = torch.jit.script(model.eval())
        path = tmp_path / "scripted.pt"
        torch.jit.save(scripted, str(path))
    folder = copy_model(
        digits_repo,
        tmp_path,
        **{
            'artifact = "model.pt2"': 'artifact = "scripted.pt"',
            'format = "torch-export"': 'format = "torchscript"',
        },
    )
    shutil.move(str(path), folder / "scripted.pt")
    text = (folder / "model-settings.toml").read_text()
    text = text.replace(runtime.settings.sha256, file_sha256(folder / "scripted.pt"))
    (folder / "model-settings.toml").write_text(text)
    loaded = load_runtime(folder, read_model_settings(folder))
    rows = tensors(runtime, [0, 1])
    with torch.inference_mode():
        expected = model(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(loaded.predict(rows, ("logits",))["logits"], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ('format = "torch-export"', 'format = "joblib"', "not a torch format"),
        ("shape = [-1, 1, 8, 8]", "shape = [-1, 1, 8, 9]", "image model's input"),
        ('mode = "L"', 'mode = "RGB"', "image model's input"),
        ("std = [", "std = [0.0, ", "std"),
        ('device = "auto"', 'device = "tpu"', "device"),
        ("max_delay_ms = 2.0", "max_delay_ms = -1", "max_delay_ms"),
    ],
)
def test_settings_that_contradict_themselves_refuse_to_load(
    digits_repo: Path, tmp_path: Path, old: str, new: str, error: str
) -> None:
    folder = copy_model(digits_repo, tmp_path, **{old: new})
    with pytest.raises(ArtifactError, match=error):
        read_model_settings(folder)
