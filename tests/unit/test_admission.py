"""Admission by expected wait: queued audio seconds over the measured speed, with a fake clock."""

from __future__ import annotations

import pytest

from core.errors import Overloaded
from serve_app.admission import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_service_admits_any_length():
    admission = Admission(max_queue_wait_s=10, initial_speed=1, clock=Clock())
    with admission.admit(4 * 3600):  # four hours at an assumed 1x: still admitted, nothing is ahead
        pass


def test_a_request_behind_too_much_audio_is_refused_with_the_time_until_it_would_fit():
    admission = Admission(max_queue_wait_s=30, initial_speed=2, clock=Clock())
    with admission.admit(100):  # 100 s of audio at 2x: 50 s of work ahead
        with pytest.raises(Overloaded) as refused:
            admission.check()
    assert refused.value.retry_after_s == 20  # 50 s expected, 30 s allowed
    assert "100 s of audio are queued ahead" in refused.value.message
    assert refused.value.status_code == 503


def test_duration_counts_not_requests():
    admission = Admission(max_queue_wait_s=30, initial_speed=2, clock=Clock())
    with admission.admit(10), admission.admit(10), admission.admit(10):  # 15 s of work: fine
        admission.check()
        with admission.admit(40), pytest.raises(Overloaded):  # one long file: 20 s more
            admission.check()


def test_the_speed_is_learned_from_completed_work():
    clock = Clock()
    admission = Admission(max_queue_wait_s=30, initial_speed=1, clock=clock)
    for _ in range(20):  # the service turns out 10x faster than assumed
        with admission.admit(100):
            clock.now += 10
    assert admission.snapshot().speed == pytest.approx(10, rel=0.1)
    with admission.admit(250):  # 25 s of work at the learned speed: another request still fits
        admission.check()


def test_failed_work_does_not_count_as_speed():
    clock = Clock()
    admission = Admission(max_queue_wait_s=30, initial_speed=1, clock=clock)
    with pytest.raises(RuntimeError), admission.admit(1000):
        clock.now += 1
        raise RuntimeError("the model failed")
    assert admission.snapshot().speed < 1
    assert admission.snapshot().queued_audio_s == 0


def test_measurements_decay_so_the_estimate_follows_a_change():
    clock = Clock()
    admission = Admission(max_queue_wait_s=30, initial_speed=1, half_life_s=60, clock=clock)
    for _ in range(30):  # fast for a while
        with admission.admit(100):
            clock.now += 10
    clock.now += 600  # ten half-lives idle: the old measurements weigh ~1/1000
    for _ in range(3):  # then slow
        with admission.admit(10):
            clock.now += 10
    assert admission.snapshot().speed < 2
