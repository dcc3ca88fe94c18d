"""k8s/monitoring: the alert rules pass promtool (their syntax and their own tests in alerts.test.yaml), and the
rules and the dashboard query only metrics that exist, by the names Ray exports them under: the service's own
(each one defined in serve_app/ or deployments/) or Ray Serve's.

promtool comes from Debian's `prometheus` package, which scripts/setup installs; without it these tests fail
rather than skip, so a rule that does not parse never passes unnoticed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "k8s" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "dashboard.json"
SOURCES = (REPO / "serve_app", REPO / "deployments")

# The service's metrics, as defined with ray.serve.metrics: name -> (kind, its own tag keys).
CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    "transcription_requests": ("counter", ("route", "response_format", "outcome", "status")),
    "transcription_audio_seconds": ("counter", ("route",)),
    "transcription_stage_seconds": ("histogram", ("stage",)),
    "transcription_stage_rtf": ("histogram", ("stage",)),
    "transcription_queued_audio_seconds": ("gauge", ()),
    "transcription_expected_wait_seconds": ("gauge", ()),
    "transcription_max_queue_wait_seconds": ("gauge", ()),
    "transcription_model_memory_bytes": ("gauge", ()),
    "transcription_gpu_memory_total_bytes": ("gauge", ()),
    "transcription_models_loaded": ("gauge", ()),
    "transcription_teardown_residue_bytes": ("gauge", ()),
    "transcription_teardown_residue_budget_bytes": ("gauge", ()),
    "transcription_teardown_seconds": ("gauge", ()),
    "transcription_model_unloads": ("counter", ("reason",)),
    "transcription_chunk_wait_seconds": ("histogram", ()),
    "transcription_jobs_submitted": ("counter", ("task",)),
    "transcription_jobs_finished": ("counter", ("task", "state")),
    "transcription_jobs_running": ("gauge", ()),
    "transcription_job_audio_seconds": ("counter", ("task",)),
    "transcription_job_duration_seconds": ("histogram", ("task", "state")),
}
# The values the service gives its enumerated tags.
TAG_VALUES: dict[str, set[str]] = {
    "route": {"transcriptions", "translations"},
    "response_format": {"json", "text", "srt", "verbose_json", "vtt", "diarized_json", ""},
    "outcome": {"ok", "client_error", "shed", "server_error"},
    "status": {"200", "400", "401", "408", "413", "415", "422", "503", "500"},
    "stage": {"decode", "vad", "asr", "alignment", "diarization"},
    "reason": {"evicted", "idle", "removed", "replaced", "shutdown"},
    "task": {"transcribe", "translate"},
    "state": {"succeeded", "failed", "cancelled", "retried", "released"},
}
# Serve tags every replica metric with these; Ray every metric with NodeAddress (the node's IP) and the rest.
SERVE_TAGS = {"application", "deployment", "replica"}
RAY_TAGS = {"NodeAddress", "WorkerId", "SessionName", "Version", "Component"}
# Ray Serve's own metrics that the rules and the dashboard use, as Ray 2.60 exports them, with their labels
# (scraped from a Serve app's node metrics port).
RAY_SERVE: dict[str, set[str]] = {
    "ray_serve_deployment_replica_starts_total": SERVE_TAGS,
    "ray_serve_deployment_replica_healthy": SERVE_TAGS,
    "ray_serve_health_check_failures_total": SERVE_TAGS,
    "ray_serve_deployment_status": {"application", "deployment"},
    "ray_serve_autoscaling_target_replicas": {"application", "deployment"},
    "ray_serve_deployment_queued_queries": {"application", "deployment", "handle", "actor_id"},
    "ray_serve_num_http_requests_total": {"application", "route", "method", "status_code"},
    "ray_serve_num_http_error_requests_total": {"application", "route", "method", "error_code"},
    **{f"ray_serve_http_request_latency_ms{suffix}": {"application", "route", "method", "status_code", "le"}
       for suffix in ("_bucket", "_sum", "_count")},
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def exported(name: str, kind: str) -> dict[str, str]:
    """Prometheus names of a ray.serve.metrics metric -> the contract name, as Ray 2.60 exports them: `ray_`
    before the name, `_total` after a counter's, `_bucket`/`_sum`/`_count` after a histogram's."""
    base = f"ray_{name}"
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}[kind]
    return {base + suffix: name for suffix in suffixes}


EXPORTED: dict[str, str] = {series: name for name, (kind, _) in CONTRACT.items() for series in exported(name, kind)}


def labels_of(metric: str) -> set[str]:
    if metric in RAY_SERVE:
        return RAY_SERVE[metric] | RAY_TAGS
    tags = set(CONTRACT[EXPORTED[metric]][1]) | SERVE_TAGS | RAY_TAGS
    return tags | {"le"} if metric.endswith("_bucket") else tags


# --- reading PromQL ------------------------------------------------------------------------------------

_KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Grafana sends it."""
    expr = re.sub(r"\$__\w+", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before, after = text[:match.start()], text[match.end():].lstrip()
        if (before and (before[-1].isdigit() or before[-1] == ".")) or after.startswith("("):
            continue  # a duration's unit, a number's exponent, a function or an aggregation
        if match.group(0).lower() not in _KEYWORDS:
            names.add(match.group(0))
    return names


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    """The dashboard's panels, rows' collapsed panels included; rows themselves are layout."""
    out: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        out.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return out


def queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every alert rule and every dashboard query, Grafana's variables replaced."""
    for rule in alert_rules():
        yield f"alert {rule['alert']}", rule["expr"]
    for panel in panels():
        for target in panel["targets"]:
            yield f"panel {panel['title']!r} {target['refId']}", grafana_to_promql(target["expr"])


def template_metrics() -> Iterator[str]:
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*\w+\s*\)", query)
            assert match, f"variable {variable['name']}: {query!r} is not label_values(metric, label)"
            yield match.group(1)


def test_metric_names_are_read_from_promql() -> None:
    expr = ('sum by (le, stage) (rate(ray_transcription_stage_seconds_bucket{stage="asr"}[5m])) '
            '/ on (stage) group_left max(ray_b offset 15m) > 1e3 and bool ray_c unless histogram_quantile(0.9, x)')
    assert metric_names(expr) == {"ray_transcription_stage_seconds_bucket", "ray_b", "ray_c", "x"}


# --- promtool -----------------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: run scripts/setup (it installs Debian's prometheus package, which "
                    "has promtool)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=MONITORING)


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_promtool_tests() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL (checked by promtool as a recording rule)."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr}
             for i, (where, expr) in enumerate(queries()) if where.startswith("panel")]
    path = tmp_path / "dashboard_queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the rules ----------------------------------------------------------------------------------------


def test_every_alert_says_how_bad_and_what_to_do() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"].split()) >= 12, rule["alert"]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']}: no case where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']}: no case where it does not"


# --- names and labels -----------------------------------------------------------------------------------


def test_queries_read_only_exported_metrics() -> None:
    known = set(EXPORTED) | set(RAY_SERVE)
    for where, expr in queries():
        names = metric_names(expr)
        assert names, f"{where}: reads no metric"
        assert names <= known, f"{where}: {sorted(names - known)} are not exported by the service or Ray Serve"
    for metric in template_metrics():
        assert metric in known, f"dashboard variable reads {metric}, which nothing exports"


def test_selectors_use_labels_and_values_that_exist() -> None:
    for where, expr in queries():
        names = metric_names(expr)
        for metric, matchers in _SELECTOR.findall(expr):
            for label, op, value in _MATCHER.findall(matchers):
                assert label in labels_of(metric), f"{where}: {metric} has no label {label}"
                if metric in EXPORTED and label in TAG_VALUES:
                    values = TAG_VALUES[label]
                    ok = (value in values) if op in ("=", "!=") else any(re.fullmatch(value, v) for v in values)
                    assert ok, f"{where}: {label}{op}{value!r} matches none of {sorted(values)}"
        allowed = set().union(*(labels_of(name) for name in names))
        for clause in _GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in clause.split(","))):
                assert label in allowed, f"{where}: groups by {label}, which none of {sorted(names)} has"


def test_dashboard_shows_every_metric_of_the_service() -> None:
    shown = {EXPORTED[name] for where, expr in queries() if where.startswith("panel")
             for name in metric_names(expr) if name in EXPORTED}
    assert shown == set(CONTRACT), f"not on the dashboard: {sorted(set(CONTRACT) - shown)}"


def test_every_metric_of_the_service_is_defined_in_its_code() -> None:
    """Each name of the contract is given to ray.serve.metrics somewhere in serve_app/ or deployments/."""
    code = "\n".join(path.read_text() for source in SOURCES for path in sorted(source.rglob("*.py")))
    missing = [name for name in CONTRACT if not re.search(rf"""["']{name}["']""", code)]
    assert not missing, f"defined nowhere in serve_app/ or deployments/: {missing}"


# --- the dashboard --------------------------------------------------------------------------------------


def _datasources(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)


def test_dashboard_panels_have_titles_and_queries() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["title"] and board["uid"]
    for panel in board["panels"]:
        assert panel.get("title", "").strip(), f"panel {panel.get('id')} has no title"
    assert panels()
    for panel in panels():
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], f"panel {panel['title']!r}: an empty query"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_dashboard_data_source_is_its_variable() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]
    # Nowhere a fixed data source: no uid but the variable, no import-time input.
    assert all(value == DATASOURCE for value in _datasources(board["panels"]))
    assert all(value == DATASOURCE for value in _datasources(board["templating"]))
    assert "__inputs" not in board
