"""Encode test audio into real container files (MP3, MP4 video) with the FFmpeg inside PyAV."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from dataclasses import dataclass

import av
import numpy as np

from core.audio import SAMPLE_RATE_HZ as SAMPLE_RATE


def _audio_frames(stream, samples: np.ndarray) -> list[av.AudioFrame]:
    frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="fltp", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    rate = stream.codec_context.sample_rate
    # Encoders want their own sample format, rate and (for most codecs) a fixed frame size.
    fit = av.AudioResampler(format=stream.codec_context.codec.audio_formats[0].name, layout="mono",
                            rate=rate, frame_size=stream.codec_context.frame_size or 1024)
    return fit.resample(frame) + fit.resample(None)


def encode_audio(samples: np.ndarray, fmt: str = "mp3", codec: str = "libmp3lame", rate: int = 44_100) -> bytes:
    """16 kHz mono float samples as an audio file of container `fmt`."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        for frame in [*_audio_frames(stream, samples), None]:
            out.mux(stream.encode(frame))
    return buf.getvalue()


def encode_video(samples: np.ndarray | None, seconds: float | None = None) -> bytes:
    """An MP4 with a small 10 fps video and, unless `samples` is None, those samples as AAC audio."""
    seconds = seconds if seconds is not None else len(samples) / SAMPLE_RATE
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        video = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=44_100, layout="mono") if samples is not None else None
        for i in range(round(seconds * 10)):
            picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 7) % 255, np.uint8), format="rgb24")
            picture.pts = i
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        if audio is not None:
            for frame in [*_audio_frames(audio, samples), None]:
                out.mux(audio.encode(frame))
    return buf.getvalue()


def silent_flac(seconds: float) -> bytes:
    """`seconds` of 16 kHz silence as FLAC: hours of audio in a few hundred KB (a duration bomb)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        second = np.zeros((1, SAMPLE_RATE), np.int16)
        for i in range(int(seconds)):
            frame = av.AudioFrame.from_ndarray(second, format="s16", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, i * SAMPLE_RATE
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


# --- a corpus of damaged, lying and hostile uploads, derived from valid files -----------------------

TONE = (0.5 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
"""1 s of a 440 Hz tone at 16 kHz: the sound inside every valid file the corpus starts from."""


@dataclass(frozen=True)
class CorruptUpload:
    """One upload of the corpus. `batch` groups the cases by what was done to them; `valid` marks the
    untouched files the others are derived from (they must decode)."""

    name: str
    data: bytes
    filename: str
    batch: str
    valid: bool = False


def _wav(pcm: bytes, *, tag: int = 1, channels: int = 1, rate: int = SAMPLE_RATE, bits: int = 16,
         byte_rate: int | None = None, block_align: int | None = None, data_size: int | None = None,
         riff_size: int | None = None, fmt_size: int = 16) -> bytes:
    """A RIFF WAV written field by field, so that any field can lie."""
    block_align = block_align if block_align is not None else (channels * bits // 8) & 0xFFFF
    byte_rate = byte_rate if byte_rate is not None else (rate * block_align) & 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", tag, channels, rate, byte_rate, block_align, bits)
    chunks = (b"fmt " + struct.pack("<I", fmt_size) + fmt
              + b"data" + struct.pack("<I", len(pcm) if data_size is None else data_size) + pcm)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks) if riff_size is None else riff_size) + b"WAVE" + chunks


def _interleaved(channels: int, seconds: float = 0.5) -> bytes:
    """16-bit PCM of TONE in every one of `channels` channels."""
    tone = (TONE[: round(seconds * SAMPLE_RATE)] * 32767).astype("<i2")
    return np.repeat(tone, channels).tobytes()


def _patched(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value):]


def _ogg_crc(page: bytes) -> int:
    """Ogg's page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial value 0."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def _ogg_first_page_patched(data: bytes, at: int, value: bytes) -> bytes:
    """`data` with bytes of its first Ogg page replaced and the page's checksum made right again, so the
    demuxer reads the lie instead of dropping the page."""
    end = 27 + data[26] + sum(data[27 : 27 + data[26]])
    page = bytearray(_patched(data[:end], at, value))
    page[22:26] = b"\0\0\0\0"
    page[22:26] = _ogg_crc(bytes(page)).to_bytes(4, "little")
    return bytes(page) + data[end:]


def _mp4_box_rewritten(data: bytes, path: tuple[bytes, ...], content: bytes) -> bytes:
    """`data` with the payload of the box at `path` (e.g. moov/trak/mdia/minf/dinf/dref) replaced and every
    enclosing box's size fixed. The muxer writes the index (moov) after the samples, so no offset moves."""
    def rewrite(region: bytes, depth: int) -> bytes:
        out, pos = b"", 0
        while pos + 8 <= len(region):
            size, kind = struct.unpack_from(">I4s", region, pos)
            body = region[pos + 8 : pos + size]
            if kind == path[depth]:
                body = content if depth == len(path) - 1 else rewrite(body, depth + 1)
            out += struct.pack(">I4s", 8 + len(body), kind) + body
            pos += size
        return out + region[pos:]

    return rewrite(data, 0)


def _empty_stream(fmt: str, codec: str, rate: int) -> bytes:
    """A `fmt` file with an audio stream that holds no samples at all."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        out.start_encoding()  # the header is otherwise written with the first packet, and there is none
        out.mux(stream.encode(None))
    return buf.getvalue()


def _valid_files() -> dict[str, tuple[str, bytes]]:
    """The valid files the corpus starts from, by name: (file name, bytes), each 1 s of TONE."""
    return {
        "wav": ("tone.wav", encode_audio(TONE, "wav", "pcm_s16le", SAMPLE_RATE)),
        "flac": ("tone.flac", encode_audio(TONE, "flac", "flac", SAMPLE_RATE)),
        "mp3": ("tone.mp3", encode_audio(TONE, "mp3", "libmp3lame", 44_100)),
        "ogg-opus": ("tone.opus", encode_audio(TONE, "ogg", "libopus", 48_000)),
        "m4a-aac": ("tone.m4a", encode_audio(TONE, "mp4", "aac", 44_100)),
        "mp4-video": ("tone.mp4", encode_video(TONE)),
        "webm-opus": ("tone.webm", encode_audio(TONE, "webm", "libopus", 48_000)),
        "mkv-pcm": ("tone.mkv", encode_audio(TONE, "matroska", "pcm_s16le", SAMPLE_RATE)),
    }


def _truncations(name: str, filename: str, data: bytes) -> list[CorruptUpload]:
    """12 cuts: inside the first headers, then spread over the file, the last one a byte short."""
    n = len(data)
    offsets = sorted({1, 4, 12, 44, 100, 512} | {round(n * f) for f in (0.1, 0.3, 0.5, 0.7, 0.9)} | {n - 1})
    return [CorruptUpload(f"{name} cut at {at} of {n}", data[:at], filename, "truncated")
            for at in offsets if 0 < at < n]


def _flips(name: str, filename: str, data: bytes, rng: np.random.Generator) -> list[CorruptUpload]:
    """8 seeded corruptions: bytes flipped anywhere or in the headers, the first 64 inverted, 1 KiB overwritten."""
    out = []
    for count, within in ((1, len(data)), (4, len(data)), (16, len(data)), (64, len(data)),
                          (1, 256), (8, 256)):
        damaged = bytearray(data)
        for at in rng.integers(0, min(within, len(data)), count):
            damaged[at] ^= int(rng.integers(1, 256))
        out.append(CorruptUpload(f"{name} {count} byte(s) flipped in the first {within}", bytes(damaged),
                                 filename, "flipped"))
    out.append(CorruptUpload(f"{name} first 64 bytes inverted", bytes(b ^ 0xFF for b in data[:64]) + data[64:],
                             filename, "flipped"))
    middle = len(data) // 2
    out.append(CorruptUpload(f"{name} 1 KiB overwritten mid-file",
                             _patched(data, middle, rng.bytes(min(1024, len(data) - middle))), filename, "flipped"))
    return out


def _lying_headers(files: dict[str, tuple[str, bytes]]) -> list[CorruptUpload]:
    """Headers that contradict the data or declare absurd rates, channel counts and sizes."""
    pcm = (TONE * 32767).astype("<i2").tobytes()
    wavs = {
        "sample rate 0 Hz": _wav(pcm, rate=0), "sample rate 1 Hz": _wav(pcm, rate=1),
        "sample rate 8 Hz": _wav(pcm, rate=8), "sample rate 4e9 Hz": _wav(pcm, rate=4_000_000_000),
        "sample rate 1e8 Hz": _wav(pcm, rate=100_000_000), "sample rate 2^31-1 Hz": _wav(pcm, rate=(1 << 31) - 1),
        "sample rate 2^31 Hz": _wav(pcm, rate=1 << 31), "sample rate 2^32-1 Hz": _wav(pcm, rate=0xFFFFFFFF),
        "0 channels": _wav(pcm, channels=0), "65535 channels": _wav(pcm, channels=65535),
        "255 channels": _wav(pcm, channels=255), "9 channels in no layout": _wav(_interleaved(9), channels=9),
        "32 channels in no layout": _wav(_interleaved(32), channels=32),
        "3 channels, 2-byte frames": _wav(pcm, channels=3, block_align=2),
        "0 bits per sample": _wav(pcm, bits=0), "7 bits per sample": _wav(pcm, bits=7),
        "64-bit PCM of 16-bit data": _wav(pcm, bits=64), "65535 bits per sample": _wav(pcm, bits=65535),
        "block align 0": _wav(pcm, block_align=0), "block align 65535": _wav(pcm, block_align=65535),
        "byte rate 0": _wav(pcm, byte_rate=0), "byte rate 2^32-1": _wav(pcm, byte_rate=0xFFFFFFFF),
        "format tag 0": _wav(pcm, tag=0), "float tag on 16-bit data": _wav(pcm, tag=3),
        "MP3 tag on PCM data": _wav(pcm, tag=0x55), "ADPCM tag on PCM data": _wav(pcm, tag=0x11),
        "extensible tag without its extension": _wav(pcm, tag=0xFFFE), "unknown tag 0x1234": _wav(pcm, tag=0x1234),
        "data size 0": _wav(pcm, data_size=0), "data size 1": _wav(pcm, data_size=1),
        "data size 2^31-1": _wav(pcm, data_size=0x7FFFFFFF), "data size 2^32-2": _wav(pcm, data_size=0xFFFFFFFE),
        "odd data size": _wav(pcm, data_size=len(pcm) - 1), "RIFF size 0": _wav(pcm, riff_size=0),
        "RIFF size 2^32-1": _wav(pcm, riff_size=0xFFFFFFFF), "fmt size 0": _wav(pcm, fmt_size=0),
        "fmt size 2": _wav(pcm, fmt_size=2), "fmt size past the end": _wav(pcm, fmt_size=0xFFFFFFF0),
        "no fmt chunk": b"RIFF" + struct.pack("<I", 12 + len(pcm)) + b"WAVEdata" + struct.pack("<I", len(pcm)) + pcm,
        "RF64 without ds64": b"RF64" + _wav(pcm)[4:],
        "LIST chunk larger than the file": _patched(_wav(pcm), 12, b"LIST\xf0\xff\xff\xff"),
    }
    out = [CorruptUpload(f"wav {what}", data, "lie.wav", "header") for what, data in wavs.items()]

    flac = files["flac"][1]  # STREAMINFO from byte 8: block sizes, frame sizes, then rate (20 bits) at 18
    rate_field = lambda hz: bytes([hz >> 12 & 0xFF, hz >> 4 & 0xFF, (hz & 0xF) << 4 | flac[20] & 0x0F])  # noqa: E731
    flacs = {
        "sample rate 0": _patched(flac, 18, rate_field(0)), "sample rate 1 Hz": _patched(flac, 18, rate_field(1)),
        "sample rate 2^20-1 Hz": _patched(flac, 18, rate_field(0xFFFFF)),
        "8 channels": _patched(flac, 20, bytes([flac[20] | 0x0E])),
        "2^36-1 samples": _patched(flac, 21, bytes([flac[21] | 0x0F]) + b"\xff\xff\xff\xff"),
        "block sizes 0": _patched(flac, 8, b"\0\0\0\0"),
    }
    out += [CorruptUpload(f"flac {what}", data, "lie.flac", "header") for what, data in flacs.items()]

    opus = files["ogg-opus"][1]  # OpusHead at 28: magic (8), version, channels, pre-skip (2), rate (4), gain, mapping
    opuses = {
        "0 channels": _ogg_first_page_patched(opus, 37, b"\x00"),
        "255 channels, mapping 0": _ogg_first_page_patched(opus, 37, b"\xff"),
        "input rate 2^32-1": _ogg_first_page_patched(opus, 40, b"\xff\xff\xff\xff"),
        "pre-skip longer than the audio": _ogg_first_page_patched(opus, 38, b"\xff\xff"),
        "mapping family 255": _ogg_first_page_patched(opus, 46, b"\xff"),
    }
    out += [CorruptUpload(f"ogg {what}", data, "lie.opus", "header") for what, data in opuses.items()]

    m4a = files["m4a-aac"][1]
    mdhd, mp4a, stco = m4a.index(b"mdhd"), m4a.index(b"mp4a"), m4a.index(b"stco")
    m4as = {
        "timescale 0": _patched(m4a, mdhd + 16, b"\0\0\0\0"),
        "timescale 1, duration 2^32-1": _patched(m4a, mdhd + 16, b"\0\0\0\1\xff\xff\xff\xff"),
        "65535 channels": _patched(m4a, mp4a + 20, b"\xff\xff"),
        "0 channels, rate 0": _patched(_patched(m4a, mp4a + 20, b"\0\0"), mp4a + 28, b"\0\0\0\0"),
        "chunk offset past the end": _patched(m4a, stco + 12, b"\xff\xff\xff\xf0"),
    }
    out += [CorruptUpload(f"m4a {what}", data, "lie.m4a", "header") for what, data in m4as.items()]

    webm = files["webm-opus"][1]
    channels, rate = webm.index(b"\x9f\x81"), webm.index(b"\xb5\x88")  # Channels, SamplingFrequency (8-byte float)
    webms = {
        "0 channels": _patched(webm, channels + 2, b"\x00"),
        "255 channels": _patched(webm, channels + 2, b"\xff"),
        "sampling frequency 1e12 Hz": _patched(webm, rate + 2, struct.pack(">d", 1e12)),
        "sampling frequency -1 Hz": _patched(webm, rate + 2, struct.pack(">d", -1.0)),
        "sampling frequency NaN": _patched(webm, rate + 2, struct.pack(">d", float("nan"))),
        "doctype not webm": webm.replace(b"webm", b"xxxx", 1),
    }
    out += [CorruptUpload(f"webm {what}", data, "lie.webm", "header") for what, data in webms.items()]

    mp3 = files["mp3"][1]
    out += [
        CorruptUpload("mp3 reserved sample rate in every frame header",
                      mp3.replace(b"\xff\xfb\x50", b"\xff\xfb\x5c").replace(b"\xff\xfb\x90", b"\xff\xfb\x9c"),
                      "lie.mp3", "header"),
        CorruptUpload("mp3 named .wav", mp3, "tone.wav", "header"),
        CorruptUpload("wav named .mp4", files["wav"][1], "tone.mp4", "header"),
    ]
    return out


def _zero_length_streams(files: dict[str, tuple[str, bytes]]) -> list[CorruptUpload]:
    wav, opus, flac = files["wav"][1], files["ogg-opus"][1], files["flac"][1]
    third_page = opus.index(b"OggS", opus.index(b"OggS", 4) + 4)  # after OpusHead and OpusTags
    cases = {
        "empty upload": (b"", "empty.wav"),
        "wav header, data size 0, no data": (_wav(b""), "empty.wav"),
        "wav header declaring 1 s, no data": (wav[:44], "empty.wav"),
        "flac STREAMINFO only": (flac[:42], "empty.flac"),
        "ogg opus header pages only": (opus[:third_page], "empty.opus"),
        "mp3 ID3 tag only": (b"ID3\x04\x00\x00\x00\x00\x00\x00", "empty.mp3"),
        "matroska audio track without blocks": (_empty_stream("matroska", "pcm_s16le", SAMPLE_RATE), "empty.mkv"),
        "mp4 audio track without samples": (_empty_stream("mp4", "aac", 44_100), "empty.m4a"),
        "webm opus track without blocks": (_empty_stream("webm", "libopus", 48_000), "empty.webm"),
    }
    return [CorruptUpload(what, data, filename, "empty") for what, (data, filename) in cases.items()]


def _nested(files: dict[str, tuple[str, bytes]]) -> list[CorruptUpload]:
    """Containers inside containers: as a WAV's PCM, behind an MP3's ID3 tag, compressed, zipped, appended."""
    wav, mp3, mp4 = files["wav"][1], files["mp3"][1], files["mp4-video"][1]
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("tone.wav", wav)
    id3_frame = b"GEOB" + struct.pack(">I", len(mp4) + 4) + b"\0\0\0\0\0\0" + mp4
    id3 = b"ID3\x03\x00\x00" + bytes((len(id3_frame) >> s) & 0x7F for s in (21, 14, 7, 0)) + id3_frame
    cases = {
        "wav as the samples of a wav": (_wav(wav), "nested.wav"),
        "mp4 as the samples of a wav": (_wav(mp4[: len(mp4) & ~1]), "nested.wav"),
        "mp3 in a wav (format tag 0x55)": (_wav(mp3, tag=0x55, bits=0, block_align=1, byte_rate=16_000), "mp3.wav"),
        "mp4 inside the ID3 tag of an mp3": (id3 + mp3, "nested.mp3"),
        "wav appended to an mp3": (mp3 + wav, "joined.mp3"),
        "mp3 appended to a wav": (wav + mp3, "joined.wav"),
        "gzipped wav": (gzip.compress(wav), "tone.wav.gz"),
        "wav in a zip": (zipped.getvalue(), "tone.zip"),
    }
    return [CorruptUpload(what, data, filename, "nested") for what, (data, filename) in cases.items()]


def _mov_with_external_reference(m4a: bytes, url: bytes) -> bytes:
    """An MP4 whose data reference says its samples live at `url` (QuickTime's external references)."""
    entry = b"url " + b"\0\0\0\0" + url + b"\0"  # flags 0: not in this file
    dref = b"\0\0\0\0\0\0\0\1" + struct.pack(">I", 8 + len(entry)) + entry
    return _mp4_box_rewritten(m4a, (b"moov", b"trak", b"mdia", b"minf", b"dinf", b"dref"), dref)


def _playlists(files: dict[str, tuple[str, bytes]]) -> list[CorruptUpload]:
    """Formats that make FFmpeg open other resources, pointed at local files, URLs and protocol tricks."""
    targets = ["file:///etc/passwd", "/etc/passwd", "http://127.0.0.1:9/x.ts", "concat:/etc/passwd|/etc/hostname",
               "subfile,,start,0,end,4096,,:/etc/passwd", "crypto+file:///etc/passwd", "data:audio/wav;base64,UklGRg=="]
    hls_entries = "".join(f"#EXTINF:1.0,\n{t}\n" for t in targets)
    hls = f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n{hls_entries}#EXT-X-ENDLIST\n"
    cases = {
        "hls playlist of local files and urls": (hls, "playlist.m3u8"),
        "hls with a key and a map from /etc/passwd": (
            '#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI="file:///etc/passwd"\n#EXT-X-MAP:URI="file:///etc/passwd"\n'
            "#EXTINF:1.0,\nhttp://127.0.0.1:9/a.ts\n#EXT-X-ENDLIST\n", "key.m3u8"),
        "hls master playlist": ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nfile:///etc/passwd\n", "master.m3u8"),
        "plain m3u": ("/etc/passwd\nfile:///etc/shadow\n", "list.m3u"),
        "ffconcat script": ("ffconcat version 1.0\n" + "".join(f"file '{t}'\n" for t in targets), "list.ffconcat"),
        "ffconcat with inpoint into /etc/passwd": (
            "ffconcat version 1.0\nfile /etc/passwd\ninpoint 0\nduration 1\n", "list.txt"),
        "sdp session": ("v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 5004 RTP/AVP 0\n"
                        "a=rtpmap:0 PCMU/8000\n", "stream.sdp"),
        "dash manifest": ('<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static">'
                          "<BaseURL>file:///etc/passwd</BaseURL><Period><AdaptationSet><Representation id=\"a\" "
                          'bandwidth="1"><SegmentBase/></Representation></AdaptationSet></Period></MPD>', "x.mpd"),
        "a url as the whole upload": ("file:///etc/passwd", "passwd"),
        "a concat url as the whole upload": ("concat:/etc/passwd|/etc/hostname", "concat.wav"),
        "a subfile url as the whole upload": ("subfile,,start,0,end,0,,:/etc/passwd", "subfile.wav"),
        "srt subtitles": ("1\n00:00:00,000 --> 00:00:01,000\nfile:///etc/passwd\n\n", "subs.srt"),
        "webvtt subtitles": ("WEBVTT\n\n00:00.000 --> 00:01.000\nhello\n", "subs.vtt"),
        "ansi art": ("\x1b[31mroot\x1b[0m\n" * 100, "art.ans"),
        "image2 pattern name": (files["wav"][1], "img%03d.png"),
    }
    out = [CorruptUpload(what, data.encode() if isinstance(data, str) else data, filename, "playlist")
           for what, (data, filename) in cases.items()]
    out += [CorruptUpload(f"mp4 with its samples referenced at {url}",
                          _mov_with_external_reference(files["m4a-aac"][1], url.encode()), "ref.mov", "playlist")
            for url in ("file:///etc/passwd", "http://127.0.0.1:9/a.mp4")]
    return out


def _junk(rng: np.random.Generator) -> list[CorruptUpload]:
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    cases = {
        "1 random byte": rng.bytes(1), "16 random bytes": rng.bytes(16), "1000 random bytes": rng.bytes(1000),
        "100000 random bytes": rng.bytes(100_000), "64 KiB of zeros": bytes(65536),
        "64 KiB of 0xff": b"\xff" * 65536, "RIFF repeated": b"RIFF" * 4096, "OggS repeated": b"OggS" * 4096,
        "mp3 frame sync repeated": b"\xff\xfb\x90\x64" * 16384, "fLaC and nothing": b"fLaC",
        "ID3 tag declaring 256 MiB": b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + rng.bytes(1000),
        "text": b"Meeting notes, 3 March.\n" * 200, "json": b'{"file": "file:///etc/passwd"}',
        "html": b"<html><body><audio src='file:///etc/passwd'></audio></body></html>", "png image": png,
    }
    return [CorruptUpload(what, data, "upload.bin", "junk") for what, data in cases.items()]


def corrupted_corpus(seed: int = 0) -> list[CorruptUpload]:
    """Valid files (WAV, FLAC, MP3, Ogg Opus, M4A, MP4, WebM, MKV) and what is derived from them: cuts,
    flipped bytes, lying headers, empty streams, nested containers, playlists and protocol tricks, junk.
    The same `seed` gives the same corpus."""
    rng = np.random.default_rng(seed)
    files = _valid_files()
    out = [CorruptUpload(f"{name} as made", data, filename, "valid", valid=True)
           for name, (filename, data) in files.items()]
    for name, (filename, data) in files.items():
        out += _truncations(name, filename, data) + _flips(name, filename, data, rng)
    return out + _lying_headers(files) + _zero_length_streams(files) + _nested(files) + _playlists(files) + _junk(rng)
