"""`scoregate keys rotate --deliver-to`: a rotation no human sees, end to end.

The command runs as a scheduled job would: its own process, DefaultAzureCredential (the
managed-identity endpoint of the Key Vault stand-in), the Azure SDK writing to
``https://consumer.vault.azure.net/secrets/…`` through a CONNECT proxy that tunnels that
host to a second stand-in whose certificate names it (tests/vault_proxy.py). The delivered
secret is read back through the SDK and scores a request through the running gateway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.secrets import KeyVaultSecret
from azure.keyvault.secrets.aio import SecretClient

from certs.authority import CertPaths, issue
from gateway.identity import apikeys
from gateway.identity.delivery import CONTENT_TYPE
from gateway.secretstore.protocol import utcnow
from tests.conftest import API_KEY_PATTERN, Stack, StaticCredential, free_port, scoregate
from tests.e2e.test_keyvault import kv, kv_gateway, vault_env
from tests.e2e.test_keyvault import until as kv_until
from tests.keyvault_server import IDENTITY_HEADER, KeyVaultServer
from tests.vault_proxy import ConnectProxy

pytestmark = pytest.mark.e2e
__all__ = ["kv_gateway"]  # a fixture: a gateway whose secret store is the Key Vault stand-in
CONSUMER = "consumer.vault.azure.net"
ROWS = [[5.1, 3.5, 1.4, 0.2]]


@pytest.fixture(scope="module")
def consumer_vault(pki: CertPaths) -> Iterator[KeyVaultServer]:
    """The consumer's vault: a stand-in whose certificate names the real vault host."""
    issue(pki, "consumer-vault", server_names=(CONSUMER, "localhost"), force=True)
    server = KeyVaultServer(
        str(pki.cert("consumer-vault")), str(pki.key("consumer-vault")), free_port()
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(consumer_vault: KeyVaultServer) -> Iterator[ConnectProxy]:
    server = ConnectProxy({f"{CONSUMER}:443": consumer_vault.port})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def job_env(
    vault: KeyVaultServer, consumer_vault: KeyVaultServer, proxy: ConnectProxy, stack: Stack
) -> Iterator[dict[str, str]]:
    """The rotation job's environment: a managed identity (the session stand-in hands out
    its token), the test CA, and the proxy for Key Vault hosts."""
    consumer_vault.state.secrets.clear()
    proxy.connects.clear()
    yield {
        **proxy.env(),
        "SSL_CERT_FILE": str(stack.ca),
        "IDENTITY_ENDPOINT": f"{vault.url}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
    }
    proxy.on_connect = None
    consumer_vault.state.fail_with = None
    vault.state.fail_with = None


def predict(stack: Stack, key: str) -> int:
    with stack.client() as client:
        return client.post(
            "/v1/models/iris:predict", json={"instances": ROWS}, headers={"api-key": key}
        ).status_code


def until(stack: Stack, key: str, status: int, timeout_s: float = 5.0) -> int:
    deadline = time.monotonic() + timeout_s
    got = predict(stack, key)
    while got != status and time.monotonic() < deadline:
        time.sleep(0.1)
        got = predict(stack, key)
    return got


async def read_back(vault: KeyVaultServer, ca: Path, name: str) -> KeyVaultSecret:
    client = SecretClient(
        vault.url,
        StaticCredential(),  # type: ignore[arg-type]
        verify_challenge_resource=False,
        connection_verify=str(ca),
    )
    async with client:
        return await client.get_secret(name)


def create(state: Path | None = None, **env: str) -> dict[str, Any]:
    out = scoregate(
        "keys",
        "create",
        "--owner",
        "rotated-client",
        "--scope",
        "models:iris",
        "--expires",
        "30d",
        "--json",
        state=state,
        **env,
    )
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def listed(state: Path | None = None, **env: str) -> dict[str, dict[str, Any]]:
    out = scoregate("keys", "list", "--json", state=state, **env)
    assert out.returncode == 0, out.stderr
    return {row["version"]: row for row in map(json.loads, out.stdout.splitlines())}


def test_rotate_delivers_the_key_to_the_consumers_vault_and_it_scores(
    stack: Stack, consumer_vault: KeyVaultServer, proxy: ConnectProxy, job_env: dict[str, str]
) -> None:
    first = create(stack.state)
    assert until(stack, first["key"], 200) == 200
    url = f"https://{CONSUMER}/secrets/iris-client-key"
    out = scoregate(
        "keys",
        "rotate",
        first["key_id"],
        "--deliver-to",
        url,
        "--overlap",
        "1h",
        "--json",
        state=stack.state,
        **job_env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert not API_KEY_PATTERN.search((out.stdout + out.stderr).encode())  # nobody sees it
    doc = json.loads(out.stdout)
    assert (doc["key_id"], doc["state"], doc["delivered_to"]) == (first["key_id"], "active", url)
    assert doc["version"] != first["version"]
    assert doc["secret_id"] == f"{url}/{doc['secret_version']}"
    assert proxy.connects == [f"{CONSUMER}:443"]  # the SDK went to the vault's real name

    secret = asyncio.run(read_back(consumer_vault, stack.ca, "iris-client-key"))
    assert secret.properties.version == doc["secret_version"]
    assert secret.properties.content_type == CONTENT_TYPE
    assert secret.properties.tags == {
        "scoregate-key-id": first["key_id"],
        "scoregate-generation": doc["version"],
    }
    expires = dt.datetime.fromisoformat(doc["expires_on"])
    assert secret.properties.expires_on == expires.replace(microsecond=0)
    # The rotated generation keeps the key's 30-day lifetime, counted from the rotation.
    assert abs((expires - utcnow()) - dt.timedelta(days=30)) < dt.timedelta(minutes=1)
    delivered = secret.value or ""
    parsed = apikeys.parse(delivered)
    assert parsed is not None and parsed.key_id == first["key_id"]
    assert delivered != first["key"]

    assert until(stack, delivered, 200) == 200  # the consumer scores with what it received
    assert predict(stack, first["key"]) == 200  # the previous generation, during the overlap
    (previous,) = doc["previous"]
    assert previous["version"] == first["version"]
    ends = dt.datetime.fromisoformat(previous["expires_on"]) - utcnow()
    assert dt.timedelta(minutes=59) < ends <= dt.timedelta(hours=1)
    rows = listed(stack.state)
    assert rows[doc["version"]]["state"] == rows[first["version"]]["state"] == "active"


def test_a_failed_delivery_revokes_the_new_generation_and_leaves_the_old_untouched(
    stack: Stack, consumer_vault: KeyVaultServer, job_env: dict[str, str]
) -> None:
    first = create(stack.state)
    consumer_vault.state.fail_with = 403  # the job's identity may not write that secret
    out = scoregate(
        "keys",
        "rotate",
        first["key_id"],
        "--deliver-to",
        f"https://{CONSUMER}/secrets/iris-client-key",
        "--overlap",
        "5s",
        "--json",
        state=stack.state,
        **job_env,
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert not API_KEY_PATTERN.search((out.stdout + out.stderr).encode())
    doc = json.loads(out.stdout)
    assert (doc["code"], doc["revoked"], doc["key_id"]) == (
        "delivery_failed",
        True,
        first["key_id"],
    )
    assert "403" in doc["error"] and "was revoked" in doc["error"]
    rows = listed(stack.state)
    assert rows[doc["version"]]["state"] == "revoked"  # valid for nobody
    # The previous generation was not cut to the overlap: it keeps its own expiry.
    assert rows[first["version"]]["expires_on"] == first["expires_on"]
    assert rows[first["version"]]["state"] == "active"
    assert until(stack, first["key"], 200) == 200
    assert consumer_vault.state.secrets == {}


def test_a_failed_delivery_whose_revocation_fails_too_says_so_with_exit_4(
    stack: Stack,
    vault: KeyVaultServer,
    consumer_vault: KeyVaultServer,
    proxy: ConnectProxy,
    job_env: dict[str, str],
) -> None:
    """The gateway's keys in Key Vault, which fails the moment the delivery starts: the new
    generation cannot be revoked, and the job says which version to revoke."""
    env = {**vault_env(vault, stack.ca), **job_env}
    first = create(**env)
    consumer_vault.state.fail_with = 403

    def keys_vault_fails(target: str) -> None:
        vault.state.fail_with = 403

    proxy.on_connect = keys_vault_fails
    out = scoregate(
        "keys",
        "rotate",
        first["key_id"],
        "--deliver-to",
        f"https://{CONSUMER}/secrets/iris-client-key",
        "--json",
        **env,
    )
    vault.state.fail_with = None
    assert out.returncode == 4, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert (doc["code"], doc["revoked"]) == ("undelivered_key_left_valid", False)
    command = f"scoregate keys revoke {first['key_id']} --version {doc['version']}"
    assert command in doc["error"] and "VALID" in out.stderr

    async def states() -> dict[str, bool]:
        store = kv(vault, stack.ca)
        try:
            return {v.version: v.enabled for v in await store.versions(f"apikey-{first['key_id']}")}
        finally:
            await store.close()

    assert asyncio.run(states()) == {first["version"]: True, doc["version"]: True}
    revoke = scoregate(*command.split()[1:], "--json", **env)
    assert revoke.returncode == 0, revoke.stderr
    assert json.loads(revoke.stdout)["state"] == "revoked"
    assert asyncio.run(states()) == {first["version"]: True, doc["version"]: False}


@pytest.mark.parametrize(
    "url",
    [
        "http://consumer.vault.azure.net/secrets/k",
        "https://consumer.vault.azure.net.evil.example/secrets/k",
        "https://consumer.vault.azure.net/secrets/k/0123456789abcdef",
    ],
)  # every rule: tests/gateway/identity/test_delivery.py
def test_an_invalid_delivery_url_is_exit_2_before_anything_changes(
    tmp_path: Path, url: str
) -> None:
    first = create(tmp_path)
    out = scoregate(
        "keys", "rotate", first["key_id"], "--deliver-to", url, "--json", state=tmp_path
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert json.loads(out.stdout)["code"] == "invalid_delivery_target"
    assert list(listed(tmp_path)) == [first["version"]]  # no generation was made


def test_the_cronjobs_shape_keys_in_key_vault_delivered_to_another_vault(
    stack: Stack,
    vault: KeyVaultServer,
    consumer_vault: KeyVaultServer,
    kv_gateway: tuple[str, dict[str, str]],
    job_env: dict[str, str],
) -> None:
    """The gateway's keys in its Key Vault, the consumer's secret in its own vault."""
    base, _ = kv_gateway
    env = {**vault_env(vault, stack.ca), **job_env}
    first = create(**env)
    out = scoregate(
        "keys",
        "rotate",
        first["key_id"],
        "--deliver-to",
        f"https://{CONSUMER}/secrets/iris-client-key",
        "--overlap",
        "1h",
        "--json",
        **env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    secret = asyncio.run(read_back(consumer_vault, stack.ca, "iris-client-key"))
    assert secret.properties.tags["scoregate-generation"] == doc["version"]
    assert vault.state.secrets[f"apikey-{first['key_id']}"][-1].version == doc["version"]
    assert kv_until(base, stack.ca, secret.value or "", 200) == 200
    assert kv_until(base, stack.ca, first["key"], 200) == 200  # the overlap
