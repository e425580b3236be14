"""Rate limits with the `limits` library (OWASP API4: unrestricted resource consumption).

    policies/ratelimits.toml ─▶ RateLimitPolicy (validated at start)
    request ─▶ Limiter.check_address (before authentication, cost 1)
            ─▶ Limiter.failed_authentication (after a 401, its own stricter limit)
            ─▶ Limiter.check_principal (after authorization, cost = instances)

Limits are written as `limits` strings ("100/second;3000/minute", as slowapi writes
them) and keyed by the authenticated principal's subject or by the trusted client
address: never by a header the client controls. Storage comes from a URI: ``memory://``
for one replica, ``async+redis://…`` when replicas must share counts.

When the shared storage fails, the written policy applies (``on_storage_failure``):
- ``memory`` (default): fall back to this replica's own memory counters, flag it in
  readiness and in every audit record, and return to the shared storage when it answers;
- ``closed``: refuse with 503 until the storage answers;
- ``open``: admit without limits (audited as such).
Never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from gateway.errors import RateLimited, Unavailable
from gateway.identity.principal import Principal
from gateway.ratelimit.addresses import address_key, rate_key
from gateway.ratelimit.memory import LocalCounters
from gateway.ratelimit.policy import FailurePolicy, RateLimitPolicy, StrategyName
from gateway.ratelimit.storage import STORAGE_TIMEOUT_S, StorageCredentials, open_storage

log = logging.getLogger("gateway.ratelimit")
_RECHECK_S = 1.0
_PRUNE_S = 60.0
_STRATEGIES: dict[str, type[RateLimiter]] = {
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
}


@dataclass(frozen=True)
class _Rule:
    name: str  # the policy name clients see in the headers
    items: tuple[RateLimitItem, ...]
    strategy: StrategyName


def _rule(name: str, text: str, strategy: StrategyName) -> _Rule | None:
    return _Rule(name, tuple(parse_many(text)), strategy) if text.strip() else None


# About 270 bytes a counter: 127 MiB measured at the cap, inside the gateway pod's limit.
DEFAULT_MEMORY_MAX_KEYS = 500_000


class Limiter:
    def __init__(
        self,
        policy: RateLimitPolicy,
        storage_uri: str,
        on_failure: FailurePolicy,
        memory_max_keys: int | None = DEFAULT_MEMORY_MAX_KEYS,
        credentials: StorageCredentials | None = None,
    ) -> None:
        self.policy = policy
        self.storage_uri = storage_uri
        self.on_failure = on_failure
        self._shared: Storage = open_storage(storage_uri, memory_max_keys, credentials)
        self._remote = not isinstance(self._shared, LocalCounters)
        self._fallback = LocalCounters(max_keys=memory_max_keys)
        self._strategies: dict[tuple[int, str], RateLimiter] = {}
        self.degraded = False  # True while the shared storage is failing
        self._recheck_task: asyncio.Task[None] | None = None
        d, s = policy.defaults, policy.strategy
        self._address = _rule("address", d.per_address, s)
        self._failed = _rule("failed-auth", d.failed_auth_per_address, s)
        self._principal = _rule("principal", d.per_principal, s)
        self._principal_model = _rule("principal-model", d.per_principal_model, s)
        self._overrides: dict[tuple[str, str | None], _Rule] = {}
        # Addresses this replica saw fail authentication, and until when that may still
        # count (a sliding window carries the previous window's count: twice the longest).
        # Capped like the counters (OrderedDict: oldest first, so the ones closest to expiry
        # go first): a flood of distinct failing addresses costs bounded memory.
        self._failed_until: OrderedDict[str, float] = OrderedDict()
        self._failed_cap = memory_max_keys or DEFAULT_MEMORY_MAX_KEYS
        self._failed_span_s = (
            2 * max((i.get_expiry() for i in self._failed.items), default=0) if self._failed else 0
        )
        self._failed_pruned = time.monotonic()
        for o in policy.overrides:
            rule = _rule("principal-model" if o.model else "principal", o.limits, o.strategy or s)
            if rule is not None:
                self._overrides[(o.principal, o.model)] = rule

    @property
    def state(self) -> str:
        """What counts requests now: the shared storage, the memory fallback, or nothing."""
        if not self.degraded:
            return "memory" if self.storage_uri.startswith("memory") else "shared"
        return {"memory": "memory-fallback", "closed": "closed", "open": "open"}[self.on_failure]

    def _limiter(self, storage: Storage, strategy: StrategyName) -> RateLimiter:
        key = (id(storage), strategy)
        limiter = self._strategies.get(key)
        if limiter is None:
            limiter = _STRATEGIES[strategy](storage)
            self._strategies[key] = limiter
        return limiter

    async def _hit(self, rule: _Rule | None, key: tuple[str, ...], cost: int) -> None:
        if rule is None:
            return
        cost = max(1, cost)  # nothing is free: a request always counts at least once
        for item in rule.items:
            allowed = await self._call(rule, "hit", item, key, cost)
            if allowed is False:
                await self._deny(rule, item, key)

    async def _deny(self, rule: _Rule, item: RateLimitItem, key: tuple[str, ...]) -> None:
        stats = await self._call(rule, "get_window_stats", item, key, 0)
        if stats is None:
            reset_in, remaining = float(item.get_expiry()), 0
        else:
            reset_in, remaining = max(0.0, stats.reset_time - time.time()), int(stats.remaining)
        raise RateLimited(
            policy=rule.name,
            quota=item.amount,
            window_s=item.get_expiry(),
            remaining=remaining,
            reset_in_s=reset_in,
        )

    async def _call(
        self, rule: _Rule, op: str, item: RateLimitItem, key: tuple[str, ...], cost: int
    ) -> Any:
        """One limiter operation; on storage failure, the written policy decides."""
        if not self.degraded:
            if not self._remote:  # in-process counters cannot fail or stall
                return await self._run(self._shared, rule, op, item, key, cost)
            for attempt in (1, 2):
                try:
                    async with asyncio.timeout(STORAGE_TIMEOUT_S):
                        return await self._run(self._shared, rule, op, item, key, cost)
                except Exception as exc:  # any storage fault: connection, timeout, protocol
                    if isinstance(exc, ConnectionError) or "Connection" in type(exc).__name__:
                        # Pooled connections may all predate a Redis restart: drop them and
                        # retry on a fresh one before declaring the storage down.
                        await self._disconnect()
                    if attempt == 2:
                        self._enter_degraded(exc)
        if self.on_failure == "closed":
            raise Unavailable(
                "rate limiting is unavailable, retry later", reason="ratelimit_storage_down"
            )
        if self.on_failure == "open":
            return True if op == "hit" else None
        return await self._run(self._fallback, rule, op, item, key, cost)

    async def _run(
        self,
        storage: Storage,
        rule: _Rule,
        op: str,
        item: RateLimitItem,
        key: tuple[str, ...],
        cost: int,
    ) -> Any:
        limiter = self._limiter(storage, rule.strategy)
        if op == "hit":
            return await limiter.hit(item, *key, cost=cost)
        return await limiter.get_window_stats(item, *key)

    def _enter_degraded(self, exc: Exception) -> None:
        if not self.degraded:
            log.error("rate-limit storage failed (%r); policy %r applies", exc, self.on_failure)
            self.degraded = True
        if self._recheck_task is None or self._recheck_task.done():
            self._recheck_task = asyncio.create_task(self._recheck(), name="ratelimit-recheck")

    async def _recheck(self) -> None:
        """Return to the shared storage as soon as it answers again."""
        while self.degraded:
            await asyncio.sleep(_RECHECK_S)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STORAGE_TIMEOUT_S):
                    if await self._shared.check():
                        log.warning("rate-limit storage is back; shared limits apply again")
                        await self._disconnect()  # the shared counts on fresh connections
                        self.degraded = False

    async def close(self) -> None:
        if self._recheck_task is not None:
            self._recheck_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recheck_task
        await self._disconnect()

    async def _disconnect(self) -> None:
        # `limits` storages have no close(); the Redis client's pool is where sockets live.
        # coredis 5 disconnects synchronously, redis-py's asyncio pool (and coredis before
        # 5) returns a coroutine: awaited, or it would do nothing.
        client = getattr(getattr(self._shared, "bridge", None), "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            done = pool.disconnect()
            if inspect.isawaitable(done):
                await done

    @property
    def evicted(self) -> int:
        """In-process counts forgotten early to stay under the memory cap."""
        return sum(
            s.evicted for s in (self._shared, self._fallback) if isinstance(s, LocalCounters)
        )

    # -- the three checks the request path makes ---------------------------------------
    def _may_be_blocked(self, address: str) -> bool:
        """Whether the failed-authentication counts of this address need reading.

        Memory counts are this replica's own, so an address it never saw fail (within the
        windows) has none: the read, two thirds of a request's limiter cost, is skipped.
        Shared counts may come from any replica and are always read.
        """
        if self._remote:
            return True
        until = self._failed_until.get(address)
        return until is not None and time.monotonic() < until

    async def check_address(self, address: str) -> None:
        """Before authentication: the per-address limit, and the failed-auth block."""
        address = address_key(address)
        await self._hit(self._address, ("address", address), 1)
        failed = self._failed
        if failed is not None and self._may_be_blocked(address):
            for item in failed.items:
                stats = await self._call(failed, "get_window_stats", item, ("failed", address), 0)
                if stats is not None and stats.remaining <= 0:
                    await self._deny(failed, item, ("failed", address))

    async def failed_authentication(self, address: str) -> None:
        """Count a failed authentication against the address (brute force, OWASP API2)."""
        failed = self._failed
        if failed is None:
            return
        address = address_key(address)
        now = time.monotonic()
        self._failed_until[address] = now + self._failed_span_s
        self._failed_until.move_to_end(address)
        while len(self._failed_until) > self._failed_cap:
            self._failed_until.popitem(last=False)
        if now - self._failed_pruned > _PRUNE_S:  # expired ones go, whatever the count
            while self._failed_until and next(iter(self._failed_until.values())) <= now:
                self._failed_until.popitem(last=False)
            self._failed_pruned = now
        for item in failed.items:
            await self._call(failed, "hit", item, ("failed", address), 1)

    async def check_principal(self, principal: Principal, model: str, cost: int) -> None:
        """After authorization: per principal, then per principal and model; cost = instances."""
        subject = rate_key(principal)
        rule = self._overrides.get((subject, None), self._principal)
        await self._hit(rule, ("principal", subject), cost)
        rule = self._overrides.get((subject, model), self._principal_model)
        await self._hit(rule, ("principal-model", subject, model), cost)
