from __future__ import annotations

import io
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer

from scorer import hazmat
from scorer.errors import ArtifactError


def double(x: np.ndarray) -> np.ndarray:  # a user function: skops treats it as untrusted
    return x * 2


def fitted() -> LogisticRegression:
    return LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])


def test_read_verified_returns_bytes_only_when_the_digest_matches(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"model")
    digest = hazmat.file_sha256(path)
    assert hazmat.read_verified(path, digest) == b"model"
    assert hazmat.read_verified(path, digest.upper()) == b"model"
    with pytest.raises(ArtifactError, match="refusing to load"):
        hazmat.read_verified(path, "0" * 64)


def test_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="cannot read"):
        hazmat.read_verified(tmp_path / "none", "0" * 64)


def test_skops_loads_when_digest_and_types_are_pinned(tmp_path: Path) -> None:
    path = tmp_path / "m.skops"
    sio.dump(fitted(), path)
    model = hazmat.load_skops(path, hazmat.file_sha256(path), ())
    assert model.predict(np.array([[3.0]])).tolist() == [1]


def test_skops_refuses_types_not_pinned_as_trusted(tmp_path: Path) -> None:
    path = tmp_path / "m.skops"
    sio.dump(FunctionTransformer(func=double).fit(np.ones((2, 1))), path)
    digest = hazmat.file_sha256(path)
    with pytest.raises(ArtifactError, match="not pinned as trusted"):
        hazmat.load_skops(path, digest, ())
    name = "tests.scorer.test_hazmat.double"
    assert hazmat.load_skops(path, digest, (name,)).transform(np.ones((1, 1))).tolist() == [[2.0]]


def test_joblib_loads_only_with_the_pinned_digest(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    joblib.dump(fitted(), path)
    assert hazmat.load_joblib(path, hazmat.file_sha256(path)).predict(
        np.array([[0.0]])
    ).tolist() == [0]


class Boom:
    """Unpickling this would run code: it must never get that far."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path("/tmp/scoregate-pwned").write_text, ("pwned",))  # noqa: S108


def test_tampered_pickle_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    joblib.dump(fitted(), path)
    pinned = hazmat.file_sha256(path)
    buf = io.BytesIO()
    pickle.dump(Boom(), buf)
    path.write_bytes(buf.getvalue())  # swapped for a malicious pickle after pinning
    marker = Path("/tmp/scoregate-pwned")  # noqa: S108
    marker.unlink(missing_ok=True)
    with pytest.raises(ArtifactError, match="refusing to load"):
        hazmat.load_joblib(path, pinned)
    assert not marker.exists()
