"""Concurrent requests, and accuracy on synthetic speech with known text and known speaker turns."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import real_speech, speech
from tests.audio_samples import pyannote_sample_wav_bytes
from tests.integration.conftest import conversation, paragraph, paragraph_wav, transcribe

pytestmark = pytest.mark.serve

# Tolerance on a speaker change: the diarized word around a turn boundary may land 0.5 s off.
TURN_TOLERANCE_S = 0.5


def test_four_concurrent_requests_all_answered_correctly(client):
    formats = ["json", "text", "srt", "verbose_json", "json", "vtt"]
    with ThreadPoolExecutor(len(formats)) as pool:
        responses = list(pool.map(lambda f: transcribe(client, paragraph_wav(), response_format=f), formats))
    for fmt, response in zip(formats, responses, strict=True):
        assert response.status_code == 200, (fmt, response.text)
        text = response.json()["text"] if fmt.endswith("json") else response.text
        if fmt in ("srt", "vtt"):
            text = " ".join(line for line in text.splitlines() if "-->" not in line and not line.isdigit())
        assert speech.word_error_rate(paragraph()[1], text.replace("WEBVTT", "")) < 0.15, fmt


def test_three_speaker_conversation(client):
    audio, turns = conversation()
    response = transcribe(client, speech.to_wav_bytes(audio), response_format="verbose_json", diarize="true",
                          **{"timestamp_granularities[]": ["word"]})
    body = response.json()
    assert response.status_code == 200, body
    assert len(body["speakers"]) == 3, body["speakers"]
    # Map each found label to the true speaker it overlaps most, then check every word far enough
    # from a turn boundary carries its true speaker.
    def true_speaker(t: float) -> str | None:
        return next((turn.speaker for turn in turns if turn.start_s <= t <= turn.end_s), None)

    votes: dict[tuple[str, str], int] = {}
    for w in body["words"]:
        truth = true_speaker((w["start"] + w["end"]) / 2)
        if truth is not None:
            votes[(w["speaker"], truth)] = votes.get((w["speaker"], truth), 0) + 1
    mapping = {}
    for (label, truth), _ in sorted(votes.items(), key=lambda kv: -kv[1]):
        mapping.setdefault(label, truth)
    assert sorted(set(mapping.values())) == sorted({t.speaker for t in turns}), mapping
    boundaries = [t.start_s for t in turns] + [t.end_s for t in turns]
    wrong = [w for w in body["words"]
             if min(abs(w["start"] - b) for b in boundaries) > TURN_TOLERANCE_S
             and true_speaker((w["start"] + w["end"]) / 2) not in (None, mapping.get(w["speaker"]))]
    assert len(wrong) <= len(body["words"]) * 0.05, wrong
    reference = " ".join(t.text for t in turns)
    assert speech.word_error_rate(reference, body["text"]) < 0.2


def _with_retry(client, data: bytes) -> dict:
    """verbose_json with words; a request shed with 503 (admission) is sent again after its Retry-After."""
    for _ in range(10):
        response = transcribe(client, data, response_format="verbose_json", **{"timestamp_granularities[]": ["word"]})
        if response.status_code != 503:
            break
        time.sleep(float(response.headers.get("retry-after", "1")))
    assert response.status_code == 200, response.text
    return response.json()


def test_a_requests_text_and_word_times_do_not_depend_on_the_company_it_keeps(client):
    # Real recordings of 5-77 s (1-3 speech chunks each): each alone, then each twice among 7 others, so
    # their chunks share batches with other requests' chunks.
    clips = {"pause": real_speech.wav_bytes("pause_in_first_window"), "call": pyannote_sample_wav_bytes(),
             "jfk": speech.to_wav_bytes(real_speech.clip("jfk").audio),
             "reader": speech.to_wav_bytes(real_speech.clip("reader-0870").audio)}
    alone = {name: _with_retry(client, data) for name, data in clips.items()}
    names = list(clips) * 2
    with ThreadPoolExecutor(len(names)) as pool:
        together = list(pool.map(lambda name: _with_retry(client, clips[name]), names))
    for name, body in zip(names, together, strict=True):
        assert body["text"] == alone[name]["text"], name
        assert body["words"] == alone[name]["words"], f"{name}: word times changed with company"
