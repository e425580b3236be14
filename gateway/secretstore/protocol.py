"""The secret store seam, shaped like Azure Key Vault secrets.

A secret has a name and versions; each version has a value, tags, ``enabled`` and
optional ``not_before``/``expires_on``. API key generations are versions of one secret per
client (value: the key digest; tags: scopes, owner), so rotation and revocation are the
same operations on a laptop and on Key Vault.

    SecretStore (this Protocol)
     ├── LocalSecretStore     gateway.secretstore.localfile  (the embedded file)
     └── KeyVaultSecretStore  gateway.secretstore.keyvault   (Azure Key Vault)
    open_store(settings)      gateway.secretstore.factory    (the one the settings name)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class SecretVersion:
    name: str
    version: str
    value: str = field(repr=False)
    tags: Mapping[str, str]
    enabled: bool
    created_on: dt.datetime
    expires_on: dt.datetime | None = None
    not_before: dt.datetime | None = None

    def usable(self, now: dt.datetime) -> bool:
        """Enabled and inside its validity window."""
        if not self.enabled:
            return False
        if self.expires_on is not None and now >= self.expires_on:
            return False
        return not (self.not_before is not None and now < self.not_before)


class SecretStore(Protocol):
    """What the gateway and the `scoregate keys` commands need from a secret store."""

    async def list_names(self, prefix: str = "") -> list[str]: ...

    async def versions(self, name: str) -> list[SecretVersion]:
        """All versions of a secret, oldest first; empty when it does not exist."""
        ...

    async def set(
        self,
        name: str,
        value: str,
        *,
        tags: Mapping[str, str],
        expires_on: dt.datetime | None = None,
    ) -> SecretVersion: ...

    async def update(
        self,
        name: str,
        version: str,
        *,
        enabled: bool | None = None,
        expires_on: dt.datetime | None = None,
    ) -> SecretVersion: ...

    async def close(self) -> None: ...


class SecretStoreError(Exception):
    """The store is unreachable, unreadable or refused the operation."""
