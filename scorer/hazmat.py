"""Deserialisation of model artifacts: the one place that turns bytes into live objects.

Loading a model artifact can execute code (pickle, joblib). Every function here reads the
file once, checks its SHA-256 against the digest pinned in the model's settings, and only
then deserialises *those same bytes* (no second read that could race a swap). Rules:

- skops first: it refuses any type not in the pinned ``trusted_types`` list.
- joblib (pickle) only with a pinned digest, which the settings schema makes mandatory.
- Never ``pickle.load`` or ``joblib.load`` on a path directly.
- torch: ``torch.export`` or TorchScript archives only, with every ``torch.load`` forced
  to ``weights_only`` (no pickled code even inside a pinned archive).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import warnings
from pathlib import Path
from typing import Any

from scorer.errors import ArtifactError


def read_verified(path: Path, sha256: str) -> bytes:
    """The file's bytes, or ArtifactError when its SHA-256 differs from the pinned one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc.strerror}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, sha256.lower()):
        raise ArtifactError(
            f"artifact {path} has SHA-256 {actual}, but its settings pin {sha256}: refusing to load"
        )
    return data


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_skops(path: Path, sha256: str, trusted_types: tuple[str, ...]) -> Any:
    """Load a skops artifact whose digest matches and whose types are all pinned as trusted."""
    import skops.io as sio

    data = read_verified(path, sha256)
    untrusted = set(sio.get_untrusted_types(data=data))
    unexpected = sorted(untrusted - set(trusted_types))
    if unexpected:
        raise ArtifactError(f"artifact {path} contains types not pinned as trusted: {unexpected}")
    return sio.loads(data, trusted=sorted(untrusted))


def load_joblib(path: Path, sha256: str) -> Any:
    """Load a joblib (pickle) artifact, only after its pinned digest matched."""
    import joblib

    data = read_verified(path, sha256)
    return joblib.load(io.BytesIO(data))


def _torch_weights_only() -> None:
    """Make every ``torch.load`` in this process restricted to tensors and plain data.

    ``torch.export.load`` falls back to a full unpickle when its restricted load fails;
    with this switch set, torch refuses instead (PyTorch's own guard against pickle code
    execution, CWE-502). The digest check comes first in any case.
    """
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)


def load_torch_export(path: Path, sha256: str) -> Any:
    """A ``torch.export`` program (``.pt2``) whose digest matches, as a callable module."""
    import torch

    data = read_verified(path, sha256)
    _torch_weights_only()
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # torch raises many types for a corrupt or unsafe archive
        raise ArtifactError(
            f"artifact {path} is not a loadable torch.export program: {exc}"
        ) from exc
    return program.module()


def load_torchscript(path: Path, sha256: str, device: str) -> Any:
    """A TorchScript module whose digest matches (the format torch now deprecates)."""
    import torch

    data = read_verified(path, sha256)
    _torch_weights_only()
    try:
        with warnings.catch_warnings():
            # torch 2.10+ deprecates TorchScript; loading an existing artifact still works.
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(  # type: ignore[no-untyped-call]
                io.BytesIO(data), map_location=device
            )
    except Exception as exc:
        raise ArtifactError(f"artifact {path} is not a loadable TorchScript module: {exc}") from exc
