"""serve_app.metrics: how a request's answer is counted (the alerts' error and shed rates read it), and what
the job metrics record for each submit, run and end (on stand-ins for ray.serve.metrics)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest

from serve_app.jobs.store import Job
from serve_app.metrics import IngressMetrics, outcome


@pytest.mark.parametrize(("status", "shed", "expected"), [
    (200, False, "ok"), (400, False, "client_error"), (401, False, "client_error"), (413, False, "client_error"),
    (503, True, "shed"), (503, False, "server_error"), (500, False, "server_error")])
def test_outcome(status, shed, expected):
    assert outcome(status, shed) == expected


# --- jobs -----------------------------------------------------------------------------------------------


class RecordedMetric:
    """A Counter, Gauge or Histogram that keeps what was recorded: (value, tags) per call."""

    def __init__(self, kind: str, name: str, description: str = "", boundaries: list[float] | None = None,
                 tag_keys: tuple[str, ...] = ()) -> None:
        self.kind, self.name, self.boundaries, self.tag_keys = kind, name, boundaries, tuple(tag_keys)
        self.records: list[tuple[float, dict[str, str]]] = []

    def _record(self, value: float, tags: dict[str, str] | None) -> None:
        tags = tags or {}
        assert set(tags) == set(self.tag_keys), f"{self.name}: tags {sorted(tags)}, declared {self.tag_keys}"
        self.records.append((value, tags))

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        assert self.kind == "counter" and value > 0
        self._record(value, tags)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        assert self.kind == "gauge"
        self._record(value, tags)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        assert self.kind == "histogram"
        self._record(value, tags)


class RecordedMetrics:
    """Stands in for ray.serve.metrics: every metric made, by name."""

    def __init__(self) -> None:
        self.made: dict[str, RecordedMetric] = {}

    def _make(self, kind: str, name: str, **options: Any) -> RecordedMetric:
        assert name not in self.made, f"{name} made twice"
        self.made[name] = RecordedMetric(kind, name, **options)
        return self.made[name]

    def Counter(self, name: str, **options: Any) -> RecordedMetric:  # ray.serve.metrics' names
        return self._make("counter", name, **options)

    def Gauge(self, name: str, **options: Any) -> RecordedMetric:
        return self._make("gauge", name, **options)

    def Histogram(self, name: str, **options: Any) -> RecordedMetric:
        return self._make("histogram", name, **options)

    def records(self, name: str) -> list[tuple[float, dict[str, str]]]:
        return self.made[name].records


CREATED_AT = 1_700_000_000.0


def job(kind: str = "transcribe", state: str = "running", result: dict[str, Any] | None = None) -> Job:
    return Job(id="job_1", kind=kind, state=state, created_at=CREATED_AT, updated_at=CREATED_AT,  # type: ignore[arg-type]
               fields={}, input="/spool/1/upload", result=result, attempts=1)


@pytest.fixture
def recorded() -> tuple[IngressMetrics, RecordedMetrics]:
    made = RecordedMetrics()
    return IngressMetrics(made), made


def test_job_metrics_are_made_with_their_kinds_and_tags(recorded):
    _, made = recorded
    assert {name: (m.kind, m.tag_keys) for name, m in made.made.items() if "job" in name} == {
        "transcription_jobs_submitted": ("counter", ("task",)),
        "transcription_jobs_finished": ("counter", ("task", "state")),
        "transcription_jobs_running": ("gauge", ()),
        "transcription_job_audio_seconds": ("counter", ("task",)),
        "transcription_job_duration_seconds": ("histogram", ("task", "state")),
    }
    boundaries = made.made["transcription_job_duration_seconds"].boundaries
    assert boundaries == sorted(boundaries) and boundaries[0] <= 60 and boundaries[-1] >= 4 * 3600, \
        "minutes to hours"
    assert made.records("transcription_jobs_running") == [(0, {})], "0 before the first job, not no series"


def test_a_submitted_job_is_counted_by_task(recorded):
    metrics, made = recorded
    metrics.job_submitted("transcribe")
    metrics.job_submitted("translate")
    assert made.records("transcription_jobs_submitted") == [(1.0, {"task": "transcribe"}),
                                                            (1.0, {"task": "translate"})]


def test_a_succeeded_job_counts_its_audio_and_its_time_from_submit(recorded):
    metrics, made = recorded
    ended = job("translate", "succeeded", {"text": "hi", "duration_s": 754.5})
    metrics.job_ended(ended, "succeeded", now_s=CREATED_AT + 1800)
    assert made.records("transcription_jobs_finished") == [(1.0, {"task": "translate", "state": "succeeded"})]
    assert made.records("transcription_job_duration_seconds") == [(1800.0, {"task": "translate",
                                                                            "state": "succeeded"})]
    assert made.records("transcription_job_audio_seconds") == [(754.5, {"task": "translate"})]


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_a_job_that_ended_otherwise_counts_its_time_but_no_audio(recorded, outcome):
    metrics, made = recorded
    metrics.job_ended(job(result=None), outcome, now_s=CREATED_AT + 42)
    assert made.records("transcription_jobs_finished") == [(1.0, {"task": "transcribe", "state": outcome})]
    assert made.records("transcription_job_duration_seconds") == [(42.0, {"task": "transcribe", "state": outcome})]
    assert made.records("transcription_job_audio_seconds") == []


@pytest.mark.parametrize("outcome", ["retried", "released"])
def test_a_job_handed_back_is_counted_but_has_not_ended(recorded, outcome):
    metrics, made = recorded
    metrics.job_ended(job(), outcome, now_s=CREATED_AT + 42)
    assert made.records("transcription_jobs_finished") == [(1.0, {"task": "transcribe", "state": outcome})]
    assert made.records("transcription_job_duration_seconds") == []
    assert made.records("transcription_job_audio_seconds") == []


def test_job_duration_uses_the_wall_clock_without_now(recorded):
    metrics, made = recorded
    started = time.time()
    metrics.job_ended(replace(job(), created_at=started - 90), "failed")
    ((seconds, _),) = made.records("transcription_job_duration_seconds")
    assert 90 <= seconds <= 90 + (time.time() - started) + 1


async def test_running_jobs_are_counted_while_their_work_runs(recorded):
    metrics, made = recorded
    go_on = asyncio.Event()

    async def work(context: Any) -> dict[str, Any]:
        await go_on.wait()
        if context == "bad":
            raise ValueError("not decodable")
        return {"text": context}

    counted = metrics.counted(work)
    runs = [asyncio.ensure_future(counted(c)) for c in ("a", "bad")]
    await asyncio.sleep(0)
    assert [v for v, _ in made.records("transcription_jobs_running")] == [0, 1, 2]
    go_on.set()
    results = await asyncio.gather(*runs, return_exceptions=True)
    assert results[0] == {"text": "a"} and isinstance(results[1], ValueError)
    assert [v for v, _ in made.records("transcription_jobs_running")] == [0, 1, 2, 1, 0], \
        "a failed run is uncounted too"
