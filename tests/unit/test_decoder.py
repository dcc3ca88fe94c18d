"""serve_app.decoder: what the sandboxed child makes of an upload, what it refuses, and its limits.

Driven through `decode_audio` where the answer must cross the process boundary, and directly where a
guard (the demuxer whitelist, the resource limits) is checked on its own.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from core.errors import AudioTooLong, InvalidAudio, NoAudioStream
from serve_app import decoder
from serve_app.media import decode_audio
from tests.unit.tone_media import (
    LIMIT_S,
    assert_says,
    assert_tone,
    encode_audio,
    encode_video,
    flac_declaring,
    float_wav,
    mp3_with_cover_art,
    two_audio_streams,
    wav_declaring_unknown_length,
)

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


class AccessWatch:
    """Notices anything opening a FIFO or connecting to a local TCP port while it is active.

    A decoder that followed a playlist entry `file://<fifo>` or `http://127.0.0.1:<port>/` would
    show up in `accesses`.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.fifo = tmp_path / "secret.ts"
        os.mkfifo(self.fifo)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.port = self.server.getsockname()[1]
        self.accesses: list[str] = []
        self._done = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch_fifo, daemon=True),
            threading.Thread(target=self._watch_port, daemon=True),
        ]

    def _watch_fifo(self) -> None:
        fd = os.open(self.fifo, os.O_WRONLY)  # blocks until someone opens the FIFO to read
        if not self._done.is_set():
            self.accesses.append(f"opened {self.fifo}")
        os.close(fd)

    def _watch_port(self) -> None:
        while not self._done.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            self.accesses.append(f"connection to port {self.port}")
            connection.close()

    def __enter__(self) -> AccessWatch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        release = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the FIFO watcher return
        for thread in self._threads:
            thread.join(5)
        os.close(release)
        self.server.close()


class NamedBytesIO(io.BytesIO):
    """An upload with a file name, as FFmpeg's probes see it when the name is passed along:
    the HLS probe only claims data from a file named *.m3u8."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


def hls_playlist(watch: AccessWatch) -> bytes:
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:10.0,\nfile://{watch.fifo}\n"
        "#EXTINF:10.0,\nfile:///etc/passwd\n"
        f"#EXTINF:10.0,\nhttp://127.0.0.1:{watch.port}/x.ts\n"
        "#EXT-X-ENDLIST\n"
    ).encode()


def ffconcat_script(watch: AccessWatch) -> bytes:
    return (
        f"ffconcat version 1.0\nfile 'file:{watch.fifo}'\nfile /etc/passwd\n"
        f"file 'http://127.0.0.1:{watch.port}/x.wav'\n"
    ).encode()


# ----------------------------------------------------------------------------------------------
# Media that decodes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "codec", "rate", "container", "codec_name", "tolerance_s"),
    [
        ("wav", "pcm_s16le", 44100, "wav", "pcm_s16le", 0.003),
        ("mp3", "libmp3lame", 44100, "mp3", "mp3", 0.003),
        ("flac", "flac", 48000, "flac", "flac", 0.003),
        # PyAV's MP4 muxer writes no edit list, so AAC's priming and padding (~44 ms) stay in.
        ("ipod", "aac", 44100, "mov,mp4,m4a,3gp,3g2,mj2", "aac", 0.05),
        ("ogg", "libopus", 48000, "ogg", "opus", 0.003),
        ("webm", "libopus", 48000, "matroska,webm", "opus", 0.003),
    ],
)
async def test_audio_formats_decode_to_16k_mono_float32(fmt, codec, rate, container, codec_name, tolerance_s):
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec} encoder")
    decoded = await decode_audio(encode_audio(fmt, codec, rate=rate), max_duration_s=LIMIT_S)

    assert_tone(decoded, seconds=2.0, tolerance_s=tolerance_s)
    assert (decoded.container, decoded.codec, decoded.had_video) == (container, codec_name, False)
    assert decoded.warnings == ()


async def test_video_with_sound_gives_its_audio():
    decoded = await decode_audio(encode_video(with_audio=True), max_duration_s=LIMIT_S)

    assert_tone(decoded, seconds=2.0, tolerance_s=0.05)
    assert (decoded.codec, decoded.had_video) == ("aac", True)


async def test_cover_art_is_not_video():
    decoded = await decode_audio(mp3_with_cover_art(), max_duration_s=LIMIT_S)

    assert_tone(decoded, seconds=1.0)
    assert decoded.had_video is False


async def test_surround_is_averaged_to_mono_without_clipping():
    decoded = await decode_audio(encode_audio("wav", "pcm_s16le", layout="5.1"), max_duration_s=LIMIT_S)

    assert_tone(decoded, seconds=2.0)  # six channels of 0.5 come out at 0.5, not 1.7
    assert np.abs(decoded.samples).max() < 0.51


# Like the ffmpeg tool: an upload cut short still yields the audio before the cut, and a header that
# declares the whole length says how much is missing: MP3's Xing header, and a WAV's data chunk size
# (FFmpeg derives a WAV's duration from the bytes present, but the header still has the full length).
@pytest.mark.parametrize(("container", "codec", "seconds", "decoded_s"), [
    ("mp3", "libmp3lame", 10.0, (4.5, 5.5)),
    ("wav", "pcm_s16le", 4.0, (1.9, 2.1)),
], ids=["mp3", "wav"])
async def test_a_cut_file_gives_its_start_and_says_how_much_its_header_declares(container, codec, seconds,
                                                                                 decoded_s):
    data = encode_audio(container, codec, seconds=seconds)
    decoded = await decode_audio(data[: len(data) // 2], max_duration_s=LIMIT_S)

    assert decoded_s[0] < decoded.duration_s < decoded_s[1]
    (warning,) = decoded.warnings
    assert "truncated or damaged" in warning and f"first {decoded.duration_s:.1f} s" in warning
    assert f"of the {seconds:.1f} s its header declares" in warning


async def test_damaged_packets_are_skipped_and_counted():
    mp3 = bytearray(encode_audio("mp3", "libmp3lame", seconds=10.0))
    middle = len(mp3) // 2
    mp3[middle : middle + 4000] = bytes(4000)  # zero a stretch of frames in the middle
    decoded = await decode_audio(bytes(mp3), max_duration_s=LIMIT_S)

    assert 9.0 < decoded.duration_s < 10.0  # 5 frames of 26 ms gone
    assert decoded.warnings == ("5 damaged audio packet(s) could not be decoded and were skipped; the "
                                "transcript has gaps there",)


async def test_a_cut_wav_whose_header_declares_no_length_is_not_called_truncated():
    # Streaming writers leave the data chunk size at 0xFFFFFFFF: nothing is known to be missing.
    wav = wav_declaring_unknown_length(encode_audio("wav", "pcm_s16le", seconds=4.0))
    decoded = await decode_audio(wav[: len(wav) // 2], max_duration_s=LIMIT_S)

    assert 1.9 < decoded.duration_s < 2.1 and decoded.warnings == ()


@pytest.mark.parametrize("cut", ["mid-page", "at-a-page-boundary"])
async def test_a_cut_ogg_is_flagged_because_its_last_page_does_not_end_the_stream(cut):
    # Ogg declares no length (FFmpeg reads it from the last page present), but a complete stream
    # ends with a page flagged end-of-stream; a cut one does not.
    ogg = encode_audio("ogg", "libopus", seconds=10.0, rate=48000)
    end = len(ogg) // 2 if cut == "mid-page" else ogg.rindex(b"OggS", 0, len(ogg) // 2)
    decoded = await decode_audio(ogg[:end], max_duration_s=LIMIT_S)

    assert 4.0 < decoded.duration_s < 5.5
    (warning,) = decoded.warnings
    assert "truncated or damaged" in warning and f"first {decoded.duration_s:.1f} s" in warning
    assert "its header declares" not in warning


async def test_samples_that_are_not_finite_are_silenced_and_counted():
    tone = np.full(32_000, 0.25, np.float32)
    tone[1000:1010] = np.nan
    tone[20_000:20_003] = [np.inf, -np.inf, np.nan]
    decoded = await decode_audio(float_wav(tone), max_duration_s=LIMIT_S)

    assert np.isfinite(decoded.samples).all() and len(decoded.samples) == 32_000
    assert (decoded.samples[1000:1010] == 0).all() and (decoded.samples[20_000:20_003] == 0).all()
    assert decoded.samples[:1000] == pytest.approx(0.25) and decoded.samples[1010:20_000] == pytest.approx(0.25)
    assert decoded.warnings == ("13 samples were not finite numbers and were silenced",)


async def test_other_audio_streams_are_named_when_the_first_is_used():
    decoded = await decode_audio(two_audio_streams(first_silent=False), max_duration_s=LIMIT_S)

    assert_tone(decoded, seconds=2.0)
    assert decoded.warnings == ("the file has 2 audio streams; the first was used",)


async def test_a_silent_first_audio_stream_is_called_out_when_another_exists():
    decoded = await decode_audio(two_audio_streams(first_silent=True), max_duration_s=LIMIT_S)

    assert decoded.duration_s == pytest.approx(2.0, abs=0.003) and not decoded.samples.any()
    first, silent = decoded.warnings
    assert first == "the file has 2 audio streams; the first was used"
    assert "the first audio stream is silent" in silent and "remux" in silent


# ----------------------------------------------------------------------------------------------
# Uploads that are refused
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(np.random.default_rng(0).bytes(100_000), id="random-bytes"),
        pytest.param(b"Meeting notes, 3 March.\n" * 200, id="text"),
        pytest.param(encode_audio("mp3", "libmp3lame")[:200], id="mp3-first-200-bytes"),
        pytest.param(encode_video(with_audio=True)[:200], id="mp4-first-200-bytes"),
        # PyAV's MP4 muxer puts the index (moov) last: an upload cut in half has none.
        pytest.param(encode_video(with_audio=True)[:10_000], id="mp4-cut-before-its-index"),
    ],
)
async def test_not_media_or_cut_off_before_the_audio(data):
    with pytest.raises(InvalidAudio) as error:
        await decode_audio(data, max_duration_s=LIMIT_S)
    assert_says(error, "not recognised as audio or video", "damaged or truncated", "WAV, MP3, FLAC")


async def test_header_without_audio_data():
    with pytest.raises(InvalidAudio) as error:
        await decode_audio(encode_audio("wav", "pcm_s16le")[:100], max_duration_s=LIMIT_S)
    assert_says(error, "no audio could be decoded", "re-encode it as WAV")


async def test_video_without_sound():
    with pytest.raises(NoAudioStream) as error:
        await decode_audio(encode_video(with_audio=False), max_duration_s=LIMIT_S)
    assert_says(error, "the file has no audio stream", "a video with sound")


# ----------------------------------------------------------------------------------------------
# Uploads that try to make FFmpeg open other files or URLs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_script", [hls_playlist, ffconcat_script], ids=["hls", "ffconcat"])
async def test_playlists_are_refused_without_opening_anything(make_script, tmp_path):
    with AccessWatch(tmp_path) as watch:
        with pytest.raises(InvalidAudio) as error:
            await decode_audio(make_script(watch), max_duration_s=LIMIT_S)
    assert_says(error, "not recognised as audio or video")
    assert "root:" not in str(error.value)
    assert watch.accesses == []


def test_an_hls_playlist_really_makes_ffmpeg_fetch_urls(tmp_path):
    # The control for the tests around it: a playlist with a .m3u8 name, opened without the
    # guards, does reach out, and AccessWatch sees it.
    with AccessWatch(tmp_path) as watch:
        playlist = (
            "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:10.0,\nhttp://127.0.0.1:{watch.port}/x.ts\n#EXT-X-ENDLIST\n"
        ).encode()
        with pytest.raises(av.error.FFmpegError):
            av.open(NamedBytesIO(playlist, "upload.m3u8"))
    assert watch.accesses == [f"connection to port {watch.port}"]


@pytest.mark.parametrize(
    ("make_script", "name"),
    [(hls_playlist, "upload.m3u8"), (ffconcat_script, "upload.ffconcat")],
    ids=["hls", "ffconcat"],
)
def test_demuxer_whitelist_holds_even_when_the_probe_picks_a_playlist_format(make_script, name, tmp_path):
    # decode_audio passes no file name, so FFmpeg's HLS probe never fires; here it does, and
    # the format whitelist (with protocol whitelist and the refusing io_open behind it) holds.
    with AccessWatch(tmp_path) as watch:
        with pytest.raises(decoder._Rejected) as rejected:
            decoder.open_upload(NamedBytesIO(make_script(watch), name))
    assert rejected.value.kind == "invalid"
    assert watch.accesses == []


def test_nested_opens_are_refused_even_past_the_demuxer_whitelist(tmp_path, monkeypatch):
    # Take the format whitelist away: the protocol whitelist and io_open still stop the fetch.
    monkeypatch.setattr(decoder, "ALLOWED_DEMUXERS", decoder.ALLOWED_DEMUXERS | {"hls"})
    with AccessWatch(tmp_path) as watch:
        with pytest.raises(decoder._Rejected):
            decoder.open_upload(NamedBytesIO(hls_playlist(watch), "upload.m3u8"))
    assert watch.accesses == []


# ----------------------------------------------------------------------------------------------
# Duration limits
# ----------------------------------------------------------------------------------------------


async def test_declared_duration_over_the_limit_is_refused_before_decoding():
    flac = encode_audio("flac", "flac", seconds=10.0, rate=16000, layout="mono")
    with pytest.raises(AudioTooLong) as error:
        await decode_audio(flac, max_duration_s=5)
    assert_says(error, "audio is 10.0 s long", "accepts at most 5 s")


async def test_audio_as_long_as_the_limit_is_accepted():
    flac = encode_audio("flac", "flac", seconds=5.0, rate=16000, layout="mono")
    decoded = await decode_audio(flac, max_duration_s=5)

    assert decoded.duration_s == pytest.approx(5.0, abs=0.003)


@pytest.mark.parametrize("declared_samples", [16_000, 0], ids=["header-claims-1s", "header-claims-nothing"])
async def test_decoded_samples_are_counted_because_headers_lie(declared_samples):
    flac = flac_declaring(declared_samples, seconds=10.0)
    with pytest.raises(AudioTooLong) as error:
        await decode_audio(flac, max_duration_s=5)
    assert_says(error, "audio is longer than 5 s", "accepts at most 5 s")


# ----------------------------------------------------------------------------------------------
# The child process
# ----------------------------------------------------------------------------------------------


def _run_limited(code: str, *, memory_limit_mib: int = 512, cpu_limit_s: int = 30) -> str:
    """Run `code` in a Python process under the decoder's limits; return what it printed."""
    limits = (
        f"from serve_app.decoder import _limit_resources\n_limit_resources({memory_limit_mib}, {cpu_limit_s})"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"{limits}\n{code}"], capture_output=True, text=True, timeout=30, check=False
    )
    return result.stdout + f"exit {result.returncode}"


def test_child_limits_memory_and_file_writes(tmp_path):
    code = f"""
try:
    bytearray(1 << 30)
except MemoryError:
    print("memory refused")
try:
    with open({str(tmp_path / "out")!r}, "wb", buffering=0) as file:
        file.write(b"x")
except OSError:
    print("write refused")
"""
    assert _run_limited(code).split() == ["memory", "refused", "write", "refused", "exit", "0"]


def test_child_limits_cpu_time():
    # SIGXCPU after 1 s of CPU time (SIGKILL a second later, should it be caught).
    assert _run_limited("while True: pass", cpu_limit_s=1) in (
        f"exit {-signal.SIGXCPU}",
        f"exit {-signal.SIGKILL}",
    )


def test_the_child_imports_neither_the_parent_side_nor_numpy():
    # A decoder starts per upload: asyncio and numpy would add tens of ms to every request.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import serve_app.decoder; "
        "print(*sorted({'asyncio', 'numpy', 'serve_app.media'} & set(sys.modules)))"
    )
    package_root = str(Path(decoder.__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, package_root], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.split() == []


@pytest.mark.parametrize(
    ("peak", "silent"), [(0.0, True), (-0.0, True), (3e-5, True), (-3e-5, True), (3.2e-5, False), (0.5, False)]
)
def test_digital_silence_is_a_peak_below_minus_90_dbfs(peak, silent):
    samples = np.zeros(300_000, np.float32)
    samples[299_999] = peak  # past the first megabyte the check reads
    assert decoder._is_silent(bytearray(samples.tobytes())) is silent
