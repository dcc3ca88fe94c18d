"""Render a `Transcript` in each OpenAI response format: json, text, srt, vtt, verbose_json, diarized_json.

The one place a format name is turned into a body and a media type; the bodies themselves are built in
py (json, verbose_json, diarized_json, text) and subtitles.py (srt, vtt).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from core.transcript import Transcript
from serve_app.bodies import diarized_json, json_body, plain_text, verbose_json
from serve_app.subtitles import DEFAULT_SUBTITLES, SubtitleOptions, srt, vtt

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json"]
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)

JSON = "application/json"
PLAIN = "text/plain; charset=utf-8"
# OpenAI answers text and srt as text/plain; vtt gets text/vtt, which browsers require for <track>.
MEDIA_TYPES: dict[str, str] = {
    "json": JSON,
    "verbose_json": JSON,
    "diarized_json": JSON,
    "text": PLAIN,
    "srt": PLAIN,
    "vtt": "text/vtt; charset=utf-8",
}


def render(
    transcript: Transcript,
    response_format: str,
    *,
    granularities: frozenset[str] = frozenset({"segment"}),
    subtitles: SubtitleOptions = DEFAULT_SUBTITLES,
) -> tuple[str | dict[str, Any], str]:
    """Return the response body (dict for JSON formats, str otherwise) and its media type."""
    match response_format:
        case "json":
            body: str | dict[str, Any] = json_body(transcript)
        case "text":
            body = plain_text(transcript)
        case "verbose_json":
            body = verbose_json(transcript, granularities)
        case "diarized_json":
            body = diarized_json(transcript)
        case "srt":
            body = srt(transcript, subtitles)
        case "vtt":
            body = vtt(transcript, subtitles)
        case _:
            raise ValueError(f"unknown response_format {response_format!r}; known: {RESPONSE_FORMATS}")
    if isinstance(body, dict) and transcript.warnings:
        body["warnings"] = list(transcript.warnings)
    return body, MEDIA_TYPES[response_format]
