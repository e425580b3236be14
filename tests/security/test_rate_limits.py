"""Rate limits (OWASP API4, API6) and brute force, against real gateway processes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SYSTEM_REDIS, RedisServer, Stack, new_key, write_ratelimits

pytestmark = pytest.mark.e2e
ROWS = [[5.1, 3.5, 1.4, 0.2]]


def predict(gateway: Any, key: str, **headers: str) -> Any:
    with gateway.client() as client:
        return client.post(
            "/v1/models/iris:predict", json={"instances": ROWS}, headers={"api-key": key, **headers}
        )


def test_over_the_limit_is_429_with_retry_after_and_ratelimit_headers(
    stack: Stack, spawn_gateway: Any, tmp_path: Path
) -> None:
    # Keys first: a gateway loads every key before it reports ready.
    key, owner = asyncio.run(new_key(stack.state / "secrets.json"))
    gateway = spawn_gateway(write_ratelimits(tmp_path / "rl.toml", per_principal="3/minute"))
    statuses = [predict(gateway, key).status_code for _ in range(3)]
    limited = predict(gateway, key)
    assert statuses == [200, 200, 200]
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    retry = int(limited.headers["retry-after"])
    assert 1 <= retry <= 60
    assert limited.headers["ratelimit-policy"] == '"principal";q=3;w=60'
    assert limited.headers["ratelimit"] == f'"principal";r=0;t={retry}'
    records = gateway.records_of(owner, 4)
    assert [r["status"] for r in records] == [200, 200, 200, 429]
    assert (records[-1]["decision"], records[-1]["reason"]) == ("deny", "rate_limit_principal")
    assert records[-1]["limiter"] == "memory"


def test_cost_is_the_number_of_instances_in_the_request(
    stack: Stack, spawn_gateway: Any, tmp_path: Path
) -> None:
    # Keys first: a gateway loads every key before it reports ready.
    key, _ = asyncio.run(new_key(stack.state / "secrets.json"))
    gateway = spawn_gateway(write_ratelimits(tmp_path / "rl.toml", per_principal="10/minute"))
    with gateway.client() as client:
        big = client.post(
            "/v1/models/iris:predict", json={"instances": ROWS * 8}, headers={"api-key": key}
        )
        small = client.post(
            "/v1/models/iris:predict", json={"instances": ROWS * 3}, headers={"api-key": key}
        )
    assert (big.status_code, small.status_code) == (200, 429)


def test_two_replicas_sharing_redis_enforce_one_global_limit(
    stack: Stack, spawn_gateway: Any, tmp_path: Path
) -> None:
    limits = write_ratelimits(tmp_path / "rl.toml", per_principal="20/minute")
    # Keys first: a gateway loads every key before it reports ready.
    key, owner = asyncio.run(new_key(stack.state / "secrets.json"))
    replicas = [spawn_gateway(limits, SCOREGATE_RATE_LIMIT_STORAGE=SYSTEM_REDIS) for _ in range(2)]
    statuses = [predict(replicas[i % 2], key).status_code for i in range(40)]
    # One limit's worth in all, not one per replica.
    assert statuses.count(200) == 20
    assert statuses.count(429) == 20
    records = [g.records_of(owner, 20) for g in replicas]  # 40 requests, 20 per replica
    served = [sum(r["status"] == 200 for r in rs) for rs in records]
    assert sum(served) == 20 and all(n > 0 for n in served)
    assert all(r["limiter"] == "shared" for rs in records for r in rs)


def test_redis_unreachable_follows_the_documented_fallback_never_500(
    stack: Stack, spawn_gateway: Any, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        # Keys first: a gateway loads every key before it reports ready.
        key, owner = asyncio.run(new_key(stack.state / "secrets.json"))
        gateway = spawn_gateway(
            write_ratelimits(tmp_path / "rl.toml", per_principal="1000/minute"),
            SCOREGATE_RATE_LIMIT_STORAGE=redis.uri,
        )
        assert predict(gateway, key).status_code == 200
        redis.stop()  # Redis goes away mid-run
        during = [predict(gateway, key).status_code for _ in range(10)]
        assert during == [200] * 10  # memory fallback: served, never a 500
        with gateway.client() as client:
            ready = client.get("/v2/health/ready").json()
        assert ready["rate_limit_storage"] == "memory-fallback"
        redis.start()  # and comes back on the same port
        deadline = time.monotonic() + 10
        state = "memory-fallback"
        while time.monotonic() < deadline and state != "shared":
            time.sleep(0.2)
            with gateway.client() as client:
                state = client.get("/v2/health/ready").json()["rate_limit_storage"]
        assert state == "shared"  # back on the shared counts without a restart
        assert predict(gateway, key).status_code == 200
        limiters = [r["limiter"] for r in gateway.records_of(owner, 12)]
        assert limiters[0] == "shared" and limiters[-1] == "shared"
        assert limiters[1:11] == ["memory-fallback"] * 10  # every degraded decision is audited
    finally:
        redis.stop()


def test_redis_unreachable_with_the_closed_policy_is_503(
    stack: Stack, spawn_gateway: Any, tmp_path: Path
) -> None:
    from tests.conftest import free_port

    # Keys first: a gateway loads every key before it reports ready.
    key, _ = asyncio.run(new_key(stack.state / "secrets.json"))
    gateway = spawn_gateway(
        write_ratelimits(tmp_path / "rl.toml", per_principal="1000/minute"),
        SCOREGATE_RATE_LIMIT_STORAGE=f"async+redis://127.0.0.1:{free_port()}",
        SCOREGATE_RATE_LIMIT_ON_STORAGE_FAILURE="closed",
        SCOREGATE_KEY_MAX_STALENESS_S="300",
    )
    r = predict(gateway, key)
    assert (r.status_code, r.json()["code"]) == (503, "unavailable")


def test_limits_are_keyed_by_principal_never_by_client_headers(
    stack: Stack, spawn_gateway: Any, tmp_path: Path
) -> None:
    # Keys first: a gateway loads every key before it reports ready.
    key, _ = asyncio.run(new_key(stack.state / "secrets.json"))
    other, _ = asyncio.run(new_key(stack.state / "secrets.json"))
    gateway = spawn_gateway(write_ratelimits(tmp_path / "rl.toml", per_principal="3/minute"))
    statuses = [
        predict(
            gateway,
            key,
            **{
                "x-forwarded-for": f"203.0.113.{i}",
                "x-request-id": f"spoofed-id-{i:04d}",
                "user-agent": f"ua{i}",
            },
        ).status_code
        for i in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]
    assert predict(gateway, other).status_code == 200  # another principal has its own count


def test_ipv6_address_rotation_within_one_64_cannot_evade_the_brute_force_limit(
    stack: Stack, spawn_gateway: Any, tmp_path: Path
) -> None:
    # One IPv6 host may use every address of its /64: each guess from a fresh one.
    gateway = spawn_gateway(
        write_ratelimits(
            tmp_path / "rl.toml", failed_auth_per_address="3/hour", per_address="1000/hour"
        ),  # hours: no sliding-window boundary falls between the guesses
        SCOREGATE_TRUSTED_PROXY_HOPS="1",  # the address comes from our proxy's header
    )
    attacker = "2001:db8:7:7"
    guesses = [
        predict(gateway, f"sg_guess_{i}", **{"x-forwarded-for": f"{attacker}::{i + 1:x}"})
        for i in range(4)
    ]
    assert [g.status_code for g in guesses] == [401, 401, 401, 429]
    assert guesses[-1].json()["code"] == "rate_limited"
    neighbour = predict(gateway, "sg_guess", **{"x-forwarded-for": "2001:db8:7:8::1"})
    assert neighbour.status_code == 401  # another /64 is another caller
    deadline = time.monotonic() + 5
    clients: list[str] = []
    while len(clients) < 5 and time.monotonic() < deadline:
        clients = [r["client"] for r in gateway.audit_records() if r.get("route") == "predict"]
        time.sleep(0.05)
    assert clients[3] == f"{attacker}::4"  # the audit keeps the address itself


def test_brute_force_failed_authentications_have_their_own_stricter_limit(
    stack: Stack, spawn_gateway: Any, tmp_path: Path
) -> None:
    # Keys first: a gateway loads every key before it reports ready.
    key, _ = asyncio.run(new_key(stack.state / "secrets.json"))
    gateway = spawn_gateway(
        write_ratelimits(
            tmp_path / "rl.toml", failed_auth_per_address="5/minute", per_address="1000/minute"
        )
    )
    guesses = [predict(gateway, "sg_" + "a" * 16 + f"_{i}").status_code for i in range(5)]
    assert guesses == [401] * 5
    blocked = predict(gateway, "sg_guess")
    assert blocked.status_code == 429
    assert blocked.json()["code"] == "rate_limited"
    # The address is blocked before any credential is looked at, even a valid one.
    assert predict(gateway, key).status_code == 429
    deadline = time.monotonic() + 5
    reasons: list[str] = []
    while len(reasons) < 7 and time.monotonic() < deadline:
        reasons = [r["reason"] for r in gateway.audit_records() if r.get("route") == "predict"]
        time.sleep(0.05)
    assert reasons[-2:] == ["rate_limit_failed-auth", "rate_limit_failed-auth"]
