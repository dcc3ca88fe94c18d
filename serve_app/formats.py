"""Render a `Transcript` in each OpenAI response format: json, text, srt, vtt, verbose_json, diarized_json.

JSON bodies parse into the `openai` client's types unchanged (`Transcription`, `TranscriptionVerbose`,
`TranscriptionDiarized`); our additions (`speaker`, `speakers`, `word_source`, `warnings`) are extra keys the
client ignores. Subtitle cues are cut from word timings; all cue arithmetic is in integer milliseconds so the
limits hold exactly after rounding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from whisperx.utils import LANGUAGES  # openai-whisper's ISO code -> English name table (100 languages)

from core.language import LANGUAGES_WITHOUT_SPACES
from core.transcript import Segment, Transcript, Word

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
# Speaker label for diarized_json when the transcript was not diarized, and for words no turn covered.
SINGLE_SPEAKER = "SPEAKER_00"
UNKNOWN_SPEAKER = "UNKNOWN"
_NAME_TO_CODE = {name: code for code, name in LANGUAGES.items()}


class SubtitleOptions(BaseModel):
    """How SRT/VTT cues are cut: line width, lines per cue, cue length and pauses, speaker labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_line_chars: int = Field(
        default=42, ge=1, description="Most characters per line; a longer word stands alone."
    )
    max_lines_per_cue: int = Field(default=2, ge=1, description="Most lines in one cue.")
    max_cue_duration_s: float = Field(
        default=6.0, gt=0, description="Longest cue in seconds, bar one long word."
    )
    min_gap_s: float = Field(
        default=1.0, ge=0, description="A pause in seconds longer than this starts a new cue."
    )
    min_cue_duration_s: float = Field(
        default=0.8, ge=0,
        description="Shortest time in seconds a cue stays on screen: a shorter one (a lone short word) is "
                    "held longer, up to the next cue and never past max_cue_duration_s.",
    )
    speaker_labels: bool = Field(
        default=True, description="Label cues with the speaker when the audio was diarized."
    )


DEFAULT_SUBTITLES = SubtitleOptions()


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
            body: str | dict[str, Any] = {"text": transcript.text, "usage": _usage(transcript)}
        case "text":
            body = _text(transcript)
        case "verbose_json":
            body = _verbose_json(transcript, granularities)
        case "diarized_json":
            body = _diarized_json(transcript)
        case "srt":
            body = _srt(_cues(transcript, subtitles, label_chars=_srt_label_chars))
        case "vtt":
            body = _vtt(_cues(transcript, subtitles, label_chars=lambda _: 0))
        case _:
            raise ValueError(f"unknown response_format {response_format!r}; known: {RESPONSE_FORMATS}")
    if isinstance(body, dict) and transcript.warnings:
        body["warnings"] = list(transcript.warnings)
    return body, MEDIA_TYPES[response_format]


def language_name(language: str) -> str:
    """The lowercase English name OpenAI reports for an ISO code ("en" -> "english"); others pass through."""
    key = language.strip().lower()
    return LANGUAGES.get(key, key)


def format_timestamp(seconds: float, decimal_marker: str = ",") -> str:
    """`HH:MM:SS,mmm` (SRT) or with "." (VTT) for a time in seconds, rounded to the millisecond."""
    return _timestamp_ms(_ms(seconds), decimal_marker)


# --- JSON formats -------------------------------------------------------------------------------------


def _usage(t: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": round(t.duration_s, 3)}


def _is_diarized(t: Transcript) -> bool:
    return bool(t.speakers) or any(s.speaker or any(w.speaker for w in s.words) for s in t.segments)


def _speakers(t: Transcript) -> list[str]:
    found = [sp for s in t.segments for sp in (s.speaker, *(w.speaker for w in s.words)) if sp]
    return list(t.speakers) or list(dict.fromkeys(found))


def _verbose_json(t: Transcript, granularities: frozenset[str]) -> dict[str, Any]:
    """OpenAI `TranscriptionVerbose`; decoder statistics we do not keep are reported as 0."""
    diarized = _is_diarized(t)
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


def _diarized_json(t: Transcript) -> dict[str, Any]:
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
        for i, turn in enumerate(_turns(t))
    ]
    return {
        "task": t.task,
        "duration": round(t.duration_s, 3),
        "text": t.text,
        "segments": segments,
        "usage": _usage(t),
    }


def _text(t: Transcript) -> str:
    """The whole text and a newline, as OpenAI sends it; diarized: one `SPEAKER: text` line per turn."""
    if not _is_diarized(t):
        return t.text + "\n"
    sep = "" if _code(t.language) in LANGUAGES_WITHOUT_SPACES else " "
    lines: list[tuple[str, str]] = []
    for turn in _turns(t):
        if lines and lines[-1][0] == turn.speaker:
            lines[-1] = (turn.speaker, lines[-1][1] + sep + turn.text)
        else:
            lines.append((turn.speaker, turn.text))
    return "".join(f"{speaker}: {text}\n" for speaker, text in lines)


# --- tokens and speaker turns ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    """A word ready for layout: stripped text, the glue printed before it mid-line, times in ms."""

    text: str
    glue: str
    start_ms: int
    end_ms: int
    speaker: str | None
    segment: int


@dataclass(frozen=True)
class _Turn:
    speaker: str
    start_ms: int
    end_ms: int
    text: str


def _tokens(t: Transcript) -> list[_Token]:
    """Every word of the transcript; segments without word timings get pseudo-words (see `_pseudo_words`)."""
    no_space = _code(t.language) in LANGUAGES_WITHOUT_SPACES
    out: list[_Token] = []
    for index, seg in enumerate(t.segments):
        words = seg.words or _pseudo_words(seg, no_space)
        # Whisper's own words carry their leading space; aligned words do not and are joined by language.
        spaced = any(w.text[:1].isspace() for w in words)
        default_glue = "" if no_space else " "
        for w in words:
            if text := " ".join(w.text.split()):
                glue = (" " if w.text[:1].isspace() else "") if spaced else default_glue
                out.append(_Token(text, glue, _ms(w.start_s), _ms(w.end_s), w.speaker or seg.speaker, index))
    return out


def _pseudo_words(seg: Segment, no_space: bool) -> tuple[Word, ...]:
    """Approximate words for a segment without word timings: the segment's span is shared out in
    proportion to character offsets, so long segments can still be cut into cues at word boundaries
    (characters for scripts without spaces). The times are estimates, not alignments."""
    text, dur = seg.text.strip(), max(seg.end_s - seg.start_s, 0.0)
    n = max(len(text), 1)
    return tuple(
        Word(
            (" " if m.start() and text[m.start() - 1].isspace() else "") + m.group(),
            seg.start_s + dur * m.start() / n,
            seg.start_s + dur * m.end() / n,
            speaker=seg.speaker,
        )
        for m in re.finditer(r"\S" if no_space else r"\S+", text)
    )


def _join(tokens: Sequence[_Token]) -> str:
    return tokens[0].text + "".join(tok.glue + tok.text for tok in tokens[1:]) if tokens else ""


def _turns(t: Transcript) -> list[_Turn]:
    """Runs of consecutive words with one speaker, broken also at the recogniser's segment boundaries."""
    fallback = UNKNOWN_SPEAKER if _is_diarized(t) else SINGLE_SPEAKER
    runs = _group(_tokens(t), lambda run, tok: _same_turn(run[-1], tok))
    return [_Turn(run[0].speaker or fallback, _start_ms(run), _end_ms(run), _join(run)) for run in runs]


def _same_turn(a: _Token, b: _Token) -> bool:
    return (a.segment, a.speaker) == (b.segment, b.speaker)


def _start_ms(tokens: Sequence[_Token]) -> int:
    return min(x.start_ms for x in tokens)


def _end_ms(tokens: Sequence[_Token]) -> int:
    return max(x.end_ms for x in tokens)


def _group(tokens: Iterable[_Token], fits: Callable[[list[_Token], _Token], bool]) -> list[list[_Token]]:
    """Greedy grouping: each token joins the current group while `fits(group, token)` holds."""
    groups: list[list[_Token]] = []
    for tok in tokens:
        if groups and fits(groups[-1], tok):
            groups[-1].append(tok)
        else:
            groups.append([tok])
    return groups


# --- subtitles -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cue:
    start_ms: int
    end_ms: int
    speaker: str | None
    lines: list[str]


def _srt_label_chars(speaker: str | None) -> int:
    return len(_srt_label(speaker)) if speaker else 0


def _srt_label(speaker: str) -> str:
    return f"[{speaker}] "


def _wrap(tokens: Sequence[_Token], width: int, first_line_used: int) -> list[str]:
    """Fill lines greedily at word boundaries; the first line has `first_line_used` chars taken by a label."""
    lines: list[str] = []
    line, budget = "", width - first_line_used
    for tok in tokens:
        if line and len(line) + len(tok.glue) + len(tok.text) <= budget:
            line += tok.glue + tok.text
        elif line:
            lines.append(line)
            line, budget = tok.text, width
        else:
            line = tok.text
    return [*lines, line]


def _cues(t: Transcript, opts: SubtitleOptions, label_chars: Callable[[str | None], int]) -> list[_Cue]:
    """Cut the words into cues that respect `opts`, then clamp times so cues never overlap."""
    labelled = opts.speaker_labels and _is_diarized(t)
    used = label_chars if labelled else (lambda _: 0)
    max_ms, gap_ms = _ms(opts.max_cue_duration_s), _ms(opts.min_gap_s)

    def fits(cue: list[_Token], tok: _Token) -> bool:
        return (
            _same_turn(cue[-1], tok)
            and tok.start_ms - _end_ms(cue) <= gap_ms
            and max(tok.end_ms, _end_ms(cue)) - min(tok.start_ms, _start_ms(cue)) <= max_ms
            and len(_wrap([*cue, tok], opts.max_line_chars, used(tok.speaker))) <= opts.max_lines_per_cue
        )

    cues: list[_Cue] = []
    prev_end = 0
    for group in _group(_tokens(t), fits):
        start = max(_start_ms(group), prev_end)
        end = max(_end_ms(group), start + 1)
        speaker = group[0].speaker if labelled else None
        cues.append(_Cue(start, end, speaker, _wrap(group, opts.max_line_chars, used(speaker))))
        prev_end = end
    # A word can be a few milliseconds long (or zero, where an aligner gave up): hold its cue long
    # enough to read, but never into the next cue.
    min_ms = min(_ms(opts.min_cue_duration_s), max_ms)
    held: list[_Cue] = []
    for i, cue in enumerate(cues):
        end = cue.start_ms + min_ms
        if i + 1 < len(cues):
            end = min(end, cues[i + 1].start_ms)
        held.append(replace(cue, end_ms=max(cue.end_ms, end)))
    return held


def _srt(cues: Sequence[_Cue]) -> str:
    """SubRip: numbered cues from 1, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each cue."""
    blocks = []
    for number, cue in enumerate(cues, start=1):
        lines = list(cue.lines)
        if cue.speaker:
            lines[0] = _srt_label(cue.speaker) + lines[0]
        timing = f"{_timestamp_ms(cue.start_ms, ',')} --> {_timestamp_ms(cue.end_ms, ',')}"
        blocks.append(f"{number}\n{timing}\n" + "\n".join(lines) + "\n\n")
    return "".join(blocks)


def _vtt(cues: Sequence[_Cue]) -> str:
    """WebVTT: header, `HH:MM:SS.mmm` timings, escaped text, speakers as `<v NAME>` voice spans."""
    blocks = ["WEBVTT\n\n"]
    for cue in cues:
        lines = [_vtt_escape(line) for line in cue.lines]
        if cue.speaker:
            lines[0] = f"<v {_vtt_escape(cue.speaker)}>" + lines[0]
        timing = f"{_timestamp_ms(cue.start_ms, '.')} --> {_timestamp_ms(cue.end_ms, '.')}"
        blocks.append(f"{timing}\n" + "\n".join(lines) + "\n\n")
    return "".join(blocks)


def _vtt_escape(text: str) -> str:
    # ">" too: cue text must not contain "-->", and a voice annotation ends at the first ">".
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- time ----------------------------------------------------------------------------------------------


def _ms(seconds: float) -> int:
    """Seconds to whole milliseconds, never negative."""
    return max(round(seconds * 1000), 0)


def _timestamp_ms(ms: int, decimal_marker: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{decimal_marker}{millis:03d}"


def _code(language: str) -> str:
    key = language.strip().lower()
    return _NAME_TO_CODE.get(key, key)
