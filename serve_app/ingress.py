"""The HTTP front door: OpenAI-compatible routes that validate, decode once and hand off to the pipeline.

Holds no model. Every error becomes OpenAI's error shape here, in `error_response`, and nowhere else.
"""


import asyncio
import hmac
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.schema import ReplicaState
from starlette.exceptions import HTTPException

from core.errors import (
    BadRequest,
    ModelUnavailable,
    Overloaded,
    ServiceError,
    Unauthorized,
    error_body,
)
from core.transcript import SpeakerReference, Transcript
from deployments.replica import route_logs_to_serve
from serve_app import enrollment, formats, media, references, streaming, uploads
from serve_app.admission import Admission
from serve_app.jobs import JobStore, UnknownJob, callbacks, open_job_store, records, views
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.spool import Spool
from serve_app.jobs.store import InvalidCursor, Job
from serve_app.jobs.work import DecodeLimits, JobWork
from serve_app.metrics import IngressMetrics, safely
from serve_app.pipeline import TranscriptionPipeline, unwrap_remote_error
from serve_app.progress import Progress, ProgressBoard
from serve_app.schemas import TranscriptionRequest
from serve_app.settings import AppArgs, JobsConfig, ServiceSettings

logger = logging.getLogger(__name__)  # under serve_app: routed into Serve's replica log

api = FastAPI(title="Transcription service", version="0.1.0",
              description="Speech to text with word timings and speakers; OpenAI-compatible audio API.")



@api.exception_handler(HTTPException)
async def _http_error(_request: Request, error: HTTPException) -> JSONResponse:
    """FastAPI's own errors (an unknown route, a method a route does not take) in OpenAI's shape too."""
    message = {404: "no such route; see the API reference", 405: "method not allowed on this route"}.get(
        error.status_code, str(error.detail))
    return JSONResponse(error_body(message, "invalid_request_error"), status_code=error.status_code,
                        headers=getattr(error, "headers", None))


_MIB = 1024 * 1024
WARNING_HEADER = "x-transcription-warnings"
"""Response header naming what of the upload could not be decoded; absent when all of it was."""
_LIST_FIELDS = {f"{name}{suffix}": name for name in ("timestamp_granularities", "known_speaker_names",
                                                     "known_speaker_references") for suffix in ("[]", "")}


def _request_id(request: Request) -> str:
    """Serve's id for this request (it echoes it in the x-request-id response header and its logs)."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or request.headers.get("x-request-id") or uuid.uuid4().hex


def error_response(error: BaseException, request_id: str) -> JSONResponse:
    """The one mapping from an exception to an HTTP answer; 500s carry no internals."""
    error = unwrap_remote_error(error)
    if isinstance(error, BackPressureError):  # a model deployment's queue is full: shed, don't fail
        error = Overloaded("the service is at capacity; retry after the delay in Retry-After",
                           retry_after_s=error.retry_after_s or ModelUnavailable.retry_after_s)
    elif isinstance(error, RayActorError):  # a replica died under a call the pipeline does not retry
        error = ModelUnavailable("a model replica failed; retry after the delay in Retry-After")
    elif isinstance(error, DeploymentUnavailableError):  # no replica of a model deployment right now
        error = ModelUnavailable("a model deployment has no replica running; retry after the delay in "
                                 "Retry-After")
    headers: dict[str, str] = {}  # Serve's proxy adds x-request-id to every response itself
    if isinstance(error, ServiceError):
        if isinstance(error, ModelUnavailable):
            headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
        if error.status_code >= 500:
            logger.warning("request %s: %s", request_id, error.message)
        body = error_body(error.message, error.error_type, error.param, error.code)
        return JSONResponse(body, status_code=error.status_code, headers=headers)
    logger.exception("request %s failed", request_id, exc_info=error)
    body = error_body(f"internal error; quote request id {request_id} when reporting it", "server_error")
    return JSONResponse(body, status_code=500, headers=headers)


def _validation_message(error: ValidationError) -> tuple[str, str | None]:
    problems, first_field = [], None
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or None
        first_field = first_field or field
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; see the API reference for accepted fields"
        problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems), first_field


def _parse_fields(fields: list[tuple[str, str | None]], task: str) -> TranscriptionRequest:
    """The form's text fields as the request model; every problem is a 400 naming the field."""
    values: dict[str, Any] = {"task": task}
    for key, value in fields:
        if value is None:
            raise BadRequest(f"field {key!r} must be text, not a file", param=key)
        if key in _LIST_FIELDS:
            values.setdefault(_LIST_FIELDS[key], []).append(value)
        elif key == "task":
            raise BadRequest("the task follows from the route; do not send a 'task' field", param="task")
        elif key in values:
            raise BadRequest(f"field {key!r} was sent more than once; send it once", param=key)
        else:
            values[key] = value
    try:
        return TranscriptionRequest.model_validate(values)
    except ValidationError as e:
        message, field = _validation_message(e)
        raise BadRequest(message, param=field) from None


async def _replica_statuses(handle: Any) -> list[dict[str, Any]]:
    """Status of each running replica of a deployment. Handles route to any replica, so ask up to
    three times as often as there are replicas and keep one answer per replica id."""
    context = serve.get_replica_context()
    deployments = serve.status().applications[context.app_name].deployments
    running = deployments[handle.deployment_name].replica_states.get(ReplicaState.RUNNING, 1)
    seen: dict[Any, dict[str, Any]] = {}
    for _ in range(3 * running):
        status = await handle.status.remote()
        seen[status.get("replica") or status.get("replica_pid")] = status
        if len(seen) >= running:
            break
    return list(seen.values())


_RUNNING_REPLICAS_TTL_S = 2.0
_running_replicas_seen: dict[str, tuple[float, int | None]] = {}


async def _running_replicas(handle: Any) -> int | None:
    """Replicas of the handle's deployment running now, from the controller (None if it does not say).
    Asked at most every _RUNNING_REPLICAS_TTL_S per deployment: under load, not once per request."""
    name = handle.deployment_name
    asked_at, running = _running_replicas_seen.get(name, (-math.inf, None))
    if time.monotonic() - asked_at < _RUNNING_REPLICAS_TTL_S:
        return running

    def count() -> int | None:
        context = serve.get_replica_context()
        deployment = serve.status().applications[context.app_name].deployments.get(name)
        return None if deployment is None else deployment.replica_states.get(ReplicaState.RUNNING, 0)

    running = await asyncio.to_thread(count)
    _running_replicas_seen[name] = (time.monotonic(), running)
    return running


def _warning_headers(decoded: media.DecodedAudio | Transcript) -> dict[str, str]:
    # Every format carries them here, subtitles, plain text and streams included; JSON bodies also list
    # them under "warnings".
    return {WARNING_HEADER: " | ".join(decoded.warnings)} if decoded.warnings else {}


def _rendered(content: str | dict[str, Any], media_type: str, headers: dict[str, str]) -> Response:
    """A rendered transcript (formats.render) as the response: JSON bodies as JSON, the rest as text."""
    if isinstance(content, dict):
        return JSONResponse(content, headers=headers)
    return PlainTextResponse(content, media_type=media_type, headers=headers)


def _is_shed(answer: Response) -> bool:
    """Shed: admission's refusal or a full model queue, both answered as 503 "overloaded"."""
    return answer.status_code == 503 and b'"code":"overloaded"' in bytes(answer.body)


def _job_not_found(job_id: str) -> JSONResponse:
    body = error_body(f"no job {job_id!r} (never submitted, or expired); GET /v1/jobs lists them",
                      "invalid_request_error", "job_id", "job_not_found")
    return JSONResponse(body, status_code=404)


def _job_fields(parsed: TranscriptionRequest) -> dict[str, Any]:
    """What a job keeps of its request: every field but the reference clips (spooled beside the upload)."""
    return parsed.model_dump(mode="json", exclude={"known_speaker_references", "stream"})


def _data_dir(settings: ServiceSettings, config: JobsConfig) -> Path:
    return Path(config.data_dir or settings.data_dir).expanduser().resolve()


def _job_store_url(settings: ServiceSettings, config: JobsConfig) -> str:
    if settings.job_store_url is not None:  # from a Secret: it may hold a password
        return settings.job_store_url.get_secret_value()
    if config.store_url:
        return config.store_url
    return f"sqlite://{_data_dir(settings, config) / 'jobs.sqlite3'}"


def _model_card(model_id: str, **details: Any) -> dict[str, Any]:
    """OpenAI's model object, with our details (loaded, default, source, alias_of) as extra keys."""
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "transcription-service", **details}


@serve.ingress(api)
class TranscriptionIngress:
    """Routes requests to the model deployments; CPU only, holds nothing heavy."""

    def __init__(self, asr: Any, alignment: Any | None, diarization: Any | None, args: dict[str, Any]) -> None:
        import ray

        route_logs_to_serve()
        self._args = AppArgs.model_validate(args)
        self._settings = ServiceSettings()
        self._asr, self._alignment, self._diarization = asr, alignment, diarization
        limits = self._args.ingress
        self._pipeline = TranscriptionPipeline(asr, alignment, diarization, put=ray.put,
                                               model_aliases=frozenset(limits.model_aliases),
                                               max_chunks_in_flight=limits.max_chunks_in_flight,
                                               running_replicas=_running_replicas)
        self._metrics = IngressMetrics()
        self._progress = ProgressBoard()
        self._upload_limits = uploads.UploadLimits(
            max_bytes=int(limits.max_upload_mib * _MIB), idle_timeout_s=limits.upload_idle_timeout_s,
            min_rate_bytes_s=limits.min_upload_kib_s * 1024, grace_s=limits.upload_grace_s)
        self._admission = Admission(limits.max_queue_wait_s, limits.initial_speed)
        self._job_store: JobStore | None = None
        self._background: list[asyncio.Task[None]] = []
        if self._args.jobs.enabled:
            self._start_jobs(self._args.jobs)

    def _start_jobs(self, config: JobsConfig) -> None:
        """Open the job store and the spool, and start this replica's job runner, callback sender and
        expiry loop (Serve runs the constructor on the replica's event loop)."""
        import ray

        self._job_store = open_job_store(_job_store_url(self._settings, config), retention_s=config.retention_s,
                                         max_attempts=config.max_attempts)
        self._spool = Spool(_data_dir(self._settings, config) / "spool")
        self._job_upload_limits = replace(self._upload_limits, max_bytes=int(config.max_upload_mib * _MIB))
        limits = self._args.ingress
        # Its own pipeline: a job keeps fewer chunks in flight than a request, so that it never fills the
        # ASR replicas' queues (its chunks also go at BACKGROUND priority, see serve_app/jobs/work.py).
        pipeline = TranscriptionPipeline(self._asr, self._alignment, self._diarization, put=ray.put,
                                         model_aliases=frozenset(limits.model_aliases),
                                         max_chunks_in_flight=config.max_chunks_in_flight,
                                         running_replicas=_running_replicas)
        decode = DecodeLimits(config.max_audio_duration_s, config.decode_timeout_s, config.decode_memory_limit_mib)
        work = self._metrics.counted(JobWork(pipeline, self._job_store, self._spool, decode,
                                             speed=lambda: self._admission.speed))
        context = serve.get_replica_context()
        self._runner = JobRunner(self._job_store, work, self._job_failure,
                                 worker=f"{context.replica_tag}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                                 lease_s=config.lease_s,
                                 max_running=config.max_running, on_end=self._metrics.job_ended)
        secret = self._settings.callback_secret
        self._callback_policy = callbacks.CallbackPolicy(allow=tuple(config.callback_allow),
                                                         allow_http=config.callback_allow_http)
        key = None if secret is None else secret.get_secret_value().encode()
        sender = callbacks.CallbackSender(self._job_store, key, self._callback_policy)
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(self._runner.run(), name="job runner"),
                            loop.create_task(sender.run(stop=self._stopping), name="job callbacks"),
                            loop.create_task(self._expire_jobs(), name="job expiry")]

    async def _expire_jobs(self) -> None:
        """Delete ended jobs past their retention, with their spooled files: the store does not grow. Every
        minute, or four times per retention when that is shorter."""
        assert self._job_store is not None
        interval_s = min(60.0, max(0.5, self._args.jobs.retention_s / 4))
        while not self._stopping.is_set():
            try:
                inputs = await asyncio.to_thread(self._job_store.expire)
                for input in inputs:
                    await asyncio.to_thread(self._spool.remove, input)
                if inputs:
                    logger.info("%d ended jobs expired and were deleted", len(inputs))
            except Exception:
                logger.exception("could not expire jobs")
            try:
                await asyncio.wait_for(self._stopping.wait(), interval_s)
            except TimeoutError:
                pass

    def _job_failure(self, error: BaseException, job: Job) -> tuple[bool, dict[str, Any]]:
        """A job's error as the synchronous routes would answer it; a 503 (a model deployment unavailable or
        at capacity) is worth another attempt, anything else fails the job."""
        answer = error_response(error, job.id)
        return answer.status_code == 503, json.loads(bytes(answer.body))["error"]

    async def __del__(self) -> None:
        """Serve's graceful shutdown: stop claiming, hand running jobs back, close the store."""
        if self._job_store is None:
            return
        self._stopping.set()
        await self._runner.stop()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._job_store.close()

    def _store(self) -> JobStore:
        if self._job_store is None:
            raise BadRequest("jobs are not enabled on this server (args.jobs.enabled)")
        return self._job_store

    # --- helpers --------------------------------------------------------------------------------

    async def _model_cards(self) -> list[dict[str, Any]]:
        """Every ASR model offered (as deployed now: a reconfigure may change them), whether any replica
        holds it loaded, and the aliases of the default model."""
        replicas = await _replica_statuses(self._asr)
        loaded = {model_id for replica in replicas for model_id in replica.get("loaded", {})}
        described = await self._asr.describe.remote()
        cards = [_model_card(m["id"], loaded=m["id"] in loaded, default=m["default"], source=m["source"])
                 for m in described["models"]]
        default = described["default_model"]
        cards += [_model_card(alias, loaded=default in loaded, alias_of=default)
                  for alias in self._args.ingress.model_aliases]
        return cards

    def _authorize(self, request: Request) -> None:
        key = self._settings.api_key
        if key is None:
            return
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), key.get_secret_value().encode()):
            raise Unauthorized("missing or wrong API key: send Authorization: Bearer <key>")

    async def _transcribe(self, request: Request, task: str) -> Response:
        route = "transcriptions" if task == "transcribe" else "translations"
        request_id = _request_id(request)
        started = time.perf_counter()
        parsed: TranscriptionRequest | None = None
        progress = Progress(request_id)
        try:
            self._authorize(request)
            limits = self._args.ingress
            with ExitStack() as held:
                # Admitted or refused before the upload is read: a refusal costs no upload and no decode.
                ticket = held.enter_context(self._admission.admit())
                held.enter_context(self._progress.track(progress))
                self._record_admission()
                async with uploads.receive_form(request, self._upload_limits) as form:
                    ticket.uploaded()
                    parsed = _parse_fields(form.fields, task)
                    decoding = time.perf_counter()
                    known = await self._known_speakers(parsed)
                    decoded = await media.decode_audio(form.file, max_duration_s=limits.max_audio_duration_s,
                                                       timeout_s=limits.decode_timeout_s,
                                                       memory_limit_mib=limits.decode_memory_limit_mib)
                    progress.stage_s["decode"] = time.perf_counter() - decoding
                ticket.measured(decoded.duration_s)
                self._record_admission()
                if parsed.stream:
                    # The stream holds the admission and the progress from here until its last event.
                    events = self._events(held.pop_all(), decoded, parsed, known, progress, route, started)
                    return StreamingResponse(events, media_type=streaming.MEDIA_TYPE,
                                             headers={"Cache-Control": "no-cache", **_warning_headers(decoded)})
                result = await self._pipeline.run(decoded.samples, parsed, progress, known)
            self._record_admission()
            transcript = replace(result, warnings=decoded.warnings)
            subtitles = limits.subtitles.model_copy(update={
                k: v for k, v in (("max_line_chars", parsed.max_line_chars),
                                  ("max_cue_duration_s", parsed.max_cue_duration_s)) if v is not None})
            content, media_type = formats.render(transcript, parsed.response_format,
                                                 granularities=frozenset(parsed.timestamp_granularities),
                                                 subtitles=subtitles)
        except Exception as e:  # noqa: BLE001 - every failure is answered through error_response
            answer = error_response(e, request_id)
            self._answered(route, parsed, answer.status_code, _is_shed(answer), None, {})
            return answer
        self._answered(route, parsed, 200, False, transcript.duration_s, progress.stage_s)
        self._log_answer(request_id, parsed, transcript, progress, started)
        headers = _warning_headers(decoded)  # Serve's proxy adds x-request-id to every response itself
        if headers:
            logger.warning("request %s: %s", request_id, headers[WARNING_HEADER])
        return _rendered(content, media_type, headers)

    async def _known_speakers(self, parsed: TranscriptionRequest) -> tuple[SpeakerReference, ...]:
        """The request's known speakers: its reference clips decoded, or the enrolled speakers it names."""
        if parsed.known_speaker_names and not parsed.known_speaker_references:
            return await enrollment.enrolled(self._store(), parsed.known_speaker_names)
        limits = self._args.ingress
        return await references.decode(parsed.known_speaker_names, parsed.known_speaker_references,
                                       timeout_s=limits.decode_timeout_s,
                                       memory_limit_mib=limits.decode_memory_limit_mib)

    async def _submit_job(self, request: Request, task: str) -> Response:
        """Accept a job: the upload spooled to disk and the job in the store before the 202 is sent."""
        request_id = _request_id(request)
        try:
            self._authorize(request)
            store = self._store()
            async with uploads.receive_form(request, self._job_upload_limits) as form:
                fields = [(k, v) for k, v in form.fields if k != "callback_url"]
                callback_urls = [v for k, v in form.fields if k == "callback_url"]
                if len(callback_urls) > 1 or (callback_urls and not callback_urls[0]):
                    raise BadRequest("send callback_url once, as an https URL", param="callback_url")
                callback_url = callback_urls[0] if callback_urls else None
                parsed = _parse_fields(fields, task)
                if parsed.stream:
                    raise BadRequest("a job is not streamed: follow it at GET /v1/jobs/{id}/events", param="stream")
                if parsed.diarize and self._diarization is None:  # refused now, as the synchronous route does
                    raise BadRequest("speaker diarization is not enabled on this server; send diarize=false",
                                     param="diarize")
                if callback_url is not None:
                    await callbacks.check_url_async(callback_url, self._callback_policy)
                await self._known_speakers(parsed)  # refused now (a bad clip, a name not enrolled), not later
                if form.size == 0:
                    raise BadRequest("the file is empty: send the audio or video in the 'file' field", param="file")
                input = await asyncio.to_thread(self._spool.accept, form.file, parsed.known_speaker_references)
            try:
                job = await asyncio.to_thread(store.create, parsed.task, _job_fields(parsed), input, callback_url)
            except BaseException:
                await asyncio.to_thread(self._spool.remove, input)
                raise
        except Exception as e:  # noqa: BLE001 - every failure is answered through error_response
            return error_response(e, request_id)
        self._runner.wake()
        safely(self._metrics.job_submitted, job.kind)
        logger.info("request %s: accepted as %s (%.1f MiB)", request_id, job.id, form.size / _MIB)
        return JSONResponse(views.job_card(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    async def _job(self, request: Request, job_id: str) -> Job:
        self._authorize(request)
        job = await asyncio.to_thread(self._store().get, job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    async def _job_answer(self, request: Request, job_id: str, answer: Any) -> Response:
        """`answer(job)` for the job, or the error; every job route answers through here."""
        try:
            return await answer(await self._job(request, job_id))
        except UnknownJob:
            return _job_not_found(job_id)
        except Exception as e:  # noqa: BLE001
            return error_response(e, _request_id(request))

    async def _job_result(self, request: Request, job: Job) -> Response:
        if job.state != "succeeded":
            message = (f"job {job.id} failed: {job.error['message']}" if job.state == "failed" and job.error
                       else f"job {job.id} is {job.state}; its result is there once its status is succeeded")
            body = error_body(message, "invalid_request_error", "job_id", "job_not_succeeded")
            return JSONResponse(body, status_code=409)
        query = request.query_params
        response_format = query.get("response_format") or job.fields.get("response_format", "json")
        if response_format not in formats.RESPONSE_FORMATS:
            raise BadRequest(f"unknown response_format {response_format!r}; one of "
                             f"{', '.join(formats.RESPONSE_FORMATS)}", param="response_format")
        if response_format == "diarized_json" and not job.fields.get("diarize"):
            raise BadRequest("diarized_json needs speakers, and this job was submitted without diarize=true",
                             param="response_format")
        granularities = query.getlist("timestamp_granularities[]") or query.getlist("timestamp_granularities")
        layout = {key: query[key] for key in ("max_line_chars", "max_cue_duration_s") if key in query}
        try:
            subtitles = self._args.ingress.subtitles.model_copy(update={
                key: TranscriptionRequest.model_validate({key: value}).model_dump()[key]
                for key, value in layout.items()})
        except ValidationError as e:
            message, field = _validation_message(e)
            raise BadRequest(message, param=field) from None
        transcript = records.transcript_from_json(job.result or {})
        content, media_type = formats.render(
            transcript, response_format, subtitles=subtitles,
            granularities=frozenset(granularities or job.fields.get("timestamp_granularities") or ["segment"]))
        return _rendered(content, media_type, _warning_headers(transcript))

    async def _job_events(self, job: Job, poll_s: float = 0.5) -> AsyncIterator[str]:
        """The job's status each time it changes, until it ends (serve_app/jobs/views.py)."""
        assert self._job_store is not None
        last: dict[str, Any] | None = None
        current: Job | None = job
        while current is not None:
            event = views.job_event(current)
            if event != last:
                yield streaming.sse(event)
                last = event
            if current.is_final:
                return
            await asyncio.sleep(poll_s)
            current = await asyncio.to_thread(self._job_store.get, job.id)

    async def _events(self, held: ExitStack, decoded: media.DecodedAudio, parsed: TranscriptionRequest,
                      known: tuple[SpeakerReference, ...], progress: Progress, route: str,
                      started: float) -> AsyncIterator[str]:
        """The stream of one request: deltas as the chunks come back in order, then the closing events.
        A client that goes away closes this generator: the pipeline is cancelled with it, and so are its
        chunks still queued at the replicas."""
        texts: asyncio.Queue[str | None] = asyncio.Queue()
        progress.on_text = texts.put_nowait
        run = asyncio.ensure_future(self._pipeline.run(decoded.samples, parsed, progress, known))
        run.add_done_callback(lambda _: texts.put_nowait(None))
        try:
            with held:
                while (text := await texts.get()) is not None:
                    yield streaming.sse(streaming.delta(text))
                transcript = replace(await run, warnings=decoded.warnings)
            for event in streaming.closing(transcript, parsed.response_format):
                yield streaming.sse(event)
        except Exception as e:  # noqa: BLE001 - the 200 is sent: the failure becomes the last event
            answer = error_response(e, progress.request_id)
            self._answered(route, parsed, answer.status_code, _is_shed(answer), None, {})
            yield streaming.sse(streaming.error(json.loads(bytes(answer.body))))
            return
        finally:
            if not run.done():
                run.cancel()
                logger.info("request %s: the client left the stream; its work is cancelled", progress.request_id)
        self._answered(route, parsed, 200, False, transcript.duration_s, progress.stage_s)
        self._log_answer(progress.request_id, parsed, transcript, progress, started)

    def _answered(self, route: str, parsed: TranscriptionRequest | None, status_code: int, shed: bool,
                  audio_s: float | None, stage_s: dict[str, float]) -> None:
        safely(self._metrics.answered, route, parsed.response_format if parsed else "", status_code, shed,
               audio_s, stage_s)
        self._record_admission()

    @staticmethod
    def _log_answer(request_id: str, parsed: TranscriptionRequest, transcript: Transcript, progress: Progress,
                    started: float) -> None:
        logger.info("request %s: %s %.1f s of audio in %d chunks, %s%s, %.2f s", request_id, parsed.task,
                    transcript.duration_s, progress.chunks_total or 0, parsed.response_format,
                    " (stream)" if parsed.stream else "", time.perf_counter() - started)

    def _record_admission(self) -> None:
        now = self._admission.snapshot()
        safely(self._metrics.admission, now.queued_audio_s, now.expected_wait_s, self._admission.max_queue_wait_s)

    # --- routes ---------------------------------------------------------------------------------

    @api.post("/v1/audio/transcriptions")
    async def transcriptions(self, request: Request) -> Response:
        return await self._transcribe(request, "transcribe")

    @api.post("/v1/audio/translations")
    async def translations(self, request: Request) -> Response:
        return await self._transcribe(request, "translate")

    # --- jobs: serve_app/jobs/__init__.py says how they are kept and run ------------------------

    @api.post("/v1/audio/transcriptions/jobs", status_code=202)
    async def submit_transcription_job(self, request: Request) -> Response:
        """The same fields as /v1/audio/transcriptions, plus callback_url; 202 with the job's status."""
        return await self._submit_job(request, "transcribe")

    @api.post("/v1/audio/translations/jobs", status_code=202)
    async def submit_translation_job(self, request: Request) -> Response:
        return await self._submit_job(request, "translate")

    @api.get("/v1/jobs")
    async def list_jobs(self, request: Request, limit: int = 20, after: str | None = None) -> Response:
        """Jobs newest first; `after`: the `next_cursor` of the previous page."""
        try:
            self._authorize(request)
            if not 1 <= limit <= 100:
                raise BadRequest("limit must be 1 to 100", param="limit")
            page = await asyncio.to_thread(self._store().list, limit, after)
        except InvalidCursor:
            return error_response(BadRequest("after is not a cursor this server handed out; send a "
                                             "next_cursor from GET /v1/jobs", param="after"), _request_id(request))
        except Exception as e:  # noqa: BLE001
            return error_response(e, _request_id(request))
        return JSONResponse({"object": "list", "data": [views.job_card(job) for job in page.jobs],
                             "has_more": page.next_cursor is not None, "next_cursor": page.next_cursor})

    @api.get("/v1/jobs/{job_id}")
    async def get_job(self, request: Request, job_id: str) -> Response:
        async def card(job: Job) -> Response:
            return JSONResponse(views.job_card(job))
        return await self._job_answer(request, job_id, card)

    @api.get("/v1/jobs/{job_id}/result")
    async def get_job_result(self, request: Request, job_id: str) -> Response:
        """The transcript in the job's response_format, or in ?response_format= any other, as often as asked."""
        async def result(job: Job) -> Response:
            return await self._job_result(request, job)
        return await self._job_answer(request, job_id, result)

    @api.get("/v1/jobs/{job_id}/events")
    async def job_events(self, request: Request, job_id: str) -> Response:
        """Server-Sent Events: job.updated at each change of status or progress, then job.succeeded,
        job.failed or job.cancelled."""
        async def events(job: Job) -> Response:
            return StreamingResponse(self._job_events(job), media_type=streaming.MEDIA_TYPE,
                                     headers={"Cache-Control": "no-cache"})
        return await self._job_answer(request, job_id, events)

    @api.post("/v1/jobs/{job_id}/cancel")
    async def cancel_job(self, request: Request, job_id: str) -> Response:
        """Cancel a queued or running job: its work stops within a second, on whichever replica runs it."""
        async def cancel(job: Job) -> Response:
            cancelled = await asyncio.to_thread(self._store().cancel, job.id)
            self._runner.cancel(job.id)  # at once if this replica runs it; others see it at their heartbeat
            return JSONResponse(views.job_card(cancelled))
        return await self._job_answer(request, job_id, cancel)

    # --- enrolled speakers: serve_app/enrollment.py ------------------------------------------------

    @api.post("/v1/speakers")
    async def enroll_speaker(self, request: Request) -> Response:
        """{"name": ..., "references": [data URLs of 2-10 s]}: enroll the speaker (or replace them)."""
        try:
            self._authorize(request)
            try:
                body = await request.json()
            except ValueError:
                raise BadRequest('send a JSON body: {"name": "...", "references": ["data:audio/wav;base64,..."]}'
                                 ) from None
            limits = self._args.ingress
            speaker = await enrollment.enroll(self._store(), self._diarization, body,
                                              timeout_s=limits.decode_timeout_s,
                                              memory_limit_mib=limits.decode_memory_limit_mib)
        except Exception as e:  # noqa: BLE001
            return error_response(e, _request_id(request))
        return JSONResponse(enrollment.speaker_card(speaker), status_code=201)

    @api.get("/v1/speakers")
    async def list_speakers(self, request: Request) -> Response:
        try:
            self._authorize(request)
            speakers = await asyncio.to_thread(self._store().list_speakers)
        except Exception as e:  # noqa: BLE001
            return error_response(e, _request_id(request))
        return JSONResponse({"object": "list", "data": [enrollment.speaker_card(s) for s in speakers]})

    @api.delete("/v1/speakers/{name}")
    async def delete_speaker(self, request: Request, name: str) -> Response:
        try:
            self._authorize(request)
            if not await asyncio.to_thread(self._store().delete_speaker, name):
                raise enrollment.UnknownSpeaker(f"no speaker enrolled as {name!r}; GET /v1/speakers lists them",
                                                param="name")
        except Exception as e:  # noqa: BLE001
            return error_response(e, _request_id(request))
        return JSONResponse({"object": "speaker.deleted", "name": name, "deleted": True})

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": await self._model_cards()}

    @api.get("/v1/models/status")
    async def model_status(self) -> dict[str, Any]:
        """Per model deployment and replica: model, device, memory now and the last teardown report."""
        handles = {"asr": self._asr, "alignment": self._alignment, "diarization": self._diarization}
        statuses: dict[str, Any] = {}
        for name, handle in handles.items():
            if handle is None:
                statuses[name] = {"enabled": False, "replicas": []}
                continue
            try:
                statuses[name] = {"enabled": True, "replicas": await _replica_statuses(handle)}
            except Exception as e:  # noqa: BLE001 - one unavailable deployment must not hide the others
                statuses[name] = {"enabled": True, "error": str(unwrap_remote_error(e)), "replicas": []}
        # This ingress replica's admission: audio queued, the measured speed, the wait a request would have.
        admission = asdict(self._admission.snapshot()) | {"max_queue_wait_s": self._admission.max_queue_wait_s}
        return {"deployments": statuses, "admission": admission, "requests": self._progress.snapshot()}

    @api.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str) -> Response:
        cards = {card["id"]: card for card in await self._model_cards()}
        if model_id not in cards:
            body = error_body(f"no model {model_id!r}; GET /v1/models lists them", "invalid_request_error",
                              "model", "model_not_found")
            return JSONResponse(body, status_code=404)
        return JSONResponse(cards[model_id])

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}
