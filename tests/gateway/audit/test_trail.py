from __future__ import annotations

import asyncio
import itertools
import resource
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.audit import signing
from gateway.audit.record import GENESIS, AuditEvent, AuditTrailError, seal
from gateway.audit.review import verify
from gateway.audit.sinks import FileSink, chain_files
from gateway.audit.trail import AuditTrail
from gateway.secretstore.localfile import LocalSecretStore


def event(i: int = 0, **changes: Any) -> AuditEvent:
    base = AuditEvent(
        time="2026-11-26T00:00:00.000Z",
        request_id=f"req-{i:08d}",
        client_request_id=None,
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
    return replace(base, **changes)


async def write(path: Path, events: list[AuditEvent], **trail: Any) -> AuditTrail:
    sink = FileSink(path, rotate_bytes=trail.pop("rotate_bytes", 64 * 1024 * 1024))
    audit = AuditTrail(sink, queue_size=1000, **trail)
    writer = asyncio.create_task(audit.run())
    for e in events:
        assert audit.reserve()
        audit.record(e, reserved=True)
    await audit.drain()
    writer.cancel()
    audit.close()
    return audit


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_records_are_chained_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write(path, [event(i) for i in range(5)])
    records = lines_of(path)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))
    assert (verify([path]).ok, verify([path]).records) == (True, 5)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_chain_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write(path, [event(1), event(2)])
    await write(path, [event(3)])
    result = verify([path])
    assert (result.ok, result.records) == (True, 3)
    assert lines_of(path)[-1]["seq"] == 3


async def test_rotation_by_size_carries_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for batch in range(5):  # rotation happens between batches, never inside one
        await write(path, [event(batch * 8 + i) for i in range(8)], rotate_bytes=4096)
    files = chain_files(tmp_path)
    assert len(files) > 2
    assert files[-1] == path
    assert all(f.name.startswith("audit-") for f in files[:-1])
    assert verify([tmp_path]).records == 40
    first_of_second = lines_of(files[1])[0]
    assert first_of_second["prev"] == lines_of(files[0])[-1]["hash"]
    # a rotated file removed from the middle is caught
    files[1].unlink()
    assert not verify([tmp_path]).ok


@pytest.fixture
async def trail_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    await write(path, [event(i) for i in range(6)])
    return path


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_edited_record_is_detected_at_its_line(trail_file: Path) -> None:
    lines = trail_file.read_bytes().splitlines()
    lines[2] = lines[2].replace(b'"status":200', b'"status":403')
    rewrite(trail_file, lines)
    result = verify([trail_file])
    assert (result.ok, result.line) == (False, 3)
    assert "altered" in (result.problem or "")


def test_deleted_record_is_detected(trail_file: Path) -> None:
    lines = trail_file.read_bytes().splitlines()
    del lines[3]
    rewrite(trail_file, lines)
    result = verify([trail_file])
    assert (result.ok, result.line) == (False, 4)
    assert "chain broken" in (result.problem or "")


def test_records_deleted_from_the_front_are_detected(trail_file: Path) -> None:
    rewrite(trail_file, trail_file.read_bytes().splitlines()[3:])
    result = verify([trail_file])
    assert (result.ok, result.line) == (False, 1)
    assert "starts at seq 4" in (result.problem or "")
    partial = verify([trail_file], partial=True)
    assert partial.ok and partial.notes == ["the range starts mid-chain at seq 4"]


def test_reordered_records_are_detected(trail_file: Path) -> None:
    lines = trail_file.read_bytes().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(trail_file, lines)
    assert verify([trail_file]).line == 2


def test_a_rehashed_forgery_still_breaks_the_chain(trail_file: Path) -> None:
    # An attacker who edits a record and recomputes its own hash breaks the next link.
    lines = trail_file.read_bytes().splitlines()
    record = orjson.loads(lines[2])
    fields = {k: v for k, v in record.items() if k not in {"hash", "seq", "prev"}}
    fields["decision"] = "deny"
    lines[2] = seal(fields, record["seq"], record["prev"])[0].rstrip(b"\n")
    rewrite(trail_file, lines)
    result = verify([trail_file])
    assert (result.ok, result.line) == (False, 4)


def test_garbage_line_is_reported(trail_file: Path) -> None:
    trail_file.write_bytes(trail_file.read_bytes() + b"not json\n")
    assert "not a sealed record" in (verify([trail_file]).problem or "")


async def test_signed_checkpoints_prove_a_range_even_against_a_full_rechain(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path / "secrets.json")
    signer = await signing.load_signer(store, create=True)
    assert signer is not None
    path = tmp_path / "audit" / "audit.jsonl"
    await write(path, [event(i) for i in range(7)], signer=signer, checkpoint_every=3)
    records = lines_of(path)
    kinds = [r["type"] for r in records]
    # a checkpoint after every 3 records, and a last one at shutdown
    assert kinds == ["request"] * 3 + ["checkpoint"] + ["request"] * 3 + ["checkpoint"] + [
        "request",
        "checkpoint",
    ]
    assert records[3]["head"] == records[2]["hash"]
    assert (records[3]["from_seq"], records[3]["to_seq"]) == (1, 3)
    keys = await signing.public_keys(store)
    good = verify([path], keys)
    assert (good.ok, good.checkpoints, good.unsigned_tail) == (True, 3, 0)

    # Someone who can write the file flips a decision and recomputes every hash after it:
    # the chain checks out, but the signed head no longer matches.
    fields = [{k: v for k, v in r.items() if k not in {"seq", "prev", "hash"}} for r in records]
    fields[1]["decision"] = "deny"
    prev, forged = GENESIS, []
    for seq, f in enumerate(fields, start=1):
        if f["type"] == "checkpoint":
            f["head"] = prev
        line, prev = seal(f, seq, prev)
        forged.append(line)
    path.write_bytes(b"".join(forged))
    assert verify([path]).ok  # the chain alone is fooled
    forged_result = verify([path], keys)
    assert not forged_result.ok
    assert "bad signature" in (forged_result.problem or "")


async def test_checkpoint_from_an_unknown_key_is_refused(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path / "secrets.json")
    other = LocalSecretStore(tmp_path / "other.json")
    signer = await signing.load_signer(store, create=True)
    await signing.load_signer(other, create=True)
    path = tmp_path / "audit.jsonl"
    await write(path, [event(1)], signer=signer)
    result = verify([path], await signing.public_keys(other))
    assert "unknown key" in (result.problem or "")


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
    assert trail.reserve()
    trail.record(event(1), reserved=True)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if not trail.accepting:
            break
    assert not trail.accepting  # fail closed while the sink fails
    assert not trail.reserve()
    trail.record(event(2), reserved=False)  # a refused request's record still gets room
    await asyncio.wait_for(trail.drain(), timeout=5)
    writer.cancel()
    assert [orjson.loads(line)["request_id"] for line in sink.lines] == [
        "req-00000001",
        "req-00000002",
    ]


async def test_admitted_requests_keep_their_slot_when_refusals_fill_the_queue() -> None:
    # The reviewer's case: the sink fails while requests are in flight; the 503s it causes
    # must not push the in-flight requests' records out.
    trail = AuditTrail(FlakySink(failures=1_000_000), queue_size=4)
    admitted = [trail.reserve() for _ in range(3)]
    assert admitted == [True, True, True]
    for i in range(10):  # refusals: only the one free slot is theirs
        trail.record(event(100 + i), reserved=False)
    assert trail.lost == 9
    for i in range(3):
        trail.record(event(i), reserved=True)
    assert trail.depth == 4
    assert not trail.accepting


def test_partial_write_is_cut_back_and_retried_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path)
    line1, h1 = seal({"type": "request", "n": 1}, 1, GENESIS)
    sink.write([line1])
    size = path.stat().st_size
    line2, _ = seal({"type": "request", "n": 2, "pad": "x" * 5000}, 2, h1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = __import__("signal").signal(__import__("signal").SIGXFSZ, __import__("signal").SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 1000, hard))
        with pytest.raises(OSError):
            sink.write([line2])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        __import__("signal").signal(__import__("signal").SIGXFSZ, old)
    assert path.stat().st_size == size  # no half record left behind
    sink.write([line2])
    sink.close()
    assert verify([path]).records == 2


def test_a_torn_last_record_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    line, _ = seal({"type": "request"}, 1, GENESIS)
    path.write_bytes(line + line[:20])
    with pytest.raises(AuditTrailError, match="partial"):
        FileSink(path).tail()


async def signed_trail(tmp_path: Path, n: int = 9, every: int = 3) -> tuple[Path, dict[str, Any]]:
    store = LocalSecretStore(tmp_path / "secrets.json")
    signer = await signing.load_signer(store, create=True)
    path = tmp_path / "audit.jsonl"
    await write(path, [event(i) for i in range(n)], signer=signer, checkpoint_every=every)
    return path, await signing.public_keys(store)


def rechain(path: Path, keep: Any) -> None:
    """Rewrite the trail keeping some records, recomputing every hash (a capable attacker)."""
    records = [r for r in lines_of(path) if keep(r)]
    prev, out = GENESIS, []
    for seq, r in enumerate(records, start=1):
        fields = {k: v for k, v in r.items() if k not in {"seq", "prev", "hash"}}
        line, prev = seal(fields, seq, prev)
        out.append(line)
    path.write_bytes(b"".join(out))


async def test_removing_checkpoints_after_an_edit_is_detected(tmp_path: Path) -> None:
    path, keys = await signed_trail(tmp_path)
    assert verify([path], keys).ok
    rechain(path, lambda r: r["type"] == "request")  # drop every checkpoint, re-chain
    assert verify([path]).ok  # the chain alone is fooled
    result = verify([path], keys)
    assert not result.ok and "no signed checkpoint" in (result.problem or "")
    # A live trail younger than one cadence is fine when the cadence is given...
    assert verify([path], keys, max_unsigned=1000).ok
    # ...but not one with more unsigned records than the cadence allows.
    assert not verify([path], keys, max_unsigned=3).ok


async def test_removing_the_later_checkpoints_is_detected_by_the_signed_cadence(
    tmp_path: Path,
) -> None:
    path, keys = await signed_trail(tmp_path, n=12, every=3)
    first_checkpoint = next(r["seq"] for r in lines_of(path) if r["type"] == "checkpoint")
    rechain(path, lambda r: r["type"] == "request" or r["seq"] == first_checkpoint)
    result = verify([path], keys)
    assert not result.ok and "cadence" in (result.problem or "")


async def test_an_empty_trail_does_not_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    assert "no records" in (verify([path]).problem or "")


async def test_a_line_with_a_duplicated_key_is_not_in_sealed_form(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write(path, [event(1)])
    line = path.read_bytes().rstrip(b"\n")
    # A second "subject" that JSON parsers keep and grep-style readers see first.
    forged = line.replace(b'{"bytes_in"', b'{"subject":"mallory","bytes_in"', 1)
    path.write_bytes(forged + b"\n")
    assert "sealed form" in (verify([path]).problem or "")


async def test_a_disabled_signing_key_is_not_trusted(tmp_path: Path) -> None:
    path, _ = await signed_trail(tmp_path)
    store = LocalSecretStore(tmp_path / "secrets.json")
    version = (await store.versions(signing.SECRET_NAME))[0]
    await store.update(signing.SECRET_NAME, version.version, enabled=False)
    result = verify([path], await signing.public_keys(store))
    assert not result.ok and "unknown key" in (result.problem or "")


def test_a_rotation_that_fails_half_way_recovers_on_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from gateway.audit import sinks as audit_module

    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, rotate_bytes=4096)
    prev, seq = GENESIS, 0
    lines = []
    for _ in range(3):
        seq += 1
        line, prev = seal({"type": "request", "pad": "x" * 1500}, seq, prev)
        lines.append(line)
    sink.write(lines[:2])
    real_open = os.open
    calls = {"n": 0}

    def flaky_open(*args: Any, **kwargs: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(audit_module.os, "open", flaky_open)
    with pytest.raises(OSError):
        sink.write(lines[2:])  # rotation: the rename happened, the new file could not open
    sink.write(lines[2:])  # the retry repairs and writes
    sink.close()
    assert verify([tmp_path]).records == 3


class CountingSink(FileSink):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[int] = []

    def write(self, lines: list[bytes]) -> None:
        self.writes.append(len(lines))
        super().write(lines)


@pytest.mark.parametrize(("linger_s", "most_writes"), [(0.2, 1), (0.0, 20)])
async def test_records_arriving_within_the_linger_share_one_write(
    tmp_path: Path, linger_s: float, most_writes: int
) -> None:
    # The writer waits `linger_s` after a record for the ones that follow, so a burst costs
    # one hand-off to the writer thread; without linger each may be written on its own.
    sink = CountingSink(tmp_path / "audit.jsonl")
    trail = AuditTrail(sink, queue_size=100, linger_s=linger_s)
    writer = asyncio.create_task(trail.run())
    for i in range(20):
        assert trail.reserve()
        trail.record(event(i), reserved=True)
        await asyncio.sleep(0.002)  # requests ending one after another, not all at once
    await trail.drain()
    writer.cancel()
    trail.close()
    assert sum(sink.writes) == 20
    assert len(sink.writes) <= most_writes
    if linger_s:
        assert sink.writes == [20]
    else:
        assert len(sink.writes) > 1  # the same burst without linger: several writes
    assert verify([sink.path]).records == 20


def test_timestamps_are_iso_utc_with_milliseconds_and_current() -> None:
    import datetime as dt
    import re

    from gateway.audit.record import utc_timestamp

    for _ in range(3):
        stamp = utc_timestamp()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
        parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 0.5
        time.sleep(0.6)  # across a second boundary: the cached prefix is renewed


async def test_a_field_json_cannot_encode_is_sealed_replaced_and_flagged(tmp_path: Path) -> None:
    """A lone UTF-16 surrogate in a claim: before, the encoder raised inside the writer."""
    path = tmp_path / "audit.jsonl"
    audit = await write(path, [event(1, subject="a\ud800b"), event(2)])
    first, second = lines_of(path)[:2]
    assert first["subject"] == "a\ufffdb" and first["sanitized"] is True
    assert "sanitized" not in second
    assert verify([path]).ok and audit.lost == 0


async def test_the_answer_waits_until_its_record_is_in_the_sink(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditTrail(FileSink(path), queue_size=10)
    assert audit.reserve()
    written = audit.record(event(1), reserved=True)
    assert written is not None and not written.done() and not lines_of(path)
    writer = asyncio.create_task(audit.run())
    await asyncio.wait_for(written, 5)
    assert [r["request_id"] for r in lines_of(path)] == ["req-00000001"]  # there first
    writer.cancel()
    audit.close()


async def test_health_probes_are_counted_into_one_record_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditTrail(FileSink(path), queue_size=10, checkpoint_interval_s=0.2)
    writer = asyncio.create_task(audit.run())
    for _ in range(500):
        audit.count_probe("live", 200)
    audit.count_probe("ready", 503)
    await asyncio.sleep(0.5)  # idle otherwise: the summary comes when the interval passes
    (summary,) = lines_of(path)
    assert summary["type"] == "probes"
    assert summary["counts"] == {"live 200": 500, "ready 503": 1}
    writer.cancel()
    audit.close()


async def test_a_writer_fault_loses_no_answer_and_repeated_faults_stop_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Supervised: a batch the writer cannot seal (a bug) is reported by request id and
    its answers still go out; five in a minute stop the writer (the replica is not live)."""
    import gateway.audit.trail as trail_module

    audit = AuditTrail(FileSink(tmp_path / "audit.jsonl"), queue_size=100)
    writer = asyncio.create_task(audit.run())

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(trail_module, "seal", broken)
    for i in range(5):
        assert audit.reserve()
        written = audit.record(event(i), reserved=True)
        assert written is not None
        await asyncio.wait_for(written, 5)  # the answer is not held forever
    assert audit.lost == 5
    await asyncio.wait([writer], timeout=5)  # the fifth fault ends the writer task
    assert writer.done() and isinstance(writer.exception(), RuntimeError)
    audit.close()
