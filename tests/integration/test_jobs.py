"""Durable jobs and enrolled speakers on the real models, over HTTP.

A job runs the same pipeline as a request, from a spooled upload, at background priority and with fewer
chunks in flight: its transcript must be the synchronous route's, in every format. The recording with
pauses (tests/integration/test_real_recordings.py's FILE, 77 s) is submitted as a job and compared with
the synchronous answers; a second job is followed through its events from the moment it is accepted.

Enrolled speakers: Diane and Sheila of pyannote's real call enrolled once from their references' clips
(tests/models/test_known_speakers.py cuts them and scores the names), then named by known_speaker_names[]
alone in a request and in a job, then deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.transcript import SpeakerTurn
from deployments.campplus import EMBEDDING_DIM
from tests import real_speech
from tests.integration.conftest import transcribe
from tests.integration.test_known_speakers import call, data_url
from tests.integration.test_real_recordings import FILE, upload
from tests.models.test_known_speakers import CORRECT_SHARE_BOUND, ENROLL_CLIPS, REFERENCE_S, _clips
from tests.speech import to_wav_bytes

pytestmark = pytest.mark.serve

JOBS_ROUTE = "/v1/audio/transcriptions/jobs"
JOB_TIMEOUT_S = 600  # measured 4-8 s for FILE and 39 s for LONG_FILE on two cores; room for a busy machine
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FINAL = {"succeeded", "failed", "cancelled"}
NAMES = ("diane", "sheila")
LONG_FILE = "meeting_10min"  # 595 s: about twenty chunks, four in flight at a time


def submit(client: httpx.Client, data: bytes, filename: str, **fields: Any) -> dict[str, Any]:
    """Submit a job; its status object (202)."""
    response = transcribe(client, data, filename, route=JOBS_ROUTE, **fields)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] in {"queued", "running"} and response.headers["location"] == f"/v1/jobs/{job['id']}"
    return job


def wait_for(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Poll the job's status every half second until it ends."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.5)


def result(client: httpx.Client, job_id: str, response_format: str | None = None) -> httpx.Response:
    params = {} if response_format is None else {"response_format": response_format}
    response = client.get(f"/v1/jobs/{job_id}/result", params=params)
    assert response.status_code == 200, response.text
    return response


def events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """The job's Server-Sent Events, read as they come until the server ends the stream."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line.startswith("data: ")]


# --- a job's transcript is the request's ---------------------------------------------------------


@pytest.fixture(scope="module")
def synchronous(client: httpx.Client) -> dict[str, httpx.Response]:
    """The recording through the synchronous route in each format (the job's format timed)."""
    answers = {}
    for response_format in FORMATS:
        started = time.monotonic()
        answers[response_format] = transcribe(client, upload(), "meeting.mp4", response_format=response_format)
        assert answers[response_format].status_code == 200, answers[response_format].text
        if response_format == "verbose_json":
            print(f"\nsynchronous verbose_json request on {FILE}: {time.monotonic() - started:.1f} s")
    return answers


def test_a_job_has_the_synchronous_text_in_every_format(client: httpx.Client,
                                                        synchronous: dict[str, httpx.Response]):
    started = time.monotonic()
    accepted = submit(client, upload(), "meeting.mp4", response_format="verbose_json")
    job = wait_for(client, accepted["id"])
    wall_s = time.monotonic() - started
    assert job["status"] == "succeeded", job
    print(f"\njob on {FILE}: {wall_s:.1f} s from upload to succeeded (server: "
          f"{job['updated_at'] - job['created_at']:.1f} s), attempts {job['attempts']}")
    assert job["result_url"] == f"/v1/jobs/{job['id']}/result" and job["progress"]["eta_s"] == 0.0
    assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] >= 3

    assert result(client, job["id"]).json() == result(client, job["id"], "verbose_json").json()
    assert result(client, job["id"], "json").json()["text"] == synchronous["json"].json()["text"]
    assert result(client, job["id"], "verbose_json").json()["text"] == synchronous["json"].json()["text"]
    assert result(client, job["id"], "verbose_json").json()["text"] == synchronous["verbose_json"].json()["text"]
    for response_format in ("text", "srt", "vtt"):
        assert result(client, job["id"], response_format).text == synchronous[response_format].text, response_format


def test_a_jobs_events_follow_its_chunks_to_the_end(client: httpx.Client):
    """Followed from the moment it is accepted. On the 10-minute meeting: FILE's three chunks come back in
    one ASR batch, so its chunks_done goes from 0 to 3 in one step."""
    started = time.monotonic()
    job = submit(client, real_speech.wav_bytes(LONG_FILE), "meeting.wav")
    seen = events(client, job["id"])
    wall_s = time.monotonic() - started
    kinds = [e["type"] for e in seen]
    assert kinds[-1] == "job.succeeded" and set(kinds[:-1]) == {"job.updated"}, kinds
    done = [e["job"]["progress"].get("chunks_done", 0) for e in seen]
    total = seen[-1]["job"]["progress"]["chunks_total"]
    print(f"\nevents of a job on {LONG_FILE}: {len(seen)} in {wall_s:.1f} s, chunks_done {done} of {total}")
    assert done == sorted(done) and done[-1] == total >= 10, done
    assert len({d for d in done if 0 < d < total}) >= 2, "progress is reported while the chunks come back"
    assert seen[-1]["job"] == client.get(f"/v1/jobs/{job['id']}").json()
    assert len(result(client, job["id"]).json()["text"].split()) > 1000


# --- enrolled speakers ------------------------------------------------------------------------------


ENROLLED: dict[str, Any] = {"known_speaker_names[]": list(NAMES)}  # and no known_speaker_references[]


def inline_references() -> dict[str, Any]:
    """Both women's REFERENCE_S references sent with the request, as test_known_speakers.py sends them."""
    references = call().references
    clips = [data_url(to_wav_bytes(r.audio)) for r in references if r.audio is not None]
    assert len(clips) == len(references)
    return {"known_speaker_names[]": [r.name for r in references], "known_speaker_references[]": clips}


def named(client: httpx.Client) -> httpx.Response:
    """The call's rest, diarized, naming both women by their enrolled voices alone."""
    return transcribe(client, to_wav_bytes(call().audio), "call.wav", response_format="diarized_json", **ENROLLED)


def shares(body: dict[str, Any]) -> tuple[float, float]:
    """Of the call's one-voice speech outside the references: the share labelled with its speaker's name
    (tests/models/test_known_speakers.py's score), and the share of what carries any label that carries the
    right name (diarized_json's segments span recognised words only, so pauses inside a turn are unlabelled)."""
    rest = call()
    labels = rest.labels([SpeakerTurn(s["speaker"], s["start"], s["end"]) for s in body["segments"]])
    scored, right = rest.voices != "", labels == rest.voices
    labelled = scored & (labels != "")
    return float((right & scored).sum() / scored.sum()), float((right & labelled).sum() / labelled.sum())


@pytest.fixture(scope="module")
def enrolled(client: httpx.Client) -> Iterator[list[dict[str, Any]]]:
    """Both women enrolled from ENROLL_CLIPS clips of their references; removed again at the end."""
    cards = []
    for reference in call().references:
        clips = [data_url(to_wav_bytes(clip)) for clip in _clips(reference)]
        response = client.post("/v1/speakers", json={"name": reference.name, "references": clips})
        assert response.status_code == 201, response.text
        cards.append(response.json())
    yield cards
    for name in NAMES:
        client.delete(f"/v1/speakers/{name}")


def test_enrolled_speakers_are_named_in_a_request_and_a_job(client: httpx.Client, enrolled: list[dict[str, Any]]):
    for card, name in zip(enrolled, NAMES, strict=True):
        assert card["object"] == "speaker" and card["name"] == name and "embedding" not in card
        assert card["dimension"] == EMBEDDING_DIM
        assert [c["duration_s"] for c in card["clips"]] == [REFERENCE_S / ENROLL_CLIPS] * ENROLL_CLIPS
    listed = {s["name"] for s in client.get("/v1/speakers").json()["data"]}
    assert set(NAMES) <= listed

    rest = call()
    inline = transcribe(client, to_wav_bytes(rest.audio), "call.wav", response_format="diarized_json",
                        **inline_references())
    assert inline.status_code == 200, inline.text
    started = time.monotonic()
    response = named(client)
    request_s = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert {s["speaker"] for s in body["segments"]} == set(NAMES), body["segments"]

    started = time.monotonic()
    job = wait_for(client, submit(client, to_wav_bytes(rest.audio), "call.wav", response_format="diarized_json",
                                  **ENROLLED)["id"])
    job_s = time.monotonic() - started
    assert job["status"] == "succeeded", job
    job_body = result(client, job["id"]).json()
    for how, answer in (("request", body), (f"job ({job_s:.1f} s)", job_body), ("inline references", inline.json())):
        of_speech, of_labelled = shares(answer)
        print(f"\ncorrectly named speech in the rest of the call, {how}: {of_speech:.1%} of its one-voice speech, "
              f"{of_labelled:.1%} of what diarized_json labels")
    print(f"speakers enrolled from {ENROLL_CLIPS} x {REFERENCE_S / ENROLL_CLIPS:g} s, inline references of "
          f"{REFERENCE_S:g} s; request {request_s:.1f} s")
    # Named exactly as the inline references name them, request and job alike.
    assert body["segments"] == inline.json()["segments"]
    assert job_body["segments"] == body["segments"]
    assert shares(body)[1] >= CORRECT_SHARE_BOUND


def test_a_deleted_speaker_is_not_found(client: httpx.Client, enrolled: list[dict[str, Any]]):
    for name in NAMES:
        response = client.delete(f"/v1/speakers/{name}")
        assert response.status_code == 200, response.text
        assert response.json() == {"object": "speaker.deleted", "name": name, "deleted": True}
    assert not set(NAMES) & {s["name"] for s in client.get("/v1/speakers").json()["data"]}
    for answer in (named(client), transcribe(client, to_wav_bytes(call().audio), "call.wav", route=JOBS_ROUTE,
                                             **ENROLLED)):
        assert answer.status_code == 404, answer.text
        error = answer.json()["error"]
        assert error["code"] == "speaker_not_found" and error["param"] == "known_speaker_names", error
        assert "'diane', 'sheila'" in error["message"]
    assert client.delete("/v1/speakers/diane").status_code == 404
