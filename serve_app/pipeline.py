"""The request flow across the model deployments: ASR and diarization at once, then words, then speakers.

Handles are Ray Serve `DeploymentHandle`s in production and plain fakes in unit tests: this module
only calls `handle.method.remote(...)` and awaits (or cancels) the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from core.errors import BadRequest, ModelUnavailable
from core.transcript import AsrOptions, AsrResult, Segment, SpeakerOptions, Transcript, WordSource
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
                 put: Callable[[np.ndarray], Any], model_aliases: frozenset[str] = frozenset()) -> None:
        self._asr = asr
        self._alignment = alignment
        self._diarization = diarization
        self._put = put
        self._model_aliases = model_aliases

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
            model=None if request.model is None or request.model in self._model_aliases else request.model,
            temperature=request.temperature,
            # Whisper's own word times come from the same decode as the text, so asking for words
            # never changes the text; an alignment model, where one covers the language, refines them.
            word_timestamps=request.needs_words,
        )
        try:
            asr_result: AsrResult = await self._asr.transcribe.remote(audio, asr_options)
            segments, word_source = list(asr_result.segments), asr_result.word_source
            if request.needs_words and segments and self._wants_alignment(request):
                segments, word_source = await self._aligned(audio, asr_result)
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

    def _wants_alignment(self, request: TranscriptionRequest) -> bool:
        # Translated text cannot be aligned to the source-language audio by a CTC model.
        return request.align and self._alignment is not None and request.task == "transcribe"

    async def _aligned(self, audio: Any, asr_result: AsrResult) -> tuple[list[Segment], WordSource | None]:
        """Segments with wav2vec2 word times where the alignment deployment has a model for the
        language (it alone decides, from its deployed config); Whisper's own word times otherwise."""
        whisper = list(asr_result.segments), asr_result.word_source
        assert self._alignment is not None  # _wants_alignment checked it
        try:
            aligned = await self._alignment.align.remote(audio, whisper[0], asr_result.language)
        except Exception as e:  # narrowed just below, once Ray's wrapper is unwrapped
            cause = unwrap_remote_error(e)
            if not isinstance(cause, ModelUnavailable):
                raise
            logger.warning("no alignment for %s (%s); using Whisper's word timings", asr_result.language, cause)
            return whisper
        return whisper if aligned is None else (list(aligned), "alignment")
