"""The rate-limit policy: `policies/ratelimits.toml`, validated when the gateway starts.

Limits are written as `limits` strings ("100/second;3000/minute", as slowapi writes
them); a string `limits` cannot parse stops the start, never a request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from limits import parse_many
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.tomlfile import load_toml_model

StrategyName = Literal["sliding-window-counter", "moving-window", "fixed-window"]
FailurePolicy = Literal["memory", "closed", "open"]


class RateLimitPolicyError(Exception):
    """The rate-limit policy file is invalid; the gateway refuses to start."""


def _limit_string(value: str) -> str:
    if value.strip():
        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"invalid limit {value!r}: {exc}") from None
    return value


class _Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    per_principal: str = "100/second;3000/minute"
    per_principal_model: str = ""
    per_address: str = "200/second"
    failed_auth_per_address: str = "10/minute;50/hour"

    @field_validator("*")
    @classmethod
    def _valid(cls, value: str) -> str:
        return _limit_string(value)


class _Override(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    principal: str = Field(min_length=1)
    model: str | None = None
    limits: str
    strategy: StrategyName | None = None

    @field_validator("limits")
    @classmethod
    def _valid(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("an override needs a limit")
        return _limit_string(value)


class RateLimitPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: StrategyName = "sliding-window-counter"
    defaults: _Defaults = _Defaults()
    overrides: tuple[_Override, ...] = ()

    @classmethod
    def load(cls, path: Path, known_models: tuple[str, ...]) -> RateLimitPolicy:
        policy = load_toml_model(path, cls, RateLimitPolicyError)
        for override in policy.overrides:
            if override.model is not None and override.model not in known_models:
                raise RateLimitPolicyError(
                    f"{path}: override for {override.principal!r} "
                    f"names unknown model {override.model!r}"
                )
        return policy
