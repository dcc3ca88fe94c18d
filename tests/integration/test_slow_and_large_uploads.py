"""Uploads that stall, trickle or are large: a few slow clients cannot take the service down, and large
inputs do not raise any process's resting memory."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
import psutil
import pytest

from tests.integration.conftest import paragraph, paragraph_wav, transcribe
from tests.speech import to_wav_bytes

pytestmark = pytest.mark.serve

STALLED = 20  # more than the ingress had slots for when a stalled body held one for ever (16)
IDLE_TIMEOUT_S = 15  # serve_config.cpu.yaml's upload_idle_timeout_s
GRACE_S = 10  # IngressConfig.upload_grace_s


def start_stalled_upload(base_url: str) -> socket.socket:
    """Headers that promise 1 MB, the start of a multipart body, then nothing."""
    url = urlparse(base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    head = (b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF")
    sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 1000000\r\n\r\n" + head)
    return sock


def read_response(sock: socket.socket) -> str:
    """One HTTP response: its head, then as many body bytes as its Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length and (more := sock.recv(4096)):
        body += more
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def test_stalled_uploads_get_408_while_health_and_good_requests_are_answered(base_url, client):
    sockets = [start_stalled_upload(base_url) for _ in range(STALLED)]
    started = time.monotonic()
    try:
        time.sleep(2)  # every stalled request has reached the ingress
        health = client.get("/health", timeout=5)
        assert health.status_code == 200
        response = transcribe(client, paragraph_wav())
        assert response.status_code == 200 and response.json()["text"]
        answers = [read_response(sock) for sock in sockets]
        waited_s = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()
    assert all(a.startswith("HTTP/1.1 408") for a in answers), answers[0][:300]
    assert all("stalled or arrived too slowly" in a for a in answers), answers[0]
    # The rate rule cuts a body that stopped after a few bytes at the grace period, the idle rule at 15 s.
    assert waited_s < IDLE_TIMEOUT_S + 10, waited_s
    assert client.get("/health").status_code == 200


def test_a_flood_beyond_the_expected_wait_is_shed_with_retry_after(client):
    """Twelve concurrent 60 s uploads are ~720 s of audio: at the CPU profile's speed far more than the
    30 s max_queue_wait_s. Some are shed with a computed Retry-After; every other one is answered."""
    speechy = to_wav_bytes(np.tile(paragraph()[0], 4))
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: transcribe(client, speechy), range(12)))
    statuses = [r.status_code for r in responses]
    shed = [r for r in responses if r.status_code == 503]
    assert shed, statuses
    assert all(s in (200, 503) for s in statuses), statuses
    for r in shed:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "overloaded"
        assert "queued ahead" in r.json()["error"]["message"]
    print(f"\n{statuses.count(200)} answered, {len(shed)} shed; Retry-After "
          f"{sorted(int(r.headers['retry-after']) for r in shed)}")
    time.sleep(5)
    assert transcribe(client, paragraph_wav()).status_code == 200


# --- memory ---------------------------------------------------------------------------------------

PROCESSES = {"proxy": "ray::ProxyActor", "ingress": "TranscriptionIngress", "asr": "AsrDeployment"}


def rss_mib() -> dict[str, float]:
    found: dict[str, float] = {}
    for process in psutil.process_iter(["cmdline", "memory_info"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        for name, marker in PROCESSES.items():
            if marker in cmdline and cmdline.startswith("ray::"):
                found[name] = process.info["memory_info"].rss / 2**20
    assert set(found) == set(PROCESSES), found
    return found


def large_inputs() -> list[tuple[str, object]]:
    """Ten accepted 45 MB uploads (4 min of 48 kHz stereo WAV: a tone burst, then silence) and ten refused
    over-size ones sent without a Content-Length, so the ingress reads 100 MiB of each before refusing."""
    rate, seconds = 48_000, 240
    stereo = np.zeros((seconds * rate, 2), dtype=np.int16)
    stereo[:rate, :] = (8000 * np.sin(np.arange(rate) / 8)).astype(np.int16)[:, None]
    header = _wav_header(stereo.nbytes, rate, channels=2)
    accepted = header + stereo.tobytes()

    def oversized():
        chunk = b"\0" * (1 << 20)
        for _ in range(110):
            yield chunk

    return [("accepted", accepted)] * 10 + [("refused", oversized)] * 10


def _wav_header(data_bytes: int, rate: int, channels: int) -> bytes:
    import struct

    block = 2 * channels
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16) +
            b"data" + struct.pack("<I", data_bytes))


def send(client: httpx.Client, kind: str, body) -> int:
    if kind == "accepted":
        return transcribe(client, body, "long.wav").status_code
    boundary = "x"
    def multipart():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n\r\n"
               ).encode()
        yield from body()
        yield f"\r\n--{boundary}--\r\n".encode()
    response = client.post("/v1/audio/transcriptions", content=multipart(),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    return response.status_code


def test_large_inputs_do_not_raise_resting_memory(client):
    """Resting RSS after 20 large inputs, against RSS after a warm-up, per process.

    Measured on 2 cores (the embedded default; the ingress runs with glibc's mmap threshold fixed by
    serve_config.cpu.yaml): the first 100 MiB uploads lift the ingress by ~50 MiB and Serve's proxy
    by 70-290 MiB (Ray's transport buffers, reached once and kept), after which ten further inputs
    add -8..+26 MiB; the ASR replica stays within +60 MiB over ten 4-minute files. The proxy is
    Ray's own process: it cannot be given the ingress's allocator setting, and it reaches its high-water
    mark at no fixed input, so only its total growth is bounded. The bounds for the replicas: no growth
    between the tenth and the twentieth input beyond noise, and the whole run within one upload's
    transit buffers.
    """
    inputs = large_inputs()
    accepted, refused = inputs[0], inputs[10]
    for kind, body in [accepted, refused, accepted, refused]:  # warm-up: first use of every path
        send(client, kind, body)
    time.sleep(3)
    warm = rss_mib()
    statuses = []
    for i, (one, other) in enumerate(zip(inputs[:10], inputs[10:], strict=True), 1):  # interleaved
        statuses += [send(client, *one), send(client, *other)]
        if i == 5:
            time.sleep(3)
            middle = rss_mib()
    time.sleep(3)
    end = rss_mib()
    print("\nRSS MiB after warm-up -> after 10 -> after 20 large inputs:",
          {name: f"{warm[name]:.0f} -> {middle[name]:.0f} -> {end[name]:.0f}" for name in warm})
    assert statuses == [200, 413] * 10
    for name in ("ingress", "asr"):
        assert end[name] - middle[name] < 48, (name, warm[name], middle[name], end[name])
        assert end[name] - warm[name] < 128, (name, warm[name], middle[name], end[name])
    # The proxy reaches its high-water mark at no fixed input (+13..+109 MiB after warm-up in five runs,
    # +62 of it in the second half once, +161 once with +25 in the second half): bounded by two maximum
    # uploads in transit.
    assert end["proxy"] - warm["proxy"] < 200, (warm["proxy"], middle["proxy"], end["proxy"])
