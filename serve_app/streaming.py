"""`stream=true`: the transcript as Server-Sent Events in OpenAI's shapes, which the `openai` client reads.

    transcript.text.delta     the text as it grows, chunk by chunk in order (deltas join into the text)
    transcript.text.segment   diarized_json only: each speaker turn, once words and speakers are known
    transcript.text.done      the whole text (the same as without stream) and usage
    error                     a failure after the stream began: {"type": "error", "error": {...}}

Errors found before the stream begins (a bad field, an undecodable file, admission) are ordinary JSON
answers with their 4xx/5xx status, as without stream.
"""

from __future__ import annotations

import json
from typing import Any

from core.transcript import Transcript
from serve_app.bodies import diarized_json, json_body

MEDIA_TYPE = "text/event-stream"


def sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"


def delta(text: str) -> dict[str, Any]:
    return {"type": "transcript.text.delta", "delta": text}


def closing(transcript: Transcript, response_format: str) -> list[dict[str, Any]]:
    """The events after the last delta: diarized segments where asked for, then done."""
    events: list[dict[str, Any]] = []
    if response_format == "diarized_json":
        events += diarized_json(transcript)["segments"]
    done: dict[str, Any] = {"type": "transcript.text.done", **json_body(transcript)}
    if transcript.warnings:
        done["warnings"] = list(transcript.warnings)
    return [*events, done]


def error(body: dict[str, Any]) -> dict[str, Any]:
    """An error answer's body (`{"error": {...}}`) as the stream's last event."""
    return {"type": "error", **body}
