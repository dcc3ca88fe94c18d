"""Request validation: OpenAI's fields, our extensions, and messages that say what to fix."""

import pytest
from pydantic import ValidationError

from serve_app.schemas import TranscriptionRequest


def parse(**fields):
    return TranscriptionRequest.model_validate({"model": "whisper-1", **fields})


def test_defaults_match_openai():
    r = parse()
    assert (r.response_format, r.timestamp_granularities, r.diarize, r.align) == ("json", ["segment"], False, True)
    assert not r.needs_words


@pytest.mark.parametrize(("fields", "needs_words"), [
    ({"response_format": "srt"}, True),
    ({"response_format": "vtt"}, True),
    ({"response_format": "verbose_json"}, False),
    ({"response_format": "verbose_json", "timestamp_granularities": ["word"]}, True),
    ({"response_format": "text", "diarize": "true"}, True),
    ({"response_format": "diarized_json"}, True),
])
def test_needs_words(fields, needs_words):
    assert parse(**fields).needs_words is needs_words


def test_form_strings_are_coerced():
    r = parse(diarize="true", num_speakers="2", temperature="0.2", align="false")
    assert (r.diarize, r.num_speakers, r.temperature, r.align) == (True, 2, 0.2, False)


def test_language_is_normalised_and_checked():
    assert parse(language="EN").language == "en"
    assert parse(language="").language is None
    with pytest.raises(ValidationError, match="unknown language code 'xx'"):
        parse(language="xx")


@pytest.mark.parametrize("fields", [
    {"min_speakers": 3, "max_speakers": 2},
    {"num_speakers": 0},
    {"min_speakers": -1},
    {"num_speakers": 5, "max_speakers": 3},
    {"response_format": "docx"},
    {"temperature": 1.5},
    {"timestamp_granularities": ["sentence"]},
    {"diarise": True},
    {"task": "translate", "response_format": "diarized_json"},
])
def test_invalid_requests_are_rejected(fields):
    with pytest.raises(ValidationError):
        parse(**fields)


def test_speaker_hints_or_diarized_json_imply_diarize():
    assert parse(max_speakers=3).diarize
    assert parse(response_format="diarized_json").diarize


def test_min_greater_than_max_message_names_both():
    with pytest.raises(ValidationError, match=r"min_speakers \(3\) is greater than max_speakers \(2\)"):
        parse(min_speakers=3, max_speakers=2)


def test_known_speakers_imply_diarization_and_pair_names_with_references():
    request = TranscriptionRequest(known_speaker_names=[" agent ", "customer"],
                                   known_speaker_references=["data:a", "data:b"])
    assert request.diarize is True and request.known_speaker_names == ["agent", "customer"]


def test_names_without_references_are_enrolled_speakers_and_imply_diarization():
    request = TranscriptionRequest(known_speaker_names=["agent"])
    assert request.diarize is True and request.known_speaker_references == []


@pytest.mark.parametrize(("names", "urls", "says"), [
    (["agent", "customer"], ["data:a"], "2 known_speaker_names\\[\\] but 1 known_speaker_references\\[\\]"),
    ([], ["data:a"], "0 known_speaker_names\\[\\] but 1 known_speaker_references\\[\\]"),
    (["agent", "agent"], ["data:a", "data:b"], "must be distinct"),
    ([""], ["data:a"], "non-empty"),
])
def test_known_speakers_that_do_not_pair_up_are_refused(names, urls, says):
    with pytest.raises(ValidationError, match=says):
        TranscriptionRequest(known_speaker_names=names, known_speaker_references=urls)
