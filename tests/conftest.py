"""Settings every test run needs: no telemetry, no model hub, no network; and no silent errors in `__del__`."""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import traceback
from collections.abc import Generator

import pytest

# Set before any test module imports pyannote, huggingface_hub or transformers.
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Jobs of every service a test starts are kept in a folder of this run's own (replicas inherit it), never in
# the user's ~/.local/share: a job a test left unfinished would be resumed by the next service started.
os.environ.setdefault("TRANSCRIPTION_DATA_DIR", tempfile.mkdtemp(prefix="transcription-test-data-"))


# --- unraisable exceptions from our code fail the test ------------------------------------------------
# Python prints an exception raised in `__del__` (or in a weakref callback, a generator's close) and
# goes on: for a holder or a replica that is a teardown that silently did not happen. pytest turns each
# one into a PytestUnraisableExceptionWarning, which `filterwarnings = ["error"]` makes a failure, but
# only while warnings are errors: a `-W ignore`, a third-party filter that matches too much or
# `-p no:unraisableexception` lets ours through, and pytest reports one only at the end of a phase that
# did not already fail. This hook sees every unraisable exception as it is raised, on any thread, keeps
# the ones our packages raised, and fails the phase (setup, call, teardown) they were raised in.

OUR_PACKAGES = frozenset({"core", "deployments", "serve_app"})
_ours_pending = pytest.StashKey[list[str]]()


def _is_ours(unraisable: sys.UnraisableHookArgs) -> bool:
    """Whether the object that raised (a `__del__`, a callback) or any frame on the way lives in our packages."""
    try:
        modules = [getattr(unraisable.object, "__module__", None)]
    except Exception:  # noqa: BLE001 - an object whose attributes raise is judged by its frames alone
        modules = []
    tb = unraisable.exc_traceback
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__"))
        tb = tb.tb_next
    return any(isinstance(m, str) and m.partition(".")[0] in OUR_PACKAGES for m in modules)


def _describe(unraisable: sys.UnraisableHookArgs) -> str:
    where = f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}"
    return where + "\n" + "".join(
        traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))


@pytest.hookimpl(trylast=True)  # after pytest's own unraisableexception plugin has installed its hook
def pytest_configure(config: pytest.Config) -> None:
    pending: list[str] = []
    config.stash[_ours_pending] = pending
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        try:
            if _is_ours(unraisable):
                pending.append(_describe(unraisable))
        finally:
            previous(unraisable)  # pytest's hook still turns it into a warning, with its traceback

    def restore() -> None:
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous

    sys.unraisablehook = hook
    config.add_cleanup(restore)


def _take_pending(config: pytest.Config) -> str | None:
    pending = config.stash.get(_ours_pending, None)
    if not pending:
        return None
    text = "\n".join(pending)
    pending.clear()
    return text


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    text = _take_pending(item.config)
    if text is not None:
        title = f"unraisable exception from our code during {report.when}"
        if report.failed:
            report.sections.append((title, text))
        else:
            report.outcome = "failed"
            report.longrepr = f"{title}\n{text}"
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Objects freed only by the garbage collector after the last teardown fail the run too."""
    gc.collect()
    text = _take_pending(session.config)
    if text is None:
        return
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print(text, file=sys.stderr)
    else:
        reporter.write_sep("=", "unraisable exception from our code after the last test", red=True)
        reporter.write_line(text)
