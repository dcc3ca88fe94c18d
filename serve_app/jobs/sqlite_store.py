"""The embedded default's job store: one SQLite file on local disk, no server.

WAL mode lets readers (status, list, results) go on while a runner writes. Every change is one
`BEGIN IMMEDIATE` transaction, which takes the file's write lock before it reads: two processes on
one machine (ingress replicas, or an old one still stopping beside its successor) never both claim a
job, and never both finish one. `synchronous=FULL` makes a commit durable through a power cut, not
only a crash: an accepted job is on disk before its 202 is sent. SQLite's locking needs a local
filesystem; several hosts share a `RedisJobStore` instead.

Within one process one connection serves every thread, behind a lock: SQLite calls take microseconds
to milliseconds, so the lock costs nothing next to a transcription.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serve_app.jobs.store import (
    FINAL_STATES,
    Job,
    JobCancelled,
    JobKind,
    JobPage,
    LeaseLost,
    Speaker,
    UnknownJob,
    check_kind,
    check_limit,
    check_outcome,
    decode_cursor,
    encode_cursor,
    exhausted_error,
    new_job_id,
)

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: never reused, so cursors stay valid
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    fields TEXT NOT NULL,
    input TEXT NOT NULL,
    progress TEXT NOT NULL,
    result TEXT,
    error TEXT,
    callback_url TEXT,
    callback_done INTEGER NOT NULL DEFAULT 0,
    expires_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until REAL,
    stage TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_lease ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_callback ON jobs (seq)
    WHERE callback_url IS NOT NULL AND callback_done = 0 AND state IN ('succeeded', 'failed', 'cancelled');
CREATE TABLE IF NOT EXISTS speakers (
    name TEXT PRIMARY KEY,
    embedding TEXT NOT NULL,
    clips TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""
_JOB_COLUMNS = ("id, kind, state, created_at, updated_at, fields, input, progress, result, error, callback_url, "
                "callback_done, expires_at, attempts, worker, lease_until, stage")


def _job(row: sqlite3.Row) -> Job:
    return Job(id=row["id"], kind=row["kind"], state=row["state"], created_at=row["created_at"],
               updated_at=row["updated_at"], fields=json.loads(row["fields"]), input=row["input"],
               progress=json.loads(row["progress"]), result=_loads(row["result"]), error=_loads(row["error"]),
               callback_url=row["callback_url"], callback_done=bool(row["callback_done"]),
               expires_at=row["expires_at"], attempts=row["attempts"], worker=row["worker"],
               lease_until=row["lease_until"], stage=row["stage"])


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


class SqliteJobStore:
    """Jobs and speakers in one SQLite file (created with its folder if missing)."""

    def __init__(self, path: str | Path, *, retention_s: float | None = None, max_attempts: int = 3,
                 busy_timeout_s: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        """`retention_s`: how long an ended job and its input are kept (None: until deleted by hand);
        `max_attempts`: claims before a job whose lease keeps running out is failed;
        `busy_timeout_s`: how long a write waits for another process's transaction."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._retention_s, self._max_attempts, self._clock = retention_s, max_attempts, clock
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; each change opens its own BEGIN IMMEDIATE.
        self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} holds job store schema {version}; this version reads "
                                   f"{_SCHEMA_VERSION}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the file's write lock from its first statement."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> builtins.list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _expires_at(self, now: float) -> float | None:
        return None if self._retention_s is None else now + self._retention_s

    @staticmethod
    def _get(db: sqlite3.Connection, job_id: str) -> Job:
        row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(job_id)
        return _job(row)

    @classmethod
    def _held(cls, db: sqlite3.Connection, job_id: str, worker: str) -> Job:
        job = cls._get(db, job_id)
        if job.state == "cancelled":
            raise JobCancelled(job_id, worker, job.state)
        if job.state != "running" or job.worker != worker:
            raise LeaseLost(job_id, worker, job.state)
        return job

    # --- jobs ----------------------------------------------------------------------------------------

    def create(self, kind: JobKind, fields: dict[str, Any], input: str, callback_url: str | None = None) -> Job:
        check_kind(kind)
        job_id, now = new_job_id(), self._clock()
        with self._write() as db:
            db.execute("INSERT INTO jobs (id, kind, state, created_at, updated_at, fields, input, progress, "
                       "callback_url) VALUES (?, ?, 'queued', ?, ?, ?, ?, '{}', ?)",
                       (job_id, kind, now, now, _dumps(fields), input, callback_url or None))
            return self._get(db, job_id)

    def get(self, job_id: str) -> Job | None:
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def list(self, limit: int = 20, after: str | None = None) -> JobPage:
        check_limit(limit)
        before = decode_cursor(after) if after is not None else 2**63 - 1
        rows = self._read(f"SELECT seq, {_JOB_COLUMNS} FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                          (before, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return JobPage([_job(row) for row in rows], encode_cursor(rows[-1]["seq"]) if more else None)

    def claim(self, worker: str, lease_s: float) -> Job | None:
        now = self._clock()
        with self._write() as db:
            expired = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = 'running' AND lease_until < ? "
                                 "ORDER BY lease_until, seq", (now,)).fetchall()
            chosen: str | None = None
            for row in expired:
                if row["attempts"] < self._max_attempts:
                    chosen = row["id"]
                    break
                db.execute("UPDATE jobs SET state = 'failed', error = ?, lease_until = NULL, updated_at = ?, "
                           "expires_at = ? WHERE id = ?",
                           (_dumps(exhausted_error()), now, self._expires_at(now), row["id"]))
            if chosen is None:
                queued = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
                if queued is None:
                    return None
                chosen = queued["id"]
            db.execute("UPDATE jobs SET state = 'running', worker = ?, lease_until = ?, attempts = attempts + 1, "
                       "updated_at = ? WHERE id = ?", (worker, now + lease_s, now, chosen))
            return self._get(db, chosen)

    def renew(self, job_id: str, worker: str, lease_s: float) -> Job:
        now = self._clock()
        with self._write() as db:
            self._held(db, job_id, worker)
            db.execute("UPDATE jobs SET lease_until = ?, updated_at = ? WHERE id = ?", (now + lease_s, now, job_id))
            return self._get(db, job_id)

    def update(self, job_id: str, worker: str, *, progress: dict[str, Any] | None = None,
               stage: str | None = None) -> Job:
        now = self._clock()
        with self._write() as db:
            job = self._held(db, job_id, worker)
            merged = {**job.progress, **(progress or {})}
            db.execute("UPDATE jobs SET progress = ?, stage = COALESCE(?, stage), updated_at = ? WHERE id = ?",
                       (_dumps(merged), stage, now, job_id))
            return self._get(db, job_id)

    def finish(self, job_id: str, worker: str, *, result: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None) -> Job:
        state = check_outcome(result, error)
        now = self._clock()
        with self._write() as db:
            self._held(db, job_id, worker)
            db.execute("UPDATE jobs SET state = ?, result = ?, error = ?, lease_until = NULL, updated_at = ?, "
                       "expires_at = ? WHERE id = ?",
                       (state, _dumps(result), _dumps(error), now, self._expires_at(now), job_id))
            return self._get(db, job_id)

    def release(self, job_id: str, worker: str) -> Job:
        now = self._clock()
        with self._write() as db:
            self._held(db, job_id, worker)
            # The queue is taken in `seq` order, so the job is first in line again where it was.
            db.execute("UPDATE jobs SET state = 'queued', lease_until = NULL, attempts = attempts - 1, "
                       "updated_at = ? WHERE id = ?", (now, job_id))
            return self._get(db, job_id)

    def cancel(self, job_id: str) -> Job:
        now = self._clock()
        with self._write() as db:
            job = self._get(db, job_id)
            if job.state in FINAL_STATES:
                return job
            db.execute("UPDATE jobs SET state = 'cancelled', lease_until = NULL, updated_at = ?, expires_at = ? "
                       "WHERE id = ?", (now, self._expires_at(now), job_id))
            return self._get(db, job_id)

    def expire(self, now: float | None = None) -> builtins.list[str]:
        now = self._clock() if now is None else now
        with self._write() as db:
            rows = db.execute("DELETE FROM jobs WHERE expires_at <= ? AND state IN ('succeeded', 'failed', "
                              "'cancelled') RETURNING input", (now,)).fetchall()
            return [row["input"] for row in rows]

    def pending_callbacks(self, limit: int = 100) -> builtins.list[Job]:
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE callback_url IS NOT NULL AND callback_done = 0 "
                          "AND state IN ('succeeded', 'failed', 'cancelled') ORDER BY seq LIMIT ?", (limit,))
        return [_job(row) for row in rows]

    def callback_sent(self, job_id: str) -> Job:
        with self._write() as db:
            self._get(db, job_id)
            db.execute("UPDATE jobs SET callback_done = 1 WHERE id = ?", (job_id,))
            return self._get(db, job_id)

    # --- speakers ------------------------------------------------------------------------------------

    def put_speaker(self, name: str, embedding: builtins.list[float],
                    clips: builtins.list[dict[str, Any]]) -> Speaker:
        now = self._clock()
        with self._write() as db:
            rows = db.execute("INSERT INTO speakers (name, embedding, clips, created_at, updated_at) "
                              "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET embedding = excluded.embedding, "
                              "clips = excluded.clips, updated_at = excluded.updated_at RETURNING *",
                              (name, _dumps([float(x) for x in embedding]), _dumps(clips), now, now)).fetchall()
            return _speaker(rows[0])

    def get_speaker(self, name: str) -> Speaker | None:
        rows = self._read("SELECT * FROM speakers WHERE name = ?", (name,))
        return _speaker(rows[0]) if rows else None

    def list_speakers(self) -> builtins.list[Speaker]:
        return [_speaker(row) for row in self._read("SELECT * FROM speakers ORDER BY name")]

    def delete_speaker(self, name: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM speakers WHERE name = ?", (name,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _speaker(row: sqlite3.Row) -> Speaker:
    return Speaker(name=row["name"], embedding=json.loads(row["embedding"]), clips=json.loads(row["clips"]),
                   created_at=row["created_at"], updated_at=row["updated_at"])
