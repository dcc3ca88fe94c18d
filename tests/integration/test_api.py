"""The running service over HTTP: every response format, video input, models and health."""

from __future__ import annotations

import re

import pytest

from serve_app.ingress import WARNING_HEADER
from tests import speech
from tests.audio_samples import pyannote_sample, pyannote_sample_wav_bytes
from tests.integration.conftest import paragraph, paragraph_wav, transcribe
from tests.media_files import encode_audio, encode_video

pytestmark = pytest.mark.serve

# Measured on the embedded default (tiny.en int8): WER 0.029-0.059 on the synthetic paragraph.
WER_BOUND = 0.15
SRT_CUE = re.compile(r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+?)(?:\n\n|\n?$)", re.S)


def test_json(client):
    response = transcribe(client, paragraph_wav())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert speech.word_error_rate(paragraph()[1], response.json()["text"]) < WER_BOUND
    assert response.headers["x-request-id"]


def test_text(client):
    response = transcribe(client, paragraph_wav(), response_format="text")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert speech.word_error_rate(paragraph()[1], response.text) < WER_BOUND


def test_srt_cues_cover_the_speech_in_order(client):
    response = transcribe(client, paragraph_wav(), response_format="srt", max_line_chars=32)
    assert response.status_code == 200, response.text
    cues = SRT_CUE.findall(response.text.strip() + "\n")
    assert len(cues) >= 3
    assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))
    for _, _, _, text in cues:
        assert all(len(line) <= 32 for line in text.splitlines()), text
    text = " ".join(c[3].replace("\n", " ") for c in cues)
    assert speech.word_error_rate(paragraph()[1], text) < WER_BOUND


def test_vtt(client):
    response = transcribe(client, paragraph_wav(), response_format="vtt")
    assert response.status_code == 200
    assert response.text.startswith("WEBVTT\n\n")
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", response.text)


def test_verbose_json_with_words_inside_their_segments(client):
    response = transcribe(client, paragraph_wav(), response_format="verbose_json",
                          **{"timestamp_granularities[]": ["word", "segment"]})
    body = response.json()
    assert response.status_code == 200, body
    assert body["language"] == "english" and body["duration"] == pytest.approx(len(paragraph()[0]) / 16000, abs=0.05)
    assert body["word_source"] == "whisper"  # no alignment model ships offline
    words, segments = body["words"], body["segments"]
    assert len(words) >= 20 and segments
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    for w in words:
        assert w["start"] <= w["end"]
        assert any(s["start"] - 0.05 <= w["start"] and w["end"] <= s["end"] + 0.05 for s in segments)


def test_real_phone_call_with_speakers(client):
    response = transcribe(client, pyannote_sample_wav_bytes(), response_format="diarized_json")
    body = response.json()
    assert response.status_code == 200, body
    speakers = {s["speaker"] for s in body["segments"]}
    assert len(speakers) == 2, speakers
    assert speech.word_error_rate(pyannote_sample()[1], body["text"]) < 0.3


def test_mp3_and_video_inputs(client):
    samples, reference = paragraph()
    for name, data in (("speech.mp3", encode_audio(samples)), ("talk.mp4", encode_video(samples))):
        response = transcribe(client, data, filename=name)
        assert response.status_code == 200, (name, response.text)
        assert speech.word_error_rate(reference, response.json()["text"]) < WER_BOUND, name


def test_a_truncated_upload_is_transcribed_as_far_as_it_goes_and_says_so(client):
    samples, reference = paragraph()
    whole = encode_audio(samples)
    assert WARNING_HEADER not in transcribe(client, whole, filename="speech.mp3").headers
    cut = whole[: len(whole) // 2]
    for fmt in ("srt", "verbose_json"):
        response = transcribe(client, cut, filename="cut.mp3", response_format=fmt)
        assert response.status_code == 200, response.text
        assert "truncated or damaged" in response.headers[WARNING_HEADER]
        assert "its header declares" in response.headers[WARNING_HEADER]
    body = response.json()
    assert body["warnings"] == [response.headers[WARNING_HEADER]]
    # what was decoded is transcribed: the paragraph's first half, none of its end
    words = speech.normalize_text(body["text"]).split()
    assert 0.3 < len(words) / len(speech.normalize_text(reference).split()) < 0.7
    assert body["duration"] < 0.6 * len(samples) / speech.SAMPLE_RATE


def test_a_request_without_a_model_uses_the_default(client):
    response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", paragraph_wav())})
    assert response.status_code == 200, response.text
    assert speech.word_error_rate(paragraph()[1], response.json()["text"]) < 0.15


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    cards = {m["id"]: m for m in models["data"]}
    assert models["object"] == "list" and set(cards) == {"tiny.en", "base", "whisper-1"}
    assert cards["tiny.en"]["default"] and cards["tiny.en"]["loaded"], "the default model loads at start-up"
    assert cards["whisper-1"]["alias_of"] == "tiny.en"
    assert client.get("/v1/models/whisper-1").json()["id"] == "whisper-1"
    assert client.get("/v1/models/nope").status_code == 404
    assert client.get("/health").json() == {"status": "ok"}


def test_model_status_reports_each_deployment_and_replica(client):
    status = client.get("/v1/models/status").json()["deployments"]
    [asr] = status["asr"]["replicas"]
    assert asr["offered"] == ["base", "tiny.en"] and "tiny.en" in asr["loaded"] and asr["healthy"]
    assert asr["loaded"]["tiny.en"]["model"] == "bundled/tiny.en" and asr["loaded"]["tiny.en"]["pinned"]
    assert asr["device"] == "cpu" and asr["memory_now_bytes"] > 0 and asr["replica"]
    [diarization] = status["diarization"]["replicas"]
    assert diarization["model"] == "embedded" and diarization["healthy"]
    [alignment] = status["alignment"]["replicas"]
    assert alignment["loaded"] == {} and alignment["offered"] == []
