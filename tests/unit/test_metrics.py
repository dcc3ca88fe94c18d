"""serve_app.metrics: how a request's answer is counted (the alerts' error and shed rates read it)."""

from __future__ import annotations

import pytest

from serve_app.metrics import outcome


@pytest.mark.parametrize(("status", "shed", "expected"), [
    (200, False, "ok"), (400, False, "client_error"), (401, False, "client_error"), (413, False, "client_error"),
    (503, True, "shed"), (503, False, "server_error"), (500, False, "server_error")])
def test_outcome(status, shed, expected):
    assert outcome(status, shed) == expected
