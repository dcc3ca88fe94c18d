"""Word alignment with wav2vec2 CTC models through whisperX: config, one-language holder, Serve wrapper.

One `AlignmentModelHolder` holds one language's model; the Serve wrapper at the bottom keeps one holder
per language in Serve's multiplexed LRU, so evicting a language tears down (and measures) exactly
that model. A language with no model is not aligned here: the caller keeps Whisper's own word times.

whisperX (and with it torch and transformers, 30-40 s to import on the 2-core machine) is imported
only where a model is loaded or used, so the ingress can ask `AlignmentConfig.model_for` cheaply.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationError, field_validator
from whisperx.utils import PUNKT_LANGUAGES  # a plain table; whisperx.utils imports nothing heavy

from core.audio import SAMPLE_RATE_HZ
from core.errors import ModelUnavailable
from core.transcript import Segment, Word
from deployments.gpu_memory import TeardownReport
from deployments.holder import DeviceConfig, ModelHolder, residue_problem
from deployments.replica import replica_identity, route_logs_to_serve

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
    model_cache_dir: str | None = Field(default=None, description=MODEL_CACHE_DIR_HELP)
    nltk_data_dir: str | None = Field(default=None, description=NLTK_DATA_DIR_HELP)

    @field_validator("models")
    @classmethod
    def _normalise_languages(cls, models: dict[str, str]) -> dict[str, str]:
        return {language.strip().lower(): model for language, model in models.items()}

    def model_for(self, language: str) -> str | None:
        """The model that would align `language`, or None: no alignment, keep Whisper's word times."""
        code = language.strip().lower()
        if code in self.models:
            return self.models[code]
        if self.use_whisperx_defaults:
            return whisperx_default_models().get(code)
        return None

    def spec_for(self, language: str) -> AlignmentModelSpec | None:
        """The holder config for `language`, or None when no model serves it."""
        model = self.model_for(language)
        if model is None:
            return None
        shared = self.model_dump(exclude={"models", "use_whisperx_defaults"})
        return AlignmentModelSpec(language=language.strip().lower(), model=model, **shared)


@functools.cache
def whisperx_default_models() -> dict[str, str]:
    """whisperX's default alignment model per language code (torchaudio bundle names and hub ids)."""
    # Read from whisperX's source instead of importing it: importing whisperx.alignment costs torch
    # and transformers, which a process that only routes requests should not load.
    names = ("DEFAULT_ALIGN_MODELS_HF", "DEFAULT_ALIGN_MODELS_TORCH")
    tables: dict[str, Any] = {}
    try:
        spec = importlib.util.find_spec("whisperx.alignment")
        source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and isinstance(target := node.targets[0], ast.Name):
                if target.id in names:
                    tables[target.id] = ast.literal_eval(node.value)
    except (OSError, SyntaxError, ValueError):
        pass
    hub, bundles = tables.get(names[0]), tables.get(names[1])
    if not isinstance(hub, dict) or not isinstance(bundles, dict):  # whisperX moved them: pay the import
        from whisperx import alignment

        hub, bundles = alignment.DEFAULT_ALIGN_MODELS_HF, alignment.DEFAULT_ALIGN_MODELS_TORCH
    return {**hub, **bundles}  # whisperX tries torchaudio bundles first


# --- NLTK punkt_tab, provided without nltk.download ------------------------------------------------

# whisperX's align() calls nltk.data.load("tokenizers/punkt_tab/<name>.pickle"), which NLTK turns into
# PunktTokenizer(<name>) reading these four files from <data root>/tokenizers/punkt_tab/<name>/; when
# they are missing it calls nltk.download("punkt_tab") (network). Empty files are a valid Punkt model
# that splits sentences at every period; that is enough, because align() below puts each segment's
# words back into the caller's segment and discards whisperX's sentence boundaries.
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


def punkt_language(language_code: str) -> str:
    """The punkt_tab model name whisperX asks for when aligning `language_code` ('english' by default)."""
    return PUNKT_LANGUAGES.get(language_code, "english")


def default_nltk_data_dir() -> Path:
    """The NLTK data root used when none is configured: under the user's cache directory."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "transcription-service" / "nltk_data"


def ensure_punkt_tab(language_code: str, data_dir: str | Path | None = None) -> Path:
    """Write a minimal punkt_tab model for `language_code` unless present; put its root on NLTK's path.

    Returns the model's folder. Idempotent and safe to run from several processes at once.
    """
    import nltk

    root = Path(data_dir).expanduser() if data_dir else default_nltk_data_dir()
    folder = root / "tokenizers" / "punkt_tab" / punkt_language(language_code)
    if not all((folder / name).is_file() for name in PUNKT_FILES):
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed into place: a replica sharing this directory never reads a model
        # with files missing (which would send whisperX to nltk.download).
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        for name in PUNKT_FILES:
            (staging / name).touch()
        staging.chmod(0o755)
        try:
            staging.rename(folder)
        except OSError:  # another process was first, or an incomplete folder is there: complete it
            shutil.rmtree(staging, ignore_errors=True)
            for name in PUNKT_FILES:
                (folder / name).touch()
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))  # appended: a real punkt_tab installed by the user still wins
    return folder


# --- word times --------------------------------------------------------------------------------------

WordTimes = tuple[float, float, float | None]  # start_s, end_s, probability


def expected_words(text: str, language: str) -> list[str]:
    """The words whisperX makes of `text`: whitespace-separated, or characters where no spaces are used."""
    from whisperx.alignment import LANGUAGES_WITHOUT_SPACES

    if language in LANGUAGES_WITHOUT_SPACES:
        return [char for char in text if not char.isspace()]
    return text.split()


def match_words(expected: Sequence[str], aligned: Sequence[dict], offset_s: float) -> list[WordTimes | None]:
    """Times whisperX gave each expected word (shifted by `offset_s`), None where it gave none."""
    # whisperX's words come from the very text we passed, in order, so they are a subsequence of the
    # expected words: an in-order walk pairs them.
    times: list[WordTimes | None] = []
    index = 0
    for text in expected:
        if index < len(aligned) and aligned[index]["word"] == text:
            word = aligned[index]
            index += 1
            if "start" in word and "end" in word:
                score = word.get("score")
                times.append((float(word["start"]) + offset_s, float(word["end"]) + offset_s,
                              None if score is None else float(score)))
                continue
        times.append(None)
    return times


def fill_word_times(texts: Sequence[str], times: Sequence[WordTimes | None], start_s: float,
                    end_s: float) -> tuple[Word, ...]:
    """Words with times in seconds: inside [start_s, end_s], in order, the unaligned ones interpolated.

    A run of unaligned words shares the gap between its aligned neighbours (or the segment's edges)
    in proportion to the words' lengths in characters; their probability is None.
    """
    end_s = max(end_s, start_s)
    placed: list[WordTimes | None] = []
    previous_end_s = start_s
    for known in times:
        if known is None:
            placed.append(None)
            continue
        # CTC paths are ordered; clamping guards against rounding and a segment longer than its audio.
        word_start_s = min(max(known[0], previous_end_s), end_s)
        word_end_s = min(max(known[1], word_start_s), end_s)
        placed.append((word_start_s, word_end_s, known[2]))
        previous_end_s = word_end_s

    words: list[Word] = []
    i = 0
    while i < len(texts):
        current = placed[i]
        if current is not None:
            words.append(Word(texts[i], current[0], current[1], current[2]))
            i += 1
            continue
        j = i
        while j < len(texts) and placed[j] is None:
            j += 1
        left_s = words[-1].end_s if words else start_s
        following = placed[j] if j < len(texts) else None
        right_s = max(following[0] if following is not None else end_s, left_s)
        weights = [max(len(text), 1) for text in texts[i:j]]
        unit_s = (right_s - left_s) / sum(weights)
        cursor_s = left_s
        for text, weight in zip(texts[i:j], weights, strict=True):
            next_s = min(cursor_s + weight * unit_s, right_s)
            words.append(Word(text, cursor_s, next_s, None))
            cursor_s = next_s
        i = j
    return tuple(words)


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
        from whisperx.alignment import LANGUAGES_WITHOUT_SPACES

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
            joiner = "" if language in LANGUAGES_WITHOUT_SPACES else " "
            request = [{"text": joiner.join(texts), "start": 0.0, "end": clip.size / SAMPLE_RATE_HZ}]
            result = whisperx.align(request, model.module, model.metadata, torch.from_numpy(clip),
                                    self.config.device)
            aligned = [word for part in result["segments"] for word in part["words"]]
        times = match_words(texts, aligned, offset_s=first / SAMPLE_RATE_HZ)
        return segment.with_words(fill_word_times(texts, times, segment.start_s, segment.end_s))


# --- Ray Serve wrapper (serve_app.app applies serve.deployment, so this module imports without Ray) ---

# Languages whose models one replica keeps loaded; Serve's multiplexing evicts the least recently used
# (and calls its __del__, which tears it down) and routes each language to replicas that hold it.
MAX_LANGUAGES_PER_REPLICA = 3


class _EvictableHolder(AlignmentModelHolder):
    """A holder Serve's multiplexing can evict: Serve calls `__del__` on the evicted model object."""

    def __del__(self) -> None:
        self.close()


class AlignmentDeployment:
    """Alignment replica: one model per language, loaded on first use, LRU-bounded by Serve."""

    def __init__(self, holder_factory: Callable[..., AlignmentModelHolder] = _EvictableHolder) -> None:
        self._holder_factory = holder_factory
        self._config = AlignmentConfig()
        self._holders: dict[str, AlignmentModelHolder] = {}  # every holder loaded, evicted ones until seen
        self._last_teardown: TeardownReport | None = None
        self._holder_for = self._multiplexed_loader()
        route_logs_to_serve()

    def _multiplexed_loader(self) -> Callable[[str], Awaitable[AlignmentModelHolder]]:
        from ray import serve

        # A closure rather than a method: Serve keeps its LRU on the decorated object, one per replica.
        @serve.multiplexed(max_num_models_per_replica=MAX_LANGUAGES_PER_REPLICA)
        async def load(language: str) -> AlignmentModelHolder:
            spec = self._config.spec_for(language)
            if spec is None:
                raise ModelUnavailable(f"no alignment model is configured for language {language!r}")
            # Loading takes seconds: keep the replica's event loop free meanwhile.
            holder = await asyncio.get_running_loop().run_in_executor(None, self._holder_factory, spec)
            self._holders[language] = holder
            return holder

        return load

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Validate and apply; models already loaded keep serving until evicted or replaced by language."""
        try:
            config = AlignmentConfig.model_validate(user_config)
        except ValidationError as e:
            raise ValueError(f"invalid user_config for AlignmentDeployment: {e}") from e
        self._config = config

    async def align(self, audio: np.ndarray, segments: Sequence[Segment]) -> list[Segment]:
        """Fill the segments' words with the model of the request's language (its multiplexed model id)."""
        from ray import serve

        language = serve.get_multiplexed_model_id()
        holder = await self._holder_for(language)
        return await holder.arun(holder.align, audio, segments)

    def _sweep(self) -> None:
        """Forget evicted holders, keeping the newest teardown report."""
        for language, holder in list(self._holders.items()):
            if holder.model is None:
                if holder.last_teardown is not None:
                    self._last_teardown = holder.last_teardown
                del self._holders[language]

    def check_health(self) -> None:
        """Raise so Serve replaces this replica when a model, loaded or evicted, kept memory it should not."""
        self._sweep()
        for holder in self._holders.values():
            problem = holder.health_problem()
            if problem is not None:
                raise RuntimeError(problem)
        problem = residue_problem(self._last_teardown, self._config)  # a model evicted since
        if problem is not None:
            raise RuntimeError(problem)

    def status(self) -> dict[str, Any]:
        self._sweep()
        return {
            "holder": type(self).__name__,
            "languages_loaded": {lang: h.status() for lang, h in self._holders.items()},
            "languages_configured": sorted(self._config.models),
            "whisperx_defaults": self._config.use_whisperx_defaults,
            "last_teardown": self._last_teardown.as_dict() if self._last_teardown else None,
            **replica_identity(),
        }

    def __del__(self) -> None:
        holders, self._holders = self._holders, {}
        for holder in holders.values():
            holder.close()  # logs its teardown report
