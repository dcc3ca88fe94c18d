"""Chunk priority under a real Ray Serve, with fake holders: an interactive request's chunks go into the
ASR replica's next batches ahead of a running job's waiting chunks, and queue behind a synchronous long
request's. Order only, read from the fake model's logs; no wall-clock thresholds.

One ASR replica, BATCH_SIZE chunks per batch, each batch DELAY_S. The long work is LONG_S of audio, all
chunks of exactly 30 s; the interactive request is MARK_S (45 s): chunks of 30 s and 15 s, and the 15 s
one marks it in the logs. It also asks for diarization, and the fake diarization call's line in
$FAKE_CALL_LOG, which the fake ASR writes one line per chunk to as each batch starts, marks where in
the batch order the request reached the model deployments.

What follows that mark, with priority: at most one batch that was starting then, one that the request's
plan call waits out (the plan runs on the model's one thread, between two batches), and then its chunks
go into the first batch that starts after they arrive, or the second if the two arrive across a batch's
start. So at most three batches between the mark and the 15 s chunk's. A job keeps JOB_WINDOW chunks in
flight, about two batches: one decoding, one waiting. A synchronous request keeps
args.ingress.max_chunks_in_flight (32) in flight, eight batches, all at interactive priority too, so the
interactive chunks wait behind the seven that are queued. (Seen on two cores: one batch between the mark
and the interactive chunks' beside the job, at the head of the batch after the plan's; seven beside the
long request.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from core.audio import SAMPLE_RATE_HZ
from tests.serve.fake_app import BATCH_LOG_ENV, CALL_LOG_ENV, DELAY_ENV
from tests.serve.served import ASR_USER_CONFIG, WAIT_S, fake_app_served, free_port
from tests.speech import to_wav_bytes

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]

DELAY_S = 0.5
BATCH_SIZE = 4
JOB_WINDOW = 8
SYNC_WINDOW = 32  # args.ingress.max_chunks_in_flight's default
UPLOAD_RATE_HZ = 4_000  # small uploads; the service resamples them to SAMPLE_RATE_HZ
LONG_S = 3600  # 120 chunks of 30 s: 30 batches, 15 s of decoding
MARK_S = 45
CHUNK_SAMPLES = 30 * SAMPLE_RATE_HZ
MARK_SAMPLES = (MARK_S - 30) * SAMPLE_RATE_HZ
MAX_BATCHES_AHEAD = 3  # with priority, as the module's docstring counts them


@dataclass
class Served:
    url: str
    call_log: Path
    batch_log: Path

    def batches_after_mark(self, since_line: int) -> tuple[list[list[int]], list[int]]:
        """The batches that started after the first diarization call logged from line `since_line` of the
        call log on, up to the one holding the interactive request's 15 s chunk: (the batches before it,
        each as its chunks' samples; that batch's)."""
        # The batch log first: every batch line read then has its chunk lines in the call log already.
        batch_lines = self.batch_log.read_text().splitlines()
        calls = [line.split() for line in self.call_log.read_text().splitlines()]
        mark = next(i for i, (holder, _, _) in enumerate(calls)
                    if i >= since_line and holder == "FakeDiarizationHolder")
        # The ASR lines in call-log order, grouped as the batch log groups them (one model thread
        # writes both, a batch's chunk lines just before its batch line): each batch's first call-log line.
        asr_lines = [i for i, (holder, _, _) in enumerate(calls) if holder == "FakeAsrHolder"]
        batches, first = [], 0
        for line in batch_lines:
            sizes = [int(n) for n in line.split()[1].split(",")]
            batches.append((asr_lines[first], sizes))
            first += len(sizes)
        after = [sizes for start, sizes in batches if start > mark]
        at = next(k for k, sizes in enumerate(after) if MARK_SAMPLES in sizes)
        return after[:at], after[at]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("priority")
    call_log, batch_log = folder / "calls.log", folder / "batches.log"
    call_log.touch()
    batch_log.touch()
    env = {DELAY_ENV: str(DELAY_S), CALL_LOG_ENV: str(call_log), BATCH_LOG_ENV: str(batch_log)}
    # Room at the replica for the synchronous request's whole window and the interactive request: every
    # chunk reaches the replica's queue, where priority decides, rather than waiting in Serve's router.
    asr_options = {"num_replicas": 1, "max_ongoing_requests": 64,
                   "user_config": {**ASR_USER_CONFIG, "batch_size": BATCH_SIZE}}
    args = {"ingress": {"max_queue_wait_s": 3600, "max_chunks_in_flight": SYNC_WINDOW},  # nothing is shed
            "jobs": {"data_dir": str(folder / "data"), "max_chunks_in_flight": JOB_WINDOW}}
    with fake_app_served(free_port(), env=env, asr_options=asr_options, args=args) as url:
        yield Served(url, call_log, batch_log)


def wav(seconds: float) -> bytes:
    samples = np.arange(int(seconds * UPLOAD_RATE_HZ))
    return to_wav_bytes(0.1 * np.sin(samples / 5).astype(np.float32), UPLOAD_RATE_HZ)


def client(served: Served) -> httpx.Client:
    return httpx.Client(base_url=served.url, timeout=WAIT_S)


def interactive(served: Served) -> tuple[list[list[int]], list[int]]:
    """Send the marked interactive request; the batches between its mark and its 15 s chunk's, and that one."""
    since_line = len(served.call_log.read_text().splitlines())
    with client(served) as http:
        response = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(MARK_S))},
                             data={"model": "whisper-1", "diarize": "true", "response_format": "diarized_json"})
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == pytest.approx(MARK_S)
    return served.batches_after_mark(since_line)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.1)


def test_interactive_chunks_pass_a_running_jobs_waiting_chunks(served):
    with client(served) as http:
        accepted = http.post("/v1/audio/transcriptions/jobs", files={"file": ("long.wav", wav(LONG_S))},
                             data={"model": "whisper-1"})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]

        def progress() -> dict[str, Any]:
            return http.get(f"/v1/jobs/{job_id}").json()

        # Two batches done: the job's window is full, a batch decoding and the next one's chunks waiting.
        wait_until(lambda: progress()["progress"].get("chunks_done", 0) >= 2 * BATCH_SIZE, "the job to run")
        ahead, batch = interactive(served)
        job = progress()
    assert job["status"] == "running", job  # the job was still sending chunks throughout
    assert len(ahead) <= MAX_BATCHES_AHEAD, ahead
    assert all(sizes == [CHUNK_SAMPLES] * BATCH_SIZE for sizes in ahead), ahead  # the job's, full batches
    assert len(batch) == BATCH_SIZE  # the job's chunks filled the rest of the interactive request's batch
    with client(served) as http:
        wait_until(lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded", "the job to end")


def test_interactive_chunks_queue_behind_a_long_synchronous_requests_chunks(served):
    """The control: the same long audio as a request of its own, at interactive priority like every
    request, takes the replica's queue in arrival order."""
    batches_before = len(served.batch_log.read_text().splitlines())
    answers: list[httpx.Response] = []

    def long_request() -> None:
        with httpx.Client(base_url=served.url, timeout=300) as http:
            answers.append(http.post("/v1/audio/transcriptions", files={"file": ("long.wav", wav(LONG_S))},
                                     data={"model": "whisper-1"}))

    sender = threading.Thread(target=long_request)
    sender.start()
    try:
        # Two of its batches started: its whole window has been sent to the replica.
        wait_until(lambda: len(served.batch_log.read_text().splitlines()) >= batches_before + 2,
                   "the long request to run")
        ahead, _ = interactive(served)
    finally:
        sender.join(timeout=300)
    assert answers and answers[0].status_code == 200, answers
    assert all(sizes == [CHUNK_SAMPLES] * BATCH_SIZE for sizes in ahead), ahead  # the long request's
    # Its queued chunks, SYNC_WINDOW less the batch decoding, were taken first: far more than a job's.
    # One batch fewer than that when its refills after the plan's batch arrive behind the interactive chunks.
    queued_batches = (SYNC_WINDOW - BATCH_SIZE) // BATCH_SIZE
    assert len(ahead) >= queued_batches - 1, ahead
    assert queued_batches - 1 > MAX_BATCHES_AHEAD + 2  # the control tells the two cases apart by a margin
