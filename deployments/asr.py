"""Speech recognition: whisperX's batched faster-whisper pipeline with pyannote VAD.

`AsrHolder` works without Ray; `AsrDeployment` at the bottom is the thin Serve wrapper.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from core.audio import SAMPLE_RATE_HZ
from core.errors import BadRequest, ModelUnavailable, UnknownModel, UnsupportedLanguage
from core.transcript import AsrOptions, AsrResult, Segment, Word
from deployments import bundled
from deployments.holder import DeviceConfig, ModelHolder
from deployments.replica import HolderReplica

logger = logging.getLogger(__name__)


class AsrConfig(DeviceConfig):
    """The ASR deployment's `user_config`."""

    model: str = Field("bundled/tiny.en", description="faster-whisper size name (large-v3), hub id, local "
                       "CTranslate2 directory, or bundled/tiny.en | bundled/base (weights from installed packages)")
    compute_type: str = Field("int8", description="CTranslate2 compute type: int8, int8_float16, float16, float32")
    batch_size: int = Field(8, ge=1, le=128, description="VAD chunks decoded per batch")
    beam_size: int = Field(5, ge=1, le=20, description="beam width")
    language: str | None = Field(None, description="default language code when a request gives none; "
                                 "None detects it per request (English-only models always use en)")
    vad_onset: float = Field(0.5, gt=0, lt=1, description="VAD speech-start probability threshold")
    vad_offset: float = Field(0.363, gt=0, lt=1, description="VAD speech-end probability threshold")
    chunk_size_s: int = Field(30, ge=1, le=30, description="longest VAD chunk handed to Whisper, seconds")
    download_dir: str | None = Field(None, description="where hub models are cached (a mounted volume on Kubernetes)")


def _language_codes() -> frozenset[str]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


class AsrHolder(ModelHolder[AsrConfig, Any]):
    """Holds one whisperX `FasterWhisperPipeline`; `transcribe` runs on the owning thread."""

    def identity(self, config: AsrConfig) -> Any:
        # Beam size, batch size, default language and VAD thresholds apply per call: no reload.
        return (config.model, config.device, config.compute_type, config.cpu_threads, config.download_dir)

    def import_libraries(self) -> None:
        import faster_whisper  # noqa: F401
        import whisperx.asr
        import whisperx.vads  # noqa: F401

    def check_config(self, config: AsrConfig) -> None:
        if bundled.is_bundled(config.model):
            bundled.whisper_model_dir(config.model)  # raises for an unknown bundled name
        elif config.model.startswith(("/", "./")) and not Path(config.model).is_dir():
            raise ModelUnavailable(f"no model directory at {config.model}", param="model")

    def load_model(self, config: AsrConfig) -> Any:
        import torch
        import whisperx

        torch.set_num_threads(config.cpu_threads)
        source = bundled.whisper_model_dir(config.model) if bundled.is_bundled(config.model) else config.model
        device, _, index = config.device.partition(":")
        try:
            pipeline = whisperx.load_model(
                source, device, device_index=int(index or 0), compute_type=config.compute_type,
                vad_method="pyannote",  # ships its weights in whisperX; silero goes through torch.hub
                vad_options={"vad_onset": config.vad_onset, "vad_offset": config.vad_offset,
                             "chunk_size": config.chunk_size_s},
                download_root=config.download_dir, threads=config.cpu_threads,
            )
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelUnavailable(f"could not load ASR model {config.model!r}: {e}") from e
        return pipeline

    def release_model(self, model: Any) -> None:
        # CTranslate2 frees its weights only when asked or when the last reference dies; ask.
        model.model.model.unload_model()
        model.vad_model = None
        model.model = None
        model.tokenizer = None

    @property
    def multilingual(self) -> bool:
        return bool(self._require_model().model.model.is_multilingual)

    def _language_for(self, requested: str | None, task: str) -> str | None:
        if not self.multilingual:
            if requested not in (None, "en"):
                raise UnsupportedLanguage(
                    f"the model {self.config.model} understands English only; send language=en or omit it",
                    param="language")
            if task == "translate":
                raise BadRequest(f"the model {self.config.model} is English-only and cannot translate; "
                                 "use /v1/audio/transcriptions", param="model")
            return "en"
        language = requested or self.config.language
        if language is not None and language not in _language_codes():
            raise UnsupportedLanguage(f"unknown language code {language!r}; use an ISO 639-1 code such as "
                                      "en, de, fr", param="language")
        return language

    def transcribe(self, audio: np.ndarray, options: AsrOptions) -> AsrResult:
        """Recognise speech in 16 kHz mono float32 audio. Runs on the owning thread."""
        pipeline = self._require_model()
        if options.model is not None and options.model != self.config.model:
            # Checked here, not in the ingress: a reconfigure may have swapped the model since.
            raise UnknownModel(f"unknown model {options.model!r}; this server offers {self.config.model} "
                               "(or an alias listed by GET /v1/models)", param="model")
        language = self._language_for(options.language, options.task)
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if not audio.flags.writeable:  # arrays from Ray's object store are read-only views
            audio = audio.copy()
        duration_s = len(audio) / SAMPLE_RATE_HZ
        if options.word_timestamps:
            return self._transcribe_with_words(pipeline, audio, language, options, duration_s)
        base_options = pipeline.options
        pipeline.options = replace(
            base_options,
            beam_size=self.config.beam_size,
            initial_prompt=options.prompt,
            temperatures=[options.temperature] if options.temperature is not None else base_options.temperatures,
        )
        try:
            result = pipeline.transcribe(audio, batch_size=self.config.batch_size, language=language,
                                         task=options.task, chunk_size=self.config.chunk_size_s)
        finally:
            pipeline.options = base_options
        segments = tuple(
            Segment(text=s["text"].strip(), start_s=float(s["start"]), end_s=float(s["end"]),
                    avg_logprob=_float_or_none(s.get("avg_logprob")))
            for s in result["segments"] if s["text"].strip()
        )
        return AsrResult(language=result["language"], segments=segments, duration_s=duration_s)

    def _transcribe_with_words(self, pipeline: Any, audio: np.ndarray, language: str | None,
                               options: AsrOptions, duration_s: float) -> AsrResult:
        """Segments with Whisper's own word timestamps (cross-attention DTW) in the same pass.

        The fallback where no alignment model serves the language: faster-whisper's batched
        pipeline over the same loaded model returns words at no measurable extra cost.
        """
        from faster_whisper import BatchedInferencePipeline

        kwargs: dict[str, Any] = {}
        if options.temperature is not None:
            kwargs["temperature"] = options.temperature
        segments_iter, info = BatchedInferencePipeline(pipeline.model).transcribe(
            audio, language=language, task=options.task, beam_size=self.config.beam_size,
            batch_size=self.config.batch_size, initial_prompt=options.prompt, word_timestamps=True,
            vad_filter=True, **kwargs,
        )
        segments = []
        for s in segments_iter:
            words = tuple(Word(text=w.word.strip(), start_s=float(w.start), end_s=float(w.end),
                               probability=float(w.probability)) for w in (s.words or ()) if w.word.strip())
            if s.text.strip():
                segments.append(Segment(text=s.text.strip(), start_s=float(s.start), end_s=float(s.end),
                                        words=words, avg_logprob=float(s.avg_logprob)))
        return AsrResult(language=info.language, segments=tuple(segments), duration_s=duration_s,
                         word_source="whisper")

    def describe(self) -> dict[str, Any]:
        """What the loaded model can do, for the ingress's model list."""
        return {"model": self.config.model, "multilingual": self.multilingual,
                "default_language": self.config.language}


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# --- Ray Serve wrapper (serve_app.app applies serve.deployment, so this module imports without Ray) ---


class AsrDeployment(HolderReplica[AsrConfig, AsrHolder]):
    """Speech recognition replica. Replicas, resources and autoscaling come from serve_config.yaml."""

    config_cls = AsrConfig

    def __init__(self, holder_factory: type[AsrHolder] = AsrHolder) -> None:
        super().__init__(holder_factory)

    async def transcribe(self, audio: np.ndarray, options: AsrOptions) -> AsrResult:
        holder = self.holder
        return await holder.arun(holder.transcribe, audio, options)

    async def describe(self) -> dict[str, Any]:
        holder = self.holder
        return await holder.arun(holder.describe)
