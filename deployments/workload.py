"""The audio a model replica holds: queued for its model, or in flight on it.

Each call counts its audio seconds from the moment it reaches the replica (`track`) until it returns;
it moves from queued to in flight when the model starts on it (`Work.start`, called on the holder's own
thread). The replica reports the totals to Serve's autoscaler (`record_autoscaling_stats`) and as a
metric.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(eq=False)
class Work:
    seconds: float
    accepted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None

    @property
    def running(self) -> bool:
        return self.started_at is not None

    @property
    def waited_s(self) -> float | None:
        """How long the work waited before the model started on it (None: not started)."""
        return None if self.started_at is None else self.started_at - self.accepted_at

    def start(self) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()


class Workload:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[Work] = set()

    @contextmanager
    def track(self, seconds: float) -> Iterator[Work]:
        work = Work(max(float(seconds), 0.0))
        with self._lock:
            self._held.add(work)
        try:
            yield work
        finally:
            with self._lock:
                self._held.discard(work)

    def totals(self) -> tuple[float, float]:
        """(queued, in flight) audio seconds."""
        with self._lock:
            held = list(self._held)
        running = sum(w.seconds for w in held if w.running)
        return sum(w.seconds for w in held) - running, running
