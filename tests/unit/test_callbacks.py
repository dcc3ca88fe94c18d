"""Job completion callbacks: signatures checked with the receiver's own hmac code, the target checks, and
delivery by `CallbackSender` to a real HTTP server on a loopback port (allowlisted for the purpose)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from core.errors import BadRequest
from serve_app.jobs import Job, JobStore, open_job_store
from serve_app.jobs.callbacks import (
    SIGNATURE_HEADER,
    CallbackPolicy,
    CallbackSender,
    callback_body,
    check_url,
    check_url_async,
    deliver,
    sign,
    verify,
)

KEY = b"whsec-test-key-0123456789"
FIELDS = {"model": "whisper-1", "response_format": "json"}
TRANSCRIPT: dict[str, Any] = {"text": "a sentence that must not travel in the callback", "language": "en",
                              "duration": 3.0}
LOOPBACK = CallbackPolicy(allow=("127.0.0.1/32",), allow_http=True, backoff_s=0.01, timeout_s=2.0)


# --- a real receiver -----------------------------------------------------------------------------------

class Receiver:
    """An HTTP server on a free loopback port that records each request and answers from a script
    (status, extra headers) per path, the last entry repeating; 200 for a path without a script."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.delay_s = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                time.sleep(receiver.delay_s)
                answers = receiver.script.get(self.path, [(200, {})])
                status, headers = answers.pop(0) if len(answers) > 1 else answers[0]
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):  # the sender gave up waiting (timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01},
                                       daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()
    r.thread.join(5)


class CountingStore:
    """The real store, counting `callback_sent` calls per job."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.sent: dict[str, int] = {}

    def pending_callbacks(self, limit: int = 100) -> list[Job]:
        return self.store.pending_callbacks(limit)

    def callback_sent(self, job_id: str) -> Job:
        self.sent[job_id] = self.sent.get(job_id, 0) + 1
        return self.store.callback_sent(job_id)


@pytest.fixture
def store(tmp_path: Any) -> Iterator[JobStore]:
    s = open_job_store(str(tmp_path / "jobs.db"))
    yield s
    s.close()


def ended_job(store: JobStore, callback_url: str, *, succeed: bool = True) -> Job:
    job = store.create("transcribe", FIELDS, "/spool/upload.wav", callback_url=callback_url)
    assert store.claim("runner-1", 30.0) is not None
    if succeed:
        return store.finish(job.id, "runner-1", result=TRANSCRIPT)
    return store.finish(job.id, "runner-1", error={"message": "not decodable", "type": "invalid_request_error",
                                                   "param": "file", "code": None})


async def settle(sender: CallbackSender, store: JobStore, job_id: str, timeout_s: float = 5.0) -> None:
    """Pass after pass until the job's callback is settled (delivered or given up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        await sender.run_once()
        job = store.get(job_id)
        assert job is not None
        if job.callback_done:
            return
        assert time.monotonic() < deadline, "callback not settled in time"
        await asyncio.sleep(0.005)


def receiver_verifies(request: dict[str, Any], key: bytes) -> bool:
    """What a receiver does, written without the module under test."""
    headers = {k.lower(): v for k, v in request["headers"].items()}
    ts = headers["x-transcription-timestamp"]
    mac = hmac.new(key, f"{ts}.".encode() + request["body"], hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(ts)) < 300
    return hmac.compare_digest(f"sha256={mac}", headers["x-transcription-signature"]) and fresh


# --- signatures ----------------------------------------------------------------------------------------

def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body, ts = b'{"id":"job_1"}', 1_700_000_000
    expected = "sha256=" + hmac.new(KEY, b'1700000000.{"id":"job_1"}', hashlib.sha256).hexdigest()
    assert sign(body, KEY, ts) == expected
    assert verify(body, KEY, ts, expected)


def test_verify_refuses_tampering() -> None:
    body, ts = b'{"id":"job_1","status":"succeeded"}', 1_700_000_000
    signature = sign(body, KEY, ts)
    assert verify(body, KEY, ts, signature)
    assert not verify(body.replace(b"succeeded", b"failed"), KEY, ts, signature)
    assert not verify(body, KEY, ts + 1, signature)
    assert not verify(body, b"another key", ts, signature)
    assert not verify(body, KEY, ts, signature.removeprefix("sha256="))
    assert not verify(body, KEY, ts, "sha256=" + "0" * 64)
    assert not verify(body, KEY, ts, "sha256=ünicode")


# --- target checks -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "says"), [
    ("https://127.0.0.1/hook", "loopback address (127.0.0.0/8)"),
    ("https://127.3.4.5:8443/hook", "loopback"),
    ("https://localhost/hook", "loopback name"),
    ("https://api.localhost/hook", "loopback name"),
    ("https://[::1]/hook", "loopback address (::1/128)"),
    ("https://[::ffff:127.0.0.1]/hook", "IPv4-mapped loopback"),
    ("https://[::ffff:169.254.169.254]/hook", "IPv4-mapped cloud metadata"),
    ("https://[64:ff9b::7f00:1]/hook", "NAT64-embedded loopback"),
    ("https://169.254.169.254/latest/meta-data/", "cloud metadata address (169.254.169.254/32)"),
    ("https://169.254.1.1/hook", "link-local"),
    ("https://[fe80::1]/hook", "link-local"),
    ("https://[fd00:ec2::254]/hook", "cloud metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata name"),
    ("https://METADATA.google.internal./computeMetadata/v1/", "cloud metadata name"),
    ("https://0.0.0.0/hook", "unspecified"),
    ("https://[::]/hook", "unspecified"),
    ("https://224.0.0.1/hook", "multicast"),
    ("https://[ff02::1]/hook", "multicast"),
    ("https://255.255.255.255/hook", "reserved"),
    ("https://2130706433/hook", "not a host name or IP address"),
    ("https://0x7f.0.0.1/hook", "not a host name or IP address"),
    ("https://127.1/hook", "not a host name or IP address"),
    ("https://0177.0.0.1/hook", "not a valid URL"),
    ("ftp://hooks.example.com/hook", "https (or http) URL, not 'ftp'"),
    ("hooks.example.com/hook", "https (or http) URL"),
    ("https://user:secret@hooks.example.com/hook", "credentials"),
    ("https:///hook", "no host"),
    ("http://93.184.215.14/hook", "must use https"),
    ("https://no-such-host.invalid/hook", "does not resolve"),
])
def test_check_url_refuses(url: str, says: str) -> None:
    with pytest.raises(BadRequest) as refused:
        check_url(url, CallbackPolicy())
    assert refused.value.param == "callback_url"
    assert says in refused.value.message


@pytest.mark.parametrize("url", [
    "https://93.184.215.14/hook?token=abc",
    "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:8443/hook",
    "https://[64:ff9b::5db8:d70e]/hook",  # NAT64 for 93.184.215.14
    "https://10.1.2.3/hook",  # private ranges: in-cluster receivers
    "https://192.168.0.10/hook",
    "https://[fd12:3456::1]/hook",
])
def test_check_url_accepts_public_and_private_addresses(url: str) -> None:
    check_url(url, CallbackPolicy())


def test_allowlist_lets_networks_and_names_through_also_over_http() -> None:
    check_url("http://127.0.0.1:8080/hook", CallbackPolicy(allow=("127.0.0.1/32",)))
    check_url("https://[::ffff:127.0.0.1]/hook", CallbackPolicy(allow=("127.0.0.0/8",)))
    check_url("http://localhost:8080/hook", CallbackPolicy(allow=("localhost",)))
    check_url("http://93.184.215.14/hook", CallbackPolicy(allow_http=True))
    with pytest.raises(BadRequest, match="loopback"):  # the allowlist names another address
        check_url("https://127.0.0.2/hook", CallbackPolicy(allow=("127.0.0.1/32",)))
    with pytest.raises(BadRequest, match="must use https"):  # allowed networks do not open http elsewhere
        check_url("http://93.184.215.14/hook", CallbackPolicy(allow=("127.0.0.1/32",)))


def test_policy_refuses_allowlist_entries_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="neither a CIDR network nor a host name"):
        CallbackPolicy(allow=("10.0.0.0/33",))
    with pytest.raises(ValueError, match="neither"):
        CallbackPolicy(allow=("10.0.0.1/8",))  # host bits set: probably not what was meant


async def test_check_url_async_refuses_like_check_url() -> None:
    await check_url_async("https://93.184.215.14/hook", CallbackPolicy())
    with pytest.raises(BadRequest, match="loopback"):
        await check_url_async("https://localhost/hook", CallbackPolicy())


def fake_dns(monkeypatch: pytest.MonkeyPatch, name: str, answers: list[str]) -> list[str]:
    """Resolve `name` to the next of `answers` (the last repeating); other hosts as usual. Returns the
    log of names asked for."""
    real, asked = socket.getaddrinfo, []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_check_url_refuses_if_any_resolved_address_is_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.test":
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(BadRequest, match=r"'hooks.test' resolves to ::1, a loopback"):
        check_url("https://hooks.test/hook", CallbackPolicy())


# --- the body ------------------------------------------------------------------------------------------

def test_body_describes_the_job_without_its_transcript(store: JobStore) -> None:
    job = ended_job(store, "https://hooks.example.com/hook")
    body = callback_body(job)
    assert b" " not in body.replace(b"transcription.job", b"")  # compact
    assert json.loads(body) == {"id": job.id, "object": "transcription.job", "status": "succeeded",
                                "created_at": int(job.created_at), "finished_at": int(job.updated_at),
                                "error": None, "result_url": f"/v1/jobs/{job.id}/result"}
    assert list(json.loads(body)) == ["id", "object", "status", "created_at", "finished_at", "error", "result_url"]
    assert TRANSCRIPT["text"].encode() not in body
    assert callback_body(job) == body

    failed = json.loads(callback_body(ended_job(store, "https://hooks.example.com/hook", succeed=False)))
    assert failed["status"] == "failed" and failed["error"]["param"] == "file" and failed["result_url"] is None


# --- delivery to a real server -------------------------------------------------------------------------

async def test_delivers_a_signed_body_once(store: JobStore, receiver: Receiver) -> None:
    job = ended_job(store, receiver.url("/hook?token=t0k"))
    counting = CountingStore(store)
    sender = CallbackSender(counting, KEY, LOOPBACK)  # type: ignore[arg-type]
    assert await sender.run_once() == 1
    assert receiver.paths() == ["/hook?token=t0k"]
    request = receiver.requests[0]
    assert receiver_verifies(request, KEY)
    assert not receiver_verifies(request, b"another key")
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"] == callback_body(job)
    assert counting.sent == {job.id: 1}
    assert store.get(job.id).callback_done  # type: ignore[union-attr]
    assert await sender.run_once() == 0 and len(receiver.requests) == 1


async def test_without_a_key_no_signature_is_sent(store: JobStore, receiver: Receiver) -> None:
    ended_job(store, receiver.url())
    await CallbackSender(store, None, LOOPBACK).run_once()
    headers = {k.lower() for k in receiver.requests[0]["headers"]}
    assert SIGNATURE_HEADER.lower() not in headers and "x-transcription-timestamp" not in headers


async def test_server_errors_are_retried_with_backoff(store: JobStore, receiver: Receiver) -> None:
    receiver.script["/hook"] = [(500, {}), (500, {}), (200, {})]
    job = ended_job(store, receiver.url())
    counting = CountingStore(store)
    sender = CallbackSender(counting, KEY, LOOPBACK)  # type: ignore[arg-type]
    await settle(sender, store, job.id)
    assert receiver.paths() == ["/hook"] * 3
    assert all(receiver_verifies(r, KEY) for r in receiver.requests)
    assert counting.sent == {job.id: 1}


async def test_no_attempt_before_the_backoff_has_passed(store: JobStore, receiver: Receiver) -> None:
    receiver.script["/hook"] = [(503, {}), (200, {})]
    job = ended_job(store, receiver.url())
    sender = CallbackSender(store, KEY, CallbackPolicy(allow=("127.0.0.1/32",), backoff_s=30.0))
    assert await sender.run_once() == 1
    assert await sender.run_once() == 0
    assert len(receiver.requests) == 1 and not store.get(job.id).callback_done  # type: ignore[union-attr]


async def test_gives_up_after_max_attempts(store: JobStore, receiver: Receiver,
                                           caplog: pytest.LogCaptureFixture) -> None:
    receiver.script["/hook?token=s3cr3t-path-token"] = [(503, {})]
    job = ended_job(store, receiver.url("/hook?token=s3cr3t-path-token"))
    policy = CallbackPolicy(allow=("127.0.0.1/32",), backoff_s=0.01, max_attempts=3)
    with caplog.at_level(logging.INFO, logger="serve_app.jobs.callbacks"):
        await settle(CallbackSender(store, KEY, policy), store, job.id)
    assert len(receiver.requests) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and job.id in warnings[0] and "127.0.0.1" in warnings[0] and "503" in warnings[0]
    logged = caplog.text
    signature = receiver.requests[0]["headers"][SIGNATURE_HEADER]
    assert KEY.decode() not in logged and signature not in logged and "s3cr3t-path-token" not in logged


async def test_client_errors_are_not_retried(store: JobStore, receiver: Receiver,
                                             caplog: pytest.LogCaptureFixture) -> None:
    receiver.script["/hook"] = [(404, {}), (200, {})]
    job = ended_job(store, receiver.url())
    counting = CountingStore(store)
    with caplog.at_level(logging.WARNING, logger="serve_app.jobs.callbacks"):
        await settle(CallbackSender(counting, KEY, LOOPBACK), store, job.id)  # type: ignore[arg-type]
    assert len(receiver.requests) == 1 and counting.sent == {job.id: 1}
    assert "given up after 1 attempt(s): answered 404" in caplog.text


async def test_rate_limited_is_retried(store: JobStore, receiver: Receiver) -> None:
    receiver.script["/hook"] = [(429, {}), (408, {}), (204, {})]
    job = ended_job(store, receiver.url())
    await settle(CallbackSender(store, KEY, LOOPBACK), store, job.id)
    assert len(receiver.requests) == 3


async def test_redirects_are_not_followed(store: JobStore, receiver: Receiver) -> None:
    receiver.script["/hook"] = [(302, {"Location": receiver.url("/elsewhere")})]
    job = ended_job(store, receiver.url())
    await settle(CallbackSender(store, KEY, LOOPBACK), store, job.id)
    assert receiver.paths() == ["/hook"]
    async with httpx.AsyncClient() as client:
        result = await deliver(receiver.url(), b"{}", KEY, LOOPBACK, client)
    assert (result.delivered, result.status_code, result.retry) == (False, 302, False)
    assert "redirect" in (result.error or "") and receiver.paths() == ["/hook", "/hook"]


async def test_blocked_target_is_never_requested(store: JobStore, receiver: Receiver) -> None:
    job = ended_job(store, receiver.url())
    sender = CallbackSender(store, KEY, CallbackPolicy(allow_http=True, backoff_s=0.01))  # loopback not allowed
    await settle(sender, store, job.id)
    assert receiver.requests == []


async def test_target_that_now_resolves_to_a_blocked_address_is_not_requested(
        store: JobStore, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://hooks.test:{receiver.port}/hook"
    policy = CallbackPolicy(allow_http=True, backoff_s=0.01)
    fake_dns(monkeypatch, "hooks.test", ["93.184.215.14", "127.0.0.1"])
    check_url(url, policy)  # at submission: a public address
    job = ended_job(store, url)
    async with httpx.AsyncClient() as client:
        result = await deliver(url, callback_body(job), KEY, policy, client)
    assert (result.delivered, result.retry) == (False, False)
    assert "resolves to 127.0.0.1, a loopback address" in (result.error or "")
    await settle(CallbackSender(store, KEY, policy), store, job.id)
    assert receiver.requests == []


async def test_request_goes_to_the_address_checked(store: JobStore, receiver: Receiver,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is resolved once per attempt, by the check; the connection goes to that address with the
    name in Host, so a second lookup (a DNS rebinding) has nothing to change."""
    asked = fake_dns(monkeypatch, "hooks.test", ["127.0.0.1", "169.254.169.254"])
    ended_job(store, f"http://hooks.test:{receiver.port}/hook")
    assert await CallbackSender(store, KEY, LOOPBACK).run_once() == 1
    assert asked == ["hooks.test"]
    assert receiver.requests[0]["headers"]["Host"] == f"hooks.test:{receiver.port}"
    assert receiver_verifies(receiver.requests[0], KEY)


async def test_a_receiver_that_does_not_answer_in_time_is_retried(receiver: Receiver) -> None:
    receiver.delay_s = 3.0
    policy = CallbackPolicy(allow=("127.0.0.1/32",), timeout_s=0.2)
    started = time.monotonic()
    async with httpx.AsyncClient() as client:
        result = await deliver(receiver.url(), b"{}", KEY, policy, client)
    assert time.monotonic() - started < 2.0
    assert (result.delivered, result.retry) == (False, True) and "no answer within 0.2 s" in (result.error or "")


async def test_a_closed_port_is_retried() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        async with httpx.AsyncClient() as client:
            result = await deliver(f"http://127.0.0.1:{port}/hook", b"{}", KEY, LOOPBACK, client)
    assert (result.delivered, result.status_code, result.retry) == (False, None, True)
    assert "could not connect" in (result.error or "")


class FlakyStore(CountingStore):
    def __init__(self, store: JobStore) -> None:
        super().__init__(store)
        self.failures = 1

    def pending_callbacks(self, limit: int = 100) -> list[Job]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store unreachable")
        return super().pending_callbacks(limit)


async def test_run_survives_a_failing_pass(store: JobStore, receiver: Receiver,
                                           caplog: pytest.LogCaptureFixture) -> None:
    job = ended_job(store, receiver.url())
    flaky = FlakyStore(store)
    stop = asyncio.Event()
    loop = asyncio.create_task(CallbackSender(flaky, KEY, LOOPBACK).run(0.01, stop=stop))  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while not flaky.sent and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(loop, 2)
    assert flaky.sent == {job.id: 1} and len(receiver.requests) == 1
    assert "callback pass failed" in caplog.text and "store unreachable" in caplog.text
