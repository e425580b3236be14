"""API key administration on any `SecretStore`: what `scoregate keys …` runs.

A client is one secret (``apikey-<key id>``); ``create`` makes its first generation and
``rotate`` adds a generation while the old one stays valid for an overlap, so there is no
moment without a valid key. ``revoke`` disables generations (Key Vault: ``enabled=false``).

``rotate`` can hand the new key to a ``deliver`` callable (the consumer's Key Vault, see
`gateway.identity.delivery`) instead of to the operator: the previous generations are cut
to the overlap only once it is delivered, and a generation that could not be delivered is
revoked at once, so no valid key exists that nobody holds.

    KeyAdminError                the operation cannot proceed as asked
     ├── InvalidKeyRequest       a bad argument (owner, scope, duration)
     ├── KeyNotFound             no such key id or version
     ├── NoActiveGeneration      nothing to rotate
     └── DeliveryFailed          delivery failed after the new generation was made
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.identity import apikeys
from gateway.identity.keyring import SECRET_PREFIX, KeyGeneration, secret_name
from gateway.secretstore.protocol import SecretStore, SecretStoreError, SecretVersion, utcnow

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SCOPE = re.compile(r"[A-Za-z0-9:._*-]{1,64}")
_OWNER = re.compile(r"[A-Za-z0-9@:._-]{1,64}")
T = TypeVar("T")


class KeyAdminError(Exception):
    """A key operation that cannot proceed; the message is for the operator."""

    code = "key_operation_refused"


class InvalidKeyRequest(KeyAdminError):
    code = "invalid_argument"


class KeyNotFound(KeyAdminError):
    code = "key_not_found"


class NoActiveGeneration(KeyAdminError):
    code = "no_active_generation"


class DeliveryFailed(KeyAdminError):
    """Delivery failed after the new generation was written.

    ``revoked`` says whether that generation was disabled again (the previous ones are then
    untouched and still valid as before). When it is False the store refused the revocation
    too: a valid key exists that nobody holds, and the operator must revoke ``version``.
    """

    code = "delivery_failed"

    def __init__(self, message: str, *, key_id: str, version: str, revoked: bool) -> None:
        super().__init__(message)
        self.key_id = key_id
        self.version = version
        self.revoked = revoked


def parse_duration(text: str) -> dt.timedelta:
    """``90d``, ``12h``, ``1h30m``: a positive duration."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise InvalidKeyRequest(f"invalid duration {text!r}; use e.g. 90d, 12h, 1h30m")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise InvalidKeyRequest("duration must be positive")
    return dt.timedelta(seconds=seconds)


@dataclass(frozen=True, repr=False)
class IssuedKey:
    key: str  # shown once, never stored
    generation: KeyGeneration

    def __repr__(self) -> str:
        return f"IssuedKey(key_id={self.generation.key_id!r}, version={self.generation.version!r})"


def _tags(owner: str, scopes: list[str]) -> dict[str, str]:
    if not _OWNER.fullmatch(owner):
        raise InvalidKeyRequest(f"invalid owner {owner!r}")
    bad = [s for s in scopes if not _SCOPE.fullmatch(s)]
    if bad or not scopes:
        raise InvalidKeyRequest(f"give at least one valid scope (got {scopes})")
    return {"owner": owner, "scopes": " ".join(sorted(set(scopes)))}


async def create(
    store: SecretStore, *, owner: str, scopes: list[str], expires_in: dt.timedelta | None = None
) -> IssuedKey:
    key_id = apikeys.new_key_id()
    key = apikeys.new_key(key_id)
    expires_on = utcnow() + expires_in if expires_in else None
    version = await store.set(
        secret_name(key_id), apikeys.digest(key), tags=_tags(owner, scopes), expires_on=expires_on
    )
    return IssuedKey(key, KeyGeneration.from_secret(key_id, version))


@dataclass(frozen=True)
class Rotation:
    """A rotation's outcome: the new generation and the previous ones, cut to the overlap."""

    issued: IssuedKey
    previous: tuple[KeyGeneration, ...]


def _key_id(key_id: str) -> str:
    if not apikeys.KEY_ID_PATTERN.fullmatch(key_id):
        raise InvalidKeyRequest(f"invalid key id {key_id!r} (16 characters a-z, 2-7)")
    return key_id


async def _new_generation(
    store: SecretStore, key_id: str, expires_in: dt.timedelta | None
) -> tuple[IssuedKey, list[SecretVersion]]:
    """Write a new generation beside the usable ones (returned too), which stay as they are.

    Its lifetime is ``expires_in``, else the newest generation's own lifetime: a key made
    for 90 days gets 90 days from each rotation, so a scheduled rotation never runs into
    the first generation's end.
    """
    name = secret_name(_key_id(key_id))
    now = utcnow()
    versions = await store.versions(name)
    if not versions:
        raise KeyNotFound(f"no key with id {key_id!r}")
    current = [v for v in versions if v.usable(now)]
    if not current:
        raise NoActiveGeneration(f"key {key_id!r} has no active generation to rotate")
    newest = current[-1]
    if expires_in is None and newest.expires_on is not None:
        expires_in = newest.expires_on - newest.created_on
    key = apikeys.new_key(key_id)
    version = await store.set(
        name,
        apikeys.digest(key),
        tags=dict(newest.tags),
        expires_on=now + expires_in if expires_in else None,
    )
    return IssuedKey(key, KeyGeneration.from_secret(key_id, version)), current


async def _cut_to_overlap(
    store: SecretStore, key_id: str, current: list[SecretVersion], overlap: dt.timedelta
) -> tuple[KeyGeneration, ...]:
    ends = utcnow() + overlap
    cut = []
    for old in current:
        if old.expires_on is None or old.expires_on > ends:
            old = await store.update(old.name, old.version, expires_on=ends)
        cut.append(KeyGeneration.from_secret(key_id, old))
    return tuple(cut)


async def rotate(
    store: SecretStore,
    key_id: str,
    *,
    overlap: dt.timedelta,
    expires_in: dt.timedelta | None = None,
) -> Rotation:
    """A new generation of ``key_id``; the current ones stay valid for ``overlap`` only.

    The new generation is written first, so at every moment some generation is valid.
    """
    issued, current = await _new_generation(store, key_id, expires_in)
    return Rotation(issued, await _cut_to_overlap(store, key_id, current, overlap))


async def rotate_and_deliver(
    store: SecretStore,
    key_id: str,
    deliver: Callable[[IssuedKey], Awaitable[T]],
    *,
    overlap: dt.timedelta,
    expires_in: dt.timedelta | None = None,
) -> tuple[Rotation, T]:
    """`rotate`, handing the new key to ``deliver`` before the previous generations are cut.

    When delivery fails the new generation is revoked at once (nobody holds it, so it must
    not stay valid: OWASP Secrets Management cheat sheet, "secrets lifecycle") and the
    previous generations are left exactly as they were, so the consumer keeps working and
    the job can simply run again. `DeliveryFailed` says whether the revocation held.
    """
    issued, current = await _new_generation(store, key_id, expires_in)
    version = issued.generation.version
    try:
        receipt = await deliver(issued)
    except Exception as exc:
        try:
            await store.update(secret_name(key_id), version, enabled=False)
        except (SecretStoreError, OSError) as revoke_exc:
            raise DeliveryFailed(
                f"delivery failed ({exc}); revoking the undelivered generation {version} "
                f"failed too ({revoke_exc}): it is VALID and nobody holds it; revoke it now "
                f"with `scoregate keys revoke {key_id} --version {version}`",
                key_id=key_id,
                version=version,
                revoked=False,
            ) from exc
        raise DeliveryFailed(
            f"delivery failed ({exc}); the new generation {version} was revoked and the "
            "previous generations are unchanged",
            key_id=key_id,
            version=version,
            revoked=True,
        ) from exc
    return Rotation(issued, await _cut_to_overlap(store, key_id, current, overlap)), receipt


async def list_keys(store: SecretStore) -> list[KeyGeneration]:
    generations: list[KeyGeneration] = []
    for name in await store.list_names(SECRET_PREFIX):
        key_id = name.removeprefix(SECRET_PREFIX)
        generations.extend(KeyGeneration.from_secret(key_id, v) for v in await store.versions(name))
    return generations


async def revoke(
    store: SecretStore, key_id: str, version: str | None = None
) -> list[KeyGeneration]:
    """Disable one generation, or every generation of the key when no version is given."""
    versions = await store.versions(secret_name(_key_id(key_id)))
    if not versions:
        raise KeyNotFound(f"no key with id {key_id!r}")
    targets = [v for v in versions if version is None or v.version == version]
    if not targets:
        raise KeyNotFound(f"key {key_id!r} has no version {version!r}")
    revoked = []
    for v in targets:
        if v.enabled:
            v = await store.update(v.name, v.version, enabled=False)
        revoked.append(KeyGeneration.from_secret(key_id, v))
    return revoked


def describe(generation: KeyGeneration, now: dt.datetime | None = None) -> dict[str, Any]:
    """A generation as `keys list --json` prints it (stable member names; never a digest)."""
    return {
        "key_id": generation.key_id,
        "version": generation.version,
        "owner": generation.owner,
        "scopes": sorted(generation.scopes),
        "state": generation.state(now or utcnow()),
        "expires_on": generation.expires_on.isoformat() if generation.expires_on else None,
    }
