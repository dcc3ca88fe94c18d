"""Chunk-level ASR under a real Ray Serve, with fake holders: chunks of concurrent requests share a batch,
one long file's chunks are spread over both ASR replicas and come back in order, and a request's progress
is visible while it runs.

The fake ASR plans one chunk per 30 s of audio and logs each batch it decodes (pid, samples per chunk);
every batch takes DELAY_S, so chunks arriving meanwhile queue up for the next one.

Serve's router sends each call to the less loaded of two replicas by its cached queue lengths, counting
its own sends; a replica missing from that cache is probed in the background while the other takes the
calls, so a short burst may all go to one replica. Both get work once one is full.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serve.fake_app import BATCH_LOG_ENV, DELAY_ENV
from tests.serve.served import WAIT_S, fake_app_served, free_port
from tests.speech import to_wav_bytes

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]

DELAY_S = 1.0
SAMPLE_RATE = 16_000
# 20 chunks of 30 s: more than one replica's max_ongoing_requests (16), so that even a router whose
# queue-length cache knows only one replica yet (it then routes there until that one is full) uses both.
LONG_S = 600


@dataclass
class Served:
    url: str
    batch_log: Path

    def batches(self) -> list[tuple[int, list[int]]]:
        """(pid, samples of each chunk) of every batch decoded so far, oldest first."""
        found = []
        for line in self.batch_log.read_text().splitlines():
            pid, sizes = line.split()
            found.append((int(pid), [int(n) for n in sizes.split(",")]))
        return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    batch_log = tmp_path_factory.mktemp("chunks") / "batches.log"
    batch_log.touch()
    # Two ASR replicas with room for a full batch each (8 chunks) and the next one filling.
    asr_options = {"num_replicas": 2, "max_ongoing_requests": 16}
    with fake_app_served(free_port(), env={DELAY_ENV: str(DELAY_S), BATCH_LOG_ENV: str(batch_log)},
                         asr_options=asr_options) as url:
        yield Served(url, batch_log)


def wav(seconds: float) -> bytes:
    return to_wav_bytes(0.1 * np.sin(np.arange(int(seconds * SAMPLE_RATE)) / 5).astype(np.float32))


def transcribe(url: str, audio: bytes, **fields: Any) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        return client.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)},
                           data={"model": "whisper-1", **fields})


def test_chunks_of_concurrent_requests_share_a_batch(served):
    # Eight short requests, each its own length, so the batch log tells them apart. Each is decoded in a
    # process of its own first, so on a busy two-core machine they may reach the replicas spread out over
    # more than their batches take; a few rounds, then, and one of them must show the sharing.
    lengths = [SAMPLE_RATE * 2 + 2000 * i for i in range(8)]  # 1/8 s steps: exact in seconds
    rounds = []
    for _ in range(3):
        before = len(served.batches())
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda n: transcribe(served.url, wav(n / SAMPLE_RATE)), lengths))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        assert {r.json()["text"] for r in responses} == {"transcribe by fake/tiny.en"}
        batches = served.batches()[before:]
        decoded = sorted(n for _, sizes in batches for n in sizes)
        assert decoded == sorted(lengths), "each request's one chunk decoded once"
        rounds.append(batches)
        if max(len(sizes) for _, sizes in batches) > 1 and len(batches) < len(lengths):
            return
    raise AssertionError(f"no batch held two requests' chunks in {len(rounds)} rounds: {rounds}")


def test_a_long_files_chunks_are_spread_over_both_replicas_and_put_back_in_order(served):
    before = len(served.batches())
    response = transcribe(served.url, wav(LONG_S), response_format="verbose_json")
    assert response.status_code == 200, response.text
    segments = response.json()["segments"]
    assert [(s["start"], s["end"]) for s in segments] == [(float(t), float(t + 30)) for t in range(0, LONG_S, 30)]
    batches = served.batches()[before:]
    assert sum(len(sizes) for _, sizes in batches) == LONG_S // 30, "each chunk decoded once"
    assert len({pid for pid, _ in batches}) == 2, f"one replica did all the work: {batches}"


def test_a_long_requests_progress_is_visible_while_it_runs(served):
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=served.url, timeout=WAIT_S) as client:
            while not done.is_set():
                seen.extend(client.get("/v1/models/status").json()["requests"])
                time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        response = transcribe(served.url, wav(LONG_S), response_format="json")
    finally:
        done.set()
        watcher.join()
    assert response.status_code == 200, response.text
    mine = [p for p in seen if p["chunks_total"] == LONG_S // 30]
    assert mine, f"the request never showed its chunks: {seen}"
    done_counts = [p["chunks_done"] for p in mine]
    assert done_counts == sorted(done_counts), "progress only moves forward"
    assert mine[0]["audio_s"] == LONG_S and min(done_counts) < LONG_S // 30


def stream_events(url: str, audio: bytes, **fields: Any) -> tuple[httpx.Response, list[dict[str, Any]]]:
    with httpx.Client(base_url=url, timeout=WAIT_S) as client:
        response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)},
                               data={"model": "whisper-1", "stream": "true", **fields})
    events = [json.loads(line.removeprefix("data: ")) for line in response.text.split("\n\n") if line]
    return response, events


def test_a_stream_sends_the_text_chunk_by_chunk_in_order_then_done_with_the_same_text(served):
    audio = wav(LONG_S)
    plain = transcribe(served.url, audio, response_format="json").json()
    response, events = stream_events(served.url, audio)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    *deltas, done = events
    assert {e["type"] for e in deltas} == {"transcript.text.delta"} and len(deltas) == LONG_S // 30
    assert done["type"] == "transcript.text.done"
    assert "".join(e["delta"] for e in deltas) == done["text"] == plain["text"]
    assert done["usage"] == plain["usage"]


def test_a_diarized_stream_adds_speaker_segments_before_done(served):
    _, events = stream_events(served.url, wav(60), response_format="diarized_json")
    types = [e["type"] for e in events]
    assert types == ["transcript.text.delta"] * 2 + ["transcript.text.segment"] * 2 + ["transcript.text.done"]
    assert {e["speaker"] for e in events if e["type"] == "transcript.text.segment"} == {"SPEAKER_00"}


def test_the_openai_clients_stream_reads_the_events_unchanged(served):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    stream = client.audio.transcriptions.create(file=("a.wav", wav(90)), model="whisper-1", stream=True)
    events = list(stream)
    assert [type(e).__name__ for e in events] == ["TranscriptionTextDeltaEvent"] * 3 + ["TranscriptionTextDoneEvent"]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text


def test_a_client_that_leaves_the_stream_cancels_the_chunks_not_yet_decoded(served):
    before = len(served.batches())
    with httpx.Client(base_url=served.url, timeout=WAIT_S) as client, client.stream(
            "POST", "/v1/audio/transcriptions", files={"file": ("a.wav", wav(LONG_S * 2))},
            data={"model": "whisper-1", "stream": "true"}) as response:
        assert response.status_code == 200
        first = next(response.iter_lines())
        assert json.loads(first.removeprefix("data: "))["type"] == "transcript.text.delta"
    # Gone after the first delta. What was decoding then may finish; nothing else starts.
    time.sleep(3 * DELAY_S)
    settled = len(served.batches())
    time.sleep(3 * DELAY_S)
    assert len(served.batches()) == settled, "chunks went on being decoded after the client left"
    decoded = sum(len(sizes) for _, sizes in served.batches()[before:])
    assert decoded < LONG_S * 2 // 30, f"all {decoded} chunks were decoded for a client that left"
