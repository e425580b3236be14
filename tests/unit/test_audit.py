from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from gateway.audit import GENESIS, AuditEvent, AuditTrail, FileSink, seal
from gateway.auditlog import verify


def event(i: int = 0, **changes: object) -> AuditEvent:
    base = AuditEvent(
        time="2026-11-26T00:00:00.000Z",
        request_id=f"req-{i:08d}",
        client="127.0.0.1",
        method="POST",
        path="/v1/models/iris:predict",
        route="predict",
        model="iris",
        subject="alice",
        credential="api_key",
        key_id="k" * 16,
        key_version="v1",
        decision="allow",
        reason="ok",
        status=200,
        latency_ms=1.5,
        bytes_in=10,
        bytes_out=20,
        payload_sha256="0" * 64,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def write(path: Path, events: list[AuditEvent]) -> None:
    trail = AuditTrail(FileSink(path), queue_size=1000)
    writer = asyncio.create_task(trail.run())
    for e in events:
        trail.record(e)
    await trail.drain()
    writer.cancel()
    trail.close()


async def test_records_are_chained_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write(path, [event(i) for i in range(5)])
    lines = path.read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))
    assert verify([path]).ok
    assert verify([path]).records == 5


async def test_chain_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write(path, [event(1), event(2)])
    await write(path, [event(3)])
    result = verify([path])
    assert (result.ok, result.records) == (True, 3)
    assert orjson.loads(path.read_bytes().splitlines()[-1])["seq"] == 3


@pytest.fixture
async def trail_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    await write(path, [event(i) for i in range(6)])
    return path


def test_edited_record_is_detected_at_its_line(trail_file: Path) -> None:
    lines = trail_file.read_bytes().splitlines()
    lines[2] = lines[2].replace(b'"status":200', b'"status":403')
    trail_file.write_bytes(b"\n".join(lines) + b"\n")
    result = verify([trail_file])
    assert (result.ok, result.line) == (False, 3)
    assert "altered" in (result.problem or "")


def test_deleted_record_is_detected(trail_file: Path) -> None:
    lines = trail_file.read_bytes().splitlines()
    del lines[3]
    trail_file.write_bytes(b"\n".join(lines) + b"\n")
    result = verify([trail_file])
    assert (result.ok, result.line) == (False, 4)
    assert "chain broken" in (result.problem or "")


def test_reordered_records_are_detected(trail_file: Path) -> None:
    lines = trail_file.read_bytes().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    trail_file.write_bytes(b"\n".join(lines) + b"\n")
    assert verify([trail_file]).line == 2


def test_a_rehashed_forgery_still_breaks_the_chain(trail_file: Path) -> None:
    # An attacker who edits a record and recomputes its own hash breaks the next link.
    lines = trail_file.read_bytes().splitlines()
    record = orjson.loads(lines[2])
    fields = {k: v for k, v in record.items() if k not in {"hash", "seq", "prev"}}
    fields["decision"] = "deny"
    lines[2] = seal(fields, record["seq"], record["prev"])[0].rstrip(b"\n")
    trail_file.write_bytes(b"\n".join(lines) + b"\n")
    result = verify([trail_file])
    assert (result.ok, result.line) == (False, 4)


def test_garbage_line_is_reported(trail_file: Path) -> None:
    trail_file.write_bytes(trail_file.read_bytes() + b"not json\n")
    assert verify([trail_file]).problem is not None


class FlakySink:
    """A sink that fails its first writes, as a full disk would."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.lines: list[bytes] = []

    def tail(self) -> tuple[int, str]:
        return 0, GENESIS

    def write(self, lines: list[bytes]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        self.lines.extend(lines)

    def close(self) -> None:
        pass


async def test_failing_sink_fails_closed_then_recovers_without_losing_records() -> None:
    sink = FlakySink(failures=2)
    trail = AuditTrail(sink, queue_size=100)
    writer = asyncio.create_task(trail.run())
    trail.record(event(1))
    for _ in range(50):
        await asyncio.sleep(0.01)
        if not trail.accepting:
            break
    assert not trail.accepting  # fail closed while the sink fails
    trail.record(event(2))
    await asyncio.wait_for(trail.drain(), timeout=5)
    writer.cancel()
    assert [orjson.loads(line)["request_id"] for line in sink.lines] == [
        "req-00000001",
        "req-00000002",
    ]


async def test_full_queue_stops_accepting() -> None:
    trail = AuditTrail(FlakySink(0), queue_size=2)
    trail.record(event(1))
    assert trail.accepting
    trail.record(event(2))
    assert not trail.accepting
    trail.record(event(3))
    assert trail.lost == 1
