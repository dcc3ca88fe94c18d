"""Durable transcription jobs and enrolled speakers: the store they live in.

Why not Ray Serve 2.60's asynchronous inference (`@task_consumer`, `@task_handler`, alpha): it gives a
consumer deployment that runs a Celery worker thread in each replica, enqueue/status/cancel by id,
retries with backoff, late acks, dead-letter queues, and `AsyncInferenceAutoscalingPolicy` (consumer
replicas by broker queue length). Several ingress replicas can share its broker. Against what jobs need:
- Embedded default: Celery needs a broker and a result backend. Its server-free ones (kombu's
  filesystem transport, SQLAlchemy on SQLite) add Celery, kombu and SQLAlchemy to the image, and the
  autoscaling policy reads queue length only from Redis or RabbitMQ. The Taskiq adapter in 2.60 is
  stubs (`NotImplementedError`).
- Per-stage progress: the adapter has no progress call. `TaskResult` is id, Celery status
  (PENDING/STARTED/SUCCESS/FAILURE/RETRY) and a value; a handler could publish more only through
  Celery itself (`task_custom_config={"bind": True}`, `update_state`). An unknown id reads PENDING
  (no 404), and there is no listing.
- Cancel: `revoke(task_id)` without `terminate`, a broadcast kept only in the workers' memory: a
  running handler runs to the end, and after a restart of every worker a revoked message runs.
- Durability and "nothing run twice to completion": delivery is at least once. A retry, or a worker
  lost, reruns the whole handler from the start (no resuming after a finished stage), and on Redis a
  message unacknowledged after `visibility_timeout` (1 h by default) is delivered again while the first
  run is still going: a long recording is transcribed twice and both runs complete.
- Handlers must be synchronous (coroutine handlers raise `NotImplementedError`); the pipeline awaits
  DeploymentHandles.
- Results in any format, repeatedly, and expiry: Celery keeps the return value until `result_expires`
  and rendering is ours either way, but expiry does not delete the spooled upload.
- Priority below interactive requests: a separate queue and consumer deployment still call the same
  model deployments, and Serve has no request priority; job chunks must yield in our own chunk
  scheduling whichever queue feeds them.
Verdict: not used. Jobs live in a `JobStore` of ours: `SqliteJobStore` (one local file, no server) by
default, `RedisJobStore` for a cluster; runners in the ingress claim jobs under leases that a
restarted or surviving replica takes over.
"""

from __future__ import annotations

from serve_app.jobs.store import (
    FINAL_STATES,
    InvalidCursor,
    Job,
    JobCancelled,
    JobKind,
    JobPage,
    JobState,
    JobStore,
    JobStoreError,
    LeaseLost,
    Speaker,
    UnknownJob,
)

__all__ = [
    "FINAL_STATES",
    "InvalidCursor",
    "Job",
    "JobCancelled",
    "JobKind",
    "JobPage",
    "JobState",
    "JobStore",
    "JobStoreError",
    "LeaseLost",
    "Speaker",
    "UnknownJob",
    "open_job_store",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_job_store(url: str, *, retention_s: float | None = None, max_attempts: int = 3) -> JobStore:
    """The store a URL names: `redis://`, `rediss://` or `unix://` for Redis; `sqlite:///path` or a
    plain file path for SQLite."""
    if url.startswith(_REDIS_SCHEMES):
        from serve_app.jobs.redis_store import RedisJobStore  # imports redis only where it is used

        return RedisJobStore(url, retention_s=retention_s, max_attempts=max_attempts)
    from serve_app.jobs.sqlite_store import SqliteJobStore

    return SqliteJobStore(url.removeprefix("sqlite://"), retention_s=retention_s, max_attempts=max_attempts)
