"""Locust load test for POST /v1/audio/transcriptions and for durable jobs.

    load_tests/run_local.sh                                    # headless, bounded, CSV stats (see README.md)
    .venv/bin/locust -f load_tests/locustfile.py --host http://127.0.0.1:8000   # web UI on :8089
    .venv/bin/locust -f load_tests/locustfile.py --host http://127.0.0.1:8000 JobUser   # jobs only

Two user classes, about ten `TranscriptionUser`s to one `JobUser` when Locust runs both (Locust's weights:
no JobUser below 6 users). Name classes after the file to run only those; load_tests/headless.py runs
TranscriptionUser only.

Each TranscriptionUser uploads one clip again and again, with a weighted mix of requests:

    weight 6  response_format=json                                   -> {"text": ...}
    weight 2  response_format=srt                                    -> subtitle cues
    weight 2  response_format=verbose_json, timestamp_granularities[]=word -> text + words
    weight 1  diarize=true, response_format=diarized_json            -> segments with speakers

A response counts as a success when it is 200 and its body is what the format promises (non-empty text
when the clip has speech). A 503 with Retry-After is the service shedding load on purpose: it is not a
failure; it shows up as its own row, "<name> (shed)", and the user waits Retry-After before its next request.

Each JobUser submits a longer recording (the clip repeated) to POST /v1/audio/transcriptions/jobs, follows
it at GET /v1/jobs/{id} with backoff (1 s, then half as long again each time, at most 15 s) until it ends,
and fetches its result as SRT. Rows: "/v1/audio/transcriptions/jobs [submit]", "/v1/jobs/{id} [poll]",
"/v1/jobs/{id}/result [srt]", and "job [submit to result]", whose time is the job's whole life: a job that
fails, is cancelled, or does not end within LOAD_TEST_JOB_TIMEOUT_S is a failure there.

Environment:
    LOAD_TEST_AUDIO         audio file to upload (any format the service accepts); default: generated in
                            code - a two-voice English conversation if espeak-ng is importable (the
                            `espeakng-loader` test dependency, via tests/speech.py), else tone plus noise
    LOAD_TEST_API_KEY       sent as `Authorization: Bearer <key>` when set
    LOAD_TEST_MODEL         model field (default whisper-1)
    LOAD_TEST_NUM_SPEAKERS  num_speakers for the diarize request (default 2 for the generated
                            conversation, unset otherwise)
    LOAD_TEST_REQUIRE_TEXT  1/0: demand non-empty text (default: 1 unless the clip is the tone fallback,
                            where Whisper may rightly hear nothing)
    LOAD_TEST_TIMEOUT_S     per-request timeout in seconds (default 600)
    LOAD_TEST_MAX_RETRY_AFTER_S  cap on how long a shed user waits (default 30)
    LOAD_TEST_SUMMARY_PATH  also write the closing summary (see `run_summary`) to this JSON file
    LOAD_TEST_JOB_AUDIO     the file a JobUser submits (default: the clip, LOAD_TEST_JOB_REPEAT times over)
    LOAD_TEST_JOB_REPEAT    how many times a WAV clip is repeated for a job (default 8: about 2 min of the
                            generated conversation)
    LOAD_TEST_JOB_TIMEOUT_S how long a JobUser follows one job before counting it failed (default 1800)
    LOAD_TEST_JOB_MAX_POLL_S  longest wait between two polls of a job (default 15)
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import mimetypes
import os
import random
import sys
import time
import wave
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

from locust import HttpUser, events, task
from locust.stats import RequestStats, StatsEntry, StatsError

logger = logging.getLogger("load_test")

ROUTE = "/v1/audio/transcriptions"
JOB_ROUTE = "/v1/audio/transcriptions/jobs"
JOB_SUBMIT = f"{JOB_ROUTE} [submit]"
JOB_POLL = "/v1/jobs/{id} [poll]"
JOB_RESULT = "/v1/jobs/{id}/result [srt]"
JOB_WHOLE = "job [submit to result]"
SAMPLE_RATE = 16_000
REPO = Path(__file__).resolve().parents[1]
CONVERSATION = [
    ("A", "Good morning. Thanks for joining the call about the quarterly budget."),
    ("B", "Happy to be here. I have the numbers for the new project ready."),
    ("A", "Great, please start with the costs for the first month."),
    ("B", "The first month costs twelve thousand dollars, mostly for servers."),
]


# --- the clip ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    filename: str
    data: bytes
    content_type: str
    has_speech: bool
    speakers: int | None = None


def wav_bytes(samples: array, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono 16-bit PCM WAV."""
    buf = BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.tobytes() if sys.byteorder == "little" else _swapped(samples).tobytes())
    return buf.getvalue()


def _swapped(samples: array) -> array:
    out = array("h", samples)
    out.byteswap()
    return out


def tone_with_noise(seconds: float = 5.0, seed: int = 7) -> bytes:
    """A few seconds of two tones under a slow envelope plus white noise (no speech)."""
    rng = random.Random(seed)
    n = int(seconds * SAMPLE_RATE)
    samples = array("h")
    for i in range(n):
        t = i / SAMPLE_RATE
        envelope = 0.5 * (1 - math.cos(2 * math.pi * min(t / seconds, 1.0)))
        x = envelope * (0.3 * math.sin(2 * math.pi * 220 * t) + 0.2 * math.sin(2 * math.pi * 330 * t))
        x += rng.gauss(0.0, 0.02)
        samples.append(max(-32768, min(32767, round(x * 32767))))
    return wav_bytes(samples)


def synthetic_conversation() -> bytes | None:
    """Two espeak-ng voices reading CONVERSATION (about 15 s), or None where espeak-ng is not installed."""
    try:
        speech = _load_module(REPO / "tests" / "speech.py")
    except (ImportError, OSError) as exc:
        logger.info("no speech synthesiser (%s): falling back to tone plus noise", exc)
        return None
    try:
        samples, _turns = speech.conversation(CONVERSATION, {"A": "en-us", "B": "en-gb-x-rp+f3"})
    except (OSError, RuntimeError, ValueError) as exc:  # espeak-ng there but unusable: use the tone
        logger.warning("speech synthesis failed (%s): falling back to tone plus noise", exc)
        return None
    return speech.to_wav_bytes(samples)


def _load_module(path: Path) -> ModuleType:
    """Import a file by path (tests/speech.py is a helper module, not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"_load_test_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


@functools.cache
def clip() -> Clip:
    """The clip every user uploads: LOAD_TEST_AUDIO, else generated speech, else tone plus noise."""
    path = os.environ.get("LOAD_TEST_AUDIO")
    if path:
        p = Path(path).expanduser()
        content_type = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        return Clip(p.name, p.read_bytes(), content_type, has_speech=True,
                    speakers=_env_int("LOAD_TEST_NUM_SPEAKERS"))
    speech = synthetic_conversation()
    if speech is not None:
        return Clip("conversation.wav", speech, "audio/wav", has_speech=True,
                    speakers=_env_int("LOAD_TEST_NUM_SPEAKERS", 2))
    return Clip("tone.wav", tone_with_noise(), "audio/wav", has_speech=False,
                speakers=_env_int("LOAD_TEST_NUM_SPEAKERS"))


@functools.cache
def job_clip() -> Clip:
    """The recording a JobUser submits: LOAD_TEST_JOB_AUDIO, else the clip LOAD_TEST_JOB_REPEAT times over
    (a WAV clip; any other format is sent once)."""
    path = os.environ.get("LOAD_TEST_JOB_AUDIO")
    if path:
        p = Path(path).expanduser()
        content_type = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        return Clip(p.name, p.read_bytes(), content_type, has_speech=True)
    c = clip()
    repeat = _env_int("LOAD_TEST_JOB_REPEAT", 8) or 1
    try:
        with wave.open(BytesIO(c.data)) as w:
            params, frames = w.getparams(), w.readframes(w.getnframes())
    except (wave.Error, EOFError):
        return c
    buf = BytesIO()
    with wave.open(buf, "wb") as out:
        out.setparams(params)
        out.writeframes(frames * repeat)
    stem = c.filename.rsplit(".", 1)[0]
    return Clip(f"{stem}-x{repeat}.wav", buf.getvalue(), "audio/wav", c.has_speech, c.speakers)


def clip_seconds(c: Clip) -> float | None:
    """The clip's duration in seconds: from the WAV header, else PyAV's demuxer; None if neither knows."""
    try:
        with wave.open(BytesIO(c.data)) as w:
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError):
        pass
    try:
        import av  # a service dependency, so in the project's venv; this file runs without it too
    except ImportError:
        return None
    try:
        with av.open(BytesIO(c.data), mode="r") as container:
            return container.duration / av.time_base if container.duration else None
    except (av.FFmpegError, OSError, ValueError):
        return None


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def require_text(c: Clip) -> bool:
    value = os.environ.get("LOAD_TEST_REQUIRE_TEXT", "").strip()
    return value not in ("0", "false", "no") if value else c.has_speech


# --- requests and what a good answer looks like --------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One request shape: its form fields and the check of its body (None: fine, else the problem)."""

    label: str
    fields: tuple[tuple[str, str], ...]
    check: Callable[[Any, bool], str | None]
    diarize: bool = False

    @property
    def name(self) -> str:
        return f"{ROUTE} [{self.label}]"


def form(kind: Kind, c: Clip, model: str) -> tuple[list[tuple[str, str]], dict[str, tuple[str, bytes, str]]]:
    """The multipart form of one request: (fields, files) for requests' `data=` and `files=`."""
    fields = [("model", model), *kind.fields]
    if kind.diarize and c.speakers:
        fields.append(("num_speakers", str(c.speakers)))
    return fields, {"file": (c.filename, c.data, c.content_type)}


def _json_body(response) -> dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    return body


def _text_problem(body: dict[str, Any], need_text: bool) -> str | None:
    text = body.get("text")
    if not isinstance(text, str):
        return "no 'text' string in the body"
    if need_text and not text.strip():
        return "empty text"
    return None


def check_json(response, need_text: bool) -> str | None:
    return _text_problem(_json_body(response), need_text)


def check_srt(response, need_text: bool) -> str | None:
    body = response.text
    if need_text and "-->" not in body:
        return "no subtitle cue in the SRT body"
    if "-->" in body and not body.lstrip().startswith("1"):
        return "SRT does not start with cue 1"
    return None


def check_verbose_words(response, need_text: bool) -> str | None:
    body = _json_body(response)
    problem = _text_problem(body, need_text)
    if problem:
        return problem
    words = body.get("words")
    if not isinstance(words, list):
        return "no 'words' list although word granularity was asked for"
    if need_text and not words:
        return "empty 'words' list"
    if any(not (0 <= w["start"] <= w["end"]) for w in words):
        return "a word ends before it starts"
    return None


def check_diarized(response, need_text: bool) -> str | None:
    body = _json_body(response)
    problem = _text_problem(body, need_text)
    if problem:
        return problem
    segments = body.get("segments")
    if not isinstance(segments, list):
        return "no 'segments' list"
    if need_text and not segments:
        return "no segments"
    if any(not s.get("speaker") for s in segments):
        return "a segment without a speaker"
    return None


JSON = Kind("json", (("response_format", "json"),), check_json)
SRT = Kind("srt", (("response_format", "srt"),), check_srt)
VERBOSE_WORDS = Kind("verbose_json+words", (("response_format", "verbose_json"),
                                            ("timestamp_granularities[]", "word")), check_verbose_words)
DIARIZED = Kind("diarize", (("response_format", "diarized_json"), ("diarize", "true")), check_diarized,
                diarize=True)


# --- the user -------------------------------------------------------------------------------------------


def retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds (delay-seconds form; an HTTP date counts as 1 s), None if absent."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


class ServiceUser(HttpUser):
    """What every user of the service shares: its clip, the model, timeouts, the API key."""

    abstract = True
    host = "http://127.0.0.1:8000"  # loopback unless --host says otherwise

    def on_start(self) -> None:
        self.clip = self.load_clip()
        self.need_text = require_text(self.clip)
        self.model = os.environ.get("LOAD_TEST_MODEL", "whisper-1")
        self.timeout_s = float(os.environ.get("LOAD_TEST_TIMEOUT_S", "600"))
        self.max_retry_after_s = float(os.environ.get("LOAD_TEST_MAX_RETRY_AFTER_S", "30"))
        self.not_before = 0.0
        key = os.environ.get("LOAD_TEST_API_KEY")
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"

    def load_clip(self) -> Clip:
        return clip()


class TranscriptionUser(ServiceUser):
    """Uploads the clip with the weighted mix above; think time 0.5-2 s, longer after a shed."""

    weight = 10

    def wait_time(self) -> float:
        return max(random.uniform(0.5, 2.0), self.not_before - time.monotonic())

    def transcribe(self, kind: Kind) -> None:
        fields, files = form(kind, self.clip, self.model)
        with self.client.post(ROUTE, data=fields, files=files, name=kind.name, timeout=self.timeout_s,
                              catch_response=True) as response:
            shed_for = retry_after_s(response.headers.get("Retry-After"))
            if response.status_code == 503 and shed_for is not None:
                # The service said "not now, come back later": load shedding working, not an error.
                response.request_meta["name"] = f"{kind.name} (shed)"
                self.not_before = time.monotonic() + min(shed_for, self.max_retry_after_s)
                response.success()
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {_error_message(response)}")
                return
            try:
                problem = kind.check(response, self.need_text)
            except (ValueError, KeyError, TypeError) as exc:
                problem = f"unexpected body: {exc}"
            if problem:
                response.failure(problem)
            else:
                response.success()

    @task(6)
    def transcribe_json(self) -> None:
        self.transcribe(JSON)

    @task(2)
    def transcribe_srt(self) -> None:
        self.transcribe(SRT)

    @task(2)
    def transcribe_verbose_words(self) -> None:
        self.transcribe(VERBOSE_WORDS)

    @task(1)
    def transcribe_diarized(self) -> None:
        self.transcribe(DIARIZED)


def poll_delays_s(first_s: float = 1.0, factor: float = 1.5, max_s: float = 15.0) -> Iterator[float]:
    """Seconds between two polls of a job: `first_s`, then `factor` times longer each time, at most `max_s`."""
    delay_s = first_s
    while True:
        yield min(delay_s, max_s)
        delay_s *= factor


class JobUser(ServiceUser):
    """Submits the job clip as a durable job, follows it to its end and fetches its result as SRT; then
    waits 5-15 s before the next. One for every ten TranscriptionUsers when both run."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.job_timeout_s = float(os.environ.get("LOAD_TEST_JOB_TIMEOUT_S", "1800"))
        self.max_poll_s = float(os.environ.get("LOAD_TEST_JOB_MAX_POLL_S", "15"))

    def load_clip(self) -> Clip:
        return job_clip()

    def wait_time(self) -> float:
        return max(random.uniform(5.0, 15.0), self.not_before - time.monotonic())

    @task
    def transcribe_as_job(self) -> None:
        started = time.perf_counter()
        job_id = self.submit()
        if job_id is None:
            return
        problem = self.follow(job_id, started) or self.result(job_id)
        self.environment.events.request.fire(
            request_type="JOB", name=JOB_WHOLE, response_time=(time.perf_counter() - started) * 1000,
            response_length=0, exception=None if problem is None else JobProblem(f"{job_id}: {problem}"),
            context={})

    def submit(self) -> str | None:
        """POST the job; its id, or None when it was not accepted (a failure, or shed)."""
        fields = [("model", self.model), ("response_format", "srt")]
        files = {"file": (self.clip.filename, self.clip.data, self.clip.content_type)}
        with self.client.post(JOB_ROUTE, data=fields, files=files, name=JOB_SUBMIT, timeout=self.timeout_s,
                              catch_response=True) as response:
            shed_for = retry_after_s(response.headers.get("Retry-After"))
            if response.status_code == 503 and shed_for is not None:
                response.request_meta["name"] = f"{JOB_SUBMIT} (shed)"
                self.not_before = time.monotonic() + min(shed_for, self.max_retry_after_s)
                response.success()
                return None
            if response.status_code != 202:
                response.failure(f"HTTP {response.status_code}: {_error_message(response)}")
                return None
            try:
                job_id = _json_body(response)["id"]
            except (ValueError, KeyError, TypeError) as exc:
                response.failure(f"unexpected body: {exc}")
                return None
            response.success()
            return str(job_id)

    def follow(self, job_id: str, started: float) -> str | None:
        """Poll the job until it ends: None once it succeeded, else what went wrong."""
        for delay_s in poll_delays_s(max_s=self.max_poll_s):
            if time.perf_counter() - started > self.job_timeout_s:
                return f"not ended after {self.job_timeout_s:.0f} s"
            time.sleep(delay_s)  # gevent's sleep under Locust: the other users go on meanwhile
            with self.client.get(f"/v1/jobs/{job_id}", name=JOB_POLL, timeout=self.timeout_s,
                                 catch_response=True) as response:
                if response.status_code != 200:
                    response.failure(f"HTTP {response.status_code}: {_error_message(response)}")
                    return f"status: HTTP {response.status_code}"
                try:
                    card = _json_body(response)
                    status = card["status"]
                except (ValueError, KeyError, TypeError) as exc:
                    response.failure(f"unexpected body: {exc}")
                    return f"status: unexpected body: {exc}"
                response.success()
            if status == "succeeded":
                return None
            if status in ("failed", "cancelled"):
                error = card.get("error") or {}
                return f"{status}: {error.get('message', '')}".rstrip(": ")
        raise AssertionError("unreachable")  # poll_delays_s never ends

    def result(self, job_id: str) -> str | None:
        """Fetch the result as SRT: None if it has the cues the clip promises, else what is wrong with it."""
        with self.client.get(f"/v1/jobs/{job_id}/result", params={"response_format": "srt"}, name=JOB_RESULT,
                             timeout=self.timeout_s, catch_response=True) as response:
            problem: str | None
            if response.status_code != 200:
                problem = f"HTTP {response.status_code}: {_error_message(response)}"
            else:
                problem = check_srt(response, self.need_text)
            if problem:
                response.failure(problem)
                return f"result: {problem}"
            response.success()
            return None


class JobProblem(Exception):
    """Why a job, from submit to result, counts as failed in the "job [submit to result]" row."""


def _error_message(response) -> str:
    """The OpenAI-shaped error's message, else the start of the body."""
    try:
        return str(response.json()["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return (response.text or "")[:200]


@events.test_start.add_listener
def _prepare(environment, **_kwargs) -> None:
    c = clip()  # once per process, before the first request
    logger.info("clip: %s, %d bytes, %s, speech=%s, num_speakers=%s, require_text=%s",
                c.filename, len(c.data), c.content_type, c.has_speech, c.speakers, require_text(c))


def kind_of(name: str) -> str:
    """A stats row's request kind: "/v1/audio/transcriptions [json] (shed)" -> "json (shed)"."""
    prefix = f"{ROUTE} ["
    return name.removeprefix(prefix).replace("]", "", 1) if name.startswith(prefix) else name


def _row(kind: str, entry: StatsEntry) -> dict[str, Any]:
    """Counts, response-time percentiles (ms) and requests/s of one stats entry."""
    def pct(p: float) -> int | None:
        return entry.get_response_time_percentile(p) if entry.num_requests else None

    return {"kind": kind, "requests": entry.num_requests, "failures": entry.num_failures,
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "rps": round(entry.total_rps, 3)}


def run_summary(environment, c: Clip) -> dict[str, Any]:
    """The finished run in one object: a row per request kind, the answered (not shed) requests together,
    all requests together, each distinct failure, locustfile errors, and audio seconds transcribed per
    wall second (successful answers x the clip's length, plus succeeded jobs x the job clip's length, over
    Locust's elapsed time). "succeeded" counts transcriptions: answers of POST /v1/audio/transcriptions and
    jobs from submit to result; the requests that submit and follow a job are only rows of their own, and
    the "job [submit to result]" row is left out of "served" (its times are whole jobs, not requests).

    Written at quit, once every request has ended: Locust's CSVs are snapshots taken every second and may
    miss the last ones."""
    stats: RequestStats = environment.runner.stats
    served = StatsEntry(stats, "served", "")
    for entry in stats.entries.values():
        if not entry.name.endswith("(shed)") and entry.name != JOB_WHOLE:
            served.extend(entry)
    kinds = sorted(stats.entries.values(), key=lambda e: (e.name.endswith("(shed)"), -e.num_requests))
    shed = sum(e.num_requests for e in stats.entries.values() if e.name.endswith("(shed)"))
    answered = sum(e.num_requests - e.num_failures for e in stats.entries.values()
                   if e.name.startswith(f"{ROUTE} [") and not e.name.endswith("(shed)"))
    jobs = [e for e in stats.entries.values() if e.name == JOB_WHOLE]
    jobs_succeeded = sum(e.num_requests - e.num_failures for e in jobs)
    # Locust's own span for requests/s: from the start of the run to its last answer.
    elapsed_s = (stats.total.last_request_timestamp or stats.total.start_time) - stats.total.start_time
    clip_s = clip_seconds(c)
    job_clip_s = clip_seconds(job_clip()) if jobs else None
    audio_s = answered * clip_s if clip_s else None
    if audio_s is not None and jobs_succeeded:
        audio_s = audio_s + jobs_succeeded * job_clip_s if job_clip_s else None
    return {
        "requests": stats.total.num_requests, "failures": stats.total.num_failures, "shed": shed,
        "shed_ratio": round(shed / stats.total.num_requests, 4) if stats.total.num_requests else 0.0,
        "succeeded": answered + jobs_succeeded, "jobs_succeeded": jobs_succeeded,
        "kinds": [_row(kind_of(e.name), e) for e in kinds],
        "served": _row("answered (not shed)", served),
        "total": _row("all", stats.total),
        "errors": [{"kind": kind_of(e.name), "error": StatsError.parse_error(e.error), "occurrences": e.occurrences}
                   for e in stats.errors.values()],
        "exceptions": [{"count": x["count"], "message": x["msg"]} for x in environment.runner.exceptions.values()],
        "clip": c.filename, "clip_s": round(clip_s, 3) if clip_s else None, "elapsed_s": round(elapsed_s, 3),
        "job_clip_s": round(job_clip_s, 3) if job_clip_s else None,
        "audio_s_per_s": round(audio_s / elapsed_s, 3) if audio_s is not None and elapsed_s > 0 else None,
    }


@events.quitting.add_listener
def _summary(environment, **_kwargs) -> None:
    if environment.runner is None:
        return
    summary = run_summary(environment, clip())
    brief = ("requests", "failures", "shed", "shed_ratio", "succeeded", "audio_s_per_s")
    logger.info("summary: %s", json.dumps({k: summary[k] for k in brief}))
    path = os.environ.get("LOAD_TEST_SUMMARY_PATH")
    if path:
        Path(path).write_text(json.dumps(summary, indent=2) + "\n")
