"""The service's errors, raised deep and mapped to HTTP once, in the ingress.

    ServiceError                 500  something on our side; no internals in the message
    ├── BadRequest               400  a field or combination of fields is wrong
    │   ├── UnsupportedLanguage  400  a language code we cannot serve
    │   ├── NoAudioStream        400  media without any audio stream
    │   └── UnknownModel         400  the `model` field names no model we serve
    ├── PayloadTooLarge          413  upload over the size limit
    │   └── AudioTooLong         413  audio over the duration limit
    ├── Unauthorized             401  missing or wrong API key (only when one is configured)
    ├── InvalidAudio             415  empty, not media, corrupt or truncated
    ├── UploadTimedOut           408  the upload stalled or arrived too slowly
    ├── ValidationFailed         422  the request's form does not parse (missing file, wrong types)
    └── ModelUnavailable         503  a model is not loaded or cannot be loaded right now; retry
        └── Overloaded           503  the work queued ahead would make this request wait too long

Each carries the HTTP status and OpenAI's error `type`, and an optional `param` naming the field.
Exceptions cross Ray's process boundary pickled, so each keeps its constructor arguments in `args`.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


class BadRequest(ServiceError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedLanguage(BadRequest):
    pass


class NoAudioStream(BadRequest):
    pass


class UnknownModel(BadRequest):
    code = "model_not_found"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "invalid_request_error"


class AudioTooLong(PayloadTooLarge):
    pass


class InvalidAudio(ServiceError):
    status_code = 415
    error_type = "invalid_request_error"


class UploadTimedOut(ServiceError):
    status_code = 408
    error_type = "invalid_request_error"


class ValidationFailed(ServiceError):
    status_code = 422
    error_type = "invalid_request_error"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class ModelUnavailable(ServiceError):
    status_code = 503
    error_type = "server_error"
    retry_after_s: float = 5


class Overloaded(ModelUnavailable):
    """Shed, not failed: `retry_after_s` is when the queue ahead is expected to have drained enough."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.args = (message, retry_after_s)  # what unpickling passes back to __init__
        self.retry_after_s = retry_after_s


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
