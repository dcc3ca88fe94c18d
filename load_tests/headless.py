"""Run the locustfile headless, bounded and against loopback only, and read back what it measured.

The integration tier runs it for a minute in CI (tests/integration/test_under_load.py), soak.py for as
long as asked; run_local.sh is the same run for a person at a terminal, with an HTML report.

Each run leaves in its folder: Locust's `stats_stats.csv`, `stats_failures.csv`, `stats_exceptions.csv`,
`stats_stats_history.csv`, `locust.log`, `locust.out` (its closing tables) and `summary.json` (the
locustfile's `run_summary`, the one read here).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "load_tests" / "locustfile.py"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
ROUTE = "/v1/audio/transcriptions"
START_UP_S = 60
"""Allowance on top of run time and drain for Locust's imports and the clip's synthesis."""


def loopback_url(url: str) -> str:
    """The URL without a trailing slash; ValueError unless it is plain http to a loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"{url!r} is not a loopback URL (http://127.0.0.1:PORT); this only loads this machine")
    return url.rstrip("/")


@dataclass(frozen=True)
class KindStats:
    """One request kind ("json", "diarize (shed)", ...) or a total: counts, latency in ms, requests/s."""

    kind: str
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    rps: float

    @property
    def shed(self) -> bool:
        return self.kind.endswith("(shed)")


@dataclass(frozen=True)
class Failure:
    """A distinct failure and how often it happened."""

    kind: str
    error: str
    occurrences: int


@dataclass(frozen=True)
class LoadRun:
    """What one headless run measured (from the locustfile's summary.json, written once every request
    ended), with its exit status and wall time."""

    exit_code: int
    wall_s: float
    out_dir: Path
    kinds: tuple[KindStats, ...]
    served: KindStats | None
    total: KindStats | None
    failures: tuple[Failure, ...]
    exceptions: tuple[str, ...]
    summary: dict[str, Any]

    @property
    def shed(self) -> int:
        return sum(k.requests for k in self.kinds if k.shed)

    @property
    def succeeded(self) -> int:
        return self.served.requests - self.served.failures if self.served else 0

    def problems(self) -> list[str]:
        """Why this run is not clean: any failure (a shed 503 with Retry-After is none), a locustfile error,
        a non-zero exit, no summary, or not one request answered."""
        out = [f"{f.occurrences} x [{f.kind}] {f.error}" for f in self.failures]
        out += [f"locustfile error: {e}" for e in self.exceptions]
        if self.exit_code != 0:
            out.append(f"locust exited with {self.exit_code} (see {self.out_dir / 'locust.log'})")
        if not self.summary:
            out.append(f"no summary.json in {self.out_dir}: the locustfile did not reach its end")
        elif self.succeeded == 0:
            out.append("no request succeeded")
        return out

    def table(self) -> str:
        """The run as markdown: one row per request kind and the totals, then throughput and failures."""
        rows = ["| kind | requests | failures | p50 s | p95 s | p99 s | req/s |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for k in (*self.kinds, *(t for t in (self.served, self.total) if t)):
            rows.append(f"| {k.kind} | {k.requests} | {k.failures} | {_s(k.p50_ms)} | {_s(k.p95_ms)} | "
                        f"{_s(k.p99_ms)} | {k.rps:.2f} |")
        s = self.summary
        lines = [*rows, "",
                 f"- shed (503 with Retry-After): {self.shed} of {self.total.requests if self.total else 0}",
                 f"- audio: {s.get('audio_s_per_s', '-')} s transcribed per wall second ({self.succeeded} x "
                 f"{s.get('clip', '?')} of {s.get('clip_s', '?')} s in {s.get('elapsed_s', '?')} s)"]
        lines += ["- failures: none"] if not self.failures else [
            "- failures:", *(f"  - {f.occurrences} x [{f.kind}] {f.error}" for f in self.failures)]
        if self.exceptions:
            lines += ["- locustfile errors:", *(f"  - {e}" for e in self.exceptions)]
        return "\n".join(lines)


def _s(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f}"


def run_locust(host: str, out_dir: Path, *, users: int, spawn_rate: float, run_time_s: int,
               stop_timeout_s: int = 120, request_timeout_s: float | None = None,
               env: dict[str, str] | None = None,
               user_classes: tuple[str, ...] = ("TranscriptionUser",)) -> LoadRun:
    """Run the locustfile headless against `host` (loopback) for `run_time_s`, then give in-flight requests
    `stop_timeout_s` to finish; killed if it is still running START_UP_S after that. `user_classes`: the
    locustfile's users to run, by weight; TranscriptionUser alone keeps runs comparable with earlier ones."""
    host = loopback_url(host)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").unlink(missing_ok=True)  # a folder used again must not report the last run
    child_env = {**os.environ, **(env or {}), "LOAD_TEST_SUMMARY_PATH": str(out_dir / "summary.json")}
    if request_timeout_s is not None:
        child_env["LOAD_TEST_TIMEOUT_S"] = str(request_timeout_s)
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
               "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", f"{run_time_s}s",
               "--stop-timeout", f"{stop_timeout_s}s", "--csv", str(out_dir / "stats"),
               "--logfile", str(out_dir / "locust.log"), "--loglevel", "INFO", "--only-summary",
               *user_classes]
    started = time.monotonic()
    with open(out_dir / "locust.out", "wb") as out:
        # cwd: the locustfile imports tests/speech.py, which imports core/ from the checkout.
        done = subprocess.run(command, cwd=REPO, env=child_env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=run_time_s + stop_timeout_s + START_UP_S, check=False)
    return read_run(out_dir, done.returncode, time.monotonic() - started)


def read_run(out_dir: Path, exit_code: int, wall_s: float) -> LoadRun:
    """Parse a finished run's folder: summary.json, else (Locust died first) its last CSV snapshot's
    failures and errors."""
    path = out_dir / "summary.json"
    summary: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if summary:
        failures = tuple(Failure(e["kind"], e["error"], e["occurrences"]) for e in summary["errors"])
        exceptions = tuple(f"{x['count']} x {x['message']}" for x in summary["exceptions"])
    else:
        failures = tuple(Failure(r["Name"].removeprefix(f"{ROUTE} [").removesuffix("]"), r["Error"],
                                 int(r["Occurrences"]))
                         for r in _csv(out_dir / "stats_failures.csv"))
        exceptions = tuple(f"{r['Count']} x {r['Message']}" for r in _csv(out_dir / "stats_exceptions.csv"))
    return LoadRun(
        exit_code=exit_code, wall_s=wall_s, out_dir=out_dir,
        kinds=tuple(KindStats(**k) for k in summary.get("kinds", ())),
        served=KindStats(**summary["served"]) if summary else None,
        total=KindStats(**summary["total"]) if summary else None,
        failures=failures, exceptions=exceptions, summary=summary,
    )


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
