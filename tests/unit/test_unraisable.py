"""An exception raised in `__del__` fails the test it was raised in, instead of being printed and ignored.

Each test runs an inner pytest session (pytester) with this repository's pytest configuration
(pyproject.toml) and its root conftest (tests/conftest.py, loaded as a plugin), on a test file written here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]

# Stand-ins that say they live in one of our packages and in a third-party one: the conftest guard
# tells them apart by module.
INNER = '''
import threading

import pytest


class Ours:
    def __del__(self):
        raise RuntimeError("ours: teardown failed")


class Theirs:
    def __del__(self):
        raise RuntimeError("theirs: teardown failed")


Ours.__module__ = Ours.__del__.__module__ = "deployments.stand_in"
Theirs.__module__ = Theirs.__del__.__module__ = "thirdparty.stand_in"


@pytest.fixture
def drops_ours_at_teardown():
    yield
    Ours()


def test_ours_in_the_test():
    Ours()


def test_ours_on_another_thread():
    thread = threading.Thread(target=Ours)
    thread.start()
    thread.join()


def test_ours_in_a_fixture_teardown(drops_ours_at_teardown):
    pass


def test_theirs():
    Theirs()


def test_nothing_raised():
    pass
'''


def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str) -> pytest.RunResult:
    # The inner guard passes each unraisable exception on to the hook it found: this session's, unless
    # replaced here. Whatever the inner session does not handle stays out of this one.
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    pytester.makepyfile(test_inner=INNER)
    return pytester.runpytest_inprocess(
        "-c", str(REPO / "pyproject.toml"), "--rootdir", str(pytester.path), "-p", "tests.conftest",
        "-p", "no:cacheprovider", *args, "test_inner.py")


# A test whose fixture fails at teardown counts once as passed (its call) and once as an error.


def test_the_project_configuration_fails_every_raising_del(pytester, monkeypatch):
    """filterwarnings has no ignore for PytestUnraisableExceptionWarning: ours and third-party ones fail."""
    result = run_inner(pytester, monkeypatch)
    result.assert_outcomes(passed=2, failed=3, errors=1)
    result.stdout.fnmatch_lines(["*RuntimeError: ours: teardown failed*", "*RuntimeError: theirs: teardown failed*"])


def test_the_guard_fails_ours_when_the_warning_is_ignored(pytester, monkeypatch):
    """With the warning ignored, the conftest guard still fails ours (and only ours)."""
    result = run_inner(pytester, monkeypatch, "-W", "ignore::pytest.PytestUnraisableExceptionWarning")
    result.assert_outcomes(passed=3, failed=2, errors=1)
    result.stdout.fnmatch_lines(["*unraisable exception from our code during call*",
                                 "*RuntimeError: ours: teardown failed*"])
    assert "theirs: teardown failed" not in result.stdout.str()


def test_the_guard_works_without_pytests_unraisable_plugin(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, "-p", "no:unraisableexception")
    result.assert_outcomes(passed=3, failed=2, errors=1)
    result.stdout.fnmatch_lines(["*unraisable exception from our code during teardown*"])
