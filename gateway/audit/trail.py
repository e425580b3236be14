"""The audit trail's writer: one hash-chained JSON line per request, off the hot path.

    request handler ──record()──▶ bounded queue ──writer task──▶ sink (gateway.audit.sinks)
          ▲                                            └─ every N records / T seconds:
          └── the answer leaves once its record is in the sink   a signed checkpoint

Write-ahead: `record` returns a future the request path awaits before it answers, so
every answer a process gave is in its sink even if the process is killed the next
instant (a file or spool write survives the process; a node's crash needs audit_fsync).
Records are still batched: while the writer thread writes one batch, the next gathers.

Each record carries ``seq`` and ``prev`` (the previous record's hash) and its own
``hash`` = SHA-256 of its canonical JSON without ``hash``; deleting, editing or
reordering a record breaks the chain at that place. The chain continues across file
rotations and restarts. Checkpoints sign (Ed25519) the head of the chain, so a reviewer
holding the public key can prove that a range is complete and unedited, even against
someone able to rewrite the file and recompute every hash (`gateway.audit.review.verify`).

Records hold ids and digests only: never a token, key, secret or payload (OWASP Logging
cheat sheet, "data to exclude"). JSON encoding escapes control characters, so hostile
strings cannot split or forge lines (OWASP: log injection).

Health probes are counted, not recorded one by one: anyone may call them, and a record
each would let anyone fill the trail (disk, Log Analytics cost). The writer adds one
``probes`` record per checkpoint interval with the counts by route and status.

The writer is supervised: a batch that fails for a reason no retry cures (a bug) is
logged with its request ids and the writer goes on; if that keeps happening it stops,
and the replica reports not live, so Kubernetes restarts it rather than leaving a
replica that answers 503 forever.

Policy when the trail cannot keep up or the sink fails: fail closed. `accepting` turns
false, the gateway answers 503 to new requests, and the writer retries the failed batch
until the sink takes it, so nothing already queued is lost. Shutdown drains the queue
and writes a last checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable

from gateway.audit.record import NODE, AuditEvent, event_fields, seal, utc_timestamp
from gateway.audit.signing import CheckpointSigner
from gateway.audit.sinks import AuditSink, ShippingSink

log = logging.getLogger("gateway.audit")
_RETRY_S = 0.5
_BATCH = 512
# Writer faults tolerated in a window before it stops and the replica reports not live.
_MAX_FAULTS = 5
_FAULT_WINDOW_S = 60.0


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
        self._probes: Counter[str] = Counter()
        self._probes_since = utc_timestamp()
        self._last_probe_summary = time.monotonic()
        self._faults: list[float] = []
        self._pending: dict[str, asyncio.Future[None]] = {}  # request id -> written

    @property
    def store(self) -> ShippingSink | None:
        """The sink when it ships to a store and needs its own task."""
        return self._sink if isinstance(self._sink, ShippingSink) else None

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

    def record(self, event: AuditEvent, *, reserved: bool) -> asyncio.Future[None] | None:
        """Queue a record. A reserved one always fits; an unreserved one (a request refused
        because the trail was failing) takes free room or is counted and logged loudly.

        The future completes once the sink holds the record: the request's answer waits
        for it (write-ahead), so a process killed at any moment has recorded every answer
        it gave."""
        if reserved:
            self._reserved -= 1
        elif self._free() <= 0:
            self.lost += 1
            log.error(
                "audit queue full: record for refused request %s not written", event.request_id
            )
            return None
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(event)
        self._pending[event.request_id] = written
        return written

    def _settle(self, events: list[AuditEvent]) -> None:
        for event in events:
            written = self._pending.pop(event.request_id, None)
            if written is not None and not written.done():
                written.set_result(None)

    def count_probe(self, route: str, status: int) -> None:
        """A health probe: counted into the next ``probes`` record, not recorded alone."""
        self._probes[f"{route} {status}"] += 1

    def _probe_summary(self) -> dict[str, object]:
        now = utc_timestamp()
        fields: dict[str, object] = {
            "type": "probes",
            "time": now,
            "node": NODE,
            "since": self._probes_since,
            "counts": dict(sorted(self._probes.items())),
        }
        self._probes.clear()
        self._probes_since = now
        self._last_probe_summary = time.monotonic()
        return fields

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
        probes_due = time.monotonic() - self._last_probe_summary >= self._checkpoint_interval_s
        if self._probes and (force_checkpoint or probes_due):
            seq += 1
            line, prev = seal(self._probe_summary(), seq, prev)
            lines.append(line)
            since += 1
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

    def _timeout(self) -> float | None:
        """How long the writer may wait for a record before a checkpoint or a probe
        summary is due (None: nothing is due)."""
        waits = []
        now = time.monotonic()
        if self.signer is not None and self._since_checkpoint:
            waits.append(self._checkpoint_interval_s - (now - self._last_checkpoint))
        if self._probes:
            waits.append(self._checkpoint_interval_s - (now - self._last_probe_summary))
        return max(0.0, min(waits)) if waits else None

    async def run(self) -> None:
        """The writer: batch what is queued (waiting up to ``linger_s`` for more), seal it,
        hand it to the sink in a thread. Supervised: see the module's docstring."""
        while True:
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=self._timeout())
            except TimeoutError:
                # An idle trail still gets signed and its probes counted.
                await self._supervised(self._flush([], force_checkpoint=True), [])
                continue
            if self._linger_s and self._queue.qsize() < _BATCH:
                # Gather the records that arrive meanwhile: one hand-off to the writer
                # thread per batch instead of one per request (`make bench-profile`).
                await asyncio.sleep(self._linger_s)
            events = [first]
            while len(events) < _BATCH and not self._queue.empty():
                events.append(self._queue.get_nowait())
            try:
                await self._supervised(self._flush(events), events)
            finally:
                # Written, or (a writer fault) reported as lost: their answers go out.
                self._settle(events)
                for _ in events:
                    self._queue.task_done()

    async def _supervised(self, flush: Awaitable[None], events: list[AuditEvent]) -> None:
        try:
            await flush
        except Exception:
            # Not a sink failure (those are retried inside _flush): a fault in the writer
            # itself. The batch is reported by request id, never silently dropped.
            self.lost += len(events)
            log.critical(
                "audit writer fault; %d records not written: %s",
                len(events),
                ", ".join(e.request_id for e in events) or "(checkpoint)",
                exc_info=True,
            )
            now = time.monotonic()
            self._faults = [t for t in self._faults if now - t < _FAULT_WINDOW_S] + [now]
            if len(self._faults) >= _MAX_FAULTS:
                log.critical("audit writer stopping after %d faults: not live", len(self._faults))
                # Nothing will write what is queued: no answer waits for it.
                for written in self._pending.values():
                    if not written.done():
                        written.set_result(None)
                self._pending.clear()
                raise

    async def drain(self) -> None:
        """Stop accepting, wait until every queued record is written, sign the head."""
        self._closing = True
        await self._queue.join()
        await self._flush([], force_checkpoint=True)

    def close(self) -> None:
        self._sink.close()
