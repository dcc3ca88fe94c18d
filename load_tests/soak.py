"""Soak: a long headless Locust run against the service on this machine, with each service process's memory
before, during and after.

    scripts/serve &                     # wait for "Transcription service is up"
    .venv/bin/python -m load_tests.soak --users 20 --run-time 5m

The service's processes are found by the titles Ray gives them: ray::ServeController, ray::ProxyActor and
ray::ServeReplica:<app>:<deployment> (one per replica); run one Ray cluster on the machine while it soaks.

A warm-up run (same users, --warm-up long) comes first, so that "before" is a service that has already
served this mix: what the models and allocators take on first use is not counted as growth. RSS is then
sampled before the run, every few seconds during it (mid-run: the sample nearest half the run time; peak:
the highest of all samples), right after it and once more after a settle time. What it prints is also
written to summary.md in the results folder, with every sample in rss.json, beside Locust's CSVs.
Exit status: 0 if both runs are clean (see LoadRun.problems), 1 if not, 2 if the service is not healthy.
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


class RssSampler:
    """Samples serve_processes() every `period_s` on a thread while entered; `series` holds (seconds since
    the sampler was made, sample) for those and for whatever `take` adds."""

    def __init__(self, period_s: float = 5.0) -> None:
        self.period_s = period_s
        self.series: list[tuple[float, Rss]] = []
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def elapsed_s(self) -> float:
        return time.monotonic() - self._t0

    def take(self) -> Rss:
        sample = serve_processes()
        self.series.append((self.elapsed_s(), sample))
        return sample

    def nearest(self, t_s: float) -> Rss:
        return min(self.series, key=lambda s: abs(s[0] - t_s))[1]

    def peak(self) -> Rss:
        peak: Rss = {}
        for _t, sample in self.series:
            for key, rss in sample.items():
                peak[key] = max(rss, peak.get(key, 0))
        return peak

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.take()


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


def rss_table(columns: Mapping[str, Rss], since: str) -> str:
    """Markdown: each process's RSS in MiB at each named point, and its change from point `since` to the
    last. A process missing at a point (a replaced replica) shows '-' there."""
    names = list(columns)
    first, last = columns[since], columns[names[-1]]
    rows = ["| process | pid | " + " | ".join(f"{n} MiB" for n in names) + f" | {names[-1]} - {since} MiB |",
            "|---|---:|" + "---:|" * (len(names) + 1)]
    for key in sorted({k for rss in columns.values() for k in rss}):
        change = f"{(last[key] - first[key]) / 2**20:+.0f}" if key in first and key in last else "-"
        rows.append(f"| {key[0]} | {key[1]} | " + " | ".join(_mib(rss, key) for rss in columns.values())
                    + f" | {change} |")
    totals = {name: sum(rss.values()) for name, rss in columns.items()}
    rows.append("| all | | " + " | ".join(f"{t / 2**20:.0f}" for t in totals.values())
                + f" | {(totals[names[-1]] - totals[since]) / 2**20:+.0f} |")
    return "\n".join(rows)


def _mib(rss: Mapping[tuple[str, int], int], key: tuple[str, int]) -> str:
    return f"{rss[key] / 2**20:.0f}" if key in rss else "-"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout


def report(args: argparse.Namespace, warm_up: LoadRun | None, run: LoadRun, problems: list[str], rss: str,
           started: datetime) -> str:
    commit = _git("log", "-1", "--format=%h %<(72,trunc)%s").strip() or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no").strip():
        commit += " (with uncommitted changes)"
    verdict = "clean" if not problems else "NOT clean: " + "; ".join(problems)
    warm = (f"warm-up {args.warm_up} s: {warm_up.total.requests if warm_up.total else 0} requests, "
            f"{warm_up.succeeded} succeeded, {warm_up.shed} shed, {len(warm_up.problems())} problems"
            if warm_up else "no warm-up")
    return "\n".join([
        f"# Soak: {args.users} users, {args.run_time} s",
        "",
        f"- started {started:%Y-%m-%d %H:%M} UTC against {args.host}, commit {commit}",
        f"- machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        f"- {warm}",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="http://127.0.0.1:8000", help="loopback URL of the service")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=1.0, help="users added per second")
    parser.add_argument("--run-time", type=duration_s, default=300, help="e.g. 300, 5m (default 5m)")
    parser.add_argument("--warm-up", type=duration_s, default=60,
                        help="seconds of the same load before the first RSS sample; 0: none (default 60)")
    parser.add_argument("--stop-timeout", type=duration_s, default=180,
                        help="seconds in-flight requests get to finish after each run (default 180)")
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
    sampler = RssSampler()
    cold = sampler.take()
    if not cold:
        print("soak: no ray::Serve* process on this machine; is the service running here?", file=sys.stderr)
        return 2
    warm_up = None
    if args.warm_up:
        print(f"soak: warm-up, {args.users} users, {args.warm_up} s", flush=True)
        warm_up = run_locust(args.host, out / "warm-up", users=args.users, spawn_rate=args.spawn_rate,
                             run_time_s=args.warm_up, stop_timeout_s=args.stop_timeout)
    print(f"soak: {args.users} users, {args.run_time} s against {args.host}; results in {out}", flush=True)
    before = sampler.take()
    run_started = sampler.elapsed_s()
    with sampler:
        run = run_locust(args.host, out, users=args.users, spawn_rate=args.spawn_rate,
                         run_time_s=args.run_time, stop_timeout_s=args.stop_timeout)
    after = sampler.take()
    time.sleep(args.settle)
    settled = sampler.take()
    problems = [*(f"warm-up: {p}" for p in (warm_up.problems() if warm_up else [])), *run.problems()]
    if not healthy(args.host):
        problems.append(f"{args.host}/health not 200 after the soak")

    columns = {**({"cold": cold} if warm_up else {}), "before": before,
               "mid-run": sampler.nearest(run_started + args.run_time / 2), "peak": sampler.peak(),
               "after": after, "settled": settled}
    text = report(args, warm_up, run, problems, rss_table(columns, since="before"), started)
    (out / "summary.md").write_text(text)
    (out / "rss.json").write_text(json.dumps({
        "run_started_s": round(run_started, 1),
        "samples": [{"t_s": round(t, 1), "processes": [{"process": k[0], "pid": k[1], "rss_bytes": b}
                                                       for k, b in sorted(sample.items())]}
                    for t, sample in sampler.series]}, indent=2) + "\n")
    print(text)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
