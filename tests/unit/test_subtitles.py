"""serve_app.subtitles: SRT/VTT syntax, cue limits and speaker labels, checked on the documents `render` gives."""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from core.transcript import Segment, Transcript, Word
from serve_app.formats import render
from serve_app.subtitles import SubtitleOptions, format_timestamp
from tests.unit.transcripts import seg, transcript, two_speakers, w

_TS_SRT = r"\d{2,}:[0-5]\d:[0-5]\d,\d{3}"
_TS_VTT = r"\d{2,}:[0-5]\d:[0-5]\d\.\d{3}"
SRT_DOCUMENT = re.compile(rf"(?:[1-9]\d*\n{_TS_SRT} --> {_TS_SRT}\n(?:[^\n]+\n)+\n)*")
VTT_DOCUMENT = re.compile(rf"WEBVTT\n\n(?:{_TS_VTT} --> {_TS_VTT}\n(?:[^\n]+\n)+\n)*")
SRT_LABEL = re.compile(r"^\[([^\]]+)\] ")
VTT_LABEL = re.compile(r"^<v ([^>]+)>")


@dataclass
class Cue:
    start_ms: int
    end_ms: int
    speaker: str | None
    lines: list[str]  # without the label

    @property
    def words(self) -> list[str]:
        return " ".join(self.lines).split()


def _ms(stamp: str) -> int:
    hms, millis = re.split(r"[,.]", stamp)
    h, m, s = (int(x) for x in hms.split(":"))
    return ((h * 60 + m) * 60 + s) * 1000 + int(millis)


def parse(doc: str, fmt: str) -> list[Cue]:
    """Check the whole document's syntax, then read its cues back (labels split off, VTT unescaped)."""
    if fmt == "srt":
        assert SRT_DOCUMENT.fullmatch(doc), doc
        blocks, label = doc.split("\n\n")[:-1], SRT_LABEL
    else:
        assert VTT_DOCUMENT.fullmatch(doc), doc
        blocks, label = doc.split("\n\n")[1:-1], VTT_LABEL
    cues = []
    for number, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        if fmt == "srt":
            assert lines.pop(0) == str(number)
        start, end = lines.pop(0).split(" --> ")
        match = label.match(lines[0])
        if match:
            lines[0] = lines[0][match.end() :]
        if fmt == "vtt":  # measure and compare the text a viewer sees
            lines = [_vtt_unescape(line) for line in lines]
        cues.append(Cue(_ms(start), _ms(end), match.group(1) if match else None, lines))
    return cues


# --- timestamps -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "00:00:00,000"),
        (0.0004, "00:00:00,000"),
        (1.2345678, "00:00:01,235"),
        (59.9994, "00:00:59,999"),
        (59.9995, "00:01:00,000"),  # the carry reaches the minutes, never ",1000"
        (3599.9999, "01:00:00,000"),
        (3661.5, "01:01:01,500"),
        (100 * 3600 + 0.25, "100:00:00,250"),
        (-0.5, "00:00:00,000"),
    ],
)
def test_format_timestamp(seconds: float, expected: str) -> None:
    assert format_timestamp(seconds) == expected
    assert format_timestamp(seconds, ".") == expected.replace(",", ".")


# --- SRT and VTT ---------------------------------------------------------------------------------------


def test_srt_exact_document() -> None:
    body, media_type = render(two_speakers(), "srt")
    assert media_type == "text/plain; charset=utf-8"
    assert body == (
        "1\n00:00:00,000 --> 00:00:00,900\n[SPEAKER_00] Hello there.\n\n"
        "2\n00:00:01,000 --> 00:00:02,000\n[SPEAKER_01] General Kenobi!\n\n"
    )


def test_vtt_exact_document() -> None:
    body, media_type = render(two_speakers(), "vtt")
    assert media_type == "text/vtt; charset=utf-8"
    assert body == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:00.900\n<v SPEAKER_00>Hello there.\n\n"
        "00:00:01.000 --> 00:00:02.000\n<v SPEAKER_01>General Kenobi!\n\n"
    )


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_no_labels_without_diarization_or_when_disabled(fmt: str) -> None:
    plain = transcript([seg([w("Hello", 0, 0.5), w("world", 0.6, 1.0)])])
    off = SubtitleOptions(speaker_labels=False)
    for body in (render(plain, fmt)[0], render(two_speakers(), fmt, subtitles=off)[0]):
        assert isinstance(body, str)
        assert all(cue.speaker is None for cue in parse(body, fmt))
        assert "[" not in body and "<v" not in body


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_speaker_change_starts_new_cue_even_without_pause(fmt: str) -> None:
    words = [
        w("one", 0.0, 0.3, "A"),
        w("two", 0.3, 0.6, "B"),
        w("three", 0.6, 0.9, "B"),
        w("four", 0.9, 1.2, "A"),
    ]
    cues = parse(str(render(transcript([seg(words)]), fmt)[0]), fmt)
    assert [(c.speaker, c.words) for c in cues] == [("A", ["one"]), ("B", ["two", "three"]), ("A", ["four"])]


def test_vtt_escapes_markup_and_srt_does_not() -> None:
    t = transcript([seg([w("a<b", 0, 0.5), w("&", 0.5, 0.7), w("c-->d", 0.7, 1.0)])])
    vtt = str(render(t, "vtt")[0])
    assert "a&lt;b &amp; c--&gt;d" in vtt
    assert parse(vtt, "vtt")
    assert "a<b & c-->d" in str(render(t, "srt")[0])


def test_pause_longer_than_min_gap_splits_cue() -> None:
    t = transcript([seg([w("before", 0.0, 0.5), w("after", 2.0, 2.5)])])
    assert [c.words for c in parse(str(render(t, "srt")[0]), "srt")] == [["before"], ["after"]]
    joined = render(t, "srt", subtitles=SubtitleOptions(min_gap_s=2.0))[0]
    assert [c.words for c in parse(str(joined), "srt")] == [["before", "after"]]


def test_overlapping_and_zero_length_words_give_ordered_cues() -> None:
    words = [w("a", 1.0, 1.0, "A"), w("b", 0.5, 2.0, "B"), w("c", 1.5, 1.5, "A")]
    cues = parse(str(render(transcript([seg(words)]), "srt")[0]), "srt")
    assert len(cues) == 3
    _assert_ordered(cues)


def test_empty_transcript() -> None:
    empty = transcript([])
    assert render(empty, "srt")[0] == ""
    assert render(empty, "vtt")[0] == "WEBVTT\n\n"
    assert render(empty, "text")[0] == "\n"


def test_whisper_words_keep_their_own_spacing() -> None:
    words = [w(" Hello", 0, 0.3), w(" world", 0.3, 0.6), w(".", 0.6, 0.7), w(" Bye", 0.8, 1.0)]
    assert parse(str(render(transcript([seg(words)]), "srt")[0]), "srt")[0].lines == ["Hello world. Bye"]


def test_segments_without_words_are_split_proportionally() -> None:
    text = " ".join(f"word{i:02d}" for i in range(40))  # 279 characters over 20 s
    t = transcript([Segment(text=" " + text, start_s=10.0, end_s=30.0)])
    cues = parse(str(render(t, "srt")[0]), "srt")
    assert len(cues) > 1
    assert [x for c in cues for x in c.words] == text.split()
    assert cues[0].start_ms == 10_000 and cues[-1].end_ms == 30_000
    _assert_limits(cues, SubtitleOptions(), label_chars=0)
    _assert_ordered(cues)


def test_segments_without_words_in_japanese_split_by_character() -> None:
    text = "今日は良い天気ですね" * 10
    t = transcript([Segment(text=text, start_s=0.0, end_s=10.0)], language="ja")
    cues = parse(str(render(t, "vtt", subtitles=SubtitleOptions(max_line_chars=16))[0]), "vtt")
    assert "".join("".join(c.lines) for c in cues) == text
    assert all(len(line) <= 16 for c in cues for line in c.lines)


def test_segment_boundaries_end_cues() -> None:
    t = transcript([seg([w("first", 0, 0.4)]), seg([w("second", 0.5, 0.9)])])
    assert [c.words for c in parse(str(render(t, "srt")[0]), "srt")] == [["first"], ["second"]]


def _random_transcript(rng: random.Random) -> tuple[Transcript, list[Word]]:
    diarized = rng.random() < 0.6
    segments, clock, speaker = [], 0.0, "SPEAKER_00"
    for _ in range(rng.randint(0, 6)):
        words = []
        for _ in range(rng.randint(1, 30)):
            if diarized and rng.random() < 0.15:
                speaker = rng.choice(["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"])
            length = 60 if rng.random() < 0.02 else rng.randint(1, 14)
            text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz&<>.,", k=length))
            clock += rng.choice([0.0, 0.05, 0.2, rng.uniform(0, 2.5)])
            duration = 9.0 if rng.random() < 0.02 else rng.uniform(0.0, 1.0)
            words.append(w(text, clock, clock + duration, speaker if diarized else None))
            clock += duration
        segments.append(seg(words))
    speakers = sorted({x.speaker for s in segments for x in s.words if x.speaker})
    return transcript(segments, speakers=speakers), [x for s in segments for x in s.words]


def _random_options(rng: random.Random) -> SubtitleOptions:
    return SubtitleOptions(
        max_line_chars=rng.randint(8, 50),
        max_lines_per_cue=rng.randint(1, 3),
        max_cue_duration_s=rng.uniform(0.5, 8.0),
        min_gap_s=rng.uniform(0.0, 2.0),
        min_cue_duration_s=rng.uniform(0.0, 2.0),
        speaker_labels=rng.random() < 0.8,
    )


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_random_transcripts_respect_every_limit(fmt: str) -> None:
    rng = random.Random(20240611)
    for _ in range(200):
        t, words = _random_transcript(rng)
        opts = _random_options(rng)
        cues = parse(str(render(t, fmt, subtitles=opts)[0]), fmt)
        assert [x for c in cues for x in c.words] == [x.text for x in words]
        _assert_ordered(cues)
        labelled = fmt == "srt" and opts.speaker_labels and bool(t.speakers)
        _assert_limits(cues, opts, label_chars=len("[SPEAKER_00] ") if labelled else 0)
        _assert_turns(cues, words, opts)
        _assert_held(cues, opts)


def _assert_held(cues: list[Cue], opts: SubtitleOptions) -> None:
    """Every cue stays up for the minimum (capped by the maximum) or until the next one starts."""
    shortest = min(round(opts.min_cue_duration_s * 1000), round(opts.max_cue_duration_s * 1000))
    for cue, following in itertools.pairwise([*cues, None]):
        until = cue.start_ms + shortest if following is None else min(cue.start_ms + shortest, following.start_ms)
        assert cue.end_ms >= until, (cue, following, opts)


def test_short_words_are_held_on_screen_but_not_into_the_next_cue() -> None:
    words = [w("Yes.", 1.0, 1.0), w("No.", 5.0, 5.1), w("Maybe", 5.5, 5.6), w("so.", 10.0, 10.05)]
    cues = parse(str(render(transcript([seg(words)]), "srt", subtitles=SubtitleOptions(min_gap_s=0.3))[0]), "srt")
    assert [(c.words, c.start_ms, c.end_ms) for c in cues] == [
        (["Yes."], 1000, 1800),  # a zero-length word, held 0.8 s
        (["No."], 5000, 5500),  # held until "Maybe" starts
        (["Maybe"], 5500, 6300),
        (["so."], 10000, 10800),
    ]


def _vtt_unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _assert_ordered(cues: list[Cue]) -> None:
    previous_end = 0
    for cue in cues:
        assert previous_end <= cue.start_ms < cue.end_ms
        previous_end = cue.end_ms


def _assert_limits(cues: list[Cue], opts: SubtitleOptions, label_chars: int) -> None:
    for cue in cues:
        assert 1 <= len(cue.lines) <= opts.max_lines_per_cue
        for i, line in enumerate(cue.lines):
            budget = opts.max_line_chars - (label_chars if i == 0 and cue.speaker else 0)
            assert len(line) <= budget or " " not in line, (line, opts)
        if len(cue.words) > 1:
            assert cue.end_ms - cue.start_ms <= round(opts.max_cue_duration_s * 1000), (cue, opts)


def _assert_turns(cues: list[Cue], words: list[Word], opts: SubtitleOptions) -> None:
    """Each cue holds one speaker's consecutive words, no long pause, and carries that speaker's label."""
    position = 0
    for cue in cues:
        chunk = words[position : position + len(cue.words)]
        position += len(chunk)
        assert len({x.speaker for x in chunk}) == 1
        if opts.speaker_labels:
            assert cue.speaker == chunk[0].speaker
        for a, b in itertools.pairwise(chunk):
            assert round(b.start_s * 1000) - round(a.end_s * 1000) <= round(opts.min_gap_s * 1000)


def test_subtitle_options_are_frozen_validated_and_documented() -> None:
    opts = SubtitleOptions()
    assert (opts.max_line_chars, opts.max_lines_per_cue, opts.max_cue_duration_s) == (42, 2, 6.0)
    assert (opts.min_gap_s, opts.speaker_labels) == (1.0, True)
    with pytest.raises(ValidationError):
        opts.max_line_chars = 10  # type: ignore[misc]
    with pytest.raises(ValidationError):
        SubtitleOptions(max_line_chars=0)
    with pytest.raises(ValidationError):
        SubtitleOptions(max_chars=10)  # type: ignore[call-arg]
    assert all(field.description for field in SubtitleOptions.model_fields.values())
