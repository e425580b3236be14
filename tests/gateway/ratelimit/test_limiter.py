"""The limiter suite, run against every storage: memory and a real Redis."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.errors import RateLimited, Unavailable
from gateway.identity.principal import Principal
from gateway.ratelimit.addresses import address_key
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.policy import RateLimitPolicy, RateLimitPolicyError
from tests.conftest import ROOT, SYSTEM_REDIS, RedisServer, free_port

STORAGES = ["memory://", SYSTEM_REDIS]


def principal(subject: str | None = None) -> Principal:
    return Principal(
        subject=subject or f"p-{secrets.token_hex(6)}", credential="api_key", scopes=frozenset()
    )


def policy(**defaults: str) -> RateLimitPolicy:
    base = {
        "per_principal": "",
        "per_address": "",
        "failed_auth_per_address": "",
        "per_principal_model": "",
    }
    return RateLimitPolicy.model_validate({"defaults": {**base, **defaults}})


@pytest.fixture(params=STORAGES, ids=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def limiters() -> AsyncIterator[list[Limiter]]:
    made: list[Limiter] = []
    yield made
    for limiter in made:
        await limiter.close()


@pytest.fixture
def make(limiters: list[Limiter]) -> Callable[..., Limiter]:
    def build(limits: RateLimitPolicy, uri: str, on_failure: str = "closed") -> Limiter:
        limiter = Limiter(limits, uri, on_failure)  # type: ignore[arg-type]
        limiters.append(limiter)
        return limiter

    return build


async def test_principal_limit_gives_429_with_retry_after_and_ratelimit_headers(
    storage: str, make: Callable[..., Limiter]
) -> None:
    limiter = make(policy(per_principal="5/minute"), storage, "closed")
    who = principal()
    for _ in range(5):
        await limiter.check_principal(who, "iris", 1)
    with pytest.raises(RateLimited) as excinfo:
        await limiter.check_principal(who, "iris", 1)
    error = excinfo.value
    assert (error.status, error.code, error.reason) == (429, "rate_limited", "rate_limit_principal")
    retry = int(error.headers["Retry-After"])
    assert 1 <= retry <= 60
    assert error.headers["RateLimit-Policy"] == '"principal";q=5;w=60'
    assert error.headers["RateLimit"] == f'"principal";r=0;t={retry}'
    await limiter.check_principal(principal(), "iris", 1)  # another principal is not affected


async def test_cost_is_the_number_of_instances(storage: str, make: Callable[..., Limiter]) -> None:
    limiter = make(policy(per_principal="10/minute"), storage, "closed")
    who = principal()
    await limiter.check_principal(who, "iris", 4)
    await limiter.check_principal(who, "iris", 4)
    with pytest.raises(RateLimited):
        await limiter.check_principal(who, "iris", 4)  # 12 > 10
    await limiter.check_principal(who, "iris", 2)  # exactly 10 still fits


@pytest.mark.parametrize("strategy", ["sliding-window-counter", "moving-window", "fixed-window"])
async def test_every_strategy_enforces_the_limit(
    storage: str, strategy: str, make: Callable[..., Limiter]
) -> None:
    limits = RateLimitPolicy.model_validate(
        {
            "strategy": strategy,
            "defaults": {
                "per_principal": "3/minute",
                "per_address": "",
                "failed_auth_per_address": "",
            },
        }
    )
    limiter = make(limits, storage, "closed")
    who = principal()
    for _ in range(3):
        await limiter.check_principal(who, "iris", 1)
    with pytest.raises(RateLimited):
        await limiter.check_principal(who, "iris", 1)


async def test_overrides_per_principal_and_per_model(
    storage: str, make: Callable[..., Limiter]
) -> None:
    who, other = principal(), principal()
    limits = RateLimitPolicy.model_validate(
        {
            "defaults": {
                "per_principal": "2/minute",
                "per_address": "",
                "failed_auth_per_address": "",
            },
            "overrides": [
                {"principal": who.subject, "limits": "100/minute"},
                {
                    "principal": who.subject,
                    "model": "iris",
                    "limits": "3/minute",
                    "strategy": "moving-window",
                },
            ],
        }
    )
    limiter = make(limits, storage, "closed")
    for _ in range(3):
        await limiter.check_principal(who, "iris", 1)
    with pytest.raises(RateLimited) as excinfo:
        await limiter.check_principal(who, "iris", 1)
    assert excinfo.value.reason == "rate_limit_principal-model"
    for _ in range(5):
        await limiter.check_principal(who, "wine", 1)  # other models: the principal's 100/minute
    for _ in range(2):
        await limiter.check_principal(other, "iris", 1)
    with pytest.raises(RateLimited):
        await limiter.check_principal(other, "iris", 1)  # the default for everyone else


async def test_address_limit_and_failed_authentication_block(
    storage: str, make: Callable[..., Limiter]
) -> None:
    limiter = make(
        policy(per_address="5/minute", failed_auth_per_address="2/minute"), storage, "closed"
    )
    address = f"10.0.{secrets.randbelow(250)}.{secrets.randbelow(250)}-{secrets.token_hex(3)}"
    await limiter.check_address(address)
    await limiter.failed_authentication(address)
    await limiter.check_address(address)
    await limiter.failed_authentication(address)
    with pytest.raises(RateLimited) as excinfo:
        await limiter.check_address(address)  # two failures: the address is blocked
    assert excinfo.value.reason == "rate_limit_failed-auth"
    other = f"{address}-other"
    for _ in range(5):
        await limiter.check_address(other)
    with pytest.raises(RateLimited) as excinfo:
        await limiter.check_address(other)
    assert excinfo.value.reason == "rate_limit_address"


async def test_ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4(
    storage: str, make: Callable[..., Limiter]
) -> None:
    limiter = make(
        policy(per_address="3/hour", failed_auth_per_address="2/hour"), storage, "closed"
    )  # hours: no sliding-window boundary falls between the hits
    third = secrets.randbelow(65535)
    prefix, neighbour = f"2001:db8:{third:x}:1", f"2001:db8:{third:x}:2"
    for host in ("::1", "::2", ":a:b:c:d"):  # three addresses of one /64: one count
        await limiter.check_address(f"{prefix}{host}")
    with pytest.raises(RateLimited) as excinfo:
        await limiter.check_address(f"{prefix}::ffff")
    assert excinfo.value.reason == "rate_limit_address"
    await limiter.check_address(f"{neighbour}::1")  # the next /64 is someone else
    # Failed authentications from rotating addresses block the whole /64.
    await limiter.failed_authentication(f"{neighbour}::2")
    await limiter.failed_authentication(f"{neighbour}:0:0:0:3")
    with pytest.raises(RateLimited) as excinfo:
        await limiter.check_address(f"{neighbour}::4")
    assert excinfo.value.reason == "rate_limit_failed-auth"
    v4 = str(ipaddress.IPv4Address(0xC6120000 + secrets.randbelow(1 << 17)))  # 198.18.0.0/15
    for _ in range(3):
        await limiter.check_address(v4)
    with pytest.raises(RateLimited):
        await limiter.check_address(f"::ffff:{v4}")  # the same IPv4 caller, mapped


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2::5", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("64:ff9b::192.0.2.1", "192.0.2.1"),  # NAT64: IPv4 clients stay apart
        ("2002:c000:201:7::1", "192.0.2.1"),  # 6to4: one IPv4 owner, one caller
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),  # Teredo: the client
        ("[2001:db8:1:2::9]:443", "2001:db8:1:2::/64"),  # a port a proxy wrote
        ("192.0.2.1:5678", "192.0.2.1"),
        ("a:b", "raw:a:b"),
        (":80", "raw::80"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),
        ("not:an:address", "raw:not:an:address"),
        ("2001:db8::/64", "raw:2001:db8::/64"),  # cannot pass for a /64's key
    ],
)
def test_address_key(address: str, key: str) -> None:
    assert address_key(address) == key


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"defaults": {"per_principal": "100/fortnight"}}, "invalid limit"),
        ({"defaults": {"per_principal": "lots"}}, "invalid limit"),
        ({"strategy": "token-bucket"}, "strategy"),
        (
            {"overrides": [{"principal": "a", "model": "nosuch", "limits": "1/second"}]},
            "unknown model",
        ),
        ({"overrides": [{"principal": "a", "limits": ""}]}, "needs a limit"),
        ({"defaults": {"per_princpal": "1/second"}}, "Extra inputs"),
    ],
)
def test_policy_file_errors_are_clear(
    tmp_path: Path, document: dict[str, object], message: str
) -> None:
    import tomllib  # noqa: F401 - the file is TOML; written here by hand

    def toml(value: object) -> str:
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        return f'"{value}"'

    path = tmp_path / "ratelimits.toml"
    path.write_text("\n".join(f"{k} = {toml(v)}" for k, v in document.items()) + "\n")
    with pytest.raises(RateLimitPolicyError, match=message):
        RateLimitPolicy.load(path, ("iris",))


def test_shipped_policy_loads() -> None:
    root = ROOT
    loaded = RateLimitPolicy.load(root / "policies" / "ratelimits.toml", ("iris",))
    assert loaded.strategy == "sliding-window-counter"
    assert loaded.defaults.failed_auth_per_address == "10/minute;50/hour"


# -- the storage-failure policy --------------------------------------------------------
DEAD_REDIS = "async+redis://127.0.0.1:{port}"


async def test_unreachable_redis_falls_back_to_memory_limits(make: Callable[..., Limiter]) -> None:
    limiter = make(policy(per_principal="3/minute"), DEAD_REDIS.format(port=free_port()), "memory")
    who = principal()
    for _ in range(3):
        await limiter.check_principal(who, "iris", 1)
    assert limiter.state == "memory-fallback"
    with pytest.raises(RateLimited):
        await limiter.check_principal(who, "iris", 1)  # still limited, by this replica alone


async def test_unreachable_redis_with_closed_policy_is_503_not_500(
    make: Callable[..., Limiter],
) -> None:
    limiter = make(policy(per_principal="3/minute"), DEAD_REDIS.format(port=free_port()), "closed")
    with pytest.raises(Unavailable) as excinfo:
        await limiter.check_principal(principal(), "iris", 1)
    assert (excinfo.value.status, excinfo.value.reason) == (503, "ratelimit_storage_down")
    assert limiter.state == "closed"


async def test_unreachable_redis_with_open_policy_admits(make: Callable[..., Limiter]) -> None:
    limiter = make(policy(per_principal="1/minute"), DEAD_REDIS.format(port=free_port()), "open")
    who = principal()
    for _ in range(5):
        await limiter.check_principal(who, "iris", 1)
    assert limiter.state == "open"


async def test_redis_stopped_and_restarted_mid_run(
    tmp_path: Path, make: Callable[..., Limiter]
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        limiter = make(policy(per_principal="1000/minute"), server.uri, "memory")
        who = principal()
        await limiter.check_principal(who, "iris", 1)
        assert limiter.state == "shared"
        server.stop()
        await limiter.check_principal(who, "iris", 1)  # no exception: the fallback answers
        assert limiter.state == "memory-fallback"
        server.start()
        for _ in range(50):
            await asyncio.sleep(0.1)
            if limiter.state == "shared":
                break
        assert limiter.state == "shared"
        await limiter.check_principal(who, "iris", 1)
    finally:
        server.stop()


async def test_a_hanging_redis_times_out_into_the_fallback(make: Callable[..., Limiter]) -> None:
    # A server that accepts connections and never answers: the 0.25 s storage timeout,
    # not the client's own, decides, and the request goes on with the fallback.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        limiter = make(
            policy(per_principal="3/minute"), f"async+redis://127.0.0.1:{port}", "memory"
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        await limiter.check_principal(principal(), "iris", 1)
        elapsed = loop.time() - started
        assert limiter.state == "memory-fallback"
        assert elapsed < 2.0  # two attempts of at most STORAGE_TIMEOUT_S each, plus slack
    finally:
        server.close()
        await server.wait_closed()


async def test_jwt_principals_are_counted_per_issuer_and_subject(
    make: Callable[..., Limiter],
) -> None:
    limiter = make(policy(per_principal="2/minute"), "memory://", "closed")
    name = f"p-{secrets.token_hex(6)}"
    key_owner = Principal(subject=name, credential="api_key", scopes=frozenset())
    token_a = Principal(subject=name, credential="jwt", scopes=frozenset(), issuer="https://a")
    token_b = Principal(subject=name, credential="jwt", scopes=frozenset(), issuer="https://b")
    for who in (key_owner, token_a, token_b):  # same name, three different callers
        await limiter.check_principal(who, "iris", 2)
    with pytest.raises(RateLimited):
        await limiter.check_principal(token_a, "iris", 1)


async def test_the_failed_authentication_block_map_is_capped_like_the_counters() -> None:
    """Before: one entry per failing address for twice the longest window (two hours with
    the shipped policy), however many addresses: memory grew with the flood."""
    limits = policy(failed_auth_per_address="5/hour")
    limiter = Limiter(limits, "memory://", "closed", memory_max_keys=1_000)
    try:
        for i in range(5_000):
            await limiter.failed_authentication(f"198.18.{i // 250}.{i % 250}")
        assert len(limiter._failed_until) <= 1_000
        # The newest stay: an address failing right now is still counted and blocked.
        for _ in range(5):
            await limiter.failed_authentication("203.0.113.9")
        with pytest.raises(RateLimited):
            await limiter.check_address("203.0.113.9")
    finally:
        await limiter.close()


async def test_reconnecting_to_a_restarted_redis_leaves_no_coroutine_unawaited(
    own_redis: RedisServer, recwarn: pytest.WarningsRecorder
) -> None:
    limiter = Limiter(policy(per_principal="1000/minute"), own_redis.uri, "memory")
    who = principal()
    try:
        await limiter.check_principal(who, "iris", 1)
        own_redis.stop()
        own_redis.start()  # same port: pooled connections all predate it
        await limiter.check_principal(who, "iris", 1)
        assert limiter.state == "shared"
    finally:
        await limiter.close()
    import gc

    gc.collect()
    assert not [w for w in recwarn if "was never awaited" in str(w.message)]
