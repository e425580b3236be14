"""The JWT issuers the gateway trusts, from `policies/issuers.toml`, checked at start.

Each issuer names its ``iss``, its audience, the asymmetric algorithms it may use and,
optionally, a JWKS URL (an Entra ID tenant's) its keys come from; keys held in the secret
store are loaded by the key ring (`gateway.identity.keyring`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gateway.identity.tokens import ASYMMETRIC, IssuerConfig
from gateway.tomlfile import load_toml_model


class IssuerError(Exception):
    """The issuers file is invalid; the gateway refuses to start."""


class _Issuer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    algorithms: tuple[str, ...] = Field(min_length=1)
    leeway_s: float = Field(default=30.0, ge=0, le=300)
    jwks_url: str | None = Field(default=None, pattern=r"^https://")


class _IssuersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuers: dict[str, _Issuer] = {}


def load_issuers(path: Path) -> list[IssuerConfig]:
    parsed = load_toml_model(path, _IssuersFile, IssuerError)
    configs = []
    for name, cfg in parsed.issuers.items():
        weak = sorted(set(cfg.algorithms) - ASYMMETRIC)
        if weak:
            raise IssuerError(f"{path}: issuer {name!r} allows non-asymmetric algorithms {weak}")
        configs.append(
            IssuerConfig(
                name,
                cfg.issuer,
                cfg.audience,
                frozenset(cfg.algorithms),
                cfg.leeway_s,
                # Without it no JWKS fetcher starts, and every token of the issuer (an Entra
                # ID tenant's) is refused as an unknown kid.
                jwks_url=cfg.jwks_url,
            )
        )
    return configs
