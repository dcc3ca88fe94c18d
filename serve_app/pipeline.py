"""The request flow across the model deployments: ASR and diarization at once, then words, then speakers.

Handles are Ray Serve `DeploymentHandle`s in production and plain fakes in unit tests: this module
only calls `handle.method.remote(...)`, awaits the result, and `handle.options(...)` for routing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from core.errors import BadRequest, ModelUnavailable
from core.transcript import AsrOptions, AsrResult, Segment, SpeakerOptions, Transcript, WordSource
from deployments.alignment import AlignmentConfig
from serve_app.schemas import TranscriptionRequest
from serve_app.speakers import assign_speakers, speakers_in_order

logger = logging.getLogger(__name__)


def unwrap_remote_error(error: BaseException) -> BaseException:
    """The exception a replica raised, without Ray's RayTaskError wrapper around it."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


class TranscriptionPipeline:
    """Runs one request's audio through the deployments and returns the assembled transcript."""

    def __init__(self, asr: Any, alignment: Any | None, diarization: Any | None,
                 alignment_config: AlignmentConfig, put: Callable[[np.ndarray], Any],
                 model_aliases: frozenset[str] = frozenset()) -> None:
        self._asr = asr
        self._alignment = alignment
        self._diarization = diarization
        self._alignment_config = alignment_config
        self._put = put
        self._model_aliases = model_aliases

    def _alignment_covers(self, language: str | None, request: TranscriptionRequest) -> bool:
        """Whether an alignment model will likely produce the words (a hint; failures fall back)."""
        if not request.align or self._alignment is None or request.task == "translate":
            # Translated text cannot be aligned to the source-language audio by a CTC model.
            return False
        config = self._alignment_config
        if language is None:  # detected later: worth trying if any language has a model
            return bool(config.models) or config.use_whisperx_defaults
        return config.model_for(language) is not None

    async def run(self, samples: np.ndarray, request: TranscriptionRequest) -> Transcript:
        if request.diarize and self._diarization is None:
            raise BadRequest("speaker diarization is not enabled on this server; send diarize=false",
                             param="diarize")
        # Put the audio in the object store once; every deployment reads the same copy.
        audio = self._put(samples)
        turns_response = None
        if request.diarize and self._diarization is not None:
            turns_response = self._diarization.diarize.remote(audio, SpeakerOptions(
                num_speakers=request.num_speakers, min_speakers=request.min_speakers,
                max_speakers=request.max_speakers))
        asr_options = AsrOptions(
            task=request.task, language=request.language, prompt=request.prompt,
            model=None if request.model in self._model_aliases else request.model,
            temperature=request.temperature,
            # Ask Whisper for words in the same pass when no alignment model will supply them.
            word_timestamps=request.needs_words and not self._alignment_covers(request.language, request),
        )
        try:
            asr_result: AsrResult = await self._asr.transcribe.remote(audio, asr_options)
            segments, word_source = list(asr_result.segments), asr_result.word_source
            if request.needs_words and word_source is None and segments:
                segments, word_source = await self._words(audio, asr_result, asr_options, request)
            turns = await turns_response if turns_response is not None else []
        except BaseException:
            if turns_response is not None:
                turns_response.cancel()
            raise
        if turns:
            segments = assign_speakers(segments, turns)
        return Transcript(task=request.task, language=asr_result.language, duration_s=asr_result.duration_s,
                          segments=segments, word_source=word_source if request.needs_words else None,
                          speakers=speakers_in_order(segments))

    async def _words(self, audio: Any, asr_result: AsrResult, asr_options: AsrOptions,
                     request: TranscriptionRequest) -> tuple[list[Segment], WordSource]:
        """Word timings from the alignment deployment, or from Whisper where it has no model."""
        language = asr_result.language
        if self._alignment is not None and self._alignment_covers(language, request):
            try:
                aligned = await self._alignment.options(multiplexed_model_id=language).align.remote(
                    audio, list(asr_result.segments))
                return list(aligned), "alignment"
            except Exception as e:  # narrowed just below, once Ray's wrapper is unwrapped
                cause = unwrap_remote_error(e)
                if not isinstance(cause, ModelUnavailable):
                    raise
                logger.warning("no alignment for %s (%s); using Whisper's word timings", language, cause)
        redo: AsrResult = await self._asr.transcribe.remote(
            audio, replace(asr_options, language=language, word_timestamps=True))
        return list(redo.segments), "whisper"
