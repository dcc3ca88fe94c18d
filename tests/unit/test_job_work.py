"""A job's progress as its status shows it: the stages reached, and the estimate of the seconds left."""

from __future__ import annotations

import time

import pytest

from serve_app.jobs.work import job_progress
from serve_app.progress import Progress
from serve_app.schemas import TranscriptionRequest

SPEED = 40.0  # audio seconds per second


def request(**fields: object) -> TranscriptionRequest:
    return TranscriptionRequest.model_validate({"model": "whisper-1", **fields})


def started_s_ago(seconds: float) -> Progress:
    progress = Progress("job")
    progress.started = time.monotonic() - seconds
    return progress


def test_before_decoding_nothing_is_known():
    shown = job_progress(Progress("job"), request(), {}, SPEED)
    assert shown == {"audio_s": None, "decoded": False, "vad": False, "chunks_total": None, "chunks_done": 0,
                     "aligned": False, "diarized": None, "eta_s": None}


def test_before_vad_the_estimate_is_the_audio_at_the_services_speed():
    progress = Progress("job")
    progress.audio_s = 120.0
    shown = job_progress(progress, request(), {}, SPEED)
    assert (shown["decoded"], shown["vad"], shown["eta_s"]) == (True, False, 3.0)
    assert job_progress(progress, request(), {}, 0.0)["eta_s"] > 1e6, "no speed measured: no division by zero"


def test_during_the_chunks_the_estimate_is_the_pace_of_those_done():
    progress = started_s_ago(10.0)
    progress.stage_s.update(decode=1.0, vad=1.0)  # 8 s of chunks since
    progress.planned(10, 120.0)
    for _ in range(4):
        progress.chunk_done()
    shown = job_progress(progress, request(), {}, SPEED)
    assert (shown["vad"], shown["chunks_total"], shown["chunks_done"]) == (True, 10, 4)
    assert shown["eta_s"] == pytest.approx(8.0 / 4 * 6, abs=0.1), "not the audio at the service's speed (3 s)"
    for _ in range(6):
        progress.chunk_done()
    assert job_progress(progress, request(), {}, SPEED)["eta_s"] == 0.0


def test_a_vad_with_no_chunk_done_yet_falls_back_to_the_services_speed():
    progress = started_s_ago(5.0)
    progress.stage_s.update(decode=1.0, vad=1.0)
    progress.planned(10, 80.0)
    assert job_progress(progress, request(), {}, SPEED)["eta_s"] == 2.0


def test_an_attempt_that_resumed_after_asr_counts_the_chunks_of_the_earlier_one():
    progress = Progress("job")
    progress.audio_s = 120.0
    progress.chunks_total = progress.chunks_done = 10  # as JobWork sets them when the ASR result was kept
    shown = job_progress(progress, request(), {"chunks_total": 10, "chunks_done": 10}, SPEED)
    assert (shown["chunks_total"], shown["chunks_done"], shown["eta_s"]) == (10, 10, None)
    fresh = Progress("job")
    assert job_progress(fresh, request(), {"chunks_total": 7}, SPEED)["chunks_total"] == 7


@pytest.mark.parametrize(("fields", "aligned", "diarized"), [
    ({}, False, None),
    ({"align": False}, None, None),
    ({"task": "translate"}, None, None),
    ({"diarize": True}, False, False),
    ({"diarize": True, "align": False}, None, False),
])
def test_stages_not_asked_for_are_none_and_the_others_false_until_done(fields, aligned, diarized):
    progress = Progress("job")
    shown = job_progress(progress, request(**fields), {}, SPEED)
    assert (shown["aligned"], shown["diarized"]) == (aligned, diarized)
    progress.aligned, progress.diarized = True, True
    done = job_progress(progress, request(**fields), {}, SPEED)
    asked = {"aligned": aligned is not None, "diarized": diarized is not None}
    assert {stage: done[stage] for stage in asked} == {stage: True if on else None for stage, on in asked.items()}
