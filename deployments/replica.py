"""What every model deployment does the same way around its holder: config, health, status, shutdown.

A deployment class inherits `HolderReplica`, names its config class and its holder factory, and
adds only its request methods. Serve calls `reconfigure` after `__init__` and on every `user_config`
change, `check_health` periodically, and `__del__` on graceful shutdown.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from deployments.gpu_memory import TeardownReport
from deployments.holder import ModelHolder

logger = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=BaseModel)
HolderT = TypeVar("HolderT", bound=ModelHolder)


def route_logs_to_serve() -> None:
    """Send this project's log records through Ray Serve's replica logging (file, stderr, JSON, ids).

    Serve configures only the `ray.serve` logger in a replica; without this, INFO records such as
    teardown reports would go nowhere.
    """
    serve_logger = logging.getLogger("ray.serve")
    for name in ("deployments", "serve_app"):
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
    """Per-replica gauges through Ray Serve's metrics (Serve tags deployment and replica)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.memory_bytes = metrics.Gauge(
            "transcription_model_memory_bytes",
            description="Memory this replica holds now: GPU memory on CUDA (NVML), resident memory on CPU.")
        self.residue_bytes = metrics.Gauge(
            "transcription_teardown_residue_bytes",
            description="Memory left above the pre-load baseline after the last model teardown.")
        self.teardown_seconds = metrics.Gauge(
            "transcription_teardown_seconds", description="Duration of the last model teardown.")

    def record(self, status: dict[str, Any], report: TeardownReport | None) -> None:
        self.memory_bytes.set(status["memory_now_bytes"])
        if report is not None:
            self.residue_bytes.set(report.residue_bytes)
            self.teardown_seconds.set(report.seconds)


class HolderReplica(Generic[ConfigT, HolderT]):
    """Serve lifecycle around one model holder."""

    config_cls: ClassVar[type[BaseModel]]

    def __init__(self, holder_factory: Callable[[ConfigT], HolderT]) -> None:
        self._holder_factory = holder_factory
        self._holder: HolderT | None = None
        self._metrics: ReplicaMetrics | None = None
        route_logs_to_serve()

    @property
    def holder(self) -> HolderT:
        if self._holder is None:
            from core.errors import ModelUnavailable

            raise ModelUnavailable(f"{type(self).__name__} has no user_config yet, so no model is loaded")
        return self._holder

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Validate the new config before touching the model, then load or swap it."""
        try:
            config = self.config_cls.model_validate(user_config)
        except ValidationError as e:
            # Raising fails this config update; the current model keeps serving.
            raise ValueError(f"invalid user_config for {type(self).__name__}: {e}") from e
        if self._holder is None:
            self._holder = self._holder_factory(config)  # type: ignore[arg-type]
            report = None
        else:
            report = self._holder.reconfigure(config)
        self._record(report)

    def check_health(self) -> None:
        """Raise so Serve replaces this replica: no model, or memory that did not come back."""
        if self._holder is None:
            raise RuntimeError(f"{type(self).__name__} has no model loaded")
        problem = self._holder.health_problem()
        if problem is not None:
            raise RuntimeError(problem)
        self._record(None)

    def status(self) -> dict[str, Any]:
        """The model, device, memory now and last teardown report of this replica."""
        return {**self.holder.status(), **replica_identity()}

    def _record(self, report: TeardownReport | None) -> None:
        try:
            if self._metrics is None:
                self._metrics = ReplicaMetrics()
            self._metrics.record(self.holder.status(), report)
        except Exception:  # metrics must never fail a request or a health check
            logger.debug("could not record replica metrics", exc_info=True)

    def __del__(self) -> None:
        # Serve calls __del__ on graceful shutdown (serve shutdown, Ctrl+C on serve run): the
        # replica's shutdown hook.
        holder, self._holder = self._holder, None
        if holder is not None:
            holder.close()  # logs its teardown report
