"""The job store's contract, run on both stores: SQLite on a file, Redis on a real redis-server started
for this module on a free loopback port (no persistence, in a temporary folder)."""

from __future__ import annotations

import multiprocessing
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from serve_app.jobs import (
    InvalidCursor,
    Job,
    JobCancelled,
    JobStore,
    LeaseLost,
    UnknownJob,
    open_job_store,
)
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.sqlite_store import SqliteJobStore
from serve_app.jobs.store import ATTEMPTS_EXHAUSTED
from tests.redis_server import redis_server

RETENTION_S = 3600.0
LEASE_S = 30.0
FIELDS = {"model": "whisper-1", "response_format": "srt", "diarize": "true", "timestamp_granularities[]": ["word"]}
TRANSCRIPT = {"text": "hello there", "language": "en", "duration": 12.5,
              "words": [{"word": "hello", "start": 0.1, "end": 0.42}, {"word": "there", "start": 0.5, "end": 0.9}]}
FAILURE = {"message": "not decodable", "type": "invalid_request_error", "param": "file", "code": None}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.25

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- the two stores ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


class Opener:
    """Opens stores on one set of data: each call is a new connection (a new client, a restarted process)."""

    def __init__(self, spec: tuple[str, ...]) -> None:
        self.spec = spec
        self.opened: list[JobStore] = []

    def __call__(self, **options: Any) -> JobStore:
        store = open_spec(self.spec, **options)
        self.opened.append(store)
        return store


def open_spec(spec: tuple[str, ...], **options: Any) -> JobStore:
    if spec[0] == "sqlite":
        return SqliteJobStore(spec[1], **options)
    return RedisJobStore(spec[1], prefix=spec[2], **options)


@pytest.fixture(params=["sqlite", "redis"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    if request.param == "sqlite":
        spec: tuple[str, ...] = ("sqlite", str(tmp_path / "state" / "jobs.db"))
    else:
        spec = ("redis", request.getfixturevalue("redis_url"), f"{{test-{uuid.uuid4().hex}}}:")
    opener = Opener(spec)
    yield opener
    for store in opener.opened:
        store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(opener: Opener, clock: Clock) -> JobStore:
    return opener(clock=clock, retention_s=RETENTION_S)


def submit(store: JobStore, n: int = 1, callback_url: str | None = None) -> list[Job]:
    return [store.create("transcribe", {**FIELDS, "n": i}, f"/spool/{uuid.uuid4().hex}.flac", callback_url)
            for i in range(n)]


# --- create, get, list ---------------------------------------------------------------------------------

def test_a_created_job_is_queued_with_its_fields_and_reads_back_the_same(store: JobStore, clock: Clock):
    job = store.create("translate", FIELDS, "/spool/a.mp4", "https://example.test/hook")
    assert job.id.startswith("job_")
    assert (job.kind, job.state, job.fields, job.input) == ("translate", "queued", FIELDS, "/spool/a.mp4")
    assert job.created_at == job.updated_at == clock.now
    assert (job.progress, job.result, job.error, job.stage, job.worker, job.lease_until) == ({}, None, None,
                                                                                            None, None, None)
    assert (job.attempts, job.callback_url, job.callback_done, job.expires_at) == (0, "https://example.test/hook",
                                                                                  False, None)
    assert store.get(job.id) == job
    assert store.get("job_missing") is None
    with pytest.raises(ValueError, match="kind"):
        store.create("summarise", FIELDS, "/spool/b.flac")  # type: ignore[arg-type]


def test_list_pages_newest_first_with_opaque_cursors(store: JobStore):
    created = submit(store, 7)  # the same clock reading for all: order comes from acceptance, not time
    pages, cursor = [], None
    while True:
        page = store.list(limit=3, after=cursor)
        pages.append([job.id for job in page.jobs])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == [[job.id for job in reversed(created)][i:i + 3] for i in (0, 3, 6)]
    assert store.list(limit=7).next_cursor is None
    assert store.list(limit=100).jobs == list(reversed(created))
    for bad in ("nonsense", "c2VxOi0x", ""):
        with pytest.raises(InvalidCursor):
            store.list(after=bad)
    with pytest.raises(ValueError, match="limit"):
        store.list(limit=0)


# --- claims and leases ---------------------------------------------------------------------------------

def test_claims_take_the_oldest_queued_job_and_lease_it(store: JobStore, clock: Clock):
    first, second = submit(store, 2)
    claimed = store.claim("w1", LEASE_S)
    assert claimed is not None
    assert (claimed.id, claimed.state, claimed.worker, claimed.attempts) == (first.id, "running", "w1", 1)
    assert claimed.lease_until == clock.now + LEASE_S
    assert store.get(first.id) == claimed
    again = store.claim("w2", LEASE_S)
    assert again is not None and again.id == second.id
    assert store.claim("w3", LEASE_S) is None


def test_a_renewed_lease_keeps_the_job_from_others(store: JobStore, clock: Clock):
    (job,) = submit(store)
    store.claim("w1", LEASE_S)
    clock.advance(20)
    renewed = store.renew(job.id, "w1", LEASE_S)
    assert renewed.lease_until == clock.now + LEASE_S
    clock.advance(20)  # past the first lease, within the renewed one
    assert store.claim("w2", LEASE_S) is None
    with pytest.raises(LeaseLost):
        store.renew(job.id, "w2", LEASE_S)
    with pytest.raises(UnknownJob):
        store.renew("job_missing", "w1", LEASE_S)


def test_a_job_whose_runner_died_is_taken_over_after_its_lease_and_resumes_after_its_stage(
        opener: Opener, clock: Clock):
    first = opener(clock=clock, retention_s=RETENTION_S)
    (job,) = submit(first)
    first.claim("replica-a", LEASE_S)
    first.update(job.id, "replica-a", progress={"asr": {"chunks_done": 12, "chunks_total": 33}}, stage="decode")
    first.close()  # the ingress replica dies: no renewal, no finish

    second = opener(clock=clock, retention_s=RETENTION_S)  # its successor, or another replica
    clock.advance(LEASE_S - 1)
    assert second.claim("replica-b", LEASE_S) is None  # the lease has not run out yet
    clock.advance(2)
    taken = second.claim("replica-b", LEASE_S)
    assert taken is not None
    assert (taken.id, taken.state, taken.worker, taken.attempts) == (job.id, "running", "replica-b", 2)
    assert taken.stage == "decode"
    assert taken.progress == {"asr": {"chunks_done": 12, "chunks_total": 33}}
    # The old runner, had it only stalled, is refused everything from now on.
    with pytest.raises(LeaseLost):
        second.renew(job.id, "replica-a", LEASE_S)
    with pytest.raises(LeaseLost):
        second.update(job.id, "replica-a", stage="asr")
    with pytest.raises(LeaseLost):
        second.finish(job.id, "replica-a", result=TRANSCRIPT)
    done = second.finish(job.id, "replica-b", result=TRANSCRIPT)
    assert (done.state, done.result, done.worker, done.attempts) == ("succeeded", TRANSCRIPT, "replica-b", 2)


def test_a_job_whose_lease_ran_out_max_attempts_times_fails_instead_of_looping(opener: Opener, clock: Clock):
    store = opener(clock=clock, retention_s=RETENTION_S, max_attempts=2)
    (job,) = submit(store, callback_url="https://example.test/hook")
    for attempt in (1, 2):
        claimed = store.claim(f"w{attempt}", LEASE_S)
        assert claimed is not None and claimed.attempts == attempt
        clock.advance(LEASE_S + 1)
    assert store.claim("w3", LEASE_S) is None
    failed = store.get(job.id)
    assert failed is not None
    assert (failed.state, failed.attempts, failed.lease_until) == ("failed", 2, None)
    assert failed.error is not None and failed.error["code"] == ATTEMPTS_EXHAUSTED
    assert failed.expires_at == clock.now + RETENTION_S
    assert [pending.id for pending in store.pending_callbacks()] == [job.id]


def test_a_released_job_is_first_in_line_again_and_the_attempt_does_not_count(opener: Opener, clock: Clock):
    store = opener(clock=clock, retention_s=RETENTION_S, max_attempts=2)
    first, second = submit(store, 2)
    store.claim("stopping", LEASE_S)
    store.update(first.id, "stopping", progress={"chunks_done": 3}, stage="asr")
    for _ in range(3):  # three graceful restarts in a row: more than max_attempts, and still not failed
        released = store.release(first.id, "stopping")
        assert (released.state, released.lease_until, released.stage) == ("queued", None, "asr")
        assert released.progress == {"chunks_done": 3}
        again = store.claim("stopping", LEASE_S)
        assert again is not None and (again.id, again.attempts) == (first.id, 1)  # ahead of the newer job
    with pytest.raises(LeaseLost):
        store.release(first.id, "another")
    store.cancel(first.id)
    with pytest.raises(JobCancelled):
        store.release(first.id, "stopping")
    taken = store.claim("next", LEASE_S)
    assert taken is not None and taken.id == second.id


def _claim_all(store: JobStore, worker: str, start: threading.Barrier | None = None) -> list[str]:
    if start is not None:
        start.wait()
    ids = []
    while (job := store.claim(worker, 600)) is not None:
        ids.append(job.id)
    return ids


def test_claims_from_many_threads_never_hand_one_job_to_two_workers(opener: Opener, clock: Clock):
    jobs = submit(opener(clock=clock), 40)
    stores = [opener(clock=clock) for _ in range(6)]  # a connection each, as separate replicas have
    start = threading.Barrier(len(stores))
    results: dict[int, list[str]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _claim_all(stores[i], f"w{i}", start)))
               for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    claimed = [job_id for ids in results.values() for job_id in ids]
    assert sorted(claimed) == sorted(job.id for job in jobs)  # every job once, none twice

    # All leases run out at once (the whole service restarted): the takeover is just as exclusive.
    clock.advance(601)
    start = threading.Barrier(len(stores))
    results.clear()
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _claim_all(stores[i], f"v{i}", start)))
               for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    claimed = [job_id for ids in results.values() for job_id in ids]
    assert sorted(claimed) == sorted(job.id for job in jobs)
    assert {job.attempts for job in store_jobs(stores[0])} == {2}


def store_jobs(store: JobStore) -> list[Job]:
    return store.list(limit=1000).jobs


def _claim_in_process(spec: tuple[str, ...], worker: str, start: Any, out: Any) -> None:
    store = open_spec(spec)
    try:
        out.put((worker, _claim_all(store, worker, start)))
    finally:
        store.close()


def test_claims_from_several_processes_never_hand_one_job_to_two_workers(opener: Opener, clock: Clock):
    jobs = submit(opener(clock=clock), 30)
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(3), context.Queue()
    processes = [context.Process(target=_claim_in_process, args=(opener.spec, f"p{i}", start, out))
                 for i in range(3)]
    for process in processes:
        process.start()
    try:
        results = dict(out.get(timeout=120) for _ in processes)
    except queue.Empty:
        pytest.fail("a claiming process did not report")
    finally:
        for process in processes:
            process.join(timeout=30)
    claimed = [job_id for ids in results.values() for job_id in ids]
    assert sorted(claimed) == sorted(job.id for job in jobs)
    assert all(process.exitcode == 0 for process in processes)


# --- progress, finish, cancel --------------------------------------------------------------------------

def test_progress_merges_key_by_key_and_only_the_lease_holder_records_it(store: JobStore, clock: Clock):
    (job,) = submit(store)
    store.claim("w1", LEASE_S)
    clock.advance(1)
    store.update(job.id, "w1", progress={"decode": {"done": True, "audio_s": 3605.5}})
    updated = store.update(job.id, "w1", progress={"asr": {"chunks_done": 1, "chunks_total": 120}}, stage="decode")
    assert updated.progress == {"decode": {"done": True, "audio_s": 3605.5}, "asr": {"chunks_done": 1,
                                                                                      "chunks_total": 120}}
    assert (updated.stage, updated.updated_at) == ("decode", clock.now)
    later = store.update(job.id, "w1", progress={"asr": {"chunks_done": 2, "chunks_total": 120}})
    assert later.stage == "decode"  # no stage given: kept
    assert later.progress["asr"] == {"chunks_done": 2, "chunks_total": 120}
    assert store.get(job.id) == later
    with pytest.raises(LeaseLost):
        store.update(job.id, "w2", progress={"asr": {}})


def test_a_job_ends_exactly_once(opener: Opener, store: JobStore, clock: Clock):
    ok, bad = submit(store, 2)
    store.claim("w1", LEASE_S)
    store.claim("w1", LEASE_S)
    with pytest.raises(ValueError, match="exactly one"):
        store.finish(ok.id, "w1")
    with pytest.raises(ValueError, match="exactly one"):
        store.finish(ok.id, "w1", result=TRANSCRIPT, error=FAILURE)
    done = store.finish(ok.id, "w1", result=TRANSCRIPT)
    assert (done.state, done.result, done.error, done.lease_until) == ("succeeded", TRANSCRIPT, None, None)
    assert done.expires_at == clock.now + RETENTION_S
    for outcome in ({"result": TRANSCRIPT}, {"error": FAILURE}):
        with pytest.raises(LeaseLost):
            store.finish(ok.id, "w1", **outcome)
    assert store.get(ok.id) == done

    failed = store.finish(bad.id, "w1", error=FAILURE)
    assert (failed.state, failed.error, failed.result) == ("failed", FAILURE, None)

    # Runners racing to end one job (a stalled one and its successor under one name): one wins.
    (raced,) = submit(store)
    store.claim("w9", LEASE_S)
    stores = [opener(clock=clock, retention_s=RETENTION_S) for _ in range(6)]
    start, wins, refusals = threading.Barrier(len(stores)), [], []

    def finish(racer: JobStore) -> None:
        start.wait()
        try:
            wins.append(racer.finish(raced.id, "w9", result=TRANSCRIPT))
        except LeaseLost as e:
            refusals.append(e)

    threads = [threading.Thread(target=finish, args=(racer,)) for racer in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert (len(wins), len(refusals)) == (1, len(stores) - 1)


def test_cancelling_a_queued_job_keeps_it_from_every_runner(store: JobStore, clock: Clock):
    (job,) = submit(store)
    cancelled = store.cancel(job.id)
    assert (cancelled.state, cancelled.expires_at) == ("cancelled", clock.now + RETENTION_S)
    assert store.claim("w1", LEASE_S) is None
    assert store.cancel(job.id) == cancelled  # again: nothing changes
    with pytest.raises(UnknownJob):
        store.cancel("job_missing")


def test_a_running_job_cancelled_is_seen_by_its_runner_on_the_next_renew(store: JobStore, clock: Clock):
    job, other = submit(store, 2)
    store.claim("w1", LEASE_S)
    cancelled = store.cancel(job.id)
    assert (cancelled.state, cancelled.lease_until, cancelled.worker) == ("cancelled", None, "w1")
    with pytest.raises(JobCancelled):
        store.renew(job.id, "w1", LEASE_S)
    with pytest.raises(JobCancelled):
        store.update(job.id, "w1", stage="asr")
    with pytest.raises(JobCancelled):
        store.finish(job.id, "w1", result=TRANSCRIPT)
    assert store.get(job.id) == cancelled
    clock.advance(LEASE_S + 1)  # a cancelled job is not taken over when its old lease would have run out
    taken = store.claim("w2", LEASE_S)
    assert taken is not None and taken.id == other.id
    # An ended job is not cancelled after the fact.
    done = store.finish(other.id, "w2", result=TRANSCRIPT)
    assert store.cancel(other.id) == done


# --- expiry and callbacks ------------------------------------------------------------------------------

def test_ended_jobs_expire_with_their_inputs_and_running_ones_never(store: JobStore, clock: Clock):
    succeeded, cancelled, running, queued = submit(store, 4)
    start = clock.now
    store.claim("w1", LEASE_S)
    store.finish(succeeded.id, "w1", result=TRANSCRIPT)
    clock.advance(100)
    store.cancel(cancelled.id)
    store.claim("w1", 10 * RETENTION_S)
    page = store.list(limit=2)  # its cursor names `cancelled`, which is about to go
    assert [job.id for job in page.jobs] == [queued.id, running.id]

    assert store.expire(start + RETENTION_S - 1) == []
    assert store.expire(start + RETENTION_S) == [succeeded.input]
    assert store.get(succeeded.id) is None
    assert store.expire(start + 100 + RETENTION_S) == [cancelled.input]
    assert store.expire(start + 100 * RETENTION_S) == []
    assert {job.id for job in store_jobs(store)} == {running.id, queued.id}
    assert store.list(limit=2, after=page.next_cursor).jobs == []  # the cursor outlives the jobs it passed
    with pytest.raises(UnknownJob):
        store.cancel(succeeded.id)


def test_without_retention_ended_jobs_are_kept(opener: Opener, clock: Clock):
    store = opener(clock=clock)
    (job,) = submit(store)
    store.claim("w1", LEASE_S)
    done = store.finish(job.id, "w1", result=TRANSCRIPT)
    assert done.expires_at is None
    assert store.expire(clock.now + 10**9) == []
    assert store.get(job.id) == done


def test_callbacks_are_owed_for_ended_jobs_until_marked_sent(store: JobStore, clock: Clock):
    hooked, quiet, pending = submit(store, 1, "https://example.test/a") + submit(store, 1) + submit(
        store, 1, "https://example.test/b")
    assert store.pending_callbacks() == []
    for _ in range(3):
        store.claim("w1", LEASE_S)
    store.finish(hooked.id, "w1", result=TRANSCRIPT)
    store.finish(quiet.id, "w1", error=FAILURE)
    store.cancel(pending.id)
    assert [job.id for job in store.pending_callbacks()] == [hooked.id, pending.id]
    sent = store.callback_sent(hooked.id)
    assert sent.callback_done and sent.state == "succeeded"
    assert [job.id for job in store.pending_callbacks()] == [pending.id]
    assert sorted(store.expire(clock.now + RETENTION_S)) == sorted([hooked.input, quiet.input, pending.input])
    assert store.pending_callbacks() == []
    with pytest.raises(UnknownJob):
        store.callback_sent(pending.id)


# --- speakers --------------------------------------------------------------------------------------------

def test_speakers_are_enrolled_replaced_listed_and_deleted(store: JobStore, clock: Clock):
    embedding = [0.1, -1e-7, 1 / 3, 2.5e10, 0.0]
    clips = [{"file": "alice-1.wav", "duration_s": 7.5}, {"file": "alice-2.wav", "duration_s": 11.0}]
    alice = store.put_speaker("alice", embedding, clips)
    assert (alice.name, alice.embedding, alice.clips) == ("alice", embedding, clips)  # floats exactly
    assert alice.created_at == alice.updated_at == clock.now
    store.put_speaker("Bob", [1.0, 2.0], [])
    store.put_speaker("bob", [3.0], [{"file": "bob.flac"}])
    assert store.get_speaker("alice") == alice
    assert store.get_speaker("carol") is None
    clock.advance(60)
    again = store.put_speaker("alice", [0.5], clips[:1])
    assert (again.embedding, again.clips, again.created_at, again.updated_at) == ([0.5], clips[:1],
                                                                                  alice.created_at, clock.now)
    assert [speaker.name for speaker in store.list_speakers()] == ["Bob", "alice", "bob"]
    assert store.delete_speaker("alice") is True
    assert store.delete_speaker("alice") is False
    assert store.get_speaker("alice") is None
    assert [speaker.name for speaker in store.list_speakers()] == ["Bob", "bob"]


# --- durability --------------------------------------------------------------------------------------------

def test_everything_survives_closing_the_store_and_opening_it_again(opener: Opener, clock: Clock):
    store = opener(clock=clock, retention_s=RETENTION_S)
    done, running, queued = submit(store, 3, "https://example.test/hook")
    store.claim("w1", LEASE_S)
    store.finish(done.id, "w1", result=TRANSCRIPT)
    store.claim("w1", LEASE_S)
    store.update(running.id, "w1", progress={"asr": {"chunks_done": 3}}, stage="decode")
    speaker = store.put_speaker("alice", [0.25, -0.5], [{"file": "a.wav"}])
    before = store_jobs(store)
    store.close()

    reopened = opener(clock=clock, retention_s=RETENTION_S)
    assert store_jobs(reopened) == before
    assert reopened.list_speakers() == [speaker]
    assert [job.id for job in reopened.pending_callbacks()] == [done.id]
    taken = reopened.claim("w2", LEASE_S)  # the running job's lease still holds: the queued one is next
    assert taken is not None and taken.id == queued.id
    assert reopened.renew(running.id, "w1", LEASE_S).stage == "decode"  # w1 still holds its lease


def test_the_sqlite_store_is_one_wal_file_that_other_processes_share(tmp_path: Path, clock: Clock):
    path = tmp_path / "nested" / "jobs.db"
    one = open_job_store(f"sqlite://{path}")
    other = SqliteJobStore(path, clock=clock)
    try:
        (job,) = submit(one)
        assert other.get(job.id) == job  # a second connection sees the committed job at once
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        one.close()
        other.close()
    remote = open_job_store("redis://127.0.0.1:1/0")  # connects on first use
    assert isinstance(remote, RedisJobStore)
    remote.close()


def _hold_write_lock(path: str, ready: Any, release: Any) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        ready.set()
        release.wait(30)
        db.execute("COMMIT")


def test_a_sqlite_claim_waits_for_another_process_s_write_instead_of_failing(tmp_path: Path):
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    (job,) = submit(store)
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_write_lock, args=(str(path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        threading.Timer(0.3, release.set).start()
        started = time.monotonic()
        claimed = store.claim("w1", LEASE_S)
        assert time.monotonic() - started >= 0.25  # it waited for the other process's transaction
        assert claimed is not None and claimed.id == job.id
    finally:
        release.set()
        holder.join(timeout=30)
        store.close()
