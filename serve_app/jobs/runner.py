"""Running jobs: claim from the store, hold the lease while the work runs, end the job once.

Every ingress replica runs one `JobRunner`. It claims a job whenever it runs fewer than `max_running`,
and for each job it runs a heartbeat beside the work: every `heartbeat_s` it renews the lease and writes
the work's progress to the store. The heartbeat is also how the runner learns of a cancel made on
another replica (`JobCancelled` on renew) or of a lease another runner took over after a long stall
(`LeaseLost`): either way the work is cancelled, which cancels its model calls, and nothing is
recorded. The store refuses a `finish` from a runner that lost its lease, so a job ends once.

How a job ends:
- the work returns a result: `succeeded`;
- it raises an error the service would answer with a 4xx, or a bug: `failed`, with OpenAI's error object;
- it raises what a retry may cure (`failure` says so: a model deployment unavailable): the job is
  released after `retry_delay_s` and claimed again, by this replica or another;
- the replica stops (`stop`: Serve's graceful shutdown, a redeploy): the work is cancelled and the job
  released, first in line again; the next attempt resumes after the last stage it finished;
- the replica dies: nothing is released, the lease runs out after `lease_s`, and another runner takes
  the job over with its attempts counted (the store fails it after `max_attempts`).

`on_end(job, outcome)` hears of each of these where it happens on this replica, once the store has it:
`succeeded` (the job as finished, with its result), `failed`, `cancelled` (a cancel stopped the work here),
`retried` (released after an error worth a retry) and `released` (handed back by `stop`). A job taken over
by another runner after a lost lease is that runner's to report; a job cancelled while queued is no runner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from serve_app.jobs.store import Job, JobStore, LeaseLost

logger = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What the work of one job shares with its runner: `report`, which the heartbeat asks for the progress
    to record, and `keep` to record a finished stage (written at once, not at the next heartbeat)."""

    job: Job
    report: Callable[[], dict[str, Any]] = field(default=dict, repr=False)
    _keep: Callable[[str], Awaitable[None]] | None = field(default=None, repr=False)

    async def keep(self, stage: str) -> None:
        if self._keep is not None:
            await self._keep(stage)


Work = Callable[[JobContext], Coroutine[Any, Any, dict[str, Any]]]
"""One job's work: the result to record (the transcript as JSON)."""

Failure = Callable[[BaseException, Job], tuple[bool, dict[str, Any]]]
"""How an error ends a job: (retry, OpenAI's error object)."""

OnEnd = Callable[[Job, str], None]
"""Told how a job's run here ended: succeeded, failed, cancelled, retried or released (metrics)."""


class JobRunner:
    def __init__(self, store: JobStore, work: Work, failure: Failure, *, worker: str, lease_s: float = 30.0,
                 max_running: int = 1, poll_s: float = 1.0, heartbeat_s: float | None = None,
                 retry_delay_s: float = 10.0, on_end: OnEnd | None = None) -> None:
        self._store, self._work, self._failure, self._on_end = store, work, failure, on_end
        self.worker, self.lease_s, self.max_running, self.poll_s = worker, lease_s, max_running, poll_s
        # Several heartbeats per lease: one delayed by a busy event loop does not lose the job. At most 1 s
        # apart, so that a cancel made on another replica stops the work within about a second.
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else min(1.0, lease_s / 4)
        self.retry_delay_s = retry_delay_s
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._wake = asyncio.Event()

    @property
    def running(self) -> list[str]:
        """Ids of the jobs this runner works on now."""
        return list(self._running)

    def wake(self) -> None:
        """Look for work now rather than at the next poll (a job was just submitted here)."""
        self._wake.set()

    def cancel(self, job_id: str) -> bool:
        """Stop the work of a job cancelled in the store, if this runner has it; True if it had."""
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
        return task is not None

    async def run(self) -> None:
        """Claim and start jobs until `stop`; a store that fails is retried at the next poll."""
        while not self._stopping:
            job = None
            if len(self._running) < self.max_running:
                try:
                    job = await asyncio.to_thread(self._store.claim, self.worker, self.lease_s)
                except Exception:  # a store briefly unreachable must not end the loop
                    logger.exception("could not claim a job; trying again in %.0f s", self.poll_s)
            if self._stopping:  # stopped while claiming: hand the job straight back
                if job is not None:
                    await asyncio.to_thread(self._release, job)
                return
            if job is not None:
                self._running[job.id] = asyncio.create_task(self._run(job), name=f"job {job.id}")
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def stop(self) -> None:
        """Stop claiming; cancel the work in progress and release those jobs for another runner."""
        self._stopping = True
        self._wake.set()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: Job) -> None:
        if job.attempts > 1:
            logger.info("job %s: attempt %d, resuming after stage %s", job.id, job.attempts, job.stage or "none")
        else:
            logger.info("job %s: started", job.id)
        context = JobContext(job)

        async def keep(stage: str) -> None:
            await asyncio.to_thread(self._store.update, job.id, self.worker, progress=context.report(),
                                    stage=stage)

        context._keep = keep
        work: asyncio.Task[dict[str, Any]] = asyncio.create_task(self._work(context))
        heartbeat = asyncio.create_task(self._heartbeat(job, context, work))
        try:
            result = await work
        except asyncio.CancelledError:
            lost = heartbeat.result() if heartbeat.done() and not heartbeat.cancelled() else None
            if lost is None:  # cancelled by `stop` (or a local cancel, which the store already holds)
                self._ended(job, await asyncio.to_thread(self._release, job))
            elif lost == "cancelled":
                self._ended(job, "cancelled")
            return
        except Exception as e:  # noqa: BLE001 - every failure ends or retries the job, never the runner
            retry, error = self._failure(e, job)
            if retry:
                logger.warning("job %s: %s; released for another attempt in %.0f s", job.id, error["message"],
                               self.retry_delay_s)
                try:
                    await asyncio.sleep(self.retry_delay_s)
                finally:  # released at once when `stop` cuts the delay short, not when the lease runs out
                    released = await asyncio.to_thread(self._release, job)
                    self._ended(job, "retried" if released == "released" else released)
            else:
                self._ended(*await asyncio.to_thread(self._finish, job, None, error))
            return
        finally:
            heartbeat.cancel()
            self._running.pop(job.id, None)
            self._wake.set()
        self._ended(*await asyncio.to_thread(self._finish, job, result, None))

    def _ended(self, job: Job, outcome: str | None) -> None:
        """Tell `on_end` (outcome None: nothing ended here); what it raises is logged, never the runner's."""
        if outcome is None or self._on_end is None:
            return
        try:
            self._on_end(job, outcome)
        except Exception:  # metrics must not stop a runner
            logger.warning("job %s: on_end(%s) failed", job.id, outcome, exc_info=True)

    async def _heartbeat(self, job: Job, context: JobContext, work: asyncio.Task[Any]) -> str:
        """Renew the lease and record progress until cancelled; once the lease is lost or the job cancelled,
        cancel `work` and return the job's state then (`cancelled`, or another runner's `running`)."""
        recorded: dict[str, Any] = {}
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await asyncio.to_thread(self._store.renew, job.id, self.worker, self.lease_s)
                progress = context.report()
                if progress != recorded:
                    recorded = progress
                    await asyncio.to_thread(self._store.update, job.id, self.worker, progress=recorded)
            except LeaseLost as e:  # JobCancelled included
                logger.info("job %s: %s; its work stops", job.id,
                            "cancelled" if e.state == "cancelled" else f"lease lost ({e})")
                work.cancel()
                return e.state
            except Exception:  # the store unreachable for a moment: the lease still has time
                logger.warning("job %s: could not renew the lease", job.id, exc_info=True)

    def _finish(self, job: Job, result: dict[str, Any] | None,
                error: dict[str, Any] | None) -> tuple[Job, str | None]:
        """End the job in the store: (the job as ended, its state), or (the job as claimed, `cancelled` or
        None) when the store refused because it was cancelled or taken over meanwhile."""
        try:
            ended = self._store.finish(job.id, self.worker, result=result, error=error)
        except LeaseLost as e:  # cancelled, or taken over, meanwhile: the other outcome stands
            logger.info("job %s: not recorded as finished (%s)", job.id, e)
            return job, "cancelled" if e.state == "cancelled" else None
        logger.info("job %s: %s", job.id, ended.state if error is None else f"failed: {error['message']}")
        return ended, ended.state

    def _release(self, job: Job) -> str | None:
        """Hand the job back: `released`; `cancelled` if it was cancelled meanwhile; None if taken over or
        the store could not be reached."""
        try:
            self._store.release(job.id, self.worker)
            logger.info("job %s: released for another runner", job.id)
            return "released"
        except LeaseLost as e:  # cancelled or taken over: nothing to hand back
            return "cancelled" if e.state == "cancelled" else None
        except Exception:  # the lease runs out on its own; the job is taken over then
            logger.warning("job %s: could not release it; it is taken over when its lease runs out", job.id,
                           exc_info=True)
            return None
