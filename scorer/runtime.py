"""The runtime seam: one class per framework, each loading and running one model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scorer.repository import ModelSettings


class Runtime(Protocol):
    """A loaded model. ``predict`` is blocking: callers run it off the event loop."""

    settings: ModelSettings
    outputs: tuple[str, ...]  # what the model can produce; the first is the default

    def predict(
        self, batch: np.ndarray[Any, Any], outputs: tuple[str, ...]
    ) -> dict[str, np.ndarray[Any, Any]]:
        """The requested named outputs, each with the batch as its first dimension."""
        ...


def load_runtime(folder: Path, settings: ModelSettings) -> Runtime:
    """Build the runtime a model's settings name; imports the framework only when needed."""
    if settings.runtime == "sklearn":
        from scorer.runtimes.sklearn import SklearnRuntime

        return SklearnRuntime.load(folder, settings)
    from scorer.errors import ArtifactError

    if settings.runtime == "torch":
        try:
            from scorer.runtimes.pytorch import TorchRuntime
        except ImportError as exc:
            raise ArtifactError(
                f"{settings.name}: the torch runtime needs the 'torch' extra ({exc})"
            ) from exc
        return TorchRuntime.load(folder, settings)

    raise ArtifactError(f"runtime {settings.runtime!r} is not available in this scorer")
