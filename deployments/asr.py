"""Speech recognition: faster-whisper models decoded chunk by chunk after one pass of pyannote VAD.

`AsrHolder` holds one model and works without Ray; `AsrDeployment` at the bottom serves every model its
config lists, chosen per request, through the replica's model pool.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from core.audio import SAMPLE_RATE_HZ
from core.chunks import AsrPlan, ChunkTask, DecodedChunk, assemble, chunk_tasks
from core.errors import BadRequest, ModelUnavailable, UnknownModel, UnsupportedLanguage
from core.transcript import AsrOptions, AsrResult
from deployments import bundled, whisper_decode
from deployments.batching import WhileBusy
from deployments.holder import DeviceConfig, ModelHolder
from deployments.replica import ModelReplica
from deployments.workload import Work

logger = logging.getLogger(__name__)


class AsrSettings(DeviceConfig):
    """How Whisper models run and decode: shared by every model the ASR deployment serves."""

    compute_type: str = Field("int8", description="CTranslate2 compute type: int8, int8_float16, float16, float32")
    batch_size: int = Field(8, ge=1, le=128, description="speech chunks decoded per batch, from one request or "
                            "many (each chunk is padded to Whisper's 30 s window, so chunks, not seconds, "
                            "are what a batch costs)")
    batch_wait_s: float = Field(0.01, ge=0, le=1, description="how long an idle replica waits for more chunks "
                                "after the first before it decodes (a busy one batches what arrived meanwhile), "
                                "seconds")
    beam_size: int = Field(5, ge=1, le=20, description="beam width")
    language: str | None = Field(None, description="default language code when a request gives none; "
                                 "None detects it per request (English-only models always use en)")
    vad_onset: float = Field(0.5, gt=0, lt=1, description="VAD speech-start probability threshold")
    vad_offset: float = Field(0.363, gt=0, lt=1, description="VAD speech-end probability threshold")
    chunk_size_s: int = Field(30, ge=1, le=30, description="longest VAD chunk handed to Whisper, seconds")
    download_dir: str | None = Field(None, description="where hub models are cached (a mounted volume on Kubernetes)")


class AsrConfig(AsrSettings):
    """One Whisper model and how it runs: what one `AsrHolder` loads."""

    model: str = Field("bundled/tiny.en", description="faster-whisper size name (large-v3), hub id, local "
                       "CTranslate2 directory, or bundled/tiny.en | bundled/base (weights from installed packages)")


class AsrDeploymentConfig(AsrSettings):
    """The ASR deployment's `user_config`: the models it offers and how many it keeps loaded."""

    models: dict[str, str] = Field(
        default_factory=lambda: {"tiny.en": "bundled/tiny.en"},
        description="model id (what clients send as `model`) -> where its weights come from: a faster-whisper "
                    "size name, hub id, local CTranslate2 directory, or bundled/tiny.en | bundled/base")
    default_model: str = Field("tiny.en", description="the model id used when a request names none or an alias "
                               "such as whisper-1; loaded at start-up and never unloaded for being idle")
    translation_model: str | None = Field(None, description="model id used for translations that name no model "
                                          "when the default model is English-only; None: such requests get a "
                                          "400 naming the models to choose from")
    max_loaded_models: int = Field(2, ge=1, le=16, description="models one replica holds at once; loading "
                                   "another evicts the least recently used (measured teardown)")
    idle_unload_s: float | None = Field(900, gt=0, description="seconds a model other than the default may "
                                        "stay unused before it is unloaded; None: never")

    @model_validator(mode="after")
    def _models_named_exist(self) -> AsrDeploymentConfig:
        if not self.models:
            raise ValueError("models: list at least one model")
        for field in ("default_model", "translation_model"):
            value = getattr(self, field)
            if value is not None and value not in self.models:
                raise ValueError(f"{field} {value!r} is not one of models: {sorted(self.models)}")
        return self

    def spec_for(self, model_id: str) -> AsrConfig:
        """The holder config of one offered model."""
        shared = self.model_dump(include=set(AsrSettings.model_fields))
        return AsrConfig(model=self.models[model_id], **shared)


class AsrHolder(ModelHolder[AsrConfig, Any]):
    """Holds one whisperX `FasterWhisperPipeline` (model + VAD); `transcribe` runs on the owning thread."""

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
            # whisperX builds the model and its pyannote VAD; the decode itself is whisper_decode's.
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

    def _check_language(self, requested: str | None, task: str) -> str | None:
        """The language to decode in (None: detect); English-only models refuse other languages."""
        if self.multilingual:
            return requested or self.config.language
        if requested not in (None, "en"):
            raise UnsupportedLanguage(f"the model {self.config.model} understands English only; send "
                                      "language=en, omit it, or name a multilingual model", param="language")
        if task == "translate":
            raise BadRequest(f"the model {self.config.model} is English-only and cannot translate; "
                             "name a multilingual model", param="model")
        return "en"

    def plan(self, audio: np.ndarray, options: AsrOptions, model_id: str) -> AsrPlan:
        """VAD once over 16 kHz mono float32 audio, and the language to decode in (detected in the
        first speech when the request gives none). Runs on the owning thread."""
        pipeline = self._require_model()
        language = self._check_language(options.language, options.task)
        audio = whisper_decode.writeable(audio)  # whisperX's VAD hands the array to torch
        config = self.config
        chunks = whisper_decode.speech_chunks(pipeline.vad_model, audio, chunk_size_s=config.chunk_size_s,
                                              onset=config.vad_onset, offset=config.vad_offset)
        language = language or whisper_decode.detect_language(pipeline, audio, chunks)
        return AsrPlan(model=model_id, language=language, chunks=tuple(chunks),
                       duration_s=len(audio) / SAMPLE_RATE_HZ)

    def decode(self, tasks: list[ChunkTask]) -> list[DecodedChunk]:
        """Decode chunks (of one request or many) in batches of the configured size; words from the
        same tokens where a chunk asks for them. Runs on the owning thread."""
        return whisper_decode.decode(self._require_model(), tasks, beam_size=self.config.beam_size,
                                     batch_size=self.config.batch_size)

    def transcribe(self, audio: np.ndarray, options: AsrOptions) -> AsrResult:
        """Plan and decode one request here: what the ASR deployment does across its replicas, in one
        holder (for use without Ray). Runs on the owning thread."""
        plan = self.plan(audio, options, model_id=self.config.model)
        tasks = chunk_tasks(plan, np.asarray(audio), task=options.task, prompt=options.prompt,
                            temperature=options.temperature, word_timestamps=options.word_timestamps)
        return assemble(plan, self.decode(tasks), word_timestamps=options.word_timestamps)

    def describe(self) -> dict[str, Any]:
        """What the loaded model can do."""
        return {"source": self.config.model, "multilingual": self.multilingual}


# --- Ray Serve wrapper (serve_app.app applies serve.deployment, so this module imports without Ray) ---


class AsrDeployment(ModelReplica[AsrDeploymentConfig, AsrConfig, AsrHolder]):
    """Speech recognition replica serving every model its config lists, each loaded on first use.

    Replicas, resources and autoscaling come from serve_config.yaml.
    """

    config_cls = AsrDeploymentConfig

    def __init__(self, holder_factory: type[AsrHolder] = AsrHolder) -> None:
        super().__init__(holder_factory)
        # Whether the weights behind a source are multilingual, learnt from the loaded model; keyed by
        # source, so new weights behind a model id are asked again.
        self._multilingual: dict[str, bool] = {}
        self._decoders: dict[str, WhileBusy[tuple[ChunkTask, Work], DecodedChunk]] = {}  # per model id

    def model_specs(self, config: AsrDeploymentConfig) -> dict[str, AsrConfig]:
        return {model_id: config.spec_for(model_id) for model_id in config.models}

    def model_spec(self, config: AsrDeploymentConfig, key: str) -> AsrConfig | None:
        return config.spec_for(key) if key in config.models else None

    def preloaded(self, config: AsrDeploymentConfig) -> list[str]:
        return [config.default_model]

    def pool_bounds(self, config: AsrDeploymentConfig) -> tuple[int, float | None]:
        return config.max_loaded_models, config.idle_unload_s

    async def _is_multilingual(self, model_id: str) -> bool:
        source = self.config.models[model_id]
        if source not in self._multilingual:
            described = await self.call(model_id, "describe")  # loads the model if it is not loaded
            self._multilingual[source] = bool(described["multilingual"])
        return self._multilingual[source]

    async def _model_for(self, options: AsrOptions) -> str:
        """The model id a request runs on: the one it names, else the default; a translation that names
        no model and whose default is English-only goes to the configured translation model."""
        config = self.config
        if options.model is not None and options.model not in config.models:
            raise UnknownModel(f"unknown model {options.model!r}; this server offers "
                               f"{', '.join(sorted(config.models))} (or an alias listed by GET /v1/models)",
                               param="model")
        model_id = options.model or config.default_model
        if options.task != "translate" or await self._is_multilingual(model_id):
            return model_id
        if options.model is None and config.translation_model is not None:
            return config.translation_model
        others = sorted(set(config.models) - {model_id})
        hint = f"name a multilingual one: model={' or model='.join(others)}" if others else \
            "this server offers no multilingual model"
        raise BadRequest(f"the model {model_id} is English-only and cannot translate; {hint}", param="model")

    async def plan(self, audio: np.ndarray, options: AsrOptions) -> AsrPlan:
        """The model, language and speech chunks of one request: VAD once, on this replica."""
        model_id = await self._model_for(options)
        # VAD runs over the whole file: its audio is what this call holds.
        with self.track(len(audio) / SAMPLE_RATE_HZ) as work:
            plan: AsrPlan = await self.call(model_id, "plan", audio, options, model_id, work=[work])
        return plan

    async def decode_chunk(self, task: ChunkTask) -> DecodedChunk:
        """One chunk, decoded in a batch with whatever other chunks (of any request) reach this replica
        while its model is busy, up to `batch_size` (deployments/batching.py says why not `@serve.batch`).
        Each model has its own queue: chunks for different models do not wait for each other."""
        # Whisper pads every chunk to 30 s, but the chunk's own length is the audio it stands for.
        with self.track(task.chunk.end_s - task.chunk.start_s) as work:
            (result,) = await self._decoder(task.model).submit([(task, work)])
        self.chunk_waited(work)
        if isinstance(result, BaseException):
            raise result
        return result

    def _decoder(self, model_id: str) -> WhileBusy[tuple[ChunkTask, Work], DecodedChunk]:
        decoder = self._decoders.get(model_id)
        if decoder is None:
            async def decode(batch: list[tuple[ChunkTask, Work]]) -> list[DecodedChunk]:
                tasks, work = zip(*batch, strict=True)
                decoded: list[DecodedChunk] = await self.call(model_id, "decode", list(tasks), work=work)
                return decoded

            # Interactive chunks go into the next batch ahead of waiting background ones (core/chunks.py).
            decoder = self._decoders[model_id] = WhileBusy(decode, self.config.batch_size,
                                                           priority=lambda item: item[0].priority)
        decoder.max_size, decoder.wait_s = self.config.batch_size, self.config.batch_wait_s  # as configured now
        return decoder

    async def describe(self) -> dict[str, Any]:
        """The models offered, which one is the default, and which are loaded on this replica."""
        config, loaded = self.config, set(self._pool.loaded())
        return {"default_model": config.default_model, "translation_model": config.translation_model,
                "models": [{"id": model_id, "source": source, "loaded": model_id in loaded,
                            "default": model_id == config.default_model,
                            "multilingual": self._multilingual.get(source)}  # None: not known yet
                           for model_id, source in config.models.items()]}
