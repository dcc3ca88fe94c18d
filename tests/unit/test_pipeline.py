"""The request flow across deployments, with fake handles: what runs, in which order, with what."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from core.chunks import BACKGROUND, INTERACTIVE, AsrPlan, DecodedChunk, SpeechChunk
from core.errors import BadRequest, ModelUnavailable
from core.transcript import AsrResult, Segment, SpeakerTurn, Word
from serve_app.pipeline import Stages, TranscriptionPipeline
from serve_app.progress import Progress
from serve_app.schemas import TranscriptionRequest
from tests.unit.fakes import FakeHandle, failing_first

AUDIO = np.zeros(16_000 * 4, dtype=np.float32)
SEGMENTS = (Segment("hello there", 0.0, 1.0), Segment("general kenobi", 2.0, 3.0))
WORDS = (
    Segment("hello there", 0.0, 1.0, words=(Word("hello", 0.0, 0.4), Word("there", 0.5, 1.0))),
    Segment("general kenobi", 2.0, 3.0, words=(Word("general", 2.0, 2.5), Word("kenobi", 2.6, 3.0))),
)
TURNS = [SpeakerTurn("SPEAKER_00", 0.0, 1.2), SpeakerTurn("SPEAKER_01", 1.8, 3.2)]


CHUNKS = (SpeechChunk(0.0, 1.0), SpeechChunk(2.0, 3.0))


def plan_fn(audio, options):
    return AsrPlan(model=options.model or "tiny.en", language=options.language or "en", chunks=CHUNKS,
                   duration_s=4.0)


def decode_fn(task):
    segment = (WORDS if task.word_timestamps else SEGMENTS)[CHUNKS.index(task.chunk)]
    return DecodedChunk(task.chunk, segment.text, (), 0.0, words=segment.words, start_s=segment.start_s,
                        end_s=segment.end_s)


def asr_handle(log, plan=plan_fn, decode_chunk=decode_fn):
    return FakeHandle(log, plan=plan, decode_chunk=decode_chunk)


def plan_calls(asr):
    return [args for name, args in asr.calls if name == "plan"]


def decoded_tasks(asr):
    return [args[0] for name, args in asr.calls if name == "decode_chunk"]


ALIGNED = tuple(s.with_words(tuple(Word(w.text, w.start_s + 0.01, w.end_s) for w in s.words)) for s in WORDS)


def make(alignment_models=None, *, alignment_fn=None, diarization=True):
    """A pipeline over fake handles; the fake alignment deployment covers `alignment_models`' languages
    (it alone decides, as the real one does from its deployed config)."""
    covered = set(alignment_models or {})

    def align(audio, segments, language):
        assert all(s.words for s in segments), "Whisper's words arrive with the segments"
        return list(ALIGNED) if language in covered else None

    log: list[str] = []
    asr = asr_handle(log)
    alignment = FakeHandle(log, align=alignment_fn or align)
    diar = FakeHandle(log, diarize=lambda audio, options: TURNS) if diarization else None
    pipeline = TranscriptionPipeline(asr, alignment, diar, put=lambda samples: ("ref", id(samples)))
    return pipeline, asr, alignment, diar, log


def request(**fields) -> TranscriptionRequest:
    return TranscriptionRequest.model_validate({"model": "whisper-1", **fields})


async def test_plain_json_runs_asr_only_without_words():
    pipeline, asr, alignment, diar, _ = make({"en": "some/model"})
    transcript = await pipeline.run(AUDIO, request())
    assert [c[0] for c in asr.calls] == ["plan", "decode_chunk", "decode_chunk"]
    assert plan_calls(asr)[0][1].word_timestamps is False
    assert [t.word_timestamps for t in decoded_tasks(asr)] == [False, False]
    assert alignment.calls == [] and diar.calls == []
    assert transcript.text == "hello there general kenobi"
    assert transcript.word_source is None


async def test_audio_is_put_once_and_the_same_reference_reaches_every_deployment():
    pipeline, asr, alignment, diar, _ = make({"en": "some/model"})
    await pipeline.run(AUDIO, request(diarize=True, response_format="srt"))
    refs = {plan_calls(asr)[0][0], alignment.calls[0][1][0], diar.calls[0][1][0]}
    assert refs == {("ref", id(AUDIO))}


async def test_diarization_is_sent_before_asr_is_awaited():
    pipeline, _asr, _, _diar, log = make()
    await pipeline.run(AUDIO, request(diarize=True))
    assert log.index("diarize:sent") < log.index("plan:done"), log


async def test_words_come_from_alignment_when_a_model_covers_the_language():
    pipeline, asr, alignment, _, _ = make({"en": "some/model"})
    transcript = await pipeline.run(AUDIO, request(language="en", response_format="verbose_json",
                                                   timestamp_granularities=["word"]))
    assert all(t.word_timestamps for t in decoded_tasks(asr)), "Whisper's words come from the one decode"
    assert alignment.calls[0][1][2] == "en", "alignment is asked in the detected language"
    assert transcript.word_source == "alignment"
    assert [w.text for w in transcript.words] == ["hello", "there", "general", "kenobi"]
    assert transcript.words[0].start_s == pytest.approx(0.01), "the alignment deployment's times are used"
    assert len(decoded_tasks(asr)) == len(CHUNKS), "each chunk decoded once"


async def test_words_come_from_whisper_in_one_pass_when_no_model_covers_the_language():
    pipeline, asr, alignment, _, _ = make({})
    transcript = await pipeline.run(AUDIO, request(language="en", response_format="srt"))
    assert len(decoded_tasks(asr)) == len(CHUNKS) and all(t.word_timestamps for t in decoded_tasks(asr))
    assert len(alignment.calls) == 1, "the alignment deployment, not the ingress, says what it covers"
    assert transcript.word_source == "whisper"
    assert transcript.words[0].start_s == 0.0


async def test_unloadable_alignment_model_falls_back_to_whisper_words():
    def unavailable(audio, segments, language):
        raise ModelUnavailable("cannot load")

    pipeline, asr, alignment, _, _ = make({"en": "some/model"}, alignment_fn=unavailable)
    transcript = await pipeline.run(AUDIO, request(language="en", response_format="srt"))
    assert len(alignment.calls) == 1
    assert len(decoded_tasks(asr)) == len(CHUNKS), "no second recognition pass: words came with the text"
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
    assert alignment.calls == [] and {t.task for t in decoded_tasks(asr)} == {"translate"}
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

    asr = asr_handle(log, plan=failing)
    diar = FakeHandle(log, diarize=lambda audio, options: TURNS)
    pipeline = TranscriptionPipeline(asr, None, diar, put=lambda s: s)
    with pytest.raises(ModelUnavailable):
        await pipeline.run(AUDIO, request(diarize=True))
    assert diar.responses[0].cancelled


async def test_aliases_are_not_sent_to_asr_but_real_model_ids_are():
    log: list[str] = []
    asr = asr_handle(log)
    pipeline = TranscriptionPipeline(asr, None, None, put=lambda s: s,
                                     model_aliases=frozenset({"whisper-1"}))
    await pipeline.run(AUDIO, request())
    await pipeline.run(AUDIO, request(model="base"))
    await pipeline.run(AUDIO, TranscriptionRequest.model_validate({}))
    assert [args[1].model for args in plan_calls(asr)] == [None, "base", None]
    assert [t.model for t in decoded_tasks(asr)] == ["tiny.en"] * 2 + ["base"] * 2 + ["tiny.en"] * 2, \
        "chunks go to the model the plan chose"


async def test_the_text_does_not_depend_on_the_response_format():
    pipeline, *_ = make({"en": "some/model"})
    texts = {fmt: (await pipeline.run(AUDIO, request(response_format=fmt))).text
             for fmt in ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")}
    assert set(texts.values()) == {"hello there general kenobi"}, texts


# --- a model replica lost mid-call -----------------------------------------------------------------

LOST = {"died": ActorDiedError, "unavailable": lambda: ActorUnavailableError("connection lost", None)}


def lose_replica(method: str, times: int, error=ActorDiedError):
    """A pipeline whose `method` ("plan", "decode_chunk", "align" or "diarize") is lost with its replica on its first
    `times` calls, and the handles."""
    log: list[str] = []

    def align(audio, segments, language):
        return list(ALIGNED)

    fns: dict[str, Any] = {"plan": plan_fn, "decode_chunk": decode_fn, "align": align,
                           "diarize": lambda audio, options: TURNS}
    fns[method] = failing_first(times, error, fns[method])
    asr = asr_handle(log, plan=fns["plan"], decode_chunk=fns["decode_chunk"])
    alignment = FakeHandle(log, align=fns["align"])
    diar = FakeHandle(log, diarize=fns["diarize"])
    return TranscriptionPipeline(asr, alignment, diar, put=lambda s: ("ref", id(s))), asr, alignment, diar


def _same_args(a: tuple, b: tuple) -> bool:
    # A chunk task holds a numpy array, which == compares element-wise: compare what it describes.
    def key(args: tuple) -> tuple:
        return tuple((x.chunk, x.audio.tobytes()) if hasattr(x, "chunk") else x for x in args)
    return key(a) == key(b)


@pytest.mark.parametrize("error", LOST.values(), ids=LOST.keys())
@pytest.mark.parametrize("method", ["plan", "decode_chunk", "align", "diarize"])
async def test_a_call_lost_with_its_replica_is_sent_once_more_with_the_same_arguments(method, error):
    pipeline, *handles = lose_replica(method, 1, error)
    transcript = await pipeline.run(AUDIO, request(diarize=True, response_format="srt"))
    assert transcript.word_source == "alignment" and transcript.speakers == ["SPEAKER_00", "SPEAKER_01"]
    calls: dict[str, list[tuple]] = {}
    for handle in handles:
        for name, args in handle.calls:
            calls.setdefault(name, []).append(args)
    sent_once = {"decode_chunk": len(CHUNKS)}
    assert len(calls[method]) == sent_once.get(method, 1) + 1
    # The first call failed; the last one is that call once more (other chunks went out in between).
    assert _same_args(calls[method][0], calls[method][-1]), "sent once more with the same arguments"
    assert all(len(sent) == sent_once.get(name, 1) for name, sent in calls.items() if name != method)


@pytest.mark.parametrize("method", ["plan", "diarize"])
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
    pipeline, asr, _, _ = lose_replica("plan", 1, error)
    with pytest.raises((BadRequest, RuntimeError)):
        await pipeline.run(AUDIO, request())
    assert len(asr.calls) == 1


# --- chunks: order, window, progress ----------------------------------------------------------------

MANY = tuple(SpeechChunk(float(i), i + 0.5) for i in range(12))


def many_chunks_asr(log, delays=None, in_flight=None):
    """An ASR handle planning MANY chunks; each decode takes its time (`delays`, later chunks sooner)
    and counts how many are in flight at once."""
    import asyncio

    def plan(audio, options):
        return AsrPlan(model="tiny.en", language="en", chunks=MANY, duration_s=12.0)

    def decode(task):
        async def run():
            in_flight.append(in_flight[-1] + 1 if in_flight else 1)
            await asyncio.sleep((delays or {}).get(task.chunk, 0.0))
            in_flight.append(in_flight[-1] - 1)
            return DecodedChunk(task.chunk, f"chunk {MANY.index(task.chunk)}", (), 0.0,
                                start_s=task.chunk.start_s, end_s=task.chunk.end_s)
        return run()

    return asr_handle(log, plan=plan, decode_chunk=decode)


async def test_chunks_finished_out_of_order_come_back_in_the_plans_order():
    in_flight: list[int] = []
    delays = {chunk: 0.001 * (len(MANY) - i) for i, chunk in enumerate(MANY)}  # the last finishes first
    asr = many_chunks_asr([], delays, in_flight)
    pipeline = TranscriptionPipeline(asr, None, None, put=lambda s: s)
    transcript = await pipeline.run(np.zeros(16_000 * 12, np.float32), request())
    assert [s.text for s in transcript.segments] == [f"chunk {i}" for i in range(len(MANY))]


async def test_each_chunk_carries_its_own_samples_and_the_previous_chunks_end():
    audio = np.arange(16_000 * 12, dtype=np.float32)
    asr = many_chunks_asr([], in_flight=[])
    await TranscriptionPipeline(asr, None, None, put=lambda s: s).run(audio, request())
    tasks = decoded_tasks(asr)
    assert [t.chunk for t in tasks] == list(MANY)
    assert all(np.array_equal(t.audio, t.chunk.samples(audio)) for t in tasks)
    assert [t.previous_end_s for t in tasks] == [0.0] + [c.end_s for c in MANY[:-1]]


async def test_no_more_than_the_window_of_one_requests_chunks_are_in_flight():
    in_flight: list[int] = []
    asr = many_chunks_asr([], {chunk: 0.002 for chunk in MANY}, in_flight)
    pipeline = TranscriptionPipeline(asr, None, None, put=lambda s: s, max_chunks_in_flight=3)
    await pipeline.run(np.zeros(16_000 * 12, np.float32), request())
    assert max(in_flight) == 3, in_flight


async def test_progress_counts_every_chunk_and_the_stages_asked_for():
    from serve_app.progress import Progress

    seen: list[tuple[int | None, int]] = []
    progress = Progress("r1")
    asr = many_chunks_asr([], in_flight=[])
    original = progress.chunk_done

    def counted(index: int | None = None, text: str = "") -> None:
        original(index, text)
        seen.append((progress.chunks_total, progress.chunks_done))

    progress.chunk_done = counted  # type: ignore[method-assign]
    pipeline = TranscriptionPipeline(asr, FakeHandle([], align=lambda a, s, lang: None),
                                     FakeHandle([], diarize=lambda audio, options: TURNS), put=lambda s: s)
    await pipeline.run(np.zeros(16_000 * 12, np.float32), request(diarize=True), progress)
    assert seen == [(len(MANY), i) for i in range(1, len(MANY) + 1)]
    # Speakers are assigned by word, so a diarized request has its words aligned first.
    assert (progress.audio_s, progress.aligned, progress.diarized) == (12.0, True, True)


async def test_a_failed_chunk_fails_the_request_and_cancels_the_chunks_still_waiting():
    def plan(audio, options):
        return AsrPlan(model="tiny.en", language="en", chunks=MANY, duration_s=12.0)

    def decode(task):
        if task.chunk == MANY[0]:
            raise ModelUnavailable("replica out of memory")
        return decode_fn(task)

    asr = asr_handle([], plan=plan, decode_chunk=decode)
    pipeline = TranscriptionPipeline(asr, None, None, put=lambda s: s, max_chunks_in_flight=2)
    with pytest.raises(ModelUnavailable):
        await pipeline.run(np.zeros(16_000 * 12, np.float32), request())
    assert len(decoded_tasks(asr)) < len(MANY), "chunks behind the window were never sent"


async def test_each_stage_the_request_went_through_is_timed_into_its_progress():
    from serve_app.progress import Progress

    pipeline, *_ = make({"en": "some/model"})
    plain, full = Progress("plain"), Progress("full")
    await pipeline.run(AUDIO, request(), plain)
    await pipeline.run(AUDIO, request(response_format="verbose_json", timestamp_granularities=["word"],
                                      diarize=True), full)
    assert set(plain.stage_s) == {"vad", "asr"}
    assert set(full.stage_s) == {"vad", "asr", "alignment", "diarization"}
    assert all(seconds >= 0 for seconds in full.stage_s.values())
    assert full.as_dict()["stage_s"].keys() == full.stage_s.keys()


@pytest.mark.parametrize(("running", "says"), [(0, True), (1, False), (None, False)])
async def test_a_diarized_request_to_a_deployment_scaled_to_zero_says_it_waits(caplog, running, says):
    import logging

    from serve_app.progress import Progress

    pipeline, *_ = make()
    asked: list[object] = []

    async def running_replicas(handle):
        asked.append(handle)
        return running

    pipeline._running_replicas = running_replicas
    with caplog.at_level(logging.INFO, logger="serve_app.pipeline"):
        transcript = await pipeline.run(AUDIO, request(diarize=True), Progress("r-1"))
    assert transcript.speakers == ["SPEAKER_00", "SPEAKER_01"]
    assert len(asked) == 1
    said = [r.getMessage() for r in caplog.records if "scaled to zero" in r.getMessage()]
    assert bool(said) is says, said
    if says:
        assert said[0].startswith("request r-1: ")


# --- a job's stages: resumed and kept ---------------------------------------------------------------

KEPT_ASR = AsrResult(language="fr", duration_s=9.5, word_source="whisper", segments=(
    Segment("bonjour", 5.0, 6.0, words=(Word("bonjour", 5.0, 6.0),)),
    Segment("au revoir", 7.0, 8.0, words=(Word("au", 7.0, 7.3), Word("revoir", 7.4, 8.0))),
))
KEPT_TURNS = [SpeakerTurn("SPEAKER_07", 4.5, 6.5), SpeakerTurn("SPEAKER_03", 6.5, 8.5)]


def keeper() -> tuple[Stages, dict[str, Any]]:
    """Stages with nothing kept yet, and what their `keep` was handed, by stage."""
    kept: dict[str, Any] = {}

    async def keep(stage: str, output: Any) -> None:
        if stage == "chunk":  # one per chunk, by index
            index, decoded = output
            assert index not in kept.setdefault("chunks", {}), f"chunk {index} kept twice"
            kept["chunks"][index] = decoded
            return
        assert stage not in kept, f"{stage} kept twice"
        kept[stage] = output

    return Stages(keep=keep), kept


async def test_a_kept_asr_result_is_used_without_planning_or_decoding():
    pipeline, asr, _, diar, _ = make()
    stages, kept = keeper()
    stages.asr = KEPT_ASR
    transcript = await pipeline.run(AUDIO, request(diarize=True), stages=stages)
    assert asr.calls == [], "no plan, no chunk"
    assert transcript.text == "bonjour au revoir"
    assert (transcript.language, transcript.duration_s) == ("fr", 9.5)
    assert len(diar.calls) == 1 and set(kept) == {"turns"}, "only the stage that ran is kept"


async def test_a_kept_asr_result_is_still_aligned_when_words_are_asked_for():
    pipeline, asr, alignment, _, _ = make({"fr": "some/model"})
    transcript = await pipeline.run(AUDIO, request(response_format="srt"), stages=Stages(asr=KEPT_ASR))
    assert asr.calls == []
    assert alignment.calls[0][1][1:] == (list(KEPT_ASR.segments), "fr"), "aligned from the kept segments"
    assert transcript.word_source == "alignment"


async def test_kept_turns_name_the_speakers_without_diarizing():
    pipeline, asr, _, diar, _ = make()
    progress = Progress("job")
    transcript = await pipeline.run(AUDIO, request(diarize=True), progress,
                                    stages=Stages(asr=KEPT_ASR, turns=KEPT_TURNS))
    assert diar.calls == [] and asr.calls == []
    assert [s.speaker for s in transcript.segments] == ["SPEAKER_07", "SPEAKER_03"]
    assert transcript.speakers == ["SPEAKER_07", "SPEAKER_03"]
    assert progress.diarized is True


async def test_kept_turns_with_asr_still_to_run():
    pipeline, asr, _, diar, _ = make()
    transcript = await pipeline.run(AUDIO, request(diarize=True),
                                    stages=Stages(turns=[SpeakerTurn("SPEAKER_05", 0.0, 4.0)]))
    assert diar.calls == [] and len(decoded_tasks(asr)) == len(CHUNKS)
    assert transcript.speakers == ["SPEAKER_05"]


async def test_each_stage_that_runs_is_kept_with_its_output():
    pipeline, *_ = make()
    stages, kept = keeper()
    transcript = await pipeline.run(AUDIO, request(diarize=True), stages=stages)
    assert set(kept) == {"plan", "chunks", "asr", "turns"}
    assert kept["turns"] == TURNS
    assert isinstance(kept["plan"], AsrPlan) and sorted(kept["chunks"]) == list(range(len(kept["plan"].chunks)))
    asr_result = kept["asr"]
    assert isinstance(asr_result, AsrResult)
    assert (asr_result.language, asr_result.duration_s) == ("en", 4.0)
    assert [s.text for s in asr_result.segments] == [s.text for s in SEGMENTS]
    assert transcript.text == "hello there general kenobi"


async def test_with_the_plan_and_some_chunks_kept_only_the_other_chunks_are_decoded():
    first = many_chunks_asr([], in_flight=[])
    stages, kept = keeper()
    whole = await TranscriptionPipeline(first, None, None, put=lambda s: s).run(
        np.zeros(16_000 * 12, np.float32), request(), stages=stages)
    # A second attempt with the plan and the even chunks kept, as a job killed half-way resumes.
    again = many_chunks_asr([], in_flight=[])
    resumed = Stages(plan=kept["plan"], chunks={i: c for i, c in kept["chunks"].items() if i % 2 == 0})
    progress = Progress("job")
    texts: list[str] = []
    progress.on_text = texts.append
    transcript = await TranscriptionPipeline(again, None, None, put=lambda s: s).run(
        np.zeros(16_000 * 12, np.float32), request(), progress, stages=resumed)
    assert not [name for name, _ in again.calls if name == "plan"]
    assert [t.chunk for t in decoded_tasks(again)] == [MANY[i] for i in range(len(MANY)) if i % 2]
    assert transcript.text == whole.text and "".join(texts) == whole.text
    assert progress.chunks_done == len(MANY)


async def test_a_failed_asr_keeps_nothing_of_it():
    def failing(audio, options):
        raise ModelUnavailable("asr down")

    asr = asr_handle([], plan=failing)
    pipeline = TranscriptionPipeline(asr, None, None, put=lambda s: s)
    stages, kept = keeper()
    with pytest.raises(ModelUnavailable):
        await pipeline.run(AUDIO, request(), stages=stages)
    assert kept == {}


@pytest.mark.parametrize("priority", [INTERACTIVE, BACKGROUND])
async def test_the_priority_goes_on_every_chunk(priority):
    asr = many_chunks_asr([], in_flight=[])
    pipeline = TranscriptionPipeline(asr, None, None, put=lambda s: s)
    await pipeline.run(np.zeros(16_000 * 12, np.float32), request(), priority=priority)
    assert [t.priority for t in decoded_tasks(asr)] == [priority] * len(MANY)


async def test_chunks_are_interactive_unless_asked_otherwise():
    pipeline, asr, *_ = make()
    await pipeline.run(AUDIO, request())
    assert {t.priority for t in decoded_tasks(asr)} == {INTERACTIVE}
