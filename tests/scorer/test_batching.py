"""Dynamic batching: batches form under concurrency, results are exactly the unbatched
ones, order is kept, errors stay with their request, and the queue is bounded."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from scorer.batching import BatchMetrics, DynamicBatcher
from scorer.errors import InternalError, InvalidInput, Overloaded
from scorer.repository import BatchingSpec

Array = np.ndarray[Any, Any]


class Recorder:
    """A stand-in model: output = 2 * input + 1, and it records every batch it ran."""

    def __init__(self, fail_on: float | None = None, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.fail_on = fail_on
        self.gate = gate

    def __call__(self, rows: Array, outputs: tuple[str, ...]) -> dict[str, Array]:
        if self.gate is not None:
            assert self.gate.wait(10)
        self.batches.append(rows.shape[0])
        if self.fail_on is not None and (rows == self.fail_on).any():
            raise ValueError("this model cannot take that value")
        if (rows == -1).any():
            raise InvalidInput("a typed error the model raised")
        result = {"double": rows * 2 + 1, "sum": rows.sum(axis=tuple(range(1, rows.ndim)))}
        return {name: result[name] for name in outputs}


def batcher(
    model: Recorder, registry: CollectorRegistry | None = None, **spec: Any
) -> DynamicBatcher:
    return DynamicBatcher(
        "m",
        model,
        BatchingSpec(**{"max_batch_size": 8, "max_delay_ms": 20, **spec}),
        BatchMetrics(registry or CollectorRegistry()),
    )


async def test_concurrent_requests_share_forward_passes_and_get_their_own_rows() -> None:
    model = Recorder()
    registry = CollectorRegistry()
    b = batcher(model, registry, max_batch_size=8)
    await b.start()
    rows = [np.full((1 + i % 3, 2), float(i)) for i in range(20)]
    results = await asyncio.gather(*(b.run(r, ("double",)) for r in rows))
    await b.stop()
    for r, out in zip(rows, results, strict=True):
        np.testing.assert_array_equal(out["double"], r * 2 + 1)
    assert max(model.batches) > 1
    assert len(model.batches) < len(rows)
    assert sum(model.batches) == sum(r.shape[0] for r in rows)
    assert all(size <= 8 for size in model.batches)
    assert registry.get_sample_value("scoregate_scorer_batch_rows_count", {"model": "m"}) == len(
        model.batches
    )
    assert registry.get_sample_value("scoregate_scorer_batch_rows_sum", {"model": "m"}) == sum(
        model.batches
    )


async def test_each_request_gets_only_the_outputs_it_asked_for() -> None:
    b = batcher(Recorder())
    await b.start()
    one, both = await asyncio.gather(
        b.run(np.ones((1, 2)), ("sum",)), b.run(np.ones((2, 2)), ("double", "sum"))
    )
    await b.stop()
    assert set(one) == {"sum"} and one["sum"].tolist() == [2.0]
    assert set(both) == {"double", "sum"} and both["sum"].tolist() == [2.0, 2.0]


async def test_a_request_whose_rows_break_the_model_fails_alone() -> None:
    model = Recorder(fail_on=13.0)
    b = batcher(model, max_batch_size=32, max_delay_ms=50)
    await b.start()
    rows = [np.full((1, 2), float(i)) for i in range(20)] + [np.full((1, 2), -1.0)]
    results = await asyncio.gather(*(b.run(r, ("double",)) for r in rows), return_exceptions=True)
    await b.stop()
    assert isinstance(results[13], InternalError)  # the model's own error: a generic 500
    assert isinstance(results[20], InvalidInput)  # a typed error keeps its status (422)
    for i, result in enumerate(results):
        if i not in (13, 20):
            assert isinstance(result, dict), (i, result)
            np.testing.assert_array_equal(result["double"], rows[i] * 2 + 1)
    assert max(model.batches) > 1


async def test_a_full_queue_is_refused_at_once_with_503() -> None:
    gate = threading.Event()
    registry = CollectorRegistry()
    b = batcher(Recorder(gate=gate), registry, max_batch_size=1, max_queue=2, max_delay_ms=0)
    await b.start()
    running = asyncio.create_task(b.run(np.ones((1, 2)), ("sum",)))
    await asyncio.sleep(0.05)  # the first request is in the model, the queue is empty
    queued = [asyncio.create_task(b.run(np.ones((1, 2)), ("sum",))) for _ in range(2)]
    await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        await b.run(np.ones((1, 2)), ("sum",))
    assert time.monotonic() - started < 0.5
    assert refused.value.status == 503
    gate.set()
    assert all(r["sum"].tolist() == [2.0] for r in await asyncio.gather(running, *queued))
    await b.stop()
    assert (
        registry.get_sample_value(
            "scoregate_scorer_rejected_total", {"model": "m", "reason": "queue_full"}
        )
        == 1
    )


async def test_a_batch_holds_at_most_max_batch_size_rows_and_never_splits_a_request() -> None:
    gate = threading.Event()
    model = Recorder(gate=gate)
    b = batcher(model, max_batch_size=4, max_delay_ms=0)
    await b.start()
    first = asyncio.create_task(b.run(np.ones((1, 1)), ("sum",)))
    await asyncio.sleep(0.05)
    sizes = [3, 2, 1, 1, 6, 1]  # queued while the first batch runs
    tasks = [asyncio.create_task(b.run(np.ones((n, 1)), ("sum",))) for n in sizes]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(first, *tasks)
    await b.stop()
    assert [len(r["sum"]) for r in results] == [1, *sizes]
    # [1] ran alone; then 3 (2 would exceed 4), 2+1+1, 6 alone (larger than a batch), 1.
    assert model.batches == [1, 3, 4, 6, 1]


async def test_a_lone_request_is_never_delayed() -> None:
    model = Recorder()
    b = batcher(model, max_batch_size=64, max_delay_ms=1000)
    await b.start()
    started = time.monotonic()
    await b.run(np.ones((1, 2)), ("sum",))
    waited = time.monotonic() - started
    await b.stop()
    assert waited < 0.5  # nobody else was on the way: no reason to wait the second
    assert model.batches == [1]


async def test_a_batch_waits_for_a_request_still_being_decoded() -> None:
    model = Recorder()
    b = batcher(model, max_batch_size=64, max_delay_ms=2000)
    await b.start()

    async def slow_decoder() -> dict[str, Array]:
        with b.expecting():
            await asyncio.sleep(0.1)  # reading and decoding its body
        return await b.run(np.full((1, 2), 2.0), ("sum",))

    decoding = asyncio.create_task(slow_decoder())
    await asyncio.sleep(0.01)
    first = await b.run(np.ones((1, 2)), ("sum",))
    second = await decoding
    await b.stop()
    assert (first["sum"].tolist(), second["sum"].tolist()) == ([2.0], [4.0])
    assert model.batches == [2]  # the first waited for the second, then one pass


async def test_waiting_for_company_ends_at_the_max_delay() -> None:
    model = Recorder()
    b = batcher(model, max_batch_size=64, max_delay_ms=60)
    await b.start()
    with b.expecting():  # a request that takes far longer to decode than the delay
        started = time.monotonic()
        await b.run(np.ones((1, 2)), ("sum",))
        waited = time.monotonic() - started
    await b.stop()
    assert 0.05 <= waited < 2.0
    assert model.batches == [1]


async def test_requests_of_different_shapes_are_never_stacked() -> None:
    model = Recorder()
    b = batcher(model, max_batch_size=16, max_delay_ms=30)
    await b.start()
    a, c = await asyncio.gather(b.run(np.ones((2, 3)), ("sum",)), b.run(np.ones((2, 5)), ("sum",)))
    await b.stop()
    assert a["sum"].tolist() == [3.0, 3.0] and c["sum"].tolist() == [5.0, 5.0]
    assert sorted(model.batches) == [2, 2]


async def test_stop_finishes_the_queued_requests_then_refuses_new_ones() -> None:
    gate = threading.Event()
    b = batcher(Recorder(gate=gate), max_batch_size=1, max_delay_ms=0)
    await b.start()
    tasks = [asyncio.create_task(b.run(np.full((1, 1), float(i)), ("sum",))) for i in range(5)]
    await asyncio.sleep(0.02)
    stopping = asyncio.create_task(b.stop())
    await asyncio.sleep(0.02)
    with pytest.raises(Overloaded):
        await b.run(np.ones((1, 1)), ("sum",))
    gate.set()
    await stopping
    assert [t.result()["sum"].tolist() for t in tasks] == [[float(i)] for i in range(5)]


async def test_a_cancelled_request_is_skipped_not_computed() -> None:
    gate = threading.Event()
    model = Recorder(gate=gate)
    b = batcher(model, max_batch_size=1, max_delay_ms=0)
    await b.start()
    first = asyncio.create_task(b.run(np.ones((1, 1)), ("sum",)))
    await asyncio.sleep(0.02)
    gone = asyncio.create_task(b.run(np.full((1, 1), 7.0), ("sum",)))
    kept = asyncio.create_task(b.run(np.full((1, 1), 8.0), ("sum",)))
    await asyncio.sleep(0.02)
    gone.cancel()
    gate.set()
    assert (await first)["sum"].tolist() == [1.0]
    assert (await kept)["sum"].tolist() == [8.0]
    await b.stop()
    assert model.batches == [1, 1]


class ThreadSpy:
    """A stand-in model that records which thread ran it and takes ``seconds`` per call."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.threads: list[bool] = []  # True when it ran on the event loop's thread

    def __call__(self, rows: Array, outputs: tuple[str, ...]) -> dict[str, Array]:
        self.threads.append(threading.current_thread() is threading.main_thread())
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:  # CPU work: what the scheduler measures
            pass
        return {"double": rows * 2 + 1}


async def test_unbatched_fast_predictions_move_onto_the_loop_slow_ones_stay_in_a_thread() -> None:
    from scorer.batching import Unbatched

    rows = np.ones((1, 4), dtype=np.float32)
    fast = ThreadSpy()
    scheduler = Unbatched(fast, inline_budget_s=0.005)
    for _ in range(4):
        assert (await scheduler.run(rows, ("double",)))["double"].tolist() == [[3.0] * 4]
    # Measured first in a thread, then cheaper than the hand-off: on the loop.
    assert fast.threads == [False, True, True, True]
    # The budget is per request: a large request from the same model goes to a thread.
    await scheduler.run(np.ones((100_000, 4), dtype=np.float32), ("double",))
    assert fast.threads[-1] is False
    slow = ThreadSpy(seconds=0.01)
    scheduler = Unbatched(slow, inline_budget_s=0.005)
    for _ in range(3):
        await scheduler.run(rows, ("double",))
    assert slow.threads == [False, False, False]


async def test_a_model_that_turns_slow_goes_back_to_the_thread_at_once() -> None:
    from scorer.batching import Unbatched

    rows = np.ones((1, 4), dtype=np.float32)
    model = ThreadSpy()
    scheduler = Unbatched(model, inline_budget_s=0.005)
    await scheduler.run(rows, ("double",))
    await scheduler.run(rows, ("double",))
    model.seconds = 0.02  # e.g. the machine is suddenly busy
    await scheduler.run(rows, ("double",))  # on the loop, measured slow
    model.seconds = 0.0
    await scheduler.run(rows, ("double",))
    assert model.threads == [False, True, True, False]


async def test_an_inline_budget_of_zero_always_uses_the_thread() -> None:
    from scorer.batching import Unbatched

    model = ThreadSpy()
    scheduler = Unbatched(model, inline_budget_s=0.0)
    for _ in range(3):
        await scheduler.run(np.ones((1, 4), dtype=np.float32), ("double",))
    assert model.threads == [False, False, False]


async def test_run_now_answers_only_what_would_run_on_the_loop() -> None:
    """The scoring path asks ``run_now`` first: an answer means the prediction ran inline
    (nothing left to await or to cancel); None means nothing ran, ``run`` follows."""
    from scorer.batching import Unbatched

    rows = np.ones((1, 4), dtype=np.float32)
    model = ThreadSpy()
    scheduler = Unbatched(model, inline_budget_s=0.005)
    assert scheduler.run_now(rows, ("double",)) is None  # not measured yet
    await scheduler.run(rows, ("double",))
    answer = scheduler.run_now(rows, ("double",))
    assert answer is not None and answer["double"].tolist() == [[3.0] * 4]
    assert model.threads == [False, True]
    assert scheduler.run_now(np.ones((100_000, 4), dtype=np.float32), ("double",)) is None
    assert model.threads == [False, True]  # over the budget: not run
    recorder = Recorder()
    assert batcher(recorder).run_now(rows, ("double",)) is None  # batches always queue
    assert recorder.batches == []
