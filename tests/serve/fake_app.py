"""The app graph of `serve_app.app:build_app` with fake holders: every deployment real, no model weights.

    import_path: tests.serve.fake_app:build      args: AppArgs, as for build_app

Each fake holder loads a small numpy array instantly and, when it is torn down, appends a line
`<holder class> <model name, as status shows it> <pid>` to the file named by $FAKE_TEARDOWN_LOG (if
set), so a test can see which teardowns ran in the replicas' processes.

Under load, the fake ASR and diarization holders can be made slow and watched: each ASR `decode` batch
and each `diarize` sleeps $FAKE_MODEL_DELAY_S seconds (if set), so calls are in flight when a replica is killed,
and first appends `<holder class> <pid> <samples>` to the file named by $FAKE_CALL_LOG (if set), so a
test that sends each request with its own length of audio can see which calls were sent twice. Each ASR
`decode` batch also appends `<pid> <samples of each chunk, comma-separated>` to $FAKE_BATCH_LOG (if set),
so a test can see which chunks shared a batch, and on which replica.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from ray.serve import Application

from core.audio import SAMPLE_RATE_HZ
from core.chunks import AsrPlan, ChunkTask, DecodedChunk, SpeechChunk
from core.errors import ModelUnavailable
from core.transcript import AsrOptions, Segment, SpeakerOptions, SpeakerTurn, Word
from deployments.alignment import AlignmentModel, AlignmentModelHolder, AlignmentModelSpec
from deployments.asr import AsrConfig, AsrHolder
from deployments.diarization import DiarizationConfig, DiarizationHolder
from serve_app.app import build_graph
from serve_app.settings import AppArgs

TEARDOWN_LOG_ENV = "FAKE_TEARDOWN_LOG"
DELAY_ENV = "FAKE_MODEL_DELAY_S"
CALL_LOG_ENV = "FAKE_CALL_LOG"
BATCH_LOG_ENV = "FAKE_BATCH_LOG"
# Resources and timing only; the graph and every user_config are build_app's. A tenth of a CPU each: the
# graph fits on two cores beside Serve's own actors. An idle replica stops after one 0.1 s drain check,
# not Serve's default 2 s.
OPTIONS: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0.1}, "graceful_shutdown_wait_loop_s": 0.1}


def _log_teardown(holder: Any) -> None:
    """Called from `release_model`, which the measured teardown runs on the holder's own thread."""
    path = os.environ.get(TEARDOWN_LOG_ENV)
    if path:
        with open(path, "a") as log:
            log.write(f"{type(holder).__name__} {holder.model_name(holder.config)} {os.getpid()}\n")


def _model_call(holder: Any, audio: np.ndarray, *, delay: bool = True) -> None:
    """The start of a fake model call: logged and slowed down when the environment says so."""
    path = os.environ.get(CALL_LOG_ENV)
    if path:
        with open(path, "a") as log:
            log.write(f"{type(holder).__name__} {os.getpid()} {len(audio)}\n")
    if delay:
        time.sleep(float(os.environ.get(DELAY_ENV, "0")))


def _words(text: str, start_s: float, end_s: float) -> tuple[Word, ...]:
    parts = text.split()
    step = (end_s - start_s) / len(parts)
    return tuple(Word(part, start_s + i * step, start_s + (i + 1) * step) for i, part in enumerate(parts))


class FakeAsrHolder(AsrHolder):
    """The real holder's identity and language rules (English-only when the source ends in .en)."""

    def import_libraries(self) -> None:
        pass

    def check_config(self, config: AsrConfig) -> None:
        if config.model.startswith("missing/"):  # a source that cannot load, for failed updates
            raise ModelUnavailable(f"no model {config.model}", param="model")

    def load_model(self, config: AsrConfig) -> np.ndarray:
        return np.ones(1024, dtype=np.uint8)

    def release_model(self, model: np.ndarray) -> None:
        _log_teardown(self)

    @property
    def multilingual(self) -> bool:
        return not self.config.model.endswith(".en")

    def plan(self, audio: np.ndarray, options: AsrOptions, model_id: str) -> AsrPlan:
        """One chunk per 30 s of audio, as if all of it were speech."""
        self._require_model()
        language = self._check_language(options.language, options.task) or "en"
        duration_s = len(audio) / SAMPLE_RATE_HZ
        starts = np.arange(0.0, duration_s, 30.0)
        chunks = tuple(SpeechChunk(float(s), float(min(s + 30.0, duration_s))) for s in starts)
        return AsrPlan(model=model_id, language=language, chunks=chunks, duration_s=duration_s)

    def decode(self, tasks: list[ChunkTask]) -> list[DecodedChunk]:
        """'<task> by <model source>' per chunk, its words spread evenly; each batch takes
        $FAKE_MODEL_DELAY_S."""
        self._require_model()
        for task in tasks:
            _model_call(self, task.audio, delay=False)
        path = os.environ.get(BATCH_LOG_ENV)
        if path:
            with open(path, "a") as log:
                log.write(f"{os.getpid()} {','.join(str(len(task.audio)) for task in tasks)}\n")
        time.sleep(float(os.environ.get(DELAY_ENV, "0")))
        decoded = []
        for task in tasks:
            text = f"{task.task} by {self.config.model}"
            words = _words(text, task.chunk.start_s, task.chunk.end_s) if task.word_timestamps else ()
            decoded.append(DecodedChunk(task.chunk, text, (), 0.0, words=words, start_s=task.chunk.start_s,
                                        end_s=task.chunk.end_s))
        return decoded

    def describe(self) -> dict[str, Any]:
        return {"source": self.config.model, "multilingual": self.multilingual}


class FakeAlignmentHolder(AlignmentModelHolder):
    def import_libraries(self) -> None:
        pass

    def load_model(self, config: AlignmentModelSpec) -> AlignmentModel:
        return AlignmentModel(module=np.ones(1024, dtype=np.uint8), metadata={})

    def release_model(self, model: AlignmentModel) -> None:
        _log_teardown(self)

    def align(self, audio: np.ndarray, segments: Any) -> list[Segment]:
        self._require_model()
        return [s.with_words(_words(s.text, s.start_s, s.end_s)) for s in segments]


class FakeDiarizationHolder(DiarizationHolder):
    def import_libraries(self) -> None:
        pass

    def check_config(self, config: DiarizationConfig) -> None:
        pass

    def load_model(self, config: DiarizationConfig) -> np.ndarray:
        return np.ones(1024, dtype=np.uint8)

    def release_model(self, model: np.ndarray) -> None:
        _log_teardown(self)

    def diarize(self, audio: np.ndarray, options: SpeakerOptions) -> list[SpeakerTurn]:
        """One speaker throughout: SPEAKER_00, or the first known speaker's name if any is given."""
        self._require_model()
        _model_call(self, audio)
        name = options.references[0].name if options.references else "SPEAKER_00"
        return [SpeakerTurn(name, 0.0, len(audio) / SAMPLE_RATE_HZ)]

    def embed(self, clips: list[np.ndarray]) -> tuple[np.ndarray, str]:
        """A voice of 3 dimensions that says how many clips made it."""
        self._require_model()
        voice = np.array([len(clips), 1.0, 0.0], dtype=np.float32)
        return voice / np.linalg.norm(voice), "fake:voices"


def build(args: dict[str, Any]) -> Application:
    """`build_app`'s own graph (ingress → ASR, alignment, diarization), each model deployment bound to a
    fake holder through its constructor, with the OPTIONS above."""
    holders = {"AsrDeployment": FakeAsrHolder, "AlignmentDeployment": FakeAlignmentHolder,
               "DiarizationDeployment": FakeDiarizationHolder}
    return build_graph(AppArgs.model_validate(args or {}), holders, **OPTIONS)
