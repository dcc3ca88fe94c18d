"""Small transcripts for the renderer tests (formats, bodies, subtitles)."""

from __future__ import annotations

from core.transcript import Segment, Transcript, Word


def w(text: str, start: float, end: float, speaker: str | None = None) -> Word:
    return Word(text=text, start_s=start, end_s=end, speaker=speaker)


def seg(words: list[Word], speaker: str | None = None, text: str | None = None) -> Segment:
    body = text if text is not None else " ".join(x.text.strip() for x in words)
    start = words[0].start_s if words else 0.0
    end = words[-1].end_s if words else 0.0
    return Segment(text=" " + body, start_s=start, end_s=end, words=tuple(words), speaker=speaker)


def transcript(
    segments: list[Segment], *, language: str = "en", speakers: list[str] | None = None
) -> Transcript:
    duration = max((s.end_s for s in segments), default=0.0)
    words = any(s.words for s in segments)
    return Transcript(
        task="transcribe",
        language=language,
        duration_s=duration,
        segments=segments,
        word_source="alignment" if words else None,
        speakers=speakers or [],
    )


def two_speakers() -> Transcript:
    words_a = [w("Hello", 0.0, 0.4, "SPEAKER_00"), w("there.", 0.5, 0.9, "SPEAKER_00")]
    words_b = [w("General", 1.0, 1.4, "SPEAKER_01"), w("Kenobi!", 1.5, 2.0, "SPEAKER_01")]
    return transcript([seg(words_a + words_b)], speakers=["SPEAKER_00", "SPEAKER_01"])
