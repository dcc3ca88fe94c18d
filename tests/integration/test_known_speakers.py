"""Known speakers through the API, as OpenAI's client sends them: names and 2-10 s references as data URLs.

pyannote's real phone call with each woman's first seconds alone cut out as her reference (the holder's
real-voice test, tests/models/test_known_speakers.py, builds it and scores the names frame by frame); here
the same audio goes through the official client and the service's whole path.
"""

from __future__ import annotations

import base64
import functools

import openai
import pytest

from tests.models.test_known_speakers import CallRest
from tests.speech import to_wav_bytes

pytestmark = pytest.mark.serve


@functools.cache
def call() -> CallRest:
    return CallRest()


def data_url(wav: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav).decode()


def test_the_openai_client_gets_the_known_speakers_names_in_diarized_json(base_url):
    rest = call()
    oai = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600)
    result = oai.audio.transcriptions.create(
        model="whisper-1", file=("call.wav", to_wav_bytes(rest.audio)), response_format="diarized_json",
        known_speaker_names=[r.name for r in rest.references],
        known_speaker_references=[data_url(to_wav_bytes(r.audio)) for r in rest.references])
    speakers = [s.speaker for s in result.segments]
    assert set(speakers) == {"diane", "sheila"}, speakers
    print("named segments:", [(s.speaker, s.start, s.end) for s in result.segments])


def test_a_voice_that_matches_no_reference_keeps_an_anonymous_label(client, base_url):
    from tests.real_speech import jfk_clip

    rest = call()
    jfk = jfk_clip().audio[: 8 * 16_000]
    response = client.post("/v1/audio/transcriptions", files={"file": ("call.wav", to_wav_bytes(rest.audio))},
                           data={"model": "whisper-1", "response_format": "diarized_json",
                                 "known_speaker_names[]": ["kennedy"],
                                 "known_speaker_references[]": [data_url(to_wav_bytes(jfk))]})
    assert response.status_code == 200, response.text
    speakers = {s["speaker"] for s in response.json()["segments"]}
    assert "kennedy" not in speakers and all(s.startswith("SPEAKER_") for s in speakers), speakers


def test_a_reference_too_short_is_a_400_that_names_it(client):
    rest = call()
    short = to_wav_bytes(rest.references[0].audio[:16_000])
    response = client.post("/v1/audio/transcriptions", files={"file": ("call.wav", to_wav_bytes(rest.audio))},
                           data={"model": "whisper-1", "known_speaker_names[]": ["diane"],
                                 "known_speaker_references[]": [data_url(short)]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "known_speaker_references" and "(diane) is 1.0 s long" in error["message"]
