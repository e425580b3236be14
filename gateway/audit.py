"""The audit trail: one hash-chained JSON line per request, written off the hot path.

    request handler ──record()──▶ bounded queue ──writer task──▶ sink (file or stdout)
                                                       └─ every N records / T seconds:
                                                          a signed checkpoint record

Each record carries ``seq`` and ``prev`` (the previous record's hash) and its own
``hash`` = SHA-256 of its canonical JSON without ``hash``; deleting, editing or
reordering a record breaks the chain at that place. The chain continues across file
rotations and restarts. Checkpoints sign (Ed25519) the head of the chain, so a reviewer
holding the public key can prove that a range is complete and unedited, even against
someone able to rewrite the file and recompute every hash (`gateway.auditlog.verify`).

Records hold ids and digests only: never a token, key, secret or payload (OWASP Logging
cheat sheet, "data to exclude"). JSON encoding escapes control characters, so hostile
strings cannot split or forge lines (OWASP: log injection).

Policy when the trail cannot keep up or the sink fails: fail closed. `accepting` turns
false, the gateway answers 503 to new requests, and the writer retries the failed batch
until the sink takes it, so nothing already queued is lost. Shutdown drains the queue
and writes a last checkpoint.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import orjson

from gateway.auditsign import CheckpointSigner

log = logging.getLogger("gateway.audit")
GENESIS = "0" * 64
NODE = socket.gethostname()[:64]
_RETRY_S = 0.5
_BATCH = 512


@dataclass(slots=True)
class AuditEvent:
    """What the request path knows about one request when it ends."""

    time: str
    request_id: str
    client_request_id: str | None
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
    instances: int | None = None
    limiter: str | None = None  # which counter decided: memory, shared, memory-fallback, open
    type: str = "request"
    node: str = NODE


_EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))


def event_fields(event: AuditEvent) -> dict[str, Any]:
    """The record's fields (all scalars: no deep copy, unlike `dataclasses.asdict`)."""
    return {name: getattr(event, name) for name in _EVENT_FIELDS}


class AuditTrailError(Exception):
    """The trail on disk cannot be continued safely; the gateway refuses to start."""


def canonical(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def seal(fields: dict[str, Any], seq: int, prev: str) -> tuple[bytes, str]:
    """The record's line (with ``seq``, ``prev`` and ``hash``) and its hash."""
    record = {**fields, "seq": seq, "prev": prev}
    digest = hashlib.sha256(canonical(record)).hexdigest()
    record["hash"] = digest
    return canonical(record) + b"\n", digest


_second: tuple[int, str] = (-1, "")


def utc_timestamp() -> str:
    """Now, as ISO 8601 UTC with milliseconds (``2026-11-26T11:04:11.123Z``).

    Written once per request: the part up to the second is formatted once per second.
    """
    global _second
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second = (second, dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"


class AuditSink(Protocol):
    def tail(self) -> tuple[int, str]:
        """The last sealed record's (seq, hash), to continue the chain after a restart."""
        ...

    def write(self, lines: list[bytes]) -> None:
        """Persist the lines in order, or raise OSError. Called from a worker thread."""
        ...

    def close(self) -> None: ...


def rotated_name(last_seq: int) -> str:
    """Rotated files sort by name in chain order; the live file is always ``audit.jsonl``."""
    return f"audit-{last_seq:012d}.jsonl"


def chain_files(directory: Path) -> list[Path]:
    """A trail directory's files in chain order: rotated ones, then the live one."""
    files = sorted(directory.glob("audit-*.jsonl"))
    live = directory / "audit.jsonl"
    return [*files, live] if live.exists() else files


class FileSink:
    """Append-only JSON lines in a 0700 directory, files 0600, rotated by size or age.

    The chain runs on across rotations: the first record of a new file points at the last
    record of the previous one.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = False,
        rotate_bytes: int = 64 * 1024 * 1024,
        rotate_interval_s: float = 86_400.0,
    ) -> None:
        self.path = path
        self._fsync = fsync
        self._rotate_bytes = rotate_bytes
        self._rotate_interval_s = rotate_interval_s
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._opened = time.monotonic()

    def tail(self) -> tuple[int, str]:
        for path in reversed(chain_files(self.path.parent)):
            last = _last_line(path)
            if last is not None:
                try:
                    record = orjson.loads(last)
                    return int(record["seq"]), str(record["hash"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise AuditTrailError(
                        f"{path} ends with a partial or foreign record; inspect it with "
                        "`scoregate audit verify` before the gateway appends to it"
                    ) from None
        return 0, GENESIS

    def _rotate(self) -> None:
        """Rename the live file aside and start a new one; safe to retry after any failure.

        The new file is opened before the old descriptor is closed, so a failure at any step
        leaves a usable descriptor and a state the next write can repair.
        """
        last = _last_line(self.path) if self.path.exists() else None
        if last is None:
            return
        os.replace(self.path, self.path.with_name(rotated_name(int(orjson.loads(last)["seq"]))))
        old = self._fd
        self._open()
        os.close(old)

    def write(self, lines: list[bytes]) -> None:
        data = memoryview(b"".join(lines))
        if not self.path.exists():  # moved aside by a rotation that failed half-way
            old = self._fd
            self._open()
            os.close(old)
        too_big = self._size and self._size + len(data) > self._rotate_bytes
        too_old = self._size and time.monotonic() - self._opened > self._rotate_interval_s
        if too_big or too_old:
            self._rotate()
        try:
            while data:  # os.write may write less than asked (a full disk, a size limit)
                data = data[os.write(self._fd, data) :]
            if self._fsync:
                os.fsync(self._fd)
        except OSError:
            # Cut back to the last whole record so the retry does not glue onto half a line.
            os.ftruncate(self._fd, self._size)
            raise
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        os.close(self._fd)


class StdoutSink:
    """JSON lines on standard output, for AKS → Container Insights → Log Analytics.

    Each process starts its own chain (``prev`` = genesis); ``node`` tells replicas apart.
    """

    def tail(self) -> tuple[int, str]:
        return 0, GENESIS

    def write(self, lines: list[bytes]) -> None:
        sys.stdout.buffer.write(b"".join(lines))
        sys.stdout.buffer.flush()

    def close(self) -> None:
        sys.stdout.buffer.flush()


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
    def __init__(
        self,
        sink: AuditSink,
        *,
        queue_size: int,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 60.0,
        linger_s: float = 0.0,
    ) -> None:
        self._sink = sink
        self._linger_s = linger_s
        # Capacity is counted here, not by the queue: a request admitted while the trail
        # accepted holds a reserved slot, so its record always fits when it ends.
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue()
        self._capacity = queue_size
        self._reserved = 0
        self._seq, self._prev = sink.tail()
        self.signer = signer
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval_s = checkpoint_interval_s
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._sink_ok = True
        self._closing = False
        self.lost = 0
        self.written = 0

    def _free(self) -> int:
        return self._capacity - self._queue.qsize() - self._reserved

    @property
    def accepting(self) -> bool:
        """False when the queue is full, the sink is failing or the trail is shutting down."""
        return self._sink_ok and not self._closing and self._free() > 0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def reserve(self) -> bool:
        """Admit a request: True, with a slot held for its record, when the trail accepts."""
        if not self.accepting:
            return False
        self._reserved += 1
        return True

    def release(self) -> None:
        self._reserved -= 1

    def record(self, event: AuditEvent, *, reserved: bool) -> None:
        """Queue a record. A reserved one always fits; an unreserved one (a request refused
        because the trail was failing) takes free room or is counted and logged loudly."""
        if reserved:
            self._reserved -= 1
        elif self._free() <= 0:
            self.lost += 1
            log.error(
                "audit queue full: record for refused request %s not written", event.request_id
            )
            return
        self._queue.put_nowait(event)

    def _seal_batch(
        self, events: list[AuditEvent], *, force_checkpoint: bool = False
    ) -> tuple[list[bytes], int, str, int, bool]:
        """The batch's sealed lines with any checkpoints due; the chain state after them."""
        seq, prev, since, lines = self._seq, self._prev, self._since_checkpoint, []
        signed = False

        def checkpoint() -> None:
            nonlocal seq, prev, since, signed
            assert self.signer is not None  # noqa: S101 - callers checked
            fields = self.signer.checkpoint(
                time=utc_timestamp(),
                node=NODE,
                from_seq=seq - since + 1,
                to_seq=seq,
                head=prev,
                every=self._checkpoint_every,
            )
            seq += 1
            line, prev = seal(fields, seq, prev)
            lines.append(line)
            since = 0
            signed = True

        for event in events:
            seq += 1
            line, prev = seal(event_fields(event), seq, prev)
            lines.append(line)
            since += 1
            if self.signer is not None and since >= self._checkpoint_every:
                checkpoint()
        overdue = time.monotonic() - self._last_checkpoint >= self._checkpoint_interval_s
        if self.signer is not None and since and (force_checkpoint or overdue):
            checkpoint()
        return lines, seq, prev, since, signed

    async def _write(self, lines: list[bytes]) -> None:
        while True:
            try:
                # File writes block: they go to a thread so the loop keeps serving.
                await asyncio.to_thread(self._sink.write, lines)
            except Exception as exc:  # any sink fault: full disk, closed pipe, bug
                self._sink_ok = False
                log.error("audit sink failed, failing closed and retrying: %r", exc)
                await asyncio.sleep(_RETRY_S)
                continue
            self._sink_ok = True
            return

    async def _flush(self, events: list[AuditEvent], *, force_checkpoint: bool = False) -> None:
        lines, seq, prev, since, signed = self._seal_batch(
            events, force_checkpoint=force_checkpoint
        )
        if not lines:
            return
        await self._write(lines)
        if signed:
            self._last_checkpoint = time.monotonic()
        self._seq, self._prev, self._since_checkpoint = seq, prev, since
        self.written += len(events)

    async def run(self) -> None:
        """The writer: batch what is queued (waiting up to ``linger_s`` for more), seal it,
        hand it to the sink in a thread."""
        while True:
            timeout = None
            if self.signer is not None and self._since_checkpoint:
                timeout = max(
                    0.0, self._checkpoint_interval_s - (time.monotonic() - self._last_checkpoint)
                )
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=timeout)
            except TimeoutError:
                await self._flush([], force_checkpoint=True)  # an idle trail still gets signed
                continue
            if self._linger_s and self._queue.qsize() < _BATCH:
                # Gather the records that arrive meanwhile: one hand-off to the writer
                # thread per batch instead of one per request (`make bench-profile`).
                await asyncio.sleep(self._linger_s)
            events = [first]
            while len(events) < _BATCH and not self._queue.empty():
                events.append(self._queue.get_nowait())
            await self._flush(events)
            for _ in events:
                self._queue.task_done()

    async def drain(self) -> None:
        """Stop accepting, wait until every queued record is written, sign the head."""
        self._closing = True
        await self._queue.join()
        await self._flush([], force_checkpoint=True)

    def close(self) -> None:
        self._sink.close()
