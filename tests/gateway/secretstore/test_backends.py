"""One suite, both secret stores: the embedded file and Key Vault through the real Azure SDK
(talking HTTPS to the Key Vault-compatible server in tests/keyvault_server.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.authority import CertPaths
from gateway.errors import Unauthenticated
from gateway.identity import lifecycle
from gateway.identity.apikeys import authenticate
from gateway.identity.keyring import KeyRing
from gateway.identity.tokens import IssuerConfig, JWTValidator
from gateway.secretstore.keyvault import KeyVaultSecretStore
from gateway.secretstore.localfile import LocalSecretStore
from gateway.secretstore.protocol import SecretStore, SecretStoreError, utcnow
from tests.conftest import StaticCredential
from tests.keyvault_server import KeyVaultServer


@pytest.fixture
async def kv_store(vault: KeyVaultServer, pki: CertPaths) -> AsyncIterator[KeyVaultSecretStore]:
    vault.state.secrets.clear()
    vault.state.fail_with = None
    kv = KeyVaultSecretStore(
        vault.url,
        StaticCredential(),  # type: ignore[arg-type]
        verify_challenge_resource=False,
        connection_verify=str(pki.ca_cert),  # trusts only the test CA
        retry_total=0,
    )
    yield kv
    await kv.close()


@pytest.fixture(params=["local", "keyvault"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, kv_store: KeyVaultSecretStore
) -> AsyncIterator[SecretStore]:
    yield LocalSecretStore(tmp_path / "secrets.json") if request.param == "local" else kv_store


async def test_versions_tags_expiry_and_updates(store: SecretStore) -> None:
    v1 = await store.set("apikey-a", "sha256:1", tags={"owner": "o", "scopes": "s"})
    expires = (utcnow() + dt.timedelta(hours=1)).replace(microsecond=0)
    v2 = await store.set("apikey-a", "sha256:2", tags={"owner": "o"}, expires_on=expires)
    versions = await store.versions("apikey-a")
    assert [v.version for v in versions] == [v1.version, v2.version]
    assert [v.value for v in versions] == ["sha256:1", "sha256:2"]
    assert versions[0].tags == {"owner": "o", "scopes": "s"}
    assert versions[1].expires_on == expires
    await store.update("apikey-a", v1.version, enabled=False)
    assert [v.enabled for v in await store.versions("apikey-a")] == [False, True]
    assert await store.list_names("apikey-") == ["apikey-a"]
    assert await store.versions("apikey-missing") == []


async def test_rotation_overlap_then_revocation(store: SecretStore) -> None:
    ring = KeyRing(store, refresh_interval_s=60)
    first = await lifecycle.create(store, owner="client", scopes=["models:iris"])
    await ring.refresh()
    assert authenticate(first.key, ring, utcnow()).subject == "client"
    rotation = await lifecycle.rotate(
        store, first.generation.key_id, overlap=dt.timedelta(seconds=2)
    )
    second = rotation.issued
    await ring.refresh()
    # During the overlap both generations are accepted.
    assert authenticate(first.key, ring, utcnow()).key_version == first.generation.version
    assert authenticate(second.key, ring, utcnow()).key_version == second.generation.version
    # After it, only the new one.
    later = utcnow() + dt.timedelta(seconds=3)
    with pytest.raises(Unauthenticated) as excinfo:
        authenticate(first.key, ring, later)
    assert excinfo.value.reason == "api_key_expired"
    assert authenticate(second.key, ring, later).subject == "client"
    await lifecycle.revoke(store, first.generation.key_id)
    await ring.refresh()
    with pytest.raises(Unauthenticated) as excinfo:
        authenticate(second.key, ring, utcnow())
    assert excinfo.value.reason == "api_key_revoked"


async def test_the_sdk_answers_the_bearer_challenge(
    vault: KeyVaultServer, kv_store: KeyVaultSecretStore
) -> None:
    from azure.keyvault.secrets._shared import http_challenge_cache

    http_challenge_cache.clear()  # the SDK remembers a vault's challenge per process
    before = vault.state.unauthenticated
    await kv_store.set("x", "v", tags={})
    # A fresh client asks without a token, gets the 401 challenge, then sends the token.
    assert vault.state.unauthenticated == before + 1
    assert vault.state.secrets["x"][0].value == "v"


@pytest.mark.parametrize("status", [503, 429])
async def test_vault_down_or_throttling_keeps_the_last_good_keys(
    vault: KeyVaultServer, kv_store: KeyVaultSecretStore, status: int
) -> None:
    store = kv_store
    issued = await lifecycle.create(store, owner="c", scopes=["models:iris"])
    ring = KeyRing(store, refresh_interval_s=0.05)
    await ring.refresh()
    refresher = asyncio.create_task(ring.run())
    try:
        vault.state.fail_with = status  # the vault goes away or throttles after start
        await asyncio.sleep(0.3)
        assert ring.last_error is not None
        assert authenticate(issued.key, ring, utcnow()).subject == "c"  # still served
        with pytest.raises(SecretStoreError):
            await store.list_names()
        vault.state.fail_with = None  # it comes back: changes are picked up
        await lifecycle.revoke(store, issued.generation.key_id)
        # The refresh backs off while failing: give it time to come back. A refresh
        # that began before the revoke may finish after it and clear last_error
        # with the old set, so wait for the outcome itself, not for that flag.
        refused: str | None = None
        for _ in range(100):
            await asyncio.sleep(0.05)
            try:
                authenticate(issued.key, ring, utcnow())
            except Unauthenticated as exc:
                refused = exc.reason
                break
        assert refused == "api_key_revoked", "the revocation was not picked up"
        assert ring.last_error is None
    finally:
        vault.state.fail_with = None
        refresher.cancel()


async def test_refresh_backs_off_while_the_vault_throttles(
    vault: KeyVaultServer, kv_store: KeyVaultSecretStore
) -> None:
    ring = KeyRing(kv_store, refresh_interval_s=0.05)
    await ring.refresh()
    refresher = asyncio.create_task(ring.run())
    try:
        vault.state.fail_with = 429
        before = vault.state.requests
        await asyncio.sleep(1.0)
        # Without back-off, 1 s at 0.05 s would be ~20 refreshes; doubling gives about 4.
        assert vault.state.requests - before <= 6
    finally:
        vault.state.fail_with = None
        refresher.cancel()


def _es256_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def _token(key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "scoregate", "sub": "alice", "iat": now, "exp": now + 300}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


ISSUER = "https://scoregate.test/issuer"


async def test_a_jwt_key_replaced_or_disabled_under_the_same_kid_is_refused_after_one_refresh(
    store: SecretStore,
) -> None:
    # Key compromise (RFC 8725 §3.1): a key replaced under the same kid, or its newest
    # version disabled, must stop verifying at the next refresh, cached verdicts included.
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    tags = {"alg": "ES256", "issuer": ISSUER}
    await store.set("jwtkey-k1", _es256_pem(old), tags=tags)
    validator = JWTValidator([IssuerConfig("t", ISSUER, "scoregate", frozenset({"ES256"}))])
    ring = KeyRing(store, refresh_interval_s=60, on_jwt_keys=validator.set_keys)
    await ring.refresh()
    signed_by_old = _token(old, "k1")
    assert validator.authenticate(signed_by_old).subject == "alice"  # verified, and cached
    await store.set("jwtkey-k1", _es256_pem(new), tags=tags)  # the same kid, another key
    await ring.refresh()
    with pytest.raises(Unauthenticated):
        validator.authenticate(signed_by_old)
    signed_by_new = _token(new, "k1")
    assert validator.authenticate(signed_by_new).subject == "alice"
    newest = (await store.versions("jwtkey-k1"))[-1]
    await store.update("jwtkey-k1", newest.version, enabled=False)
    await ring.refresh()
    with pytest.raises(Unauthenticated):
        validator.authenticate(signed_by_new)
