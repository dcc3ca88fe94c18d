"""SRT and WebVTT subtitles: cues cut from word timings within the limits of `SubtitleOptions`.

A cue holds one speaker's consecutive words (see words.py), ends at a pause longer than `min_gap_s`,
and never runs past `max_cue_duration_s` or `max_lines_per_cue` lines of `max_line_chars`. All cue
arithmetic is in integer milliseconds so the limits hold exactly after rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from pydantic import BaseModel, ConfigDict, Field

from core.transcript import Transcript
from serve_app.words import Token, end_ms, group, is_diarized, ms, same_turn, start_ms, word_tokens


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


def srt(t: Transcript, opts: SubtitleOptions) -> str:
    """The transcript as a SubRip document, cut into cues by `opts`."""
    return _srt_document(_cues(t, opts, label_chars=_srt_label_chars))


def vtt(t: Transcript, opts: SubtitleOptions) -> str:
    """The transcript as a WebVTT document, cut into cues by `opts`."""
    # A `<v NAME>` voice span is markup, not text on screen: it takes no room on the line.
    return _vtt_document(_cues(t, opts, label_chars=lambda _: 0))


def format_timestamp(seconds: float, decimal_marker: str = ",") -> str:
    """`HH:MM:SS,mmm` (SRT) or with "." (VTT) for a time in seconds, rounded to the millisecond."""
    return _timestamp_ms(ms(seconds), decimal_marker)


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


def _wrap(tokens: Sequence[Token], width: int, first_line_used: int) -> list[str]:
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
    labelled = opts.speaker_labels and is_diarized(t)
    used = label_chars if labelled else (lambda _: 0)
    max_ms, gap_ms = ms(opts.max_cue_duration_s), ms(opts.min_gap_s)

    def fits(cue: list[Token], tok: Token) -> bool:
        return (
            same_turn(cue[-1], tok)
            and tok.start_ms - end_ms(cue) <= gap_ms
            and max(tok.end_ms, end_ms(cue)) - min(tok.start_ms, start_ms(cue)) <= max_ms
            and len(_wrap([*cue, tok], opts.max_line_chars, used(tok.speaker))) <= opts.max_lines_per_cue
        )

    cues: list[_Cue] = []
    prev_end = 0
    for run in group(word_tokens(t), fits):
        start = max(start_ms(run), prev_end)
        end = max(end_ms(run), start + 1)
        speaker = run[0].speaker if labelled else None
        cues.append(_Cue(start, end, speaker, _wrap(run, opts.max_line_chars, used(speaker))))
        prev_end = end
    # A word can be a few milliseconds long (or zero, where an aligner gave up): hold its cue long
    # enough to read, but never into the next cue.
    min_ms = min(ms(opts.min_cue_duration_s), max_ms)
    held: list[_Cue] = []
    for i, cue in enumerate(cues):
        end = cue.start_ms + min_ms
        if i + 1 < len(cues):
            end = min(end, cues[i + 1].start_ms)
        held.append(replace(cue, end_ms=max(cue.end_ms, end)))
    return held


def _srt_document(cues: Sequence[_Cue]) -> str:
    """SubRip: numbered cues from 1, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each cue."""
    blocks = []
    for number, cue in enumerate(cues, start=1):
        lines = list(cue.lines)
        if cue.speaker:
            lines[0] = _srt_label(cue.speaker) + lines[0]
        timing = f"{_timestamp_ms(cue.start_ms, ',')} --> {_timestamp_ms(cue.end_ms, ',')}"
        blocks.append(f"{number}\n{timing}\n" + "\n".join(lines) + "\n\n")
    return "".join(blocks)


def _vtt_document(cues: Sequence[_Cue]) -> str:
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


def _timestamp_ms(ms: int, decimal_marker: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{decimal_marker}{millis:03d}"
