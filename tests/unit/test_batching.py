"""`WhileBusy`: what decodes together, with a fake model that takes its time."""

from __future__ import annotations

import asyncio

import pytest

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
