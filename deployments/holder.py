"""The model holder: one model, one owning thread, one lifecycle. Works with or without Ray.

Every step that touches the model (load, warm-up, inference, teardown) runs on the holder's own
single thread, because:
- torch work on a thread other than the one that built the model ran about 2x slower in Serve's
  worker threads (pyannote: 9.2 s vs 4.5 s on a 30 s call);
- whisperX's pipeline mutates shared options per call, so two calls must never overlap on it;
- a reconfigure queued on that same thread runs after the calls in flight and before the next
  ones, so a model swap fails no request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from core.errors import ModelUnavailable
from deployments import gpu_memory
from deployments.gpu_memory import MemorySample, TeardownReport

logger = logging.getLogger(__name__)

DEVICE_PATTERN = r"^(cpu|cuda(:\d+)?)$"


class DeviceConfig(BaseModel):
    """Where a model runs and how its memory is judged: the fields every holder config shares."""

    # A misspelt key must fail the deploy with its name, not deploy a default silently.
    model_config = ConfigDict(extra="forbid")

    device: str = Field("cpu", pattern=DEVICE_PATTERN, description="torch-style device: cpu, cuda or cuda:N")
    cpu_threads: int = Field(2, ge=1, le=64, description="CPU threads for the model (torch's are process-wide); "
                             "size it from the replica's CPU share so stages running at once do not oversubscribe")
    vram_residue_budget_mib: float = Field(64, ge=0, description="GPU memory a teardown may leave above the "
                                           "pre-load baseline before the replica reports itself unhealthy, MiB")
    rss_residue_budget_mib: float | None = Field(None, ge=0, description="the same on CPU, judged on resident "
                                                 "memory, MiB; None: not judged (allocator caches blur it)")
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1, description="cap on torch's share of the GPU "
                                              "(set it to the replica's num_gpus); CTranslate2 ignores it")
    required_free_mib: float = Field(0, ge=0, description="free GPU memory a load needs, MiB: with less, the "
                                     "load is refused with 503 instead of crashing a neighbour replica")


def residue_problem(report: TeardownReport | None, config: DeviceConfig) -> str | None:
    """Why a teardown's residue is over the config's budget (GPU memory on CUDA, RSS on CPU), or None."""
    if report is None:
        return None
    on_gpu = report.device.startswith("cuda")
    budget_mib = config.vram_residue_budget_mib if on_gpu else config.rss_residue_budget_mib
    residue_mib = report.residue_bytes / gpu_memory.MIB
    if budget_mib is not None and residue_mib > budget_mib:
        return (f"{report.model} left {residue_mib:.1f} MiB on {report.device} after teardown "
                f"(budget {budget_mib:.0f} MiB)")
    return None


ConfigT = TypeVar("ConfigT", bound=DeviceConfig)
ModelT = TypeVar("ModelT")
R = TypeVar("R")


class ModelHolder(Generic[ConfigT, ModelT]):
    """Loads a model from a config, runs calls on it one at a time, and tears it down measurably.

    Subclasses implement `load_model`, `release_model` and `device_of`; `identity` decides what
    counts as a different model (anything else in the config is applied without a reload).
    """

    def __init__(self, config: ConfigT) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=type(self).__name__)
        self._lock = threading.Lock()
        self.config: ConfigT = config
        self.model: ModelT | None = None
        self.baseline: MemorySample | None = None
        self.loaded: MemorySample | None = None
        # What other models in the process took (+) or gave back (-) since this model loaded; kept by
        # whoever loads them beside this one (deployments/pool.py), so a teardown judges only its own.
        self.others_bytes = 0
        self.last_teardown: TeardownReport | None = None
        self._closed = False
        try:
            self.run(self._load, config)
        except BaseException:
            self._closed = True  # nothing to close: a later close() must not schedule on a dead thread
            self._executor.shutdown(wait=False)  # no model, no thread left behind
            raise

    # --- what a concrete holder provides -------------------------------------------------------

    def import_libraries(self) -> None:
        """Import the model libraries, so that the memory baseline counts their code but no model."""

    def check_config(self, config: ConfigT) -> None:
        """Raise if `config` cannot be loaded (unknown bundled name, missing directory), before any teardown."""

    def load_model(self, config: ConfigT) -> ModelT:
        """Build the model described by `config` (on the owning thread)."""
        raise NotImplementedError

    def release_model(self, model: ModelT) -> None:
        """Unload what the library can unload explicitly; references are dropped by the caller."""

    def device_of(self, config: ConfigT) -> str:
        """The torch-style device string ('cpu', 'cuda', 'cuda:1') the config loads onto."""
        return config.device

    def identity(self, config: ConfigT) -> Any:
        """What must change for a reconfigure to reload the model."""
        return config.model_dump(mode="json")

    def model_name(self, config: ConfigT) -> str:
        return str(getattr(config, "model", type(self).__name__))

    # --- running work on the owning thread ---------------------------------------------------

    def run(self, fn: Callable[..., R], *args: Any) -> R:
        """Run `fn(*args)` on the owning thread and wait for it."""
        return self._executor.submit(fn, *args).result()

    async def arun(self, fn: Callable[..., R], *args: Any) -> R:
        """Run `fn(*args)` on the owning thread without blocking the event loop."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def _require_model(self) -> ModelT:
        if self.model is None:
            raise ModelUnavailable(f"{type(self).__name__} has no model loaded")
        return self.model

    # --- lifecycle ---------------------------------------------------------------------------

    def _load(self, config: ConfigT) -> None:
        device = self.device_of(config)
        if self.baseline is None:
            # The libraries' code and, on CUDA, the context can never be freed in-process: they are
            # in every baseline, not in a model's residue.
            self.import_libraries()
            gpu_memory.prepare_device(device, config.gpu_memory_fraction)
        # Sampled before each load, so the baseline holds every model already loaded beside this one.
        self.baseline = gpu_memory.measure(device)
        self.others_bytes = 0
        gpu_memory.require_free(device, config.required_free_mib, self.model_name(config))
        self.model = self.load_model(config)
        self.config = config
        self.loaded = gpu_memory.measure(device)
        logger.info("loaded %s on %s", self.model_name(config), device)

    def _teardown(self) -> TeardownReport | None:
        if self.model is None or self.baseline is None or self.loaded is None:
            return None
        # The only strong reference outside the holder is this list: emptied inside the teardown, so
        # nothing in this frame keeps the model alive while memory is measured.
        held: list[ModelT] = [self.model]

        def drop_references() -> None:
            self.model = None
            self.release_model(held.pop())

        report = gpu_memory.teardown(self.model_name(self.config), self.device_of(self.config),
                                     drop_references, self.baseline, self.loaded, self.others_bytes)
        self.last_teardown = report
        return report

    def reconfigure(self, config: ConfigT) -> TeardownReport | None:
        """Apply a new config: reload only when the model identity changed. Returns the teardown report."""

        def swap() -> TeardownReport | None:
            if self.model is not None and self.identity(config) == self.identity(self.config):
                self.config = config
                return None
            self.check_config(config)  # before the teardown: a config that cannot load changes nothing
            previous = self.config
            report = self._teardown()
            try:
                self._load(config)
            except Exception:
                logger.exception("loading %s failed; reloading %s", self.model_name(config),
                                 self.model_name(previous))
                self._load(previous)  # keep serving; the update is still reported as failed
                raise
            return report

        return self.run(swap)

    def close(self) -> TeardownReport | None:
        """Tear the model down and stop the owning thread; safe to call twice."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
        try:
            return self.run(self._teardown)
        finally:
            self._executor.shutdown(wait=True)

    # --- health ------------------------------------------------------------------------------

    def health_problem(self) -> str | None:
        """Why this holder should be replaced, or None when it is healthy."""
        if self.model is None:
            return f"{type(self).__name__} has no model loaded"
        return residue_problem(self.last_teardown, self.config)

    def status(self) -> dict[str, Any]:
        """The model loaded, its device, memory now and the last teardown report."""
        device = self.device_of(self.config)
        now = gpu_memory.measure(device)
        return {
            "holder": type(self).__name__,
            "model": self.model_name(self.config) if self.model is not None else None,
            "device": device,
            "loaded": self.model is not None,
            "memory_now_bytes": now.primary_bytes,
            "memory": now.__dict__,
            "last_teardown": self.last_teardown.as_dict() if self.last_teardown else None,
            "healthy": self.health_problem() is None,
        }
