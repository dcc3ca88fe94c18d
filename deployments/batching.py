"""Batches that fill while the model is busy.

Ray Serve's `@serve.batch` forms a batch from the calls that arrive within `batch_wait_timeout_s` of
the first, and with one batch at a time (`max_concurrent_batches=1`) it goes on forming batches on that
schedule while the current one runs, queueing each for its turn: under load the model decodes many small
batches one after another (tests/serve/test_chunks_under_serve.py, with fake models and 1 s per batch:
8 concurrent requests, 8 batches of 1). It also needs a Serve replica, so the holders could not batch
without Ray. `WhileBusy` batches the other way: whatever arrives while a decode runs waits, and the next
decode takes all of it, up to `max_size`; an idle queue waits `wait_s` for company before it starts.

With a `priority` (lower first; core/chunks.py's INTERACTIVE and BACKGROUND for speech chunks) each batch
takes the waiting items of the lowest value first, in arrival order within a value, so an interactive
chunk that arrives while a batch decodes goes into the next batch ahead of background chunks that were
waiting before it (never into the batch already decoding). The priority is strict: background items wait
as long as interactive ones fill whole batches. That is the requirement (a person waits on the one, nobody
on the other), and it does not starve background work in practice: a job keeps only a few chunks in
flight per ingress replica, and they go into every batch that interactive chunks leave room in; only a
replica that interactive load alone keeps full stops them, and that load is autoscaling's to answer
(benchmarks/job_priority.py measures both sides).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class WhileBusy(Generic[T, R]):
    """Runs `run` on one batch at a time; items submitted meanwhile form the next batch.

    `run` returns one result per item, in order; an exception it raises becomes every item's result of
    that batch (returned, not raised, so that the caller hands it to each item's own caller).
    `priority` ranks an item when it is submitted (lower first); without it all items rank equal and
    batches follow arrival order.
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], max_size: int, wait_s: float = 0.0,
                 priority: Callable[[T], int] | None = None) -> None:
        self._run = run
        self.max_size, self.wait_s = max_size, wait_s
        self._priority = priority
        self._pending: list[tuple[int, T, asyncio.Future[R | BaseException]]] = []  # in arrival order
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, items: list[T]) -> list[R | BaseException]:
        loop = asyncio.get_running_loop()
        ranks = [self._priority(item) for item in items] if self._priority else [0] * len(items)
        futures: list[asyncio.Future[R | BaseException]] = [loop.create_future() for _ in items]
        self._pending.extend(zip(ranks, items, futures, strict=True))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        try:
            if len(self._pending) < self.max_size and self.wait_s > 0:
                await asyncio.sleep(self.wait_s)  # the rest of a request's chunks, or another request's
            while batch := self._next_batch():
                try:
                    results: list[R | BaseException] = list(await self._run([item for item, _ in batch]))
                except Exception as e:  # noqa: BLE001 - handed to each item's caller
                    results = [e] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = None

    def _next_batch(self) -> list[tuple[T, asyncio.Future[R | BaseException]]]:
        """Up to `max_size` waiting items, lowest priority value first, in arrival order within one (a
        stable sort); the rest stay waiting in arrival order. Items of cancelled callers are dropped."""
        waiting = [entry for entry in self._pending if not entry[2].done()]
        chosen = sorted(range(len(waiting)), key=lambda i: waiting[i][0])[:self.max_size]
        taken = set(chosen)
        self._pending = [entry for i, entry in enumerate(waiting) if i not in taken]
        return [(waiting[i][1], waiting[i][2]) for i in chosen]
