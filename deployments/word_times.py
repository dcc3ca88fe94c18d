"""Word-time arithmetic for alignment: which words whisperX makes of a text, and times for all of them.

Pure functions over plain values, so they are tested without a model.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.language import joins_without_spaces
from core.transcript import Word

WordTimes = tuple[float, float, float | None]  # start_s, end_s, probability


def expected_words(text: str, language: str) -> list[str]:
    """The words whisperX makes of `text`: whitespace-separated, or characters where no spaces are used."""
    if joins_without_spaces(language):
        return [char for char in text if not char.isspace()]
    return text.split()


def match_words(expected: Sequence[str], aligned: Sequence[dict], offset_s: float) -> list[WordTimes | None]:
    """Times whisperX gave each expected word (shifted by `offset_s`), None where it gave none."""
    # whisperX's words come from the very text we passed, in order, so they are a subsequence of the
    # expected words: an in-order walk pairs them.
    times: list[WordTimes | None] = []
    index = 0
    for text in expected:
        if index < len(aligned) and aligned[index]["word"] == text:
            word = aligned[index]
            index += 1
            if "start" in word and "end" in word:
                score = word.get("score")
                times.append((float(word["start"]) + offset_s, float(word["end"]) + offset_s,
                              None if score is None else float(score)))
                continue
        times.append(None)
    return times


def fill_word_times(texts: Sequence[str], times: Sequence[WordTimes | None], start_s: float,
                    end_s: float) -> tuple[Word, ...]:
    """Words with times in seconds: inside [start_s, end_s], in order, the unaligned ones interpolated.

    A run of unaligned words shares the gap between its aligned neighbours (or the segment's edges)
    in proportion to the words' lengths in characters; their probability is None.
    """
    end_s = max(end_s, start_s)
    placed: list[WordTimes | None] = []
    previous_end_s = start_s
    for known in times:
        if known is None:
            placed.append(None)
            continue
        # CTC paths are ordered; clamping guards against rounding and a segment longer than its audio.
        word_start_s = min(max(known[0], previous_end_s), end_s)
        word_end_s = min(max(known[1], word_start_s), end_s)
        placed.append((word_start_s, word_end_s, known[2]))
        previous_end_s = word_end_s

    words: list[Word] = []
    i = 0
    while i < len(texts):
        current = placed[i]
        if current is not None:
            words.append(Word(texts[i], current[0], current[1], current[2]))
            i += 1
            continue
        j = i
        while j < len(texts) and placed[j] is None:
            j += 1
        left_s = words[-1].end_s if words else start_s
        following = placed[j] if j < len(texts) else None
        right_s = max(following[0] if following is not None else end_s, left_s)
        weights = [max(len(text), 1) for text in texts[i:j]]
        unit_s = (right_s - left_s) / sum(weights)
        cursor_s = left_s
        for text, weight in zip(texts[i:j], weights, strict=True):
            next_s = min(cursor_s + weight * unit_s, right_s)
            words.append(Word(text, cursor_s, next_s, None))
            cursor_s = next_s
        i = j
    return tuple(words)
