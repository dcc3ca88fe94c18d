"""A transcript's words as layout tokens, and the speaker turns they form: shared by subtitles and bodies.

Subtitle cues (subtitles.py) and diarized bodies and text (bodies.py) are both runs of consecutive
tokens; a turn ends where the speaker or the recogniser's segment changes. Times are in integer
milliseconds, so limits measured on them hold exactly after rounding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from whisperx.utils import LANGUAGES  # openai-whisper's ISO code -> English name table (100 languages)

from core.language import LANGUAGES_WITHOUT_SPACES
from core.transcript import Segment, Transcript, Word

# Speaker label for diarized_json when the transcript was not diarized, and for words no turn covered.
SINGLE_SPEAKER = "SPEAKER_00"
UNKNOWN_SPEAKER = "UNKNOWN"
_NAME_TO_CODE = {name: code for code, name in LANGUAGES.items()}


@dataclass(frozen=True)
class Token:
    """A word ready for layout: stripped text, the glue printed before it mid-line, times in ms."""

    text: str
    glue: str
    start_ms: int
    end_ms: int
    speaker: str | None
    segment: int


@dataclass(frozen=True)
class Turn:
    """One speaker's consecutive words within one segment: joined text, times in ms."""

    speaker: str
    start_ms: int
    end_ms: int
    text: str


def is_diarized(t: Transcript) -> bool:
    """Whether the transcript names any speaker, on itself, a segment or a word."""
    return bool(t.speakers) or any(s.speaker or any(w.speaker for w in s.words) for s in t.segments)


def without_spaces(language: str) -> bool:
    """Whether `language` (an ISO code or Whisper's English name) is written without spaces between words."""
    return _code(language) in LANGUAGES_WITHOUT_SPACES


def word_tokens(t: Transcript) -> list[Token]:
    """Every word of the transcript; segments without word timings get pseudo-words (see `_pseudo_words`)."""
    no_space = without_spaces(t.language)
    out: list[Token] = []
    for index, seg in enumerate(t.segments):
        words = seg.words or _pseudo_words(seg, no_space)
        # Whisper's own words carry their leading space; aligned words do not and are joined by language.
        spaced = any(w.text[:1].isspace() for w in words)
        default_glue = "" if no_space else " "
        for w in words:
            if text := " ".join(w.text.split()):
                glue = (" " if w.text[:1].isspace() else "") if spaced else default_glue
                out.append(Token(text, glue, ms(w.start_s), ms(w.end_s), w.speaker or seg.speaker, index))
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


def _join(tokens: Sequence[Token]) -> str:
    return tokens[0].text + "".join(tok.glue + tok.text for tok in tokens[1:]) if tokens else ""


def turns(t: Transcript) -> list[Turn]:
    """Runs of consecutive words with one speaker, broken also at the recogniser's segment boundaries."""
    fallback = UNKNOWN_SPEAKER if is_diarized(t) else SINGLE_SPEAKER
    runs = group(word_tokens(t), lambda run, tok: same_turn(run[-1], tok))
    return [Turn(run[0].speaker or fallback, start_ms(run), end_ms(run), _join(run)) for run in runs]


def same_turn(a: Token, b: Token) -> bool:
    """Whether `b` may continue the turn `a` is in: same segment, same speaker."""
    return (a.segment, a.speaker) == (b.segment, b.speaker)


def start_ms(tokens: Sequence[Token]) -> int:
    """The earliest start (ms) of `tokens`; overlapping words may come out of order."""
    return min(x.start_ms for x in tokens)


def end_ms(tokens: Sequence[Token]) -> int:
    """The latest end (ms) of `tokens`."""
    return max(x.end_ms for x in tokens)


def group(tokens: Iterable[Token], fits: Callable[[list[Token], Token], bool]) -> list[list[Token]]:
    """Greedy grouping: each token joins the current group while `fits(group, token)` holds."""
    groups: list[list[Token]] = []
    for tok in tokens:
        if groups and fits(groups[-1], tok):
            groups[-1].append(tok)
        else:
            groups.append([tok])
    return groups


def ms(seconds: float) -> int:
    """Seconds to whole milliseconds, never negative."""
    return max(round(seconds * 1000), 0)


def _code(language: str) -> str:
    key = language.strip().lower()
    return _NAME_TO_CODE.get(key, key)
