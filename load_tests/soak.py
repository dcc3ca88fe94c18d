"""Soak: a long headless Locust run against the service on this machine, with each service process's memory
before, during and after.

    scripts/serve &                     # wait for "Transcription service is up"
    .venv/bin/python -m load_tests.soak --users 20 --run-time 5m

The service's processes are found by the titles Ray gives them: ray::ServeController, ray::ProxyActor and
ray::ServeReplica:<app>:<deployment> (one per replica); run one Ray cluster on the machine while it soaks.
RSS is sampled before the run, every few seconds during it, right after it and once more after a settle
time (peak: the highest of these samples); what it prints is also written to summary.md in the results
folder, beside Locust's CSVs.
Exit status: 0 if the run is clean (see LoadRun.problems), 1 if not, 2 if the service is not healthy.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import psutil

from load_tests.headless import REPO, LoadRun, loopback_url, run_locust

SERVE_TITLE = re.compile(r"^ray::(ServeController|ProxyActor|ServeReplica:[\w-]+:[\w-]+)")
"""Ray's process title for an actor is ray::<class>, and ray::<class>.<method>() while a task runs."""
Rss = dict[tuple[str, int], int]  # (title, pid) -> bytes


def serve_processes() -> Rss:
    """RSS in bytes of each Serve process on this machine, by (title, pid)."""
    found: Rss = {}
    for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        cmdline = proc.info["cmdline"] or []
        match = SERVE_TITLE.match(" ".join(cmdline).strip()) if cmdline else None
        if match and proc.info["memory_info"] is not None:
            found[(match.group(1), proc.info["pid"])] = proc.info["memory_info"].rss
    return found


class PeakRss:
    """Samples serve_processes() every `period_s` on a thread (and whatever `add` is given); `peak` is each
    process's highest RSS."""

    def __init__(self, period_s: float = 5.0) -> None:
        self.period_s = period_s
        self.peak: Rss = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, sample: Rss) -> None:
        for key, rss in sample.items():
            self.peak[key] = max(rss, self.peak.get(key, 0))

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.add(serve_processes())


def healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


def duration_s(text: str) -> int:
    """"300", "300s", "5m", "1h30m" -> seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 5m, 1h)")
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def rss_table(before: Rss, peak: Rss, after: Rss, settled: Rss) -> str:
    """Markdown: each process's RSS in MiB before, at its peak, right after, after the settle, and the
    change from before to settled. A process missing at one point (a replaced replica) shows '-'."""
    rows = ["| process | pid | before MiB | peak MiB | after MiB | settled MiB | delta MiB |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for title, pid in sorted({*before, *peak, *after, *settled}):
        key = (title, pid)
        delta = (f"{(settled[key] - before[key]) / 2**20:+.0f}" if key in before and key in settled else "-")
        rows.append(f"| {title} | {pid} | {_mib(before, key)} | {_mib(peak, key)} | {_mib(after, key)} | "
                    f"{_mib(settled, key)} | {delta} |")
    total = {name: sum(rss.values()) for name, rss in
             (("before", before), ("peak", peak), ("after", after), ("settled", settled))}
    rows.append(f"| all | | {total['before'] / 2**20:.0f} | {total['peak'] / 2**20:.0f} | "
                f"{total['after'] / 2**20:.0f} | {total['settled'] / 2**20:.0f} | "
                f"{(total['settled'] - total['before']) / 2**20:+.0f} |")
    return "\n".join(rows)


def _mib(rss: Mapping[tuple[str, int], int], key: tuple[str, int]) -> str:
    return f"{rss[key] / 2**20:.0f}" if key in rss else "-"


def report(args: argparse.Namespace, run: LoadRun, problems: list[str], rss: str, started: datetime) -> str:
    commit = _git("log", "-1", "--format=%h %<(72,trunc)%s").strip() or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no").strip():
        commit += " (with uncommitted changes)"
    verdict = "clean" if not problems else "NOT clean: " + "; ".join(problems)
    return "\n".join([
        f"# Soak: {args.users} users, {args.run_time} s",
        "",
        f"- started {started:%Y-%m-%d %H:%M} UTC against {args.host}, commit {commit}",
        f"- machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        f"- spawn rate {args.spawn_rate}/s, drain up to {args.stop_timeout} s, settle {args.settle} s; "
        f"locust exit {run.exit_code}, {run.wall_s:.0f} s wall",
        f"- verdict: {verdict}",
        "",
        "## Requests",
        "",
        run.table(),
        "",
        "## RSS per process",
        "",
        rss,
        "",
    ])


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="http://127.0.0.1:8000", help="loopback URL of the service")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=1.0, help="users added per second")
    parser.add_argument("--run-time", type=duration_s, default=300, help="e.g. 300, 5m (default 5m)")
    parser.add_argument("--stop-timeout", type=duration_s, default=180,
                        help="seconds in-flight requests get to finish after the run time (default 180)")
    parser.add_argument("--settle", type=duration_s, default=30,
                        help="seconds idle before the last RSS sample (default 30)")
    parser.add_argument("--out", type=Path, help="results folder (default load_tests/results/soak-<UTC time>)")
    args = parser.parse_args(argv)
    args.host = loopback_url(args.host)
    started = datetime.now(UTC)
    out = args.out or REPO / "load_tests" / "results" / f"soak-{started:%Y%m%dT%H%M%SZ}"

    if not healthy(args.host):
        print(f"soak: {args.host}/health does not answer 200; start the service (scripts/serve)", file=sys.stderr)
        return 2
    before = serve_processes()
    if not before:
        print("soak: no ray::Serve* process on this machine; is the service running here?", file=sys.stderr)
        return 2
    print(f"soak: {args.users} users, {args.run_time} s against {args.host}; results in {out}", flush=True)
    with PeakRss() as sampler:
        sampler.add(before)
        run = run_locust(args.host, out, users=args.users, spawn_rate=args.spawn_rate,
                         run_time_s=args.run_time, stop_timeout_s=args.stop_timeout)
    after = serve_processes()
    sampler.add(after)
    peak = sampler.peak
    time.sleep(args.settle)
    settled = serve_processes()
    sampler.add(settled)
    problems = run.problems() + ([] if healthy(args.host) else [f"{args.host}/health not 200 after the soak"])

    text = report(args, run, problems, rss_table(before, peak, after, settled), started)
    (out / "summary.md").write_text(text)
    (out / "rss.json").write_text(json.dumps(
        {name: [{"process": t, "pid": p, "rss_bytes": b} for (t, p), b in sorted(rss.items())]
         for name, rss in (("before", before), ("peak", peak), ("after", after), ("settled", settled))},
        indent=2) + "\n")
    print(text)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
