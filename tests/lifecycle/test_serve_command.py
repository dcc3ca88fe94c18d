"""The README's serve command listens on loopback only, and stops cleanly on Ctrl+C and on SIGTERM:
every replica tears its models down and logs the report, and no Ray process is left behind.

Runs after tests/integration, whose Ray cluster is stopped when that package ends.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
import yaml

pytestmark = pytest.mark.serve

ROOT = Path(__file__).resolve().parents[2]
PORT = 8766
RAY_PROCESS_MARKERS = ("raylet", "gcs_server", "ray::", "dashboard.py", "log_monitor.py")


def is_ray(process: psutil.Process) -> bool:
    cmdline = " ".join(process.info["cmdline"] or [])
    return any(marker in cmdline for marker in RAY_PROCESS_MARKERS)


def ray_processes() -> list[str]:
    return [" ".join(p.info["cmdline"])[:120] for p in psutil.process_iter(["cmdline"]) if is_ray(p)]


def listening_sockets(root_pid: int) -> list[tuple[str, str, int]]:
    """(process, IP, port) of every TCP listener and unconnected UDP socket of a process, its
    descendants and every Ray process (the test starts with none of another cluster running)."""
    root = psutil.Process(root_pid)
    processes = {p.pid: p for p in [root, *root.children(recursive=True)]}
    processes.update((p.pid, p) for p in psutil.process_iter(["cmdline"]) if is_ray(p))
    found = []
    for process in processes.values():
        try:
            name = f"{component(process.cmdline())} (pid {process.pid})"
            sockets = process.net_connections(kind="inet")
        except psutil.NoSuchProcess:  # a short-lived worker; AccessDenied would hide sockets, so it fails
            continue
        found += [(name, s.laddr.ip, s.laddr.port) for s in sockets
                  if s.status == psutil.CONN_LISTEN or (s.type == socket.SOCK_DGRAM and not s.raddr)]
    return found


def component(cmdline: list[str]) -> str:
    """A process by what it runs: `gcs_server`, `dashboard.py`, `ray::ProxyActor`, `-m serve_app.launch`."""
    if "-m" in cmdline[1:-1]:
        return "-m " + cmdline[cmdline.index("-m") + 1]
    script = next((Path(arg).name for arg in cmdline[1:] if arg.endswith(".py")), None)
    return script or Path(cmdline[0]).name


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    # A dual-stack socket bound to 127.0.0.1 shows as ::ffff:127.0.0.1, which Python 3.11 does not
    # call loopback.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


def assert_listens_on_loopback(root_pid: int) -> None:
    """The embedded default serves 127.0.0.1, and so does every Ray server it starts (GCS, raylet,
    object manager, workers' gRPC, agents, metrics exporters, dashboard)."""
    sockets = listening_sockets(root_pid)
    assert any(port == PORT for _, _, port in sockets), sockets
    exposed = [(name, ip, port) for name, ip, port in sockets if not is_loopback(ip)]
    # The one exception: Ray Serve 2.60 starts each replica's inter-deployment gRPC server on
    # [::]:0 whatever the node's IP (serve/_private/replica.py, no setting), behind Ray's token auth.
    replica_servers = [s for s in exposed if s[0].startswith("ray::ServeReplica:") and s[1] == "::"]
    others = sorted(f"{name}: {ip} port {port}" for name, ip, port in set(exposed) - set(replica_servers))
    assert others == [], "listening beyond loopback:\n" + "\n".join(others)
    assert len({name for name, _, _ in replica_servers}) == len(replica_servers), replica_servers
    for name, _, port in replica_servers:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary("/ray.serve.ASGIService/HandleRequest")(b"", timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, f"{name} port {port}: {refused.value}"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_command_stays_on_loopback_and_shuts_down_cleanly(tmp_path, stop_signal):
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
        assert_listens_on_loopback(process.pid)

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
