"""What the README's operations section tells an operator to do, done by the book on the embedded CPU
profile: `ray start --head`, `serve deploy`, `serve status` until RUNNING, requests, an edit of a model
setting (the ASR deployment's compute type, in its user_config) deployed under concurrent requests, then
`serve shutdown` and `ray stop`.

Along the way it checks what an operator relies on:
- the swap is in place: no request fails, the same ASR replica (process) serves before and after, and it
  reports the measured teardown of the replaced model;
- Ray's metrics endpoint exports the service's metrics with plausible values;
- a hub token and an API key in the environment appear in no log line Ray wrote, no response, no status
  answer and no `serve` command output.

Runs on a Ray of its own (its own --temp-dir, ports and token), after the other Ray tiers.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests import speech

pytestmark = [pytest.mark.serve, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
READY_TIMEOUT_S = 600
SWAP_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """Runs the CLI commands an operator types, with the operator's environment; keeps what they print."""

    def __init__(self, env: dict[str, str], dashboard: str) -> None:
        self.env, self.dashboard = env, dashboard
        self.printed: list[str] = []

    def run(self, *command: str, check: bool = True, timeout_s: float = 300) -> str:
        done = subprocess.run(command, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        self.printed += [done.stdout, done.stderr]
        if check:
            assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def serve(self, *args: str, **kwargs: Any) -> str:
        return self.run(str(BIN / "serve"), *args, "-a", self.dashboard, **kwargs)

    def app_status(self) -> str | None:
        status = yaml.safe_load(self.serve("status", check=False) or "{}") or {}
        return ((status.get("applications") or {}).get("transcription") or {}).get("status")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A head node started as the README says, with a hub token and an API key in its environment."""
    temp_dir = Path("/tmp") / f"ray-operator-{secrets.token_hex(4)}"  # short: Ray's socket paths are limited
    ports = {"port": free_port(), "dashboard": free_port(), "metrics": free_port(), "http": free_port()}
    secret_values = {"HF_TOKEN": f"hf_{secrets.token_hex(16)}", "TRANSCRIPTION_API_KEY": f"key-{secrets.token_hex(16)}"}
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", **secret_values}
    operator = Operator(env, f"http://127.0.0.1:{ports['dashboard']}")
    config = yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())
    config["http_options"]["port"] = ports["http"]  # the only change: leave 8000 to anyone else's service
    config_path = tmp_path_factory.mktemp("config") / "serve_config.cpu.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    operator.run(str(BIN / "ray"), "start", "--head", f"--port={ports['port']}", "--node-ip-address=127.0.0.1",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
                 f"--metrics-export-port={ports['metrics']}", f"--temp-dir={temp_dir}", "--num-cpus=2",
                 "--disable-usage-stats")
    try:
        yield {"operator": operator, "config": config, "config_path": config_path, "ports": ports,
               "secrets": secret_values, "temp_dir": temp_dir}
    finally:
        operator.serve("shutdown", "-y", check=False)
        operator.run(str(BIN / "ray"), "stop", "--force", check=False)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(2)


def test_the_operators_path_swaps_a_model_in_place_exports_metrics_and_leaks_no_secret(cluster):
    operator: Operator = cluster["operator"]
    key = cluster["secrets"]["TRANSCRIPTION_API_KEY"]
    base_url = f"http://127.0.0.1:{cluster['ports']['http']}"
    answers: list[str] = []

    operator.serve("deploy", str(cluster["config_path"]))
    wait_for(lambda: operator.app_status() == "RUNNING", READY_TIMEOUT_S, "serve status RUNNING")

    wav = speech.to_wav_bytes(speech.sample_paragraph())
    with httpx.Client(base_url=base_url, timeout=300, headers={"Authorization": f"Bearer {key}"}) as client:
        def transcribe(**fields: str) -> httpx.Response:
            response = client.post("/v1/audio/transcriptions", files={"file": ("call.wav", wav)},
                                   data={"model": "whisper-1", **fields})
            answers.append(response.text + str(response.headers))
            return response

        def asr_replica() -> dict[str, Any]:
            response = client.get("/v1/models/status")
            answers.append(response.text)
            [replica] = response.json()["deployments"]["asr"]["replicas"]
            return replica

        first = transcribe(response_format="verbose_json", diarize="true")
        assert first.status_code == 200, first.text
        text = first.json()["text"]
        assert first.json().get("speakers"), "diarized: the speakers are listed"
        assert "market" in text.lower() and "apples" in text.lower(), text
        # Failing requests: no key, a wrong key, a file that is not media, a misspelt field value.
        refused = httpx.post(f"{base_url}/v1/audio/transcriptions", files={"file": ("a.wav", wav)})
        answers.append(refused.text)
        assert refused.status_code == 401
        assert transcribe(model="whisper-1").status_code == 200
        not_media = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"not audio at all" * 64)},
                                data={"model": "whisper-1"})
        answers.append(not_media.text)
        assert not_media.status_code in (400, 415), not_media.text
        assert transcribe(response_format="jsonn").status_code == 400

        before = asr_replica()

        # The edit an operator makes: one model setting, in the deployment's user_config.
        config = cluster["config"]
        [asr] = [d for d in config["applications"][0]["deployments"] if d["name"] == "AsrDeployment"]
        asr["user_config"]["compute_type"] = "float32"
        cluster["config_path"].write_text(yaml.safe_dump(config, sort_keys=False))

        outcomes: Counter[str] = Counter()
        stop = threading.Event()

        def keep_asking() -> None:
            while not stop.is_set():
                response = transcribe()
                ok = response.status_code == 200 and "apples" in response.json()["text"].lower()
                outcomes["200" if ok else f"{response.status_code}: {response.text[:200]}"] += 1

        askers = [threading.Thread(target=keep_asking) for _ in range(3)]
        for asker in askers:
            asker.start()
        try:
            time.sleep(3)
            operator.serve("deploy", str(cluster["config_path"]))

            def swapped() -> bool:
                unloads = asr_replica().get("unloads") or []
                return any(u.get("reason") == "replaced" for u in unloads)

            wait_for(swapped, SWAP_TIMEOUT_S, "the replaced model's teardown report")
            wait_for(lambda: operator.app_status() == "RUNNING", SWAP_TIMEOUT_S, "RUNNING after the swap")
            time.sleep(3)  # requests on the new model too
        finally:
            stop.set()
            for asker in askers:
                asker.join()

        after = asr_replica()
        assert set(outcomes) == {"200"} and outcomes["200"] >= 3, outcomes
        assert after["replica_pid"] == before["replica_pid"], "the swap replaced the replica instead of its model"
        [report] = [u for u in after["unloads"] if u["reason"] == "replaced"][-1:]
        assert report["teardown"]["residue_bytes"] is not None
        print(f"swap under load: {dict(outcomes)}; teardown {report['teardown']}")

    operator.serve("config")  # what an operator may print and paste: the deployed config
    metrics = scrape_until_complete(cluster["ports"]["metrics"])
    secrets_found = secrets_in(cluster, answers, operator.printed)
    assert secrets_found == [], secrets_found
    print("metrics scraped:\n" + "\n".join(f"  {line}" for line in metrics))


# --- metrics -------------------------------------------------------------------------------------------

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    found = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
            found.append((match["name"], labels, float(match["value"])))
    return found


def expectations(found: list[tuple[str, dict[str, str], float]]) -> dict[str, bool]:
    """Each metric the dashboard and alerts need, with a plausible value after the requests above."""
    def where(name: str, **labels: str) -> list[float]:
        return [v for n, lab, v in found if n == name and all(lab.get(k) == want for k, want in labels.items())]

    model_deployments = ("AsrDeployment", "AlignmentDeployment", "DiarizationDeployment")
    checks = {
        "requests ok": sum(where("ray_transcription_requests_total", outcome="ok", status="200")) >= 5,
        "requests 401": sum(where("ray_transcription_requests_total", outcome="client_error", status="401")) >= 1,
        "requests 400": sum(where("ray_transcription_requests_total", outcome="client_error", status="400")) >= 1,
        "requests by format": bool(where("ray_transcription_requests_total", response_format="verbose_json")),
        "audio seconds": sum(where("ray_transcription_audio_seconds_total", route="transcriptions")) > 20,
        # Idle now: every replica's queued audio is back to zero (a stuck gauge would keep autoscaled replicas).
        "queued audio gauge": bool(where("ray_transcription_queued_audio_seconds", deployment="AsrDeployment")),
        "queued audio back to 0": set(where("ray_transcription_queued_audio_seconds")) == {0.0},
        "expected wait": bool(where("ray_transcription_expected_wait_seconds")),
        "max queue wait": where("ray_transcription_max_queue_wait_seconds") == [30.0],
        "chunk wait": sum(where("ray_transcription_chunk_wait_seconds_count")) >= 5,
        "teardown residue": bool(where("ray_transcription_teardown_residue_bytes", deployment="AsrDeployment")),
        "teardown seconds": any(v > 0 for v in where("ray_transcription_teardown_seconds",
                                                      deployment="AsrDeployment")),
        "unloads replaced": sum(where("ray_transcription_model_unloads_total", reason="replaced")) >= 1,
    }
    for stage in ("decode", "vad", "asr", "diarization"):
        checks[f"stage {stage} seconds"] = sum(where("ray_transcription_stage_seconds_count", stage=stage)) >= 1
        rtf = where("ray_transcription_stage_rtf_sum", stage=stage)
        checks[f"stage {stage} rtf"] = bool(rtf) and 0 < sum(rtf) < 100
    for deployment in model_deployments:
        memory = where("ray_transcription_model_memory_bytes", deployment=deployment)
        checks[f"memory {deployment}"] = bool(memory) and all(v > 50 * 2**20 for v in memory)
        checks[f"models loaded {deployment}"] = bool(where("ray_transcription_models_loaded", deployment=deployment))
    return checks


def scrape_until_complete(port: int, timeout_s: float = 60) -> list[str]:
    """Ray's exporter publishes every few seconds: scrape until every expectation holds."""
    started = time.monotonic()
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        found = samples(text)
        checks = expectations(found)
        if all(checks.values()):
            return sorted({f"{n}{{{','.join(f'{k}={v}' for k, v in sorted(lab.items()) if k in SHOWN)}}} {v:g}"
                           for n, lab, v in found if n.startswith("ray_transcription_")})
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"metrics missing or implausible: {[k for k, ok in checks.items() if not ok]}")
        time.sleep(3)


SHOWN = ("deployment", "stage", "outcome", "status", "route", "response_format", "reason")


# --- secrets -------------------------------------------------------------------------------------------


def secrets_in(cluster: dict[str, Any], answers: list[str], printed: list[str]) -> list[str]:
    """Where either secret appears: every file Ray wrote under its temp dir, every answer, every output."""
    values = list(cluster["secrets"].values())
    hits = []
    for path in Path(cluster["temp_dir"]).rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {name}" for name, v in cluster["secrets"].items() if v.encode() in data]
    hits += [f"an HTTP answer: {v[:6]}..." for text in answers for v in values if v in text]
    hits += [f"serve/ray output: {v[:6]}..." for text in printed for v in values if v in text]
    return hits
