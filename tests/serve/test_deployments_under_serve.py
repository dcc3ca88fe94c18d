"""The real deployment graph under a real Ray Serve, with fake holders (tests/serve/fake_app.py): routing,
error mapping across Ray, in-place config updates, refused updates and graceful shutdown, in seconds.

One Ray and one Serve for the module. The app is deployed the way `serve deploy` and serve_app.launch
deploy it (a Serve config with an import_path, validated by Ray's schema, through the controller), so a
`user_config` change reconfigures the running replicas in place, as it does in production; `serve.run`
of a rebuilt app would replace them instead. The tests run in file order and share that one app: each
states what it expects to find and leaves the app serving, except the last one, which shuts Serve down.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from deployments.asr import AsrDeploymentConfig
from tests.serve.fake_app import TEARDOWN_LOG_ENV
from tests.serve.served import APP, ASR_USER_CONFIG, WAIT_S, fake_app_served, free_port, multipart, serve_config
from tests.speech import to_wav_bytes

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]

SWAPPED = "fake/tiny-v2.en"  # the weights the in-place update puts behind the default model id
HOLDERS = {"asr": "FakeAsrHolder", "alignment": "FakeAlignmentHolder", "diarization": "FakeDiarizationHolder"}
WAV = to_wav_bytes(0.1 * np.sin(np.arange(16_000) / 5))  # 1 s of tone: the fake models ignore the sound


def swapped_asr_config(**extra: Any) -> dict[str, Any]:
    config = AsrDeploymentConfig.model_validate(ASR_USER_CONFIG).model_dump(mode="json")
    return {**config, "models": {**config["models"], "tiny.en": SWAPPED}, **extra}


class Served:
    """The running app: its URL, its port and the file the fake holders log their teardowns to."""

    def __init__(self, url: str, port: int, teardown_log: Path) -> None:
        self.url, self.port, self.teardown_log = url, port, teardown_log

    def teardowns(self) -> list[tuple[str, str, int]]:
        """(holder class, model, pid) of every teardown so far, oldest first."""
        found = []
        for line in self.teardown_log.read_text().splitlines():
            holder, rest = line.split(" ", 1)
            model, pid = rest.rsplit(" ", 1)  # a model name may hold spaces: "fake/align-en [en]"
            found.append((holder, model, int(pid)))
        return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    teardown_log = tmp_path_factory.mktemp("serve") / "teardowns.log"
    teardown_log.touch()
    port = free_port()
    with fake_app_served(port, env={TEARDOWN_LOG_ENV: str(teardown_log)}) as url:
        yield Served(url, port, teardown_log)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=WAIT_S) as c:
        yield c


def transcribe(client: httpx.Client, **fields: Any) -> httpx.Response:
    form = {"model": "whisper-1", **{k: (v if isinstance(v, list) else str(v)) for k, v in fields.items()}}
    return client.post("/v1/audio/transcriptions", data=form, files={"file": ("tone.wav", WAV)})


def models(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    return {card["id"]: card for card in response.json()["data"]}


def replica(client: httpx.Client, deployment: str) -> dict[str, Any]:
    [status] = client.get("/v1/models/status").json()["deployments"][deployment]["replicas"]
    return status


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not after {WAIT_S} s"
        time.sleep(0.2)


# --- requests through the graph -----------------------------------------------------------------


def test_a_transcription_goes_through_the_ingress_to_the_default_model(client):
    response = transcribe(client)
    assert response.status_code == 200, response.text
    assert response.json() == {"text": "transcribe by fake/tiny.en", "usage": {"type": "duration", "seconds": 1.0}}
    assert response.headers["x-request-id"]


def test_srt_is_rendered_from_the_words_of_the_model(client):
    response = transcribe(client, response_format="srt")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "1\n00:00:00,000 --> 00:00:01,000\ntranscribe by fake/tiny.en\n\n"


def test_words_and_speakers_come_from_the_alignment_and_diarization_deployments(client):
    response = transcribe(client, response_format="verbose_json", timestamp_granularities=["word"], diarize="true")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["word_source"] == "alignment" and body["speakers"] == ["SPEAKER_00"]
    assert [w["word"] for w in body["words"]] == ["transcribe", "by", "fake/tiny.en"]
    assert {w["speaker"] for w in body["words"]} == {"SPEAKER_00"}


def test_model_routes_to_another_model_and_models_shows_what_is_loaded(client):
    before = models(client)
    assert before["tiny.en"]["loaded"] is True and before["tiny.en"]["default"] is True
    assert before["base"]["loaded"] is False, "base loads on its first request, not before"
    assert before["whisper-1"]["alias_of"] == "tiny.en"

    response = transcribe(client, model="base")
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "transcribe by fake/base"
    after = models(client)
    assert (after["tiny.en"]["loaded"], after["base"]["loaded"]) == (True, True)
    assert after["base"]["source"] == "fake/base"
    assert set(replica(client, "asr")["loaded"]) == {"tiny.en", "base"}


# --- errors raised in a replica, answered by the ingress -----------------------------------------


def test_an_error_raised_in_the_asr_replica_is_a_400_in_openais_shape(client):
    response = transcribe(client, language="de")  # the default model is English-only
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "language"
    assert "English only" in error["message"] and error["code"] is None
    assert response.headers["x-request-id"]


def test_an_unknown_model_is_a_400_naming_the_models_offered(client):
    response = transcribe(client, model="large-v9")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "base, tiny.en" in error["message"]


def test_a_translation_the_default_cannot_do_names_the_model_that_can(client):
    response = client.post("/v1/audio/translations", files={"file": ("tone.wav", WAV)})
    assert response.status_code == 400, response.text
    assert "model=base" in response.json()["error"]["message"]


# --- malformed requests: a 4xx in OpenAI's shape with the reason, never a 500 -------------------------


def openai_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error["message"]


def post_multipart(client: httpx.Client, body: bytes, content_type: str) -> httpx.Response:
    return client.post("/v1/audio/transcriptions", content=body, headers={"content-type": content_type})


@pytest.mark.parametrize(("parts", "content_type", "reason"), [
    ([("file", "a.wav", WAV), ("file", "b.wav", WAV), ("model", None, b"whisper-1")],
     "multipart/form-data; boundary=b0undary", "Too many files"),
    ([("file", "a.wav", WAV), ("model", "model.txt", b"whisper-1")],
     "multipart/form-data; boundary=b0undary", "Too many files"),
    ([("file", "a.wav", WAV)] + [(f"field{i}", None, b"x") for i in range(70)],
     "multipart/form-data; boundary=b0undary", "Too many fields"),
    ([("file", "a.wav", WAV)], "multipart/form-data", "could not be read"),
    ([("file", "a.wav", WAV)], "multipart/form-data; boundary=other", "Invalid multipart data"),
    ([("file", "a" * 10_000 + ".wav", WAV)], "multipart/form-data; boundary=b0undary", "Invalid multipart data"),
], ids=["two-files", "model-as-file", "71-fields", "no-boundary", "wrong-boundary", "10000-char-filename"])
def test_a_malformed_multipart_form_is_a_400_with_the_parsers_reason(client, parts, content_type, reason):
    response = post_multipart(client, multipart(*parts), content_type)
    message = openai_error(response, 400)
    assert reason in message and "could not be read" in message, message
    assert transcribe(client).status_code == 200, "the service stays healthy"


def test_a_duplicated_single_valued_field_is_refused(client):
    response = client.post("/v1/audio/transcriptions", data={"model": ["whisper-1", "base"]},
                           files={"file": ("a.wav", WAV)})
    assert "'model' was sent more than once" in openai_error(response, 400)


@pytest.mark.parametrize("field", ["temperature", "max_cue_duration_s"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_number_that_is_not_finite_is_named_so(client, field, value):
    assert "finite number" in openai_error(transcribe(client, **{field: value}), 400)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/audio/transcriptions", 405), ("PUT", "/v1/audio/translations", 405),
    ("GET", "/v1/no/such/route", 404),
])
def test_unknown_routes_and_methods_answer_in_openai_shape(client, method, path, status):
    openai_error(client.request(method, path), status)


def test_every_response_carries_one_request_id(client):
    for response in (transcribe(client), transcribe(client, language="xx"), client.get("/v1/models")):
        assert len(response.headers.get_list("x-request-id")) == 1, response.headers


# --- config updates -------------------------------------------------------------------------------


def test_a_user_config_update_swaps_the_model_in_the_running_replica(served, client):
    from serve_app.launch import deploy

    before = replica(client, "asr")
    deploy(serve_config(served.port, swapped_asr_config()), timeout_s=WAIT_S)
    wait_until(lambda: models(client)["tiny.en"]["source"] == SWAPPED, "the new weights serving")

    after = replica(client, "asr")
    assert after["replica_pid"] == before["replica_pid"], "swapped in place, not by a new replica"
    assert after["loaded"]["tiny.en"]["model"] == SWAPPED
    assert after["loaded"]["base"]["model"] == "fake/base", "an unchanged model stays loaded"
    unload = after["unloads"][0]
    assert (unload["model"], unload["reason"]) == ("tiny.en", "replaced")
    assert unload["teardown"]["model"] == "fake/tiny.en" and unload["teardown"]["device"] == "cpu"
    assert after["last_teardown"] == unload["teardown"] and after["healthy"] is True
    assert ("FakeAsrHolder", "fake/tiny.en", before["replica_pid"]) in served.teardowns()
    assert transcribe(client).json()["text"] == f"transcribe by {SWAPPED}"


@pytest.fixture(scope="module")
def typo_update(served: Served, client: httpx.Client) -> dict[str, Any]:
    """Deploy an ASR user_config with a misspelt key, note what Serve and the service make of it, and
    deploy the good config again before the tests look at the notes (the tests after them need it)."""
    from ray import serve

    from serve_app.launch import deploy

    seen: dict[str, Any] = {"pid_before": replica(client, "asr")["replica_pid"]}
    try:
        deploy(serve_config(served.port, swapped_asr_config(modle="tiny")), timeout_s=WAIT_S)
    except ValueError as e:  # what an operator running serve_app.launch is told
        seen["deploy_error"] = str(e)
    status = serve.status().applications[APP]
    seen["app_status"] = str(status.status)
    seen["deployment_message"] = status.deployments["AsrDeployment"].message
    seen["response_during"] = transcribe(client)
    seen["pid_after"] = replica(client, "asr")["replica_pid"]
    deploy(serve_config(served.port, swapped_asr_config()), timeout_s=WAIT_S)
    wait_until(lambda: transcribe(client).status_code == 200, "the ASR deployment serving again")
    return seen


def test_a_user_config_with_an_unknown_key_is_refused_before_it_reaches_serve(typo_update):
    # Serve would stop the running replica when its reconfigure refuses the config: the deploy command
    # checks every model user_config first and deploys nothing.
    assert "deploy_error" in typo_update, "serve_app.launch.deploy reported success"
    assert typo_update["app_status"].endswith("RUNNING")
    assert typo_update["pid_after"] == typo_update["pid_before"], "the running replica was left alone"


def test_the_deploy_command_names_the_unknown_key(typo_update):
    assert "modle" in typo_update["deploy_error"], typo_update["deploy_error"]


def test_a_refused_update_leaves_the_running_replica_serving(typo_update):
    response = typo_update["response_during"]
    assert response.status_code == 200, response.text


# --- shutdown (last: it stops Serve) ----------------------------------------------------------------


def test_a_graceful_shutdown_tears_every_model_down_in_its_replica(served, client):
    from ray import serve

    # One model of each kind loaded (ASR: two), whatever the tests before left loaded.
    assert transcribe(client, model="base").status_code == 200
    response = transcribe(client, response_format="verbose_json", timestamp_granularities=["word"], diarize="true")
    assert response.status_code == 200, response.text
    status = client.get("/v1/models/status").json()["deployments"]
    expected = set()
    for deployment, holder in HOLDERS.items():
        [replica_status] = status[deployment]["replicas"]
        expected |= {(holder, model["model"], replica_status["replica_pid"])
                     for model in replica_status["loaded"].values()}
    assert sorted(holder for holder, _, _ in expected) == [
        "FakeAlignmentHolder", "FakeAsrHolder", "FakeAsrHolder", "FakeDiarizationHolder"]
    already = len(served.teardowns())

    serve.shutdown()
    wait_until(lambda: len(served.teardowns()) - already >= len(expected), "every teardown logged")
    assert set(served.teardowns()[already:]) == expected
