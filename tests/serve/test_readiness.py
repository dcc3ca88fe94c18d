"""Readiness while every slot of the ingress is taken: the HTTP checks of the worker pods' readiness probe in
k8s/rayservice.yaml still answer, at once, when stalled uploads hold all of the ingress's
`max_ongoing_requests`.

The probe is the one KubeRay 1.5 injects into a RayService's worker pods, written out in the manifest: the
raylet's health on the dashboard agent, then `wget -T 2 http://localhost:8000/-/healthz | grep success`,
Serve's proxy on that pod. The proxy answers /-/healthz itself, from its route table, without calling a
replica. The app's own /health is a route of the ingress: it waits for a free slot like any request, so
as a probe it would take every pod out of the Service while slow uploads arrive. A stalled upload (a
started multipart body, then nothing) holds its slot until the upload deadlines cut it (408 after
`upload_grace_s`, 10 s by default): everything here happens well inside that window, and /health being
held up throughout is what shows the slots were full.

The fake app runs its proxy on the head (`proxy_location: HeadOnly`), where a proxy is ready once it has
routes; on a worker it also needs a running replica of the ingress (Ray Serve's `ready_for_traffic`).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from tests.serve.served import APP, ROOT, fake_app_served, free_port

pytestmark = [pytest.mark.serve, pytest.mark.timeout(240)]

MANIFEST = ROOT / "k8s" / "rayservice.yaml"
INGRESS = "TranscriptionIngress"
# One HTTP check of a probe command: `wget ... -T <s> ... http://localhost:<port><path> | grep <word>`.
_CHECK = re.compile(r"-T (\d+) [^|]*?http://localhost:(\d+)(/\S*) \| grep (\w+)")
SLOTS_SETTLE_S = 1.5  # for the stalled requests to reach the ingress replica and take its slots
FAST_S = 1.0  # an answer within half the probe's own wget timeout (2 s)


def _rayservice() -> dict[str, Any]:
    (service,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "RayService"]
    return service


def _serve_port(rayservice: dict[str, Any]) -> int:
    return int(yaml.safe_load(rayservice["spec"]["serveConfigV2"])["http_options"]["port"])


def probe_checks(rayservice: dict[str, Any], probe: str) -> dict[str, list[tuple[int, int, str, str]]]:
    """Worker group -> (wget timeout s, port, path, word grep'd for) of each HTTP check in its Ray
    container's `probe` (readinessProbe, livenessProbe)."""
    found = {}
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        command = " ".join(container.get(probe, {}).get("exec", {}).get("command", []))
        found[group["groupName"]] = [(int(t), int(port), path, word) for t, port, path, word in _CHECK.findall(command)]
    return found


def test_worker_probes_check_the_serve_proxy_for_readiness_only():
    """Readiness includes an HTTP check on the Serve port (KubeRay's own would, if the manifest set none);
    liveness stays off it: a pod whose proxy is busy or draining must not be restarted."""
    rayservice = _rayservice()
    port = _serve_port(rayservice)
    readiness, liveness = probe_checks(rayservice, "readinessProbe"), probe_checks(rayservice, "livenessProbe")
    assert readiness and set(readiness) == set(liveness)
    for group, checks in readiness.items():
        assert [c for c in checks if c[1] == port], f"{group}: readiness does not ask Serve on port {port}"
        assert [c for c in checks if c[1] != port], f"{group}: readiness does not ask the raylet"
        assert liveness[group] and not [c for c in liveness[group] if c[1] == port], f"{group}: liveness"


def _serve_port_checks() -> list[tuple[int, str, str]]:
    rayservice = _rayservice()
    port = _serve_port(rayservice)
    return sorted({(timeout, path, word) for checks in probe_checks(rayservice, "readinessProbe").values()
                   for timeout, p, path, word in checks if p == port})


def _ingress_slots() -> int:
    """max_ongoing_requests of the ingress times its running replicas, as the Serve controller has them."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None
    details = client.get_serve_details()["applications"][APP]["deployments"][INGRESS]
    running = [r for r in details["replicas"] if r["state"] == "RUNNING"]
    assert running, details
    return int(details["deployment_config"]["max_ongoing_requests"]) * len(running)


def start_stalled_upload(base_url: str) -> socket.socket:
    """Headers that promise 1 MB, the start of a multipart body, then nothing."""
    url = urlparse(base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'
    sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 1000000\r\n\r\n" + head)
    return sock


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    with fake_app_served(free_port()) as url:
        yield url


def test_readiness_answers_while_stalled_uploads_hold_every_ingress_slot(served):
    checks = _serve_port_checks()
    assert checks
    with httpx.Client(base_url=served) as client:
        assert client.get("/health", timeout=10).status_code == 200  # the ingress answers when idle
        slots = _ingress_slots()
        sockets = [start_stalled_upload(served) for _ in range(slots)]
        try:
            time.sleep(SLOTS_SETTLE_S)
            with ThreadPoolExecutor(1) as pool:
                health = pool.submit(client.get, "/health", timeout=60)
                time.sleep(1.0)
                assert not health.done(), (f"/health answered beside {slots} stalled uploads: they did not take "
                                           f"every slot, so this test would show nothing ({health.result()})")
                for wget_timeout_s, path, word in checks:
                    for _ in range(3):
                        started = time.monotonic()
                        response = client.get(path, timeout=wget_timeout_s)
                        took_s = time.monotonic() - started
                        assert response.status_code == 200, (path, response.status_code, response.text)
                        assert word in response.text, (path, response.text)
                        assert took_s < min(FAST_S, wget_timeout_s / 2), (path, took_s)
                # Still waiting: the slots were full for every check above.
                assert not health.done(), "a slot came free during the checks"
                for sock in sockets:
                    sock.close()
                # The stalled uploads gone, the ingress takes /health again.
                assert health.result(timeout=30).status_code == 200
        finally:
            for sock in sockets:
                sock.close()
