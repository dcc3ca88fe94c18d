"""How the API shows a job: its status object, and the events that follow it.

    {"id": "job_...", "object": "transcription.job", "task": "transcribe", "status": "running",
     "created_at": ..., "updated_at": ..., "expires_at": null, "response_format": "srt",
     "stage": "decode", "progress": {"audio_s": 7200.0, "decoded": true, "vad": true, "chunks_total": 240,
     "chunks_done": 96, "aligned": false, "diarized": false, "eta_s": 410.5},
     "attempts": 1, "error": null, "result_url": null, "callback": {"delivered": false}}

`status` is queued, running, succeeded, failed or cancelled; `stage` the last stage finished (decode,
asr, turns); `eta_s` an estimate of the seconds left (null until one can be made). A callback URL is not
shown back: its query string may hold the receiver's own token.
"""

from __future__ import annotations

from typing import Any

from serve_app.jobs.store import Job

JOB_OBJECT = "transcription.job"


def job_card(job: Job) -> dict[str, Any]:
    progress = dict(job.progress)
    if job.state == "succeeded":
        progress["eta_s"] = 0.0
    elif job.is_final:
        progress["eta_s"] = None
    return {
        "id": job.id, "object": JOB_OBJECT, "task": job.kind, "status": job.state,
        "created_at": round(job.created_at, 3), "updated_at": round(job.updated_at, 3),
        "expires_at": None if job.expires_at is None else round(job.expires_at, 3),
        "response_format": job.fields.get("response_format", "json"), "stage": job.stage, "progress": progress,
        "attempts": job.attempts, "error": job.error,
        "result_url": f"/v1/jobs/{job.id}/result" if job.state == "succeeded" else None,
        "callback": None if job.callback_url is None else {"delivered": job.callback_done},
    }


def job_event(job: Job) -> dict[str, Any]:
    """`job.updated` while a job is queued or running, then one of `job.succeeded`, `job.failed`,
    `job.cancelled` as the last event; each carries the job's status object."""
    kind = f"job.{job.state}" if job.is_final else "job.updated"
    return {"type": kind, "job": job_card(job)}
