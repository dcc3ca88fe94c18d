"""Synthetic speech with known text and known speaker turns, for tests.

Drives the espeak-ng library that the ``espeakng-loader`` wheel ships (``libespeak-ng.so`` and its voice
data) through ctypes, so no system package is needed. espeak-ng's voices and voice data are GPL-3.0-or-later;
only generated audio is used here, nothing of espeak-ng is committed.

Audio out is always mono float32 at 16 kHz in [-1, 1].

- :func:`synthesize` speaks a text in one voice; :class:`VoiceSpec` names a voice with its parameters.
- :func:`conversation` strings lines of several voices together and returns exact :class:`Turn` s.
- :func:`synthesize_words` is :func:`synthesize` plus each word's true start (:class:`TimedWord`), from
  espeak-ng's own word events; :func:`passage` strings sentences of one voice together with set pauses and
  keeps the word starts exact.
- :data:`PARAGRAPH`, :data:`CONVERSATION`, :data:`DISTINCT_VOICES`, :data:`CLEAR_VOICE`: fixed material;
  :func:`sample_paragraph` and :func:`sample_conversation` make it once per process.
- :func:`to_wav_bytes` for upload tests, :func:`word_error_rate` to score transcripts.

Every call holds a lock (espeak-ng is not re-entrant) and gives the same samples for the same arguments,
whatever ran before it in this or any process. Two things would otherwise carry over: the waveform
generator's static state (pitch flutter, phase), reset by loading the library afresh for each utterance,
and the C library's ``rand()``, from which espeak-ng draws breath noise and which everything else in the
process shares, reseeded from the utterance's own arguments (:func:`_seed`).
"""

from __future__ import annotations

import _ctypes
import ctypes
import io
import re
import threading
import wave
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from math import gcd

import numpy as np

from core.audio import SAMPLE_RATE_HZ as SAMPLE_RATE

# espeak_AUDIO_OUTPUT: synthesise into a callback and return when done.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER
_ESPEAK_RATE = 1
_ESPEAK_VOLUME = 2
_ESPEAK_PITCH = 3
_ESPEAK_RANGE = 4
# espeak_POSITION_TYPE
_POS_CHARACTER = 1
# espeak_Synth flags
_ESPEAK_CHARS_UTF8 = 1
# espeak_EVENT_TYPE
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based, in characters of the text (not bytes, even as UTF-8)
        ("length", ctypes.c_int),  # characters
        ("audio_position", ctypes.c_int),  # ms, truncated
        ("sample", ctypes.c_int),  # the same position in output samples from the start of the text: exact
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

_lock = threading.Lock()
_libc = ctypes.CDLL(None)
_chunks: list[np.ndarray] = []
_word_events: list[tuple[int, int, int]] = []  # (sample, text_position, length) of each espeakEVENT_WORD


def _on_samples(wav, numsamples, events):  # called by espeak-ng inside espeak_Synth, under _lock
    if wav and numsamples > 0:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
    if events:  # the events up to the end of this chunk, terminated by espeakEVENT_LIST_TERMINATED
        event = ctypes.cast(events, ctypes.POINTER(_Event))
        i = 0
        while event[i].type != _EVENT_LIST_TERMINATED:
            if event[i].type == _EVENT_WORD:
                _word_events.append((event[i].sample, event[i].text_position, event[i].length))
            i += 1
    return 0  # 0: go on synthesising


# Kept referenced for the life of the process: espeak-ng holds the pointer while it is loaded.
_callback = _SYNTH_CALLBACK(_on_samples)


def _declare_signatures(lib: ctypes.CDLL) -> None:
    """The argument and return types of the espeak-ng calls used here (speak_lib.h)."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int


@contextmanager
def _fresh_library() -> Iterator[tuple[ctypes.CDLL, int]]:
    """libespeak-ng loaded and initialised for one utterance, then terminated and unloaded.

    Unloading resets the waveform generator's static state (pitch flutter, phase), so every utterance
    starts from the same state (about 5 ms per load). Call with _lock held.
    """
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    _declare_signatures(lib)
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    try:
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate})")
        lib.espeak_SetSynthCallback(_callback)
        yield lib, rate  # 22,050 Hz
    finally:
        if rate > 0:
            lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)


def _check(rc: int, what: str) -> None:
    if rc != 0:  # EE_OK
        raise RuntimeError(f"{what} failed (espeak_ERROR {rc})")


def _seed(text: str, voice: str, *params: int) -> int:
    """A stable 32-bit seed for one utterance (Python's own hash() of a str changes per process)."""
    return zlib.crc32("\0".join([text, voice, *map(str, params)]).encode())


def synthesize_native(
    text: str, voice: str = "en-us", *, rate_wpm: int = 160, pitch: int = 50, pitch_range: int = 50
) -> tuple[np.ndarray, int]:
    """espeak-ng's own output: int16 samples and their rate (22,050 Hz)."""
    samples, rate, _ = _synthesize_native_events(
        text, voice, rate_wpm=rate_wpm, pitch=pitch, pitch_range=pitch_range
    )
    return samples, rate


def _synthesize_native_events(
    text: str, voice: str, *, rate_wpm: int, pitch: int, pitch_range: int
) -> tuple[np.ndarray, int, list[tuple[int, int, int]]]:
    """:func:`synthesize_native` and its word events: (sample, text_position, length) in text order."""
    if not text.strip():
        raise ValueError("empty text")
    data = text.encode("utf-8") + b"\0"
    with _lock, _fresh_library() as (lib, rate):
        _check(lib.espeak_SetVoiceByName(voice.encode()), f"espeak_SetVoiceByName({voice!r})")
        _check(lib.espeak_SetParameter(_ESPEAK_RATE, int(rate_wpm), 0), "espeak_SetParameter(rate)")
        _check(lib.espeak_SetParameter(_ESPEAK_VOLUME, 100, 0), "espeak_SetParameter(volume)")
        _check(lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0), "espeak_SetParameter(pitch)")
        _check(lib.espeak_SetParameter(_ESPEAK_RANGE, int(pitch_range), 0), "espeak_SetParameter(range)")
        _chunks.clear()
        _word_events.clear()
        _libc.srand(_seed(text, voice, rate_wpm, pitch, pitch_range))
        try:
            _check(
                lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None),
                "espeak_Synth",
            )
            _check(lib.espeak_Synchronize(), "espeak_Synchronize")
            samples = np.concatenate(_chunks) if _chunks else np.zeros(0, np.int16)
            events = list(_word_events)
        finally:
            _chunks.clear()
            _word_events.clear()
        return samples.astype(np.int16, copy=False), rate, events


@lru_cache(maxsize=8)
def _filter_bank(up: int, down: int, half_taps: int) -> tuple[np.ndarray, int]:
    """Kaiser-windowed sinc low-pass, one row of taps per output phase (there are ``up`` phases)."""
    cutoff = 0.94 * min(1.0, up / down)  # as a fraction of the input Nyquist
    half = int(np.ceil(half_taps / cutoff))
    taps = np.arange(-half + 1, half + 1)
    d = (np.arange(up) / up)[:, None] - taps[None, :]  # distance from each tap, in input samples
    window = np.i0(8.6 * np.sqrt(np.clip(1.0 - (d / half) ** 2, 0.0, None))) / np.i0(8.6)
    return (cutoff * np.sinc(cutoff * d) * window).astype(np.float32), half


def resample(
    samples: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE, *, half_taps: int = 24
) -> np.ndarray:
    """Band-limited resampling of mono audio (polyphase windowed sinc) in numpy alone.

    scipy.signal.resample_poly would do as well, but importing scipy.signal costs seconds.
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if from_rate == to_rate or x.size == 0:
        return x.astype(np.float32)
    g = gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    bank, half = _filter_bank(up, down, half_taps)
    offsets = np.arange(-half + 1, half + 1) + half
    xp = np.concatenate([np.zeros(half, np.float32), x.astype(np.float32), np.zeros(half + 1, np.float32)])
    n_out = -(-x.size * up // down)  # ceil
    out = np.empty(n_out, np.float32)
    block = 16384
    for b in range(0, n_out, block):
        n = np.arange(b, min(n_out, b + block))
        base, phase = np.divmod(n * down, up)  # input sample at or before output n, and the fraction past it
        out[b : b + n.size] = np.einsum("ij,ij->i", xp[base[:, None] + offsets], bank[phase])
    return out


def synthesize(
    text: str, voice: str = "en-us", *, rate_wpm: int = 160, pitch: int = 50, pitch_range: int = 50
) -> np.ndarray:
    """Speak ``text`` with an espeak-ng voice ("en-us", "en-gb-x-rp+f3", ...): float32, 16 kHz, mono.

    ``rate_wpm`` is words per minute (80-450), ``pitch`` and ``pitch_range`` 0-100 (50 is the voice's own).
    Leading and trailing silence is kept as espeak-ng makes it; see :func:`trim_silence`.
    """
    native, rate = synthesize_native(text, voice, rate_wpm=rate_wpm, pitch=pitch, pitch_range=pitch_range)
    out = resample(native.astype(np.float32) / 32768.0, rate, SAMPLE_RATE)
    return np.clip(out, -1.0, 1.0)


@dataclass(frozen=True)
class TimedWord:
    """One word of a synthesised text and where espeak-ng starts speaking it, in seconds into the audio."""

    text: str  # the word as written, punctuation at its edges dropped ("Well-known", "won't")
    start_s: float


_TOKEN = re.compile(r"\S+")
_EDGE_PUNCT = re.compile(r"^[^\w]+|[^\w]+$")


def _words_from_events(text: str, events: Sequence[tuple[int, int, int]], rate: int) -> list[TimedWord]:
    """One :class:`TimedWord` per whitespace-separated word of ``text`` that espeak-ng gave an event for.

    espeak-ng's events are not one per written word: "Well-known" gets one event (for "Well", length 4, and
    none for "known"), "won't" one of length 3, a number one per spoken part ("1990": "nineteen", "ninety"),
    "$5" two. So each event is mapped to the written word its text_position falls in, and a word's start is
    its first event. An event marks where the word's first phoneme begins: after any pause before the word
    (a sentence's end, a comma), and at the start of the closure of a word-initial stop ("to", "bread"), the
    silence before the burst counted as part of the word, as in hand-labelled corpora.
    """
    tokens = [(m.start(), m.end(), _EDGE_PUNCT.sub("", m.group())) for m in _TOKEN.finditer(text)]
    words: list[TimedWord] = []
    token_ix, last = 0, -1
    for sample, position, _length in events:
        char = position - 1  # text_position counts characters from 1
        while token_ix < len(tokens) and tokens[token_ix][1] <= char:
            token_ix += 1
        if token_ix == len(tokens):
            break
        start, _, word = tokens[token_ix]
        if char < start or token_ix == last or not word:
            continue  # between words, or a further event inside a word already placed
        words.append(TimedWord(word, sample / rate))
        last = token_ix
    return words


def synthesize_words(
    text: str, voice: str = "en-us", *, rate_wpm: int = 160, pitch: int = 50, pitch_range: int = 50
) -> tuple[np.ndarray, list[TimedWord]]:
    """:func:`synthesize` (the same samples) and the true start of each word in them.

    Starts come from espeak-ng's word events, exact to the native sample (1/22,050 s): the resampling to
    16 kHz keeps time (the filter is symmetric about each output sample), so a native sample ``n`` sits at
    ``n / 22050`` seconds in the 16 kHz audio too. See :func:`_words_from_events` for what a word is.
    """
    native, rate, events = _synthesize_native_events(
        text, voice, rate_wpm=rate_wpm, pitch=pitch, pitch_range=pitch_range
    )
    out = np.clip(resample(native.astype(np.float32) / 32768.0, rate, SAMPLE_RATE), -1.0, 1.0)
    return out, _words_from_events(text, events, rate)


def passage(
    sentences: Sequence[str],
    voice: VoiceSpec | str = "en-us",
    pauses_s: float | Sequence[float] = 1.0,
    *,
    lead_s: float = 0.3,
) -> tuple[np.ndarray, list[TimedWord]]:
    """Speak ``sentences`` one after another in one voice, with ``pauses_s`` of silence between them (one
    value, or one per gap), and ``lead_s`` before the first and after the last.

    Like :func:`conversation`, each sentence is synthesised on its own and trimmed to its voiced region
    (:func:`voiced_bounds`) before it is placed, so a pause is exactly that much silence between the end of
    one sentence's speech and the start of the next. Word starts are shifted to match; a first word whose
    espeak-ng start falls in the trimmed lead-in (the closure of an initial stop, as in "Good") starts where
    the sentence's audio does.
    """
    spec = VoiceSpec(voice) if isinstance(voice, str) else voice
    gaps = [float(pauses_s)] * max(0, len(sentences) - 1) if isinstance(pauses_s, int | float) else list(pauses_s)
    if len(gaps) != max(0, len(sentences) - 1):
        raise ValueError(f"{len(sentences)} sentences need {max(0, len(sentences) - 1)} pauses, not {len(gaps)}")
    lead = np.zeros(round(lead_s * SAMPLE_RATE), np.float32)
    pieces: list[np.ndarray] = [lead]
    words: list[TimedWord] = []
    pos = lead.size
    for i, sentence in enumerate(sentences):
        audio, sentence_words = synthesize_words(
            sentence, spec.name, rate_wpm=spec.rate_wpm, pitch=spec.pitch, pitch_range=spec.pitch_range
        )
        start, end = voiced_bounds(audio)
        if i:
            gap = np.zeros(round(gaps[i - 1] * SAMPLE_RATE), np.float32)
            pieces.append(gap)
            pos += gap.size
        pieces.append(audio[start:end])
        for word in sentence_words:
            offset = min(max(word.start_s * SAMPLE_RATE, start), end) - start
            words.append(TimedWord(word.text, (pos + offset) / SAMPLE_RATE))
        pos += end - start
    pieces.append(lead)
    return np.concatenate(pieces), words


@dataclass(frozen=True)
class VoiceSpec:
    """An espeak-ng voice ("language+variant") with the parameters to speak it with."""

    name: str
    rate_wpm: int = 160
    pitch: int = 50
    pitch_range: int = 50

    def synthesize(self, text: str) -> np.ndarray:
        return synthesize(
            text, self.name, rate_wpm=self.rate_wpm, pitch=self.pitch, pitch_range=self.pitch_range
        )


@dataclass
class Turn:
    """One utterance in a :func:`conversation`: who spoke, what, and its voiced span in seconds."""

    speaker: str
    text: str
    start_s: float
    end_s: float


def voiced_bounds(samples: np.ndarray, *, threshold_db: float = -45.0, frame: int = 160) -> tuple[int, int]:
    """First and one-past-last sample of the voiced region: 10 ms frames within ``threshold_db`` of the
    loudest frame. Returns (0, 0) for silence."""
    x = np.asarray(samples, dtype=np.float32)
    n = x.size // frame
    if n == 0:
        return (0, 0)
    rms = np.sqrt(np.mean(np.square(x[: n * frame].reshape(n, frame)), axis=1))
    peak = float(rms.max())
    if peak <= 0.0:
        return (0, 0)
    active = np.flatnonzero(rms >= peak * 10 ** (threshold_db / 20))
    return int(active[0] * frame), int(min(x.size, (active[-1] + 1) * frame))


def trim_silence(samples: np.ndarray) -> np.ndarray:
    start, end = voiced_bounds(samples)
    return np.asarray(samples, dtype=np.float32)[start:end]


def conversation(
    lines: Sequence[tuple[str, str]],
    voices: Mapping[str, VoiceSpec | str],
    gap_s: float = 0.6,
    *,
    lead_s: float = 0.3,
) -> tuple[np.ndarray, list[Turn]]:
    """Speak ``(speaker, text)`` lines one after another, each in ``voices[speaker]``, with ``gap_s`` of
    silence between them (and ``lead_s`` before the first and after the last).

    Each utterance is trimmed to its voiced region before it is placed, so every :class:`Turn`'s
    ``start_s``/``end_s`` is exactly where its speech begins and ends in the returned 16 kHz audio.
    """
    gap = np.zeros(round(gap_s * SAMPLE_RATE), np.float32)
    lead = np.zeros(round(lead_s * SAMPLE_RATE), np.float32)
    pieces: list[np.ndarray] = [lead]
    turns: list[Turn] = []
    pos = lead.size
    for i, (speaker, text) in enumerate(lines):
        spec = voices[speaker]
        spec = VoiceSpec(spec) if isinstance(spec, str) else spec
        utterance = trim_silence(spec.synthesize(text))
        if i:
            pieces.append(gap)
            pos += gap.size
        pieces.append(utterance)
        turns.append(Turn(speaker, text, pos / SAMPLE_RATE, (pos + utterance.size) / SAMPLE_RATE))
        pos += utterance.size
    pieces.append(lead)
    return np.concatenate(pieces), turns


def to_wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono 16-bit PCM WAV of float samples in [-1, 1]."""
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float32) * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


_PUNCT = re.compile(r"[^\w\s]")


def normalize_text(text: str) -> str:
    """Lowercase, drop apostrophes ("don't" -> "dont"), other punctuation to spaces, collapse spaces."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return " ".join(_PUNCT.sub(" ", text).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER after :func:`normalize_text` on both sides (jiwer). An empty reference is an error."""
    import jiwer

    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        raise ValueError("reference has no words")
    if not hyp:
        return 1.0
    return float(jiwer.wer(ref, hyp))


# --- Fixed material -------------------------------------------------------------------------------------

# About ten seconds at 160 words per minute. Everyday words, American spelling, no numbers, abbreviations,
# contractions or hyphens: nothing a correct transcript could write two ways.
PARAGRAPH = (
    "We walked to the market early this morning. My sister bought fresh bread and a bag of green apples. "
    "Then we sat under the old tree in the garden and talked about the summer."
)

# The clearest voice to Whisper: tiny.en transcribes PARAGRAPH in it at WER 0.03 (plain "en-us": 0.24).
CLEAR_VOICE = VoiceSpec("en-us+klatt")

# Three voiced voices that the embedded diarization pipeline (segmentation-3.0 + CAM++) tells apart reliably
# in CONVERSATION. CAM++ cosine similarity between 6 sentences of 3-4 s per voice: same voice 0.79-0.86 on
# average, across these three 0.05-0.17 on average (highest pair 0.28). tiny.en WER on CONVERSATION spoken
# in each (beam 5): zac 0.14, croak 0.05, marcelo 0.11.
# Chosen by running the pipeline, not by embeddings alone: of 13 voiced triples tried, all as far apart by
# CAM++, 9 failed on the plain rendition (two voices merged, or a turn next to a speaker change given to the
# wrong speaker). This triple gave 3 speakers and every turn boundary within 0.06 s in all 14 renditions
# tried: gaps of 0.4-1.2 s, lead-in of 0.1-1.5 s, and white noise up to 0.01 RMS (about -30 dB); the next
# best came within 0.25 s, and the other two failed 3 of 8.
# Whispered voices ("en-us+caleb", "+whisper") are unfit: the segmentation model misses whole stretches of
# them, and their noise differs with the seed, so a result flips from one rendition to the next.
DISTINCT_VOICES: dict[str, VoiceSpec] = {
    "alex": VoiceSpec("en-us+zac"),
    "ben": VoiceSpec("en-us+croak"),  # low, heavy pitch flutter
    "carl": VoiceSpec("en-us+marcelo"),  # low, strongly shifted formants
}

# Three speakers, nine alternating lines of two to three seconds each.
CONVERSATION: list[tuple[str, str]] = [
    ("alex", "Good morning, did you both sleep well last night?"),
    ("ben", "Not really, the wind kept rattling the window in my room."),
    ("carl", "I slept like a rock, but I could use a cup of coffee."),
    ("alex", "There is a fresh pot in the kitchen, so help yourself."),
    ("ben", "Thank you. Should we still go for a walk by the river today?"),
    ("carl", "I would like that, as long as it does not start to rain."),
    ("alex", "The forecast said the clouds should clear before lunch."),
    ("ben", "Then let us leave after breakfast and bring some sandwiches."),
    ("carl", "Good plan, I will pack the bag while you finish eating."),
]


@lru_cache(maxsize=1)
def _sample_paragraph() -> np.ndarray:
    audio = CLEAR_VOICE.synthesize(PARAGRAPH)
    audio.flags.writeable = False
    return audio


def sample_paragraph() -> np.ndarray:
    """:data:`PARAGRAPH` in :data:`CLEAR_VOICE`, made once per process; a fresh copy each call."""
    return _sample_paragraph().copy()


@lru_cache(maxsize=1)
def _sample_conversation() -> tuple[np.ndarray, tuple[Turn, ...]]:
    audio, turns = conversation(CONVERSATION, DISTINCT_VOICES)
    audio.flags.writeable = False
    return audio, tuple(turns)


def sample_conversation() -> tuple[np.ndarray, list[Turn]]:
    """:data:`CONVERSATION` in :data:`DISTINCT_VOICES` with 0.6 s gaps, made once per process."""
    audio, turns = _sample_conversation()
    return audio.copy(), [Turn(t.speaker, t.text, t.start_s, t.end_s) for t in turns]
