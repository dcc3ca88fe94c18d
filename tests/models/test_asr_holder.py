"""The ASR holder on real bundled weights, without Ray: text, words, languages, teardown."""

from __future__ import annotations

import numpy as np
import pytest

from core.chunks import chunk_tasks
from core.errors import BadRequest, UnsupportedLanguage
from core.transcript import AsrOptions
from deployments.asr import AsrConfig, AsrHolder
from tests.audio_samples import pyannote_sample
from tests.real_speech import build
from tests.speech import synthesize, word_error_rate

GERMAN = "Guten Morgen. Heute ist das Wetter sehr schön, und wir gehen in den Park."

pytestmark = pytest.mark.models

# Measured on the call against its reference transcript: tiny.en int8 WER 0.160 (whisperX path and
# word-timestamp path alike), base 0.173 (whisperX) and 0.160 (words).
WER_BOUND_TINY = 0.25


@pytest.fixture(scope="module")
def tiny() -> AsrHolder:
    holder = AsrHolder(AsrConfig(model="bundled/tiny.en", cpu_threads=2))
    yield holder
    holder.close()


def test_transcribes_a_real_phone_call(tiny: AsrHolder):
    audio, reference = pyannote_sample()
    result = tiny.run(tiny.transcribe, audio, AsrOptions())
    text = " ".join(s.text for s in result.segments)
    assert result.language == "en"
    assert result.word_source is None and all(not s.words for s in result.segments)
    assert word_error_rate(reference, text) < WER_BOUND_TINY, text
    assert result.duration_s == pytest.approx(30.0, abs=0.01)
    for s in result.segments:
        assert 0 <= s.start_s < s.end_s <= result.duration_s + 0.01


def test_asking_for_words_never_changes_the_text(tiny: AsrHolder):
    # The call, then 7 s of silence, then the call again: a long pause inside the first 30 s of speech
    # is where a second, word-only recognition pass once lost half the words.
    audio, _ = pyannote_sample()
    padded = np.concatenate([audio, np.zeros(7 * 16_000, np.float32), audio])
    for clip in (audio, padded):
        plain = tiny.run(tiny.transcribe, clip, AsrOptions())
        worded = tiny.run(tiny.transcribe, clip, AsrOptions(word_timestamps=True))
        assert [s.text for s in plain.segments] == [s.text for s in worded.segments]
        for segment in worded.segments:
            assert " ".join(w.text for w in segment.words) == " ".join(segment.text.split())


def test_word_timestamps_in_the_same_pass(tiny: AsrHolder):
    audio, reference = pyannote_sample()
    result = tiny.run(tiny.transcribe, audio, AsrOptions(word_timestamps=True))
    assert result.word_source == "whisper"
    words = [w for s in result.segments for w in s.words]
    assert word_error_rate(reference, " ".join(w.text for w in words)) < WER_BOUND_TINY
    starts = [w.start_s for w in words]
    assert starts == sorted(starts), "word times are monotonic"
    for s in result.segments:
        for w in s.words:
            assert s.start_s - 0.02 <= w.start_s <= w.end_s <= s.end_s + 0.02
            assert 0.0 <= w.probability <= 1.0


def test_read_only_audio_from_the_object_store_is_accepted(tiny: AsrHolder):
    audio, _ = pyannote_sample()
    audio = audio[: 16_000 * 12].copy()
    audio.flags.writeable = False
    assert tiny.run(tiny.transcribe, audio, AsrOptions()).segments


def test_silence_gives_no_segments(tiny: AsrHolder):
    result = tiny.run(tiny.transcribe, np.zeros(16_000 * 3, dtype=np.float32), AsrOptions())
    assert result.segments == ()


def test_english_only_model_refuses_other_languages_and_translation(tiny: AsrHolder):
    audio = np.zeros(16_000, dtype=np.float32)
    with pytest.raises(UnsupportedLanguage, match="English only"):
        tiny.run(tiny.transcribe, audio, AsrOptions(language="de"))
    with pytest.raises(BadRequest, match="cannot translate"):
        tiny.run(tiny.transcribe, audio, AsrOptions(task="translate"))


def test_unchanged_identity_reconfigures_without_reload(tiny: AsrHolder):
    model_before = tiny.model
    report = tiny.reconfigure(tiny.config.model_copy(update={"beam_size": 2, "batch_size": 4}))
    assert report is None and tiny.model is model_before and tiny.config.beam_size == 2


def test_multilingual_base_detects_language_and_tears_down():
    audio, reference = pyannote_sample()
    holder = AsrHolder(AsrConfig(model="bundled/base", cpu_threads=2))
    try:
        assert holder.run(lambda: holder.multilingual)
        result = holder.run(holder.transcribe, audio, AsrOptions())
        assert result.language == "en"
        assert word_error_rate(reference, " ".join(s.text for s in result.segments)) < WER_BOUND_TINY
        translated = holder.run(holder.transcribe, audio[: 16_000 * 10], AsrOptions(task="translate"))
        assert translated.segments, "a multilingual model translates"
    finally:
        report = holder.close()
    assert report is not None and report.model == "bundled/base"
    assert report.loaded.rss_bytes > report.baseline.rss_bytes
    assert holder.model is None


def _tasks(holder: AsrHolder, audio: np.ndarray, options: AsrOptions) -> list:
    plan = holder.run(holder.plan, audio, options, holder.config.model)
    return chunk_tasks(plan, audio, task=options.task, prompt=options.prompt, temperature=options.temperature,
                       word_timestamps=options.word_timestamps)


def _same(a, b) -> bool:
    return (a.tokens, a.text, a.words, a.start_s, a.end_s) == (b.tokens, b.text, b.words, b.start_s, b.end_s)


def test_a_chunk_decodes_the_same_alone_and_among_other_requests_chunks(tiny: AsrHolder):
    # Chunks of two real recordings with words, a third request's with a prompt and one sampled at a
    # temperature (another search: its own batch): each beam-search chunk gives the same tokens, text
    # and word times alone as in a shuffled batch with the others.
    call, _ = pyannote_sample()
    pause = np.array(build("pause_in_first_window").audio)
    mine = _tasks(tiny, call, AsrOptions(word_timestamps=True)) + _tasks(tiny, pause, AsrOptions(word_timestamps=True))
    others = _tasks(tiny, call[: 16_000 * 12], AsrOptions(prompt="Diane and Sheila on the phone.")) + \
        _tasks(tiny, call[16_000 * 12:], AsrOptions(temperature=0.4))
    alone = [tiny.run(tiny.decode, [task])[0] for task in mine]
    mixed = mine + others
    order = list(np.random.default_rng(0).permutation(len(mixed)))
    decoded = tiny.run(tiny.decode, [mixed[i] for i in order])
    by_task = {i: item for i, item in zip(order, decoded, strict=True)}
    assert len(mine) >= 4 and all(item.words for item in alone)
    for i, single in enumerate(alone):
        assert _same(single, by_task[i]), f"chunk {mine[i].chunk} changed in company"
    assert all(by_task[len(mine) + i].text.strip() for i in range(len(others)))


def test_languages_and_tasks_mixed_in_one_batch_decode_as_they_do_alone():
    # base is multilingual: English and German chunks with words, and a translation, in one batch. Words
    # are aligned per language and task (CTranslate2 aligns a batch under one start sequence).
    english, _ = pyannote_sample()
    german = synthesize(GERMAN, "de")
    holder = AsrHolder(AsrConfig(model="bundled/base", cpu_threads=2))
    try:
        tasks = (_tasks(holder, english[: 16_000 * 15], AsrOptions(word_timestamps=True))
                 + _tasks(holder, german, AsrOptions(word_timestamps=True))
                 + _tasks(holder, german, AsrOptions(task="translate")))
        assert {(t.language, t.task) for t in tasks} == {("en", "transcribe"), ("de", "transcribe"),
                                                          ("de", "translate")}
        alone = [holder.run(holder.decode, [task])[0] for task in tasks]
        together = holder.run(holder.decode, tasks)
    finally:
        holder.close()
    for task, single, batched in zip(tasks, alone, together, strict=True):
        assert _same(single, batched), f"{task.language} {task.task} chunk changed in company"
    assert together[1].words and together[1].text != together[2].text, "German words; English translation"
