"""load_tests/locustfile.py's JobUser, run by Locust itself (load_tests.headless, a subprocess: importing
locust would monkey-patch this process) against a small HTTP server that plays the job routes: it submits
the repeated clip, polls with backoff until the job ends, fetches the result as SRT, and a job that fails
is a failure of its own row. A few seconds."""

from __future__ import annotations

import itertools
import json
import threading
import time
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from load_tests.headless import run_locust

CLIP_S = 0.5
REPEAT = 3
SRT = "1\n00:00:00,000 --> 00:00:01,500\nhello there\n\n"


class JobRoutes(BaseHTTPRequestHandler):
    """POST /v1/audio/transcriptions/jobs answers 202 with job_1, job_2, ...; each job is `queued`, then
    `running` for two more polls, then `succeeded` (odd ids) or `failed` (even ids)."""

    server: JobServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: str, content_type: str = "application/json") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/v1/audio/transcriptions/jobs":
            return self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))
        with self.server.lock:
            job_id = f"job_{len(self.server.polls) + 1}"
            self.server.polls[job_id] = []
            self.server.uploads.append(body)
        self._send(202, json.dumps({"id": job_id, "object": "transcription.job", "status": "queued"}))

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if parts[:2] != ["v1", "jobs"] or len(parts) < 3 or parts[2] not in self.server.polls:
            return self._send(404, json.dumps({"error": {"message": f"no job at {url.path}"}}))
        job_id = parts[2]
        if parts[3:] == ["result"]:
            self.server.results.append((job_id, parse_qs(url.query)))
            return self._send(200, SRT, "text/plain; charset=utf-8")
        with self.server.lock:
            polls = self.server.polls[job_id]
            polls.append(time.monotonic())
            n = len(polls)
        failed = int(job_id.removeprefix("job_")) % 2 == 0
        status = "queued" if n == 1 else "running" if n <= 3 else "failed" if failed else "succeeded"
        error = {"message": "the file is not audio"} if status == "failed" else None
        self._send(200, json.dumps({"id": job_id, "status": status, "error": error}))


class JobServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), JobRoutes)
        self.lock = threading.Lock()
        self.polls: dict[str, list[float]] = {}
        self.uploads: list[bytes] = []
        self.results: list[tuple[str, dict[str, list[str]]]] = []


@pytest.fixture
def server() -> Iterator[JobServer]:
    server = JobServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def silence_wav(path: Path, seconds: float) -> bytes:
    buf = BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(b"\0\0" * int(seconds * 16_000))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_job_users_follow_their_jobs_to_the_end_with_backoff(server: JobServer, tmp_path: Path):
    clip = silence_wav(tmp_path / "clip.wav", CLIP_S)
    env = {"LOAD_TEST_AUDIO": str(tmp_path / "clip.wav"), "LOAD_TEST_JOB_REPEAT": str(REPEAT),
           "LOAD_TEST_REQUIRE_TEXT": "1"}
    # Two users, one job each (a job takes four polls, 1 + 1.5 + 2.25 + 3.4 s; then 5-15 s of think time).
    run = run_locust(f"http://127.0.0.1:{server.server_port}", tmp_path / "locust", users=2, spawn_rate=2,
                     run_time_s=12, stop_timeout_s=10, env=env, user_classes=("JobUser",))
    assert run.exit_code == 1, "a failed job fails the run"
    rows = {k.kind: k for k in run.kinds}
    assert set(rows) == {"/v1/audio/transcriptions/jobs [submit]", "/v1/jobs/{id} [poll]",
                         "/v1/jobs/{id}/result [srt]", "job [submit to result]"}
    assert (rows["/v1/audio/transcriptions/jobs [submit]"].requests, rows["/v1/jobs/{id} [poll]"].requests) == (2, 8)
    assert (rows["/v1/jobs/{id}/result [srt]"].requests, rows["/v1/jobs/{id}/result [srt]"].failures) == (1, 0)
    whole = rows["job [submit to result]"]
    assert (whole.requests, whole.failures) == (2, 1)
    assert whole.p50_ms is not None and whole.p50_ms >= 7000, "a job's row times the whole job"
    assert [(f.kind, f.error) for f in run.failures] == [
        ("job [submit to result]", "JobProblem('job_2: failed: the file is not audio')")]
    assert run.exceptions == ()
    # The recording sent is the clip REPEAT times over; the result was asked for as SRT, of the job that ended.
    for upload in server.uploads:
        assert len(clip) * REPEAT - 44 * REPEAT < len(upload) and b"clip-x3.wav" in upload
    assert server.results == [("job_1", {"response_format": ["srt"]})]
    for polls in server.polls.values():
        gaps = [b - a for a, b in itertools.pairwise(polls)]
        assert [round(g, 1) for g in gaps] == pytest.approx([1.5, 2.25, 3.4], abs=0.3), "each wait 1.5x the last"
    summary = run.summary
    assert (summary["succeeded"], summary["jobs_succeeded"], summary["job_clip_s"]) == (1, 1, CLIP_S * REPEAT)
