"""Admission by expected wait: queued audio seconds over the measured speed, with a fake clock."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from core.errors import Overloaded
from serve_app.admission import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def hold(admission: Admission, stack: ExitStack, *lengths_s: float) -> None:
    """Admit requests of these lengths, decoded and at the models, until `stack` closes."""
    for length_s in lengths_s:
        stack.enter_context(admission.admit()).measured(length_s)


def test_an_idle_service_admits_any_length():
    admission = Admission(max_queue_wait_s=10, initial_speed=1, clock=Clock())
    with admission.admit() as ticket:  # four hours at an assumed 1x: still admitted, nothing is ahead
        ticket.measured(4 * 3600)


def test_a_request_behind_too_much_audio_is_refused_with_the_time_until_it_would_fit():
    admission = Admission(max_queue_wait_s=30, initial_speed=2, clock=Clock())
    with ExitStack() as stack:
        hold(admission, stack, 100)  # 100 s of audio at 2x: 50 s of work ahead
        with pytest.raises(Overloaded) as refused, admission.admit():
            pass
    assert refused.value.retry_after_s == 20  # 50 s expected, 30 s allowed
    assert "100 s of audio are queued ahead" in refused.value.message
    assert refused.value.status_code == 503


def test_duration_counts_not_requests():
    admission = Admission(max_queue_wait_s=30, initial_speed=2, clock=Clock())
    with ExitStack() as stack:
        hold(admission, stack, 10, 10, 10)  # 15 s of work: another is admitted
        with admission.admit():
            pass
        hold(admission, stack, 40)  # one long file: 35 s of work
        with pytest.raises(Overloaded), admission.admit():
            pass


def test_an_upload_in_transit_takes_no_place_and_a_decoding_one_the_typical_length():
    admission = Admission(max_queue_wait_s=30, initial_speed=1, clock=Clock())
    for _ in range(20):
        with admission.admit() as ticket:
            ticket.measured(20)
    assert admission.typical_audio_s == pytest.approx(20, rel=0.05)
    with ExitStack() as stack:
        for _ in range(10):  # ten clients stalled mid-upload: nothing queued
            stack.enter_context(admission.admit())
        assert admission.snapshot().queued_audio_s == 0
        uploaded = stack.enter_context(admission.admit())
        uploaded.uploaded()  # being decoded: counted as a typical request
        assert admission.snapshot().queued_audio_s == pytest.approx(20, rel=0.05)
        uploaded.measured(3)
        assert admission.snapshot().queued_audio_s == pytest.approx(3)


def test_the_speed_is_learned_from_completed_work():
    clock = Clock()
    admission = Admission(max_queue_wait_s=30, initial_speed=1, clock=clock)
    for _ in range(20):  # the service turns out 10x faster than assumed
        with admission.admit() as ticket:
            ticket.measured(100)
            clock.now += 10
    assert admission.snapshot().speed == pytest.approx(10, rel=0.1)
    with ExitStack() as stack:
        hold(admission, stack, 250)  # 25 s of work at the learned speed: another request still fits
        with admission.admit():
            pass


def test_time_spent_uploading_is_not_counted_as_model_time():
    clock = Clock()
    admission = Admission(max_queue_wait_s=30, initial_speed=10, clock=clock)
    with admission.admit() as ticket:
        clock.now += 600  # a ten-minute upload
        ticket.measured(100)
        clock.now += 10
    assert admission.snapshot().speed == pytest.approx(10, rel=0.01)


def test_failed_work_does_not_count_as_speed():
    clock = Clock()
    admission = Admission(max_queue_wait_s=30, initial_speed=1, clock=clock)
    with pytest.raises(RuntimeError), admission.admit() as ticket:
        ticket.measured(1000)
        clock.now += 1
        raise RuntimeError("the model failed")
    assert admission.snapshot().speed < 1
    assert admission.snapshot().queued_audio_s == 0


def test_measurements_decay_so_the_estimate_follows_a_change():
    clock = Clock()
    admission = Admission(max_queue_wait_s=30, initial_speed=1, half_life_s=60, clock=clock)
    for _ in range(30):  # fast for a while
        with admission.admit() as ticket:
            ticket.measured(100)
            clock.now += 10
    clock.now += 600  # ten half-lives idle: the old measurements weigh ~1/1000
    for _ in range(3):  # then slow
        with admission.admit() as ticket:
            ticket.measured(10)
            clock.now += 10
    assert admission.snapshot().speed < 2


def test_uploads_that_complete_together_are_checked_again_before_they_are_decoded():
    admission = Admission(max_queue_wait_s=30, initial_speed=1, clock=Clock())
    with ExitStack() as stack:
        tickets = [stack.enter_context(admission.admit()) for _ in range(3)]  # all in transit: admitted
        tickets[0].uploaded()  # 60 s (the first typical length) being decoded: 60 s of work ahead
        with pytest.raises(Overloaded):
            tickets[1].uploaded()
