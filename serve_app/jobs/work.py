"""One job's work: decode the spooled upload, run the pipeline, return the transcript as JSON.

The same pipeline as the synchronous routes, with two differences: its speech chunks go at BACKGROUND
priority (an interactive request never waits behind a long job's chunks), and every stage's output is
kept in the job's spool folder as it finishes (serve_app/jobs/spool.py), so an attempt after a restart
goes on after the last finished stage instead of from the start:

    decode    decoded.npy, decoded.json   the samples and what of the upload could not be decoded
    plan      plan.json                   the speech chunks VAD found, and the model and language
              chunks.jsonl                each speech chunk's decode, as it comes back (not a stage)
    asr       asr.json                    the transcribed segments
    turns     turns.json                  the speaker turns (diarization runs beside ASR)

A job killed half-way through its chunks so decodes only the other half on its next attempt.

Alignment is not kept: it runs on the kept ASR result in a fraction of its time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from core.audio import SAMPLE_RATE_HZ
from core.chunks import BACKGROUND
from core.transcript import AsrResult, SpeakerReference, SpeakerTurn
from serve_app import enrollment, media, references
from serve_app.jobs import records
from serve_app.jobs.runner import JobContext
from serve_app.jobs.spool import Spool
from serve_app.jobs.store import JobStore
from serve_app.pipeline import Stages, TranscriptionPipeline
from serve_app.progress import Progress
from serve_app.schemas import TranscriptionRequest

logger = logging.getLogger(__name__)


# How each stage `Stages.keep` hands over is written to its file (<stage>.json) in the job's folder.
_STAGE_JSON: dict[str, Callable[[Any], Any]] = {"plan": records.plan_json, "asr": records.asr_result_json,
                                                "turns": records.turns_json}


@dataclass(frozen=True)
class DecodeLimits:
    max_audio_duration_s: float
    timeout_s: float
    memory_limit_mib: int


class JobWork:
    """Callable by a `JobRunner` with each claimed job."""

    def __init__(self, pipeline: TranscriptionPipeline, store: JobStore, spool: Spool, limits: DecodeLimits,
                 speed: Any) -> None:
        self._pipeline, self._store, self._spool, self._limits = pipeline, store, spool, limits
        self._speed = speed  # () -> audio seconds per second, the admission's measured speed: the first ETA

    async def __call__(self, context: JobContext) -> dict[str, Any]:
        job = context.job
        request = TranscriptionRequest.model_validate(job.fields)
        progress = Progress(job.id)
        resumed = dict(job.progress)
        stages = await asyncio.to_thread(self._kept_stages, job.input)
        kept = len(stages.chunks)
        context.report = lambda: job_progress(progress, request, resumed, self._speed(), kept=kept)
        samples, warnings = await self._decoded(context, progress)
        known = await self._known_speakers(job.input, request)
        if stages.asr is not None:  # the chunks were all transcribed by an earlier attempt
            progress.chunks_total = progress.chunks_done = resumed.get("chunks_total") or 0
        elif kept:
            logger.info("job %s: %d speech chunks kept from an earlier attempt", job.id, kept)

        async def keep(stage: str, output: Any) -> None:
            if stage == "chunk":  # one record per chunk: not a stage of its own in the store
                index, decoded = output
                await asyncio.to_thread(self._spool.append_json, job.input, "chunks",
                                        records.decoded_chunk_json(index, decoded))
                return
            await asyncio.to_thread(self._spool.keep_json, job.input, stage, _STAGE_JSON[stage](output))
            await context.keep(stage)

        stages.keep = keep
        # Word timings always, whatever format the job was submitted for: its result can then be rendered in
        # every format, subtitles included (they never change the text; core/transcript.py).
        with_words = request.model_copy(update={"response_format": "verbose_json",
                                                "timestamp_granularities": ["word", "segment"]})
        transcript = await self._pipeline.run(samples, with_words, progress, known, priority=BACKGROUND,
                                              stages=stages)
        return records.transcript_json(replace(transcript, warnings=warnings))

    async def _decoded(self, context: JobContext, progress: Progress) -> tuple[Any, tuple[str, ...]]:
        job = context.job
        samples = await asyncio.to_thread(self._spool.read_samples, job.input)
        if samples is not None:
            kept = await asyncio.to_thread(self._spool.read_json, job.input, "decoded") or {}
            progress.audio_s = len(samples) / SAMPLE_RATE_HZ
            return samples, tuple(kept.get("warnings", ()))
        started = time.monotonic()
        with open(job.input, "rb") as upload:
            decoded = await media.decode_audio(upload, max_duration_s=self._limits.max_audio_duration_s,
                                               timeout_s=self._limits.timeout_s,
                                               memory_limit_mib=self._limits.memory_limit_mib)
        progress.stage_s["decode"] = time.monotonic() - started
        progress.audio_s = decoded.duration_s
        await asyncio.to_thread(self._spool.keep_samples, job.input, decoded.samples)
        await asyncio.to_thread(self._spool.keep_json, job.input, "decoded", {"warnings": list(decoded.warnings)})
        await context.keep("decode")
        return decoded.samples, decoded.warnings

    async def _known_speakers(self, input: str, request: TranscriptionRequest) -> tuple[SpeakerReference, ...]:
        if not request.known_speaker_names:
            return ()
        clips = await asyncio.to_thread(self._spool.read_json, input, "references")
        if clips:
            return await references.decode(request.known_speaker_names, clips, timeout_s=self._limits.timeout_s,
                                           memory_limit_mib=self._limits.memory_limit_mib)
        return await enrollment.enrolled(self._store, request.known_speaker_names)

    def _kept_stages(self, input: str) -> Stages:
        asr, turns = self._spool.read_json(input, "asr"), self._spool.read_json(input, "turns")
        asr_result: AsrResult | None = None if asr is None else records.asr_result_from_json(asr)
        kept_turns: list[SpeakerTurn] | None = None if turns is None else records.turns_from_json(turns)
        plan = self._spool.read_json(input, "plan")
        if plan is None:  # chunks without their plan cannot be placed: none are kept
            return Stages(asr=asr_result, turns=kept_turns)
        chunks = dict(records.decoded_chunk_from_json(line) for line in self._spool.read_json_lines(input, "chunks"))
        return Stages(asr=asr_result, turns=kept_turns, plan=records.plan_from_json(plan), chunks=chunks)


def job_progress(progress: Progress, request: TranscriptionRequest, resumed: dict[str, Any],
                 speed: float, *, kept: int = 0) -> dict[str, Any]:
    """A job's progress as its status shows it: each stage reached, chunks transcribed of total, and an
    estimate of the seconds left.

    The estimate: while chunks are transcribed, the chunks left at the pace of those decoded so far in this
    attempt (not the `kept` ones an earlier attempt decoded); before that, the audio at the measured speed
    of the service (admission's estimate).
    """
    chunks_total = progress.chunks_total if progress.chunks_total is not None else resumed.get("chunks_total")
    done = progress.chunks_done
    eta_s: float | None = None
    asr_started = progress.stage_s.get("vad")
    if chunks_total and done > kept and asr_started is not None:
        asr_elapsed = progress.elapsed_s - progress.stage_s.get("decode", 0.0) - asr_started
        eta_s = max(0.0, asr_elapsed / (done - kept) * (chunks_total - done))
    elif progress.audio_s is not None and done == 0:
        eta_s = progress.audio_s / max(speed, 1e-6)
    return {
        "audio_s": progress.audio_s,
        "decoded": progress.audio_s is not None,
        "vad": chunks_total is not None,
        "chunks_total": chunks_total,
        "chunks_done": done,
        # None where the stage was not asked for (or, for alignment, cannot apply: a translation).
        "aligned": bool(progress.aligned) if request.align and request.task == "transcribe" else None,
        "diarized": bool(progress.diarized) if request.diarize else None,
        "eta_s": None if eta_s is None else round(eta_s, 1),
    }
