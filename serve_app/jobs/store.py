"""What a job store keeps and promises: jobs with leases, and enrolled speakers.

A job is accepted (`create`, state `queued`) and then taken by one runner at a time under a lease
(`claim`): the runner renews the lease while it works, records its progress and the last stage it
finished, and ends the job once (`finish`). A runner that dies stops renewing; when its lease has run
out, the next `claim` anywhere hands the job to another runner with `attempts` counted up, which
resumes after `stage`. A runner whose lease another has taken, or whose job was cancelled, is told on
its next `renew`, `update` or `finish` (`LeaseLost`, `JobCancelled`) and stops: a job can end only
once, so nothing accepted runs twice to completion. A job whose lease ran out `max_attempts` times is
failed by the store rather than handed out again (a recording that crashes its runner every time).

Errors:

    JobStoreError
    ├── UnknownJob        no job with that id (never created, or expired)
    ├── InvalidCursor     a `list` cursor this store did not hand out
    └── LeaseLost         the worker does not hold the job's lease (another took it, or it has ended)
        └── JobCancelled  ... because the job was cancelled

Calls block for a moment (a local file or a network round trip): call them from a worker thread
(`asyncio.to_thread`) in async code. Times are seconds since the epoch from the store's clock.
Worker names must be unique per runner instance (a replica id plus a random suffix): two runners
with one name would both count as the holder.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

JobKind = Literal["transcribe", "translate"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
JOB_KINDS: frozenset[str] = frozenset({"transcribe", "translate"})

ATTEMPTS_EXHAUSTED = "attempts_exhausted"
"""The `code` of the error a store records when a job's lease ran out `max_attempts` times."""


class JobStoreError(Exception):
    """A job store refused an operation."""


class UnknownJob(JobStoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id


class InvalidCursor(JobStoreError, ValueError):
    def __init__(self, cursor: str) -> None:
        super().__init__(f"not a job list cursor: {cursor!r}")
        self.cursor = cursor


class LeaseLost(JobStoreError):
    def __init__(self, job_id: str, worker: str, state: str) -> None:
        super().__init__(f"worker {worker!r} does not hold job {job_id!r} (state {state})")
        self.job_id, self.worker, self.state = job_id, worker, state


class JobCancelled(LeaseLost):
    pass


@dataclass(frozen=True)
class Job:
    """One job as the store has it now."""

    id: str
    kind: JobKind
    state: JobState
    created_at: float
    updated_at: float
    fields: dict[str, Any]  # the request's form fields, as received
    input: str  # path of the spooled upload
    progress: dict[str, Any] = field(default_factory=dict)  # per stage, whatever the runner records
    result: dict[str, Any] | None = None  # the transcript as JSON, once succeeded
    error: dict[str, Any] | None = None  # OpenAI's error object, once failed
    callback_url: str | None = None
    callback_done: bool = False
    expires_at: float | None = None  # set when the job ends: it and its input are deleted after this
    attempts: int = 0  # how many times a runner claimed it
    worker: str | None = None  # the runner that holds (or last held) its lease
    lease_until: float | None = None
    stage: str | None = None  # the last stage finished

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class JobPage:
    """Jobs newest first; `next_cursor` lists the ones after these, None when there are no more."""

    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class Speaker:
    """An enrolled speaker: an embedding vector and the reference clips it was computed from."""

    name: str
    embedding: list[float]
    clips: list[dict[str, Any]]  # metadata of each reference clip (file name, duration, ...)
    created_at: float
    updated_at: float


class JobStore(Protocol):
    """Durable jobs and enrolled speakers, shared by every ingress replica that opens the same store."""

    def create(self, kind: JobKind, fields: dict[str, Any], input: str,
               callback_url: str | None = None) -> Job:
        """Accept a job (state `queued`); once this returns it is on disk or in the shared store."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def list(self, limit: int = 20, after: str | None = None) -> JobPage:
        """Jobs newest first, at most `limit`, after the cursor a previous page handed out."""
        ...

    def claim(self, worker: str, lease_s: float) -> Job | None:
        """Take, atomically, a running job whose lease ran out (oldest lease first), else the oldest
        queued one; state `running`, leased to `worker` for `lease_s` seconds, `attempts` counted up.
        None when there is nothing to do."""
        ...

    def renew(self, job_id: str, worker: str, lease_s: float) -> Job:
        """Extend `worker`'s lease to `lease_s` seconds from now; LeaseLost or JobCancelled if it
        no longer holds the job."""
        ...

    def update(self, job_id: str, worker: str, *, progress: dict[str, Any] | None = None,
               stage: str | None = None) -> Job:
        """Record progress (merged into the job's, key by key) and the last stage finished; only by
        the lease holder."""
        ...

    def finish(self, job_id: str, worker: str, *, result: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None) -> Job:
        """End the job once: `succeeded` with `result`, or `failed` with `error`. Refused
        (LeaseLost, JobCancelled) unless `worker` holds a running job."""
        ...

    def release(self, job_id: str, worker: str) -> Job:
        """Hand a running job back (state `queued`, first in line again, stage and progress kept) because
        its runner is stopping, not failing: the attempt does not count towards `max_attempts`.
        LeaseLost or JobCancelled unless `worker` holds it."""
        ...

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a job already ended is returned as it is."""
        ...

    def expire(self, now: float | None = None) -> builtins.list[str]:
        """Delete the ended jobs whose `expires_at` has passed; their input paths (in no order), to delete."""
        ...

    def pending_callbacks(self, limit: int = 100) -> builtins.list[Job]:
        """Ended jobs with a callback URL whose callback has not been delivered, oldest first."""
        ...

    def callback_sent(self, job_id: str) -> Job:
        """Mark a job's callback delivered."""
        ...

    def put_speaker(self, name: str, embedding: builtins.list[float],
                    clips: builtins.list[dict[str, Any]]) -> Speaker:
        """Enroll a speaker, or replace the one enrolled under that name."""
        ...

    def get_speaker(self, name: str) -> Speaker | None: ...

    def list_speakers(self) -> builtins.list[Speaker]:
        """Every enrolled speaker, by name."""
        ...

    def delete_speaker(self, name: str) -> bool:
        """Forget a speaker; False if none was enrolled under that name."""
        ...

    def close(self) -> None: ...


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def check_kind(kind: str) -> None:
    if kind not in JOB_KINDS:
        raise ValueError(f"job kind must be one of {sorted(JOB_KINDS)}, not {kind!r}")


def check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def check_outcome(result: dict[str, Any] | None, error: dict[str, Any] | None) -> JobState:
    """The final state a `finish` with this result or error sets."""
    if (result is None) == (error is None):
        raise ValueError("finish takes exactly one of result and error")
    return "succeeded" if result is not None else "failed"


def exhausted_error() -> dict[str, Any]:
    """The error of a job whose lease ran out `max_attempts` times (its `attempts` says how many)."""
    return {"message": "the job was stopped before it finished on each of its attempts",
            "type": "server_error", "param": None, "code": ATTEMPTS_EXHAUSTED}


# Cursors carry the store's insertion sequence number (which, unlike a timestamp, never ties), wrapped
# so that clients treat them as opaque.
_CURSOR_PREFIX = "seq:"


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith(_CURSOR_PREFIX):
            raise ValueError(text)
        seq = int(text.removeprefix(_CURSOR_PREFIX))
    except (ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise InvalidCursor(cursor) from e
    if seq < 0:
        raise InvalidCursor(cursor)
    return seq
