"""Stage outputs and results as JSON: each reads back as the value written, through the text a store keeps."""

from __future__ import annotations

import json
from typing import Any

from core.transcript import AsrResult, Segment, SpeakerTurn, Transcript, Word
from serve_app.jobs import records

WORDS = (Word("Hello", 0.0, 0.42, probability=0.91, speaker="SPEAKER_00"),
         Word(" there.", 0.5, 0.9, probability=0.875, speaker="SPEAKER_00"))
SEGMENTS = [
    Segment(" Hello there.", 0.0, 0.9, words=WORDS, speaker="SPEAKER_00", avg_logprob=-0.21),
    Segment(" Général Kenobi!", 1.25, 2.0, words=(Word(" Général", 1.25, 1.6), Word(" Kenobi!", 1.7, 2.0)),
            speaker="SPEAKER_01"),
    Segment(" ...", 2.5, 3.0),  # no words, no speaker, no log probability
]


def through_text(value: Any) -> Any:
    """The JSON value as it comes back from a store or a spool file."""
    return json.loads(json.dumps(value))


def test_a_transcript_reads_back_equal_with_words_speakers_warnings_and_word_source():
    transcript = Transcript(task="transcribe", language="fr", duration_s=3.5, segments=SEGMENTS,
                            word_source="alignment", speakers=["SPEAKER_00", "SPEAKER_01"],
                            warnings=("the last 0.4 s of the upload could not be decoded",))
    back = records.transcript_from_json(through_text(records.transcript_json(transcript)))
    assert back == transcript
    assert isinstance(back.warnings, tuple) and isinstance(back.segments[0].words, tuple)
    assert back.text == "Hello there. Général Kenobi! ..."
    assert [w.speaker for w in back.words] == ["SPEAKER_00", "SPEAKER_00", None, None]


def test_a_plain_transcript_reads_back_without_words_or_speakers():
    transcript = Transcript(task="translate", language="de", duration_s=1.0,
                            segments=[Segment(" Good morning.", 0.0, 1.0)])
    back = records.transcript_from_json(through_text(records.transcript_json(transcript)))
    assert back == transcript
    assert (back.word_source, back.speakers, back.warnings, back.segments[0].words) == (None, [], (), ())


def test_an_asr_result_reads_back_equal():
    result = AsrResult(language="en", segments=tuple(SEGMENTS), duration_s=3.5, word_source="whisper")
    back = records.asr_result_from_json(through_text(records.asr_result_json(result)))
    assert back == result
    assert isinstance(back.segments, tuple)
    bare = AsrResult(language="en", segments=(), duration_s=0.0)
    assert records.asr_result_from_json(through_text(records.asr_result_json(bare))) == bare


def test_speaker_turns_read_back_equal_and_in_order():
    turns = [SpeakerTurn("SPEAKER_01", 0.0, 1.2), SpeakerTurn("SPEAKER_00", 1.2, 3.75),
             SpeakerTurn("SPEAKER_01", 3.5, 4.0)]
    assert records.turns_from_json(through_text(records.turns_json(turns))) == turns
    assert records.turns_from_json(through_text(records.turns_json([]))) == []


def test_a_plan_and_its_decoded_chunks_read_back_equal():
    from core.chunks import AsrPlan, DecodedChunk, SpeechChunk

    plan = AsrPlan(model="tiny.en", language="en", chunks=(SpeechChunk(0.0, 29.5), SpeechChunk(31.0, 44.25)),
                   duration_s=45.0)
    assert records.plan_from_json(through_text(records.plan_json(plan))) == plan
    decoded = DecodedChunk(plan.chunks[1], " the rest", (50257, 262), -0.31,
                           words=(Word("the", 31.2, 31.4, 0.9), Word("rest", 31.5, 32.0, 0.8)),
                           start_s=31.2, end_s=32.0)
    assert records.decoded_chunk_from_json(through_text(records.decoded_chunk_json(1, decoded))) == (1, decoded)
