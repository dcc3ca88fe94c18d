"""A minute of the load test's mixed requests (load_tests/locustfile.py) against the package's service.

Its file name sorts it after the other modules here, so their assertions meet a quiet service. Every
request must be answered correctly or shed (503 with Retry-After); some must be answered; and the
service must be healthy afterwards.
"""

from __future__ import annotations

import pytest

from load_tests.headless import run_locust

pytestmark = pytest.mark.serve

# Two cores serve these users and run Locust: enough to queue requests at every deployment, and the
# whole test stays near two minutes (a diarized request on the 17 s clip takes several seconds when busy).
USERS = 6
SPAWN_RATE = 2
RUN_TIME_S = 60
DRAIN_S = 120  # in-flight requests finish after the run time; a user still busy then is stopped
REQUEST_TIMEOUT_S = 120  # a request that long is a failure, not a wait


def test_a_minute_of_mixed_load_fails_no_request(base_url, client, tmp_path):
    run = run_locust(base_url, tmp_path / "locust", users=USERS, spawn_rate=SPAWN_RATE, run_time_s=RUN_TIME_S,
                     stop_timeout_s=DRAIN_S, request_timeout_s=REQUEST_TIMEOUT_S)
    print(f"\n{USERS} users, {RUN_TIME_S} s against {base_url}, {run.wall_s:.0f} s wall:\n{run.table()}")
    problems = run.problems()
    assert not problems, "\n".join(problems)
    assert client.get("/health").status_code == 200
