"""PyTorch runtime: ``torch.export`` (preferred) or TorchScript artifacts.

Loaded only after the SHA-256 check (`scorer.hazmat`), with every ``torch.load`` forced
to ``weights_only``. Runs under ``torch.inference_mode`` on the model's device: ``auto``
takes CUDA when present, else the CPU; ``half`` uses float16 on a GPU only. The model is
warmed up at load time (batch sizes 1 and the batching size) so the first client does
not pay for kernel selection and memory allocation; the scorer reports ready only after.

A classifier (a 2-D float output) offers ``predict`` (class index, or label when the
settings name ``labels``), ``probabilities`` (softmax) and ``logits``; any other model
offers its raw ``output``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scorer import hazmat
from scorer.errors import ArtifactError
from scorer.repository import ModelSettings

log = logging.getLogger("scorer.torch")
CLASSIFIER_OUTPUTS = ("predict", "probabilities", "logits")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArtifactError(f"device {name!r} asked for, but CUDA is not available here")
    return device


@dataclass
class TorchRuntime:
    settings: ModelSettings
    module: Any
    device: torch.device
    dtype: torch.dtype
    outputs: tuple[str, ...] = ("output",)
    # The labels as an array, made once: a batch's class indices pick from it.
    labels: np.ndarray[Any, Any] | None = None

    @classmethod
    def load(cls, folder: Path, settings: ModelSettings) -> TorchRuntime:
        device = resolve_device(settings.device)
        path = folder / settings.artifact
        if settings.format == "torch-export":
            module = hazmat.load_torch_export(path, settings.sha256).to(device)
        else:
            module = hazmat.load_torchscript(path, settings.sha256, str(device)).eval()
        dtype = torch.float16 if settings.half and device.type == "cuda" else torch.float32
        if dtype == torch.float16:
            module = module.half()
        labels = np.asarray(settings.labels, dtype=object) if settings.labels else None
        runtime = cls(settings, module, device, dtype, labels=labels)
        runtime.outputs = runtime._warm_up()
        log.warning("model %s ready on %s (%s)", settings.name, device, dtype)
        return runtime

    def _example(self, rows: int) -> np.ndarray[Any, Any]:
        shape = [rows, *(d if d > 0 else 1 for d in self.settings.input.shape[1:])]
        return np.zeros(shape, dtype=np.float32)

    def _warm_up(self) -> tuple[str, ...]:
        """Run the model once per warm-up size; learn which outputs it offers."""
        sizes = {1}
        if self.settings.batching is not None:
            sizes.add(min(self.settings.batching.max_batch_size, self.settings.max_batch))
        for rows in sorted(sizes):
            try:
                raw = self._forward(self._example(rows))
            except Exception as exc:
                raise ArtifactError(
                    f"{self.settings.name}: warm-up forward pass failed: {exc}"
                ) from exc
        classifier = raw.ndim == 2 and raw.is_floating_point()
        if self.settings.labels and (not classifier or raw.shape[1] != len(self.settings.labels)):
            raise ArtifactError(
                f"{self.settings.name}: {len(self.settings.labels)} labels, "
                f"but the model's output has shape {list(raw.shape)}"
            )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return CLASSIFIER_OUTPUTS if classifier else ("output",)

    def _input(self, batch: np.ndarray[Any, Any]) -> torch.Tensor:
        """The batch as the model's input tensor, on its device: over the batch's own
        memory where it can be. A binary tensor is a read-only view of the request's bytes,
        maybe unaligned: copied then, as torch tensors are writable."""
        array = np.require(batch, requirements=("C_CONTIGUOUS", "ALIGNED", "WRITEABLE"))
        return torch.from_numpy(array).to(self.device, self.dtype)

    def _forward(self, batch: np.ndarray[Any, Any]) -> torch.Tensor:
        with torch.inference_mode():
            y = self.module(self._input(batch))
            if isinstance(y, (tuple, list)):
                y = y[0]
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"the model returned {type(y).__name__}, not a tensor")
            return y.float()

    def predict(
        self, batch: np.ndarray[Any, Any], outputs: tuple[str, ...]
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Blocking: the batcher calls it from the model's own thread. ``batch`` comes from
        the data plane: the model's input datatype and shape, finite unless allowed."""
        y = self._forward(batch)
        if self.outputs == ("output",):
            return {"output": y.cpu().numpy()}
        result: dict[str, np.ndarray[Any, Any]] = {}
        if "logits" in outputs:
            result["logits"] = y.cpu().numpy()
        if "probabilities" in outputs:
            result["probabilities"] = torch.softmax(y, dim=1).cpu().numpy()
        if "predict" in outputs:
            index = y.argmax(dim=1).cpu().numpy()
            result["predict"] = self.labels[index] if self.labels is not None else index
        return {name: result[name] for name in outputs}
