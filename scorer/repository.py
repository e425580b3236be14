"""The model repository: one folder per model, each with a ``model-settings.toml``.

    var/models/
      iris/
        model-settings.toml   name, runtime, artifact, sha256, input schema, max batch
        model.skops

Settings are validated strictly (unknown keys rejected) so a typo cannot silently turn a
check off.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from scorer.errors import ArtifactError

SETTINGS_FILE = "model-settings.toml"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Datatype = Literal["BOOL", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]


class TensorSpec(BaseModel):
    """One named tensor: Open Inference Protocol datatype and shape (-1 = any size)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "input-0"
    datatype: Datatype = "FP64"
    shape: tuple[int, ...]
    allow_nan: bool = False

    @field_validator("shape")
    @classmethod
    def _shape(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape or any(d == 0 or d < -1 for d in shape):
            raise ValueError("shape needs at least one dimension, each > 0 or -1")
        return shape


class ImageSpec(BaseModel):
    """How images sent as base64 PNG or JPEG become the model's input tensor.

    Decoding is bounded before any pixel is decompressed: the encoded size, the declared
    width x height (decompression bombs) and the container format are checked first.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(ge=1, le=4096)
    height: int = Field(ge=1, le=4096)
    mode: Literal["L", "RGB"] = "RGB"
    # How an image of another size is resized to width x height (Pillow's filters).
    resample: Literal["nearest", "box", "bilinear", "bicubic", "lanczos"] = "bilinear"
    # Per channel, applied after scaling pixels to [0, 1]: (x - mean) / std.
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    formats: tuple[Literal["PNG", "JPEG"], ...] = ("PNG", "JPEG")
    max_bytes: int = Field(default=2 * 1024 * 1024, ge=64)
    max_pixels: int = Field(default=16_000_000, ge=1)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @model_validator(mode="after")
    def _per_channel(self) -> ImageSpec:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values for mode {self.mode}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class BatchingSpec(BaseModel):
    """Dynamic batching: gather concurrent requests into one forward pass.

    A batch runs when it holds ``max_batch_size`` rows, when no other request for the
    model is on its way, or when its first request has waited ``max_delay_ms``, whichever
    comes first. At most ``max_queue`` requests wait; beyond that the scorer answers 503
    at once rather than queue without bound.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(default=32, ge=1, le=65536)
    max_delay_ms: float = Field(default=2.0, ge=0, le=10_000)
    max_queue: int = Field(default=256, ge=1, le=1_000_000)


_FORMATS_OF = {"sklearn": ("skops", "joblib"), "torch": ("torchscript", "torch-export")}


class ModelSettings(BaseModel):
    """What `model-settings.toml` holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    runtime: Literal["sklearn", "torch"]
    artifact: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: Literal["skops", "joblib", "torchscript", "torch-export"] = "skops"
    version: str = "1"
    max_batch: int = Field(default=64, ge=1, le=65536)
    input: TensorSpec
    # skops: the exact non-default types the artifact may contain, pinned at export time.
    trusted_types: tuple[str, ...] = ()
    # torch: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$")
    half: bool = False  # torch: float16 weights and inputs, on a GPU only
    labels: tuple[str, ...] = ()  # torch classifiers: class names, by output index
    image: ImageSpec | None = None
    batching: BatchingSpec | None = None
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not MODEL_NAME.fullmatch(name):
            raise ValueError(f"model name must match {MODEL_NAME.pattern}")
        return name

    @field_validator("artifact")
    @classmethod
    def _artifact(cls, artifact: str) -> str:
        # The artifact lives inside the model folder: no absolute paths, no `..`.
        path = Path(artifact)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError("artifact must be a relative path inside the model folder")
        return artifact

    @model_validator(mode="after")
    def _consistent(self) -> ModelSettings:
        if self.format not in _FORMATS_OF[self.runtime]:
            raise ValueError(
                f"format {self.format!r} is not a {self.runtime} format {_FORMATS_OF[self.runtime]}"
            )
        if self.image is not None:
            want = (-1, self.image.channels, self.image.height, self.image.width)
            if self.input.shape != want or not self.input.datatype.startswith("FP"):
                raise ValueError(f"an image model's input must be FP with shape {list(want)}")
        return self


def read_model_settings(folder: Path) -> ModelSettings:
    path = folder / SETTINGS_FILE
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        settings = ModelSettings.model_validate(data)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    if settings.name != folder.name:
        raise ArtifactError(f"{path}: name {settings.name!r} differs from folder {folder.name!r}")
    return settings


def discover(repository: Path, runtimes: tuple[str, ...]) -> list[tuple[Path, ModelSettings]]:
    """Every model folder of the repository whose runtime this process serves, by name."""
    if not repository.is_dir():
        raise ArtifactError(f"model repository {repository} does not exist")
    found = []
    for folder in sorted(p for p in repository.iterdir() if p.is_dir()):
        if not (folder / SETTINGS_FILE).exists():
            continue
        settings = read_model_settings(folder)
        if settings.runtime in runtimes:
            found.append((folder, settings))
    return found
