"""Receiving an upload: the multipart form read straight from the request stream, under a size limit
and two deadlines, with the file spooled to a temporary file rather than held in memory.

Why deadlines: a request holds one of the ingress replica's `max_ongoing_requests` slots while its
body arrives, and nothing in Serve or uvicorn times out a slow body. A client that opens the request
and then stalls (or trickles) would hold its slot for as long as it likes; a handful of them would
take the service down. So the body must keep coming: no pause longer than `idle_timeout_s`, and, after
`grace_s`, at least `min_rate_bytes_s` on average. Either failure is a 408.

Why spooled: Starlette's multipart parser writes a file part over 1 MiB to a temporary file on disk,
so a 100 MiB upload costs the replica 100 MiB of disk while it is decoded, not 100 MiB of memory
(or two copies of it, as reading the whole body first did).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import BinaryIO

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from core.errors import BadRequest, PayloadTooLarge, UploadTimedOut, ValidationFailed

_MIB = 1024 * 1024
MAX_FIELDS = 64
MAX_FIELD_BYTES = 4 * 1024 * 1024  # a text field: a known speaker's reference clip as a data URL is the largest
"""Text fields a form may carry; the API has fewer than 20."""


@dataclass(frozen=True)
class UploadLimits:
    """max_bytes: largest body accepted (413 above); idle_timeout_s: longest pause between two pieces
    of the body; min_rate_bytes_s, grace_s: after `grace_s`, the body so far must have come at least
    this fast on average (408 otherwise)."""

    max_bytes: int
    idle_timeout_s: float
    min_rate_bytes_s: float
    grace_s: float


@dataclass
class ReceivedForm:
    """The text fields in order (name, value; a file part sent in a text field shows as None) and the
    uploaded file, positioned at its start, with its size in bytes."""

    fields: list[tuple[str, str | None]]
    file: BinaryIO
    size: int


async def _body(request: Request, limits: UploadLimits) -> AsyncGenerator[bytes, None]:
    """The request body, piece by piece, refused as soon as it breaks a limit."""
    declared = request.headers.get("content-length", "")
    too_large = f"the upload is larger than this service's limit of {limits.max_bytes / _MIB:.0f} MiB"
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise PayloadTooLarge(too_large, param="file")
    started, received = time.monotonic(), 0
    pieces = request.stream().__aiter__()
    while True:
        # The rate rule as a deadline for the next piece: what has arrived so far buys time.
        rate_deadline = started + limits.grace_s + received / limits.min_rate_bytes_s
        wait_s = min(limits.idle_timeout_s, rate_deadline - time.monotonic())
        try:
            piece = await asyncio.wait_for(pieces.__anext__(), max(wait_s, 0.0))
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadTimedOut(
                f"the upload stalled or arrived too slowly ({received} bytes in "
                f"{time.monotonic() - started:.0f} s; this service waits at most {limits.idle_timeout_s:g} s "
                f"for more and needs at least {limits.min_rate_bytes_s / 1024:g} KiB/s); send the whole "
                "file without pausing", param="file") from None
        received += len(piece)
        if received > limits.max_bytes:
            raise PayloadTooLarge(too_large, param="file")
        yield piece


@asynccontextmanager
async def receive_form(request: Request, limits: UploadLimits) -> AsyncIterator[ReceivedForm]:
    """Read the multipart form under `limits`; the temporary file is deleted when the block ends."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ValidationFailed("send the request as multipart/form-data with the audio in a field named 'file'")
    parser = MultiPartParser(request.headers, _body(request, limits), max_files=1, max_fields=MAX_FIELDS,
                             max_part_size=MAX_FIELD_BYTES)
    try:
        form: FormData = await parser.parse()
    except (HTTPException, MultiPartException) as e:  # Starlette's own 400s: no boundary, too many parts...
        reason = e.detail if isinstance(e, HTTPException) else e.message
        raise BadRequest(f"the multipart form could not be read: {reason}; send one 'file' part and text "
                         "fields only") from None
    except ClientDisconnect:
        raise BadRequest("the client disconnected before the upload was complete") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed("missing file: send the audio or video as a multipart field named 'file'",
                                   param="file")
        fields = [(key, value if isinstance(value, str) else None)
                  for key, value in form.multi_items() if key != "file"]
        upload.file.seek(0, 2)
        size = upload.file.tell()
        upload.file.seek(0)
        yield ReceivedForm(fields, upload.file, size)
    finally:
        await form.close()
