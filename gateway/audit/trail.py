"""The audit trail's writer: one hash-chained JSON line per request, off the hot path.

    request handler ──record()──▶ bounded queue ──writer task──▶ sink (gateway.audit.sinks)
                                                       └─ every N records / T seconds:
                                                          a signed checkpoint record

Each record carries ``seq`` and ``prev`` (the previous record's hash) and its own
``hash`` = SHA-256 of its canonical JSON without ``hash``; deleting, editing or
reordering a record breaks the chain at that place. The chain continues across file
rotations and restarts. Checkpoints sign (Ed25519) the head of the chain, so a reviewer
holding the public key can prove that a range is complete and unedited, even against
someone able to rewrite the file and recompute every hash (`gateway.audit.review.verify`).

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
import logging
import time

from gateway.audit.record import NODE, AuditEvent, event_fields, seal, utc_timestamp
from gateway.audit.signing import CheckpointSigner
from gateway.audit.sinks import AuditSink

log = logging.getLogger("gateway.audit")
_RETRY_S = 0.5
_BATCH = 512


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
