"""The policy files of `policies/` (TOML), each parsed and validated by a pydantic model."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


def load_toml_model(path: Path, model: type[ModelT], error: type[Exception]) -> ModelT:
    """A policy file parsed and validated strictly; every failure is ``error`` naming the file."""
    try:
        with path.open("rb") as fh:
            return model.model_validate(tomllib.load(fh))
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise error(f"{path}: {exc}") from exc
