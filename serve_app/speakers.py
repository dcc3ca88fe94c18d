"""Assigning words and segments to speaker turns.

The same rule as `whisperx.assign_word_speakers` (largest time overlap wins, nearest turn when a
word overlaps none), written over our dataclasses so the ingress needs neither pandas nor a model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from core.transcript import Segment, SpeakerTurn, Word

# A word further than this from every turn stays unlabelled rather than guessed.
NEAREST_TURN_MAX_GAP_S = 1.0


def _overlap(start_s: float, end_s: float, turn: SpeakerTurn) -> float:
    return min(end_s, turn.end_s) - max(start_s, turn.start_s)


def speaker_at(start_s: float, end_s: float, turns: Sequence[SpeakerTurn]) -> str | None:
    """The speaker talking most during [start_s, end_s]; the nearest one within 1 s if none overlaps."""
    if not turns:
        return None
    talk: dict[str, float] = defaultdict(float)
    for turn in turns:
        overlap = _overlap(start_s, end_s, turn)
        if overlap > 0:
            talk[turn.speaker] += overlap
    if talk:
        return max(talk.items(), key=lambda item: item[1])[0]
    gap, nearest = min((max(turn.start_s - end_s, start_s - turn.end_s), turn.speaker) for turn in turns)
    return nearest if gap <= NEAREST_TURN_MAX_GAP_S else None


def _segment_speaker(segment: Segment, words: Sequence[Word], turns: Sequence[SpeakerTurn]) -> str | None:
    """The speaker with the most word time in the segment, or by time overlap when it has no words."""
    talk: dict[str, float] = defaultdict(float)
    for word in words:
        if word.speaker is not None:
            talk[word.speaker] += max(word.end_s - word.start_s, 1e-3)
    if talk:
        return max(talk.items(), key=lambda item: item[1])[0]
    return speaker_at(segment.start_s, segment.end_s, turns)


def assign_speakers(segments: Sequence[Segment], turns: Sequence[SpeakerTurn]) -> list[Segment]:
    """Label every word and segment with a speaker from `turns` (unchanged when there are no turns)."""
    if not turns:
        return list(segments)
    labelled = []
    for segment in segments:
        words = tuple(replace(w, speaker=speaker_at(w.start_s, w.end_s, turns)) for w in segment.words)
        labelled.append(replace(segment, words=words, speaker=_segment_speaker(segment, words, turns)))
    return labelled


def speakers_in_order(segments: Sequence[Segment]) -> list[str]:
    """Distinct speaker labels in order of first appearance."""
    seen: dict[str, None] = {}
    for segment in segments:
        for label in [w.speaker for w in segment.words] + [segment.speaker]:
            if label is not None:
                seen.setdefault(label, None)
    return list(seen)
