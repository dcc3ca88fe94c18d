"""Batches that fill while the model is busy.

Ray Serve's `@serve.batch` forms a batch from the calls that arrive within `batch_wait_timeout_s` of
the first, and with one batch at a time (`max_concurrent_batches=1`) it goes on forming batches on that
schedule while the current one runs, queueing each for its turn: under load the model decodes many small
batches one after another (tests/serve/test_chunks_under_serve.py, with fake models and 1 s per batch:
8 concurrent requests, 8 batches of 1). It also needs a Serve replica, so the holders could not batch
without Ray. `WhileBusy` batches the other way: whatever arrives while a decode runs waits, and the next
decode takes all of it, up to `max_size`; an idle queue waits `wait_s` for company before it starts.
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
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], max_size: int, wait_s: float = 0.0) -> None:
        self._run = run
        self.max_size, self.wait_s = max_size, wait_s
        self._pending: list[tuple[T, asyncio.Future[R | BaseException]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, items: list[T]) -> list[R | BaseException]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R | BaseException]] = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures, strict=True))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        try:
            if len(self._pending) < self.max_size and self.wait_s > 0:
                await asyncio.sleep(self.wait_s)  # the rest of a request's chunks, or another request's
            while self._pending:
                batch = [(item, future) for item, future in self._pending[:self.max_size] if not future.done()]
                del self._pending[:self.max_size]
                if not batch:
                    continue
                try:
                    results: list[R | BaseException] = list(await self._run([item for item, _ in batch]))
                except Exception as e:  # noqa: BLE001 - handed to each item's caller
                    results = [e] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = None
