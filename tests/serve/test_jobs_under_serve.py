"""Durable jobs under a real Ray Serve, with fake holders: submit, follow, fetch in every format, cancel, page
through, get called back; and enrolled speakers named in later requests and jobs.

The fake ASR plans one chunk per 30 s and takes DELAY_S per batch; a job keeps 4 chunks in flight, so a
600 s job (20 chunks) takes about 5 batches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serve.callback_receiver import Receiver, callback_receiver
from tests.serve.fake_app import BATCH_LOG_ENV, DELAY_ENV
from tests.serve.served import WAIT_S, fake_app_served, free_port
from tests.speech import to_wav_bytes

pytestmark = [pytest.mark.serve, pytest.mark.timeout(420)]

DELAY_S = 0.3
CALLBACK_KEY = "callback-key-for-tests"
FORMATS = ("json", "text", "verbose_json", "srt", "vtt", "diarized_json")


@dataclass
class Served:
    url: str
    batch_log: Path
    receiver: Receiver

    def chunks_decoded(self) -> int:
        return sum(len(line.split()[1].split(",")) for line in self.batch_log.read_text().splitlines())


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with callback_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("jobs")
    batch_log = folder / "batches.log"
    batch_log.touch()
    args = {"ingress": {"max_upload_mib": 1},  # a job takes uploads the synchronous routes refuse
            "jobs": {"data_dir": str(folder / "data"), "max_upload_mib": 16, "lease_s": 2,
                     "callback_allow": ["127.0.0.1/32"], "callback_allow_http": True}}
    env = {DELAY_ENV: str(DELAY_S), BATCH_LOG_ENV: str(batch_log), "TRANSCRIPTION_CALLBACK_SECRET": CALLBACK_KEY}
    with fake_app_served(free_port(), env=env, args=args) as url:
        yield Served(url, batch_log, receiver)


def wav(seconds: float, sample_rate: int = 16_000) -> bytes:
    return to_wav_bytes(0.1 * np.sin(np.arange(int(seconds * sample_rate)) / 5).astype(np.float32), sample_rate)


def client(served: Served) -> httpx.Client:
    return httpx.Client(base_url=served.url, timeout=WAIT_S)


def submit(served: Served, audio: bytes, route: str = "transcriptions", **fields: Any) -> httpx.Response:
    with client(served) as http:
        return http.post(f"/v1/audio/{route}/jobs", files={"file": ("a.wav", audio)},
                         data={"model": "whisper-1", **fields})


def wait_for(served: Served, job_id: str, states: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with client(served) as http:
        while True:
            job = http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in states:
                return job
            assert time.monotonic() < deadline, f"job still {job['status']}: {job}"
            time.sleep(0.2)


def test_a_job_is_accepted_at_once_and_its_result_reads_the_same_as_a_request_in_every_format(served):
    audio = wav(300)
    started = time.monotonic()
    accepted = submit(served, audio, response_format="srt", diarize="true")
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert time.monotonic() - started < 5  # the 202 does not wait for the work
    assert job["object"] == "transcription.job" and job["status"] in ("queued", "running")
    assert accepted.headers["location"] == f"/v1/jobs/{job['id']}"
    done = wait_for(served, job["id"])
    assert done["status"] == "succeeded", done
    progress = done["progress"]
    assert (progress["decoded"], progress["vad"], progress["chunks_done"], progress["chunks_total"]) == \
        (True, True, 10, 10)
    assert progress["diarized"] is True and progress["eta_s"] == 0.0
    with client(served) as http:
        default = http.get(f"/v1/jobs/{job['id']}/result")
        assert default.status_code == 200 and default.headers["content-type"].startswith("text/plain")
        for response_format in FORMATS:
            fetched = http.get(f"/v1/jobs/{job['id']}/result", params={"response_format": response_format})
            assert fetched.status_code == 200, (response_format, fetched.text)
        again = http.get(f"/v1/jobs/{job['id']}/result", params={"response_format": "srt"})
        assert again.text == default.text  # as often as asked
        text = http.get(f"/v1/jobs/{job['id']}/result", params={"response_format": "json"}).json()["text"]
        verbose = http.get(f"/v1/jobs/{job['id']}/result", params={"response_format": "verbose_json"}).json()
        assert verbose["text"] == text and verbose["duration"] == pytest.approx(300)
        diarized = http.get(f"/v1/jobs/{job['id']}/result", params={"response_format": "diarized_json"}).json()
        assert {segment["speaker"] for segment in diarized["segments"]} == {"SPEAKER_00"}


def test_a_jobs_text_is_the_synchronous_routes_text_for_the_same_audio(served):
    audio = wav(30, sample_rate=8_000)  # 480 KB: under the synchronous limit too
    with client(served) as http:
        sync = {fmt: http.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)},
                               data={"model": "whisper-1", "response_format": fmt}) for fmt in ("json", "srt")}
    job = submit(served, audio).json()
    assert wait_for(served, job["id"])["status"] == "succeeded"
    with client(served) as http:
        as_json = http.get(f"/v1/jobs/{job['id']}/result").json()
        as_srt = http.get(f"/v1/jobs/{job['id']}/result", params={"response_format": "srt"}).text
    assert as_json["text"] == sync["json"].json()["text"]
    assert as_srt == sync["srt"].text


def test_a_jobs_events_follow_its_chunks_to_the_end(served):
    job = submit(served, wav(1200, sample_rate=4_000)).json()  # 40 chunks, 10 batches: about 3 s
    events = []
    with client(served) as http, http.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    *updates, last = events
    assert {e["type"] for e in updates} == {"job.updated"} and last["type"] == "job.succeeded"
    done = [e["job"]["progress"].get("chunks_done", 0) for e in updates]
    assert done == sorted(done) and len(set(done)) >= 3, done  # seen growing, chunk by chunk
    assert last["job"]["result_url"] == f"/v1/jobs/{job['id']}/result"


def test_a_cancelled_job_stops_its_chunks_and_frees_the_replicas(served):
    job = submit(served, wav(1200, sample_rate=4_000)).json()  # 40 chunks: about 3 s of batches
    running = wait_for(served, job["id"], states=("running",))
    deadline = time.monotonic() + 30
    with client(served) as http:
        while http.get(f"/v1/jobs/{job['id']}").json()["progress"].get("chunks_done", 0) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cancelled = http.post(f"/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        time.sleep(2 * DELAY_S)
        settled = served.chunks_decoded()
        time.sleep(4 * DELAY_S)
        assert served.chunks_decoded() == settled, "the job's chunks went on being decoded after its cancel"
        assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
        result = http.get(f"/v1/jobs/{job['id']}/result")
        assert result.status_code == 409 and result.json()["error"]["code"] == "job_not_succeeded"
        again = http.post(f"/v1/jobs/{job['id']}/cancel")  # cancelling an ended job changes nothing
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert running["status"] == "running"


def test_jobs_are_listed_newest_first_page_by_page(served):
    ids = [submit(served, wav(30, sample_rate=4_000)).json()["id"] for _ in range(3)]
    seen: list[str] = []
    after = None
    with client(served) as http:
        while True:
            page = http.get("/v1/jobs", params={"limit": 2, **({"after": after} if after else {})}).json()
            seen += [job["id"] for job in page["data"]]
            if not page["has_more"]:
                break
            after = page["next_cursor"]
        bad = http.get("/v1/jobs", params={"after": "not-a-cursor"})
    assert seen[:3] == ids[::-1]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"


def test_a_finished_job_calls_its_callback_once_signed(served):
    job = submit(served, wav(30, sample_rate=4_000), callback_url=served.receiver.url).json()
    assert wait_for(served, job["id"])["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while not [c for c in served.receiver.calls if json.loads(c[1])["id"] == job["id"]]:
        assert time.monotonic() < deadline, "no callback"
        time.sleep(0.2)
    time.sleep(3)  # a second delivery would come within the sender's next passes
    calls = [c for c in served.receiver.calls if json.loads(c[1])["id"] == job["id"]]
    assert len(calls) == 1
    headers, body = calls[0]
    signed = f"{headers['x-transcription-timestamp']}.".encode() + body
    expected = "sha256=" + hmac.new(CALLBACK_KEY.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-transcription-signature"], expected)
    assert json.loads(body)["status"] == "succeeded"
    with client(served) as http:
        assert http.get(f"/v1/jobs/{job['id']}").json()["callback"] == {"delivered": True}


@pytest.mark.parametrize(("fields", "param", "says"), [
    ({"callback_url": "http://169.254.169.254/latest/meta-data"}, "callback_url", "metadata"),
    ({"callback_url": "ftp://hooks.example.com/x"}, "callback_url", "http"),
    ({"stream": "true"}, "stream", "events"),
    ({"response_format": "pdf"}, "response_format", "response_format"),
    ({"known_speaker_names[]": "nobody-enrolled"}, "known_speaker_names", "enroll"),
])
def test_a_bad_job_is_refused_before_it_is_accepted(served, fields, param, says):
    refused = submit(served, wav(5, sample_rate=4_000), **fields)
    assert refused.status_code in (400, 404), refused.text
    error = refused.json()["error"]
    assert error["param"] == param and says in error["message"]


def test_job_uploads_may_be_larger_than_requests_and_unknown_jobs_are_404(served):
    audio = wav(60)  # 1.9 MB: over the synchronous limit of 1 MiB
    with client(served) as http:
        assert http.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)}).status_code == 413
        missing = http.get("/v1/jobs/job_0000")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
    job = submit(served, audio)
    assert job.status_code == 202
    assert wait_for(served, job.json()["id"])["status"] == "succeeded"


def test_a_translation_job_runs_as_a_translation(served):
    job = submit(served, wav(30, sample_rate=4_000), route="translations", model="base").json()
    assert job["task"] == "translate"
    assert wait_for(served, job["id"])["status"] == "succeeded"
    with client(served) as http:
        text = http.get(f"/v1/jobs/{job['id']}/result").json()["text"]
    assert text.startswith("translate by fake/base")


def _data_url(seconds: float) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav(seconds, sample_rate=8_000)).decode()


def test_an_enrolled_speaker_is_named_in_later_requests_and_jobs_until_deleted(served):
    with client(served) as http:
        enrolled = http.post("/v1/speakers", json={"name": "diane", "references": [_data_url(3), _data_url(4)]})
        assert enrolled.status_code == 201, enrolled.text
        card = enrolled.json()
        assert (card["name"], len(card["clips"]), card["dimension"]) == ("diane", 2, 3)
        assert "embedding" not in card  # a voiceprint is not handed out
        assert [s["name"] for s in http.get("/v1/speakers").json()["data"]] == ["diane"]
        named = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(20, sample_rate=8_000))},
                          data={"response_format": "diarized_json", "known_speaker_names[]": "diane"})
        assert named.status_code == 200, named.text
        assert {segment["speaker"] for segment in named.json()["segments"]} == {"diane"}
        job = submit(served, wav(20, sample_rate=8_000), response_format="diarized_json",
                     **{"known_speaker_names[]": "diane"}).json()
        assert wait_for(served, job["id"])["status"] == "succeeded"
        result = http.get(f"/v1/jobs/{job['id']}/result").json()
        assert {segment["speaker"] for segment in result["segments"]} == {"diane"}
        for bad, says in (({"name": "SPEAKER_01", "references": [_data_url(3)]}, "SPEAKER_"),
                          ({"name": "x", "references": [_data_url(1)]}, "2-10 s"),
                          ({"name": "x", "references": []}, "1 to 8")):
            refused = http.post("/v1/speakers", json=bad)
            assert refused.status_code == 400 and says in refused.json()["error"]["message"], refused.text
        assert http.delete("/v1/speakers/diane").json()["deleted"] is True
        assert http.delete("/v1/speakers/diane").status_code == 404
        gone = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(5, sample_rate=8_000))},
                         data={"known_speaker_names[]": "diane"})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "speaker_not_found"
