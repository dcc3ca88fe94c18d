"""serve_app.bodies: OpenAI's JSON shapes (parsed with the `openai` client's types), language names, plain text."""

from __future__ import annotations

import dataclasses

import pytest
from openai.types.audio import (
    Transcription,
    TranscriptionDiarized,
    TranscriptionVerbose,
    Translation,
    TranslationVerbose,
)

from core.transcript import Segment
from serve_app.bodies import language_name
from serve_app.formats import render
from serve_app.words import SINGLE_SPEAKER
from tests.unit.transcripts import seg, transcript, two_speakers, w

# --- JSON formats -------------------------------------------------------------------------------------


def test_json_parses_as_transcription() -> None:
    body, media_type = render(two_speakers(), "json")
    assert media_type == "application/json" and isinstance(body, dict)
    parsed = Transcription.model_validate(body)
    assert parsed.text == "Hello there. General Kenobi!"
    assert parsed.usage is not None and parsed.usage.type == "duration" and parsed.usage.seconds == 2.0
    assert Translation.model_validate(body).text == parsed.text


def test_verbose_json_segments_only_by_default() -> None:
    t = transcript([seg([w("Hello", 0, 0.5), w("world", 0.6, 1.0)])])
    body, _ = render(t, "verbose_json")
    assert isinstance(body, dict)
    parsed = TranscriptionVerbose.model_validate(body)
    assert parsed.language == "english" and parsed.duration == 1.0 and parsed.words is None
    assert parsed.segments is not None and parsed.segments[0].text == " Hello world"
    assert parsed.segments[0].avg_logprob == 0.0 and parsed.segments[0].tokens == []
    assert body["task"] == "transcribe"
    assert not {"speakers", "word_source"} & body.keys() and "speaker" not in body["segments"][0]


@pytest.mark.parametrize(("granularities", "has_segments"), [({"word"}, False), ({"word", "segment"}, True)])
def test_verbose_json_with_words(granularities: set[str], has_segments: bool) -> None:
    t = two_speakers()
    t.segments[0] = dataclasses.replace(t.segments[0], avg_logprob=-0.25)
    body, _ = render(t, "verbose_json", granularities=frozenset(granularities))
    assert isinstance(body, dict)
    parsed = TranscriptionVerbose.model_validate(body)
    assert parsed.words is not None
    assert [(x.word, x.start, x.end) for x in parsed.words][:2] == [("Hello", 0.0, 0.4), ("there.", 0.5, 0.9)]
    assert (parsed.segments is not None) == has_segments
    if has_segments:
        assert parsed.segments and parsed.segments[0].avg_logprob == -0.25
        assert body["segments"][0]["speaker"] is None
    assert [x["speaker"] for x in body["words"]] == ["SPEAKER_00"] * 2 + ["SPEAKER_01"] * 2
    assert body["speakers"] == ["SPEAKER_00", "SPEAKER_01"] and body["word_source"] == "alignment"


def test_verbose_json_translation_reports_english() -> None:
    t = transcript([seg([w("Hello", 0, 0.5)])], language="de")
    t.task = "translate"
    body, _ = render(t, "verbose_json")
    assert TranslationVerbose.model_validate(body).language == "english"
    t.task = "transcribe"
    assert TranscriptionVerbose.model_validate(render(t, "verbose_json")[0]).language == "german"


def test_diarized_json_splits_turns_at_speakers_and_segments() -> None:
    first = seg([w("a", 0, 0.2, "S1"), w("b", 0.2, 0.4, "S1"), w("c", 0.4, 0.6, "S2")])
    second = seg([w("d", 1.0, 1.2, "S2"), w("e", 1.2, 1.4)], speaker="S3")  # "e" falls back to the segment's
    body, media_type = render(transcript([first, second]), "diarized_json")
    assert media_type == "application/json"
    parsed = TranscriptionDiarized.model_validate(body)
    assert [(s.id, s.speaker, s.text, s.start, s.end) for s in parsed.segments] == [
        ("seg_0", "S1", "a b", 0.0, 0.4),
        ("seg_1", "S2", "c", 0.4, 0.6),
        ("seg_2", "S2", "d", 1.0, 1.2),
        ("seg_3", "S3", "e", 1.2, 1.4),
    ]
    assert all(s.type == "transcript.text.segment" for s in parsed.segments)
    assert parsed.text == "a b c d e" and parsed.task == "transcribe"


def test_diarized_json_without_diarization_uses_one_label() -> None:
    t = transcript([seg([w("a", 0, 0.2), w("b", 0.2, 0.4)]), Segment(text=" c d", start_s=1.0, end_s=2.0)])
    parsed = TranscriptionDiarized.model_validate(render(t, "diarized_json")[0])
    assert [(s.speaker, s.text) for s in parsed.segments] == [
        (SINGLE_SPEAKER, "a b"),
        (SINGLE_SPEAKER, "c d"),
    ]


# --- language names, text, dispatch ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "name"),
    [("en", "english"), ("EN", "english"), ("yue", "cantonese"), ("haw", "hawaiian"), ("xx", "xx")],
)
def test_language_name(code: str, name: str) -> None:
    assert language_name(code) == name


def test_every_whisper_language_has_a_name() -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # the codes our recogniser reports

    assert all(language_name(code) != code for code in _LANGUAGE_CODES)


def test_text_matches_openai_single_string() -> None:
    t = transcript([seg([w("Hello", 0, 0.5)]), seg([w("world.", 1, 1.5)])])
    assert render(t, "text") == ("Hello world.\n", "text/plain; charset=utf-8")


def test_text_diarized_one_line_per_turn() -> None:
    first = seg([w("Hi", 0, 0.2, "A"), w("you", 0.2, 0.4, "B")])
    second = seg([w("there", 1, 1.2, "B"), w("Bye", 1.3, 1.5, "A")])
    assert render(transcript([first, second]), "text")[0] == "A: Hi\nB: you there\nA: Bye\n"
