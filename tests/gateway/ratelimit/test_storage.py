"""A Redis that requires authentication: the limiter's credentials, from a file only."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import RateLimited
from gateway.identity.principal import Principal
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.policy import RateLimitPolicy, RateLimitPolicyError
from gateway.ratelimit.storage import StorageCredentials, open_storage
from tests.conftest import RedisServer

PASSWORD = secrets.token_hex(16)
# As k8s/base/redis.yaml configures it: no default user, one user for the limiter.
GRANTS = "-@all +@read +@write +@scripting +ping -@dangerous"
ACL = f"""user default off resetpass -@all
user gateway on >{PASSWORD} resetchannels ~LIMITS:* {GRANTS}
"""
POLICY = RateLimitPolicy.model_validate(
    {
        "defaults": {
            "per_principal": "2/minute",
            "per_address": "",
            "failed_auth_per_address": "",
            "per_principal_model": "",
        }
    }
)


@pytest.fixture
def auth_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, config=ACL)
    server.start()
    yield server
    server.stop()


def password_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "redis-password"
    path.write_text(text)
    return path


def who() -> Principal:
    return Principal(subject=f"s-{secrets.token_hex(4)}", credential="api_key", scopes=frozenset())


async def test_the_limiter_counts_in_a_redis_that_requires_a_password(
    auth_redis: RedisServer, tmp_path: Path
) -> None:
    # A file written by hand ends in a newline; it is no part of the password.
    credentials = StorageCredentials.load("gateway", password_file(tmp_path, PASSWORD + "\n"))
    limiter = Limiter(POLICY, auth_redis.uri, "closed", credentials=credentials)
    caller = who()
    try:
        for _ in range(2):
            await limiter.check_principal(caller, "iris", 1)
        with pytest.raises(RateLimited):
            await limiter.check_principal(caller, "iris", 1)
        assert limiter.state == "shared"
    finally:
        await limiter.close()


@pytest.mark.parametrize("password", [None, "wrong"], ids=["no-credentials", "wrong-password"])
async def test_refused_credentials_follow_the_storage_failure_policy_never_a_500(
    auth_redis: RedisServer, tmp_path: Path, password: str | None
) -> None:
    credentials = (
        None
        if password is None
        else StorageCredentials.load("gateway", password_file(tmp_path, password))
    )
    limiter = Limiter(POLICY, auth_redis.uri, "memory", credentials=credentials)
    try:
        await limiter.check_principal(who(), "iris", 1)  # counted in memory instead
        assert limiter.state == "memory-fallback"
    finally:
        await limiter.close()


def test_a_password_in_the_storage_uri_is_refused() -> None:
    """CWE-526: the URI is an environment variable, which process listings show."""
    with pytest.raises(RateLimitPolicyError, match="carries a password"):
        open_storage("async+redis://:hunter2@redis:6379", None)
    with pytest.raises(RateLimitPolicyError, match="carries a password"):
        open_storage("async+redis://gateway:hunter2@redis:6379", None)


def test_credentials_need_their_file_and_a_redis_to_be_for(tmp_path: Path) -> None:
    with pytest.raises(RateLimitPolicyError, match="needs its password file"):
        StorageCredentials.load("gateway", None)
    with pytest.raises(RateLimitPolicyError, match="cannot be read"):
        StorageCredentials.load("gateway", tmp_path / "missing")
    for text in ("", "\n", "two\nlines"):
        with pytest.raises(RateLimitPolicyError, match="one line"):
            StorageCredentials.load(None, password_file(tmp_path, text))
    assert StorageCredentials.load(None, None) is None
    credentials = StorageCredentials.load(None, password_file(tmp_path, "s3cret"))
    assert credentials is not None and "s3cret" not in repr(credentials)
    with pytest.raises(RateLimitPolicyError, match="this process's memory"):
        open_storage("memory://", None, credentials)
