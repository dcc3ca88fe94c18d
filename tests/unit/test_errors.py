"""One mapping from exceptions to OpenAI-shaped HTTP errors, through Ray's wrapper too."""

import json

import pytest
from ray.exceptions import RayTaskError

from core.errors import (
    AudioTooLong,
    BadRequest,
    InvalidAudio,
    ModelUnavailable,
    NoAudioStream,
    UnknownModel,
    UnsupportedLanguage,
    ValidationFailed,
)
from serve_app.ingress import error_response


def body(response):
    return json.loads(response.body)


@pytest.mark.parametrize(("error", "status"), [
    (BadRequest("bad field", param="x"), 400),
    (UnsupportedLanguage("no xx", param="language"), 400),
    (NoAudioStream("no audio"), 400),
    (UnknownModel("no such model", param="model"), 400),
    (AudioTooLong("too long"), 413),
    (InvalidAudio("not media"), 415),
    (ValidationFailed("missing file", param="file"), 422),
    (ModelUnavailable("loading"), 503),
])
def test_service_errors_map_to_their_status_in_openai_shape(error, status):
    response = error_response(error, "req_1")
    assert response.status_code == status
    err = body(response)["error"]
    assert err["message"] == error.message and err["param"] == error.param
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert "x-request-id" not in response.headers, "Serve's proxy adds it; a second copy would repeat it"


def test_unavailable_tells_the_client_when_to_retry():
    assert error_response(ModelUnavailable("x"), "r").headers["retry-after"] == "5"


def test_unknown_model_has_openai_code():
    assert body(error_response(UnknownModel("x"), "r"))["error"]["code"] == "model_not_found"


def test_errors_raised_in_a_replica_are_unwrapped():
    wrapped = RayTaskError("transcribe", "traceback text", UnsupportedLanguage("no xx", param="language"))
    response = error_response(wrapped.as_instanceof_cause(), "r")
    assert response.status_code == 400
    assert body(response)["error"] == {"message": "no xx", "type": "invalid_request_error",
                                       "param": "language", "code": None}


def test_unexpected_errors_are_500_without_internals():
    response = error_response(KeyError("/secret/path/token=abc"), "req_9")
    assert response.status_code == 500
    message = body(response)["error"]["message"]
    assert "secret" not in message and "req_9" in message


def test_errors_survive_pickling_across_processes():
    import pickle

    error = pickle.loads(pickle.dumps(UnsupportedLanguage("no xx", param="language")))
    assert (type(error), error.message, error.param) == (UnsupportedLanguage, "no xx", "language")


def test_a_full_queue_downstream_is_shed_with_503():
    from ray.serve.exceptions import BackPressureError

    response = error_response(BackPressureError(num_queued_requests=64, max_queued_requests=64), "r")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert "capacity" in body(response)["error"]["message"]
