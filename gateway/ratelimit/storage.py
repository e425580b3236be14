"""Where counts live: in this process, or in a Redis shared by the replicas.

    SCOREGATE_RATE_LIMIT_STORAGE (URI) + credentials file ─▶ a `limits` async storage

A Redis that requires authentication gets its user name from the settings and its
password from a file (on AKS, the CSI driver's mount of a Key Vault secret): a password
in the URI would sit in an environment variable, which process listings, crash reports
and `kubectl describe` show (OWASP ASVS 13.3.1; CWE-526).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from limits.aio.storage import Storage
from limits.storage import storage_from_string

from gateway.ratelimit.memory import LocalCounters
from gateway.ratelimit.policy import RateLimitPolicyError

# A storage call slower than this counts as a failure: the limiter must not become the
# slowest part of the request path when Redis is in trouble.
STORAGE_TIMEOUT_S = 0.25
MEMORY_URIS = ("memory://", "async+memory://")


@dataclass(frozen=True)
class StorageCredentials:
    """An ACL user (or None: Redis's default user) and its password."""

    username: str | None
    password: str = field(repr=False)

    @classmethod
    def load(cls, username: str | None, password_file: Path | None) -> StorageCredentials | None:
        if password_file is None:
            if username is not None:
                raise RateLimitPolicyError(
                    "a rate-limit storage user needs its password file "
                    "(SCOREGATE_RATE_LIMIT_STORAGE_PASSWORD_FILE)"
                )
            return None
        try:
            text = password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise RateLimitPolicyError(
                f"the rate-limit storage password file {password_file} cannot be read: "
                f"{exc.strerror}"
            ) from None
        # A secret mounted from Key Vault has no trailing newline; one written by hand
        # often does, and is no part of the password.
        password = text.removesuffix("\n").removesuffix("\r")
        if not password or "\n" in password:
            raise RateLimitPolicyError(
                f"the rate-limit storage password file {password_file} must hold one line"
            )
        return cls(username, password)


def open_storage(
    uri: str, memory_max_keys: int | None, credentials: StorageCredentials | None = None
) -> Storage:
    if uri in MEMORY_URIS:
        if credentials is not None:
            raise RateLimitPolicyError(
                "rate-limit storage credentials are set, but the storage is this process's "
                f"memory ({uri}): set SCOREGATE_RATE_LIMIT_STORAGE to the Redis they are for"
            )
        # In process: our counters, whose cost per request does not grow with the number
        # of callers (limits' own memory storage walks every key after each hit).
        return LocalCounters(max_keys=memory_max_keys)
    if urlsplit(uri).password is not None:
        raise RateLimitPolicyError(
            "the rate-limit storage URI carries a password: put it in a file and name the "
            "file in SCOREGATE_RATE_LIMIT_STORAGE_PASSWORD_FILE"
        )
    options: dict[str, float | str | bool] = {}
    if uri.startswith("async+redis"):
        options = {"connect_timeout": STORAGE_TIMEOUT_S, "stream_timeout": STORAGE_TIMEOUT_S}
        if credentials is not None:
            options["password"] = credentials.password
            if credentials.username is not None:
                options["username"] = credentials.username
    elif credentials is not None:
        raise RateLimitPolicyError(f"rate-limit storage {uri!r} takes no credentials")
    storage = storage_from_string(uri, **options)
    if not isinstance(storage, Storage):
        raise RateLimitPolicyError(
            f"rate-limit storage {uri!r} is not an async storage (use async+redis://)"
        )
    return storage
