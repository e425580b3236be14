"""scikit-learn runtime: skops artifacts (joblib only with a pinned digest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn

from scorer import hazmat
from scorer.errors import ArtifactError
from scorer.repository import ModelSettings


@dataclass
class SklearnRuntime:
    """``predict`` by default; ``predict_proba`` when asked for and the model has it."""

    settings: ModelSettings
    estimator: Any
    outputs: tuple[str, ...]

    @classmethod
    def load(cls, folder: Path, settings: ModelSettings) -> SklearnRuntime:
        path = folder / settings.artifact
        if settings.format == "skops":
            estimator = hazmat.load_skops(path, settings.sha256, settings.trusted_types)
        elif settings.format == "joblib":
            estimator = hazmat.load_joblib(path, settings.sha256)
        else:
            raise ArtifactError(
                f"{settings.name}: format {settings.format!r} is not a sklearn format"
            )
        if not callable(getattr(estimator, "predict", None)):
            raise ArtifactError(f"{settings.name}: artifact has no predict method")
        has_proba = callable(getattr(estimator, "predict_proba", None))
        return cls(settings, estimator, ("predict", "predict_proba") if has_proba else ("predict",))

    def predict(
        self, batch: np.ndarray[Any, Any], outputs: tuple[str, ...]
    ) -> dict[str, np.ndarray[Any, Any]]:
        # The data plane already refused NaN and infinities: skip sklearn's second check.
        with sklearn.config_context(assume_finite=True):
            return {name: np.asarray(getattr(self.estimator, name)(batch)) for name in outputs}
