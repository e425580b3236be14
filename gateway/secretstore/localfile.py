"""`LocalSecretStore`: the embedded backend, for laptops and tests.

One JSON file, mode 0600, replaced atomically (write a temporary file, fsync, rename) so
a reader never sees half a file and a crash never loses the previous content; the same
model as Key Vault (versions, tags, expiry, enabled).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.secretstore.protocol import SecretStoreError, SecretVersion, utcnow


def _dt(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


class LocalSecretStore:
    """The embedded store: one JSON file beside the other generated state."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._cache: dict[str, list[SecretVersion]] = {}

    # -- reading ---------------------------------------------------------------
    def _load(self) -> dict[str, list[SecretVersion]]:
        """The whole store, re-read only when the file changed since the last read."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._cache = None, {}
            return self._cache
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return self._cache
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SecretStoreError(f"cannot read secret store {self.path}: {exc}") from exc
        try:
            store = self._parse(raw)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SecretStoreError(f"secret store {self.path} is malformed: {exc!r}") from exc
        self._stamp, self._cache = stamp, store
        return store

    @staticmethod
    def _parse(raw: Any) -> dict[str, list[SecretVersion]]:
        store: dict[str, list[SecretVersion]] = {}
        for name, versions in raw.get("secrets", {}).items():
            store[name] = [
                SecretVersion(
                    name=name,
                    version=v["version"],
                    value=v["value"],
                    tags=dict(v.get("tags", {})),
                    enabled=bool(v["enabled"]),
                    created_on=dt.datetime.fromisoformat(v["created_on"]),
                    expires_on=_dt(v.get("expires_on")),
                    not_before=_dt(v.get("not_before")),
                )
                for v in versions
            ]
        return store

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, list[SecretVersion]]]:
        """The store, re-read under an exclusive lock held until the caller's write is done.

        The lock is an `flock` on a sibling file, so two processes (a `scoregate keys`
        command and another, or the gateway making its signing key) never lose each other's
        changes.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._stamp = None  # never trust the cache inside the lock
            yield dict(self._load())
        finally:
            os.close(fd)  # closing releases the lock

    def _save(self, store: dict[str, list[SecretVersion]]) -> None:
        doc: dict[str, Any] = {
            "format": "scoregate-secrets/1",
            "secrets": {
                name: [
                    {
                        "version": v.version,
                        "value": v.value,
                        "tags": dict(v.tags),
                        "enabled": v.enabled,
                        "created_on": v.created_on.isoformat(),
                        "expires_on": _iso(v.expires_on),
                        "not_before": _iso(v.not_before),
                    }
                    for v in versions
                ]
                for name, versions in store.items()
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        # Created 0600: the file holds key digests and, later, signing keys.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps(doc, indent=1, sort_keys=True).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._stamp = None  # force a re-read on the next load

    # -- the SecretStore protocol -----------------------------------------------
    async def list_names(self, prefix: str = "") -> list[str]:
        store = await asyncio.to_thread(self._load)
        return sorted(name for name in store if name.startswith(prefix))

    async def versions(self, name: str) -> list[SecretVersion]:
        store = await asyncio.to_thread(self._load)
        return list(store.get(name, []))

    def _set(
        self, name: str, value: str, tags: Mapping[str, str], expires_on: dt.datetime | None
    ) -> SecretVersion:
        with self._locked() as store:
            version = SecretVersion(
                name=name,
                version=secrets.token_hex(16),  # Key Vault versions are 32 hex characters
                value=value,
                tags=dict(tags),
                enabled=True,
                created_on=utcnow(),
                expires_on=expires_on,
            )
            store[name] = [*store.get(name, []), version]
            self._save(store)
            return version

    def _update(
        self, name: str, version: str, enabled: bool | None, expires_on: dt.datetime | None
    ) -> SecretVersion:
        with self._locked() as store:
            versions = list(store.get(name, []))
            for i, v in enumerate(versions):
                if v.version == version:
                    versions[i] = dataclasses.replace(
                        v,
                        enabled=v.enabled if enabled is None else enabled,
                        expires_on=v.expires_on if expires_on is None else expires_on,
                    )
                    store[name] = versions
                    self._save(store)
                    return versions[i]
        raise SecretStoreError(f"secret {name!r} has no version {version!r}")

    async def set(
        self,
        name: str,
        value: str,
        *,
        tags: Mapping[str, str],
        expires_on: dt.datetime | None = None,
    ) -> SecretVersion:
        return await asyncio.to_thread(self._set, name, value, tags, expires_on)

    async def update(
        self,
        name: str,
        version: str,
        *,
        enabled: bool | None = None,
        expires_on: dt.datetime | None = None,
    ) -> SecretVersion:
        return await asyncio.to_thread(self._update, name, version, enabled, expires_on)

    async def close(self) -> None:
        return None
