"""Admission by expected wait: a request is refused (503 with Retry-After) when the audio already
admitted ahead of it would take longer than `max_queue_wait_s` to get through.

Cost is counted in seconds of audio, not in bytes or requests: a 331 KB FLAC of 30 minutes' silence
costs the models as much time as any other 30 minutes. The speed that turns queued audio seconds into
a wait is measured, not configured: the audio seconds this ingress replica completed per second that it
had work in flight, a decaying average so it follows load and model changes. Until it has measured
itself it assumes `initial_speed`.

Each ingress replica admits for itself. Serve spreads requests evenly over ingress replicas and each
measures the throughput it actually gets, so each one's queue over its own speed estimates the same
wait. A request arriving at an idle replica is always admitted, however long: refusing it could only
mean refusing it forever.

Units: audio and durations in seconds, speed in audio seconds per second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from core.errors import Overloaded

_PRIOR_BUSY_S = 10.0
"""How much measured time the assumed speed weighs: the first few requests already move the estimate."""


@dataclass(frozen=True)
class AdmissionSnapshot:
    """What admission sees now (also reported by the ingress's status)."""

    queued_audio_s: float
    in_flight: int
    speed: float
    expected_wait_s: float


class Admission:
    def __init__(self, max_queue_wait_s: float, initial_speed: float, *, half_life_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_queue_wait_s = max_queue_wait_s
        self._initial_speed = initial_speed
        self._half_life_s = half_life_s
        self._clock = clock
        self._queued_audio_s = 0.0
        self._in_flight = 0
        self._done_audio_s = 0.0  # decaying sums: completed audio, and time with work in flight
        self._busy_s = 0.0
        self._updated = clock()

    # --- measurement ----------------------------------------------------------------------------

    def _advance(self) -> None:
        now = self._clock()
        elapsed = now - self._updated
        self._updated = now
        decay = 0.5 ** (elapsed / self._half_life_s)
        self._done_audio_s *= decay
        self._busy_s *= decay
        if self._in_flight:
            self._busy_s += elapsed

    @property
    def speed(self) -> float:
        """Audio seconds completed per second of work in flight, the assumed speed as a prior."""
        prior_audio_s = _PRIOR_BUSY_S * self._initial_speed
        return (self._done_audio_s + prior_audio_s) / (self._busy_s + _PRIOR_BUSY_S)

    def snapshot(self) -> AdmissionSnapshot:
        self._advance()
        speed = self.speed
        return AdmissionSnapshot(self._queued_audio_s, self._in_flight, speed, self._queued_audio_s / speed)

    # --- admission ------------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse at once when even an empty request would wait too long: called before the upload
        is read and decoded, so an overloaded service spends nothing on work it will refuse."""
        self._refuse_if_over(self.snapshot())

    @contextmanager
    def admit(self, audio_s: float) -> Iterator[None]:
        """Hold `audio_s` seconds of audio in the queue while the block runs; refuse (Overloaded) if
        the audio ahead would make it wait longer than allowed. A block that ends without an error
        counts as completed work."""
        self._refuse_if_over(self.snapshot())
        self._in_flight += 1
        self._queued_audio_s += audio_s
        completed = False
        try:
            yield
            completed = True
        finally:
            self._advance()
            self._in_flight -= 1
            self._queued_audio_s = max(0.0, self._queued_audio_s - audio_s) if self._in_flight else 0.0
            if completed:
                self._done_audio_s += audio_s

    def _refuse_if_over(self, now: AdmissionSnapshot) -> None:
        if now.in_flight == 0 or now.expected_wait_s <= self.max_queue_wait_s:
            return
        # The queue drains at `speed`: this is when the wait would be back within the bound.
        retry_after_s = max(1, math.ceil(now.expected_wait_s - self.max_queue_wait_s))
        raise Overloaded(
            f"the service is at capacity: {now.queued_audio_s:.0f} s of audio are queued ahead, about "
            f"{now.expected_wait_s:.0f} s of work (this service waits at most {self.max_queue_wait_s:g} s); "
            f"retry after {retry_after_s} s", retry_after_s=retry_after_s)
