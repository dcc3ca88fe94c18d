"""The service beside the raw libraries doing the same work, in one table: latency, throughput, RTFx.

    python -m benchmarks.throughput [--quick] [--only P1,P2,P3,P4] [--asr-replicas-for-p4 1,2]
                                    [--markdown PATH]

The script starts the service itself (`python -m serve_app.launch` on a copy of serve_config.cpu.yaml
served on port 8791), measures its rows over HTTP, stops it (SIGTERM), and only then runs each baseline
in a process of its own (`python -m benchmarks.throughput --raw NAME`, which prints its figures as
JSON): the two sides never share the machine. The whole run holds /tmp/ray-tests.lock, so nothing else
starts Ray meanwhile. Loading is never timed; each side is warmed up once per row. RTFx is audio
seconds over wall seconds (the Open ASR Leaderboard's definition), for both sides.

  P1  one 30 s two-speaker call (pyannote's sample), `json`, median latency, against raw whisperX in
      one process: `whisperx.load_model(tiny.en, "cpu", compute_type="int8", vad_method="pyannote",
      threads=2).transcribe(audio, batch_size=8, language="en")`. Target: service/raw <= 1.10x.
  P2  8 concurrent clients sending 5-15 s clips of real speech (a fixed list of 8), several rounds,
      audio seconds per wall second, against the same raw whisperX on the same clips one after another.
      Target: service/raw >= 1.1x on 2 CPU cores (>= 3x on a GPU).
  P3  the 30 s call with word timings and speakers (`diarized_json`), median latency, against (a)
      AsrHolder (word timings) then DiarizationHolder in one process, target <= 0.70x, and (b) each of
      the two alone in a process of its own, their times added, target <= 1.00x.
  P4  a recording of about 10 minutes (tests/real_speech.py's meeting_10min), `diarized_json`, with 1
      and with 2 ASR replicas (2: asr.cpu_threads 1, so the replicas share the 2 cores), against the
      P3a stages by hand; the WER of both sides against its reference, so that speed bought with lost
      words shows. No target: it shows what a long file and more replicas change.

`--quick` (a smoke test, 9 minutes on 2 cores, two service starts of 1-1.5 minutes each included): 2 runs
for P1, 1 for P3, 1 round for P2, and the 95 s meeting_95s for P4. The full run takes about 20 minutes.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve_config.cpu.yaml"
RAY_LOCK = Path("/tmp/ray-tests.lock")
RAYLET_LOG = Path("/tmp/ray/session_latest/logs/raylet.out")
PORT = 8791  # not the config's 8000, which a developer's own scripts/serve may hold
MODEL = "bundled/tiny.en"
THREADS = 2  # the baselines' threads: every core of the 2-core machine the targets are set for
BATCH_SIZE = 8
SAMPLE_RATE_HZ = 16_000
CLIENTS = 8
RESULT_MARK = "RESULT "
ROW_NAMES = ("P1", "P2", "P3", "P4")


@dataclass(frozen=True)
class Plan:
    """How much of each row to run."""

    quick: bool

    @property
    def latency_runs(self) -> int:
        return 2 if self.quick else 5

    @property
    def diarized_runs(self) -> int:
        return 1 if self.quick else 3

    @property
    def rounds(self) -> int:
        return 1 if self.quick else 3

    @property
    def recording(self) -> str:
        return "meeting_95s" if self.quick else "meeting_10min"


@dataclass(frozen=True)
class Measure:
    """One side's figure for one row: wall seconds (the median run, or the total) for `audio_s` of audio."""

    wall_s: float
    audio_s: float
    wer: float | None
    cores: int
    runs_s: list[float]
    shed: int = 0  # service requests answered 503 and sent again after Retry-After
    ray_cpus: float | None = None
    text: str | None = None  # the transcript of the last run

    @property
    def rtfx(self) -> float:
        return self.audio_s / self.wall_s


# --- inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """Audio (16 kHz float32) and what is said in it."""

    audio: np.ndarray
    reference: str

    @property
    def duration_s(self) -> float:
        return self.audio.size / SAMPLE_RATE_HZ


# The phone call cut into three where nobody speaks (sample.stm), file seconds; and real clips joined in
# pairs with the reading's own 0.8 s pause. 8 clips of 7-14 s, 79 s in all.
_CALL_CUTS_S = ((6.4, 14.31), (14.31, 21.7), (21.7, 30.0))
_JOINED = (("reader-0870", "reader-0880"), ("reader-0890", "reader-0920"), ("reader-0930", "forever"),
           ("jfk",), ("reader-0920", "reader-0870"))


def call() -> Clip:
    """pyannote's 30 s two-speaker phone call and its transcript."""
    from tests.audio_samples import pyannote_sample

    return Clip(*pyannote_sample())


def _call_slice(start_s: float, end_s: float) -> Clip:
    from tests.audio_samples import _sample_dir

    lines = [line.split(maxsplit=5) for line in (_sample_dir() / "sample.stm").read_text().splitlines()]
    text = " ".join(f[5] for f in lines if len(f) > 5 and start_s <= float(f[3]) < end_s)
    audio = call().audio[round(start_s * SAMPLE_RATE_HZ):round(end_s * SAMPLE_RATE_HZ)]
    return Clip(audio, text)


def _joined(names: tuple[str, ...]) -> Clip:
    from tests.real_speech import clip

    pause = np.zeros(round(0.8 * SAMPLE_RATE_HZ), np.float32)
    pieces = [piece for name in names for piece in (pause, clip(name).audio)][1:]
    return Clip(np.concatenate(pieces), " ".join(clip(name).text for name in names))


def p2_clips() -> list[Clip]:
    """The fixed clip list of P2, calls and readings interleaved."""
    joined = [_joined(names) for names in _JOINED]
    cuts = [_call_slice(*cut) for cut in _CALL_CUTS_S]
    return [joined[0], cuts[0], joined[1], cuts[1], joined[2], cuts[2], joined[3], joined[4]]


def p2_schedule(rounds: int, clips: int) -> list[list[int]]:
    """Which clips each client sends, in order: every clip once per round, each client a different one."""
    return [[(client + r) % clips for r in range(rounds)] for client in range(CLIENTS)]


def recording(plan: Plan) -> Clip:
    from tests.real_speech import build

    speech = build(plan.recording)
    return Clip(np.array(speech.audio), speech.reference)


def wer(reference: str, hypothesis: str) -> float | None:
    from tests.speech import word_error_rate

    return word_error_rate(reference, hypothesis) if reference.strip() else None


def cores() -> int:
    return len(os.sched_getaffinity(0))


def measure(fn: Callable[[], str], runs: int, clip: Clip, warm_up: Callable[[], object] | None = None) -> Measure:
    """Median wall seconds of `runs` calls of `fn` (which returns the transcript) after one warm-up."""
    (warm_up or fn)()
    seconds: list[float] = []
    text = ""
    for _ in range(runs):
        started = time.perf_counter()
        text = fn()
        seconds.append(time.perf_counter() - started)
    return Measure(statistics.median(seconds), clip.duration_s, wer(clip.reference, text), cores(), seconds,
                   text=text)


# --- the service ----------------------------------------------------------------------------------


@dataclass
class Client:
    """POSTs to the service's transcription route; a 503 (shed) is sent again after its Retry-After."""

    url: str
    shed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        import httpx

        self._http = httpx.Client(base_url=self.url, timeout=1800, limits=httpx.Limits(max_connections=16))

    def text(self, wav: bytes, response_format: str) -> str:
        for _ in range(20):
            response = self._http.post("/v1/audio/transcriptions", files={"file": ("audio.wav", wav, "audio/wav")},
                                       data={"model": "whisper-1", "response_format": response_format})
            if response.status_code != 503:
                break
            with self._lock:
                self.shed += 1
            time.sleep(float(response.headers.get("retry-after", "1")))
        if response.status_code != 200:
            raise RuntimeError(f"the service answered {response.status_code}: {response.text[:500]}")
        return str(response.json()["text"])


def service_p1(client: Client, plan: Plan) -> Measure:
    from tests.audio_samples import pyannote_sample_wav_bytes

    wav = pyannote_sample_wav_bytes()
    return measure(lambda: client.text(wav, "json"), plan.latency_runs, call())


def service_p2(client: Client, plan: Plan) -> Measure:
    from tests.speech import to_wav_bytes

    clips = p2_clips()
    wavs = [to_wav_bytes(c.audio) for c in clips]
    client.text(wavs[0], "json")  # warm-up
    texts: dict[int, str] = {}

    def send(schedule: list[int]) -> None:
        for k in schedule:
            texts.setdefault(k, client.text(wavs[k], "json"))

    schedule = p2_schedule(plan.rounds, len(clips))
    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(send, schedule))
    wall_s = time.perf_counter() - started
    audio_s = sum(clips[k].duration_s for client_clips in schedule for k in client_clips)
    reference = " ".join(c.reference for c in clips)
    return Measure(wall_s, audio_s, wer(reference, " ".join(texts[k] for k in range(len(clips)))), cores(), [wall_s])


def service_p3(client: Client, plan: Plan) -> Measure:
    from tests.audio_samples import pyannote_sample_wav_bytes

    wav = pyannote_sample_wav_bytes()
    return measure(lambda: client.text(wav, "diarized_json"), plan.diarized_runs, call())


def service_p4(client: Client, plan: Plan, replicas: int) -> Measure:
    from tests.audio_samples import pyannote_sample_wav_bytes
    from tests.speech import to_wav_bytes

    speech = recording(plan)
    wav, call_wav = to_wav_bytes(speech.audio), pyannote_sample_wav_bytes()

    def warm_up() -> None:  # one call per ASR replica at once, so that each has decoded before
        with ThreadPoolExecutor(replicas) as pool:
            list(pool.map(lambda _: client.text(call_wav, "diarized_json"), range(replicas)))

    return measure(lambda: client.text(wav, "diarized_json"), 1, speech, warm_up=warm_up)


def service_config(replicas: int, directory: Path) -> Path:
    """A copy of serve_config.cpu.yaml on PORT with `replicas` ASR replicas (more than one: 1 thread each)."""
    import yaml

    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"]["port"] = PORT
    app = config["applications"][0]
    for deployment in app["deployments"]:
        if deployment["name"] == "AsrDeployment":
            deployment["num_replicas"] = replicas
    if replicas > 1:
        app["args"]["asr"]["cpu_threads"] = 1
    path = directory / f"serve_config.asr{replicas}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def ray_cpus() -> float | None:
    """The CPUs of the Ray cluster just started, from its raylet's state dump (None if not found)."""
    found = re.findall(r"InitialConfigResources: \{[^}]*\bCPU: ([0-9.e+]+)", RAYLET_LOG.read_text(errors="replace")
                       if RAYLET_LOG.is_file() else "")
    return float(found[-1]) if found else None


def _wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service was not up after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
        if "Transcription service is up" in log.read_text():
            try:
                if httpx.get(f"{url}/health", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(2)


def _stop(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, as a supervisor sends it, and wait for the launcher's clean shutdown."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            print("the service did not stop in 300 s after SIGTERM: killed", file=sys.stderr)
    if "Stopped." not in log.read_text():
        print(f"the service did not stop cleanly:\n{log.read_text()[-2000:]}", file=sys.stderr)
    time.sleep(3)  # Ray's processes leave a moment after the launcher


@contextmanager
def running_service(replicas: int) -> Iterator[tuple[Client, int]]:
    """The service with `replicas` ASR replicas, up and answering /health; stopped on leaving."""
    with tempfile.TemporaryDirectory(prefix="throughput-") as directory:
        config = service_config(replicas, Path(directory))
        log = Path(directory) / "serve.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "serve_app.launch", str(config)], cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT, env={**os.environ, "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"})
        try:
            url = f"http://127.0.0.1:{PORT}"
            _wait_until_up(process, url, log)
            yield Client(url), len(os.sched_getaffinity(process.pid))
        finally:
            _stop(process, log)


def _service_rows(client: Client, plan: Plan, replicas: int, with_p4: bool) -> dict[str, Callable[[], Measure]]:
    """What a service start with `replicas` ASR replicas measures: P1-P3 on the shipped one, P4 on each."""
    rows: dict[str, Callable[[], Measure]] = {}
    if replicas == 1:
        rows |= {"P1": lambda: service_p1(client, plan), "P2": lambda: service_p2(client, plan),
                 "P3": lambda: service_p3(client, plan)}
    if with_p4:
        rows[f"P4@{replicas}"] = lambda: service_p4(client, plan, replicas)
    return rows


def measure_service(rows: set[str], replicas: list[int], plan: Plan) -> dict[str, Measure]:
    """The service's figures, one service start per ASR replica count: keys P1, P2, P3, P4@N."""
    starts = ([1] if rows & {"P1", "P2", "P3"} or ("P4" in rows and 1 in replicas) else [])
    starts += [n for n in replicas if n != 1 and "P4" in rows]
    out: dict[str, Measure] = {}
    for n in starts:
        progress(f"starting the service with {n} ASR replica(s)")
        with running_service(n) as (client, service_cores):
            measured: dict[str, Measure] = {}
            for key, fn in _service_rows(client, plan, n, n in replicas).items():
                if key.split("@")[0] in rows:
                    progress(f"service {key}")
                    client.shed = 0
                    measured[key] = replace(fn(), shed=client.shed, cores=service_cores)
            cpus = ray_cpus()
        out |= {key: replace(m, ray_cpus=cpus) for key, m in measured.items()}
    return out


# --- the baselines (each in a process of its own) -------------------------------------------------


def whisperx_transcriber() -> Callable[[np.ndarray], str]:
    """Raw whisperX on the bundled tiny.en, as its README shows it, with every core."""
    import torch
    import whisperx

    from deployments import bundled

    torch.set_num_threads(THREADS)
    pipeline = whisperx.load_model(bundled.whisper_model_dir(MODEL), "cpu", compute_type="int8",
                                   vad_method="pyannote", threads=THREADS)

    def transcribe(audio: np.ndarray) -> str:
        result = pipeline.transcribe(audio, batch_size=BATCH_SIZE, language="en")
        return " ".join(s["text"].strip() for s in result["segments"])

    return transcribe


@contextmanager
def asr_holder() -> Iterator[Callable[[np.ndarray], str]]:
    """The service's ASR holder without Ray, asked for word timings: audio -> transcript."""
    from core.transcript import AsrOptions
    from deployments.asr import AsrConfig, AsrHolder

    holder = AsrHolder(AsrConfig(model=MODEL, compute_type="int8", batch_size=BATCH_SIZE, cpu_threads=THREADS))
    options = AsrOptions(word_timestamps=True)
    try:
        yield lambda audio: " ".join(s.text for s in holder.run(holder.transcribe, audio, options).segments)
    finally:
        holder.close()


@contextmanager
def diarization_holder() -> Iterator[Callable[[np.ndarray], int]]:
    """The service's diarization holder without Ray: audio -> number of speaker turns."""
    from core.transcript import SpeakerOptions
    from deployments.diarization import DiarizationConfig, DiarizationHolder

    holder = DiarizationHolder(DiarizationConfig(cpu_threads=THREADS))
    try:
        yield lambda audio: len(holder.run(holder.diarize, audio, SpeakerOptions()))
    finally:
        holder.close()


def raw_p1(plan: Plan) -> Measure:
    transcribe, clip = whisperx_transcriber(), call()
    return measure(lambda: transcribe(clip.audio), plan.latency_runs, clip)


def raw_p2(plan: Plan) -> Measure:
    transcribe, clips = whisperx_transcriber(), p2_clips()
    transcribe(clips[0].audio)  # warm-up
    order = [k for r in range(plan.rounds) for k in (client[r] for client in p2_schedule(plan.rounds, len(clips)))]
    texts: dict[int, str] = {}
    started = time.perf_counter()
    for k in order:
        texts.setdefault(k, transcribe(clips[k].audio))
    wall_s = time.perf_counter() - started
    reference = " ".join(c.reference for c in clips)
    hypothesis = " ".join(texts[k] for k in range(len(clips)))
    return Measure(wall_s, sum(clips[k].duration_s for k in order), wer(reference, hypothesis), cores(), [wall_s])


def _both_stages(transcribe: Callable[[np.ndarray], str], diarize: Callable[[np.ndarray], int],
                 audio: np.ndarray) -> str:
    text = transcribe(audio)
    diarize(audio)
    return text


def raw_p3_sequential(plan: Plan) -> Measure:
    clip = call()
    with asr_holder() as transcribe, diarization_holder() as diarize:
        return measure(lambda: _both_stages(transcribe, diarize, clip.audio), plan.diarized_runs, clip)


def raw_p3_asr(plan: Plan) -> Measure:
    clip = call()
    with asr_holder() as transcribe:
        return measure(lambda: transcribe(clip.audio), plan.diarized_runs, clip)


def raw_p3_diarize(plan: Plan) -> Measure:
    clip = call()
    with diarization_holder() as diarize:
        def run() -> str:
            diarize(clip.audio)
            return ""  # no words: P3b takes the transcript's WER from p3-asr

        return measure(run, plan.diarized_runs, Clip(clip.audio, ""))


def raw_p4(plan: Plan) -> Measure:
    speech, warm = recording(plan), call()
    with asr_holder() as transcribe, diarization_holder() as diarize:
        return measure(lambda: _both_stages(transcribe, diarize, speech.audio), 1, speech,
                       warm_up=lambda: _both_stages(transcribe, diarize, warm.audio))


RAW: dict[str, Callable[[Plan], Measure]] = {
    "p1": raw_p1, "p2": raw_p2, "p3-sequential": raw_p3_sequential, "p3-asr": raw_p3_asr,
    "p3-diarize": raw_p3_diarize, "p4": raw_p4,
}
RAW_FOR_ROW = {"P1": ["p1"], "P2": ["p2"], "P3": ["p3-sequential", "p3-asr", "p3-diarize"], "P4": ["p4"]}


def run_raw(name: str, plan: Plan) -> Measure:
    """One baseline in a fresh process (`--raw NAME`), its figures read back from its JSON line."""
    progress(f"baseline {name}")
    command = [sys.executable, "-m", "benchmarks.throughput", "--raw", name, *(["--quick"] if plan.quick else [])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode or not lines:
        raise RuntimeError(f"--raw {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Measure(**json.loads(lines[-1].removeprefix(RESULT_MARK)))


def added(a: Measure, b: Measure) -> Measure:
    """Two stages run apart: their times added, the transcript's WER (a's), the larger core count."""
    return Measure(a.wall_s + b.wall_s, a.audio_s, a.wer, max(a.cores, b.cores),
                   [x + y for x, y in zip(a.runs_s, b.runs_s, strict=True)])


# --- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table: the service's figure against the baseline's, and the target on their ratio."""

    name: str
    what: str
    service: Measure
    baseline: Measure
    throughput: bool  # the figure is audio s per wall s (higher is better), else latency in s
    target: float | None

    def figure(self, m: Measure) -> float:
        return m.rtfx if self.throughput else m.wall_s

    @property
    def ratio(self) -> float:
        return self.figure(self.service) / self.figure(self.baseline)

    @property
    def met(self) -> str:
        if self.target is None:
            return "-"
        return "yes" if (self.ratio >= self.target if self.throughput else self.ratio <= self.target) else "no"

    def cells(self) -> list[str]:
        unit = " audio s/s" if self.throughput else " s"
        target = "-" if self.target is None else f"{'>=' if self.throughput else '<='} {self.target:.2f}x"
        ray = f", Ray {self.service.ray_cpus:g}" if self.service.ray_cpus is not None else ""
        shed = f" ({self.service.shed} shed)" if self.service.shed else ""
        return [self.name, self.what, f"{self.figure(self.service):.2f}{unit}{shed}",
                f"{self.figure(self.baseline):.2f}{unit}", f"{self.ratio:.2f}x", f"{self.service.rtfx:.1f}",
                f"{self.baseline.rtfx:.1f}", target, self.met, _wer(self.service.wer), _wer(self.baseline.wer),
                f"{self.service.cores}{ray}", str(self.baseline.cores)]


HEADER = ["row", "what", "service", "baseline", "ratio", "RTFx service", "RTFx baseline", "target", "met",
          "WER service", "WER baseline", "cores service", "cores baseline"]


def _wer(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def build_rows(served: dict[str, Measure], raw: dict[str, Measure], plan: Plan) -> list[Row]:
    rows = []
    if "P1" in served:
        rows.append(Row("P1", "30 s call, json, median latency", served["P1"], raw["p1"], False, 1.10))
    if "P2" in served:
        rows.append(Row("P2", f"{CLIENTS} clients x {plan.rounds} round(s) of 7-14 s clips, vs sequential",
                        served["P2"], raw["p2"], True, 1.10))
    if "P3" in served:
        rows.append(Row("P3a", "30 s call, diarized_json, vs stages in one process", served["P3"],
                        raw["p3-sequential"], False, 0.70))
        rows.append(Row("P3b", "30 s call, diarized_json, vs stages in own processes, added", served["P3"],
                        added(raw["p3-asr"], raw["p3-diarize"]), False, 1.00))
    for key in sorted(k for k in served if k.startswith("P4@")):
        n = key.removeprefix("P4@")
        rows.append(Row(f"P4/{n}", f"{plan.recording}, diarized_json, {n} ASR replica(s), vs stages by hand",
                        served[key], raw["p4"], False, None))
    return rows


def text_table(rows: list[Row]) -> str:
    table = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table)


def markdown_table(rows: list[Row]) -> str:
    lines = [HEADER, ["---"] * len(HEADER), *(row.cells() for row in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def conditions(plan: Plan, replicas: list[int]) -> list[str]:
    """What the figures were measured under."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in
                         ("ray", "whisperx", "faster-whisper", "ctranslate2", "torch", "pyannote.audio"))
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; commit {commit}"
        + (" (with uncommitted changes in the tree)" if dirty else ""),
        f"model: tiny.en ({MODEL}), CTranslate2 int8 on CPU, beam 5, batch {BATCH_SIZE}; diarization: "
        "segmentation-3.0 + CAM++ (embedded)",
        "service: serve_config.cpu.yaml on port "
        f"{PORT} (asr.cpu_threads 2, diarization.cpu_threads 1); P4 with {' and '.join(map(str, replicas))} "
        "ASR replica(s), asr.cpu_threads 1 when more than one",
        f"baselines: whisperX threads {THREADS}; AsrHolder and DiarizationHolder with cpu_threads {THREADS}; "
        "each in its own process, never while the service runs",
        f"runs: P1 median of {plan.latency_runs}, P3 median of {plan.diarized_runs}, P2 {CLIENTS} clients x "
        f"{plan.rounds} round(s) over 8 clips ({sum(c.duration_s for c in p2_clips()):.0f} s a round), "
        f"P4 {plan.recording} ({recording(plan).duration_s:.0f} s) once; one warm-up per row and side",
        f"cores: {cores()} on this machine (sched_getaffinity); Ray's CPUs in the table; {versions}",
    ]


# --- running it -----------------------------------------------------------------------------------

_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.0f} s] {message}", file=sys.stderr, flush=True)


@contextmanager
def ray_lock() -> Iterator[None]:
    """Hold the lock every command that starts Ray takes, for the whole run."""
    with RAY_LOCK.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for {RAY_LOCK} (another Ray run holds it)")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs and a 95 s recording: a smoke test")
    parser.add_argument("--only", default=",".join(ROW_NAMES), help="rows to run, e.g. P1,P3")
    parser.add_argument("--asr-replicas-for-p4", default="1,2", help="ASR replica counts P4 runs the service with")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    parser.add_argument("--raw", choices=sorted(RAW), help=argparse.SUPPRESS)  # one baseline, in this process
    options = parser.parse_args(argv)
    options.rows = {name.strip().upper() for name in options.only.split(",") if name.strip()}
    if not options.rows or options.rows - set(ROW_NAMES):
        parser.error(f"--only takes some of {','.join(ROW_NAMES)}")
    options.replicas = sorted({int(n) for n in options.asr_replicas_for_p4.split(",") if n.strip()})
    if not options.replicas or min(options.replicas) < 1:
        parser.error("--asr-replicas-for-p4 takes replica counts of 1 or more, e.g. 1,2")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    plan = Plan(options.quick)
    if options.raw:
        result: dict[str, Any] = asdict(RAW[options.raw](plan))
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0
    with ray_lock():
        served = measure_service(options.rows, options.replicas, plan)
        raw = {name: run_raw(name, plan) for row in ROW_NAMES if row in options.rows for name in RAW_FOR_ROW[row]}
    rows = build_rows(served, raw, plan)
    lines = conditions(plan, options.replicas)
    p4_texts = {key: m.text for key, m in served.items() if key.startswith("P4@")}
    if len(p4_texts) > 1:  # a file spread over more replicas must read the same
        same = len(set(p4_texts.values())) == 1
        lines.append(f"P4 transcripts with {' and '.join(k.removeprefix('P4@') for k in p4_texts)} ASR replicas: "
                     + ("identical" if same else "DIFFERENT"))
    print("\n" + "\n".join(lines) + "\n\n" + text_table(rows))
    progress("done")
    if options.markdown:
        options.markdown.write_text("\n".join(f"- {line}" for line in lines) + "\n\n" + markdown_table(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
