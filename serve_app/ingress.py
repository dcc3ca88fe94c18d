"""The HTTP front door: OpenAI-compatible routes that validate, decode once and hand off to the pipeline.

Holds no model. Every error becomes OpenAI's error shape here, in `error_response`, and nowhere else.
"""


import asyncio
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import asdict, replace
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
from serve_app import formats, media, references, streaming, uploads
from serve_app.admission import Admission
from serve_app.metrics import IngressMetrics, safely
from serve_app.pipeline import TranscriptionPipeline, unwrap_remote_error
from serve_app.progress import Progress, ProgressBoard
from serve_app.schemas import TranscriptionRequest
from serve_app.settings import AppArgs, ServiceSettings

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


def _warning_headers(decoded: media.DecodedAudio) -> dict[str, str]:
    # Every format carries them here, subtitles, plain text and streams included; JSON bodies also list
    # them under "warnings".
    return {WARNING_HEADER: " | ".join(decoded.warnings)} if decoded.warnings else {}


def _is_shed(answer: Response) -> bool:
    """Shed: admission's refusal or a full model queue, both answered as 503 "overloaded"."""
    return answer.status_code == 503 and b'"code":"overloaded"' in bytes(answer.body)


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
                    known = await references.decode(parsed.known_speaker_names, parsed.known_speaker_references,
                                                    timeout_s=limits.decode_timeout_s,
                                                    memory_limit_mib=limits.decode_memory_limit_mib)
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
        if isinstance(content, dict):
            return JSONResponse(content, headers=headers)
        return PlainTextResponse(content, media_type=media_type, headers=headers)

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
