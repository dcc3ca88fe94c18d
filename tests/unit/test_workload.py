"""deployments.workload: the audio a replica holds, queued until the model starts on it."""

from __future__ import annotations

from deployments.workload import Workload


def test_work_is_queued_then_in_flight_then_gone():
    workload = Workload()
    with workload.track(30.0) as first, workload.track(12.5):
        assert workload.totals() == (42.5, 0.0)
        first.start()
        assert workload.totals() == (12.5, 30.0)
        assert first.waited_s is not None and first.waited_s >= 0
    assert workload.totals() == (0.0, 0.0)


def test_work_leaves_the_totals_when_its_call_fails():
    workload = Workload()
    try:
        with workload.track(5.0) as work:
            work.start()
            raise RuntimeError("model failed")
    except RuntimeError:
        pass
    assert workload.totals() == (0.0, 0.0)
