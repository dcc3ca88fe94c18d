"""The one Serve lifecycle of every model deployment: config, model pool, health, status, metrics, shutdown.

A deployment class inherits `ModelReplica`, names its config class, says which models its config
offers (`model_specs`), and adds only its request methods, which run through `self.call`. Serve calls
`reconfigure` after `__init__` and on every `user_config` change, `check_health` periodically,
`record_autoscaling_stats` for the autoscaler (core/autoscaling.py: the audio each call holds, counted
by `track`), and `__del__` on graceful shutdown. A single-model deployment offers one model under
`SINGLE_MODEL`; the ASR deployment offers one per model id, alignment one per language.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import ValidationError

from core.autoscaling import IN_FLIGHT_AUDIO_S, QUEUED_AUDIO_S
from core.errors import ModelUnavailable
from deployments import gpu_memory
from deployments.holder import DeviceConfig, ModelHolder
from deployments.pool import ModelPool
from deployments.workload import Work, Workload

logger = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=DeviceConfig)
SpecT = TypeVar("SpecT", bound=DeviceConfig)
HolderT = TypeVar("HolderT", bound=ModelHolder)

SINGLE_MODEL = "model"
"""The pool key of a deployment that holds one model: a new config swaps that holder in place."""


def route_logs_to_serve() -> None:
    """Send this project's log records through Ray Serve's replica logging (file, stderr, JSON, ids).

    Serve configures only the `ray.serve` logger in a replica; without this, INFO records such as
    teardown reports would go nowhere.
    """
    serve_logger = logging.getLogger("ray.serve")
    for name in ("core", "deployments", "serve_app"):
        ours = logging.getLogger(name)
        ours.setLevel(logging.INFO)
        for handler in serve_logger.handlers:
            if handler not in ours.handlers:
                ours.addHandler(handler)
        ours.propagate = False


def replica_identity() -> dict[str, Any]:
    """Which replica answers: Serve's replica id (None outside Serve) and the process id."""
    try:
        from ray import serve

        replica = serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside Serve there is no replica context
        replica = None
    return {"replica": replica, "replica_pid": os.getpid()}


class ReplicaMetrics:
    """Per-replica figures through Ray Serve's metrics (Serve tags deployment and replica)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.memory_bytes = metrics.Gauge(
            "transcription_model_memory_bytes",
            description="Memory this replica holds now: GPU memory on CUDA (NVML), resident memory on CPU.")
        self.models_loaded = metrics.Gauge(
            "transcription_models_loaded", description="Models this replica holds loaded now.")
        self.residue_bytes = metrics.Gauge(
            "transcription_teardown_residue_bytes",
            description="Memory left above the pre-load baseline after the last model teardown.")
        self.teardown_seconds = metrics.Gauge(
            "transcription_teardown_seconds", description="Duration of the last model teardown.")
        self.residue_budget_bytes = metrics.Gauge(
            "transcription_teardown_residue_budget_bytes",
            description="The residue a teardown may leave (GPU memory on CUDA, RSS on CPU); above it the "
            "health check fails and Serve replaces the replica.")
        self.gpu_total_bytes = metrics.Gauge(
            "transcription_gpu_memory_total_bytes", description="Total memory of this replica's GPU (0 on CPU).")
        self.queued_audio = metrics.Gauge(
            "transcription_queued_audio_seconds",
            description="Audio seconds queued and in flight at this replica (what autoscaling reads).")
        self.unloads = metrics.Counter(
            "transcription_model_unloads", description="Models unloaded, by reason (evicted, idle, "
            "removed, replaced, shutdown).", tag_keys=("reason",))
        self._counted: Counter[str] = Counter()
        self._chunk_wait: Any = None

    def chunk_waited(self, seconds: float) -> None:
        if self._chunk_wait is None:  # the ASR deployment's only: the others have no chunks
            from ray.serve import metrics

            self._chunk_wait = metrics.Histogram(
                "transcription_chunk_wait_seconds",
                description="Seconds a speech chunk waited at an ASR replica before its batch started.",
                boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120])
        self._chunk_wait.observe(seconds)

    def record(self, pool: ModelPool, config: DeviceConfig, workload: Workload) -> None:
        device = config.device
        self.memory_bytes.set(gpu_memory.measure(device).primary_bytes)
        self.gpu_total_bytes.set(gpu_memory.total_bytes(device) or 0)
        self.models_loaded.set(len(pool.loaded()))
        self.queued_audio.set(sum(workload.totals()))
        budget_mib = config.vram_residue_budget_mib if device.startswith("cuda") else config.rss_residue_budget_mib
        if budget_mib is not None:
            self.residue_budget_bytes.set(budget_mib * gpu_memory.MIB)
        report = pool.last_teardown
        if report is not None:
            self.residue_bytes.set(report.residue_bytes)
            self.teardown_seconds.set(report.seconds)
        for reason, total in pool.unload_counts.items():
            if total > self._counted[reason]:
                self.unloads.inc(total - self._counted[reason], tags={"reason": reason})
                self._counted[reason] = total


class ModelReplica(Generic[ConfigT, SpecT, HolderT]):
    """Serve lifecycle around a pool of model holders; see the module docstring."""

    config_cls: ClassVar[type[DeviceConfig]]

    def __init__(self, holder_factory: Callable[[SpecT], HolderT]) -> None:
        self._pool: ModelPool[SpecT, HolderT] = ModelPool(holder_factory)
        self._config: ConfigT | None = None
        self._metrics: ReplicaMetrics | None = None
        self._workload = Workload()
        route_logs_to_serve()

    # --- what a deployment says about its config ---------------------------------------------

    def model_specs(self, config: ConfigT) -> dict[str, SpecT]:
        """The models this config offers, by pool key; a single-model deployment offers itself."""
        return {SINGLE_MODEL: config}  # type: ignore[dict-item]

    def model_spec(self, config: ConfigT, key: str) -> SpecT | None:
        """The spec of one offered model, or None; a deployment offering many may find it directly."""
        return self.model_specs(config).get(key)

    def preloaded(self, config: ConfigT) -> list[str]:
        """Keys loaded as soon as the config arrives, and never unloaded for being idle."""
        return [SINGLE_MODEL]

    def pool_bounds(self, config: ConfigT) -> tuple[int, float | None]:
        """(most models loaded at once, seconds idle before a model is unloaded or None)."""
        return 1, None

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def config(self) -> ConfigT:
        if self._config is None:
            raise ModelUnavailable(f"{type(self).__name__} has no user_config yet, so no model is loaded")
        return self._config

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Validate the new config before touching any model, then swap, unload and load as it says."""
        try:
            config: ConfigT = self.config_cls.model_validate(user_config)  # type: ignore[assignment]
        except ValidationError as e:
            # Raising fails this config update (and names the bad key); the current models keep serving.
            raise ValueError(f"invalid user_config for {type(self).__name__}: {e}") from e
        specs = self.model_specs(config)
        await self._pool.reconfigure(specs, bounds=self.pool_bounds(config), pinned=frozenset(self.preloaded(config)))
        # Preload at start-up and when the preloaded set changes (a new default model); otherwise a
        # config change would reload a default that was evicted to make room for others.
        before = set(self.preloaded(self._config)) if self._config is not None else set()
        self._config = config
        for key in self.preloaded(config):
            if key not in before:
                await self._pool.load(key, specs[key])
        self._record()

    @contextmanager
    def track(self, audio_s: float) -> Iterator[Work]:
        """Count `audio_s` as held by this replica while the block runs (queued until `call` starts it)."""
        try:
            with self._workload.track(audio_s) as work:
                yield work
        finally:
            self._record()  # the queued-audio gauge drops as soon as the work is done

    async def call(self, key: str, method: str, *args: Any, work: Sequence[Work] = ()) -> Any:
        """Run `method` of the holder for `key`, loading it first if this replica does not hold it;
        the `work` it carries counts as in flight once the model starts on it."""
        spec = self.model_spec(self.config, key)  # on every request: one spec, not all of them
        if spec is None:
            raise ModelUnavailable(f"{type(self).__name__} offers no model {key!r}")

        def started() -> None:
            for item in work:
                item.start()

        try:
            return await self._pool.call(key, spec, method, *args, on_start=started if work else None)
        finally:
            self._record()

    def chunk_waited(self, work: Work) -> None:
        """Count how long a speech chunk waited for its batch (the ASR deployment's queue wait)."""
        if work.waited_s is None or self._metrics is None:
            return
        try:
            self._metrics.chunk_waited(work.waited_s)
        except Exception:  # metrics must never fail a request
            logger.debug("could not record the chunk wait", exc_info=True)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Audio seconds queued and in flight here, for `core.autoscaling.QueuedAudioPolicy`; Serve calls
        this periodically once a custom autoscaling policy is configured."""
        queued, in_flight = self._workload.totals()
        self._record()
        return {QUEUED_AUDIO_S: queued, IN_FLIGHT_AUDIO_S: in_flight}

    async def check_health(self) -> None:
        """Unload idle models; raise so Serve replaces this replica when memory did not come back."""
        await self._pool.unload_idle()
        problem = self.health_problem()
        self._record()
        if problem is not None:
            raise RuntimeError(problem)

    def health_problem(self) -> str | None:
        if self._config is None:
            return f"{type(self).__name__} has no user_config yet"
        # A preloaded model that was evicted is not a problem: it loads again on its next request.
        return self._pool.health_problem(self._config)

    def status(self) -> dict[str, Any]:
        """Models loaded, recent unloads with their teardown reports, memory now and health."""
        config = self.config
        last = self._pool.last_teardown
        problem = self.health_problem()
        pool = self._pool.status()
        single = pool["loaded"].get(SINGLE_MODEL)
        return {
            "deployment": type(self).__name__,
            # The model a single-model deployment holds (None while none is loaded).
            **({"model": single["model"] if single else None} if self.preloaded(config) == [SINGLE_MODEL] else {}),
            "device": config.device,
            "memory_now_bytes": gpu_memory.measure(config.device).primary_bytes,
            "offered": sorted(self.model_specs(config)),
            **pool,
            "last_teardown": last.as_dict() if last else None,
            "healthy": problem is None,
            "problem": problem,
            **replica_identity(),
        }

    def _record(self) -> None:
        if self._config is None:
            return
        try:
            if self._metrics is None:
                self._metrics = ReplicaMetrics()
            self._metrics.record(self._pool, self._config, self._workload)
        except Exception:  # metrics must never fail a request or a health check
            logger.debug("could not record replica metrics", exc_info=True)

    def __del__(self) -> None:
        # Serve calls __del__ on graceful shutdown (serve shutdown, Ctrl+C on serve run): the
        # replica's shutdown hook. Each teardown logs its report.
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()
