"""Speech chunks: what voice activity detection finds in a request and what the ASR deployment decodes.

A request's audio is planned once (VAD, language) and then decoded chunk by chunk. Each `ChunkTask`
carries its own audio and everything that decides its decode, so that chunks of many requests can be
decoded in one batch, on any ASR replica, in any order, and each gives the same result as it would alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from core.audio import SAMPLE_RATE_HZ
from core.transcript import AsrResult, Segment, Word

# Which chunks a busy ASR replica decodes first (lower first; deployments/batching.py). Two levels
# because there are two kinds of caller: a person waiting on an interactive request, and background
# work (durable jobs) that nobody watches chunk by chunk. A finer scale would need a rule for who
# sets which number; these two are what the ingress knows about a request.
INTERACTIVE = 0
BACKGROUND = 1


@dataclass(frozen=True)
class SpeechChunk:
    """A stretch of audio that VAD found speech in, at most 30 s, in seconds of the request's audio."""

    start_s: float
    end_s: float

    def samples(self, audio: np.ndarray) -> np.ndarray:
        # The same sample arithmetic as whisperX's pipeline (int(), not round()).
        return audio[int(self.start_s * SAMPLE_RATE_HZ):int(self.end_s * SAMPLE_RATE_HZ)]


@dataclass(frozen=True)
class AsrPlan:
    """What the ASR deployment decided for one request before decoding it."""

    model: str  # the model id that decodes every chunk
    language: str
    chunks: tuple[SpeechChunk, ...]
    duration_s: float


@dataclass(frozen=True)
class ChunkTask:
    """One chunk to decode: its samples and every option that shapes its decode."""

    model: str
    chunk: SpeechChunk
    audio: np.ndarray  # the chunk's own samples, 16 kHz mono float32
    language: str
    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: str | None = None
    temperature: float | None = None  # None or 0: beam search; above 0: sampling at that temperature
    word_timestamps: bool = False
    # Where the previous chunk's speech ended (0 for the first): faster-whisper's word-time heuristics
    # compare a chunk's first word with the last speech before it. Taken from the plan, not from the
    # previous chunk's decode, so no chunk waits for another.
    previous_end_s: float = 0.0
    # INTERACTIVE or BACKGROUND: the order a busy replica takes waiting chunks in. It never changes
    # what a chunk decodes to, so it is not part of `search_key`.
    priority: int = INTERACTIVE

    @property
    def search_key(self) -> tuple[str, float | None]:
        """What must be equal for two chunks to share a batch: the model and its search (beam or
        sampling). Language, task and words may differ per chunk, and so may the prompt, as long as it is
        as many tokens long (the ASR holder groups by that, since it takes the tokenizer to know)."""
        return self.model, self.temperature or None


@dataclass(frozen=True)
class DecodedChunk:
    """What Whisper made of one chunk: its text and tokens, and its words when asked for."""

    chunk: SpeechChunk
    text: str
    tokens: tuple[int, ...]
    avg_logprob: float
    words: tuple[Word, ...] = field(default=())
    # Speech bounds from the words (faster-whisper moves a segment's edges to its first and last
    # word); the chunk's own bounds without words.
    start_s: float = 0.0
    end_s: float = 0.0


def chunk_tasks(plan: AsrPlan, audio: np.ndarray, *, task: Literal["transcribe", "translate"] = "transcribe",
                prompt: str | None = None, temperature: float | None = None,
                word_timestamps: bool = False, priority: int = INTERACTIVE) -> list[ChunkTask]:
    """The plan's chunks as tasks, in order, each with its own samples cut from `audio` and `priority`
    (INTERACTIVE or BACKGROUND)."""
    return [ChunkTask(model=plan.model, chunk=chunk, audio=chunk.samples(audio), language=plan.language,
                      task=task, prompt=prompt, temperature=temperature, word_timestamps=word_timestamps,
                      previous_end_s=plan.chunks[i - 1].end_s if i else 0.0, priority=priority)
            for i, chunk in enumerate(plan.chunks)]


def assemble(plan: AsrPlan, decoded: list[DecodedChunk], *, word_timestamps: bool) -> AsrResult:
    """One request's result from its decoded chunks, given in the plan's order; chunks that decoded to
    no text (a VAD false alarm) leave no segment."""
    segments = tuple(Segment(text=item.text.strip(), start_s=item.start_s, end_s=item.end_s, words=item.words,
                             avg_logprob=item.avg_logprob)
                     for item in decoded if item.text.strip())
    return AsrResult(language=plan.language, segments=segments, duration_s=plan.duration_s,
                     word_source="whisper" if word_timestamps else None)
