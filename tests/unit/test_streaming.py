"""stream=true: the request field, the in-order text feed of a request's progress, and the events."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from core.transcript import Segment, Transcript, Word
from serve_app import streaming
from serve_app.progress import Progress
from serve_app.schemas import TranscriptionRequest


@pytest.mark.parametrize("response_format", ["json", "text", "diarized_json"])
def test_stream_is_accepted_for_the_formats_openai_streams(response_format):
    assert TranscriptionRequest(stream="true", response_format=response_format).stream is True


@pytest.mark.parametrize("response_format", ["verbose_json", "srt", "vtt"])
def test_stream_with_another_format_is_refused_and_says_which_work(response_format):
    with pytest.raises(ValidationError, match="stream=true answers events for response_format json, text or "
                                              f"diarized_json, not {response_format}"):
        TranscriptionRequest(stream=True, response_format=response_format)


def test_text_arrives_in_chunk_order_as_soon_as_every_earlier_chunk_is_done():
    seen: list[str] = []
    progress = Progress("r", on_text=seen.append)
    progress.planned(4, 120.0)
    progress.chunk_done(2, " third ")
    progress.chunk_done(1, "second")
    assert seen == []  # the first chunk is not back yet
    progress.chunk_done(0, "First.")
    assert seen == ["First.", " second", " third"]
    progress.chunk_done(3, "   ")  # a chunk without text adds nothing, not even a space
    assert "".join(seen) == "First. second third"
    assert progress.chunks_done == 4


def test_deltas_join_into_the_done_text_of_the_same_transcript():
    segments = (Segment("Hello there.", 0.0, 1.0), Segment("General Kenobi.", 31.0, 33.0))
    transcript = Transcript(task="transcribe", language="en", duration_s=40.0, segments=segments)
    deltas: list[str] = []
    progress = Progress("r", on_text=deltas.append)
    for index, segment in reversed(list(enumerate(segments))):
        progress.chunk_done(index, segment.text)
    [done] = streaming.closing(transcript, "json")
    assert done == {"type": "transcript.text.done", "text": "".join(deltas),
                    "usage": {"type": "duration", "seconds": 40.0}}


def test_diarized_stream_closes_with_one_segment_event_per_speaker_turn_then_done():
    words = (Word("hi", 0.0, 0.5, speaker="SPEAKER_00"), Word("yes", 1.0, 1.5, speaker="SPEAKER_01"))
    transcript = Transcript(task="transcribe", language="en", duration_s=2.0,
                            segments=(Segment("hi yes", 0.0, 1.5, words=words, speaker="SPEAKER_00"),),
                            speakers=("SPEAKER_00", "SPEAKER_01"), warnings=("clipped",))
    *segments, done = streaming.closing(transcript, "diarized_json")
    assert [(e["type"], e["speaker"], e["text"]) for e in segments] == [
        ("transcript.text.segment", "SPEAKER_00", "hi"), ("transcript.text.segment", "SPEAKER_01", "yes")]
    assert done["type"] == "transcript.text.done" and done["text"] == "hi yes" and done["warnings"] == ["clipped"]


def test_events_are_sse_data_lines():
    line = streaming.sse(streaming.delta("ünïcode"))
    assert line.startswith("data: ") and line.endswith("\n\n")
    assert json.loads(line.removeprefix("data: ")) == {"type": "transcript.text.delta", "delta": "ünïcode"}
    assert streaming.error({"error": {"message": "m"}}) == {"type": "error", "error": {"message": "m"}}
