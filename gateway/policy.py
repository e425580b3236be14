"""Routing table and access policy, read from `policies/` at start and validated strictly.

    routes.toml   model name → upstream (scorer URL, kind, timeouts, max instances)
    access.toml   scope → models it grants; anything not granted is denied

Model names are matched exactly against the routing table; the upstream address only ever
comes from this file, never from the request (OWASP API7, server-side request forgery).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from gateway.errors import Forbidden, ModelNotFound
from gateway.identity.principal import Principal
from gateway.tomlfile import load_toml_model

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
WILDCARD = "*"


class PolicyError(Exception):
    """A policy file is missing or invalid; the gateway refuses to start."""


class Upstream(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrl
    kind: Literal["cpu", "gpu"] = "cpu"
    connect_timeout_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=64, ge=1)
    # Circuit breaker: open after this many consecutive failures, try again after reset.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=10.0, gt=0)


class ModelRoute(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    upstream: str
    max_instances: int = Field(default=64, ge=1)
    # Elements (numbers, or BYTES items) one request may carry; default: max_instances
    # rows of 1024 (gateway/steps/envelope.py: cost follows work, OWASP API4).
    max_elements: int | None = Field(default=None, ge=1)
    # Elements in one row of this model's input (iris: 4; an image model: 1): each v1
    # instance must be that wide, and a request's cost is the rows its elements fill.
    row_elements: int | None = Field(default=None, ge=1)


class _RoutesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    upstreams: dict[str, Upstream]
    models: dict[str, ModelRoute]


class _AccessFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scopes: dict[str, list[str]]


@dataclass(frozen=True)
class Route:
    model: str
    upstream_name: str
    upstream: Upstream
    max_instances: int
    max_elements: int = 64 * 1024
    row_elements: int | None = None


class RouteTable:
    def __init__(self, routes: Mapping[str, Route]) -> None:
        self._routes = dict(routes)

    @classmethod
    def load(cls, path: Path) -> RouteTable:
        parsed = load_toml_model(path, _RoutesFile, PolicyError)
        routes: dict[str, Route] = {}
        for model, route in parsed.models.items():
            if not MODEL_NAME.fullmatch(model):
                raise PolicyError(f"{path}: invalid model name {model!r}")
            upstream = parsed.upstreams.get(route.upstream)
            if upstream is None:
                raise PolicyError(
                    f"{path}: model {model!r} names unknown upstream {route.upstream!r}"
                )
            routes[model] = Route(
                model,
                route.upstream,
                upstream,
                route.max_instances,
                route.max_elements or route.max_instances * 1024,
                route.row_elements,
            )
        return cls(routes)

    def resolve(self, model: str) -> Route:
        """The route for exactly this name, or 404."""
        route = self._routes.get(model)
        if route is None:
            raise ModelNotFound(reason="model_unknown")
        return route

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._routes)

    def upstreams(self) -> dict[str, Upstream]:
        return {r.upstream_name: r.upstream for r in self._routes.values()}


class AccessPolicy:
    """Deny by default (OWASP API5): a scope grants the models listed for it, nothing more."""

    def __init__(self, grants: Mapping[str, frozenset[str]]) -> None:
        self._grants = dict(grants)

    @classmethod
    def load(cls, path: Path, routes: RouteTable) -> AccessPolicy:
        parsed = load_toml_model(path, _AccessFile, PolicyError)
        known = set(routes.models)
        grants: dict[str, frozenset[str]] = {}
        for scope, models in parsed.scopes.items():
            unknown = sorted(set(models) - known - {WILDCARD})
            if unknown:
                raise PolicyError(f"{path}: scope {scope!r} grants unknown models {unknown}")
            grants[scope] = frozenset(models)
        return cls(grants)

    def allows(self, principal: Principal, model: str) -> bool:
        for scope in principal.scopes:
            granted = self._grants.get(scope)
            if granted is not None and (model in granted or WILDCARD in granted):
                return True
        return False

    def authorize(self, principal: Principal, model: str) -> None:
        if not self.allows(principal, model):
            raise Forbidden(reason="scope_missing")
