"""The key ring: the gateway's in-memory view of the keys in the secret store.

API key generations, and JWT verification keys held as ``jwtkey-<kid>`` secrets (JWKS
keys are fetched by `gateway.identity.jwks` instead).

Each client is one secret named ``apikey-<key id>``; each of its versions is a key
generation (value: digest; tags: ``scopes``, ``owner``). The gateway never asks the store
on the request path: a background task rebuilds this index every
``key_refresh_interval_s`` and keeps the last good one when the store fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.identity.tokens import ASYMMETRIC, VerificationKey, load_public_key
from gateway.secretstore.protocol import SecretStore, SecretVersion, utcnow

log = logging.getLogger("gateway.keys")
_MAX_BACKOFF_S = 60.0
SECRET_PREFIX = "apikey-"  # noqa: S105 - a name prefix, not a secret
JWT_KEY_PREFIX = "jwtkey-"


def _spki(key: Any) -> bytes:
    """A public key's DER SubjectPublicKeyInfo: equal exactly when the keys are."""
    der: bytes = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der


def secret_name(key_id: str) -> str:
    return f"{SECRET_PREFIX}{key_id}"


def verification_key(kid: str, version: SecretVersion) -> VerificationKey | None:
    """The key a `jwtkey-<kid>` secret version holds, or None when unusable or malformed."""
    if not version.usable(utcnow()):
        return None
    alg, issuer = version.tags.get("alg", ""), version.tags.get("issuer", "")
    if alg not in ASYMMETRIC or not issuer:
        return None
    try:
        key = load_public_key(version.value)
    except ValueError:
        return None
    return VerificationKey(kid=kid, issuer=issuer, algorithm=alg, key=key)


async def load_verification_keys(store: SecretStore) -> dict[str, VerificationKey]:
    keys = {}
    for name in await store.list_names(JWT_KEY_PREFIX):
        kid = name.removeprefix(JWT_KEY_PREFIX)
        for version in reversed(await store.versions(name)):  # the newest usable version
            key = verification_key(kid, version)
            if key is not None:
                keys[kid] = key
                break
    return keys


@dataclass(frozen=True)
class KeyGeneration:
    key_id: str
    version: str
    digest: str
    owner: str
    scopes: frozenset[str]
    enabled: bool
    expires_on: dt.datetime | None
    not_before: dt.datetime | None

    @classmethod
    def from_secret(cls, key_id: str, secret: SecretVersion) -> KeyGeneration:
        return cls(
            key_id=key_id,
            version=secret.version,
            digest=secret.value,
            owner=secret.tags.get("owner", ""),
            scopes=frozenset(secret.tags.get("scopes", "").split()),
            enabled=secret.enabled,
            expires_on=secret.expires_on,
            not_before=secret.not_before,
        )

    def state(self, now: dt.datetime) -> str:
        """``active``, ``revoked`` (disabled), ``expired`` or ``pending`` (not yet valid)."""
        if not self.enabled:
            return "revoked"
        if self.expires_on is not None and now >= self.expires_on:
            return "expired"
        if self.not_before is not None and now < self.not_before:
            return "pending"
        return "active"


class KeyRing:
    """key id → generations, swapped whole on each refresh (readers never see a half-built map)."""

    def __init__(
        self,
        store: SecretStore,
        *,
        refresh_interval_s: float,
        on_jwt_keys: Callable[[dict[str, VerificationKey]], None] | None = None,
    ) -> None:
        self._store = store
        self._interval = refresh_interval_s
        self._keys: Mapping[str, tuple[KeyGeneration, ...]] = {}
        self._on_jwt_keys = on_jwt_keys
        self._jwt_fingerprint: tuple[tuple[str, str, str, bytes], ...] | None = None
        self.loaded = False
        self.last_refresh_monotonic: float | None = None
        self.last_error: str | None = None

    def generations(self, key_id: str) -> tuple[KeyGeneration, ...]:
        return self._keys.get(key_id, ())

    async def refresh(self) -> None:
        keys: dict[str, tuple[KeyGeneration, ...]] = {}
        for name in await self._store.list_names(SECRET_PREFIX):
            key_id = name.removeprefix(SECRET_PREFIX)
            versions = await self._store.versions(name)
            keys[key_id] = tuple(KeyGeneration.from_secret(key_id, v) for v in versions)
        if self._on_jwt_keys is not None:
            jwt_keys = await load_verification_keys(self._store)
            # The key material is part of what changes: a key replaced or disabled under the
            # same kid (after a compromise, RFC 8725 §3.1) must stop verifying at once, and
            # the swap drops every verdict cached under the old key.
            fingerprint = tuple(
                sorted((k.kid, k.issuer, k.algorithm, _spki(k.key)) for k in jwt_keys.values())
            )
            if fingerprint != self._jwt_fingerprint:  # swap only on change: keeps the cache warm
                self._on_jwt_keys(jwt_keys)
                self._jwt_fingerprint = fingerprint
        self._keys = keys
        self.loaded = True
        self.last_refresh_monotonic = time.monotonic()
        self.last_error = None

    def staleness_s(self) -> float | None:
        if self.last_refresh_monotonic is None:
            return None
        return time.monotonic() - self.last_refresh_monotonic

    async def run(self) -> None:
        """Refresh forever; on failure keep the last good set and say so in readiness.

        After a failure (the vault down, or throttling with 429) the next try waits twice
        as long, up to a minute, so a struggling vault is not hammered.
        """
        failures = 0
        while True:
            await asyncio.sleep(min(self._interval * 2**failures, _MAX_BACKOFF_S))
            try:
                await self.refresh()
                failures = 0
            except Exception as exc:  # a store fault or a malformed entry: never stop refreshing
                failures = min(failures + 1, 10)
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("key refresh failed, keeping the last good set: %s", self.last_error)
