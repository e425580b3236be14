"""scikit-learn runtime: skops artifacts (joblib only with a pinned digest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scorer import hazmat
from scorer.errors import ArtifactError
from scorer.repository import ModelSettings


@dataclass
class SklearnRuntime:
    settings: ModelSettings
    estimator: Any
    has_proba: bool

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
        return cls(settings, estimator, callable(getattr(estimator, "predict_proba", None)))

    def predict(self, batch: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        outputs = {"predict": np.asarray(self.estimator.predict(batch))}
        if self.has_proba:
            outputs["predict_proba"] = np.asarray(self.estimator.predict_proba(batch))
        return outputs
