"""The secret store the settings name."""

from __future__ import annotations

from gateway.secretstore.localfile import LocalSecretStore
from gateway.secretstore.protocol import SecretStore, SecretStoreError
from gateway.settings import GatewaySettings


def open_store(settings: GatewaySettings) -> SecretStore:
    """The store the settings name: the embedded file, or Key Vault with DefaultAzureCredential."""
    if settings.secret_store == "local":  # noqa: S105 - a backend name
        return LocalSecretStore(settings.store_path)
    if not settings.keyvault_url:
        raise SecretStoreError(
            "SCOREGATE_KEYVAULT_URL is required with SCOREGATE_SECRET_STORE=keyvault"
        )
    from azure.identity.aio import DefaultAzureCredential

    # Imported here: the Azure SDK loads only where Key Vault is the store.
    from gateway.secretstore.keyvault import KeyVaultSecretStore

    return KeyVaultSecretStore(
        settings.keyvault_url,
        DefaultAzureCredential(),
        verify_challenge_resource=settings.keyvault_verify_challenge_resource,
    )
