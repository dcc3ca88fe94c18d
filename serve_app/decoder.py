"""The sandboxed decoder process: one upload in on stdin, 16 kHz mono float32 samples out on stdout.

`serve_app.media` starts one per upload, under resource limits, and kills it after a timeout; this
module is what runs inside (`main`). FFmpeg parses hostile input here, so whatever goes wrong must
end this process, never the replica.

Why no paths or URLs: the upload reaches FFmpeg only as an in-memory file object, so no user string
is ever opened. Formats that open *other* resources (HLS and DASH playlists, ffconcat scripts, SDP,
QuickTime external references) are shut out three ways: FFmpeg's `format_whitelist` allows only the
demuxers listed in `ALLOWED_DEMUXERS`, `protocol_whitelist` allows no protocol for nested opens, and
nested opens go to a callback that refuses them all.

Wire format between parent and child:
    args    `main`'s one argument, a JSON object: max_duration_s, memory_limit_mib, cpu_limit_s
    stdin   the uploaded bytes, then EOF
    stdout  one JSON header line, then (on success) `header["samples"]` float32 values, native
            byte order, 16 kHz mono
A rejection (not media, no audio, too long) is a header with `"ok": false` and exit status 0; any
other ending (a signal, a non-zero exit, a missing header) means the decoder itself failed.

Units: durations in seconds, rates in Hz, memory in MiB, sample counts in samples at 16 kHz.

A process starts per upload, so the top level imports only light standard-library modules, and PyAV
where it is used. Never import serve_app.media here (asyncio, logging) nor numpy (~0.3 s of start-up
per upload): the child needs neither.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, cast

from core.audio import SAMPLE_RATE_HZ

if TYPE_CHECKING:
    from collections.abc import Callable

    import av.container

BYTES_PER_SAMPLE = 4
"""Size of one sample on the wire (float32)."""

ALLOWED_DEMUXERS: frozenset[str] = frozenset(
    {
        "wav", "w64", "aiff", "caf", "au",          # PCM containers
        "mp3", "aac", "ac3", "eac3", "flac", "wv",  # bare audio streams
        "amr", "amrnb", "amrwb",                    # phone recordings
        "ogg",                                      # Vorbis, Opus, FLAC in Ogg
        "matroska", "webm",                         # "matroska,webm": MKV, WebM, MKA
        "mov", "mp4", "m4a", "3gp", "3g2",          # "mov,mp4,m4a,3gp,3g2,mj2"
        "avi", "asf", "flv", "mpeg", "mpegts",      # video containers (ASF: WMA/WMV)
    }
)  # fmt: skip
"""FFmpeg demuxer names an upload may be opened with. A demuxer whose name lists several
(e.g. "mov,mp4,m4a,3gp,3g2,mj2") is allowed when any of them is here, as FFmpeg's own whitelist does.
Never add hls, dash, concat, sdp, rtp/rtsp, image2 or other demuxers that open further resources."""

ACCEPTED_KINDS = (
    "WAV, MP3, FLAC, Ogg (Vorbis/Opus), M4A/AAC, AIFF, AMR, WMA, and the sound of MP4, MOV, WebM, "
    "MKV, AVI and MPEG video"
)
"""What rejection messages tell the user to upload instead."""

DURATION_SLACK_S = 1.0
"""How far (s) a duration may pass `max_duration_s` before it is refused. Headers of VBR MP3s
estimate the length from the bit rate, and codecs add priming and padding samples (MP3 ~0.05 s,
AAC 1024 samples): a file that is the limit's length must not be refused for that."""

_NESTED_OPEN_REFUSED = "nested open refused"


class _Rejected(Exception):
    """The upload is refused for a reason the user can fix; `kind` picks the error class."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message


def main(args_json: str) -> NoReturn:
    """Entry point of the decoder process; see the module docstring for the wire format."""
    args = json.loads(args_json)
    _limit_resources(args["memory_limit_mib"], args["cpu_limit_s"])
    out = sys.stdout.buffer
    try:
        data = sys.stdin.buffer.read()
        header, pcm = _decode(data, args["max_duration_s"])
    except _Rejected as rejected:
        header, pcm = {"ok": False, "error": rejected.kind, "message": rejected.message}, None
    except MemoryError:
        message = (
            f"decoding the file needed more than {args['memory_limit_mib']} MiB of memory; it may be "
            f"corrupt. Re-encode it as WAV, MP3 or FLAC and upload it again"
        )
        header, pcm = {"ok": False, "error": "invalid", "message": message}, None
    out.write(json.dumps(header).encode() + b"\n")
    if pcm is not None:
        out.write(pcm)
    out.flush()
    # Skip interpreter teardown: the answer is out, and FFmpeg objects need no orderly release.
    os._exit(0)


def _limit_resources(memory_limit_mib: int, cpu_limit_s: int) -> None:
    import resource

    def lower(which: int, soft: int, hard: int) -> None:
        # Only ever lower a limit: raising one above the inherited hard limit is refused.
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))

    lower(resource.RLIMIT_AS, memory_limit_mib << 20, memory_limit_mib << 20)
    # SIGXCPU at the soft limit, SIGKILL one second later at the hard one.
    lower(resource.RLIMIT_CPU, cpu_limit_s, cpu_limit_s + 1)
    lower(resource.RLIMIT_FSIZE, 0, 0)  # the decoder has no business writing files
    lower(resource.RLIMIT_CORE, 0, 0)  # nor dumping the upload to disk when it crashes


def _refuse_nested_open(url: str, flags: int, options: dict[str, str]) -> NoReturn:
    """PyAV's `io_open` hook: the upload may not make FFmpeg open any other file or URL."""
    raise PermissionError(_NESTED_OPEN_REFUSED)


def open_upload(file: BinaryIO) -> av.container.InputContainer:
    """Open an in-memory upload with PyAV, allowing only `ALLOWED_DEMUXERS` and no nested opens.

    Raises _Rejected("invalid", ...) when FFmpeg does not recognise the data or it is not an
    allowed format. Public so that tests can check the guards against named file objects too.
    """
    import av

    try:
        container = av.open(
            file,
            mode="r",
            container_options={
                # Checked by avformat_open_input right after probing, before the demuxer reads
                # its header: a playlist is refused before it can open anything.
                "format_whitelist": ",".join(sorted(ALLOWED_DEMUXERS)),
                # For nested opens that bypass io_open below: no protocol (file, http, ...) at all.
                "protocol_whitelist": "none",
            },
            io_open=_refuse_nested_open,
        )
    except (av.error.FFmpegError, PermissionError, UnicodeDecodeError) as error:
        # FFmpeg says the same "Invalid data" for unknown data and for a known format whose
        # header is cut off (an MP4 whose index sits at the end), so the message names both.
        raise _not_media() from error
    # Belt and braces: check the demuxer FFmpeg picked against our own list as well.
    if not ALLOWED_DEMUXERS.intersection(container.format.name.split(",")):
        container.close()
        raise _not_media()
    return container


def _not_media() -> _Rejected:
    return _Rejected(
        "invalid",
        "the file's format is not recognised as audio or video, or the file is damaged or truncated; "
        f"upload one of: {ACCEPTED_KINDS}",
    )


def _decode(data: bytes, max_duration_s: float) -> tuple[dict[str, Any], bytearray]:
    """Decode the first audio stream of `data` to 16 kHz mono float32 bytes (the child's work)."""
    import io

    import av

    with open_upload(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise _Rejected("no_audio", "the file has no audio stream; upload audio or a video with sound")
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # this FFmpeg build has no decoder for it
            raise _Rejected(
                "invalid", "the file's audio codec is not supported; re-encode it as WAV, MP3 or FLAC"
            )
        codec = stream.codec_context.codec.canonical_name  # "mp3", not the decoder's "mp3float"
        had_video = any(
            not (video.disposition & av.stream.Disposition.attached_pic) for video in container.streams.video
        )

        declared_s = _declared_duration_s(container, stream)
        if declared_s is not None and declared_s > max_duration_s + DURATION_SLACK_S:
            message = _too_long_message(f"audio is {declared_s:.1f} s long", max_duration_s)
            raise _Rejected("too_long", message)

        damage = _Damage(audio_streams=len(container.streams.audio))
        pcm = _decode_stream(container, stream, max_duration_s, damage)
        if not pcm:
            raise _Rejected(
                "invalid",
                "no audio could be decoded from the file; it may be corrupt or truncated. "
                "Check that it plays, or re-encode it as WAV, MP3 or FLAC",
            )
        formats = container.format.name.split(",")
        if "wav" in formats:
            # FFmpeg takes a WAV's length from the bytes present; the data chunk says what was sent.
            declared_s = _wav_declared_duration_s(data) or declared_s
        if "ogg" in formats:
            # FFmpeg's Ogg duration is the last page present's position: no header declares one.
            declared_s = None
            damage.cut_off = _ogg_cut_off(data)
        if damage.audio_streams > 1:
            damage.first_silent = _is_silent(pcm)
        header = {
            "ok": True,
            "container": container.format.name,
            "codec": codec,
            "had_video": had_video,
            "samples": len(pcm) // BYTES_PER_SAMPLE,
            "warnings": damage.warnings(declared_s, len(pcm) / BYTES_PER_SAMPLE / SAMPLE_RATE_HZ),
        }
        return header, pcm


@dataclass
class _Damage:
    """What decoding had to skip. A damaged upload is still transcribed as far as it can be decoded
    (like the ffmpeg tool does), but the response says what is missing: nothing is lost silently."""

    skipped_packets: int = 0
    read_error: bool = False
    cut_off: bool = False
    """The container's own structure shows the end is missing (an Ogg stream without its last page)."""
    non_finite: int = 0
    """Decoded sample values that were NaN or infinite, replaced by 0."""
    audio_streams: int = 1
    first_silent: bool = False
    """The first audio stream, the one used, decoded to digital silence (set only when others exist)."""

    def warnings(self, declared_s: float | None, decoded_s: float) -> list[str]:
        out = []
        # Headers that store the length (MP3's Xing header, FLAC's STREAMINFO, WAV's data chunk
        # size) reveal a cut end; Ogg stores none, but its last page must be flagged end-of-stream.
        short_by_s = 0.0 if declared_s is None else declared_s - decoded_s
        if (
            self.read_error
            or self.cut_off
            or short_by_s > max(DURATION_SLACK_S, 0.02 * (declared_s or 0.0))
        ):
            of_declared = f" of the {declared_s:.1f} s its header declares" if short_by_s > 0 else ""
            out.append(f"the file is truncated or damaged: only the first {decoded_s:.1f} s{of_declared} "
                       f"could be decoded, and the transcript covers only that")
        if self.skipped_packets:
            out.append(f"{self.skipped_packets} damaged audio packet(s) could not be decoded and were "
                       f"skipped; the transcript has gaps there")
        if self.non_finite:
            out.append(f"{self.non_finite} samples were not finite numbers and were silenced")
        if self.audio_streams > 1:
            out.append(f"the file has {self.audio_streams} audio streams; the first was used")
            if self.first_silent:
                out.append("the first audio stream is silent (digital silence, below -90 dBFS), so the "
                           "transcript is empty; if the sound is in another stream, remux the file to "
                           "keep only that stream (e.g. ffmpeg -i FILE -map 0:a:1 -c copy out.mka) and "
                           "upload it again")
        return out


_QUIET_TOP_BYTES = bytes(byte for byte in range(256) if byte & 0x7F < 0x38)
"""Most significant bytes of the float32 values x with |x| < 2^-15 (-90.3 dBFS): see `_is_silent`."""

_FLOAT_FORMATS = frozenset({"flt", "fltp", "dbl", "dblp"})


def _wav_declared_duration_s(data: bytes) -> float | None:
    """The length (s) a RIFF WAV's data chunk size declares, or None when the header declares none.

    Streaming writers leave the size at 0 or 0xFFFFFFFF until they finish: that declares nothing.
    """
    import struct

    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    byte_rate = 0
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk_id == b"fmt " and size >= 12 and pos + 20 <= len(data):
            (byte_rate,) = struct.unpack_from("<I", data, pos + 16)  # average bytes per second
        elif chunk_id == b"data":
            if not byte_rate or size in (0, 0xFFFFFFFF):
                return None
            return size / byte_rate
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


def _ogg_cut_off(data: bytes) -> bool:
    """Whether an Ogg file ends before each of its logical streams' end-of-stream page.

    Ogg has no length in any header (a player reads it from the last page), so a file cut at any
    point otherwise looks complete. Bytes that are not pages are skipped, as demuxers resynchronise.
    """
    open_streams: set[int] = set()
    pos = data.find(b"OggS")
    while pos != -1:
        if pos + 27 > len(data):
            return True
        header_type = data[pos + 5]
        serial = int.from_bytes(data[pos + 14 : pos + 18], "little")
        segments = data[pos + 26]
        table = data[pos + 27 : pos + 27 + segments]
        end = pos + 27 + segments + sum(table)
        if len(table) < segments or end > len(data):
            return True  # the last page is cut off
        if header_type & 0x04:  # end of stream
            open_streams.discard(serial)
        else:
            open_streams.add(serial)
        pos = data.find(b"OggS", end)
    return bool(open_streams)


def _silence_non_finite(frame: av.AudioFrame) -> int:
    """Replace NaN and infinite samples of a float `frame` by 0 in place; return how many there were.

    Done before resampling, whose filter would smear each NaN over its neighbours. A float whose
    exponent bits are all ones is NaN or infinite, so only planes whose most significant bytes
    include 0x7F or 0xFF (|x| >= 2^127, never in real audio) are looked at sample by sample.
    """
    import math

    size = frame.format.bytes
    top = size - 1 if sys.byteorder == "little" else 0
    per_plane = frame.samples * (1 if frame.format.is_planar else frame.layout.nb_channels) * size
    count = 0
    for plane in frame.planes:
        with memoryview(plane) as buffer, buffer[:per_plane] as view:
            tops = bytes(view[top::size])
            if b"\x7f" not in tops and b"\xff" not in tops:
                continue
            with view.cast("f" if size == 4 else "d") as values:
                for i, value in enumerate(values):
                    if not math.isfinite(value):
                        values[i] = 0.0
                        count += 1
    return count


def _is_silent(pcm: bytearray) -> bool:
    """Whether the decoded float32 samples are digital silence: every |x| below 2^-15 (-90.3 dBFS).

    Read from the most significant byte of each sample (sign and the exponent's top 7 bits), which
    is below 0x38 exactly when |x| < 2^-15: a C-speed scan, a megabyte at a time.
    """
    top = BYTES_PER_SAMPLE - 1 if sys.byteorder == "little" else 0
    step = 1 << 20
    for start in range(0, len(pcm), step):
        if pcm[start + top : start + step : BYTES_PER_SAMPLE].translate(None, _QUIET_TOP_BYTES):
            return False
    return True


def _declared_duration_s(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The duration (s) the headers claim for the audio, or None when they claim none."""
    import av

    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:  # in AV_TIME_BASE units (microseconds)
        return container.duration / av.time_base
    return None


def _too_long_message(what: str, max_duration_s: float) -> str:
    return f"{what}; this service accepts at most {max_duration_s:g} s. Trim or split the file"


def _decode_stream(
    container: av.container.InputContainer, stream: av.AudioStream, max_duration_s: float, damage: _Damage
) -> bytearray:
    """Decode and resample `stream`; stop as soon as more than the allowed duration came out.

    Tolerant like the ffmpeg tool: a packet that fails to decode is skipped, and a read error
    (truncated or damaged file) ends the stream with what was decoded so far; both are counted in
    `damage`.
    """
    import av

    pcm = bytearray()
    decoded_s = 0.0  # seconds of audio decoded so far, counted at the source rate (headers lie)
    limit_s = max_duration_s + DURATION_SLACK_S
    resampler: av.AudioResampler | None = None
    source_format: tuple[str, str, int] | None = None
    to_mean: Callable[[av.AudioFrame], av.AudioFrame] | None = None  # for a layout swresample cannot mix

    def append(frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            # A plane's buffer may be padded past the samples: take exactly samples * 4 bytes.
            pcm.extend(memoryview(frame.planes[0])[: frame.samples * BYTES_PER_SAMPLE])

    for frame in _frames(container, stream, damage):
        if frame.sample_rate <= 0 or frame.samples <= 0:
            continue
        if frame.format.name in _FLOAT_FORMATS:
            damage.non_finite += _silence_non_finite(frame)
        decoded_s += frame.samples / frame.sample_rate
        if decoded_s > limit_s:
            raise _Rejected(
                "too_long",
                _too_long_message(
                    f"audio is longer than {max_duration_s:g} s (decoding stopped at {decoded_s:.1f} s)",
                    max_duration_s,
                ),
            )
        # A stream may change rate or layout midway (e.g. concatenated MP3s). One resampler
        # handles one input format, so flush it and start a new one.
        frame_format = (frame.format.name, frame.layout.name, frame.sample_rate)
        frame.pts = None  # gaps and jumps in timestamps are irrelevant here: keep every sample
        if resampler is None or frame_format != source_format:
            if resampler is not None:
                append(resampler.resample(None))
            resampler, source_format, to_mean = _mono_resampler(), frame_format, None
            try:
                append(resampler.resample(frame))  # the first frame builds the resampler's filter graph
                continue
            except MemoryError:
                raise  # PyAV's ENOMEM is an FFmpegError too; no other downmix needs less
            except av.error.FFmpegError:
                # swresample has no downmix for a layout without channel order beyond its defaults
                # (a WAV of 9 or 32 channels): "not enough information". Take the channels' mean.
                resampler, to_mean = _mono_resampler(), _channel_mean(frame)
        append(resampler.resample(frame if to_mean is None else to_mean(frame)))
    if resampler is not None:
        append(resampler.resample(None))  # the resampler holds back a few ms of filter delay
    return pcm


def _mono_resampler() -> av.AudioResampler:
    import av

    # Downmix to the channels' mean. Left alone, swresample does not normalise its matrix for
    # float output: stereo would come out at 0.71 * (L + R) and 5.1 at up to 1.7x full scale,
    # i.e. clipped.
    return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ, options={"rematrix_maxval": "1.0"})


_MAX_PAN_CHANNELS = 64
"""FFmpeg's pan filter takes at most 64 input channels."""


def _channel_mean(template: av.AudioFrame) -> Callable[[av.AudioFrame], av.AudioFrame]:
    """A function from frames shaped like `template` to mono frames of their channels' mean, same rate
    and sample format, through FFmpeg's pan filter (which holds no samples back, so needs no flush).

    Raises _Rejected for more channels than pan takes.
    """
    from av.filter import Graph

    channels = template.layout.nb_channels
    if channels > _MAX_PAN_CHANNELS:
        raise _Rejected(
            "invalid",
            f"the audio has {channels} channels in no standard layout; this service mixes down at most "
            f"{_MAX_PAN_CHANNELS}. Mix it down (e.g. ffmpeg -i FILE -ac 1 out.wav) and upload it again",
        )
    graph = Graph()
    source = graph.add("abuffer", sample_rate=str(template.sample_rate), sample_fmt=template.format.name,
                       channel_layout=template.layout.name, time_base=f"1/{template.sample_rate}")
    pan = graph.add("pan", "mono|c0=" + "+".join(f"{1 / channels:.9g}*c{i}" for i in range(channels)))
    sink = graph.add("abuffersink")
    source.link_to(pan)
    pan.link_to(sink)
    graph.configure()

    def mean(frame: av.AudioFrame) -> av.AudioFrame:
        graph.push(frame)
        return cast("av.AudioFrame", graph.pull())  # an audio graph's sink gives audio frames

    return mean


def _frames(container: av.container.InputContainer, stream: av.AudioStream, damage: _Damage) -> Any:
    """Yield the decoded frames of `stream`, skipping (and counting) undecodable packets."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:
            # A read error midway: flush what the decoder holds and end here.
            damage.read_error = True
            with contextlib.suppress(av.error.FFmpegError):
                yield from stream.codec_context.decode(None)
            return
        try:
            yield from packet.decode()
        except MemoryError:
            raise  # PyAV's ENOMEM error is an FFmpegError too; this one is not the packet's fault
        except av.error.FFmpegError:
            damage.skipped_packets += 1  # one damaged packet; the ffmpeg tool skips it too
