"""The README's serve command stops cleanly on Ctrl+C and on SIGTERM: every replica tears its models
down and logs the report, and no Ray process is left behind.

Runs after tests/integration, whose Ray cluster is stopped when that package ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

pytestmark = pytest.mark.serve

ROOT = Path(__file__).resolve().parents[2]
PORT = 8766
RAY_PROCESS_MARKERS = ("raylet", "gcs_server", "ray::", "dashboard.py", "log_monitor.py")


def ray_processes() -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if any(marker in cmdline for marker in RAY_PROCESS_MARKERS):
            found.append(cmdline[:120])
    return found


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_command_shuts_down_cleanly(tmp_path, stop_signal):
    assert ray_processes() == [], "another Ray cluster is running"
    config = yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())
    config["http_options"]["port"] = PORT
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        # Started as from a background job (nohup, `cmd &` in a script, some CI runners): SIGINT is
        # inherited as ignored, so the command must install its own Ctrl+C handler.
        process = subprocess.Popen([sys.executable, "-m", "serve_app.launch", str(config_path)], cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"},
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 600
        while "Transcription service is up" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the service did not come up in 600 s"
            time.sleep(2)
        assert httpx.get(f"http://127.0.0.1:{PORT}/health", timeout=30).json() == {"status": "ok"}

        process.send_signal(stop_signal)
        assert process.wait(timeout=180) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = log_path.read_text()
    assert "Stopped." in output
    assert "teardown of bundled/tiny.en on cpu" in output, output[-3000:]
    assert "teardown of embedded on cpu" in output, output[-3000:]
    time.sleep(3)
    assert ray_processes() == []
