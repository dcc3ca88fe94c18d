"""Value types that travel between the deployments and the ingress.

Plain dataclasses: they pickle cheaply through Ray's object store and carry no model state.
All times are seconds from the start of the decoded audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

WordSource = Literal["alignment", "whisper"]


@dataclass(frozen=True)
class Word:
    """One word with its time span; `speaker` is set once turns are assigned."""

    text: str
    start_s: float
    end_s: float
    probability: float | None = None
    speaker: str | None = None


@dataclass(frozen=True)
class Segment:
    """One stretch of speech as the recogniser returned it, with its words when known."""

    text: str
    start_s: float
    end_s: float
    words: tuple[Word, ...] = ()
    speaker: str | None = None
    avg_logprob: float | None = None

    def with_words(self, words: tuple[Word, ...]) -> Segment:
        return replace(self, words=words)


@dataclass(frozen=True)
class SpeakerTurn:
    """A span of time in which one speaker talks (turns of different speakers may overlap)."""

    speaker: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class AsrOptions:
    """Per-request decoding options for the ASR deployment."""

    task: Literal["transcribe", "translate"] = "transcribe"
    model: str | None = None  # the id the client asked for; None when it used an alias such as whisper-1
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    word_timestamps: bool = False


@dataclass(frozen=True)
class AsrResult:
    """What the ASR deployment returns: segments, the language used and where words came from."""

    language: str
    segments: tuple[Segment, ...]
    duration_s: float
    word_source: WordSource | None = None


# How long a known speaker's reference clip may be, seconds. pyannote's clustering trusts no embedding of
# less than 2 s of one speaker (20% of a chunk), and 10 s is its chunk, the most speech any one of a diarized
# speaker's embeddings comes from.
REFERENCE_MIN_S = 2.0
REFERENCE_MAX_S = 10.0


@dataclass(frozen=True, eq=False)
class SpeakerReference:
    """A known speaker's voice under `name`, given one of two ways (exactly one of them is set):
    - `audio`: REFERENCE_MIN_S-REFERENCE_MAX_S of that speaker alone, as 16 kHz mono float32 samples,
      embedded on every request that sends it;
    - `embedding`: the speaker as enrolled once, the 1-D vector the diarization deployment's `embed` made,
      with `embedding_model`, the identity of the model that made it (its answer's "embedding_model"), so
      that a voice enrolled with another model is refused rather than compared with the wrong one.
    Compared by identity (numpy arrays have no truth value for `==`)."""

    name: str
    audio: np.ndarray | None = None
    embedding: np.ndarray | None = None
    embedding_model: str | None = None

    def __post_init__(self) -> None:
        if (self.audio is None) == (self.embedding is None):
            raise ValueError(f"the reference of {self.name!r} needs exactly one of audio and embedding")
        if self.embedding_model is not None and self.embedding is None:
            raise ValueError(f"the reference of {self.name!r} names an embedding model but has no embedding")


@dataclass(frozen=True)
class SpeakerOptions:
    """Diarization options, all optional: speaker-count hints, and known speakers' voices to name the
    diarized speakers after."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    references: tuple[SpeakerReference, ...] = ()


@dataclass
class Transcript:
    """The final result the ingress renders in the requested format."""

    task: Literal["transcribe", "translate"]
    language: str
    duration_s: float
    segments: list[Segment] = field(default_factory=list)
    word_source: WordSource | None = None
    speakers: list[str] = field(default_factory=list)
    # What of the upload could not be decoded, in words for the user (serve_app.media).
    warnings: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]
