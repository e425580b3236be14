"""Hand a new API key to its consumer's Key Vault secret, so no human ever sees it.

`scoregate keys rotate KEY --deliver-to https://<vault>.vault.azure.net/secrets/<name>`
writes the key as a new version of that secret (the consumer reads the newest version)
instead of printing it. Only metadata comes back: the secret's id and version.

The target is checked strictly before any key is made: an https URL naming a Key Vault
host (a vault name as Azure allows it, under a Key Vault DNS suffix) and the path
``/secrets/<name>``, nothing else: no port, user, version, query or fragment, so a typo or
a crafted URL cannot send a key anywhere but a vault (OWASP Secrets Management cheat
sheet: secrets travel only to the secret store). The SDK's bearer challenge is verified
against the vault's host, as in production.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError

from gateway.identity.lifecycle import IssuedKey

CONTENT_TYPE = "application/vnd.scoregate.api-key"
# Azure's Key Vault DNS suffixes: public cloud, Azure China, Azure US Government.
VAULT_SUFFIXES = ("vault.azure.net", "vault.azure.cn", "vault.usgovcloudapi.net")
# Vault names: 3-24 characters, letters, digits and hyphens, starting with a letter, ending
# with a letter or digit, no two hyphens in a row (Azure's naming rules for Key Vault).
_VAULT_NAME = re.compile(r"(?=[a-z0-9-]{3,24}\Z)[a-z](?:[a-z0-9]|-(?!-))*[a-z0-9]")
# Secret names: 1-127 letters, digits and hyphens (Key Vault object names).
_TARGET = re.compile(
    r"https://(?P<host>[A-Za-z0-9.-]{1,253})/secrets/(?P<name>[0-9A-Za-z-]{1,127})",
)
# A delivery is bounded as a whole: a hung vault must fail the job, which then revokes
# the undelivered generation, rather than hold it for the SDK's default minutes.
DELIVERY_TIMEOUT_S = 60.0


class DeliveryTargetError(ValueError):
    """The --deliver-to URL is not a Key Vault secret URL."""


class DeliveryError(Exception):
    """The vault could not be reached or refused the new version; never holds the key."""


@dataclass(frozen=True)
class DeliveryTarget:
    vault_url: str  # https://<vault>.vault.azure.net
    name: str  # the secret's name

    @property
    def url(self) -> str:
        return f"{self.vault_url}/secrets/{self.name}"


@dataclass(frozen=True)
class Delivered:
    """Where the key went: the target and the secret version that holds it."""

    url: str
    secret_id: str
    secret_version: str


def parse_target(text: str) -> DeliveryTarget:
    """``https://<vault>.vault.azure.net/secrets/<name>`` → the vault's URL and the name."""
    match = _TARGET.fullmatch(text)
    hint = "expected https://<vault>.vault.azure.net/secrets/<name>"
    if match is None:
        raise DeliveryTargetError(f"not a Key Vault secret URL: {text!r}; {hint}")
    host = match["host"].lower()
    vault, _, suffix = host.partition(".")
    if suffix not in VAULT_SUFFIXES:
        raise DeliveryTargetError(
            f"{host!r} is not a Key Vault host (under {', '.join(VAULT_SUFFIXES)}); {hint}"
        )
    if not _VAULT_NAME.fullmatch(vault):
        raise DeliveryTargetError(f"{vault!r} is not a valid Key Vault name; {hint}")
    return DeliveryTarget(f"https://{host}", match["name"])


class KeyVaultDelivery:
    """Writes a key as a new version of one secret; call it with the `IssuedKey`."""

    def __init__(
        self, target: DeliveryTarget, credential: AsyncTokenCredential, **client_options: Any
    ) -> None:
        from azure.keyvault.secrets.aio import SecretClient

        self.target = target
        self._credential = credential
        self._client = SecretClient(
            target.vault_url,
            credential,
            connection_timeout=10,
            read_timeout=30,
            retry_total=3,
            retry_backoff_factor=0.5,
            **client_options,
        )

    async def __call__(self, issued: IssuedKey) -> Delivered:
        generation = issued.generation
        try:
            async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                secret = await self._client.set_secret(
                    self.target.name,
                    issued.key,
                    content_type=CONTENT_TYPE,
                    tags={
                        "scoregate-key-id": generation.key_id,
                        "scoregate-generation": generation.version,
                    },
                    expires_on=generation.expires_on,
                )
        except TimeoutError as exc:
            raise DeliveryError(
                f"Key Vault {self.target.vault_url}: no answer in {DELIVERY_TIMEOUT_S:.0f} s"
            ) from exc
        except AzureError as exc:
            raise DeliveryError(f"Key Vault {self.target.url}: {_reason(exc)}") from exc
        return Delivered(
            url=self.target.url,
            secret_id=str(secret.id),
            secret_version=str(secret.properties.version),
        )

    async def close(self) -> None:
        await self._client.close()
        await self._credential.close()


def _reason(exc: AzureError) -> str:
    """One line: the status and the vault's error code and message (never the request's
    body, so never the key), or the transport's error."""
    if isinstance(exc, HttpResponseError):
        error = exc.error
        detail = f" {error.code}: {error.message}" if error is not None else ""
        return " ".join(f"HTTP {exc.status_code}{detail}".split())
    return " ".join(str(exc.message or type(exc).__name__).split())


def open_delivery(target: DeliveryTarget) -> KeyVaultDelivery:
    """The delivery with ``DefaultAzureCredential`` (workload identity in the CronJob)."""
    from azure.identity.aio import DefaultAzureCredential

    return KeyVaultDelivery(target, DefaultAzureCredential())
