"""The ingress's metrics, through Ray Serve's metrics API (Prometheus via Ray's exporter; Serve adds the
deployment, replica and application tags itself). k8s/monitoring/ holds the dashboard and the alerts
written against these names; the model replicas export theirs from deployments/replica.py.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from serve_app.jobs.store import FINAL_STATES

if TYPE_CHECKING:
    from serve_app.jobs.runner import Work
    from serve_app.jobs.store import Job

logger = logging.getLogger(__name__)

STAGES = ("decode", "vad", "asr", "alignment", "diarization")
STAGE_SECONDS_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]
RTF_BOUNDARIES = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]
# A job's submit-to-end: seconds for a short file on an idle service, hours for a long one behind others.
JOB_SECONDS_BOUNDARIES: list[float] = [10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400]


def outcome(status_code: int, shed: bool) -> str:
    """What became of a request, for the dashboard and the alerts: ok, shed, client_error or server_error."""
    if shed:
        return "shed"
    if status_code < 400:
        return "ok"
    return "client_error" if status_code < 500 else "server_error"


class IngressMetrics:
    """Requests by route, format and outcome; audio processed; seconds and real-time factor per stage;
    the admission queue; jobs submitted, running here and ended here, their audio and their time from
    submit to end. Created in the replica (Ray's metrics need a running Ray).

    The jobs waiting in the store are not counted: the store offers no count, and every replica would
    report the same shared number."""

    def __init__(self, metrics: Any = None) -> None:
        """`metrics`: what makes Counter, Gauge and Histogram; ray.serve.metrics unless a test binds its own."""
        if metrics is None:
            from ray.serve import metrics

        self.requests = metrics.Counter(
            "transcription_requests", description="Requests answered, by route, response format, outcome "
            "(ok, client_error, shed, server_error) and HTTP status.",
            tag_keys=("route", "response_format", "outcome", "status"))  # type: ignore[arg-type]  # Ray hints tuple[str]
        self.audio_seconds = metrics.Counter(
            "transcription_audio_seconds", description="Audio seconds of the requests answered ok.",
            tag_keys=("route",))
        self.stage_seconds = metrics.Histogram(
            "transcription_stage_seconds", description="Wall time of each stage of a request.",
            boundaries=STAGE_SECONDS_BOUNDARIES, tag_keys=("stage",))
        self.stage_rtf = metrics.Histogram(
            "transcription_stage_rtf", description="Seconds of each stage per second of audio (real-time factor).",
            boundaries=RTF_BOUNDARIES, tag_keys=("stage",))
        self.queued_audio = metrics.Gauge(
            "transcription_queued_audio_seconds",
            description="Audio seconds admitted and not finished at this ingress replica.")
        self.expected_wait = metrics.Gauge(
            "transcription_expected_wait_seconds", description="The wait admission expects for a new request now.")
        self.max_queue_wait = metrics.Gauge(
            "transcription_max_queue_wait_seconds",
            description="ingress.max_queue_wait_s: admission sheds requests expected to wait longer.")
        self.jobs_submitted = metrics.Counter(
            "transcription_jobs_submitted", description="Jobs accepted (202) at this replica, by task.",
            tag_keys=("task",))
        self.jobs_finished = metrics.Counter(
            "transcription_jobs_finished", description="Runs of a job that ended at this replica's runner, by "
            "task and state: succeeded, failed, cancelled (the job ended), retried, released (handed back).",
            tag_keys=("task", "state"))  # type: ignore[arg-type]  # Ray hints tuple[str]
        self.jobs_running = metrics.Gauge(
            "transcription_jobs_running", description="Jobs this replica's runner works on now.")
        self.job_audio_seconds = metrics.Counter(
            "transcription_job_audio_seconds", description="Audio seconds of the jobs that succeeded here.",
            tag_keys=("task",))
        self.job_seconds = metrics.Histogram(
            "transcription_job_duration_seconds",
            description="Seconds from a job's submit to its end (succeeded, failed or cancelled), queueing "
            "and every attempt included.", boundaries=JOB_SECONDS_BOUNDARIES,
            tag_keys=("task", "state"))  # type: ignore[arg-type]  # Ray hints tuple[str]
        self._running_jobs = 0
        safely(self.jobs_running.set, 0)  # a series from the start, not from the first job

    def answered(self, route: str, response_format: str, status_code: int, shed: bool,
                 audio_s: float | None, stage_s: dict[str, float]) -> None:
        self.requests.inc(tags={"route": route, "response_format": response_format,
                                "outcome": outcome(status_code, shed), "status": str(status_code)})
        if status_code >= 400:
            return
        if audio_s:
            self.audio_seconds.inc(audio_s, tags={"route": route})
        for stage, seconds in stage_s.items():
            self.stage_seconds.observe(seconds, tags={"stage": stage})
            if audio_s:
                self.stage_rtf.observe(seconds / audio_s, tags={"stage": stage})

    def admission(self, queued_audio_s: float, expected_wait_s: float, max_queue_wait_s: float) -> None:
        self.queued_audio.set(queued_audio_s)
        self.expected_wait.set(expected_wait_s)
        self.max_queue_wait.set(max_queue_wait_s)

    def job_submitted(self, task: str) -> None:
        self.jobs_submitted.inc(tags={"task": task})

    def job_ended(self, job: Job, outcome: str, now_s: float | None = None) -> None:
        """A job's run ended here with `outcome` (the runner's on_end); `now_s`: epoch seconds, this
        machine's clock unless given (`job.created_at` is the store's; they differ by the clocks' skew)."""
        self.jobs_finished.inc(tags={"task": job.kind, "state": outcome})
        if outcome not in FINAL_STATES:  # handed back to the store: the job goes on
            return
        ended_s = time.time() if now_s is None else now_s
        self.job_seconds.observe(max(0.0, ended_s - job.created_at), tags={"task": job.kind, "state": outcome})
        audio_s = (job.result or {}).get("duration_s") if outcome == "succeeded" else None
        if audio_s:
            self.job_audio_seconds.inc(float(audio_s), tags={"task": job.kind})

    def counted(self, work: Work) -> Work:
        """`work`, counted in transcription_jobs_running while it runs."""
        async def counted_work(context: Any) -> dict[str, Any]:
            self._running_jobs += 1
            safely(self.jobs_running.set, self._running_jobs)
            try:
                return await work(context)
            finally:
                self._running_jobs -= 1
                safely(self.jobs_running.set, self._running_jobs)

        return counted_work


def safely(record: Any, *args: Any) -> None:
    """Call a recording method; metrics must never fail a request."""
    try:
        record(*args)
    except Exception:  # a broken metric is logged, never raised
        logger.debug("could not record metrics", exc_info=True)
