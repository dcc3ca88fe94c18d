#!/usr/bin/env bash
# Headless, bounded Locust run against the service on this machine (loopback only), with CSV stats.
#
#   scripts/serve &                      # the service on http://127.0.0.1:8000 (or a port-forward to a cluster)
#   load_tests/run_local.sh              # 4 users, 1 new user/s, 60 s
#   LOAD_TEST_USERS=8 LOAD_TEST_RUN_TIME=5m load_tests/run_local.sh
#
# Settings (environment): LOAD_TEST_HOST (default http://127.0.0.1:8000; loopback addresses only),
# LOAD_TEST_USERS (4), LOAD_TEST_SPAWN_RATE (1), LOAD_TEST_RUN_TIME (60s), LOAD_TEST_STOP_TIMEOUT (120:
# seconds in-flight requests get to finish once the run time is up), LOAD_TEST_OUT (results folder,
# default load_tests/results/<UTC time>), LOAD_TEST_USER_CLASSES (the locustfile's user classes to run,
# space-separated: "JobUser", "TranscriptionUser JobUser"; default all, by weight), plus the locustfile's
# own (LOAD_TEST_AUDIO, LOAD_TEST_API_KEY, LOAD_TEST_JOB_REPEAT, ...).
# Exit status: Locust's - 1 if any request failed (shed requests are not failures).
set -euo pipefail
cd "$(dirname "$0")/.."

host=${LOAD_TEST_HOST:-http://127.0.0.1:8000}
users=${LOAD_TEST_USERS:-4}
spawn_rate=${LOAD_TEST_SPAWN_RATE:-1}
run_time=${LOAD_TEST_RUN_TIME:-60s}
stop_timeout=${LOAD_TEST_STOP_TIMEOUT:-120}
out=${LOAD_TEST_OUT:-load_tests/results/$(date -u +%Y%m%dT%H%M%SZ)}
read -r -a user_classes <<< "${LOAD_TEST_USER_CLASSES:-}"

# This script only ever loads this machine. A cluster is reached through `kubectl port-forward`, which
# listens on loopback too (see load_tests/README.md).
case "$host" in
  http://127.0.0.1:*|http://127.0.0.1|http://localhost:*|http://localhost|http://\[::1\]:*|http://\[::1\]) ;;
  *) echo "run_local.sh: LOAD_TEST_HOST must be a loopback URL (http://127.0.0.1:PORT), not $host" >&2; exit 2 ;;
esac

locust=.venv/bin/locust
[ -x "$locust" ] || { echo "run_local.sh: $locust not found; install the load extra: .venv/bin/pip install -e '.[load]'" >&2; exit 2; }

# Fail fast, with a clear message, if nothing answers.
if ! .venv/bin/python - "$host" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/health", timeout=10) as r:
        sys.exit(0 if r.status == 200 else 1)
except OSError as exc:
    print(f"run_local.sh: {sys.argv[1]}/health: {exc}", file=sys.stderr)
    sys.exit(1)
PY
then
  echo "run_local.sh: the service at $host is not healthy; start it with scripts/serve (or port-forward)" >&2
  exit 2
fi

mkdir -p "$out"
echo "run_local.sh: $users users, spawn rate $spawn_rate/s, $run_time against $host; results in $out"
status=0
LOAD_TEST_SUMMARY_PATH="$out/summary.json" "$locust" -f load_tests/locustfile.py --headless \
  --host "$host" --users "$users" --spawn-rate "$spawn_rate" --run-time "$run_time" \
  --stop-timeout "$stop_timeout" \
  --csv "$out/stats" --html "$out/report.html" \
  --logfile "$out/locust.log" --loglevel INFO --only-summary ${user_classes[@]+"${user_classes[@]}"} || status=$?
echo "run_local.sh: $out/summary.json (the final figures), stats_stats.csv (per request kind)," \
     "stats_failures.csv, stats_exceptions.csv, stats_stats_history.csv, report.html, locust.log"
exit "$status"
