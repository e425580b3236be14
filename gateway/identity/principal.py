"""Who is calling: the result of authentication, immutable for the rest of the request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    credential: Literal["api_key", "jwt"]
    scopes: frozenset[str]
    key_id: str | None = None
    key_version: str | None = None
    issuer: str | None = None
    tenant: str | None = None
