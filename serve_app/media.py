"""Decode an untrusted upload to 16 kHz mono float32 samples, in a throwaway child process.

This is the parent side, what the ingress calls (`decode_audio`); the child that runs FFmpeg is
`serve_app.decoder`, whose docstring gives the wire format between the two and how the upload is
kept from opening other files or URLs.

Why a child process: FFmpeg parses hostile input here. A decoder that crashes, hangs or allocates
without bound must cost one request (a 4xx), not the replica. The child runs with an address-space
limit (RLIMIT_AS), a CPU-time limit (RLIMIT_CPU), no right to write files (RLIMIT_FSIZE=0), and the
parent kills it after a wall-clock timeout.

Units: durations in seconds, rates in Hz, memory in MiB, sample counts in samples at 16 kHz.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np

from core.audio import SAMPLE_RATE_HZ
from core.errors import AudioTooLong, InvalidAudio, NoAudioStream, PayloadTooLarge
from serve_app.decoder import BYTES_PER_SAMPLE, DURATION_SLACK_S

logger = logging.getLogger(__name__)

MIN_MEMORY_LIMIT_MIB = 256
"""Python with PyAV loaded takes ~120 MiB of address space before reading a byte (160 measured)."""

_STDERR_KEPT_BYTES = 4096  # only for our log; never shown to the user


@dataclass(frozen=True)
class DecodedAudio:
    """A decoded upload.

    samples:    float32, mono, 16 kHz, shape (n,), writable
    duration_s: len(samples) / SAMPLE_RATE_HZ, in seconds
    container:  FFmpeg demuxer name, e.g. "wav" or "mov,mp4,m4a,3gp,3g2,mj2"
    codec:      audio codec name, e.g. "pcm_s16le", "mp3", "aac", "opus"
    had_video:  the file also held a video stream (cover art in audio files does not count)
    warnings:   what of the file could not be decoded (a truncated end, damaged packets), in words
                for the user; empty when all of it was
    """

    samples: np.ndarray
    duration_s: float
    container: str
    codec: str
    had_video: bool
    warnings: tuple[str, ...] = ()


async def decode_audio(
    data: bytes | BinaryIO,
    *,
    max_duration_s: float,
    timeout_s: float = 60,
    memory_limit_mib: int = 2048,
    max_bytes: int | None = None,
) -> DecodedAudio:
    """Decode `data` (a whole uploaded file: its bytes, or a binary file positioned at its start, which
    is streamed to the child without being read into memory) to 16 kHz mono float32, in a child process.

    max_duration_s:   longest audio accepted, in seconds (AudioTooLong beyond it)
    timeout_s:        wall-clock seconds the child may take, start-up included (InvalidAudio beyond)
    memory_limit_mib: the child's address-space limit, in MiB
    max_bytes:        optional upload size limit, in bytes (PayloadTooLarge beyond it); the ingress
                      normally enforces it while the upload arrives

    Raises InvalidAudio (empty, not media, corrupt, decoder failed or too slow), NoAudioStream,
    AudioTooLong, PayloadTooLarge. Cancelling the awaiting task kills the child.
    """
    if memory_limit_mib < MIN_MEMORY_LIMIT_MIB:
        # Too little to even load FFmpeg: every upload would fail as if it were corrupt.
        raise ValueError(f"memory_limit_mib must be at least {MIN_MEMORY_LIMIT_MIB}")
    size = len(data) if isinstance(data, bytes) else _remaining_bytes(data)
    if not size:
        raise InvalidAudio("the uploaded file is empty", param="file")
    if max_bytes is not None and size > max_bytes:
        raise PayloadTooLarge(
            f"the uploaded file is {size} bytes; this service accepts at most {max_bytes} bytes",
            param="file",
        )
    # The child enforces the limit itself; the parent only refuses to read more than this.
    max_samples = math.ceil((max_duration_s + DURATION_SLACK_S) * SAMPLE_RATE_HZ)
    child_args = {
        "max_duration_s": max_duration_s,
        "memory_limit_mib": memory_limit_mib,
        # A backstop should the parent die and not kill the child: the wall-clock timeout is
        # the limit that normally fires.
        "cpu_limit_s": math.ceil(timeout_s) + 1,
    }
    proc = await asyncio.create_subprocess_exec(
        *_child_command(child_args),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_child_env(),
        cwd="/",
    )
    try:
        header, pcm, stderr = await asyncio.wait_for(_exchange(proc, data, max_samples), timeout_s)
    except TimeoutError:
        logger.warning("media decoder killed after %g s (%d bytes uploaded)", timeout_s, size)
        raise InvalidAudio(
            f"decoding the file took longer than {timeout_s:g} s; it may be corrupt or unusually "
            f"complex. Re-encode it as WAV, MP3 or FLAC and upload it again",
            param="file",
        ) from None
    finally:
        # Runs on success, timeout, error and cancellation alike: never leave a decoder behind.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    if proc.returncode != 0 or header is None:
        _raise_decoder_failed(proc.returncode, stderr)
    if not header["ok"]:
        _raise_rejection(header)
    if pcm is None:  # announced samples that never came
        _raise_decoder_failed(proc.returncode, stderr)

    samples = np.frombuffer(pcm, dtype=np.float32)  # a view of our bytearray, so writable
    return DecodedAudio(
        samples=samples,
        duration_s=len(samples) / SAMPLE_RATE_HZ,
        container=header["container"],
        codec=header["codec"],
        had_video=header["had_video"],
        warnings=tuple(header.get("warnings", ())),
    )


def decode_audio_sync(
    data: bytes | BinaryIO,
    *,
    max_duration_s: float,
    timeout_s: float = 60,
    memory_limit_mib: int = 2048,
    max_bytes: int | None = None,
) -> DecodedAudio:
    """`decode_audio` for scripts and tests; not callable from inside a running event loop."""
    return asyncio.run(
        decode_audio(
            data,
            max_duration_s=max_duration_s,
            timeout_s=timeout_s,
            memory_limit_mib=memory_limit_mib,
            max_bytes=max_bytes,
        )
    )


def _child_command(child_args: dict[str, Any]) -> list[str]:
    # -I: ignore PYTHON* variables, the user's site-packages and the working directory, so nothing
    # but this package and the interpreter's own site-packages can be imported in the child.
    package_root = str(Path(__file__).resolve().parent.parent)
    bootstrap = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from serve_app.decoder import main; main(sys.argv[2])"
    )
    return [sys.executable, "-I", "-c", bootstrap, package_root, json.dumps(child_args)]


def _child_env() -> dict[str, str]:
    # The replica's environment may hold secrets (model-hub tokens): a decoder exploited by a
    # hostile file must find none of them. Pass only what loading shared libraries needs.
    env = {name: os.environ[name] for name in ("PATH", "LD_LIBRARY_PATH") if name in os.environ}
    # glibc reserves a 64 MiB arena per thread; that address space counts against RLIMIT_AS.
    env["MALLOC_ARENA_MAX"] = "2"
    return env


def _remaining_bytes(file: BinaryIO) -> int:
    start = file.tell()
    end = file.seek(0, os.SEEK_END)
    file.seek(start)
    return end - start


_FEED_CHUNK_BYTES = 1 << 20


async def _exchange(
    proc: asyncio.subprocess.Process, data: bytes | BinaryIO, max_samples: int
) -> tuple[dict[str, Any] | None, bytearray | None, bytes]:
    """Feed `data` to the child and read its answer: (header, samples, stderr tail).

    header is None when the child wrote no valid header; samples is None when it did not write
    the samples it announced. Both mean the decoder failed.
    """
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

    async def feed() -> None:
        try:
            if isinstance(data, bytes):
                stdin.write(data)
                await stdin.drain()
                return
            # A spooled upload: 1 MiB at a time, so it is never in memory whole. The reads hit the
            # page cache of a file just written; they do not stall the event loop noticeably.
            while chunk := data.read(_FEED_CHUNK_BYTES):
                stdin.write(chunk)
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child stopped reading early; its exit status says why
        finally:
            stdin.close()

    async def keep_stderr_tail() -> bytes:
        tail = b""
        while chunk := await stderr.read(65536):  # read to the end so the child never blocks
            tail = (tail + chunk)[-_STDERR_KEPT_BYTES:]
        return tail

    feeder = asyncio.create_task(feed())
    stderr_reader = asyncio.create_task(keep_stderr_tail())
    try:
        header = _parse_header(await stdout.readline())
        pcm = None
        if header is not None and header.get("ok"):
            pcm = await _read_samples(stdout, header, max_samples)
        await proc.wait()
        await feeder
        return header, pcm, await stderr_reader
    finally:
        feeder.cancel()
        stderr_reader.cancel()


def _parse_header(line: bytes) -> dict[str, Any] | None:
    try:
        header = json.loads(line)
    except ValueError:
        return None
    return header if isinstance(header, dict) and isinstance(header.get("ok"), bool) else None


async def _read_samples(
    stdout: asyncio.StreamReader, header: dict[str, Any], max_samples: int
) -> bytearray | None:
    """Read the announced samples into one preallocated buffer (no second copy of the audio)."""
    count = header.get("samples")
    if not isinstance(count, int) or not 0 < count <= max_samples:
        return None
    pcm = bytearray(count * BYTES_PER_SAMPLE)
    view = memoryview(pcm)
    filled = 0
    while filled < len(pcm):
        chunk = await stdout.read(min(len(pcm) - filled, 1 << 20))
        if not chunk:
            return None  # the child died mid-write
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    return pcm


def _raise_rejection(header: dict[str, Any]) -> NoReturn:
    message = str(header.get("message", "the file could not be decoded"))
    kind = header.get("error")
    if kind == "no_audio":
        raise NoAudioStream(message, param="file")
    if kind == "too_long":
        raise AudioTooLong(message, param="file")
    raise InvalidAudio(message, param="file")


def _raise_decoder_failed(returncode: int | None, stderr: bytes) -> NoReturn:
    # The user learns that the decoder failed and what to do; our log gets the details.
    how = f"exit status {returncode}"
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            how = f"killed by {signal.Signals(-returncode).name}"
    logger.warning("media decoder failed (%s): %s", how, stderr.decode("utf-8", "replace")[-1000:])
    if returncode == -signal.SIGXCPU:
        reason = "decoding it used more CPU time than allowed"
    else:
        reason = "the decoder failed on it"
    raise InvalidAudio(
        f"the file could not be decoded ({reason}); it may be corrupt or use an unusual codec. "
        f"Re-encode it as WAV, MP3 or FLAC and upload it again",
        param="file",
    )
