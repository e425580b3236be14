"""scikit-learn runtime: skops artifacts (joblib only with a pinned digest).

A small model's prediction costs far more in scikit-learn's per-call machinery than in
its arithmetic: the iris pipeline's ``predict`` takes 200-250 µs of CPU here, its numpy
arithmetic 3 µs (`bench/profile_scorer.py`), the rest being ``check_array``, tags,
``check_is_fitted`` and feature-name checks in each step. What the data plane already
checked once is switched off with scikit-learn's public configuration, and nothing else:
no documented setting skips the other checks, so they still run.
"""

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
        """``batch`` comes from the data plane (`scorer.dataplane`), which made it of the
        model's declared datatype and shape and refused infinities, and NaN unless the
        model's settings allow it (``_batch_checked``)."""
        # assume_finite: scikit-learn's finiteness scan in each step's check_array is the
        # data plane's, done once per request. skip_parameter_validation: the
        # hyper-parameters were checked at fit, and the helpers a predict calls
        # (pairwise_distances in a neighbours model, ...) get their arguments from
        # scikit-learn itself, not from the request.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return {name: np.asarray(getattr(self.estimator, name)(batch)) for name in outputs}
