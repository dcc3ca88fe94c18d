"""Stage outputs and results as JSON: what a job keeps between attempts and after it ends.

A job's result is its `Transcript` (the same value the synchronous routes render), so one result can be
rendered in every response format, as often as asked. The ASR plan, each decoded speech chunk, the ASR
result and the speaker turns are kept as each is done, so that an attempt after a restart resumes after
the last of them.
"""

from __future__ import annotations

from typing import Any

from core.chunks import AsrPlan, DecodedChunk, SpeechChunk
from core.transcript import AsrResult, Segment, SpeakerTurn, Transcript, Word


def _word(data: dict[str, Any]) -> Word:
    return Word(text=data["text"], start_s=data["start_s"], end_s=data["end_s"], probability=data.get("probability"),
                speaker=data.get("speaker"))


def _word_json(word: Word) -> dict[str, Any]:
    return {"text": word.text, "start_s": word.start_s, "end_s": word.end_s, "probability": word.probability,
            "speaker": word.speaker}


def _segment(data: dict[str, Any]) -> Segment:
    return Segment(text=data["text"], start_s=data["start_s"], end_s=data["end_s"],
                   words=tuple(_word(w) for w in data.get("words", ())), speaker=data.get("speaker"),
                   avg_logprob=data.get("avg_logprob"))


def _segment_json(segment: Segment) -> dict[str, Any]:
    return {"text": segment.text, "start_s": segment.start_s, "end_s": segment.end_s,
            "words": [_word_json(w) for w in segment.words], "speaker": segment.speaker,
            "avg_logprob": segment.avg_logprob}


def transcript_json(transcript: Transcript) -> dict[str, Any]:
    return {"task": transcript.task, "language": transcript.language, "duration_s": transcript.duration_s,
            "segments": [_segment_json(s) for s in transcript.segments], "word_source": transcript.word_source,
            "speakers": list(transcript.speakers), "warnings": list(transcript.warnings)}


def transcript_from_json(data: dict[str, Any]) -> Transcript:
    return Transcript(task=data["task"], language=data["language"], duration_s=data["duration_s"],
                      segments=[_segment(s) for s in data["segments"]], word_source=data.get("word_source"),
                      speakers=list(data.get("speakers", ())), warnings=tuple(data.get("warnings", ())))


def asr_result_json(result: AsrResult) -> dict[str, Any]:
    return {"language": result.language, "duration_s": result.duration_s, "word_source": result.word_source,
            "segments": [_segment_json(s) for s in result.segments]}


def asr_result_from_json(data: dict[str, Any]) -> AsrResult:
    return AsrResult(language=data["language"], duration_s=data["duration_s"], word_source=data.get("word_source"),
                     segments=tuple(_segment(s) for s in data["segments"]))


def turns_json(turns: list[SpeakerTurn]) -> list[dict[str, Any]]:
    return [{"speaker": t.speaker, "start_s": t.start_s, "end_s": t.end_s} for t in turns]


def turns_from_json(data: list[dict[str, Any]]) -> list[SpeakerTurn]:
    return [SpeakerTurn(speaker=t["speaker"], start_s=t["start_s"], end_s=t["end_s"]) for t in data]


def plan_json(plan: AsrPlan) -> dict[str, Any]:
    return {"model": plan.model, "language": plan.language, "duration_s": plan.duration_s,
            "chunks": [[chunk.start_s, chunk.end_s] for chunk in plan.chunks]}


def plan_from_json(data: dict[str, Any]) -> AsrPlan:
    return AsrPlan(model=data["model"], language=data["language"], duration_s=data["duration_s"],
                   chunks=tuple(SpeechChunk(start_s, end_s) for start_s, end_s in data["chunks"]))


def decoded_chunk_json(index: int, decoded: DecodedChunk) -> dict[str, Any]:
    return {"index": index, "chunk": [decoded.chunk.start_s, decoded.chunk.end_s], "text": decoded.text,
            "tokens": list(decoded.tokens), "avg_logprob": decoded.avg_logprob,
            "words": [_word_json(w) for w in decoded.words], "start_s": decoded.start_s, "end_s": decoded.end_s}


def decoded_chunk_from_json(data: dict[str, Any]) -> tuple[int, DecodedChunk]:
    start_s, end_s = data["chunk"]
    return data["index"], DecodedChunk(chunk=SpeechChunk(start_s, end_s), text=data["text"],
                                       tokens=tuple(data["tokens"]), avg_logprob=data["avg_logprob"],
                                       words=tuple(_word(w) for w in data["words"]), start_s=data["start_s"],
                                       end_s=data["end_s"])
