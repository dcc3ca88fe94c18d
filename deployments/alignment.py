"""Word alignment with wav2vec2 CTC models through whisperX: config, one-language holder, Serve wrapper.

One `AlignmentModelHolder` holds one language's model; the Serve wrapper at the bottom keeps one holder
per language in the replica's model pool, so evicting a language tears down (and measures) exactly
that model. This deployment alone decides which languages it aligns, from the config it was deployed
with: a request in a language it has no model for gets `None`, and the caller keeps Whisper's own
word times.

whisperX (and with it torch and transformers, 30-40 s to import on the 2-core machine) is imported
only where a model is loaded or used, so the ingress can import `AlignmentConfig` cheaply.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from core.audio import SAMPLE_RATE_HZ
from core.errors import ModelUnavailable
from core.language import joins_without_spaces
from core.transcript import Segment
from deployments.holder import DeviceConfig, ModelHolder
from deployments.nltk_data import ensure_punkt_tab
from deployments.replica import ModelReplica
from deployments.word_times import expected_words, fill_word_times, match_words

logger = logging.getLogger(__name__)

# --- configuration ---------------------------------------------------------------------------------

MODEL_CACHE_DIR_HELP = "Download cache for hub and torchaudio models; None: their default caches."
NLTK_DATA_DIR_HELP = "Where the punkt_tab sentence-splitter data is written; None: the user's cache dir."


class AlignmentModelSpec(DeviceConfig):
    """What one holder loads: one language's model on one device."""

    language: str = Field(description="Language code the model aligns, e.g. 'en'.")
    model: str = Field(description="torchaudio bundle, hub id or local directory of a wav2vec2 CTC model.")
    cpu_threads: int = Field(default=1, ge=1, description="torch intra-op threads (process-wide in torch).")
    model_cache_dir: str | None = Field(default=None, description=MODEL_CACHE_DIR_HELP)
    nltk_data_dir: str | None = Field(default=None, description=NLTK_DATA_DIR_HELP)


class AlignmentConfig(DeviceConfig):
    """The alignment deployment's `user_config`; the device fields apply to every language's model."""

    cpu_threads: int = Field(default=1, ge=1, description="torch intra-op threads, from the CPU share.")
    models: dict[str, str] = Field(
        default_factory=dict,
        description="Language code -> hub id or local directory of a wav2vec2 CTC model.")
    use_whisperx_defaults: bool = Field(
        default=False, description="Align languages missing from `models` with whisperX's default.")
    max_loaded_models: int = Field(
        default=3, ge=1, le=32, description="Languages one replica keeps loaded; loading another evicts the "
                                            "least recently used (measured teardown).")
    idle_unload_s: float | None = Field(
        default=None, gt=0, description="Seconds a language's model may stay unused before it is unloaded; "
                                        "None: only evicted.")
    model_cache_dir: str | None = Field(default=None, description=MODEL_CACHE_DIR_HELP)
    nltk_data_dir: str | None = Field(default=None, description=NLTK_DATA_DIR_HELP)

    @field_validator("models")
    @classmethod
    def _normalise_languages(cls, models: dict[str, str]) -> dict[str, str]:
        return {language.strip().lower(): model for language, model in models.items()}

    def languages(self) -> dict[str, str]:
        """Every language this config aligns -> its model (whisperX's defaults first, `models` over them)."""
        defaults = whisperx_default_models() if self.use_whisperx_defaults else {}
        return {**defaults, **self.models}

    def spec_for(self, language: str) -> AlignmentModelSpec | None:
        """The holder config for `language`'s model, or None when this config aligns no such language."""
        model = self.languages().get(language)
        return None if model is None else self._spec(language, model)

    def specs(self) -> dict[str, AlignmentModelSpec]:
        """The holder config of every language this config aligns."""
        return {language: self._spec(language, model) for language, model in self.languages().items()}

    def _spec(self, language: str, model: str) -> AlignmentModelSpec:
        shared = self.model_dump(include=set(DeviceConfig.model_fields) | {"model_cache_dir", "nltk_data_dir"})
        return AlignmentModelSpec(language=language, model=model, **shared)


@functools.cache
def whisperx_default_models() -> dict[str, str]:
    """whisperX's default alignment model per language code (torchaudio bundle names and hub ids)."""
    from whisperx import alignment

    return {**alignment.DEFAULT_ALIGN_MODELS_HF, **alignment.DEFAULT_ALIGN_MODELS_TORCH}  # bundles win, as in whisperX


# --- the holder ------------------------------------------------------------------------------------


@dataclass
class AlignmentModel:
    """What whisperX's `load_align_model` returns: the torch module and its metadata (dictionary, type)."""

    module: Any
    metadata: dict


class AlignmentModelHolder(ModelHolder[AlignmentModelSpec, AlignmentModel]):
    """One language's wav2vec2 CTC model; `align` fills segments' words. Call it through `run`/`arun`."""

    def import_libraries(self) -> None:
        import torch  # noqa: F401
        import whisperx.alignment  # noqa: F401

    def load_model(self, config: AlignmentModelSpec) -> AlignmentModel:
        import torch
        import whisperx

        torch.set_num_threads(config.cpu_threads)
        ensure_punkt_tab(config.language, config.nltk_data_dir)  # before whisperX's align() needs it
        started = time.perf_counter()
        try:
            module, metadata = whisperx.load_align_model(
                config.language, config.device, model_name=config.model, model_dir=config.model_cache_dir)
        except Exception as e:  # whisperX wraps hub errors in ValueError; torchaudio raises URLError etc.
            logger.warning("alignment model %r for %r failed to load: %r", config.model, config.language, e)
            raise ModelUnavailable(
                f"alignment model {config.model!r} for language {config.language!r} could not be loaded "
                "(not in the local cache and the model hub unreachable, or not a wav2vec2 CTC model)"
            ) from e
        logger.info("alignment model %r for %r loaded in %.2f s", config.model, config.language,
                    time.perf_counter() - started)
        return AlignmentModel(module=module, metadata=metadata)

    def release_model(self, model: AlignmentModel) -> None:
        # A plain torch module: nothing to unload explicitly. The teardown drops the last reference,
        # then collects garbage and empties torch's CUDA cache.
        pass

    def model_name(self, config: AlignmentModelSpec) -> str:
        return f"{config.model} [{config.language}]"

    def align(self, audio: np.ndarray, segments: Sequence[Segment]) -> list[Segment]:
        """Segments with `words` filled, times in seconds of `audio` (16 kHz mono); on the owning thread."""
        model = self._require_model()
        samples = np.asarray(audio)
        if samples.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {samples.shape}")
        return [self._align_segment(model, samples, segment) for segment in segments]

    def _align_segment(self, model: AlignmentModel, samples: np.ndarray, segment: Segment) -> Segment:
        import torch
        import whisperx
        language = self.config.language
        texts = expected_words(segment.text, language)
        if not texts:
            return segment.with_words(())
        # whisperX turns the whole array into a tensor (torch warns on read-only arrays and shares their
        # memory); a float32 copy of just this segment costs less, and one call per segment keeps the
        # caller's segments instead of whisperX's sentence split.
        first = max(round(segment.start_s * SAMPLE_RATE_HZ), 0)
        last = max(round(segment.end_s * SAMPLE_RATE_HZ), first)
        clip = np.array(samples[first:last], dtype=np.float32)
        aligned: list[dict] = []
        if clip.size:
            # Words rejoined with single spaces: whisperX splits words on " " only, so a tab or a
            # newline would merge two of them.
            joiner = "" if joins_without_spaces(language) else " "
            request = [{"text": joiner.join(texts), "start": 0.0, "end": clip.size / SAMPLE_RATE_HZ}]
            result = whisperx.align(request, model.module, model.metadata, torch.from_numpy(clip),
                                    self.config.device)
            aligned = [word for part in result["segments"] for word in part["words"]]
        times = match_words(texts, aligned, offset_s=first / SAMPLE_RATE_HZ)
        return segment.with_words(fill_word_times(texts, times, segment.start_s, segment.end_s))


# --- Ray Serve wrapper (serve_app.app applies serve.deployment, so this module imports without Ray) ---


class AlignmentDeployment(ModelReplica[AlignmentConfig, AlignmentModelSpec, AlignmentModelHolder]):
    """Alignment replica: one model per language, loaded on first use, at most `max_loaded_models`."""

    config_cls = AlignmentConfig

    def __init__(self, holder_factory: type[AlignmentModelHolder] = AlignmentModelHolder) -> None:
        super().__init__(holder_factory)

    def model_specs(self, config: AlignmentConfig) -> dict[str, AlignmentModelSpec]:
        return config.specs()

    def model_spec(self, config: AlignmentConfig, key: str) -> AlignmentModelSpec | None:
        return config.spec_for(key)  # one language's spec, not all of whisperX's defaults per request

    def preloaded(self, config: AlignmentConfig) -> list[str]:
        return []  # a language's model loads when its first request comes

    def pool_bounds(self, config: AlignmentConfig) -> tuple[int, float | None]:
        return config.max_loaded_models, config.idle_unload_s

    async def align(self, audio: np.ndarray, segments: Sequence[Segment], language: str) -> list[Segment] | None:
        """The segments with wav2vec2 word times, or None when no model is configured for `language`."""
        code = language.strip().lower()
        if self.model_spec(self.config, code) is None:
            return None
        with self.track(len(audio) / SAMPLE_RATE_HZ) as work:
            return await self.call(code, "align", audio, segments, work=[work])

    async def languages(self) -> list[str]:
        """The languages this deployment aligns, as deployed."""
        return sorted(self.config.languages())
