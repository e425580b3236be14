"""Azure Key Vault as the secret store, through the async Azure SDK.

The same model as the local store: a secret per API-key client whose versions are the key
generations (value: digest; tags: scopes, owner; ``expires_on``; ``enabled``), JWT
verification keys as ``jwtkey-<kid>`` secrets, the audit signing key as a secret. On AKS
the credential is ``DefaultAzureCredential``, i.e. workload identity.

Azure errors are mapped at this boundary to `SecretStoreError`, so callers keep the last
good key set when the vault is unreachable or throttling.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.keyvault.secrets.aio import SecretClient

from gateway.secretstore.protocol import SecretStoreError, SecretVersion


def _version(name: str, props: Any, value: str) -> SecretVersion:
    return SecretVersion(
        name=name,
        version=str(props.version),
        value=value,
        tags=dict(props.tags or {}),
        enabled=bool(props.enabled),
        created_on=props.created_on or dt.datetime.now(dt.UTC),
        expires_on=props.expires_on,
        not_before=props.not_before,
    )


class KeyVaultSecretStore:
    """`SecretStore` over one vault. ``verify_challenge_resource`` stays True in production;
    tests against a vault-compatible server on localhost turn it off, since its challenge
    cannot name a vault.azure.net resource."""

    def __init__(
        self,
        vault_url: str,
        credential: AsyncTokenCredential,
        *,
        verify_challenge_resource: bool = True,
        **client_options: Any,
    ) -> None:
        self._credential = credential
        # A version's value never changes in Key Vault, so values read while a version was
        # enabled stay valid after it is disabled (when the vault refuses to return it),
        # and each value is fetched once, not on every refresh.
        self._values: dict[tuple[str, str], str] = {}
        self._client = SecretClient(
            vault_url,
            credential,
            verify_challenge_resource=verify_challenge_resource,
            **client_options,
        )

    async def list_names(self, prefix: str = "") -> list[str]:
        try:
            return sorted(
                [
                    p.name
                    async for p in self._client.list_properties_of_secrets()
                    if p.name and p.name.startswith(prefix)
                ]
            )
        except AzureError as exc:
            raise SecretStoreError(f"Key Vault: {type(exc).__name__}: {exc}") from exc

    async def versions(self, name: str) -> list[SecretVersion]:
        out = []
        try:
            async for props in self._client.list_properties_of_secret_versions(name):
                cache_key = (name, str(props.version))
                value = self._values.get(cache_key)
                if value is None and props.enabled:  # a disabled version's value reads 403
                    value = (await self._client.get_secret(name, props.version)).value or ""
                    self._values[cache_key] = value
                out.append(_version(name, props, value or ""))
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise SecretStoreError(f"Key Vault: {type(exc).__name__}: {exc}") from exc
        return sorted(out, key=lambda v: v.created_on)

    async def set(
        self,
        name: str,
        value: str,
        *,
        tags: Mapping[str, str],
        expires_on: dt.datetime | None = None,
    ) -> SecretVersion:
        try:
            secret = await self._client.set_secret(
                name, value, tags=dict(tags), expires_on=expires_on
            )
        except AzureError as exc:
            raise SecretStoreError(f"Key Vault: {type(exc).__name__}: {exc}") from exc
        self._values[(name, str(secret.properties.version))] = secret.value or ""
        return _version(name, secret.properties, secret.value or "")

    async def update(
        self,
        name: str,
        version: str,
        *,
        enabled: bool | None = None,
        expires_on: dt.datetime | None = None,
    ) -> SecretVersion:
        try:
            props = await self._client.update_secret_properties(
                name, version, enabled=enabled, expires_on=expires_on
            )
        except HttpResponseError as exc:
            raise SecretStoreError(
                f"Key Vault: secret {name!r} version {version!r}: {exc.message}"
            ) from exc
        except AzureError as exc:
            raise SecretStoreError(f"Key Vault: {type(exc).__name__}: {exc}") from exc
        return _version(name, props, self._values.get((name, version), ""))

    async def close(self) -> None:
        await self._client.close()
        await self._credential.close()
