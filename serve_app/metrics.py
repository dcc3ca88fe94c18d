"""The ingress's metrics, through Ray Serve's metrics API (Prometheus via Ray's exporter; Serve adds the
deployment, replica and application tags itself). k8s/monitoring/ holds the dashboard and the alerts
written against these names; the model replicas export theirs from deployments/replica.py.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

STAGES = ("decode", "vad", "asr", "alignment", "diarization")
STAGE_SECONDS_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]
RTF_BOUNDARIES = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]


def outcome(status_code: int, shed: bool) -> str:
    """What became of a request, for the dashboard and the alerts: ok, shed, client_error or server_error."""
    if shed:
        return "shed"
    if status_code < 400:
        return "ok"
    return "client_error" if status_code < 500 else "server_error"


class IngressMetrics:
    """Requests by route, format and outcome; audio processed; seconds and real-time factor per stage;
    the admission queue. Created in the replica (Ray's metrics need a running Ray)."""

    def __init__(self) -> None:
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


def safely(record: Any, *args: Any) -> None:
    """Call a recording method; metrics must never fail a request."""
    try:
        record(*args)
    except Exception:  # a broken metric is logged, never raised
        logger.debug("could not record metrics", exc_info=True)
