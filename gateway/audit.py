"""The audit trail: one hash-chained JSON line per request, written off the hot path.

    request handler ──record()──▶ bounded queue ──writer task──▶ sink (file, JSON lines)

Each record carries ``seq`` and ``prev`` (the previous record's hash) and its own ``hash``
= SHA-256 of its canonical JSON without ``hash``; deleting, editing or reordering a record
breaks the chain at that place (`verify`). Records hold ids and digests only: never a
token, key, secret or payload (OWASP Logging cheat sheet, "data to exclude"). JSON
encoding escapes control characters, so hostile strings cannot split or forge lines
(OWASP: log injection).

Policy when the trail cannot keep up or the sink fails: fail closed. `accepting` turns
false, the gateway answers 503 to new requests, and the writer retries the failed batch
until the sink takes it, so nothing already queued is lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

log = logging.getLogger("gateway.audit")
GENESIS = "0" * 64
_RETRY_S = 0.5
_BATCH = 512


@dataclass(slots=True)
class AuditEvent:
    """What the request path knows about one request when it ends."""

    time: str
    request_id: str
    client: str
    method: str
    path: str
    route: str
    model: str | None
    subject: str | None
    credential: str | None
    key_id: str | None
    key_version: str | None
    decision: str  # "allow" | "deny"
    reason: str
    status: int
    latency_ms: float
    bytes_in: int
    bytes_out: int
    payload_sha256: str | None


def _canonical(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def seal(fields: dict[str, Any], seq: int, prev: str) -> tuple[bytes, str]:
    """The record's line (with ``seq``, ``prev`` and ``hash``) and its hash."""
    record = {**fields, "seq": seq, "prev": prev}
    digest = hashlib.sha256(_canonical(record)).hexdigest()
    record["hash"] = digest
    return _canonical(record) + b"\n", digest


class AuditSink(Protocol):
    def tail(self) -> tuple[int, str]:
        """The last sealed record's (seq, hash), to continue the chain after a restart."""
        ...

    def write(self, lines: list[bytes]) -> None:
        """Persist the lines in order, or raise OSError. Called from a worker thread."""
        ...

    def close(self) -> None: ...


class FileSink:
    """Append-only JSON lines file; directory 0700, file 0600."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self._fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab", buffering=0)

    def tail(self) -> tuple[int, str]:
        last = _last_line(self.path)
        if last is None:
            return 0, GENESIS
        record = orjson.loads(last)
        return int(record["seq"]), str(record["hash"])

    def write(self, lines: list[bytes]) -> None:
        self._file.write(b"".join(lines))
        if self._fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _last_line(path: Path) -> bytes | None:
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        if end == 0:
            return None
        block = min(end, 64 * 1024)
        fh.seek(end - block)
        lines = fh.read(block).rstrip(b"\n").split(b"\n")
        return lines[-1] if lines and lines[-1] else None


class AuditTrail:
    def __init__(self, sink: AuditSink, *, queue_size: int) -> None:
        self._sink = sink
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=queue_size)
        self._seq, self._prev = sink.tail()
        self._sink_ok = True
        self._closing = False
        self.lost = 0

    @property
    def accepting(self) -> bool:
        """False when the queue is full, the sink is failing or the trail is shutting down."""
        return self._sink_ok and not self._closing and not self._queue.full()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def record(self, event: AuditEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # Only reachable for the 503s that fail-closed produced: counted and logged
            # loudly with the request id, never silently.
            self.lost += 1
            log.error("audit queue full: record for request %s not written", event.request_id)

    def _seal_batch(self, events: Iterable[AuditEvent]) -> tuple[list[bytes], int, str]:
        seq, prev, lines = self._seq, self._prev, []
        for event in events:
            seq += 1
            line, prev = seal(asdict(event), seq, prev)
            lines.append(line)
        return lines, seq, prev

    async def run(self) -> None:
        """The writer: batch what is queued, seal it, hand it to the sink in a thread."""
        while True:
            events = [await self._queue.get()]
            while len(events) < _BATCH and not self._queue.empty():
                events.append(self._queue.get_nowait())
            lines, seq, prev = self._seal_batch(events)
            while True:
                try:
                    # File writes block: they go to a thread so the loop keeps serving.
                    await asyncio.to_thread(self._sink.write, lines)
                except OSError as exc:
                    self._sink_ok = False
                    log.error("audit sink failed, failing closed and retrying: %s", exc)
                    await asyncio.sleep(_RETRY_S)
                    continue
                break
            self._sink_ok = True
            self._seq, self._prev = seq, prev
            for _ in events:
                self._queue.task_done()

    async def drain(self) -> None:
        """Stop accepting and wait until every queued record is written."""
        self._closing = True
        await self._queue.join()

    def close(self) -> None:
        self._sink.close()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    line: int | None = None
    problem: str | None = None


def verify(paths: Iterable[Path]) -> VerifyResult:
    """Check the chain across files in order; report the first broken line."""
    prev, seq, count = None, None, 0
    for path in paths:
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                where = f"{path}:{lineno}"
                try:
                    record = orjson.loads(raw)
                    claimed = record.pop("hash")
                except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError):
                    return VerifyResult(False, count, lineno, f"{where}: not a sealed record")
                if hashlib.sha256(_canonical(record)).hexdigest() != claimed:
                    return VerifyResult(False, count, lineno, f"{where}: record was altered")
                if prev is not None and record.get("prev") != prev:
                    return VerifyResult(
                        False, count, lineno, f"{where}: chain broken (record missing or reordered)"
                    )
                if seq is not None and record.get("seq") != seq + 1:
                    return VerifyResult(
                        False,
                        count,
                        lineno,
                        f"{where}: sequence jumps from {seq} to {record.get('seq')}",
                    )
                prev, seq, count = claimed, record.get("seq"), count + 1
    return VerifyResult(True, count)


def utc_timestamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
