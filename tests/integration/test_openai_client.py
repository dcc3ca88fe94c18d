"""The official openai client, unchanged, against the running service."""

from __future__ import annotations

import io

import openai
import pytest

from tests import speech
from tests.integration.conftest import german_wav, paragraph, paragraph_wav

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def oai(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600)


def upload():
    return ("speech.wav", io.BytesIO(paragraph_wav()), "audio/wav")


def test_transcriptions_create(oai):
    result = oai.audio.transcriptions.create(model="whisper-1", file=upload())
    assert speech.word_error_rate(paragraph()[1], result.text) < 0.15


def test_word_timestamps(oai):
    result = oai.audio.transcriptions.create(model="whisper-1", file=upload(), response_format="verbose_json",
                                             timestamp_granularities=["word"])
    assert result.language == "english" and result.duration > 5
    assert len(result.words) >= 20
    assert all(w.start <= w.end for w in result.words)
    assert [w.start for w in result.words] == sorted(w.start for w in result.words)


def test_srt_and_extensions_through_extra_body(oai):
    result = oai.audio.transcriptions.create(model="whisper-1", file=upload(), response_format="srt",
                                             extra_body={"max_cue_duration_s": 3})
    assert isinstance(result, str) and " --> " in result


def test_models_list(oai):
    assert "whisper-1" in [m.id for m in oai.models.list().data]


def test_errors_surface_as_openai_exceptions(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.audio.transcriptions.create(model="whisper-1", file=upload(), language="xx")
    assert "unknown language code" in info.value.message


def test_other_languages_with_the_multilingual_model(oai):
    result = oai.audio.transcriptions.create(model="base", file=("de.wav", io.BytesIO(german_wav()), "audio/wav"),
                                             response_format="verbose_json")
    assert result.language == "german"
    assert {"park", "kaffee"} <= set(speech.normalize_text(result.text).split()), result.text


def test_translation_works_out_of_the_box(oai, client):
    # whisper-1 means the default model, tiny.en, which cannot translate: the configured translation
    # model (base) takes the request.
    # The openai client marks its translations API deprecated (OpenAI retires the endpoint); it still works.
    with pytest.deprecated_call():
        result = oai.audio.translations.create(model="whisper-1",
                                               file=("de.wav", io.BytesIO(german_wav()), "audio/wav"))
    words = set(speech.normalize_text(result.text).split())
    assert {"park", "coffee"} <= words, result.text
    [asr] = client.get("/v1/models/status").json()["deployments"]["asr"]["replicas"]
    assert {"tiny.en", "base"} <= set(asr["loaded"]), "base was loaded on first use, beside the default"
