"""The JWT issuers the gateway trusts, from `policies/issuers.toml`, checked at start.

Each issuer names its ``iss``, its audience (or audiences), the asymmetric algorithms it
may use and, optionally, where its keys come from: a JWKS URL, or an OIDC discovery
document that names one (an Entra ID tenant's); keys held in the secret store are loaded
by the key ring (`gateway.identity.keyring`). For Entra ID, ``tenant_id`` pins the tenant
(`tid`) and ``allowed_clients`` the calling applications (`azp` / `appid`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.identity.tokens import ASYMMETRIC, IssuerConfig
from gateway.tomlfile import load_toml_model


class IssuerError(Exception):
    """The issuers file is invalid; the gateway refuses to start."""


class _Issuer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(min_length=1)
    # One audience, or several (Entra: `api://<app>` and the application's client id).
    audience: str | tuple[str, ...] = Field(min_length=1)
    algorithms: tuple[str, ...] = Field(min_length=1)
    leeway_s: float = Field(default=30.0, ge=0, le=300)
    jwks_url: str | None = Field(default=None, pattern=r"^https://")
    discovery_url: str | None = Field(default=None, pattern=r"^https://")
    tenant_id: str | None = Field(default=None, min_length=1)
    allowed_clients: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_key_source(self) -> _Issuer:
        if self.jwks_url is not None and self.discovery_url is not None:
            raise ValueError("give jwks_url or discovery_url, not both")
        audiences = (self.audience,) if isinstance(self.audience, str) else self.audience
        if not audiences or not all(audiences):
            raise ValueError("audience must name at least one non-empty audience")
        return self


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
        audiences = (cfg.audience,) if isinstance(cfg.audience, str) else cfg.audience
        configs.append(
            IssuerConfig(
                name,
                cfg.issuer,
                audiences[0],
                frozenset(cfg.algorithms),
                cfg.leeway_s,
                # Without it no JWKS fetcher starts, and every token of the issuer (an Entra
                # ID tenant's) is refused as an unknown kid.
                jwks_url=cfg.jwks_url,
                other_audiences=tuple(audiences[1:]),
                tenant_id=cfg.tenant_id,
                allowed_clients=frozenset(cfg.allowed_clients),
                discovery_url=cfg.discovery_url,
            )
        )
    return configs
