"""`WhileBusy`: what decodes together, with a fake model that takes its time."""

from __future__ import annotations

import asyncio

import pytest

from core.chunks import BACKGROUND, INTERACTIVE
from deployments.batching import WhileBusy


class SlowModel:
    """Doubles numbers, a batch at a time, logging each batch; `fail_on` makes a batch with it raise."""

    def __init__(self, seconds: float = 0.05, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.seconds, self.fail_on = seconds, fail_on

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise RuntimeError("out of memory")
        return [2 * i for i in items]


async def test_what_arrives_while_a_batch_runs_is_the_next_batch():
    model = SlowModel()
    queue = WhileBusy(model.run, max_size=8)
    first = asyncio.ensure_future(queue.submit([1]))
    await asyncio.sleep(0.01)  # the first batch is running
    later = [asyncio.ensure_future(queue.submit([n])) for n in range(2, 7)]
    assert await first == [2]
    assert [await call for call in later] == [[4], [6], [8], [10], [12]]
    assert model.batches == [[1], [2, 3, 4, 5, 6]]


async def test_batches_hold_at_most_max_size_in_arrival_order():
    model = SlowModel()
    queue = WhileBusy(model.run, max_size=3)
    assert await queue.submit(list(range(7))) == [0, 2, 4, 6, 8, 10, 12]
    assert model.batches == [[0, 1, 2], [3, 4, 5], [6]]


async def test_an_idle_queue_waits_for_company_before_it_starts():
    model = SlowModel()
    queue = WhileBusy(model.run, max_size=8, wait_s=0.05)
    first = asyncio.ensure_future(queue.submit([1]))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(queue.submit([2]))
    await asyncio.gather(first, second)
    assert model.batches == [[1, 2]]


async def test_a_failed_batch_hands_its_error_to_each_of_its_items_and_the_next_batch_runs():
    model = SlowModel(fail_on=3)
    queue = WhileBusy(model.run, max_size=2)
    results = await queue.submit([1, 3, 5])
    assert [type(r) for r in results[:2]] == [RuntimeError, RuntimeError] and results[2] == 10
    assert await queue.submit([7]) == [14], "the queue keeps serving"


async def test_items_of_a_cancelled_caller_are_not_decoded():
    model = SlowModel()
    queue = WhileBusy(model.run, max_size=8)
    first = asyncio.ensure_future(queue.submit([1]))
    await asyncio.sleep(0.01)
    gone = asyncio.ensure_future(queue.submit([2, 3]))
    kept = asyncio.ensure_future(queue.submit([4]))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await first == [2] and await kept == [8]
    assert model.batches == [[1], [4]]


# --- priority: interactive chunks ahead of background ones --------------------------------------------


class GatedModel:
    """Logs each batch and decodes it only when the test says so (`finish`), so that a test decides what
    arrives while a batch runs."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self._gates: list[asyncio.Event] = []

    async def run(self, items: list[str]) -> list[str]:
        self.batches.append(items)
        gate = asyncio.Event()
        self._gates.append(gate)
        await gate.wait()
        return [item.upper() for item in items]

    async def started(self, count: int) -> None:
        while len(self.batches) < count:
            await asyncio.sleep(0)

    def finish(self) -> None:
        self._gates[-1].set()


def rank(item: str) -> int:
    """'b…' items are background work, the others interactive."""
    return BACKGROUND if item.startswith("b") else INTERACTIVE


async def test_interactive_items_that_arrive_while_a_batch_runs_go_ahead_of_waiting_background_ones():
    model = GatedModel()
    queue = WhileBusy(model.run, max_size=4, priority=rank)
    job = asyncio.ensure_future(queue.submit([f"b{n}" for n in range(10)]))
    await model.started(1)  # b0-b3 decode; b4-b9 wait
    requests = [asyncio.ensure_future(queue.submit([f"i{n}", f"i{n}x"])) for n in range(3)]
    await asyncio.sleep(0)
    model.finish()
    await model.started(2)
    assert model.batches[1] == ["i0", "i0x", "i1", "i1x"], "interactive first, in arrival order, up to max_size"
    assert not requests[0].done(), "its batch is decoding"
    for count in (3, 4):
        model.finish()
        await model.started(count)
    model.finish()
    assert [await request for request in requests] == [["I0", "I0X"], ["I1", "I1X"], ["I2", "I2X"]]
    assert await job == [f"B{n}" for n in range(10)]
    assert model.batches[2:] == [["i2", "i2x", "b4", "b5"], ["b6", "b7", "b8", "b9"]], \
        "background work fills the room interactive work leaves, in its own order"


async def test_within_a_priority_batches_keep_arrival_order_across_callers():
    model = GatedModel()
    queue = WhileBusy(model.run, max_size=3, priority=rank)
    first = asyncio.ensure_future(queue.submit(["i0"]))
    await model.started(1)
    calls = [asyncio.ensure_future(queue.submit([name])) for name in ["b1", "i1", "b2", "i2", "b3", "i3", "i4"]]
    await asyncio.sleep(0)
    for count in (2, 3, 4):
        model.finish()
        await model.started(count)
    model.finish()
    await asyncio.gather(first, *calls)
    assert model.batches == [["i0"], ["i1", "i2", "i3"], ["i4", "b1", "b2"], ["b3"]]


async def test_without_a_priority_batches_follow_arrival_order_whatever_the_items():
    model = GatedModel()
    queue = WhileBusy(model.run, max_size=3)
    job = asyncio.ensure_future(queue.submit(["b0", "b1", "b2", "b3", "b4"]))
    await model.started(1)
    request = asyncio.ensure_future(queue.submit(["i0", "i1"]))
    await asyncio.sleep(0)
    for count in (2, 3):
        model.finish()
        await model.started(count)
    model.finish()
    await asyncio.gather(job, request)
    assert model.batches == [["b0", "b1", "b2"], ["b3", "b4", "i0"], ["i1"]]


async def test_a_cancelled_interactive_caller_leaves_its_place_to_background_items():
    model = GatedModel()
    queue = WhileBusy(model.run, max_size=2, priority=rank)
    job = asyncio.ensure_future(queue.submit(["b0", "b1", "b2", "b3"]))
    await model.started(1)
    gone = asyncio.ensure_future(queue.submit(["i0", "i1"]))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    model.finish()
    await model.started(2)
    model.finish()
    assert await job == ["B0", "B1", "B2", "B3"]
    assert model.batches == [["b0", "b1"], ["b2", "b3"]]
