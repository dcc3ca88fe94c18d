"""Receiving an upload: size limit, stall and rate deadlines, spooling, fields in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from core.errors import BadRequest, PayloadTooLarge, UploadTimedOut, ValidationFailed
from serve_app.uploads import UploadLimits, receive_form

BOUNDARY = "b0undary"
LIMITS = UploadLimits(max_bytes=8 << 20, idle_timeout_s=0.3, min_rate_bytes_s=1024, grace_s=0.5)


def form_body(fields: dict[str, str], file_bytes: bytes | None) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if file_bytes is not None:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                     'Content-Type: audio/wav\r\n\r\n'.encode() + file_bytes + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def request(pieces: list[bytes], *, pause_s: float = 0.0, declared: int | None = None,
            content_type: str = f"multipart/form-data; boundary={BOUNDARY}") -> Request:
    """A request whose body arrives in `pieces`, `pause_s` apart."""
    queue = list(pieces)

    async def receive() -> dict[str, Any]:
        if pause_s:
            await asyncio.sleep(pause_s)
        body = queue.pop(0) if queue else b""
        return {"type": "http.request", "body": body, "more_body": bool(queue)}

    length = sum(map(len, pieces)) if declared is None else declared
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(length).encode())]
    return Request({"type": "http", "method": "POST", "headers": headers}, receive=receive)


async def receive(req: Request, limits: UploadLimits = LIMITS) -> tuple[list, bytes, int, bool]:
    async with receive_form(req, limits) as form:
        on_disk = bool(getattr(form.file, "_rolled", False))
        return form.fields, form.file.read(), form.size, on_disk


def test_fields_in_order_and_a_large_file_spooled_to_disk_not_memory():
    audio = bytes(range(256)) * 8192  # 2 MiB
    body = form_body({"model": "whisper-1", "language": "en"}, audio)
    fields, data, size, on_disk = asyncio.run(receive(request([body[i:i + 65536]
                                                               for i in range(0, len(body), 65536)])))
    assert fields == [("model", "whisper-1"), ("language", "en")]
    assert data == audio and size == len(audio)
    assert on_disk


def test_a_second_file_part_is_refused_by_the_parser():
    one = form_body({}, b"RIFF")
    model_as_file = one.replace(b'name="file"', b'name="model"').removesuffix(f"--{BOUNDARY}--\r\n".encode())
    with pytest.raises(BadRequest, match="Too many files"):
        asyncio.run(receive(request([model_as_file + one])))


def test_a_stalled_upload_is_cut_off_with_408():
    body = form_body({"model": "whisper-1"}, b"x" * 4096)
    pieces = [body[:100], body[100:200]]  # then the client goes quiet with most of its body unsent

    async def receive_then_stall() -> dict[str, Any]:
        if pieces:
            return {"type": "http.request", "body": pieces.pop(0), "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    stalled = request([], declared=len(body))
    stalled._receive = receive_then_stall
    with pytest.raises(UploadTimedOut, match="stalled or arrived too slowly"):
        asyncio.run(asyncio.wait_for(receive(stalled), 5))


def test_a_trickling_upload_is_cut_off_once_it_falls_below_the_minimum_rate():
    body = form_body({"model": "whisper-1"}, b"x" * 20000)
    # A piece every 0.1 s (inside the idle timeout) but only 10 bytes each: 100 B/s < 1 KiB/s.
    pieces = [body[i:i + 10] for i in range(0, len(body), 10)]
    with pytest.raises(UploadTimedOut):
        asyncio.run(asyncio.wait_for(receive(request(pieces, pause_s=0.1)), 10))


def test_a_body_over_the_limit_is_refused_while_it_arrives_and_by_its_declared_length():
    small = UploadLimits(max_bytes=100_000, idle_timeout_s=5, min_rate_bytes_s=1024, grace_s=5)
    body = form_body({}, b"x" * 200_000)
    with pytest.raises(PayloadTooLarge):  # declared honestly
        asyncio.run(receive(request([body]), small))
    with pytest.raises(PayloadTooLarge):  # declared small, sent large
        asyncio.run(receive(request([body[i:i + 4096] for i in range(0, len(body), 4096)], declared=10), small))


def test_not_multipart_or_no_file():
    with pytest.raises(ValidationFailed, match="multipart/form-data"):
        asyncio.run(receive(request([b"{}"], content_type="application/json")))
    with pytest.raises(ValidationFailed, match="missing file"):
        asyncio.run(receive(request([form_body({"model": "whisper-1"}, None)])))
    with pytest.raises(BadRequest, match="boundary"):
        asyncio.run(receive(request([b"x"], content_type="multipart/form-data")))
