"""The cluster's job store: Redis, shared by every ingress replica on every node.

Each change that reads before it writes (claim, renew, update, finish, cancel, expire) is one Lua
script, which Redis runs atomically: two replicas never both claim a job or both finish one. A job is
a hash (its progress a second hash, one field per key, so an update merges without a read), and sorted
sets index it: every job by insertion sequence (the list and its cursors), queued jobs by sequence,
running jobs by lease end (so a claim finds run-out leases first), ended jobs by expiry, and ended jobs
whose callback is still owed. Every key starts with `prefix`, whose `{...}` hash tag keeps them in one
Redis Cluster slot, as scripts that touch several keys need.

Durability is Redis's: an operator runs it with the append-only file on (`appendonly yes`,
`appendfsync everysec` or `always`) so that accepted jobs survive a restart of Redis itself.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from serve_app.jobs.store import (
    Job,
    JobCancelled,
    JobKind,
    JobPage,
    JobState,
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

_EXPIRE_BATCH = 500  # jobs deleted per script run: a long expiry does not hold Redis up

# Shared by every script: ARGV[1] is the key prefix. A script answers {'ok', job hash, progress hash},
# {'none'}, {'missing'}, or {'cancelled' | 'lost', state}.
_PRELUDE = """
local prefix = ARGV[1]
local function job_key(id) return prefix .. 'job:' .. id end
local function progress_key(id) return prefix .. 'progress:' .. id end
local function snapshot(id)
  return {'ok', redis.call('HGETALL', job_key(id)), redis.call('HGETALL', progress_key(id))}
end
local function refusal(id, worker)
  local st = redis.call('HMGET', job_key(id), 'state', 'worker')
  if not st[1] then return {'missing'} end
  if st[1] == 'cancelled' then return {'cancelled', st[1]} end
  if st[1] ~= 'running' or st[2] ~= worker then return {'lost', st[1]} end
  return nil
end
local function ended(id, expires_at, expiring, callbacks)
  local job = job_key(id)
  redis.call('HDEL', job, 'lease_until')
  if expires_at ~= '' then
    redis.call('HSET', job, 'expires_at', expires_at)
    redis.call('ZADD', expiring, expires_at, id)
  end
  if redis.call('HEXISTS', job, 'callback_url') == 1 then
    redis.call('ZADD', callbacks, redis.call('HGET', job, 'seq'), id)
  end
end
"""

# KEYS: seq, all, queued. ARGV: prefix, id, now, kind, fields, input, callback_url ('' for none).
_CREATE = _PRELUDE + """
local id, now = ARGV[2], ARGV[3]
local seq = redis.call('INCR', KEYS[1])
redis.call('HSET', job_key(id), 'id', id, 'seq', seq, 'kind', ARGV[4], 'state', 'queued', 'created_at', now,
           'updated_at', now, 'fields', ARGV[5], 'input', ARGV[6], 'callback_done', '0', 'attempts', '0')
if ARGV[7] ~= '' then redis.call('HSET', job_key(id), 'callback_url', ARGV[7]) end
redis.call('ZADD', KEYS[2], seq, id)
redis.call('ZADD', KEYS[3], seq, id)
return snapshot(id)
"""

# KEYS: running, queued, expiring, callbacks.
# ARGV: prefix, now, worker, lease_until, max_attempts, expires_at ('' for never), exhausted error JSON.
_CLAIM = _PRELUDE + """
local now, worker, lease_until, max_attempts = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local chosen = nil
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)) do
  if tonumber(redis.call('HGET', job_key(id), 'attempts')) < max_attempts then
    chosen = id
    break
  end
  redis.call('HSET', job_key(id), 'state', 'failed', 'error', ARGV[7], 'updated_at', now)
  redis.call('ZREM', KEYS[1], id)
  ended(id, ARGV[6], KEYS[3], KEYS[4])
end
if not chosen then
  chosen = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not chosen then return {'none'} end
  redis.call('ZREM', KEYS[2], chosen)
end
redis.call('HSET', job_key(chosen), 'state', 'running', 'worker', worker, 'lease_until', lease_until,
           'updated_at', now)
redis.call('HINCRBY', job_key(chosen), 'attempts', 1)
redis.call('ZADD', KEYS[1], lease_until, chosen)
return snapshot(chosen)
"""

# KEYS: running. ARGV: prefix, id, worker, now, lease_until.
_RENEW = _PRELUDE + """
local id = ARGV[2]
local refused = refusal(id, ARGV[3])
if refused then return refused end
redis.call('HSET', job_key(id), 'lease_until', ARGV[5], 'updated_at', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[5], id)
return snapshot(id)
"""

# ARGV: prefix, id, worker, now, stage ('' to keep it), then progress key/JSON value pairs.
_UPDATE = _PRELUDE + """
local id = ARGV[2]
local refused = refusal(id, ARGV[3])
if refused then return refused end
redis.call('HSET', job_key(id), 'updated_at', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', job_key(id), 'stage', ARGV[5]) end
if #ARGV > 5 then redis.call('HSET', progress_key(id), unpack(ARGV, 6)) end
return snapshot(id)
"""

# KEYS: running, expiring, callbacks. ARGV: prefix, id, worker, now, state, 'result' | 'error', JSON, expires_at.
_FINISH = _PRELUDE + """
local id = ARGV[2]
local refused = refusal(id, ARGV[3])
if refused then return refused end
redis.call('HSET', job_key(id), 'state', ARGV[5], ARGV[6], ARGV[7], 'updated_at', ARGV[4])
redis.call('ZREM', KEYS[1], id)
ended(id, ARGV[8], KEYS[2], KEYS[3])
return snapshot(id)
"""

# KEYS: running, queued. ARGV: prefix, id, worker, now.
_RELEASE = _PRELUDE + """
local id = ARGV[2]
local refused = refusal(id, ARGV[3])
if refused then return refused end
redis.call('HSET', job_key(id), 'state', 'queued', 'updated_at', ARGV[4])
redis.call('HDEL', job_key(id), 'lease_until')
redis.call('HINCRBY', job_key(id), 'attempts', -1)
redis.call('ZREM', KEYS[1], id)
redis.call('ZADD', KEYS[2], redis.call('HGET', job_key(id), 'seq'), id)
return snapshot(id)
"""

# KEYS: queued, running, expiring, callbacks. ARGV: prefix, id, now, expires_at.
_CANCEL = _PRELUDE + """
local id = ARGV[2]
local state = redis.call('HGET', job_key(id), 'state')
if not state then return {'missing'} end
if state == 'queued' or state == 'running' then
  redis.call('HSET', job_key(id), 'state', 'cancelled', 'updated_at', ARGV[3])
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  ended(id, ARGV[4], KEYS[3], KEYS[4])
end
return snapshot(id)
"""

# KEYS: all, expiring, callbacks. ARGV: prefix, now, batch. Answers the deleted jobs' inputs.
_EXPIRE = _PRELUDE + """
local inputs = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))) do
  local input = redis.call('HGET', job_key(id), 'input')
  if input then table.insert(inputs, input) end
  redis.call('DEL', job_key(id), progress_key(id))
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
return inputs
"""

# KEYS: callbacks. ARGV: prefix, id.
_CALLBACK_SENT = _PRELUDE + """
local id = ARGV[2]
if redis.call('EXISTS', job_key(id)) == 0 then return {'missing'} end
redis.call('HSET', job_key(id), 'callback_done', '1')
redis.call('ZREM', KEYS[1], id)
return snapshot(id)
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _pairs(flat: builtins.list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _job(fields: dict[str, str], progress: dict[str, str]) -> Job:
    return Job(id=fields["id"], kind=cast(JobKind, fields["kind"]), state=cast(JobState, fields["state"]),
               created_at=float(fields["created_at"]), updated_at=float(fields["updated_at"]),
               fields=json.loads(fields["fields"]), input=fields["input"],
               progress={key: json.loads(value) for key, value in progress.items()},
               result=json.loads(fields["result"]) if "result" in fields else None,
               error=json.loads(fields["error"]) if "error" in fields else None,
               callback_url=fields.get("callback_url"), callback_done=fields.get("callback_done") == "1",
               expires_at=_float(fields.get("expires_at")), attempts=int(fields["attempts"]),
               worker=fields.get("worker"), lease_until=_float(fields.get("lease_until")), stage=fields.get("stage"))


def _speaker(fields: dict[str, str]) -> Speaker:
    return Speaker(name=fields["name"], embedding=json.loads(fields["embedding"]), clips=json.loads(fields["clips"]),
                   created_at=float(fields["created_at"]), updated_at=float(fields["updated_at"]))


class RedisJobStore:
    """Jobs and speakers in one Redis database, under keys that start with `prefix`."""

    def __init__(self, url: str, *, prefix: str = "{transcription-jobs}:", retention_s: float | None = None,
                 max_attempts: int = 3, clock: Callable[[], float] = time.time,
                 client: redis.Redis | None = None) -> None:
        """`url`: redis://, rediss:// or unix://; `client`, if given instead, must decode responses
        (`decode_responses=True`);
        `retention_s`, `max_attempts`: as for `SqliteJobStore`. Times come from this process's clock:
        leases must be much longer than the clock skew between nodes."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._redis = client if client is not None else redis.Redis.from_url(url, decode_responses=True)
        self._prefix, self._retention_s, self._max_attempts, self._clock = prefix, retention_s, max_attempts, clock
        self._keys = {name: f"{prefix}{name}" for name in ("seq", "all", "queued", "running", "expiring",
                                                           "callbacks", "speakers")}
        script = self._redis.register_script
        self._create, self._claim, self._renew = script(_CREATE), script(_CLAIM), script(_RENEW)
        self._update, self._finish, self._cancel = script(_UPDATE), script(_FINISH), script(_CANCEL)
        self._expire, self._callback_sent = script(_EXPIRE), script(_CALLBACK_SENT)
        self._release = script(_RELEASE)

    def _key(self, *names: str) -> builtins.list[str]:
        return [self._keys[name] for name in names]

    def _expires_at(self, now: float) -> str:
        return "" if self._retention_s is None else repr(now + self._retention_s)

    @staticmethod
    def _answer(reply: Any, job_id: str, worker: str = "") -> Job:
        """A script's answer as a job, or the refusal it reports as an error."""
        status = reply[0]
        if status == "ok":
            return _job(_pairs(reply[1]), _pairs(reply[2]))
        if status == "missing":
            raise UnknownJob(job_id)
        if status == "cancelled":
            raise JobCancelled(job_id, worker, reply[1])
        raise LeaseLost(job_id, worker, reply[1])

    # --- jobs ----------------------------------------------------------------------------------------

    def create(self, kind: JobKind, fields: dict[str, Any], input: str, callback_url: str | None = None) -> Job:
        check_kind(kind)
        job_id = new_job_id()
        reply = self._create(keys=self._key("seq", "all", "queued"),
                             args=[self._prefix, job_id, repr(self._clock()), kind, _dumps(fields), input,
                                   callback_url or ""])
        return self._answer(reply, job_id)

    def _fetch(self, job_ids: builtins.list[str]) -> builtins.list[Job]:
        """These jobs, in this order, leaving out any deleted meanwhile."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(f"{self._prefix}job:{job_id}")
            pipe.hgetall(f"{self._prefix}progress:{job_id}")
        replies = pipe.execute()
        return [_job(fields, progress) for fields, progress in zip(replies[::2], replies[1::2], strict=True)
                if fields]

    def get(self, job_id: str) -> Job | None:
        jobs = self._fetch([job_id])
        return jobs[0] if jobs else None

    def list(self, limit: int = 20, after: str | None = None) -> JobPage:
        check_limit(limit)
        top = f"({decode_cursor(after)}" if after is not None else "+inf"
        entries: builtins.list[tuple[str, float]] = self._redis.zrevrangebyscore(  # type: ignore[assignment]
            self._keys["all"], top, "-inf", start=0, num=limit + 1, withscores=True)
        more = len(entries) > limit
        entries = entries[:limit]
        next_cursor = encode_cursor(int(entries[-1][1])) if more else None
        return JobPage(self._fetch([job_id for job_id, _ in entries]), next_cursor)

    def claim(self, worker: str, lease_s: float) -> Job | None:
        now = self._clock()
        reply = self._claim(keys=self._key("running", "queued", "expiring", "callbacks"),
                            args=[self._prefix, repr(now), worker, repr(now + lease_s), self._max_attempts,
                                  self._expires_at(now), _dumps(exhausted_error())])
        return None if reply[0] == "none" else self._answer(reply, "", worker)

    def renew(self, job_id: str, worker: str, lease_s: float) -> Job:
        now = self._clock()
        reply = self._renew(keys=self._key("running"),
                            args=[self._prefix, job_id, worker, repr(now), repr(now + lease_s)])
        return self._answer(reply, job_id, worker)

    def update(self, job_id: str, worker: str, *, progress: dict[str, Any] | None = None,
               stage: str | None = None) -> Job:
        if stage == "":
            raise ValueError("a stage has a name")
        pairs = [item for key, value in (progress or {}).items() for item in (key, _dumps(value))]
        reply = self._update(args=[self._prefix, job_id, worker, repr(self._clock()), stage or "", *pairs])
        return self._answer(reply, job_id, worker)

    def finish(self, job_id: str, worker: str, *, result: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None) -> Job:
        state = check_outcome(result, error)
        now = self._clock()
        field, value = ("result", result) if state == "succeeded" else ("error", error)
        reply = self._finish(keys=self._key("running", "expiring", "callbacks"),
                             args=[self._prefix, job_id, worker, repr(now), state, field, _dumps(value),
                                   self._expires_at(now)])
        return self._answer(reply, job_id, worker)

    def release(self, job_id: str, worker: str) -> Job:
        reply = self._release(keys=self._key("running", "queued"),
                              args=[self._prefix, job_id, worker, repr(self._clock())])
        return self._answer(reply, job_id, worker)

    def cancel(self, job_id: str) -> Job:
        now = self._clock()
        reply = self._cancel(keys=self._key("queued", "running", "expiring", "callbacks"),
                             args=[self._prefix, job_id, repr(now), self._expires_at(now)])
        return self._answer(reply, job_id)

    def expire(self, now: float | None = None) -> builtins.list[str]:
        now = self._clock() if now is None else now
        inputs: builtins.list[str] = []
        while True:
            batch = self._expire(keys=self._key("all", "expiring", "callbacks"),
                                 args=[self._prefix, repr(now), _EXPIRE_BATCH])
            inputs.extend(batch)
            if len(batch) < _EXPIRE_BATCH:
                return inputs

    def pending_callbacks(self, limit: int = 100) -> builtins.list[Job]:
        check_limit(limit)
        job_ids: builtins.list[str] = self._redis.zrange(self._keys["callbacks"], 0, limit - 1)  # type: ignore[assignment]
        return self._fetch(job_ids)

    def callback_sent(self, job_id: str) -> Job:
        return self._answer(self._callback_sent(keys=self._key("callbacks"), args=[self._prefix, job_id]), job_id)

    # --- speakers ------------------------------------------------------------------------------------

    def _speaker_key(self, name: str) -> str:
        return f"{self._prefix}speaker:{name}"

    def put_speaker(self, name: str, embedding: builtins.list[float],
                    clips: builtins.list[dict[str, Any]]) -> Speaker:
        now, key = repr(self._clock()), self._speaker_key(name)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hsetnx(key, "created_at", now)
        pipe.hset(key, mapping={"name": name, "embedding": _dumps([float(x) for x in embedding]),
                                "clips": _dumps(clips), "updated_at": now})
        pipe.zadd(self._keys["speakers"], {name: 0})
        pipe.hgetall(key)
        return _speaker(pipe.execute()[-1])

    def get_speaker(self, name: str) -> Speaker | None:
        fields: dict[str, str] = self._redis.hgetall(self._speaker_key(name))  # type: ignore[assignment]
        return _speaker(fields) if fields else None

    def list_speakers(self) -> builtins.list[Speaker]:
        # Every member scores 0, so the set is in name order.
        names: builtins.list[str] = self._redis.zrange(self._keys["speakers"], 0, -1)  # type: ignore[assignment]
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self._speaker_key(name))
        return [_speaker(fields) for fields in pipe.execute() if fields]

    def delete_speaker(self, name: str) -> bool:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._speaker_key(name))
        pipe.zrem(self._keys["speakers"], name)
        deleted, _ = pipe.execute()
        return bool(deleted)

    def close(self) -> None:
        self._redis.close()
