"""Concurrent requests, and accuracy on synthetic speech with known text and known speaker turns."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import speech
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
