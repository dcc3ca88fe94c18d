"""Admission by expected wait: a request is refused (503 with Retry-After) when the audio already
admitted ahead of it would take longer than `max_queue_wait_s` to get through.

Cost is counted in seconds of audio, not in bytes or requests: a 331 KB FLAC of 30 minutes' silence
costs the models as much time as any other 30 minutes. The speed that turns queued audio seconds into
a wait is measured, not configured: the audio seconds this ingress replica completed per second that
it had work at the models, a decaying average so it follows load and model changes. Until it has
measured itself it assumes `initial_speed`.

The decision is made before the work it guards: when the request arrives, before its upload is
read, and again when the upload is complete, before it is decoded (many uploads arriving together
are all still in transit at the first check). A refusal so costs at most the upload, never a decode:
deciding after decoding wasted a decode per refusal, which under a 20-user soak on 2 cores halved
the throughput. An admitted request counts nothing while its upload arrives (a client that stalls
must not take others' places), the typical request's length while it is decoded, and its own length
once that is known (`Ticket.measured`).

Each ingress replica admits for itself. Serve spreads requests evenly over ingress replicas and each
measures the throughput it actually gets, so each one's queue over its own speed estimates the same
wait. A request with nothing queued ahead of it is always admitted, however long: refusing it could
only mean refusing it forever.

Units: audio and durations in seconds, speed in audio seconds per second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from core.errors import Overloaded

_FIRST_TYPICAL_AUDIO_S = 60.0
_PRIOR_BUSY_S = 10.0
"""How much measured time the assumed speed weighs: the first few requests already move the estimate."""


@dataclass(frozen=True)
class AdmissionSnapshot:
    """What admission sees now (`GET /v1/models/status` reports it)."""

    queued_audio_s: float
    admitted: int
    at_models: int
    speed: float
    expected_wait_s: float


class Ticket:
    """An admitted request's place in the queue."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.audio_s = 0.0
        self.is_measured = False

    def uploaded(self) -> None:
        """The upload is complete: refuse (Overloaded) if what was admitted meanwhile makes the wait too
        long, otherwise count the typical request's length while it is decoded."""
        self._admission._refuse_if_over()
        self._admission._count(self, self._admission.typical_audio_s)

    def measured(self, audio_s: float) -> None:
        """The request's audio is decoded: count its real length from now on, and its time at the models
        towards the speed."""
        self._admission._count(self, audio_s)
        self.is_measured = True
        self._admission._at_models += 1
        self._admission._learn_typical(audio_s)


class Admission:
    def __init__(self, max_queue_wait_s: float, initial_speed: float, *, half_life_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_queue_wait_s = max_queue_wait_s
        self._initial_speed = initial_speed
        self._half_life_s = half_life_s
        self._clock = clock
        self._queued_audio_s = 0.0
        self._admitted = 0
        self._at_models = 0
        # Decaying mean of measured lengths, the estimate for a request being decoded; a minute at first.
        self.typical_audio_s = _FIRST_TYPICAL_AUDIO_S
        self._done_audio_s = 0.0  # decaying sums: completed audio, and time with work at the models
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
        if self._at_models:
            self._busy_s += elapsed

    @property
    def speed(self) -> float:
        """Audio seconds completed per second of work at the models, the assumed speed as a prior."""
        prior_audio_s = _PRIOR_BUSY_S * self._initial_speed
        return (self._done_audio_s + prior_audio_s) / (self._busy_s + _PRIOR_BUSY_S)

    def snapshot(self) -> AdmissionSnapshot:
        self._advance()
        speed = self.speed
        return AdmissionSnapshot(self._queued_audio_s, self._admitted, self._at_models, speed,
                                 self._queued_audio_s / speed)

    # --- admission ------------------------------------------------------------------------------

    @contextmanager
    def admit(self) -> Iterator[Ticket]:
        """Refuse (Overloaded) if the audio ahead would make this request wait longer than allowed;
        otherwise hold its place while the block runs. A block that ends without an error after
        `measured` counts as completed work."""
        self._refuse_if_over()
        ticket = Ticket(self)
        self._admitted += 1
        completed = False
        try:
            yield ticket
            completed = True
        finally:
            self._advance()
            self._admitted -= 1
            self._queued_audio_s = max(0.0, self._queued_audio_s - ticket.audio_s) if self._admitted else 0.0
            if ticket.is_measured:
                self._at_models -= 1
                if completed:
                    self._done_audio_s += ticket.audio_s

    def _refuse_if_over(self) -> None:
        now = self.snapshot()
        if now.queued_audio_s and now.expected_wait_s > self.max_queue_wait_s:
            # The queue drains at `speed`: this is when the wait would be back within the bound.
            retry_after_s = max(1, math.ceil(now.expected_wait_s - self.max_queue_wait_s))
            raise Overloaded(
                f"the service is at capacity: {now.queued_audio_s:.0f} s of audio are queued ahead, about "
                f"{now.expected_wait_s:.0f} s of work (this service waits at most {self.max_queue_wait_s:g} s)"
                f"; retry after {retry_after_s} s", retry_after_s=retry_after_s)

    def _count(self, ticket: Ticket, audio_s: float) -> None:
        self._advance()
        self._queued_audio_s += audio_s - ticket.audio_s
        ticket.audio_s = audio_s

    def _learn_typical(self, audio_s: float) -> None:
        self.typical_audio_s += 0.2 * (audio_s - self.typical_audio_s)
