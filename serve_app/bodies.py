"""The transcript bodies OpenAI defines: json, verbose_json, diarized_json, and plain text.

JSON bodies parse into the `openai` client's types unchanged (`Transcription`, `TranscriptionVerbose`,
`TranscriptionDiarized`); our additions (`speaker`, `speakers`, `word_source`, and the `warnings` that
`formats.render` adds to each) are extra keys the client ignores. Subtitles are in subtitles.py.
"""

from __future__ import annotations

from typing import Any

from whisperx.utils import LANGUAGES  # openai-whisper's ISO code -> English name table (100 languages)

from core.transcript import Segment, Transcript, Word
from serve_app.words import is_diarized, turns, without_spaces


def json_body(t: Transcript) -> dict[str, Any]:
    """OpenAI `Transcription`: the text and the audio's duration as usage."""
    return {"text": t.text, "usage": _usage(t)}


def language_name(language: str) -> str:
    """The lowercase English name OpenAI reports for an ISO code ("en" -> "english"); others pass through."""
    key = language.strip().lower()
    return LANGUAGES.get(key, key)


def _usage(t: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": round(t.duration_s, 3)}


def _speakers(t: Transcript) -> list[str]:
    found = [sp for s in t.segments for sp in (s.speaker, *(w.speaker for w in s.words)) if sp]
    return list(t.speakers) or list(dict.fromkeys(found))


def verbose_json(t: Transcript, granularities: frozenset[str]) -> dict[str, Any]:
    """OpenAI `TranscriptionVerbose`; decoder statistics we do not keep are reported as 0."""
    diarized = is_diarized(t)
    # OpenAI documents the verbose translation's language as the output's, which is always English.
    language = "english" if t.task == "translate" else language_name(t.language)
    body: dict[str, Any] = {
        "task": t.task,
        "language": language,
        "duration": round(t.duration_s, 3),
        "text": t.text,
    }
    if "segment" in granularities:
        body["segments"] = [_verbose_segment(i, s, diarized) for i, s in enumerate(t.segments)]
    if "word" in granularities:
        body["words"] = [_verbose_word(w, s, diarized) for s in t.segments for w in s.words if w.text.strip()]
        if t.word_source:
            body["word_source"] = t.word_source
    if diarized:
        body["speakers"] = _speakers(t)
    body["usage"] = _usage(t)
    return body


def _verbose_segment(index: int, s: Segment, diarized: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": index,
        "seek": 0,
        "start": round(s.start_s, 3),
        "end": round(s.end_s, 3),
        "text": s.text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": s.avg_logprob or 0.0,
        "compression_ratio": 0.0,
        "no_speech_prob": 0.0,
    }
    if diarized:
        out["speaker"] = s.speaker
    return out


def _verbose_word(w: Word, s: Segment, diarized: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"word": w.text.strip(), "start": round(w.start_s, 3), "end": round(w.end_s, 3)}
    if diarized:
        out["speaker"] = w.speaker or s.speaker
    return out


def diarized_json(t: Transcript) -> dict[str, Any]:
    """OpenAI `TranscriptionDiarized`: one segment per speaker turn inside each recogniser segment."""
    segments = [
        {
            "type": "transcript.text.segment",
            "id": f"seg_{i}",
            "start": turn.start_ms / 1000,
            "end": turn.end_ms / 1000,
            "text": turn.text,
            "speaker": turn.speaker,
        }
        for i, turn in enumerate(turns(t))
    ]
    return {
        "task": t.task,
        "duration": round(t.duration_s, 3),
        "text": t.text,
        "segments": segments,
        "usage": _usage(t),
    }


def plain_text(t: Transcript) -> str:
    """The whole text and a newline, as OpenAI sends it; diarized: one `SPEAKER: text` line per turn."""
    if not is_diarized(t):
        return t.text + "\n"
    sep = "" if without_spaces(t.language) else " "
    lines: list[tuple[str, str]] = []
    for turn in turns(t):
        if lines and lines[-1][0] == turn.speaker:
            lines[-1] = (turn.speaker, lines[-1][1] + sep + turn.text)
        else:
            lines.append((turn.speaker, turn.text))
    return "".join(f"{speaker}: {text}\n" for speaker, text in lines)
