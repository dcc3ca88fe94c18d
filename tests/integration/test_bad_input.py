"""Every kind of bad request gets a 4xx in OpenAI's error shape that says what to fix, and the
service answers the next good request."""

from __future__ import annotations

import numpy as np
import pytest

from tests.integration.conftest import paragraph_wav, transcribe
from tests.media_files import encode_video, silent_flac

pytestmark = pytest.mark.serve


def assert_error(response, status: int, *phrases: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for phrase in phrases:
        assert phrase in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param


def still_serves(client) -> None:
    response = transcribe(client, paragraph_wav())
    assert response.status_code == 200 and response.json()["text"], response.text


CASES = {
    "missing file": (lambda c: c.post("/v1/audio/transcriptions", data={"model": "whisper-1"},
                                      files={"other": ("x", b"y")}), 422, ["missing file"], "file"),
    "not multipart": (lambda c: c.post("/v1/audio/transcriptions", json={"model": "whisper-1"}),
                      422, ["multipart/form-data"], None),
    "unknown model": (lambda c: transcribe(c, paragraph_wav(), model="large-v9"), 400,
                      ["unknown model 'large-v9'", "base, tiny.en"], "model"),
    "empty file": (lambda c: transcribe(c, b""), 415, ["empty"], None),
    "not media": (lambda c: transcribe(c, b"this is a text file, not audio\n" * 50, "notes.txt"), 415,
                  ["not recognised as audio or video"], None),
    "truncated": (lambda c: transcribe(c, encode_video(np.zeros(16000, np.float32))[:300], "cut.mp4"), 415,
                  [], None),
    "video without audio": (lambda c: transcribe(c, encode_video(None, seconds=1.0), "silent.mp4"), 400,
                            ["no audio stream"], None),
    "audio too long": (lambda c: transcribe(c, silent_flac(3700), "long.flac"), 413, ["3700.0 s", "3600"], None),
    "unknown format": (lambda c: transcribe(c, paragraph_wav(), response_format="docx"), 400,
                       ["response_format"], "response_format"),
    "bad language": (lambda c: transcribe(c, paragraph_wav(), language="klingon"), 400,
                     ["unknown language code"], "language"),
    "language the model lacks": (lambda c: transcribe(c, paragraph_wav(), language="de"), 400,
                                 ["English only"], "language"),
    "min above max speakers": (lambda c: transcribe(c, paragraph_wav(), min_speakers=3, max_speakers=2), 400,
                               ["min_speakers (3) is greater than max_speakers (2)"], None),
    "zero speakers": (lambda c: transcribe(c, paragraph_wav(), num_speakers=0), 400, ["num_speakers"],
                      "num_speakers"),
    "negative speakers": (lambda c: transcribe(c, paragraph_wav(), max_speakers=-2), 400, ["max_speakers"],
                          "max_speakers"),
    "unknown field": (lambda c: transcribe(c, paragraph_wav(), diarise="true"), 400, ["unknown field"],
                      "diarise"),
    "translate on an English-only model": (
        lambda c: c.post("/v1/audio/translations", data={"model": "tiny.en"},
                         files={"file": ("a.wav", paragraph_wav())}), 400,
        ["tiny.en is English-only and cannot translate", "model=base"], "model"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_then_a_good_request(client, case):
    send, status, phrases, param = CASES[case]
    assert_error(send(client), status, *phrases, param=param)
    still_serves(client)


def test_upload_over_the_size_limit_is_refused_while_streaming(client):
    # 101 MiB against the profile's 100 MiB; sent without Content-Length, as a stream.
    def body():
        boundary = b"--x\r\n"
        yield boundary + b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        chunk = b"\0" * (1 << 20)
        for _ in range(101):
            yield chunk
        yield b"\r\n--x--\r\n"

    response = client.post("/v1/audio/transcriptions", content=body(),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(response, 413, "100 MiB")
    still_serves(client)
