"""Per-request cost of the checks on the gateway's hot path (BENCHMARKS.md B5 and B8).

    python bench/hotpath.py [--n 20000] [--redis async+redis://127.0.0.1:6379] [--json out.json]

Measures, in one process and one run, microseconds per request for: API-key
authentication on a warm key ring; the rate-limit decision (address + principal) on
memory:// and on Redis side by side (B8 is their ratio); queueing an audit record; the
audit writer's sealing and writing per record; and B5, the sum on memory storage.

Beside B5, one sliding-window hit with 20,000 other callers' counters held and the event
loop turning after each request, as in a server: on the gateway's in-process counters
(gateway/ratelimit/memory.py) and on `limits`' own async memory storage, whose cost grows with
the keys it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from limits import parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.audit.record import AuditEvent, utc_timestamp
from gateway.audit.signing import load_signer
from gateway.audit.sinks import FileSink
from gateway.audit.trail import AuditTrail
from gateway.identity import lifecycle
from gateway.identity.apikeys import authenticate
from gateway.identity.keyring import KeyRing
from gateway.identity.principal import Principal
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.memory import LocalCounters
from gateway.ratelimit.policy import RateLimitPolicy
from gateway.secretstore.localfile import LocalSecretStore
from gateway.secretstore.protocol import utcnow


async def per_call_us(fn: Callable[[], Awaitable[object]], n: int, repeats: int = 3) -> float:
    """Median over repeats of the mean time per call, after a warm-up."""
    for _ in range(min(n, 500)):
        await fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            await fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def event(i: int) -> AuditEvent:
    return AuditEvent(
        time=utc_timestamp(),
        request_id=f"{i:032x}",
        client_request_id=None,
        client="127.0.0.1",
        method="POST",
        path="/v1/models/iris:predict",
        route="predict",
        model="iris",
        subject="bench",
        credential="api_key",
        key_id="a" * 16,
        key_version="b" * 32,
        decision="allow",
        reason="ok",
        status=200,
        latency_ms=1.234,
        bytes_in=40,
        bytes_out=30,
        payload_sha256="c" * 64,
        instances=1,
        limiter="memory",
    )


async def hit_with_callers_held(storage: Storage, callers: int, n: int) -> float:
    """CPU µs per hit, with `callers` other counters held and the loop turning after each."""
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = parse("1000000000/minute")
    for i in range(callers):
        await limiter.hit(item, "address", f"2001:db8::{i:x}")
    start = time.process_time()
    for _ in range(n):
        await limiter.hit(item, "address", "2001:db8::ffff")
        await asyncio.sleep(0)  # a server turns the loop between requests
    return (time.process_time() - start) / n * 1e6


async def main(n: int, redis: str) -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalSecretStore(Path(tmp) / "secrets.json")
        issued = await lifecycle.create(store, owner="bench", scopes=["models:iris"])
        ring = KeyRing(store, refresh_interval_s=60)
        await ring.refresh()
        now = utcnow()

        async def auth() -> object:
            return authenticate(issued.key, ring, now)

        results["api_key_auth_us"] = await per_call_us(auth, n)

        policy = RateLimitPolicy.model_validate(
            {
                "defaults": {
                    "per_principal": "1000000000/minute",
                    "per_address": "1000000000/minute",
                    "failed_auth_per_address": "10/minute",
                }
            }
        )
        principal = Principal(
            subject="bench", credential="api_key", scopes=frozenset({"models:iris"})
        )
        for name, uri in (("memory", "memory://"), ("redis", redis)):
            limiter = Limiter(policy, uri, "closed")

            async def decide(limiter: Limiter = limiter) -> object:
                await limiter.check_address("127.0.0.1")
                await limiter.check_principal(principal, "iris", 1)
                return None

            results[f"ratelimit_{name}_us"] = await per_call_us(
                decide, n if name == "memory" else n // 4
            )
            await limiter.close()

        for name, storage in (("gateway", LocalCounters()), ("limits", MemoryStorage())):
            results[f"hit_20k_callers_{name}_counters_us"] = await hit_with_callers_held(
                storage, 20_000, max(200, n // 50)
            )

        trail = AuditTrail(FileSink(Path(tmp) / "audit" / "audit.jsonl"), queue_size=10 * n)
        trail.signer = await load_signer(store, create=True)
        counter = iter(range(10**9))

        async def enqueue() -> object:
            trail.reserve()
            trail.record(event(next(counter)), reserved=True)
            return None

        results["audit_enqueue_us"] = await per_call_us(enqueue, n, repeats=1)
        queued = trail.depth
        writer = asyncio.create_task(trail.run())
        start = time.perf_counter()
        await trail.drain()
        results["audit_writer_us_per_record"] = (time.perf_counter() - start) / queued * 1e6
        writer.cancel()
        trail.close()

    results["B5_hot_path_us"] = (
        results["api_key_auth_us"] + results["ratelimit_memory_us"] + results["audit_enqueue_us"]
    )
    results["B8_redis_over_memory"] = results["ratelimit_redis_us"] / results["ratelimit_memory_us"]
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--redis", default="async+redis://127.0.0.1:6379")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = asyncio.run(main(args.n, args.redis))
    width = max(map(len, figures))
    for name, value in figures.items():
        unit = "x" if name.startswith("B8") else "µs"
        sys.stdout.write(f"{name:<{width}}  {value:10.2f} {unit}\n")
    sys.stdout.write(json.dumps({k: round(v, 3) for k, v in figures.items()}) + "\n")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
