"""The job runner on a real SQLite store, with fake work: claims, progress, stages, cancels, retries, stops,
takeovers after a lease ran out, and the number of jobs run at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from serve_app.jobs import Job, JobStore, open_job_store
from serve_app.jobs.runner import Failure, JobContext, JobRunner, Work
from serve_app.jobs.sqlite_store import SqliteJobStore

LEASE_S = 2.0
HEARTBEAT_S = 0.05
POLL_S = 0.05
ERROR = {"message": "not decodable", "type": "invalid_request_error", "param": "file", "code": None}
UNAVAILABLE = {"message": "asr is unavailable", "type": "server_error", "param": None, "code": None}


class Clock:
    """The store's clock, moved by hand: a lease runs out when the test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StalledStore:
    """A store whose `stalled` methods do nothing, as if the runner calling them had stopped reaching it
    (killed, or its event loop stuck); every other call goes to the real store."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self.stalled: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        if name in self.__dict__.get("stalled", set()):
            return lambda *args, **kwargs: None
        return getattr(self._store, name)


class ReleaseRecordingStore(SqliteJobStore):
    """A SQLite store that keeps the job as each `release` left it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.released: list[Job] = []

    def release(self, job_id: str, worker: str) -> Job:
        self.released.append(super().release(job_id, worker))
        return self.released[-1]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    store = open_job_store(str(tmp_path / "jobs.sqlite3"))
    yield store
    store.close()


def submit(store: JobStore, n: int = 1) -> list[Job]:
    return [store.create("transcribe", {"model": "whisper-1", "n": i}, f"/spool/{i}/upload") for i in range(n)]


def never_fails(error: BaseException, job: Job) -> tuple[bool, dict[str, Any]]:
    raise AssertionError(f"the work was not meant to fail: {error!r}")


def runner(store: Any, work: Work, failure: Failure = never_fails, *, worker: str = "w1", **options: Any) -> JobRunner:
    settings: dict[str, Any] = {"lease_s": LEASE_S, "heartbeat_s": HEARTBEAT_S, "poll_s": POLL_S, **options}
    return JobRunner(store, work, failure, worker=worker, **settings)


@asynccontextmanager
async def running(*runners: JobRunner) -> AsyncIterator[list[asyncio.Future[None]]]:
    """The runners' `run` loops, stopped (and awaited) on the way out."""
    loops: list[asyncio.Future[None]] = [asyncio.ensure_future(r.run()) for r in runners]
    try:
        yield loops
    finally:
        for r in runners:
            await r.stop()
        await asyncio.wait_for(asyncio.gather(*loops, return_exceptions=True), 5)


async def eventually(condition: Callable[[], Any], timeout_s: float = 3.0) -> Any:
    """The first truthy value of `condition()`, polled every 10 ms; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.01)


def state(store: JobStore, job_id: str) -> Job:
    job = store.get(job_id)
    assert job is not None
    return job


def blocking_work(started: asyncio.Event, seen: list[str], result: dict[str, Any] | None = None,
                  release: asyncio.Event | None = None) -> Work:
    """Work that says it started, then waits for `release` (forever without one), noting a cancel in `seen`."""

    async def work(context: JobContext) -> dict[str, Any]:
        started.set()
        try:
            await (release or asyncio.Event()).wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return result or {"text": "done"}

    return work


# --- a job's run ---------------------------------------------------------------------------------------

async def test_a_submitted_job_is_claimed_and_its_result_recorded(store: JobStore):
    (job,) = submit(store)
    contexts: list[JobContext] = []

    async def work(context: JobContext) -> dict[str, Any]:
        contexts.append(context)
        return {"text": "hello there", "n": context.job.fields["n"]}

    r = runner(store, work)
    async with running(r):
        done = await eventually(lambda: state(store, job.id).is_final and state(store, job.id))
    assert (done.state, done.result, done.error, done.attempts, done.worker) == (
        "succeeded", {"text": "hello there", "n": 0}, None, 1, "w1")
    assert [c.job.id for c in contexts] == [job.id] and contexts[0].job.state == "running"
    assert r.running == []


async def test_progress_the_work_reports_reaches_the_store_while_it_runs(store: JobStore):
    (job,) = submit(store)
    progress = {"chunks_total": 4, "chunks_done": 1}
    go_on = asyncio.Event()

    async def work(context: JobContext) -> dict[str, Any]:
        context.report = lambda: dict(progress)
        await go_on.wait()
        return {"text": "done"}

    async with running(runner(store, work)):
        await eventually(lambda: state(store, job.id).progress == {"chunks_total": 4, "chunks_done": 1})
        progress["chunks_done"] = 3
        await eventually(lambda: state(store, job.id).progress == {"chunks_total": 4, "chunks_done": 3})
        assert state(store, job.id).state == "running"
        go_on.set()
        await eventually(lambda: state(store, job.id).state == "succeeded")


async def test_a_kept_stage_is_recorded_at_once_with_the_progress_so_far(store: JobStore):
    (job,) = submit(store)
    seen: list[tuple[str | None, dict[str, Any]]] = []

    async def work(context: JobContext) -> dict[str, Any]:
        context.report = lambda: {"chunks_done": 7}
        await context.keep("asr")
        kept = state(store, job.id)
        seen.append((kept.stage, kept.progress))
        return {"text": "done"}

    # A heartbeat far beyond the test: only `keep` itself can have written the stage.
    async with running(runner(store, work, heartbeat_s=60.0, lease_s=240.0)):
        await eventually(lambda: state(store, job.id).state == "succeeded")
    assert seen == [("asr", {"chunks_done": 7})]
    assert state(store, job.id).stage == "asr"


# --- cancels -------------------------------------------------------------------------------------------

async def test_a_job_cancelled_in_the_store_stops_its_work_within_a_few_heartbeats(store: JobStore):
    (job,) = submit(store)
    started, seen = asyncio.Event(), list[str]()
    r = runner(store, blocking_work(started, seen))
    async with running(r):
        await asyncio.wait_for(started.wait(), 3)
        store.cancel(job.id)  # as the replica that received DELETE would
        cancelled_at = time.monotonic()
        await eventually(lambda: seen == ["cancelled"], timeout_s=10 * HEARTBEAT_S)
        assert time.monotonic() - cancelled_at < 10 * HEARTBEAT_S
        await eventually(lambda: r.running == [])
        await asyncio.sleep(4 * HEARTBEAT_S)  # a late finish or release would land by now
    ended = state(store, job.id)
    assert (ended.state, ended.result, ended.error) == ("cancelled", None, None)


async def test_a_local_cancel_stops_the_work_without_waiting_for_a_heartbeat(store: JobStore):
    (job,) = submit(store)
    started, seen = asyncio.Event(), list[str]()
    r = runner(store, blocking_work(started, seen), heartbeat_s=60.0, lease_s=240.0)
    async with running(r):
        await asyncio.wait_for(started.wait(), 3)
        assert r.running == [job.id]
        store.cancel(job.id)
        assert r.cancel(job.id) is True
        await eventually(lambda: seen == ["cancelled"] and r.running == [], timeout_s=1.0)
        assert r.cancel(job.id) is False
        assert r.cancel("job_elsewhere") is False
    ended = state(store, job.id)
    assert (ended.state, ended.result, ended.error) == ("cancelled", None, None)


# --- failures ------------------------------------------------------------------------------------------

async def test_an_error_not_worth_a_retry_fails_the_job_with_its_error_object(store: JobStore):
    (job,) = submit(store)
    mapped: list[tuple[BaseException, str]] = []

    async def work(context: JobContext) -> dict[str, Any]:
        raise ValueError("not decodable")

    def failure(error: BaseException, failed: Job) -> tuple[bool, dict[str, Any]]:
        mapped.append((error, failed.id))
        return False, ERROR

    async with running(runner(store, work, failure)):
        ended = await eventually(lambda: state(store, job.id).is_final and state(store, job.id))
    assert (ended.state, ended.error, ended.result, ended.attempts) == ("failed", ERROR, None, 1)
    assert [(type(e), str(e), job_id) for e, job_id in mapped] == [(ValueError, "not decodable", job.id)]


async def test_an_error_worth_a_retry_releases_the_job_after_the_delay_and_it_runs_again(tmp_path: Path):
    store = ReleaseRecordingStore(tmp_path / "jobs.sqlite3")
    (job,) = submit(store)
    runs: list[tuple[float, int]] = []

    async def work(context: JobContext) -> dict[str, Any]:
        runs.append((time.monotonic(), context.job.attempts))
        if len(runs) == 1:
            raise ConnectionError("asr is unavailable")
        return {"text": "second time lucky"}

    failed_at: list[float] = []

    def failure(error: BaseException, failed: Job) -> tuple[bool, dict[str, Any]]:
        failed_at.append(time.monotonic())
        return True, UNAVAILABLE

    delay_s = 0.3
    try:
        async with running(runner(store, work, failure, retry_delay_s=delay_s)):
            await eventually(lambda: len(failed_at) == 1)
            assert state(store, job.id).state == "running", "held through the delay"
            ended = await eventually(lambda: state(store, job.id).is_final and state(store, job.id))
    finally:
        store.close()
    assert (ended.state, ended.result, ended.error) == ("succeeded", {"text": "second time lucky"}, None)
    assert [(j.state, j.attempts, j.error) for j in store.released] == [("queued", 0, None)], \
        "released, the attempt not counted"
    assert [attempts for _, attempts in runs] == [1, 1] and ended.attempts == 1
    assert runs[1][0] - failed_at[0] >= delay_s


# --- stops and takeovers -------------------------------------------------------------------------------

async def test_stop_cancels_the_work_and_releases_the_job_for_another_runner(tmp_path: Path):
    path = str(tmp_path / "jobs.sqlite3")
    first_store, second_store = open_job_store(path), open_job_store(path)
    (job,) = submit(first_store)
    started, seen = asyncio.Event(), list[str]()

    async def first_work(context: JobContext) -> dict[str, Any]:
        context.report = lambda: {"chunks_total": 4, "chunks_done": 4}
        await context.keep("asr")
        return await blocking_work(started, seen)(context)

    resumed: list[Job] = []

    async def second_work(context: JobContext) -> dict[str, Any]:
        resumed.append(context.job)
        return {"text": "resumed"}

    first = runner(first_store, first_work, worker="replica-a")
    try:
        async with running(first) as (loop,):
            await asyncio.wait_for(started.wait(), 3)
            await first.stop()
            await asyncio.wait_for(loop, 3)
            assert seen == ["cancelled"] and first.running == []
            released = state(first_store, job.id)
            assert (released.state, released.stage, released.progress, released.attempts, released.lease_until) == (
                "queued", "asr", {"chunks_total": 4, "chunks_done": 4}, 0, None)
        async with running(runner(second_store, second_work, worker="replica-b")):
            ended = await eventually(lambda: state(second_store, job.id).is_final and state(second_store, job.id))
    finally:
        first_store.close()
        second_store.close()
    assert [(j.stage, j.attempts, j.worker) for j in resumed] == [("asr", 1, "replica-b")]
    assert (ended.state, ended.result, ended.attempts, ended.worker) == ("succeeded", {"text": "resumed"}, 1,
                                                                        "replica-b")


async def test_a_killed_runners_job_is_taken_over_only_once_its_lease_ran_out(tmp_path: Path):
    path, clock = tmp_path / "jobs.sqlite3", Clock()
    dead = StalledStore(SqliteJobStore(path, clock=clock))
    alive = SqliteJobStore(path, clock=clock)
    (job,) = submit(alive)
    started, seen = asyncio.Event(), list[str]()
    taken: list[Job] = []

    async def second_work(context: JobContext) -> dict[str, Any]:
        taken.append(context.job)
        return {"text": "taken over"}

    first = runner(dead, blocking_work(started, seen), worker="replica-a")
    second = runner(alive, second_work, worker="replica-b")
    try:
        async with running(first):
            await asyncio.wait_for(started.wait(), 3)
            # The process is gone: nothing more of it reaches the store.
            dead.stalled = {"renew", "update", "release", "finish"}
        assert seen == ["cancelled"]
        async with running(second):
            await asyncio.sleep(6 * POLL_S)  # several claims, all within the lease
            held = state(alive, job.id)
            assert (held.state, held.worker, held.attempts, taken) == ("running", "replica-a", 1, [])
            clock.advance(LEASE_S + 0.01)
            ended = await eventually(lambda: state(alive, job.id).is_final and state(alive, job.id))
    finally:
        dead.close()
        alive.close()
    assert [j.attempts for j in taken] == [2]
    assert (ended.state, ended.result, ended.attempts, ended.worker) == ("succeeded", {"text": "taken over"}, 2,
                                                                        "replica-b")


async def test_a_stalled_runners_late_result_is_refused_after_a_takeover(tmp_path: Path):
    path, clock = tmp_path / "jobs.sqlite3", Clock()
    stalled = StalledStore(SqliteJobStore(path, clock=clock))
    alive = SqliteJobStore(path, clock=clock)
    (job,) = submit(alive)
    first_started, first_go = asyncio.Event(), asyncio.Event()
    second_started, second_go = asyncio.Event(), asyncio.Event()
    first = runner(stalled, blocking_work(first_started, [], {"text": "late", "by": "a"}, first_go),
                   worker="replica-a")
    second = runner(alive, blocking_work(second_started, [], {"text": "taken over", "by": "b"}, second_go),
                    worker="replica-b")
    try:
        async with running(first):
            await asyncio.wait_for(first_started.wait(), 3)  # replica-a holds the job before replica-b runs
            async with running(second):
                stalled.stalled = {"renew"}  # its heartbeats stop reaching the store; its finish still does
                clock.advance(LEASE_S + 0.01)
                await asyncio.wait_for(second_started.wait(), 3)
                first_go.set()  # the first runner's work ends after all, with the job another's now
                await eventually(lambda: first.running == [])
                held = state(alive, job.id)
                assert (held.state, held.worker, held.result, held.attempts) == ("running", "replica-b", None, 2)
                second_go.set()
                ended = await eventually(lambda: state(alive, job.id).is_final and state(alive, job.id))
    finally:
        stalled.close()
        alive.close()
    assert (ended.state, ended.result, ended.worker) == ("succeeded", {"text": "taken over", "by": "b"}, "replica-b")


# --- how many at once ----------------------------------------------------------------------------------

async def test_no_more_than_max_running_jobs_run_at_once(store: JobStore):
    jobs = submit(store, 3)
    now: list[int] = [0]
    at_once: list[int] = []

    async def work(context: JobContext) -> dict[str, Any]:
        now[0] += 1
        at_once.append(now[0])
        await asyncio.sleep(0.4)
        now[0] -= 1
        return {"text": f"job {context.job.fields['n']}"}

    r = runner(store, work, max_running=2)
    async with running(r):
        await eventually(lambda: len(r.running) == 2)
        await asyncio.sleep(3 * POLL_S)  # polls while two run: the third stays queued
        assert sorted(state(store, j.id).state for j in jobs) == ["queued", "running", "running"]
        await eventually(lambda: all(state(store, j.id).state == "succeeded" for j in jobs))
    assert max(at_once) == 2 and len(at_once) == 3
    assert [state(store, j.id).result for j in jobs] == [{"text": f"job {i}"} for i in range(3)]


async def test_stop_during_the_retry_delay_still_releases_the_job(store: JobStore):
    (job,) = submit(store)
    failed = asyncio.Event()

    async def work(context: JobContext) -> dict[str, Any]:
        raise ConnectionError("asr is unavailable")

    def failure(error: BaseException, failed_job: Job) -> tuple[bool, dict[str, Any]]:
        failed.set()
        return True, UNAVAILABLE

    r = runner(store, work, failure, retry_delay_s=60.0)
    async with running(r):
        await asyncio.wait_for(failed.wait(), 3)
        await asyncio.sleep(2 * HEARTBEAT_S)
        await asyncio.wait_for(r.stop(), 3)
    released = state(store, job.id)
    assert (released.state, released.attempts, released.lease_until) == ("queued", 0, None), \
        "handed back now, not taken over only once its lease runs out"


# --- on_end: how each run ended here -------------------------------------------------------------------

class Ends:
    """An on_end that keeps (job id, the job's state as handed over, outcome) of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.jobs: list[Job] = []

    def __call__(self, job: Job, outcome: str) -> None:
        self.calls.append((job.id, job.state, outcome))
        self.jobs.append(job)


async def test_on_end_hears_of_a_success_with_its_result_and_of_a_failure(store: JobStore):
    good, bad = submit(store, 2)
    ends = Ends()

    async def work(context: JobContext) -> dict[str, Any]:
        if context.job.fields["n"] == 1:
            raise ValueError("not decodable")
        return {"text": "done", "duration_s": 12.5}

    async with running(runner(store, work, lambda error, job: (False, ERROR), on_end=ends)):
        await eventually(lambda: len(ends.calls) == 2)
    assert sorted(ends.calls) == sorted([(good.id, "succeeded", "succeeded"), (bad.id, "failed", "failed")])
    ended = {j.id: j for j in ends.jobs}
    assert ended[good.id].result == {"text": "done", "duration_s": 12.5}, "the job as finished, with its result"
    assert ended[bad.id].error == ERROR


async def test_on_end_hears_of_a_retry_and_then_of_the_success(store: JobStore):
    submit(store)
    ends, runs = Ends(), [0]

    async def work(context: JobContext) -> dict[str, Any]:
        runs[0] += 1
        if runs[0] == 1:
            raise ConnectionError("asr is unavailable")
        return {"text": "second time lucky"}

    async with running(runner(store, work, lambda error, job: (True, UNAVAILABLE), retry_delay_s=0.05,
                              on_end=ends)):
        await eventually(lambda: len(ends.calls) == 2)
    assert [outcome for _, _, outcome in ends.calls] == ["retried", "succeeded"]


@pytest.mark.parametrize("where", ["another replica", "this replica"])
async def test_on_end_hears_of_a_cancel_once(store: JobStore, where: str):
    (job,) = submit(store)
    started, seen, ends = asyncio.Event(), list[str](), Ends()
    # Seen at a heartbeat when cancelled elsewhere; at once through `cancel` here, the heartbeat far off.
    options: dict[str, Any] = {"heartbeat_s": 60.0, "lease_s": 240.0} if where == "this replica" else {}
    r = runner(store, blocking_work(started, seen), on_end=ends, **options)
    async with running(r):
        await asyncio.wait_for(started.wait(), 3)
        store.cancel(job.id)
        if where == "this replica":
            r.cancel(job.id)
        await eventually(lambda: ends.calls, timeout_s=2.0)
        await asyncio.sleep(4 * HEARTBEAT_S)
    assert [(job_id, outcome) for job_id, _, outcome in ends.calls] == [(job.id, "cancelled")]


async def test_on_end_hears_of_a_job_released_at_stop_and_not_of_one_taken_over(tmp_path: Path):
    path, clock = tmp_path / "jobs.sqlite3", Clock()
    stalled = StalledStore(SqliteJobStore(path, clock=clock))
    alive = SqliteJobStore(path, clock=clock)
    (job,) = submit(alive)
    first_started, first_go, second_started = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first_ends, second_ends = Ends(), Ends()
    first = runner(stalled, blocking_work(first_started, [], {"text": "late"}, first_go), worker="replica-a",
                   on_end=first_ends)
    second = runner(alive, blocking_work(second_started, []), worker="replica-b", on_end=second_ends)
    try:
        async with running(first):
            await asyncio.wait_for(first_started.wait(), 3)  # replica-a holds the job before replica-b runs
            async with running(second):
                stalled.stalled = {"renew"}
                clock.advance(LEASE_S + 0.01)
                await asyncio.wait_for(second_started.wait(), 3)
                first_go.set()  # its late result is refused: the job is replica-b's now
                await eventually(lambda: first.running == [])
            # The inner context's exit stopped replica-b with the job in its hands: handed back.
    finally:
        stalled.close()
        alive.close()
    assert first_ends.calls == []
    assert [(job_id, outcome) for job_id, _, outcome in second_ends.calls] == [(job.id, "released")]


async def test_an_on_end_that_raises_does_not_stop_the_runner(store: JobStore, caplog: pytest.LogCaptureFixture):
    calls: list[str] = []

    def on_end(job: Job, outcome: str) -> None:
        calls.append(outcome)
        raise RuntimeError("metrics are down")

    async def work(context: JobContext) -> dict[str, Any]:
        return {"text": f"job {context.job.fields['n']}"}

    first, second = submit(store, 2)
    r = runner(store, work, on_end=on_end)
    async with running(r) as (loop,):
        await eventually(lambda: state(store, first.id).state == "succeeded")
        await eventually(lambda: state(store, second.id).state == "succeeded")
        third = store.create("transcribe", {"n": 2}, "/spool/2/upload")  # still claimed after the failures
        r.wake()
        await eventually(lambda: state(store, third.id).state == "succeeded")
        assert not loop.done()
    assert calls == ["succeeded"] * 3
    assert [state(store, j.id).result for j in (first, second, third)] == [{"text": f"job {i}"} for i in range(3)]
    assert "on_end(succeeded) failed" in caplog.text
