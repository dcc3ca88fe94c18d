"""Model holders by id in one replica: loaded on first use, at most N, least recently used evicted,
idle ones unloaded. Every unload goes through the holder's one measured teardown and is remembered.

Every deployment keeps its models here: ASR by model id, alignment by language, diarization as a
pool of one. Loads and unloads run one at a time (a model is never loaded while another is being torn
down, so GPU memory peaks at one model's worth above what stays), off the event loop.

Serve's `@serve.multiplexed` is not used: it has no idle unload, its bound is fixed when the decorator
runs (before `user_config` arrives), and its evictions happen where they cannot be measured or shown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from deployments.gpu_memory import TeardownReport
from deployments.holder import DeviceConfig, ModelHolder, residue_problem

logger = logging.getLogger(__name__)

SpecT = TypeVar("SpecT", bound=DeviceConfig)
HolderT = TypeVar("HolderT", bound=ModelHolder)
R = TypeVar("R")

UnloadReason = Literal["evicted", "idle", "removed", "replaced", "shutdown"]
KEPT_UNLOADS = 16


@dataclass(frozen=True)
class Unload:
    """One model taken out of memory: which, why, when (Unix time) and what its teardown measured."""

    key: str
    reason: UnloadReason
    at_unix_s: float
    report: TeardownReport | None

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.key, "reason": self.reason, "at_unix_s": round(self.at_unix_s, 3),
                "teardown": self.report.as_dict() if self.report else None}


class ModelPool(Generic[SpecT, HolderT]):
    """Holders keyed by id, each built from its spec by `factory`; see the module docstring."""

    def __init__(self, factory: Callable[[SpecT], HolderT], *, max_loaded: int = 1,
                 idle_unload_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._factory = factory
        self.max_loaded = max_loaded
        self.idle_unload_s = idle_unload_s
        self.pinned: frozenset[str] = frozenset()  # never unloaded for being idle (a default model)
        self._clock = clock
        self._holders: OrderedDict[str, HolderT] = OrderedDict()  # least recently used first
        self._specs: dict[str, SpecT] = {}
        self._last_used_s: dict[str, float] = {}
        self._in_use: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self.unloads: deque[Unload] = deque(maxlen=KEPT_UNLOADS)  # the newest, for status and health
        self.unload_counts: Counter[str] = Counter()  # every unload since start, by reason

    # --- using models ------------------------------------------------------------------------

    def loaded(self) -> list[str]:
        return list(self._holders)

    async def call(self, key: str, spec: SpecT, method: str, *args: Any,
                   on_start: Callable[[], None] | None = None) -> Any:
        """Run `holder.<method>(*args)` on the holder for `key` (loading it first if needed);
        `on_start` runs on the holder's thread just before the method does."""
        holder = await self._get(key, spec)
        run = getattr(holder, method)
        if on_start is not None:
            run = _announced(run, on_start)
        # No await between getting the holder and queueing the call on its thread: an eviction
        # (which runs between awaits) queues its teardown behind this call, never before it.
        future = holder.arun(run, *args)
        self._in_use[key] = self._in_use.get(key, 0) + 1
        try:
            return await future
        finally:
            self._in_use[key] -= 1
            self._last_used_s[key] = self._clock()

    async def _get(self, key: str, spec: SpecT) -> HolderT:
        holder = self._holders.get(key)
        if holder is None:
            async with self._lock:
                holder = self._holders.get(key)
                if holder is None:
                    while len(self._holders) >= max(self.max_loaded, 1):
                        await self._unload(next(iter(self._holders)), "evicted")
                    holder = await asyncio.to_thread(self._factory, spec)
                    self._account(holder, _added_bytes(holder))
                    self._holders[key] = holder
                    self._specs[key] = spec
        self._holders.move_to_end(key)
        self._last_used_s[key] = self._clock()
        return holder

    async def load(self, key: str, spec: SpecT) -> None:
        """Load `key` now if it is not loaded (a default model at start-up)."""
        await self._get(key, spec)

    # --- unloading ---------------------------------------------------------------------------

    async def _unload(self, key: str, reason: UnloadReason) -> None:
        holder = self._holders.pop(key)
        self._specs.pop(key, None)
        self._last_used_s.pop(key, None)
        logger.info("unloading %s (%s)", key, reason)  # the teardown logs its measured report
        # close() waits on the holder's own thread for calls already queued, then tears down.
        report = await asyncio.to_thread(holder.close)
        self._account(holder, -report.freed_bytes if report else 0)
        self._remember(key, reason, report)

    def _account(self, changed: HolderT, delta_bytes: int) -> None:
        """Tell every other holder what a load or an unload beside it changed in the process's memory."""
        for holder in self._holders.values():
            if holder is not changed:
                holder.others_bytes += delta_bytes

    def _remember(self, key: str, reason: UnloadReason, report: TeardownReport | None) -> None:
        self.unloads.append(Unload(key, reason, time.time(), report))
        self.unload_counts[reason] += 1

    async def unload_idle(self) -> None:
        """Unload every model unused for longer than `idle_unload_s` (pinned ones stay)."""
        if self.idle_unload_s is None:
            return
        async with self._lock:
            now = self._clock()
            for key in list(self._holders):
                idle_s = now - self._last_used_s.get(key, now)
                if key not in self.pinned and not self._in_use.get(key) and idle_s > self.idle_unload_s:
                    await self._unload(key, "idle")

    async def reconfigure(self, specs: dict[str, SpecT], *, bounds: tuple[int, float | None] | None = None,
                          pinned: frozenset[str] | None = None) -> None:
        """Apply new specs and bounds: models no longer offered are unloaded, changed ones swapped in place
        (the holder reloads only if its model identity changed), then the new bound is enforced. A swap
        that fails leaves the bounds as they were."""
        async with self._lock:
            for key in list(self._holders):
                if key not in specs:
                    await self._unload(key, "removed")
                    continue
                holder = self._holders[key]
                report = await asyncio.to_thread(holder.reconfigure, specs[key])
                self._specs[key] = specs[key]
                if report is not None:  # swapped: the old model's memory went, the new one's came
                    self._account(holder, _added_bytes(holder) - report.freed_bytes)
                    self._remember(key, "replaced", report)
            # New (max_loaded, idle_unload_s) and pinned keys, if given, apply once every swap succeeded.
            if bounds is not None:
                self.max_loaded, self.idle_unload_s = bounds
            if pinned is not None:
                self.pinned = pinned
            while len(self._holders) > max(self.max_loaded, 1):
                await self._unload(next(iter(self._holders)), "evicted")

    def close(self) -> None:
        """Tear every model down (replica shutdown); blocking, safe to call twice."""
        while self._holders:
            key, holder = self._holders.popitem(last=False)
            report = holder.close()
            self._account(holder, -report.freed_bytes if report else 0)
            self._remember(key, "shutdown", report)

    # --- health and status -------------------------------------------------------------------

    def health_problem(self, config: DeviceConfig) -> str | None:
        """Why this replica should be replaced: a holder left without its model, or a teardown whose
        residue is over the budget (memory only a new process gets back)."""
        for holder in self._holders.values():
            problem = holder.health_problem()
            if problem is not None:
                return problem
        for unload in self.unloads:
            problem = residue_problem(unload.report, config)
            if problem is not None:
                return problem
        return None

    def status(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "max_loaded_models": self.max_loaded,
            "idle_unload_s": self.idle_unload_s,
            "loaded": {key: {**holder.status(), "in_use": self._in_use.get(key, 0),
                             "idle_s": round(now - self._last_used_s.get(key, now), 1),
                             "pinned": key in self.pinned}
                       for key, holder in self._holders.items()},
            "unloads": [u.as_dict() for u in reversed(self.unloads)],  # newest first
        }

    @property
    def last_teardown(self) -> TeardownReport | None:
        for unload in reversed(self.unloads):
            if unload.report is not None:
                return unload.report
        return None


def _added_bytes(holder: ModelHolder) -> int:
    """What the holder's last load added to the process's memory."""
    if holder.loaded is None or holder.baseline is None:
        return 0
    return holder.loaded.primary_bytes - holder.baseline.primary_bytes


def _announced(method: Callable[..., Any], on_start: Callable[[], None]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        on_start()
        return method(*args)
    return run
