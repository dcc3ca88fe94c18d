"""Word start-time accuracy against ground truth: synthetic paragraphs whose word starts are known to the
sample (espeak-ng's word events, tests/speech.py), transcribed by the service's ASR holder with word
timestamps, beside faster-whisper's own WhisperModel with word_timestamps=True on the same audio.

    python -m benchmarks.word_timing [--model bundled/tiny.en|bundled/base]

Both sides load their own copy of the model in this process, on the CPU with int8 weights and 2 threads,
and run one after the other, so run it on an otherwise idle machine. Words are matched in order on
normalised text (difflib.SequenceMatcher); the error of a matched word is |predicted start - true start|.
A true start is where espeak-ng begins the word's first phoneme, so a word-initial stop ("to", "bread")
starts at its closure, tens of ms before its burst. The script prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import difflib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tests.speech import SAMPLE_RATE, TimedWord, VoiceSpec, normalize_text, passage

COMPUTE_TYPE = "int8"
CPU_THREADS = 2
BEAM_SIZE = 5

# Pauses between sentences cycle through these, seconds.
PAUSES_S = (1.0, 2.5, 1.5, 3.0, 2.0)

# (name, voice, sentences). Everyday words, American spelling, no numbers, hyphens or abbreviations: one
# way to write each. The first clip is over 30 s, so it spans more than one Whisper window.
CLIPS: list[tuple[str, VoiceSpec, list[str]]] = [
    ("village, en-us+klatt", VoiceSpec("en-us+klatt"), [
        "The village sits at the foot of a quiet green hill.",
        "Every morning the baker opens his shop before the sun comes up.",
        "People line up outside for warm bread and sweet rolls.",
        "Children walk past on their way to school and wave at him.",
        "In the afternoon the square fills with music and laughter.",
        "Old friends sit on the benches and talk about the weather.",
        "When the evening comes, the lights in the windows glow like small stars.",
        "Then the village goes to sleep and waits for another day.",
    ]),
    ("bicycles, en-us", VoiceSpec("en-us"), [
        "My brother likes to fix old bicycles in the garage.",
        "He finds them at markets and brings them home on the train.",
        "Some of them have no wheels, and some have no seats at all.",
        "He cleans every part and paints the frames in bright colors.",
        "Last summer he gave one to each of his neighbors.",
        "Now the whole street rides to the lake on the weekend.",
    ]),
    ("museum, en-us+zac", VoiceSpec("en-us+zac"), [
        "The museum opens a new exhibit about the ocean next week.",
        "Visitors will walk through a long glass tunnel full of fish.",
        "There is a room where you can touch the shells of sea turtles.",
        "The guides will answer questions about whales and sharks.",
        "Tickets are free for students on the first day.",
    ]),
    ("mountains, en-gb-x-rp 180 wpm", VoiceSpec("en-gb-x-rp", rate_wpm=180), [
        "We planned a trip to the mountains for the end of the month.",
        "The weather report promised clear skies and cool nights.",
        "We packed warm jackets, a small stove, and plenty of water.",
        "On the second day we climbed to a lake above the trees.",
        "The water was so clear that we could see stones on the bottom.",
        "We stayed there until the sun went down behind the ridge.",
    ]),
    ("garden, en-us+croak", VoiceSpec("en-us+croak"), [
        "My grandmother grows tomatoes and beans behind her house.",
        "She gets up early to water the plants before it gets hot.",
        "Birds come to eat the seeds, so she hangs shiny ribbons on the fence.",
        "In the fall she shares the harvest with the whole family.",
        "We cook a big dinner together and eat outside under the trees.",
    ]),
]


@dataclass
class Clip:
    name: str
    audio: np.ndarray
    words: list[TimedWord]

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE


@dataclass
class Score:
    errors_s: list[float]  # |predicted - true| of each matched word
    signed_s: list[float]  # predicted - true
    matched: int
    reference: int
    predicted: int


def make_clips() -> list[Clip]:
    clips = []
    for name, voice, sentences in CLIPS:
        pauses = [PAUSES_S[i % len(PAUSES_S)] for i in range(len(sentences) - 1)]
        audio, words = passage(sentences, voice, pauses)
        clips.append(Clip(name, audio, words))
    return clips


def _token(text: str) -> str:
    """One comparable token per word: normalised, inner spaces dropped ("o'clock" -> "oclock")."""
    return normalize_text(text).replace(" ", "")


def score(truth: Sequence[TimedWord], predicted: Sequence[tuple[str, float]]) -> Score:
    """Match predicted (text, start_s) words to the true words in order and measure the start errors."""
    ref = [(_token(w.text), w.start_s) for w in truth]
    hyp = [(t, s) for t, s in ((_token(text), start) for text, start in predicted) if t]
    matcher = difflib.SequenceMatcher(None, [t for t, _ in ref], [t for t, _ in hyp], autojunk=False)
    signed = [hyp[j + k][1] - ref[i + k][1]
              for i, j, n in matcher.get_matching_blocks() for k in range(n)]
    return Score([abs(e) for e in signed], signed, len(signed), len(ref), len(hyp))


Predicted = list[tuple[str, float]]  # (word text, start_s) in order


def holder_words(model: str, clips: Sequence[Clip]) -> list[Predicted]:
    """(a) The service's ASR holder with AsrOptions(word_timestamps=True), one call per clip."""
    from core.transcript import AsrOptions
    from deployments.asr import AsrConfig, AsrHolder

    holder = AsrHolder(AsrConfig(model=model, compute_type=COMPUTE_TYPE, cpu_threads=CPU_THREADS,
                                 beam_size=BEAM_SIZE))
    try:
        out = []
        for clip in clips:
            result = holder.run(holder.transcribe, clip.audio, AsrOptions(word_timestamps=True))
            out.append([(w.text, w.start_s) for s in result.segments for w in s.words])
        return out
    finally:
        holder.close()


def faster_whisper_words(model: str, clips: Sequence[Clip]) -> list[Predicted]:
    """(b) faster-whisper's own WhisperModel.transcribe(word_timestamps=True), one call per clip."""
    from faster_whisper import WhisperModel

    from deployments import bundled

    source = bundled.whisper_model_dir(model) if bundled.is_bundled(model) else model
    whisper = WhisperModel(source, device="cpu", compute_type=COMPUTE_TYPE, cpu_threads=CPU_THREADS)
    out = []
    for clip in clips:
        segments, _ = whisper.transcribe(clip.audio, language="en", beam_size=BEAM_SIZE, word_timestamps=True)
        out.append([(w.word.strip(), float(w.start)) for s in segments for w in (s.words or ())])
    return out


def _ms(values: Sequence[float], q: float) -> str:
    return f"{1000 * float(np.quantile(values, q)):6.0f}" if values else "     -"


def _cells(s: Score | None) -> str:
    if s is None:
        return f"{'failed':>30}"
    bias = f"{1000 * float(np.median(s.signed_s)):+6.0f}" if s.signed_s else "     -"
    return f"{_ms(s.errors_s, 0.5)} {_ms(s.errors_s, 0.9)} {bias} {s.matched:4d}/{s.reference:<4d}"


def _pooled(scores: list[Score]) -> Score:
    return Score([e for s in scores for e in s.errors_s], [e for s in scores for e in s.signed_s],
                 sum(s.matched for s in scores), sum(s.reference for s in scores),
                 sum(s.predicted for s in scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled/tiny.en", choices=["bundled/tiny.en", "bundled/base"])
    options = parser.parse_args()

    clips = make_clips()
    total_s = sum(c.seconds for c in clips)
    sides: dict[str, Callable[[str, Sequence[Clip]], list[Predicted]]] = {
        "(a) AsrHolder word_timestamps": holder_words,
        "(b) faster-whisper WhisperModel": faster_whisper_words,
    }
    scores: dict[str, list[Score] | None] = {}
    seconds: dict[str, float] = {}
    for name, run in sides.items():
        started = time.perf_counter()
        try:
            predicted = run(options.model, clips)
        except Exception as e:  # noqa: BLE001 - a side that fails is reported, the other still runs
            print(f"{name} failed: {type(e).__name__}: {e}")
            scores[name] = None
            continue
        seconds[name] = time.perf_counter() - started
        scores[name] = [score(c.words, p) for c, p in zip(clips, predicted, strict=True)]

    print(f"\nmodel {options.model}, compute type {COMPUTE_TYPE}, {CPU_THREADS} CPU threads, beam {BEAM_SIZE}, "
          f"{len(clips)} clips, {total_s:.1f} s of audio "
          f"({', '.join(f'{c.seconds:.1f}' for c in clips)} s), pauses {min(PAUSES_S):g}-{max(PAUSES_S):g} s")
    print("word start error |predicted - true| in ms: median, 90th percentile, median signed (bias); "
          "matched / true words\n")
    names = list(sides)
    header = f"{'clip':32}" + "".join(f"  {n:30}" for n in names)
    sub = f"{'':32}" + "".join(f"  {'med    p90   bias  matched':30}" for _ in names)
    print(header)
    print(sub)
    rows = [(c.name, i) for i, c in enumerate(clips)] + [("all", None)]
    for label, i in rows:
        cells = []
        for n in names:
            side = scores[n]
            cells.append(_cells(None if side is None else (_pooled(side) if i is None else side[i])))
        print(f"{label:32}" + "".join(f"  {c:30}" for c in cells))
    print("\nwall time, model load included: " + ", ".join(f"{n} {s:.1f} s" for n, s in seconds.items()))


if __name__ == "__main__":
    main()
