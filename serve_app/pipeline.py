"""The request flow across the model deployments: ASR and diarization at once, then words, then speakers.

ASR goes in two steps: the ASR deployment plans the request (VAD once, the language), then each speech
chunk is its own call, so that Serve spreads one long file over every ASR replica and each replica
batches chunks of all the requests it receives. The chunks come back in any order and are put back in
the plan's.

Handles are Ray Serve `DeploymentHandle`s in production and plain fakes in unit tests: this module
only calls `handle.method.remote(...)` and awaits (or cancels) the result, and sends a call once more
when the replica handling it was lost (`call_model`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.exceptions import RayActorError

from core.chunks import INTERACTIVE, AsrPlan, ChunkTask, DecodedChunk, assemble, chunk_tasks
from core.errors import BadRequest, ModelUnavailable
from core.transcript import (
    AsrOptions,
    AsrResult,
    Segment,
    SpeakerOptions,
    SpeakerReference,
    SpeakerTurn,
    Transcript,
    WordSource,
)
from serve_app.progress import Progress
from serve_app.schemas import TranscriptionRequest
from serve_app.speakers import assign_speakers, speakers_in_order

logger = logging.getLogger(__name__)


def unwrap_remote_error(error: BaseException) -> BaseException:
    """The exception a replica raised, without Ray's RayTaskError wrapper around it."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


async def call_model(method: Any, *args: Any, sent: Any | None = None) -> Any:
    """The result of `method.remote(*args)` (`sent`: that call, if already made), called once more if
    the replica handling it died or became unreachable.

    Ray raises `RayActorError` (`ActorDiedError`, `ActorUnavailableError`) to the caller of a request
    that a replica had accepted when its process died; Serve's router then takes that replica out of
    rotation, so the second call goes to another replica, or waits for the replacement. A model call
    is pure (same audio and options, same answer), so a second one is safe. Only one: an upload that
    itself kills replicas (a decoder bug, an allocation) then costs two of them, not all. Errors the
    replica raised itself (our ServiceErrors, bugs) are not retried: they would only happen again.
    """
    try:
        return await (sent if sent is not None else method.remote(*args))
    except RayActorError as e:
        logger.warning("a model replica was lost during a call (%s); sending the call once more",
                       type(e).__name__)
    try:
        return await method.remote(*args)
    except RayActorError as e:
        raise ModelUnavailable("a model replica failed while handling this request; retry after the delay "
                               "in Retry-After") from e


@dataclass
class Stages:
    """Outputs of an earlier attempt at the same work (a durable job's), and where to keep new ones.

    `run` skips what is here, and hands each output it makes to `keep` as soon as it is made: "plan" with
    the AsrPlan, "chunk" with (index, DecodedChunk) for each speech chunk, "asr" with the AsrResult, "turns"
    with the speaker turns. An attempt after a restart so resumes after the last of them: with the plan
    and some chunks kept, only the other chunks are decoded. Alignment is not kept: it is quick, and it
    runs on the ASR result once that is kept.
    """

    asr: AsrResult | None = None
    turns: list[SpeakerTurn] | None = None
    plan: AsrPlan | None = None
    chunks: dict[int, DecodedChunk] = field(default_factory=dict)  # by index in the plan
    keep: Callable[[str, Any], Awaitable[None]] | None = None

    async def kept(self, stage: str, output: Any) -> None:
        if self.keep is not None:
            await self.keep(stage, output)


class TranscriptionPipeline:
    """Runs one request's audio through the deployments and returns the assembled transcript."""

    def __init__(self, asr: Any, alignment: Any | None, diarization: Any | None,
                 put: Callable[[np.ndarray], Any], model_aliases: frozenset[str] = frozenset(),
                 max_chunks_in_flight: int = 32,
                 running_replicas: Callable[[Any], Awaitable[int | None]] | None = None) -> None:
        self._asr = asr
        self._alignment = alignment
        self._diarization = diarization
        self._put = put
        self._model_aliases = model_aliases
        self._max_chunks_in_flight = max_chunks_in_flight
        # How many replicas a deployment runs now (None: unknown); asked before a diarized request, so that
        # one which waits for a deployment scaled to zero says so.
        self._running_replicas = running_replicas

    async def run(self, samples: np.ndarray, request: TranscriptionRequest, progress: Progress | None = None,
                  known_speakers: tuple[SpeakerReference, ...] = (), *, priority: int = INTERACTIVE,
                  stages: Stages | None = None) -> Transcript:
        """The transcript of `samples`; `known_speakers`, the request's voice references, name the diarized
        speakers that match them. `priority` goes on every speech chunk (core.chunks: a job's chunks yield
        to interactive ones at the ASR replicas); `stages` resumes and keeps a job's stage outputs."""
        if request.diarize and self._diarization is None:
            raise BadRequest("speaker diarization is not enabled on this server; send diarize=false",
                             param="diarize")
        # Put the audio in the object store once; every deployment reads the same copy.
        audio = self._put(samples)
        diarization = self._diarization if request.diarize else None
        speaker_options = SpeakerOptions(num_speakers=request.num_speakers, min_speakers=request.min_speakers,
                                         max_speakers=request.max_speakers, references=known_speakers)
        progress = progress or Progress("")
        stages = stages or Stages()
        # Sent now, awaited last: diarization runs while ASR (and alignment) run.
        turns_response = turns_call = None
        if diarization is not None and stages.turns is not None:
            progress.diarized = True
        elif diarization is not None:
            await self._say_if_scaled_to_zero(diarization, progress)
            turns_response = diarization.diarize.remote(audio, speaker_options)
            turns_call = asyncio.ensure_future(self._diarized(diarization, turns_response, audio,
                                                              speaker_options, progress, stages))
        asr_options = AsrOptions(
            task=request.task, language=request.language, prompt=request.prompt,
            model=None if request.model is None or request.model in self._model_aliases else request.model,
            temperature=request.temperature,
            # Whisper's own word times come from the same decode as the text, so asking for words
            # never changes the text; an alignment model, where one covers the language, refines them.
            word_timestamps=request.needs_words,
        )
        try:
            asr_result = stages.asr
            if asr_result is None:
                asr_result = await self._transcribed(audio, samples, asr_options, progress, priority, stages)
                await stages.kept("asr", asr_result)
            segments, word_source = list(asr_result.segments), asr_result.word_source
            if request.needs_words and segments and self._wants_alignment(request):
                started = time.monotonic()
                segments, word_source = await self._aligned(audio, asr_result)
                progress.stage_s["alignment"] = time.monotonic() - started
                progress.aligned = True
            turns = (stages.turns or []) if turns_call is None else await turns_call
        except BaseException:
            if turns_response is not None and turns_call is not None:
                turns_response.cancel()
                turns_call.cancel()
                if turns_call.done() and not turns_call.cancelled():
                    turns_call.exception()  # retrieved: this request already fails with the first error
            raise
        if turns:
            segments = assign_speakers(segments, turns)
        return Transcript(task=request.task, language=asr_result.language, duration_s=asr_result.duration_s,
                          segments=segments, word_source=word_source if request.needs_words else None,
                          speakers=speakers_in_order(segments))

    async def _transcribed(self, audio: Any, samples: np.ndarray, options: AsrOptions,
                           progress: Progress, priority: int, stages: Stages) -> AsrResult:
        """Plan on one ASR replica, then every chunk decoded where Serve sends it, at most
        `max_chunks_in_flight` at a time, counted into `progress` as each comes back; what `stages`
        kept of an earlier attempt is not done again."""
        started = time.monotonic()
        plan = stages.plan
        if plan is None:
            plan = await call_model(self._asr.plan, audio, options)
            await stages.kept("plan", plan)
        assert plan is not None
        planned = time.monotonic()
        progress.stage_s["vad"] = planned - started
        progress.planned(len(plan.chunks), plan.duration_s)
        tasks = chunk_tasks(plan, samples, task=options.task, prompt=options.prompt,
                            temperature=options.temperature, word_timestamps=options.word_timestamps,
                            priority=priority)
        window = asyncio.Semaphore(self._max_chunks_in_flight)

        async def decode(index: int, task: ChunkTask) -> DecodedChunk:
            kept = stages.chunks.get(index)
            if kept is not None:
                progress.chunk_done(index, kept.text)
                return kept
            async with window:
                decoded: DecodedChunk = await call_model(self._asr.decode_chunk, task)
            await stages.kept("chunk", (index, decoded))
            progress.chunk_done(index, decoded.text)
            return decoded

        calls = [asyncio.ensure_future(decode(index, task)) for index, task in enumerate(tasks)]
        try:
            decoded = await asyncio.gather(*calls)
        except BaseException:
            for call in calls:  # the chunks still waiting or in flight are not wanted any more
                call.cancel()
            raise
        progress.stage_s["asr"] = time.monotonic() - planned
        return assemble(plan, list(decoded), word_timestamps=options.word_timestamps)

    async def _diarized(self, diarization: Any, sent: Any, audio: Any, options: SpeakerOptions,
                        progress: Progress, stages: Stages) -> list[Any]:
        started = time.monotonic()
        turns: list[Any] = await call_model(diarization.diarize, audio, options, sent=sent)
        progress.stage_s["diarization"] = time.monotonic() - started
        progress.diarized = True
        await stages.kept("turns", turns)
        return turns

    async def _say_if_scaled_to_zero(self, deployment: Any, progress: Progress) -> None:
        """Log that a request waits for a deployment with no replica running (scaled to zero): Serve holds
        the call and starts a replica, which takes a model load or, on Kubernetes, a node."""
        if self._running_replicas is None:
            return
        try:
            running = await self._running_replicas(deployment)
        except Exception:  # only a log line depends on it
            logger.debug("could not count the replicas of %s", deployment, exc_info=True)
            return
        if running == 0:
            logger.info("request %s: %s has no replica running (scaled to zero); waiting for one to start",
                        progress.request_id, getattr(deployment, "deployment_name", "a deployment"))

    def _wants_alignment(self, request: TranscriptionRequest) -> bool:
        # Translated text cannot be aligned to the source-language audio by a CTC model.
        return request.align and self._alignment is not None and request.task == "transcribe"

    async def _aligned(self, audio: Any, asr_result: AsrResult) -> tuple[list[Segment], WordSource | None]:
        """Segments with wav2vec2 word times where the alignment deployment has a model for the
        language (it alone decides, from its deployed config); Whisper's own word times otherwise."""
        whisper = list(asr_result.segments), asr_result.word_source
        assert self._alignment is not None  # _wants_alignment checked it
        try:
            aligned = await call_model(self._alignment.align, audio, whisper[0], asr_result.language)
        except Exception as e:  # narrowed just below, once Ray's wrapper is unwrapped
            cause = unwrap_remote_error(e)
            if not isinstance(cause, ModelUnavailable):
                raise
            logger.warning("no alignment for %s (%s); using Whisper's word timings", asr_result.language, cause)
            return whisper
        return whisper if aligned is None else (list(aligned), "alignment")
