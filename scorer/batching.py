"""Dynamic batching: concurrent requests for one model share one forward pass.

    submit(rows) ──► queue (bounded) ──► gather while more requests are on their way,
                                          until max_batch_size rows or max_delay
                 ◄── its own slice  ◄──── one forward pass in the model's thread

A GPU (or a CPU's vector units) does far more work per second on a batch than on one
row at a time; clients still send one image each, as the reference architecture's did.

- A batch waits for company only when it can come: while other requests for the model
  are still being decoded (``expecting``), for at most ``max_delay`` after the oldest
  arrived. A lone client is never delayed; under load, the requests that arrive while a
  forward pass runs form the next batch.
- Requests are never split: a batch takes whole requests from the front of the queue
  while their rows fit (a request larger than ``max_batch_size`` runs alone).
- Only requests whose rows have the same trailing shape and dtype are stacked together.
- One forward pass at a time per model, in a dedicated thread, so the event loop keeps
  accepting requests and the device is not oversubscribed; while it runs, the next batch
  gathers.
- Errors stay per request: when a batched forward fails, each of its requests is run
  alone, so only the one that fails gets the error.
- The queue is bounded (OWASP API4): when ``max_queue`` requests wait, a new one is
  refused at once with 503 instead of waiting without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from scorer.errors import InternalError, Overloaded, ScorerError
from scorer.repository import BatchingSpec

log = logging.getLogger("scorer.batching")

Array = np.ndarray[Any, Any]
Outputs = dict[str, Array]
Predict = Callable[[Array, tuple[str, ...]], Outputs]


class Scheduler(Protocol):
    """How a model's predictions are run: one call per request, or batched."""

    def expecting(self) -> AbstractContextManager[None]:
        """Around a request's decoding: a batch may wait for it."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def run(self, rows: Array, outputs: tuple[str, ...]) -> Outputs: ...

    def run_now(self, rows: Array, outputs: tuple[str, ...]) -> Outputs | None:
        """The prediction run at once, on the event loop, when this scheduler would run
        it there anyway; None when it has to be awaited with ``run``."""
        ...


class BatchMetrics:
    """Prometheus series for the batchers of one scorer process (its own registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        rows = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
        seconds = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
        self.batch_rows = Histogram(
            "scoregate_scorer_batch_rows",
            "Rows per forward pass",
            ["model"],
            buckets=rows,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "scoregate_scorer_batch_requests",
            "Requests per forward pass",
            ["model"],
            buckets=rows,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "scoregate_scorer_queue_seconds",
            "Time a request waited before its forward pass started",
            ["model"],
            buckets=seconds,
            registry=registry,
        )
        self.forward_seconds = Histogram(
            "scoregate_scorer_forward_seconds",
            "Duration of one forward pass",
            ["model"],
            buckets=seconds,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "scoregate_scorer_queue_depth", "Requests waiting", ["model"], registry=registry
        )
        self.rejected = Counter(
            "scoregate_scorer_rejected",
            "Requests refused before running",
            ["model", "reason"],
            registry=registry,
        )


class Unbatched:
    """One prediction per request (the scikit-learn models).

    A prediction runs in a worker thread, so a slow model never stalls the event loop;
    but handing a request to a thread and back costs more CPU than many small models
    take to predict. Predictions that this model has shown to take at most
    ``inline_budget_s`` (its measured time per row, times the rows asked for) run on the
    event loop instead; the estimate follows every prediction, so a model that turns out
    slower goes back to the thread.
    """

    def __init__(self, predict: Predict, *, inline_budget_s: float = 0.0) -> None:
        self._predict = predict
        self._budget_s = inline_budget_s
        self._per_row_s: float | None = None  # until measured, the thread

    def expecting(self) -> AbstractContextManager[None]:
        return nullcontext()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _observe(self, seconds: float, rows: int) -> None:
        per_row = seconds / max(1, rows)
        last = self._per_row_s
        # A moving average: a model that turns slow leaves the loop within a call or two.
        self._per_row_s = per_row if last is None else 0.7 * last + 0.3 * per_row

    def run_now(self, rows: Array, outputs: tuple[str, ...]) -> Outputs | None:
        estimate = self._per_row_s
        if estimate is None or estimate * len(rows) > self._budget_s:
            return None
        result, seconds = self._timed(rows, outputs)  # cheaper than a thread hand-off
        self._observe(seconds, len(rows))
        return result

    async def run(self, rows: Array, outputs: tuple[str, ...]) -> Outputs:
        now = self.run_now(rows, outputs)
        if now is not None:
            return now
        # Blocking model code runs in a thread: the loop stays free for other requests.
        result, seconds = await asyncio.to_thread(self._timed, rows, outputs)
        self._observe(seconds, len(rows))
        return result

    def _timed(self, rows: Array, outputs: tuple[str, ...]) -> tuple[Outputs, float]:
        # The CPU time of this thread: what the prediction would hold the loop for. A
        # wall clock in a worker thread would also count its waits for the GIL, which the
        # busy event loop holds, and keep a cheap model in the thread for ever.
        started = time.thread_time()
        result = self._predict(rows, outputs)
        return result, time.thread_time() - started


@dataclass(eq=False)
class _Pending:
    rows: Array
    outputs: tuple[str, ...]
    future: asyncio.Future[Outputs]
    enqueued: float = field(default_factory=time.monotonic)

    def stacks_with(self, other: _Pending) -> bool:
        same_shape: bool = self.rows.shape[1:] == other.rows.shape[1:]
        return same_shape and self.rows.dtype == other.rows.dtype


class DynamicBatcher:
    """Gathers concurrent requests for one model into batched forward passes."""

    def __init__(
        self,
        name: str,
        predict: Predict,
        spec: BatchingSpec,
        metrics: BatchMetrics,
    ) -> None:
        self.name = name
        self._predict = predict
        self._spec = spec
        self._max_delay_s = spec.max_delay_ms / 1000
        self._metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._incoming = 0  # requests being decoded, which will join the queue soon
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")

    @contextmanager
    def expecting(self) -> Iterator[None]:
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            self._arrived.set()  # queued or failed: either way the gatherer re-decides

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Refuse new requests, finish the queued ones, then stop the thread."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def run_now(self, rows: Array, outputs: tuple[str, ...]) -> Outputs | None:
        return None  # always through the queue and the model's thread

    async def run(self, rows: Array, outputs: tuple[str, ...]) -> Outputs:
        if self._closing:
            self._metrics.rejected.labels(self.name, "stopping").inc()
            raise Overloaded("the scorer is shutting down")
        if len(self._queue) >= self._spec.max_queue:
            self._metrics.rejected.labels(self.name, "queue_full").inc()
            raise Overloaded(f"model {self.name!r} has {self._spec.max_queue} requests waiting")
        pending = _Pending(rows, outputs, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._metrics.queue_depth.labels(self.name).set(len(self._queue))
        self._arrived.set()
        return await pending.future

    async def _loop(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._queue:
                await self._gather()
                batch = self._take()
                if batch:
                    await self._run_batch(batch)
            if self._closing and not self._queue:
                return

    def _queued_rows(self) -> int:
        return sum(p.rows.shape[0] for p in self._queue)

    async def _gather(self) -> None:
        """Wait for requests on their way, until a batch is full or the delay is spent."""
        deadline = self._queue[0].enqueued + self._max_delay_s
        while not self._closing and self._queued_rows() < self._spec.max_batch_size:
            if self._incoming == 0:
                return  # nobody else is coming: waiting would only add latency
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        """Whole requests from the front of the queue, while their rows fit and stack."""
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # the client went away (cancelled): skip it
                self._queue.popleft()
                continue
            size = head.rows.shape[0]
            if batch and (
                rows + size > self._spec.max_batch_size or not head.stacks_with(batch[0])
            ):
                break
            batch.append(self._queue.popleft())
            rows += size
        self._metrics.queue_depth.labels(self.name).set(len(self._queue))
        return batch

    async def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        for pending in batch:
            self._metrics.queue_seconds.labels(self.name).observe(started - pending.enqueued)
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, self._forward, batch)
        self._metrics.forward_seconds.labels(self.name).observe(time.monotonic() - started)
        self._metrics.batch_requests.labels(self.name).observe(len(batch))
        self._metrics.batch_rows.labels(self.name).observe(sum(p.rows.shape[0] for p in batch))
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    def _forward(self, batch: list[_Pending]) -> list[Outputs | BaseException]:
        """Runs in the model's thread: one forward pass, split back per request."""
        if len(batch) == 1:
            return [self._one(batch[0])]
        names = tuple(dict.fromkeys(name for p in batch for name in p.outputs))
        try:
            combined = self._predict(np.concatenate([p.rows for p in batch]), names)
        except Exception:
            # One bad request must not fail its neighbours: run each alone.
            log.warning("batched forward of %s failed; retrying its requests one by one", self.name)
            return [self._one(p) for p in batch]
        results: list[Outputs | BaseException] = []
        start = 0
        for pending in batch:
            end = start + pending.rows.shape[0]
            results.append({name: combined[name][start:end] for name in pending.outputs})
            start = end
        return results

    def _one(self, pending: _Pending) -> Outputs | BaseException:
        try:
            return self._predict(pending.rows, pending.outputs)
        except ScorerError as exc:
            return exc
        except Exception:
            log.exception("forward pass of %s failed", self.name)
            return InternalError()
