"""How far each request in flight has got: decoded, planned (VAD), chunks transcribed of total, words, speakers.

The pipeline moves a request's `Progress` forward; the ingress lists those in flight under `requests`
in `GET /v1/models/status`, and a long request logs a line at each quarter of its chunks, so an operator
can tell a slow request from a stuck one. A job store can keep the same object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

LONG_REQUEST_CHUNKS = 8
"""Requests with at least this many speech chunks (about 4 minutes of speech) log their progress."""


@dataclass
class Progress:
    """One request's progress; None for a stage means not reached yet, or not asked for."""

    request_id: str
    audio_s: float | None = None  # known once decoded
    chunks_total: int | None = None  # known once VAD has run
    chunks_done: int = 0
    aligned: bool | None = None  # None: no alignment asked for
    diarized: bool | None = None  # None: no diarization asked for
    started: float = field(default_factory=time.monotonic)
    stage_s: dict[str, float] = field(default_factory=dict)  # wall time of each stage finished
    # Called with the transcript's text as it grows, in order: each chunk's text (a space before all but
    # the first) once it and every chunk before it are done. A stream sends these as deltas.
    on_text: Callable[[str], None] | None = field(default=None, repr=False)
    _ready: dict[int, str] = field(default_factory=dict, repr=False)
    _next_text: int = field(default=0, repr=False)
    _text_sent: bool = field(default=False, repr=False)

    @property
    def is_long(self) -> bool:
        return (self.chunks_total or 0) >= LONG_REQUEST_CHUNKS

    def planned(self, chunks: int, audio_s: float) -> None:
        self.chunks_total, self.audio_s = chunks, audio_s
        if self.is_long:
            logger.info("request %s: %d speech chunks in %.0f s of audio", self.request_id, chunks, audio_s)

    def chunk_done(self, index: int | None = None, text: str = "") -> None:
        self.chunks_done += 1
        if index is not None:
            self._ready[index] = text.strip()
            while self._next_text in self._ready:
                piece = self._ready.pop(self._next_text)
                self._next_text += 1
                if piece and self.on_text is not None:
                    self.on_text(f" {piece}" if self._text_sent else piece)
                    self._text_sent = True
        total = self.chunks_total or 0
        # A line at each quarter: 4 lines for a long request however long it is.
        if self.is_long and self.chunks_done * 4 // total != (self.chunks_done - 1) * 4 // total:
            logger.info("request %s: %d of %d chunks transcribed (%.0f%%) after %.1f s", self.request_id,
                        self.chunks_done, total, 100 * self.chunks_done / total, self.elapsed_s)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def as_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "audio_s": self.audio_s, "chunks_total": self.chunks_total,
                "chunks_done": self.chunks_done, "aligned": self.aligned, "diarized": self.diarized,
                "elapsed_s": round(self.elapsed_s, 3),
                "stage_s": {stage: round(seconds, 3) for stage, seconds in self.stage_s.items()}}


class ProgressBoard:
    """The requests in flight on one ingress replica, by id."""

    def __init__(self) -> None:
        # By object, not by request id: a client may send the same x-request-id twice.
        self._in_flight: dict[int, Progress] = {}

    @contextmanager
    def track(self, progress: Progress) -> Iterator[Progress]:
        self._in_flight[id(progress)] = progress
        try:
            yield progress
        finally:
            del self._in_flight[id(progress)]

    def snapshot(self) -> list[dict[str, Any]]:
        return [progress.as_dict() for progress in self._in_flight.values()]
