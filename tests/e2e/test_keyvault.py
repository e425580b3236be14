"""The gateway and `scoregate keys` on Key Vault, end to end through the real Azure SDK.

The gateway process gets its token the way an Azure host gives one: DefaultAzureCredential
reads IDENTITY_ENDPOINT/IDENTITY_HEADER (App Service managed identity) and asks the test
server, then the SDK answers the vault's bearer challenge with it. Only Azure is missing.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.identity import lifecycle
from gateway.secretstore.keyvault import KeyVaultSecretStore
from serving.tls import client_context
from tests.conftest import (
    Stack,
    StaticCredential,
    scoregate,
)
from tests.keyvault_server import IDENTITY_HEADER, KeyVaultServer

pytestmark = pytest.mark.e2e
ROWS = [[5.1, 3.5, 1.4, 0.2]]


def vault_env(vault: KeyVaultServer, ca: Path) -> dict[str, str]:
    return {
        "SCOREGATE_SECRET_STORE": "keyvault",
        "SCOREGATE_KEYVAULT_URL": vault.url,
        # The test vault lives on localhost: its challenge cannot name vault.azure.net.
        "SCOREGATE_KEYVAULT_VERIFY_CHALLENGE_RESOURCE": "false",
        "IDENTITY_ENDPOINT": f"{vault.url}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "SSL_CERT_FILE": str(ca),  # outbound TLS trusts the test CA only
    }


def kv(vault: KeyVaultServer, ca: Path) -> KeyVaultSecretStore:
    return KeyVaultSecretStore(
        vault.url,
        StaticCredential(),  # type: ignore[arg-type]
        verify_challenge_resource=False,
        connection_verify=str(ca),
    )


@pytest.fixture
def kv_gateway(
    vault: KeyVaultServer, stack: Stack, spawn_gateway: Any
) -> tuple[str, dict[str, str]]:
    """A gateway process whose secret store is the test vault, once it is ready."""
    gateway = spawn_gateway(**vault_env(vault, stack.ca))
    return gateway.base_url, {**os.environ, **vault_env(vault, stack.ca)}


def predict(base: str, ca: Path, key: str) -> int:
    with httpx.Client(base_url=base, verify=client_context(ca), timeout=10) as client:
        return client.post(
            "/v1/models/iris:predict", json={"instances": ROWS}, headers={"api-key": key}
        ).status_code


def until(base: str, ca: Path, key: str, status: int, timeout_s: float = 8.0) -> int:
    deadline = time.monotonic() + timeout_s
    got = predict(base, ca, key)
    while got != status and time.monotonic() < deadline:
        time.sleep(0.1)
        got = predict(base, ca, key)
    return got


def test_rotation_and_revocation_on_key_vault_through_the_gateway(
    stack: Stack, vault: KeyVaultServer, kv_gateway: tuple[str, dict[str, str]]
) -> None:
    base, env = kv_gateway
    store = kv(vault, stack.ca)

    async def create() -> lifecycle.IssuedKey:
        try:
            return await lifecycle.create(store, owner="kv-client", scopes=["models:iris"])
        finally:
            await store.close()

    first = asyncio.run(create())
    assert until(base, stack.ca, first.key, 200) == 200  # picked up by the background refresh
    assert vault.state.tokens_issued >= 1  # the gateway's DefaultAzureCredential got its token

    kv_cli = {k: v for k, v in env.items() if k.startswith(("SCOREGATE_", "IDENTITY_", "SSL_"))}
    rotated = scoregate("keys", "rotate", first.generation.key_id, "--overlap", "3s", **kv_cli)
    assert rotated.returncode == 0, rotated.stderr
    second = rotated.stdout.strip()
    assert until(base, stack.ca, second, 200) == 200
    assert [predict(base, stack.ca, k) for k in (first.key, second) * 3] == [200] * 6  # overlap
    assert until(base, stack.ca, first.key, 401) == 401  # after the overlap
    assert predict(base, stack.ca, second) == 200
    listed = scoregate("keys", "list", "--json", **kv_cli)
    assert listed.returncode == 0 and '"state": "active"' in listed.stdout
    assert scoregate("keys", "revoke", first.generation.key_id, **kv_cli).returncode == 0
    assert until(base, stack.ca, second, 401) == 401  # within the refresh interval


def test_key_vault_unreachable_at_start_means_not_ready_and_no_traffic(
    stack: Stack, vault: KeyVaultServer, spawn_gateway: Any
) -> None:
    vault.state.fail_with = 503  # the vault is down when the gateway starts
    base = spawn_gateway(wait=False, **vault_env(vault, stack.ca)).base_url
    try:
        with httpx.Client(base_url=base, verify=client_context(stack.ca), timeout=5) as client:
            deadline = time.monotonic() + 30
            ready = None
            while time.monotonic() < deadline:
                try:
                    ready = client.get("/v2/health/ready")
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            assert ready is not None and ready.status_code == 503
            assert ready.json()["keys_loaded"] is False
            # Public readiness says the store failed, never how (no vault URL, no error text).
            assert ready.json()["keys_last_error"] == (
                "the secret store failed; details in the gateway's logs"
            )
            r = client.post(
                "/v1/models/iris:predict",
                json={"instances": ROWS},
                headers={"api-key": stack.keys.iris},
            )
            assert r.status_code == 401  # no key set: nothing is accepted
            vault.state.fail_with = None  # the vault comes back: the replica becomes ready
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and client.get("/v2/health/ready").status_code != 200:
                time.sleep(0.2)
            assert client.get("/v2/health/ready").status_code == 200
    finally:
        vault.state.fail_with = None


def test_token_mint_refuses_to_run_against_key_vault(vault: KeyVaultServer, stack: Stack) -> None:
    out = scoregate("token", "mint", "--sub", "x", **vault_env(vault, stack.ca))
    assert out.returncode == 2
    assert "embedded local store only" in out.stderr
