"""Who still uses the old generation of a key? Asked of a real gateway's trail.

A key is rotated with an overlap (both generations valid); one client stays on the old
generation, another moves to the new one, each from its own loopback address. The
answer a rotation script reads before revoking, `scoregate audit query --key-usage
--json`, must name the client still on the old generation, and the report must agree.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import time
from typing import Any

import httpx
import pytest

from gateway.identity import lifecycle
from gateway.secretstore.localfile import LocalSecretStore
from serving.tls import client_context
from tests.conftest import Stack, scoregate

pytestmark = pytest.mark.e2e
ROWS = [[5.1, 3.5, 1.4, 0.2]]


def client_from(address: str, base_url: str, stack: Stack) -> httpx.Client:
    """A client whose requests come from ``address`` (any 127/8 address is loopback)."""
    transport = httpx.HTTPTransport(verify=client_context(stack.ca), local_address=address)
    return httpx.Client(base_url=base_url, transport=transport, timeout=10)


def score(client: httpx.Client, key: str) -> int:
    reply = client.post(
        "/v1/models/iris:predict", json={"instances": ROWS}, headers={"api-key": key}
    )
    return reply.status_code


def test_key_usage_names_the_client_still_on_the_old_generation(
    stack: Stack, spawn_gateway: Any
) -> None:
    store = LocalSecretStore(stack.state / "secrets.json")
    first = asyncio.run(lifecycle.create(store, owner="rotating-app", scopes=["models:iris"]))
    key_id, old_version = first.generation.key_id, first.generation.version
    gateway = spawn_gateway()
    base = gateway.base_url.replace("localhost", "127.0.0.1")
    with (
        client_from("127.0.0.2", base, stack) as laggard,
        client_from("127.0.0.3", base, stack) as mover,
    ):
        assert [score(laggard, first.key), score(mover, first.key)] == [200, 200]
        rotation = asyncio.run(lifecycle.rotate(store, key_id, overlap=dt.timedelta(hours=1)))
        second = rotation.issued
        new_version = second.generation.version
        deadline = time.monotonic() + 10  # the gateway reloads its keys every 0.3 s here
        while score(mover, second.key) != 200:
            assert time.monotonic() < deadline, "the new generation was never accepted"
            time.sleep(0.1)
        for _ in range(4):
            assert score(laggard, first.key) == 200  # the overlap: the old one still works
            assert score(mover, second.key) == 200
    gateway.proc.send_signal(signal.SIGTERM)  # drains and signs the trail's head
    assert gateway.proc.wait(timeout=20) == 0
    trail = str(gateway.state / "audit")

    out = scoregate("audit", "query", "--key-usage", "--json", trail, state=stack.state)
    assert out.returncode == 0, out.stderr
    usage = {
        row["key_version"]: row
        for row in map(json.loads, out.stdout.splitlines())
        if row["key_id"] == key_id
    }
    assert set(usage) == {old_version, new_version}
    old, new = usage[old_version], usage[new_version]
    # The old generation: the laggard's 5 requests and the mover's first one.
    assert old["clients"] == {"127.0.0.2": 5, "127.0.0.3": 1}
    assert (old["requests"], old["allowed"], old["principal"]) == (6, 6, "rotating-app")
    # After the rotation only the laggard still used it.
    assert old["last_used"] >= new["first_used"]
    assert set(new["clients"]) == {"127.0.0.3"}
    assert new["requests"] == new["clients"]["127.0.0.3"] >= 5
    laggards = [client for client, _ in old["clients"].items() if client not in new["clients"]]
    assert laggards == ["127.0.0.2"]

    report = scoregate("audit", "report", "--json", trail, state=stack.state)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["banner"].startswith("INTACT: ")
    in_report = {r["key_version"]: r for r in data["key_usage"] if r["key_id"] == key_id}
    assert in_report == usage
