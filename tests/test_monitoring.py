"""deploy/monitoring/: the alert rules pass promtool and fire when they should, and the
dashboard and the rules use only metrics (and labels) the code exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from shared import events, serving, webhooks
from shared import status as st
from shared.metrics import CAUSES, Metrics, metric_names

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboard.json"
RULE_TESTS = ROOT / "tests" / "testdata" / "monitoring" / "alerts_test.yaml"
POD_MONITOR = MONITORING / "podmonitor.yaml"
KNATIVE_SERVICES = ROOT / "knative" / "services.yaml"

#: The sections of docs/monitoring.md the alerts link to. The guide's headings make these
#: anchors: renaming one breaks every alert already routed to an operator's pager.
RUNBOOK_ANCHORS = {
    "JetBridgeBuildsFailingOnPodErrors": "builds-failing-on-pod-errors",
    "JetBridgePodsNotStarting": "pods-not-starting",
    "JetBridgePodStartupSlow": "pod-startup-slow",
    "JetBridgeStoreNearlyFull": "store-nearly-full",
    "JetBridgeStoreFull": "store-nearly-full",
    "JetBridgeReaperFailing": "reaper-failing",
    "JetBridgeReaperNotRunning": "reaper-not-running",
    "JetBridgeEventsErroring": "events-erroring",
    "JetBridgeEventsNotSent": "events-not-sent",
}
#: Labels a scrape adds to every series (prometheus-operator's PodMonitor relabelling).
SCRAPE_LABELS = {"namespace", "pod", "job", "instance", "container", "service", "endpoint"}
#: Grafana's variables, replaced by what they stand for so the query parses.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)")
#: The closed sets some labels take their values from, as the code fills them.
LABEL_VALUES = {
    "cause": set(CAUSES),
    "status": set(st.STEP_TERMINAL | st.BUILD_TERMINAL),
    "outcome": {"ok", "failed"},
    "error": {"permanent", "temporary", "unexpected"},
    "type": set(events.POD_EVENTS)
    | {events.BUILD_REQUESTED, events.STEP_READY, events.STEP_FINISHED, events.BUILD_FINISHED}
    | {events.PING, "webhook", "other", *webhooks.source_event_types()},
}
REQUIRE_TOOLS = os.environ.get("CI") == "true" or os.environ.get("JETBRIDGE_REQUIRE_TOOLS") == "1"


def promtool() -> str:
    """The ``promtool`` binary; missing, the test fails in CI and is skipped elsewhere."""
    found = shutil.which("promtool")
    if found is None:
        message = (
            "promtool is not installed (Debian: `apt-get install prometheus`; .ci/run installs it)"
        )
        if REQUIRE_TOOLS:
            pytest.fail(message + " and CI=true or JETBRIDGE_REQUIRE_TOOLS=1 needs it")
        pytest.skip(message)
    return found


def rule_object() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def alerts() -> list[dict[str, Any]]:
    return [r for g in rule_object()["spec"]["groups"] for r in g["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", ())


def queries() -> Iterator[tuple[str, str]]:
    """Every PromQL expression of the rules and the dashboard, with where it is."""
    for rule in alerts():
        yield f"alert {rule['alert']}", rule["expr"]
    for panel in panels():
        for target in panel.get("targets", ()):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["definition"])
            assert found, variable["definition"]
            yield f"variable {variable['name']}", found[1]


def selectors(expr: str) -> list[Any]:
    """The vector selectors of a PromQL expression, parsed by a real PromQL parser."""
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(GRAFANA_INTERVALS.sub("5m", expr)), visit)
    return found


def exported() -> tuple[set[str], dict[str, set[str]]]:
    """Every sample name the code exports, and each metric's label names."""
    metrics = Metrics()

    class Usage:
        state, artifacts, bytes = "ready", 1, 1

    metrics.watch_store(lambda: [Usage()], ROOT)
    labels: dict[str, set[str]] = {
        "jetbridge_store_artifacts": {"state"},
        "jetbridge_store_bytes": {"state"},
    }
    names = metric_names(metrics.registry)
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for name in names:
                if name == metric._name or name.startswith(metric._name + "_"):
                    labels[name] = set(metric._labelnames) | (
                        {"le"} if name.endswith("_bucket") else set()
                    )
    return names, labels


def test_the_rules_pass_promtool(tmp_path: Path) -> None:
    tool = promtool()
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_object()["spec"], sort_keys=False))
    checked = subprocess.run(
        [tool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_each_alert_fires_on_the_series_that_should_fire_it(tmp_path: Path) -> None:
    tool = promtool()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_object()["spec"], sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yaml")
    tested = subprocess.run(
        [tool, "test", "rules", "alerts_test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tested_alerts = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested_alerts == set(RUNBOOK_ANCHORS), "every alert has a unit test"


def test_the_rule_object_is_a_prometheus_rule() -> None:
    rule = rule_object()
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["name"] == "jetbridge"


def test_every_alert_has_a_severity_and_a_stable_runbook() -> None:
    found = {a["alert"]: a for a in alerts()}
    assert set(found) == set(RUNBOOK_ANCHORS)
    for name, alert in found.items():
        assert alert["labels"]["severity"] in ("info", "warning", "critical"), name
        assert alert["annotations"]["runbook_url"] == f"docs/monitoring.md#{RUNBOOK_ANCHORS[name]}"
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        assert "for" in alert, f"{name} fires on one bad scrape"


def test_every_metric_and_label_used_is_one_the_code_exports() -> None:
    names, labels = exported()
    used = 0
    for where, expr in queries():
        for selector in selectors(expr):
            used += 1
            assert selector.name in names, f"{where}: {selector.name} is not exported"
            matchers = selector.matchers.matchers if selector.matchers else []
            for matcher in matchers:
                allowed = labels.get(selector.name, set()) | SCRAPE_LABELS
                assert matcher.name in allowed, f"{where}: {selector.name} has no {matcher.name}"
                if matcher.name in LABEL_VALUES and not matcher.value.startswith("$"):
                    values = set(matcher.value.split("|"))
                    unknown = values - LABEL_VALUES[matcher.name]
                    assert not unknown, f"{where}: {matcher.name} is never {sorted(unknown)}"
    assert used > 40  # the parser found the selectors: this test can see a wrong name


def test_a_wrong_metric_name_would_be_caught() -> None:
    names, _ = exported()
    (selector,) = selectors('sum(rate(jetbridge_pod_failure_total{cause="oom"}[$__rate_interval]))')
    assert selector.name not in names


def test_the_dashboard_is_provisionable() -> None:
    board = dashboard()
    assert board["uid"] == "jetbridge"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for variable in re.findall(r"\$(\w+)", target["expr"]):
                assert variable.startswith("__") or variable in variables, variable
    titles = " ".join(p["title"].lower() for p in panels())
    for topic in ("builds", "step duration", "pod startup", "store", "reaper", "event errors"):
        assert topic in titles, f"the dashboard shows {topic}"


def test_the_pod_monitor_scrapes_every_function_where_it_serves_metrics() -> None:
    monitor = yaml.safe_load(POD_MONITOR.read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    # Knative names the user container's port `user-port` in every revision's pod.
    assert (endpoint["port"], endpoint["path"]) == ("user-port", serving.METRICS_PATH)
    wanted = monitor["spec"]["selector"]["matchLabels"]
    services = [
        doc
        for doc in yaml.safe_load_all(KNATIVE_SERVICES.read_text())
        if doc and doc.get("kind") == "Service"
    ]
    assert {s["metadata"]["name"] for s in services} >= {"trigger", "step-runner", "reaper"}
    for service in services:
        template = service["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert wanted.items() <= labels.items(), service["metadata"]["name"]
        (container,) = template["spec"]["containers"]
        assert [p["containerPort"] for p in container["ports"]] == [8080]
