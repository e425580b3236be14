"""Soak: minutes at saturation through the real gateway (SECURITY-CATALOG; issue 8).

Zero 5xx, one audit record per request, and flat gateway memory. The duration is
SCOREGATE_SOAK_S (default 120 s). Throughput is printed, never judged: speed is the
benchmark's business (bench/), not a test's.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.tls import client_context
from tests.conftest import Stack, new_key, write_ratelimits

pytestmark = pytest.mark.e2e
SOAK_S = float(os.environ.get("SCOREGATE_SOAK_S", "120"))
CLIENTS = 16
ROWS = {"instances": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(SOAK_S + 120)
def test_soak_at_saturation_zero_5xx_every_request_audited_memory_flat(
    stack: Stack, spawn_gateway: Any, tmp_path: Path
) -> None:
    # The key first: the gateway loads it at start, so no request races its refresh.
    key, subject = asyncio.run(new_key(stack.state / "secrets.json"))
    gateway = spawn_gateway(
        write_ratelimits(
            tmp_path / "ratelimits.toml",
            per_principal="1000000/second",
            per_address="1000000/second",
        )
    )
    statuses: Counter[int] = Counter()
    memory: list[tuple[float, float]] = []

    disconnects = 0

    async def client(http: httpx.AsyncClient, until: float) -> None:
        nonlocal disconnects
        while time.monotonic() < until:
            try:
                reply = await http.post(
                    "/v1/models/iris:predict", json=ROWS, headers={"api-key": key}
                )
            except httpx.RemoteProtocolError:
                # A keep-alive connection the server closed as idle just as this request
                # went out (RFC 9112 §9.3.1: the client retries). Had the gateway processed
                # it, its audit record would break the equality below.
                disconnects += 1
                continue
            statuses[reply.status_code] += 1

    async def sample(until: float, started: float) -> None:
        while time.monotonic() < until:
            memory.append((time.monotonic() - started, rss_mib(gateway.proc.pid)))
            await asyncio.sleep(2)

    async def soak() -> None:
        async with httpx.AsyncClient(
            base_url=gateway.base_url,
            verify=client_context(gateway.ca),
            timeout=30,
            limits=httpx.Limits(max_connections=CLIENTS),
        ) as http:
            started = time.monotonic()
            until = started + SOAK_S
            await asyncio.gather(
                sample(until, started), *(client(http, until) for _ in range(CLIENTS))
            )

    asyncio.run(soak())
    total = sum(statuses.values())
    records = gateway.records_of(subject, total, timeout_s=30)
    # Flat: after a warm-up (the first quarter), the last quarter's memory is within a few
    # MiB of the second quarter's; a leak of even 100 bytes per request would show here.
    quarter = max(1, len(memory) // 4)
    early = statistics.mean(m for _, m in memory[quarter : 2 * quarter])
    late = statistics.mean(m for _, m in memory[-quarter:])
    print(
        f"\nsoak: {SOAK_S:.0f} s, {CLIENTS} clients, {total} requests "
        f"({total / SOAK_S:.0f}/s), statuses {dict(statuses)}, audit records {len(records)}, "
        f"keep-alive races retried {disconnects}, "
        f"gateway RSS {memory[0][1]:.1f} → {early:.1f} → {late:.1f} MiB"
    )
    assert set(statuses) == {200}, statuses
    assert len(records) == total
    assert {r["status"] for r in records} == {200}
    assert late - early < max(8.0, 0.1 * early), (early, late)
