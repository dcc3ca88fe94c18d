"""The request flow across deployments, with fake handles: what runs, in which order, with what."""

from __future__ import annotations

import numpy as np
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from core.errors import BadRequest, ModelUnavailable
from core.transcript import AsrResult, Segment, SpeakerTurn, Word
from serve_app.pipeline import TranscriptionPipeline
from serve_app.schemas import TranscriptionRequest
from tests.unit.fakes import FakeHandle, failing_first

AUDIO = np.zeros(16_000 * 4, dtype=np.float32)
SEGMENTS = (Segment("hello there", 0.0, 1.0), Segment("general kenobi", 2.0, 3.0))
WORDS = (
    Segment("hello there", 0.0, 1.0, words=(Word("hello", 0.0, 0.4), Word("there", 0.5, 1.0))),
    Segment("general kenobi", 2.0, 3.0, words=(Word("general", 2.0, 2.5), Word("kenobi", 2.6, 3.0))),
)
TURNS = [SpeakerTurn("SPEAKER_00", 0.0, 1.2), SpeakerTurn("SPEAKER_01", 1.8, 3.2)]


def asr_fn(audio, options):
    if options.word_timestamps:
        return AsrResult(language=options.language or "en", segments=WORDS, duration_s=4.0, word_source="whisper")
    return AsrResult(language=options.language or "en", segments=SEGMENTS, duration_s=4.0)


ALIGNED = tuple(s.with_words(tuple(Word(w.text, w.start_s + 0.01, w.end_s) for w in s.words)) for s in WORDS)


def make(alignment_models=None, *, alignment_fn=None, diarization=True):
    """A pipeline over fake handles; the fake alignment deployment covers `alignment_models`' languages
    (it alone decides, as the real one does from its deployed config)."""
    covered = set(alignment_models or {})

    def align(audio, segments, language):
        assert all(s.words for s in segments), "Whisper's words arrive with the segments"
        return list(ALIGNED) if language in covered else None

    log: list[str] = []
    asr = FakeHandle(log, transcribe=asr_fn)
    alignment = FakeHandle(log, align=alignment_fn or align)
    diar = FakeHandle(log, diarize=lambda audio, options: TURNS) if diarization else None
    pipeline = TranscriptionPipeline(asr, alignment, diar, put=lambda samples: ("ref", id(samples)))
    return pipeline, asr, alignment, diar, log


def request(**fields) -> TranscriptionRequest:
    return TranscriptionRequest.model_validate({"model": "whisper-1", **fields})


async def test_plain_json_runs_asr_only_without_words():
    pipeline, asr, alignment, diar, _ = make({"en": "some/model"})
    transcript = await pipeline.run(AUDIO, request())
    assert [c[0] for c in asr.calls] == ["transcribe"]
    assert asr.calls[0][1][1].word_timestamps is False
    assert alignment.calls == [] and diar.calls == []
    assert transcript.text == "hello there general kenobi"
    assert transcript.word_source is None


async def test_audio_is_put_once_and_the_same_reference_reaches_every_deployment():
    pipeline, asr, alignment, diar, _ = make({"en": "some/model"})
    await pipeline.run(AUDIO, request(diarize=True, response_format="srt"))
    refs = {asr.calls[0][1][0], alignment.calls[0][1][0], diar.calls[0][1][0]}
    assert refs == {("ref", id(AUDIO))}


async def test_diarization_is_sent_before_asr_is_awaited():
    pipeline, _asr, _, _diar, log = make()
    await pipeline.run(AUDIO, request(diarize=True))
    assert log.index("diarize:sent") < log.index("transcribe:done"), log


async def test_words_come_from_alignment_when_a_model_covers_the_language():
    pipeline, asr, alignment, _, _ = make({"en": "some/model"})
    transcript = await pipeline.run(AUDIO, request(language="en", response_format="verbose_json",
                                                   timestamp_granularities=["word"]))
    assert asr.calls[0][1][1].word_timestamps is True, "Whisper's words come from the one decode"
    assert alignment.calls[0][1][2] == "en", "alignment is asked in the detected language"
    assert transcript.word_source == "alignment"
    assert [w.text for w in transcript.words] == ["hello", "there", "general", "kenobi"]
    assert transcript.words[0].start_s == pytest.approx(0.01), "the alignment deployment's times are used"
    assert len(asr.calls) == 1


async def test_words_come_from_whisper_in_one_pass_when_no_model_covers_the_language():
    pipeline, asr, alignment, _, _ = make({})
    transcript = await pipeline.run(AUDIO, request(language="en", response_format="srt"))
    assert len(asr.calls) == 1 and asr.calls[0][1][1].word_timestamps is True
    assert len(alignment.calls) == 1, "the alignment deployment, not the ingress, says what it covers"
    assert transcript.word_source == "whisper"
    assert transcript.words[0].start_s == 0.0


async def test_unloadable_alignment_model_falls_back_to_whisper_words():
    def unavailable(audio, segments, language):
        raise ModelUnavailable("cannot load")

    pipeline, asr, alignment, _, _ = make({"en": "some/model"}, alignment_fn=unavailable)
    transcript = await pipeline.run(AUDIO, request(language="en", response_format="srt"))
    assert len(alignment.calls) == 1
    assert len(asr.calls) == 1, "no second recognition pass: Whisper's words came with the text"
    assert transcript.word_source == "whisper" and len(transcript.words) == 4


async def test_other_alignment_errors_are_not_swallowed():
    def broken(audio, segments, language):
        raise RuntimeError("bug")

    pipeline, *_ = make({"en": "some/model"}, alignment_fn=broken)
    with pytest.raises(RuntimeError, match="bug"):
        await pipeline.run(AUDIO, request(language="en", response_format="srt"))


async def test_alignment_disabled_per_request_uses_whisper_words():
    pipeline, _asr, alignment, _, _ = make({"en": "some/model"})
    transcript = await pipeline.run(AUDIO, request(language="en", response_format="srt", align=False))
    assert alignment.calls == [] and transcript.word_source == "whisper"


async def test_translation_never_aligns():
    pipeline, asr, alignment, _, _ = make({"en": "some/model"})
    transcript = await pipeline.run(AUDIO, request(task="translate", response_format="srt"))
    assert alignment.calls == [] and asr.calls[0][1][1].task == "translate"
    assert transcript.task == "translate"


async def test_speakers_are_assigned_to_words_and_segments():
    pipeline, *_ = make()
    transcript = await pipeline.run(AUDIO, request(diarize=True, num_speakers=2))
    assert [s.speaker for s in transcript.segments] == ["SPEAKER_00", "SPEAKER_01"]
    assert {w.speaker for w in transcript.segments[1].words} == {"SPEAKER_01"}
    assert transcript.speakers == ["SPEAKER_00", "SPEAKER_01"]


async def test_speaker_hints_are_passed_through():
    pipeline, _, _, diar, _ = make()
    await pipeline.run(AUDIO, request(min_speakers=2, max_speakers=3))
    options = diar.calls[0][1][1]
    assert (options.num_speakers, options.min_speakers, options.max_speakers) == (None, 2, 3)


async def test_diarize_without_a_diarization_deployment_is_a_bad_request():
    pipeline, asr, *_ = make(diarization=False)
    with pytest.raises(BadRequest, match="diarization is not enabled"):
        await pipeline.run(AUDIO, request(diarize=True))
    assert asr.calls == []


async def test_asr_failure_cancels_diarization():
    log: list[str] = []

    def failing(audio, options):
        raise ModelUnavailable("asr down")

    asr = FakeHandle(log, transcribe=failing)
    diar = FakeHandle(log, diarize=lambda audio, options: TURNS)
    pipeline = TranscriptionPipeline(asr, None, diar, put=lambda s: s)
    with pytest.raises(ModelUnavailable):
        await pipeline.run(AUDIO, request(diarize=True))
    assert diar.responses[0].cancelled


async def test_aliases_are_not_sent_to_asr_but_real_model_ids_are():
    log: list[str] = []
    asr = FakeHandle(log, transcribe=asr_fn)
    pipeline = TranscriptionPipeline(asr, None, None, put=lambda s: s,
                                     model_aliases=frozenset({"whisper-1"}))
    await pipeline.run(AUDIO, request())
    await pipeline.run(AUDIO, request(model="base"))
    await pipeline.run(AUDIO, TranscriptionRequest.model_validate({}))
    assert [c[1][1].model for c in asr.calls] == [None, "base", None]


async def test_the_text_does_not_depend_on_the_response_format():
    pipeline, *_ = make({"en": "some/model"})
    texts = {fmt: (await pipeline.run(AUDIO, request(response_format=fmt))).text
             for fmt in ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")}
    assert set(texts.values()) == {"hello there general kenobi"}, texts


# --- a model replica lost mid-call -----------------------------------------------------------------

LOST = {"died": ActorDiedError, "unavailable": lambda: ActorUnavailableError("connection lost", None)}


def lose_replica(method: str, times: int, error=ActorDiedError):
    """A pipeline whose `method` ("transcribe", "align" or "diarize") is lost with its replica on its first
    `times` calls, and the handles."""
    log: list[str] = []

    def align(audio, segments, language):
        return list(ALIGNED)

    fns = {"transcribe": asr_fn, "align": align, "diarize": lambda audio, options: TURNS}
    fns[method] = failing_first(times, error, fns[method])
    asr = FakeHandle(log, transcribe=fns["transcribe"])
    alignment = FakeHandle(log, align=fns["align"])
    diar = FakeHandle(log, diarize=fns["diarize"])
    return TranscriptionPipeline(asr, alignment, diar, put=lambda s: ("ref", id(s))), asr, alignment, diar


@pytest.mark.parametrize("error", LOST.values(), ids=LOST.keys())
@pytest.mark.parametrize("method", ["transcribe", "align", "diarize"])
async def test_a_call_lost_with_its_replica_is_sent_once_more_with_the_same_arguments(method, error):
    pipeline, *handles = lose_replica(method, 1, error)
    transcript = await pipeline.run(AUDIO, request(diarize=True, response_format="srt"))
    assert transcript.word_source == "alignment" and transcript.speakers == ["SPEAKER_00", "SPEAKER_01"]
    calls: dict[str, list[tuple]] = {}
    for handle in handles:
        for name, args in handle.calls:
            calls.setdefault(name, []).append(args)
    assert len(calls[method]) == 2 and calls[method][0] == calls[method][1]
    assert all(len(sent) == 1 for name, sent in calls.items() if name != method)


@pytest.mark.parametrize("method", ["transcribe", "diarize"])
async def test_a_call_lost_twice_is_a_503_that_says_to_retry(method):
    pipeline, *handles = lose_replica(method, 2)
    with pytest.raises(ModelUnavailable, match=r"a model replica failed.*retry") as error:
        await pipeline.run(AUDIO, request(diarize=True))
    assert isinstance(error.value.__cause__, ActorDiedError)
    assert sum(name == method for handle in handles for name, _ in handle.calls) == 2, "one retry, not more"


async def test_alignment_lost_twice_falls_back_to_whisper_words():
    pipeline, _, alignment, _ = lose_replica("align", 2)
    transcript = await pipeline.run(AUDIO, request(response_format="srt"))
    assert len(alignment.calls) == 2 and transcript.word_source == "whisper"


@pytest.mark.parametrize("error", [lambda: BadRequest("English only", param="language"),
                                   lambda: RuntimeError("bug")], ids=["service-error", "bug"])
async def test_an_error_the_replica_raised_is_not_retried(error):
    pipeline, asr, _, _ = lose_replica("transcribe", 1, error)
    with pytest.raises((BadRequest, RuntimeError)):
        await pipeline.run(AUDIO, request())
    assert len(asr.calls) == 1
