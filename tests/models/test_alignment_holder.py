"""The alignment holder on a tiny random wav2vec2 CTC model: structure and invariants, no Ray, no network.

Random weights give meaningless times, so nothing here checks a time against speech: every input word
must come back, in order, with times inside its segment, monotonic, and a probability in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nltk
import numpy as np
import pytest

from core.audio import SAMPLE_RATE_HZ
from core.errors import ModelUnavailable
from core.transcript import Segment, Word
from deployments.alignment import AlignmentConfig, AlignmentModelHolder, AlignmentModelSpec, whisperx_default_models
from deployments.gpu_memory import TeardownReport
from deployments.nltk_data import ensure_punkt_tab
from deployments.word_times import fill_word_times
from tests.models.tiny_wav2vec2 import build_tiny_wav2vec2

pytestmark = pytest.mark.models

AUDIO_S = 6.0


@pytest.fixture(scope="module")
def nltk_downloads() -> Iterator[list[tuple]]:
    """Every nltk.download attempted while the module runs; each one also fails loudly."""
    calls: list[tuple] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append((args, kwargs))
        raise AssertionError(f"nltk.download{args} attempted: the alignment must not need the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nltk, "download", refuse)
        yield calls


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> AlignmentConfig:
    model_dir = build_tiny_wav2vec2(tmp_path_factory.mktemp("tiny_wav2vec2"))
    return AlignmentConfig(models={"en": str(model_dir), "ja": str(model_dir)},
                           nltk_data_dir=str(tmp_path_factory.mktemp("nltk_data")))


@pytest.fixture(scope="module")
def holder(config: AlignmentConfig, nltk_downloads: list[tuple]) -> Iterator[AlignmentModelHolder]:
    spec = config.spec_for("en")
    assert spec is not None
    holder = AlignmentModelHolder(spec)
    yield holder
    holder.close()


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    """Six seconds of tones and noise at 16 kHz, read-only like an array from Ray's object store."""
    rng = np.random.default_rng(0)
    t = np.arange(int(AUDIO_S * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)
               + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    samples.setflags(write=False)
    return samples


def assert_aligned(given: Segment, got: Segment, expected_texts: list[str]) -> None:
    assert (got.text, got.start_s, got.end_s) == (given.text, given.start_s, given.end_s)
    assert [word.text for word in got.words] == expected_texts
    previous_end_s = given.start_s
    for word in got.words:
        assert given.start_s <= word.start_s <= word.end_s <= given.end_s, word
        assert word.start_s >= previous_end_s, word
        assert word.probability is None or 0.0 <= word.probability <= 1.0, word
        previous_end_s = word.end_s


def test_every_word_comes_back_in_order_inside_its_segment(holder, audio, nltk_downloads):
    segments = [
        Segment(" Hello there, Dr. Smith. How are you?", 0.0, 2.5),
        Segment("Call 911 now,\tplease 3.5%", 2.5, 4.0),
        Segment("it's   ok", 4.0, 6.0),
    ]
    aligned = holder.run(holder.align, audio, segments)

    assert len(aligned) == len(segments)
    for given, got in zip(segments, aligned, strict=True):
        assert_aligned(given, got, given.text.split())
    # Aligned by the model, not interpolated: the CTC path scores every word.
    assert all(word.probability is not None for segment in aligned for word in segment.words)
    assert nltk_downloads == []


def test_words_with_digits_survive(holder, audio):
    (got,) = holder.run(holder.align, audio, [Segment("in 2024 we sold 1,000 units", 1.0, 3.0)])
    assert [word.text for word in got.words] == ["in", "2024", "we", "sold", "1,000", "units"]


def test_empty_text_gives_no_words(holder, audio):
    segments = [Segment("", 0.0, 1.0), Segment("   ", 1.0, 2.0)]
    assert [segment.words for segment in holder.run(holder.align, audio, segments)] == [(), ()]


def test_segment_past_the_audio_keeps_its_words_interpolated(holder, audio):
    given = Segment("nothing to hear here", AUDIO_S + 1.0, AUDIO_S + 3.0)
    (got,) = holder.run(holder.align, audio, [given])
    assert_aligned(given, got, given.text.split())
    assert got.words[0].start_s == given.start_s and got.words[-1].end_s == given.end_s
    assert all(word.probability is None for word in got.words)


async def test_align_from_the_event_loop(holder, audio):
    (got,) = await holder.arun(holder.align, audio, (Segment("one two", 0.5, 1.5),))
    assert [word.text for word in got.words] == ["one", "two"]


def test_language_without_spaces_aligns_characters(config, audio, nltk_downloads):
    spec = config.spec_for("ja")
    assert spec is not None
    japanese = AlignmentModelHolder(spec)
    try:
        given = Segment("こんにちは 世界", 0.0, 2.0)
        (got,) = japanese.run(japanese.align, audio, [given])
        assert_aligned(given, got, list("こんにちは世界"))
    finally:
        japanese.close()
    assert nltk_downloads == []


def test_close_tears_down_and_reports(config):
    spec = config.spec_for("en")
    assert spec is not None
    holder = AlignmentModelHolder(spec)
    report = holder.close()
    assert isinstance(report, TeardownReport)
    assert report.device == "cpu" and report.model.endswith("[en]")
    assert holder.model is None
    assert holder.close() is None


def test_unloadable_model_is_unavailable(tmp_path):
    missing = AlignmentModelSpec(language="en", model=str(tmp_path / "no-model-here"),
                                 nltk_data_dir=str(tmp_path / "nltk_data"))
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        AlignmentModelHolder(missing)
    offline_hub = missing.model_copy(update={"model": "nobody/no-such-wav2vec2"})
    with pytest.raises(ModelUnavailable):
        AlignmentModelHolder(offline_hub)


def test_languages_come_from_the_config():
    config = AlignmentConfig(models={"EN": "/models/en", "de": "org/german-wav2vec2"})
    assert config.languages() == {"en": "/models/en", "de": "org/german-wav2vec2"}
    spec = config.spec_for("de")
    assert spec is not None and (spec.language, spec.model, spec.device) == ("de", "org/german-wav2vec2", "cpu")
    assert config.spec_for("fr") is None

    with_defaults = config.model_copy(update={"use_whisperx_defaults": True}).languages()
    assert with_defaults["en"] == "/models/en"  # configured models win
    assert with_defaults["fr"] == "VOXPOPULI_ASR_BASE_10K_FR"
    assert with_defaults["ja"] == "jonatasgrosman/wav2vec2-large-xlsr-53-japanese"
    assert "xx" not in with_defaults


def test_default_models_match_whisperx():
    from whisperx import alignment

    assert whisperx_default_models() == {**alignment.DEFAULT_ALIGN_MODELS_HF,
                                         **alignment.DEFAULT_ALIGN_MODELS_TORCH}


def test_punkt_tab_is_written_and_found(tmp_path):
    folder = ensure_punkt_tab("de", tmp_path)
    assert folder == tmp_path / "tokenizers" / "punkt_tab" / "german"
    assert ensure_punkt_tab("de", tmp_path) == folder  # idempotent
    assert str(tmp_path) in nltk.data.path
    splitter = nltk.data.load("tokenizers/punkt_tab/german.pickle")  # the call whisperX makes
    assert list(splitter.span_tokenize("Guten Tag. Wie geht es?")) == [(0, 10), (11, 23)]
    assert ensure_punkt_tab("xx", tmp_path).name == "english"  # whisperX's fallback


def test_unaligned_words_are_interpolated_between_neighbours():
    texts = ["aa", "b", "cccc", "dd"]
    times = [(1.0, 1.5, 0.9), None, None, (2.0, 2.4, 0.8)]
    words = fill_word_times(texts, times, 1.0, 3.0)
    assert words[0] == Word("aa", 1.0, 1.5, 0.9)
    # "b" has 1 of the 5 characters in the 0.5 s gap, "cccc" the other 4.
    assert [(w.text, w.start_s, w.end_s, w.probability) for w in words[1:3]] == [
        ("b", 1.5, pytest.approx(1.6), None), ("cccc", pytest.approx(1.6), 2.0, None)]
    assert words[3] == Word("dd", 2.0, 2.4, 0.8)


def test_word_times_are_clamped_into_the_segment_and_ordered():
    words = fill_word_times(["a", "b", "c"], [(0.5, 1.2, 0.5), (1.0, 1.1, 0.5), (2.9, 3.5, 0.5)], 1.0, 3.0)
    assert [(w.start_s, w.end_s) for w in words] == [(1.0, 1.2), (1.2, 1.2), (2.9, 3.0)]
    nothing_aligned = fill_word_times(["ab", "ab"], [None, None], 0.0, 1.0)
    assert [(w.start_s, w.end_s) for w in nothing_aligned] == [(0.0, 0.5), (0.5, 1.0)]


def test_tiny_model_is_deterministic(tmp_path: Path):
    first = build_tiny_wav2vec2(tmp_path / "a") / "model.safetensors"
    second = build_tiny_wav2vec2(tmp_path / "b") / "model.safetensors"
    assert first.read_bytes() == second.read_bytes()
