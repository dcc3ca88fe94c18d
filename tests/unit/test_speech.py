"""Fast checks of the synthetic-speech helpers in tests/speech.py (espeak-ng through ctypes, no model)."""

import ctypes
import io
import itertools
import threading
import wave

import numpy as np
import pytest

from tests import speech

SHORT = "We walked to the market early this morning."


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def test_synthesize_gives_16khz_float_speech():
    native, native_rate = speech.synthesize_native(SHORT)
    assert native_rate == 22_050 and native.dtype == np.int16
    # Same duration as espeak-ng's own output, at 16 kHz. (Two calls differ by a few ms: espeak-ng's
    # waveform generator carries phase from one utterance into the next.)
    assert speech.resample(native / 32768.0, native_rate).size == -(-native.size * 16_000 // native_rate)
    audio = speech.synthesize(SHORT)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - native.size * 16_000 / native_rate) < 0.05 * speech.SAMPLE_RATE
    assert 1.5 < audio.size / speech.SAMPLE_RATE < 6.0
    assert np.all(np.isfinite(audio)) and np.max(np.abs(audio)) <= 1.0
    assert _rms(audio) > 0.02


def test_synthesize_rejects_empty_text_and_unknown_voice():
    with pytest.raises(ValueError):
        speech.synthesize("   ")
    with pytest.raises(RuntimeError):
        speech.synthesize(SHORT, "no-such-voice")


def test_rate_changes_duration():
    slow = speech.synthesize(SHORT, rate_wpm=120)
    fast = speech.synthesize(SHORT, rate_wpm=240)
    assert slow.size > 1.5 * fast.size


def test_resample_keeps_frequency():
    t = np.arange(22_050) / 22_050
    out = speech.resample(np.sin(2 * np.pi * 1000 * t), 22_050, 16_000)
    assert out.size == 16_000
    expected = np.sin(2 * np.pi * 1000 * np.arange(out.size) / 16_000)
    assert np.max(np.abs(out[200:-200] - expected[200:-200])) < 1e-3
    # Above the new Nyquist frequency: filtered out, not folded back.
    aliased = speech.resample(np.sin(2 * np.pi * 9000 * t), 22_050, 16_000)
    assert _rms(aliased[200:-200]) < 1e-3


def test_voiced_bounds_trim_silence():
    voiced = speech.synthesize(SHORT)
    padded = np.concatenate([np.zeros(8000, np.float32), voiced, np.zeros(4000, np.float32)])
    start, end = speech.voiced_bounds(padded)
    assert 8000 <= start < 8000 + 1600 and padded.size - 4000 - 1600 < end <= padded.size - 4000
    assert speech.voiced_bounds(np.zeros(1000, np.float32)) == (0, 0)


def test_conversation_turns_are_exact_monotonic_and_disjoint():
    lines = speech.CONVERSATION[:4]
    audio, turns = speech.conversation(lines, speech.DISTINCT_VOICES, gap_s=0.5)
    sr = speech.SAMPLE_RATE
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert [(t.speaker, t.text) for t in turns] == list(lines)
    for turn in turns:
        assert 0.0 <= turn.start_s < turn.end_s <= audio.size / sr
    for before, after in itertools.pairwise(turns):
        assert after.start_s - before.end_s == pytest.approx(0.5, abs=1e-3)
    # Silence between turns, speech right at each turn's edges.
    edge = sr // 50  # 20 ms
    for turn in turns:
        a, b = round(turn.start_s * sr), round(turn.end_s * sr)
        assert _rms(audio[a : a + edge]) > 1e-3 and _rms(audio[b - edge : b]) > 1e-3
        assert not np.any(audio[max(0, a - edge) : a]) and not np.any(audio[b : b + edge])


def test_sample_conversation_has_three_speakers():
    lines = speech.CONVERSATION
    assert 8 <= len(lines) <= 10
    assert len({speaker for speaker, _ in lines}) == 3
    assert all(speaker in speech.DISTINCT_VOICES for speaker, _ in lines)
    assert all(a != b for (a, _), (b, _) in itertools.pairwise(lines))


def test_distinct_voices_all_speak():
    assert len(speech.DISTINCT_VOICES) >= 3
    assert len({v.name for v in speech.DISTINCT_VOICES.values()}) == len(speech.DISTINCT_VOICES)
    for spec in speech.DISTINCT_VOICES.values():
        assert _rms(spec.synthesize("Thank you very much.")) > 0.01


def test_wav_bytes_parse_back():
    audio = speech.synthesize(SHORT)
    data = speech.to_wav_bytes(audio)
    with wave.open(io.BytesIO(data), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16_000)
        assert w.getnframes() == audio.size
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert np.max(np.abs(pcm / 32767.0 - audio)) < 1e-4


def test_word_error_rate():
    assert speech.word_error_rate(speech.PARAGRAPH, speech.PARAGRAPH) == 0.0
    assert speech.word_error_rate("Hello, World!", "hello world") == 0.0
    assert speech.word_error_rate("the cat sat down", "the cat sat up") == pytest.approx(0.25)
    assert speech.word_error_rate("the cat sat down", "") == 1.0
    with pytest.raises(ValueError):
        speech.word_error_rate("  ...  ", "anything")


def test_paragraph_is_about_ten_seconds():
    audio = speech.sample_paragraph()
    assert 7.0 < audio.size / speech.SAMPLE_RATE < 14.0


def test_concurrent_callers_are_serialised():
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = speech.synthesize(f"Number {('one', 'two', 'three', 'four')[i]} is done.")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2, 3]
    assert all(_rms(a) > 0.02 for a in results.values())


def test_an_utterance_does_not_depend_on_what_ran_before():
    # espeak-ng keeps pitch-flutter state between utterances and draws breath noise from the C library's
    # rand(), which other libraries in a test process also use: neither may change the test material.
    text, voices = "Thank you very much.", list(speech.DISTINCT_VOICES.values())
    first = [v.synthesize(text) for v in voices]
    ctypes.CDLL(None).srand(12345)
    speech.synthesize("Something else entirely, in a breathy voice.", "en-us+whisper")
    again = [v.synthesize(text) for v in reversed(voices)][::-1]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


TWO_SENTENCES = "We walked to the market early this morning. My sister bought fresh bread and apples."


def test_synthesize_words_gives_the_same_audio_and_one_start_per_word():
    audio, words = speech.synthesize_words(TWO_SENTENCES, "en-us+klatt")
    np.testing.assert_array_equal(audio, speech.synthesize(TWO_SENTENCES, "en-us+klatt"))
    assert [w.text for w in words] == TWO_SENTENCES.replace(".", "").split()
    starts = [w.start_s for w in words]
    assert starts[0] >= 0.0 and all(a < b for a, b in itertools.pairwise(starts))
    assert starts[-1] < audio.size / speech.SAMPLE_RATE - 0.1  # "apples" takes time to say
    # Words are 0.1-0.7 s apart at 160 words per minute, beyond a sentence's end.
    gaps = np.diff(starts)
    assert 0.05 < np.median(gaps) < 0.6


def test_word_starts_are_where_speech_resumes_after_a_pause():
    # espeak-ng pauses after "morning."; "My" must start where sound comes back, not where the pause starts.
    audio, words = speech.synthesize_words(TWO_SENTENCES)
    sr, frame = speech.SAMPLE_RATE, speech.SAMPLE_RATE // 200  # 5 ms
    my = next(w for w in words if w.text == "My")
    n = audio.size // frame
    loud = np.sqrt(np.mean(np.square(audio[: n * frame].reshape(n, frame)), axis=1)) > 1e-3
    before = round(my.start_s * sr) // frame
    silent = np.flatnonzero(~loud[:before])
    assert silent.size and before - silent[-1] <= 4  # the pause ends within 20 ms of "My"
    assert np.all(~loud[before - 30 : before - 4])  # at least 130 ms of pause right before it
    assert loud[before : before + 10].mean() > 0.8  # and speech right after it


def test_word_texts_follow_the_written_words():
    # espeak-ng gives "Well-known" one event and "1990" two, and cuts "won't" to "won": one word each here.
    text = "The café served well-known dishes in 1990, but Dr. Smith won't go."
    audio, words = speech.synthesize_words(text)
    assert [w.text for w in words] == ["The", "café", "served", "well-known", "dishes", "in", "1990", "but",
                                       "Dr", "Smith", "won't", "go"]
    assert all(a.start_s < b.start_s for a, b in itertools.pairwise(words))
    assert words[-1].start_s < audio.size / speech.SAMPLE_RATE


def test_passage_places_pauses_and_shifts_word_starts_exactly():
    sentences = ["Good morning to you.", "The river is calm today.", "Then we sat down."]
    short, short_words = speech.passage(sentences, "en-us", [1.0, 1.0])
    long, long_words = speech.passage(sentences, "en-us", [1.0, 2.5])
    sr = speech.SAMPLE_RATE
    assert long.size - short.size == round(1.5 * sr)
    assert [w.text for w in long_words] == " ".join(sentences).replace(".", "").split()
    third = len(sentences[0].split()) + len(sentences[1].split())
    for a, b in zip(short_words[:third], long_words[:third], strict=True):
        assert a.start_s == b.start_s
    for a, b in zip(short_words[third:], long_words[third:], strict=True):
        assert b.start_s - a.start_s == pytest.approx(1.5, abs=1e-9)
    starts = [w.start_s for w in long_words]
    assert all(a < b for a, b in itertools.pairwise(starts))
    assert starts[0] == pytest.approx(0.3, abs=0.05) and starts[-1] < long.size / sr - 0.3
    # The 2.5 s pause is silence, and "Then" starts right at its end.
    then = round(starts[third] * sr)
    assert not np.any(long[then - round(2.5 * sr) + 1 : then - sr // 50])
    assert starts[third] - starts[third - 1] > 2.5
    with pytest.raises(ValueError):
        speech.passage(sentences, "en-us", [1.0])


def test_passage_sentence_audio_is_each_sentence_trimmed():
    sentences = ["Thank you very much.", "See you soon."]
    audio, _ = speech.passage(sentences, speech.CLEAR_VOICE, 0.7, lead_s=0.2)
    parts = [speech.trim_silence(speech.CLEAR_VOICE.synthesize(s)) for s in sentences]
    sr = speech.SAMPLE_RATE
    expected = np.concatenate([np.zeros(round(0.2 * sr), np.float32), parts[0],
                               np.zeros(round(0.7 * sr), np.float32), parts[1],
                               np.zeros(round(0.2 * sr), np.float32)])
    np.testing.assert_array_equal(audio, expected)
