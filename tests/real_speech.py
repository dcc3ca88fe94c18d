"""Real recorded human speech, joined with pauses into meeting-like test files longer than a minute.

Every recording here was made by people, not synthesised, and comes with a published transcript:

==============  ======================================================  ======  ==============================
clip            where it ships                                          length  reference text, licence
==============  ======================================================  ======  ==============================
call            ``pyannote.audio`` 4.0.7 wheel (installed):             30.0 s  ``sample.stm`` (words) and
                ``pyannote/audio/sample/sample.wav``; two women on a            ``sample.rttm`` (turns), both
                phone call (Diane, Sheila), speech from 6.7 s                   shipped; MIT (pyannote.audio)
reader          ``pocketsphinx`` 5.1.1 sdist: ``test/data/librivox/``   24.7 s  the ``.txt`` beside each clip;
                ``sense_and_sensibility_01_austen_64kb-0870 .. 0930``           speech spans from its ``.lab``;
                five sentences of chapter 1 of a LibriVox reading               LibriVox: public domain
jfk             ``pywhispercpp`` 1.5.1 sdist:                           11.0 s  the inaugural address (1961),
                ``whisper.cpp/samples/jfk.wav``; J. F. Kennedy                  public domain; file MIT
                                                                                (whisper.cpp)
forever         ``pocketsphinx`` 5.1.1 sdist:                            3.4 s  "feels like these days go on
                ``test/data/forever/input_2_16k.wav``; one speaker              forever", the text its
                                                                                ``cython/test/alignment_test.py``
                                                                                aligns; BSD-2 (pocketsphinx)
==============  ======================================================  ======  ==============================

The two sdists are not installed packages: ``scripts/test-audio`` (run by ``scripts/test``) downloads each
pinned sdist once, checks its sha256 and keeps only these files under ``.cache/real-speech/`` (git-ignored);
nothing is committed.

Two departures from the shipped texts, both orthography that :func:`tests.speech.normalize_text` does not
unify: the reader's "mister" is written "Mr." as Whisper writes it, and the JFK line is written as printed
in the address. The reader's own "a more a amiable" (shipped text and its forced alignment alike) is kept.

Building (:func:`build`) is deterministic: each clip is brought to the same speech level (95th percentile
of 20 ms frame RMS at -20 dBFS), placed after the pauses of its layout, and the whole file gets the same
seeded background noise at -60 dBFS, so pauses sound like a quiet room rather than digital zero.
Reference turns of ``jfk`` and ``forever`` (which ship none) are their voiced spans: 20 ms frames within
25 dB of the clip's speech level, gaps under 0.3 s bridged. Audio out is 16 kHz mono float32, read-only
(as an array from Ray's object store is); copy it to write to it.
"""

from __future__ import annotations

import io
import os
import wave
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from tests.audio_samples import _sample_dir, pyannote_sample_turns
from tests.speech import resample

SAMPLE_RATE = 16_000

_REPO = Path(__file__).resolve().parents[1]
_POCKETSPHINX = "pocketsphinx-5.1.1"
_PYWHISPERCPP = "pywhispercpp-1.5.1"
_LIBRIVOX = "test/data/librivox/sense_and_sensibility_01_austen_64kb-{}"
READER_CLIPS = ("0870", "0880", "0890", "0920", "0930")

# The call from just before its first word (6.68 s) to its end; its first 6.4 s are a silent line.
CALL_FROM_S = 6.4
# Speaker names from sample.stm, for the labels of sample.rttm.
_CALL_SPEAKERS = {"speaker90": "diane", "speaker91": "sheila"}

JFK_TEXT = ("And so, my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.")
FOREVER_TEXT = "Feels like these days go on forever."

SPEECH_LEVEL_DBFS = -20.0
NOISE_DBFS = -60.0


def cache_root() -> Path:
    """Where scripts/test-audio extracts the sdists' recordings ($REAL_SPEECH_DIR overrides)."""
    return Path(os.environ.get("REAL_SPEECH_DIR") or _REPO / ".cache" / "real-speech")


def _extracted(dist: str, member: str) -> Path:
    root = cache_root() / dist
    if not (root / ".complete").is_file():
        raise FileNotFoundError(f"no {root}: run scripts/test-audio, which extracts the real recordings of {dist}")
    return root / member


# --- clips ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """One real recording: 16 kHz float32 samples, what is said, and who speaks when (clip time)."""

    name: str
    audio: np.ndarray
    text: str
    turns: tuple[tuple[str, float, float], ...]


def _read_wav(data: bytes) -> np.ndarray:
    """Mono 16-bit PCM WAV as 16 kHz float32 (standard library only: no CTranslate2 or torch loaded)."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError("expected mono 16-bit PCM")
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    return samples if rate == SAMPLE_RATE else resample(samples, rate, SAMPLE_RATE)


def _frame_db(audio: np.ndarray, frame: int = 320) -> np.ndarray:
    n = audio.size // frame
    rms = np.sqrt(np.mean(np.square(audio[: n * frame].reshape(n, frame), dtype=np.float64), axis=1))
    return 20 * np.log10(rms + 1e-10)


def speech_level_db(audio: np.ndarray) -> float:
    """The 95th percentile of 20 ms frame RMS, dBFS: a clip's loud-speech level."""
    return float(np.percentile(_frame_db(audio), 95))


def voiced_spans(audio: np.ndarray, *, below_db: float = 25.0, bridge_s: float = 0.3,
                 min_s: float = 0.1) -> list[tuple[float, float]]:
    """Spans (s) of 20 ms frames within `below_db` of the speech level, gaps under `bridge_s` bridged."""
    db = _frame_db(audio)
    active = db >= speech_level_db(audio) - below_db
    spans: list[list[float]] = []
    for i in np.flatnonzero(active):
        start, end = int(i) * 0.02, (int(i) + 1) * 0.02
        if spans and start - spans[-1][1] < bridge_s:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [(round(a, 2), round(b, 2)) for a, b in spans if b - a >= min_s]


@cache
def call_clip() -> Clip:
    """pyannote's phone call from CALL_FROM_S on, with the STM's words and the RTTM's turns."""
    sample_dir = _sample_dir()
    audio = _read_wav((sample_dir / "sample.wav").read_bytes())[round(CALL_FROM_S * SAMPLE_RATE):]
    lines = (sample_dir / "sample.stm").read_text().splitlines()
    text = " ".join(line.split(maxsplit=5)[5] for line in lines if len(line.split()) > 5)
    turns = tuple((_CALL_SPEAKERS[s], round(a - CALL_FROM_S, 3), round(b - CALL_FROM_S, 3))
                  for s, a, b in pyannote_sample_turns() if b > CALL_FROM_S)
    return Clip("call", audio, text, turns)


@cache
def reader_clip(clip_id: str) -> Clip:
    """One sentence of the LibriVox reading; its turn is the speech span of the shipped .lab file."""
    base = _LIBRIVOX.format(clip_id)
    audio = _read_wav(_extracted(_POCKETSPHINX, base + ".wav").read_bytes())
    text = " ".join(_extracted(_POCKETSPHINX, base + ".txt").read_text().split())
    text = text.replace("mister ", "Mr. ")
    labels = [line.split() for line in _extracted(_POCKETSPHINX, base + ".lab").read_text().splitlines()]
    (start,) = [float(fields[0]) for fields in labels if fields[-1] == "speech"]
    ends = [float(fields[0]) for fields in labels if fields[-1] == "silence" and float(fields[0]) > start]
    end = ends[0] if ends else audio.size / SAMPLE_RATE
    return Clip(f"reader-{clip_id}", audio, text, (("reader", start, end),))


def _voiced_clip(name: str, speaker: str, audio: np.ndarray, text: str) -> Clip:
    return Clip(name, audio, text, tuple((speaker, a, b) for a, b in voiced_spans(audio)))


@cache
def jfk_clip() -> Clip:
    audio = _read_wav(_extracted(_PYWHISPERCPP, "whisper.cpp/samples/jfk.wav").read_bytes())
    return _voiced_clip("jfk", "jfk", audio, JFK_TEXT)


@cache
def forever_clip() -> Clip:
    audio = _read_wav(_extracted(_POCKETSPHINX, "test/data/forever/input_2_16k.wav").read_bytes())
    return _voiced_clip("forever", "forever", audio, FOREVER_TEXT)


def clip(name: str) -> Clip:
    """A clip by name: call, jfk, forever, reader-0870 ... reader-0930."""
    if name.startswith("reader-"):
        return reader_clip(name.removeprefix("reader-"))
    return {"call": call_clip, "jfk": jfk_clip, "forever": forever_clip}[name]()


# --- test files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealSpeech:
    """A built test file: audio, reference transcript in order, reference turns, and where each clip and
    pause lies (seconds in the file)."""

    name: str
    audio: np.ndarray
    reference: str
    turns: tuple[tuple[str, float, float], ...]
    clips: tuple[tuple[str, float, float], ...]
    pauses: tuple[tuple[float, float], ...]

    @property
    def duration_s(self) -> float:
        return self.audio.size / SAMPLE_RATE

    @property
    def speakers(self) -> list[str]:
        return list(dict.fromkeys(t[0] for t in self.turns))


# A layout is clip names and pause lengths in seconds, in order. Pauses between the readers' sentences are
# the reading's own rhythm (0.8 s); the joins between recordings are 2-8 s, like a meeting's silences.
_READ_GAP_S = 0.8
LAYOUTS: dict[str, tuple[str | float, ...]] = {
    # Reader / 7 s of silence / phone call / reader / JFK: the 7 s pause (17.5-24.5 s) lies inside the
    # first 30 s window, where a batched faster-whisper path once lost half the words. 4 speakers, 77 s.
    "pause_in_first_window": (
        0.5, "reader-0870", _READ_GAP_S, "reader-0880", _READ_GAP_S, "reader-0890",
        7.0, "call", 3.0, "reader-0920", _READ_GAP_S, "reader-0930", 4.0, "jfk", 0.5,
    ),
    # JFK / reader / phone call / reader again / a fifth voice: 5 speakers, the reader back after 40 s
    # away, pauses of 6, 8, 5 and 7 s. 95 s.
    "meeting_95s": (
        1.5, "jfk", 6.0, "reader-0870", _READ_GAP_S, "reader-0880", _READ_GAP_S, "reader-0890",
        8.0, "call", 5.0, "reader-0920", _READ_GAP_S, "reader-0930", 7.0, "forever", 2.0,
    ),
}


def _rounds(orders: tuple[tuple[str, ...], ...], pauses_s: tuple[float, ...]) -> tuple[str | float, ...]:
    """A layout of every recording once per round, in each round's order, `pauses_s` between them;
    "reader" is the reader's five sentences in a row."""
    reader: tuple[str | float, ...] = tuple(
        item for clip_id in READER_CLIPS for item in (_READ_GAP_S, f"reader-{clip_id}"))[1:]
    names = [name for order in orders for name in order]
    if len(pauses_s) != len(names) - 1:
        raise ValueError(f"{len(names)} recordings need {len(names) - 1} pauses, not {len(pauses_s)}")
    layout: list[str | float] = [1.0]
    for i, name in enumerate(names):
        layout.extend(reader if name == "reader" else (name,))
        layout.append(pauses_s[i] if i < len(pauses_s) else 1.5)
    return tuple(layout)


# Every recording seven times, in a new order each round, 2-8 s apart: 5 speakers who each come back
# every 70-100 s, like a long meeting, for throughput on a long file (benchmarks.throughput). 595 s.
LAYOUTS["meeting_10min"] = _rounds(
    (("jfk", "reader", "call", "forever"), ("call", "forever", "reader", "jfk"),
     ("reader", "jfk", "forever", "call"), ("forever", "call", "jfk", "reader"),
     ("jfk", "call", "reader", "forever"), ("reader", "forever", "call", "jfk"),
     ("call", "jfk", "forever", "reader")),
    (3.0, 6.0, 2.0, 8.0, 4.5, 2.5, 7.0, 5.0, 3.5, 6.5, 4.0, 7.5, 2.0, 5.5, 3.0, 8.0, 4.0, 6.0, 2.5, 7.0,
     5.0, 3.5, 6.5, 4.5, 2.0, 7.5, 5.5),
)


def _level(audio: np.ndarray) -> np.ndarray:
    gain = 10 ** ((SPEECH_LEVEL_DBFS - speech_level_db(audio)) / 20)
    gain = min(gain, 0.99 / max(float(np.abs(audio).max()), 1e-9))
    return (audio * gain).astype(np.float32)


@cache
def build(name: str) -> RealSpeech:
    """The test file of LAYOUTS[name], built once per process."""
    pieces: list[np.ndarray] = []
    texts: list[str] = []
    turns: list[tuple[str, float, float]] = []
    clips: list[tuple[str, float, float]] = []
    pauses: list[tuple[float, float]] = []
    pos = 0
    for item in LAYOUTS[name]:
        if isinstance(item, float):
            n = round(item * SAMPLE_RATE)
            pieces.append(np.zeros(n, np.float32))
            if item >= 2.0:
                pauses.append((pos / SAMPLE_RATE, (pos + n) / SAMPLE_RATE))
            pos += n
            continue
        c = clip(item)
        offset = pos / SAMPLE_RATE
        pieces.append(_level(c.audio))
        texts.append(c.text)
        turns.extend((s, round(offset + a, 3), round(offset + b, 3)) for s, a, b in c.turns)
        clips.append((c.name, offset, offset + c.audio.size / SAMPLE_RATE))
        pos += c.audio.size
    # Only silences between two recordings count as pauses, not the lead-in or the tail.
    pauses = [p for p in pauses if clips and clips[0][1] <= p[0] and p[1] <= clips[-1][1]]
    audio = np.concatenate(pieces)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    audio = audio + rng.standard_normal(audio.size).astype(np.float32) * np.float32(10 ** (NOISE_DBFS / 20))
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    audio.flags.writeable = False
    return RealSpeech(name, audio, " ".join(texts), tuple(sorted(turns, key=lambda t: t[1])), tuple(clips),
                      tuple(pauses))


def pause_in_first_window() -> RealSpeech:
    """77 s, 4 speakers (reader, diane, sheila, jfk), a 7 s pause from 17.5 s: see LAYOUTS."""
    return build("pause_in_first_window")


def meeting_95s() -> RealSpeech:
    """95 s, 5 speakers (jfk, reader, diane, sheila, forever), pauses of 5-8 s: see LAYOUTS."""
    return build("meeting_95s")


def all_files() -> list[RealSpeech]:
    return [build(name) for name in LAYOUTS]


def mp4_bytes(name: str = "pause_in_first_window") -> bytes:
    """A built file as a user's phone video: MP4 with a small H.264 (or MPEG-4) picture and AAC audio."""
    from tests.media_files import encode_video

    return encode_video(np.array(build(name).audio))


def wav_bytes(name: str = "pause_in_first_window") -> bytes:
    from tests.speech import to_wav_bytes

    return to_wav_bytes(build(name).audio)
