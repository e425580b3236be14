"""Audit log (SECURITY-CATALOG.md), against the live gateway and the `scoregate` command."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from gateway.audit.review import verify
from gateway.audit.trail import AuditTrail
from gateway.service import build_gateway
from gateway.settings import GatewaySettings
from tests.conftest import Stack, scoregate, write_access, write_routes
from tests.gateway.audit.test_trail import FlakySink

ROWS = [[5.1, 3.5, 1.4, 0.2]]


@pytest.mark.e2e
def test_every_request_has_exactly_one_record_under_concurrent_load(stack: Stack) -> None:
    before = len(stack.request_records())
    keys = [stack.keys.iris, stack.keys.unscoped, "bad", stack.keys.revoked]

    def worker(n: int) -> list[str]:
        ids = []
        with stack.client(http2=n % 2 == 0) as client:
            for i in range(25):
                r = client.post(
                    "/v1/models/iris:predict",
                    json={"instances": ROWS},
                    headers={"api-key": keys[i % 4]},
                )
                ids.append(r.headers["x-request-id"])
        return ids

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = [rid for batch in pool.map(worker, range(8)) for rid in batch]
    assert len(set(ids)) == 200
    wanted = set(ids)
    deadline = time.monotonic() + 10
    seen: list[str] = []
    while time.monotonic() < deadline:  # the writer is asynchronous
        seen = [
            r["request_id"] for r in stack.request_records()[before:] if r["request_id"] in wanted
        ]
        if len(seen) >= len(ids):
            break
        time.sleep(0.05)
    assert sorted(seen) == sorted(ids)  # each exactly once
    assert verify([stack.audit_file]).ok


@pytest.mark.e2e
def test_no_token_key_secret_or_payload_in_records(stack: Stack) -> None:
    marker = 4.123456789
    with stack.client() as client:
        r = client.post(
            "/v1/models/iris:predict",
            json={"instances": [[marker, 3.5, 1.4, 0.2]]},
            headers={"api-key": stack.keys.iris},
        )
    record = stack.audit_for(r.headers["x-request-id"])
    text = stack.audit_file.read_text()
    for key in (
        stack.keys.iris,
        stack.keys.unscoped,
        stack.keys.revoked,
        stack.keys.expired,
        stack.keys.copy_only,
    ):
        assert key not in text
        assert key.split("_")[2] not in text
    assert str(marker) not in text
    assert len(record["payload_sha256"]) == 64  # a digest of the payload, not the payload


@pytest.mark.e2e
def test_hostile_strings_cannot_split_or_forge_records(stack: Stack) -> None:
    forged = '","decision":"allow","x":"'
    before = len(stack.request_records())
    with stack.client() as client:
        responses = [
            client.post(
                "/v1/models/ir%0Ais:predict",
                json={"instances": ROWS},
                headers={"api-key": stack.keys.iris},
            ),
            client.post(
                f"/v1/models/{forged}:predict",
                json={"instances": ROWS},
                headers={"api-key": stack.keys.iris},
            ),
            client.get(
                "/x%0D%0A%7B%22seq%22%3A1%7D", headers={"x-request-id": 'abcdefgh\\"}{"seq":1'}
            ),
            client.get("/v2/unknown", headers={"x-request-id": forged}),
        ]
    for r in responses:
        stack.audit_for(r.headers["x-request-id"])
    records = stack.request_records()
    assert len(records) == before + 4
    assert all(set(rec) >= {"seq", "hash", "prev"} for rec in records)
    assert verify([stack.audit_file]).ok
    assert all(rec["decision"] == "deny" for rec in records[before : before + 3])


def tamper(path: Path, how: str) -> None:
    lines = path.read_bytes().splitlines()
    if how == "delete":
        del lines[2]
    elif how == "edit":
        record = orjson.loads(lines[2])
        record["decision"] = "allow" if record["decision"] == "deny" else "deny"
        lines[2] = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    elif how == "reorder":
        lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["delete", "edit", "reorder"])
def test_tampering_is_detected_by_scoregate_audit_verify(
    stack: Stack, tmp_path: Path, how: str
) -> None:
    with stack.client() as client:
        for _ in range(4):
            r = client.post("/v1/models/iris:predict", json={"instances": ROWS})
    stack.audit_for(r.headers["x-request-id"])
    copy = tmp_path / "audit.jsonl"
    copy.write_bytes(stack.audit_file.read_bytes())
    good = scoregate("audit", "verify", str(copy), state=stack.state)
    assert good.returncode == 0
    tamper(copy, how)
    bad = scoregate("audit", "verify", str(copy), state=stack.state)
    assert bad.returncode == 1
    assert f"{copy}:3" in bad.stdout or f"{copy}:4" in bad.stdout


async def test_failing_sink_fails_closed_with_503_and_loses_nothing(tmp_path: Path) -> None:
    from gateway.web.app import create_app

    settings = GatewaySettings(
        state_dir=tmp_path,
        routes_file=write_routes(tmp_path / "routes.toml", "http://127.0.0.1:9"),
        access_policy_file=write_access(tmp_path / "access.toml"),
    )
    gw = build_gateway(settings)
    gw.audit.close()
    sink = FlakySink(failures=3)  # fails like a full disk, three times, then recovers
    gw.audit = AuditTrail(sink, queue_size=100)
    app = create_app(gw)
    results: dict[int, tuple[int, str]] = {}  # request number -> (status, request id)
    async with app.test_app() as test_app:
        client = test_app.test_client()

        async def one(number: int) -> None:
            # A request that is recorded (health probes are only counted): an unknown
            # path, 404 while the trail takes records. Its answer waits for its record.
            r = await client.get("/v2/unknown")
            results[number] = (r.status_code, r.headers["x-request-id"])

        requests = []
        for number in range(300):
            requests.append(asyncio.create_task(one(number)))
            await asyncio.sleep(0.02)
            statuses = [results[n][0] for n in sorted(results)]
            if 503 in statuses and statuses[-1] == 404 and number > max(results) + 2:
                break
        await asyncio.gather(*requests)
        assert (await client.get("/v2/health/live")).status_code == 200  # live all along
    statuses = [results[n][0] for n in sorted(results)]
    ids = [results[n][1] for n in sorted(results)]
    assert statuses[0] == 404
    assert 503 in statuses  # failed closed while the sink failed
    assert statuses[-1] == 404  # and served again once it recovered
    records = [orjson.loads(line) for line in sink.lines]
    written = [r["request_id"] for r in records if r["type"] == "request"]
    assert sorted(written) == sorted(ids)  # every request, the refused ones too, exactly once
    assert gw.audit.lost == 0


async def test_open_audit_failure_policy_serves_and_says_so(tmp_path: Path) -> None:
    from gateway.web.app import create_app

    settings = GatewaySettings(
        state_dir=tmp_path,
        routes_file=write_routes(tmp_path / "routes.toml", "http://127.0.0.1:9"),
        access_policy_file=write_access(tmp_path / "access.toml"),
        audit_on_failure="open",
    )
    gw = build_gateway(settings)
    gw.audit.close()
    sink = FlakySink(failures=1_000_000)
    gw.audit = AuditTrail(sink, queue_size=3)
    app = create_app(gw)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        # Recorded requests (probes are only counted): an unknown path, 404 each.
        statuses = [(await client.get("/v2/unknown")).status_code for _ in range(10)]
        ready = await (await client.get("/v2/health/ready")).get_json()
        sink.failures = 0  # the disk frees up: shutdown drains what is queued
    assert statuses == [404] * 10  # served although the trail is failing
    assert ready["audit_accepting"] is False and ready["ready"] is False
    assert gw.audit.lost > 0  # and the loss is counted (and logged), never silent
