"""The Helm chart, rendered by the real ``helm`` and checked as the cluster would check it.

Each value set in ``tests/testdata/chart/*.yaml`` is linted (``helm lint --strict``) and
rendered (``helm template``); every object is checked against Kubernetes' schemas for
1.30 to 1.37, Knative's or the Prometheus Operator's, every pod against the "restricted"
standard, the Role against the verbs the runtime calls, the Triggers against the event
types the functions handle, the monitoring objects against deploy/monitoring/.
Each file in ``tests/testdata/chart/invalid/`` must fail rendering with the message its
first line names. ``make chart-check`` runs this file and tests/test_knative.py.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import events, serving
from shared.podspec import MANAGED_BY
from shared.runtime.kubernetes import RBAC_RULES
from tests.golden import check_golden
from tests.kubeschema import VERSIONS, schema_errors
from tests.manifests import (
    ROOT,
    crd_errors,
    documents,
    env_of,
    ident,
    is_knative,
    knative_errors,
    pod_specs,
    run,
    settings_env_names,
    tool,
)
from tests.pss import violations

CHART = ROOT / "deploy" / "chart"
CASES_DIR = ROOT / "tests" / "testdata" / "chart"
CASES = sorted(p.stem for p in CASES_DIR.glob("*.yaml"))
INVALID = sorted(p.stem for p in (CASES_DIR / "invalid").glob("*.yaml"))
RELEASE, NAMESPACE = "jetbridge", "ci"
#: deploy/monitoring/, and the chart's copies of it (the chart can read only its own files).
MONITORING = ROOT / "deploy" / "monitoring"
CHART_FILES = CHART / "files"
MONITORING_FILES = ("dashboard.json", "podmonitor.yaml", "prometheusrule.yaml")

#: Which function each event type must reach, from the types the handlers accept.
ROUTES = {
    events.BUILD_REQUESTED: "trigger",
    events.BUILD_FINISHED: "trigger",
    events.STEP_READY: "step-runner",
    **{t: "step-runner" for t in events.POD_EVENTS},
    events.PING: "reaper",
}


def helm(*args: Any, check: bool = True) -> Any:
    return run([tool("helm"), *args], check=check)


_rendered: dict[str, list[dict[str, Any]]] = {}


def render(case: str) -> list[dict[str, Any]]:
    """The objects ``helm template`` makes of a value set (rendered once per session)."""
    if case not in _rendered:
        done = helm(
            "template", RELEASE, CHART, "--namespace", NAMESPACE, "-f", CASES_DIR / f"{case}.yaml"
        )
        _rendered[case] = documents(done.stdout)
    copy: list[dict[str, Any]] = json.loads(json.dumps(_rendered[case]))
    return copy  # a copy: a test may change what it gets


def function(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """The Knative Service of one function."""
    found = [
        o
        for o in objects
        if is_knative(o)
        and o["kind"] == "Service"
        and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(found) == 1, f"expected one Knative Service for {component}, found {len(found)}"
    return found[0]


def main_container(ksvc: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = ksvc["spec"]["template"]["spec"]["containers"][0]
    return container


def is_operator(obj: dict[str, Any]) -> bool:
    """A Prometheus Operator kind (PodMonitor, PrometheusRule): a CRD, not Kubernetes' own."""
    return str(obj.get("apiVersion", "")).split("/")[0] == "monitoring.coreos.com"


def operator_errors(obj: dict[str, Any]) -> list[str]:
    """What the Prometheus Operator's CRD schema (made strict) finds wrong with ``obj``."""
    return crd_errors("Prometheus Operator", obj)


# ---- helm itself


def test_the_cases_cover_what_the_issue_names() -> None:
    assert {"default", "external-database", "rwo-claim", "ingress", "postgresql-off"} <= set(CASES)
    assert "monitoring" in CASES


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(case: str) -> None:
    done = helm("lint", "--strict", CHART, "-f", CASES_DIR / f"{case}.yaml")
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("case", INVALID)
def test_impossible_values_fail_with_a_clear_message(case: str) -> None:
    path = CASES_DIR / "invalid" / f"{case}.yaml"
    expected = path.read_text().splitlines()[0].removeprefix("# error: ")
    done = helm("template", RELEASE, CHART, "-f", path, check=False)
    assert done.returncode != 0, f"{case} rendered, but it should have failed with: {expected}"
    assert expected in done.stderr


# ---- every object valid where it will be applied


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_kubernetes_objects_are_valid(case: str, version: str) -> None:
    objects = [o for o in render(case) if not is_knative(o) and not is_operator(o)]
    assert objects
    problems = [f"{ident(o)}: {error}" for o in objects for error in schema_errors(o, version)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES)
def test_knative_objects_are_valid(case: str) -> None:
    objects = [o for o in render(case) if is_knative(o)]
    assert {o["kind"] for o in objects} >= {"Service", "Trigger", "PingSource", "ApiServerSource"}
    problems = [f"{ident(o)} {error}" for o in objects for error in knative_errors(o)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES)
def test_prometheus_operator_objects_are_valid(case: str) -> None:
    objects = [o for o in render(case) if is_operator(o)]
    if case == "monitoring":
        assert {o["kind"] for o in objects} == {"PodMonitor", "PrometheusRule"}
    problems = [f"{ident(o)} {error}" for o in objects for error in operator_errors(o)]
    assert not problems, "\n".join(problems)


def test_the_validators_reject_what_the_cluster_would() -> None:
    """Both checks can fail: an unknown field is an error to each."""
    objects = render("default")
    job = next(o for o in objects if o["kind"] == "Job")
    job["spec"]["template"]["spec"]["containers"][0]["commands"] = ["typo"]
    assert any("commands" in e for e in schema_errors(job, VERSIONS[0]))
    ksvc = function(render("ingress"), "reaper")
    ksvc["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert any("volumeMount" in e for e in knative_errors(ksvc))
    monitor = next(o for o in render("monitoring") if o["kind"] == "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "half a minute"
    monitor["spec"]["podMetricsEndpoint"] = []
    errors = operator_errors(monitor)
    assert any("podMetricsEndpoint'" in e for e in errors)
    assert any("half a minute" in e for e in errors)


@pytest.mark.parametrize("case", CASES)
def test_names_fit_and_are_unique(case: str) -> None:
    objects = render(case)
    names = Counter((o["kind"], o["apiVersion"], o["metadata"]["name"]) for o in objects)
    assert [n for n, count in names.items() if count > 1] == []
    assert [n for n in names if len(n[2]) > 63] == []


# ---- pods


@pytest.mark.parametrize("case", CASES)
def test_every_pod_meets_the_restricted_standard(case: str) -> None:
    pods = [(ident(o), spec) for o in render(case) for spec in pod_specs(o)]
    assert len(pods) >= 4
    problems = [f"{where}: {v}" for where, spec in pods for v in violations(spec)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES)
def test_no_chart_pod_looks_like_a_step_pod(case: str) -> None:
    """Step pods are JetBridge's by MANAGED_BY; the ApiServerSource watches only those."""
    for obj in render(case):
        labels = obj["metadata"].get("labels", {})
        assert labels.get(MANAGED_BY) != "jetbridge", ident(obj)
        template = obj.get("spec", {}).get("template", {}).get("metadata", {})
        assert template.get("labels", {}).get(MANAGED_BY) != "jetbridge", ident(obj)


# ---- the functions


def test_each_function_runs_its_entry_point() -> None:
    objects = render("default")
    expected = {
        "trigger": ("functions/trigger/main.py", "handle", "cloudevent"),
        "trigger-webhook": ("functions/trigger/main.py", "webhook", "http"),
        "step-runner": ("functions/step_runner/main.py", "handle", "cloudevent"),
        "reaper": ("functions/reaper/main.py", "handle", "cloudevent"),
    }
    for component, (source, target, signature) in expected.items():
        env = env_of(main_container(function(objects, component)))
        assert env["FUNCTION_SOURCE"]["value"] == source
        assert env["FUNCTION_TARGET"]["value"] == target
        assert env["FUNCTION_SIGNATURE_TYPE"]["value"] == signature


@pytest.mark.parametrize("case", CASES)
def test_functions_set_only_settings_jetbridge_reads(case: str) -> None:
    known = settings_env_names()
    for ksvc in (o for o in render(case) if is_knative(o) and o["kind"] == "Service"):
        for name in env_of(main_container(ksvc)):
            if name.startswith("JETBRIDGE_"):
                assert name in known, f"{ident(ksvc)} sets {name}, which no setting reads"


@pytest.mark.parametrize("case", CASES)
def test_the_claim_is_mounted_by_the_step_runner_and_the_reaper_only(case: str) -> None:
    objects = render(case)
    claims = {
        component: [
            v["persistentVolumeClaim"]["claimName"]
            for v in function(objects, component)["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        for component in ("trigger", "trigger-webhook", "step-runner", "reaper")
    }
    env = env_of(main_container(function(objects, "step-runner")))
    claim = env["JETBRIDGE_STORE_CLAIM"]["value"]
    assert claims == {
        "trigger": [],
        "trigger-webhook": [],
        "step-runner": [claim],
        "reaper": [claim],
    }
    created = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert [o["metadata"]["name"] for o in created] in ([claim], [])
    store_root = env["JETBRIDGE_STORE_ROOT"]["value"]
    mounts = main_container(function(objects, "step-runner"))["volumeMounts"]
    assert {"name": "store", "mountPath": store_root} in mounts


def test_a_read_write_once_claim_pins_pods() -> None:
    objects = render("rwo-claim")
    (claim,) = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["storageClassName"] == "local-path"
    for component in ("step-runner", "reaper"):
        env = env_of(main_container(function(objects, component)))
        assert env["JETBRIDGE_STORE_ACCESS_MODE"]["value"] == "ReadWriteOnce"
    default = env_of(main_container(function(render("default"), "step-runner")))
    assert default["JETBRIDGE_STORE_ACCESS_MODE"]["value"] == "ReadWriteMany"


@pytest.mark.parametrize(
    ("case", "secret", "key"),
    [
        ("default", f"{RELEASE}-postgresql", "postgres-password"),
        ("postgresql-off", f"{RELEASE}-database", "database-url"),
        ("external-database", "jetbridge-cloudsql", "url"),
    ],
    ids=["bundled", "inline-url", "existing-secret"],
)
def test_every_database_user_reads_the_same_secret(case: str, secret: str, key: str) -> None:
    objects = render(case)
    users = [c for o in objects if o["kind"] in ("Service", "Job") for s in pod_specs(o)
             for c in s["containers"] if c["name"] in ("function", "db-upgrade")]  # fmt: skip
    assert len(users) == 5
    for c in users:
        refs = [e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e]
        assert {"name": secret, "key": key} in refs, c["name"]
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    if case != "external-database":  # there the Secret is the operator's own
        assert key in secrets[secret]["data"]


def test_cloud_sql_proxy_runs_beside_every_database_user() -> None:
    objects = render("external-database")
    for component in ("trigger", "trigger-webhook", "step-runner", "reaper"):
        names = [
            c["name"]
            for c in function(objects, component)["spec"]["template"]["spec"]["containers"]
        ]
        assert names == ["function", "cloud-sql-proxy"]
    job = next(o for o in objects if o["kind"] == "Job")
    (proxy,) = job["spec"]["template"]["spec"]["initContainers"]
    assert proxy["restartPolicy"] == "Always"  # a native sidecar: the Job still completes
    assert "my-project:europe-west1:jetbridge" in proxy["args"]


def test_the_migration_job_is_a_hook() -> None:
    job = next(o for o in render("default") if o["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "jetbridge",
        "db",
        "upgrade",
    ]
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert set(hooks) == {"post-install", "pre-upgrade"}


# ---- eventing


@pytest.mark.parametrize("case", ["default", "existing-objects"])
def test_triggers_route_each_event_type_to_its_function(case: str) -> None:
    objects = render(case)
    services = {
        o["metadata"]["name"]: o["metadata"]["labels"]["app.kubernetes.io/component"]
        for o in objects
        if is_knative(o) and o["kind"] == "Service"
    }
    brokers = {o["metadata"]["name"] for o in objects if o["kind"] == "Broker"}
    broker = brokers.pop() if brokers else "default"
    routes = {}
    for t in (o for o in objects if o["kind"] == "Trigger"):
        assert t["spec"]["broker"] == broker
        routes[t["spec"]["filter"]["attributes"]["type"]] = services[
            t["spec"]["subscriber"]["ref"]["name"]
        ]
    assert routes == ROUTES


def test_sources_send_to_the_broker_the_functions_post_to() -> None:
    objects = render("default")
    (broker,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Broker"]
    (pods,) = [o for o in objects if o["kind"] == "ApiServerSource"]
    (ping,) = [o for o in objects if o["kind"] == "PingSource"]
    for source in (pods, ping):
        assert source["spec"]["sink"]["ref"] == {
            "apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": broker,
        }  # fmt: skip
    assert pods["spec"]["mode"] == "Resource"
    assert pods["spec"]["resources"] == [
        {"apiVersion": "v1", "kind": "Pod", "selector": {"matchLabels": {MANAGED_BY: "jetbridge"}}}
    ]
    sink = env_of(main_container(function(objects, "trigger")))["JETBRIDGE_EVENT_SINK"]["value"]
    assert sink.endswith(f"/{NAMESPACE}/{broker}")


# ---- access to the cluster


def rules_of(objects: list[dict[str, Any]], component: str) -> set[tuple[str, str]]:
    (role,) = [
        o for o in objects
        if o["kind"] == "Role" and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]  # fmt: skip
    pairs = set()
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""], "JetBridge uses core-group resources only"
        assert "resourceNames" not in rule
        pairs |= {(v, r) for v in rule["verbs"] for r in rule["resources"]}
    return pairs


@pytest.mark.parametrize("case", ["default", "rwo-claim"])
def test_the_role_grants_exactly_what_the_runtime_calls(case: str) -> None:
    assert rules_of(render(case), "functions") == set(RBAC_RULES)


def test_only_the_step_runner_and_reaper_are_bound_to_the_role() -> None:
    objects = render("default")
    (binding,) = [
        o
        for o in objects
        if o["kind"] == "RoleBinding" and o["roleRef"]["name"].endswith("-functions")
    ]
    (account,) = [s["name"] for s in binding["subjects"]]
    for component in ("step-runner", "reaper"):
        assert (
            function(objects, component)["spec"]["template"]["spec"]["serviceAccountName"]
            == account
        )
    for component in ("trigger", "trigger-webhook"):
        assert (
            function(objects, component)["spec"]["template"]["spec"]["serviceAccountName"]
            != account
        )
    assert rules_of(objects, "pod-events") == {("get", "pods"), ("list", "pods"), ("watch", "pods")}
    assert not any(o["kind"] in ("ClusterRole", "ClusterRoleBinding") for o in objects)


# ---- ingress


def test_ingress_sends_webhooks_to_the_webhook_function() -> None:
    objects = render("ingress")
    (ingress,) = [o for o in objects if o["kind"] == "Ingress"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "ci.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/webhooks/"
    assert (
        path["backend"]["service"]["name"]
        == function(objects, "trigger-webhook")["metadata"]["name"]
    )
    assert ingress["spec"]["tls"] == [
        {"hosts": ["ci.example.com"], "secretName": "ci-example-com-tls"}
    ]
    (mapping,) = [o for o in render("domain-mapping") if o["kind"] == "DomainMapping"]
    assert mapping["metadata"]["name"] == "ci.example.com"
    assert mapping["spec"]["ref"]["name"].endswith("-trigger-webhook")
    assert not [o for o in render("default") if o["kind"] in ("Ingress", "DomainMapping")]


# ---- values: documented, described by the schema, and the two agree


def _param_paths() -> dict[str, str]:
    text = (CHART / "values.yaml").read_text()
    found = re.findall(r"^\s*## @param (\S+) (.+)$", text, re.M)
    duplicates = [p for p, n in Counter(p for p, _ in found).items() if n > 1]
    assert not duplicates, f"documented twice: {duplicates}"
    return dict(found)


def _value_paths(values: Any, prefix: str = "") -> set[str]:
    paths = set()
    if isinstance(values, dict):
        for key, value in values.items():
            path = f"{prefix}{key}"
            paths.add(path)
            paths |= _value_paths(value, path + ".")
    return paths


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths.add(path)
        paths |= _schema_paths(sub, path + ".")
    return paths


def test_every_value_is_documented_and_in_the_schema() -> None:
    params = _param_paths()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    value_paths, schema_paths = _value_paths(values), _schema_paths(schema)

    def covered(path: str) -> bool:
        """A documented value, or a map inside one, or a section holding documented values."""
        return any(
            path == p or path.startswith(p + ".") or p.startswith(path + ".") for p in params
        )

    assert sorted(p for p in params if p not in value_paths) == [], "@param without a value"
    assert sorted(p for p in params if p not in schema_paths) == [], "@param not in the schema"
    assert sorted(p for p in value_paths if not covered(p)) == [], "value without @param"
    assert sorted(p for p in schema_paths if not covered(p)) == [], "schema property without @param"
    for path, description in params.items():
        node: dict[str, Any] = schema
        for key in path.split("."):
            node = node["properties"][key]
        assert node.get("description") == description, f"{path}: schema description differs"


def test_values_are_grouped_in_sections() -> None:
    text = (CHART / "values.yaml").read_text()
    sections = re.findall(r"^## @section (.+)$", text, re.M)
    assert len(sections) >= 8
    first_section = re.search(r"^## @section", text, re.M)
    first_param = re.search(r"^\s*## @param", text, re.M)
    assert first_section and first_param and first_section.start() < first_param.start()


# ---- the README's quickstart uses what the chart has


def test_the_readme_names_only_real_values() -> None:
    readme = (CHART / "README.md").read_text()
    params = _param_paths()
    used = set(re.findall(r"--set(?:-string)? ([A-Za-z0-9_.]+)=", readme))
    assert used, "the README's quickstart sets no values"
    # A value, or a key inside a map-valued one (webhooks.secrets.<pipeline>).
    unknown = [u for u in used if not any(u == p or u.startswith(p + ".") for p in params)]
    assert sorted(unknown) == []


@pytest.mark.parametrize("case", CASES)
def test_templates_are_named_component_kind(case: str) -> None:
    """``templates/<component>-<kind>.yaml`` (STYLE.md): each object's file names its kind."""
    done = helm("template", RELEASE, CHART, "-f", CASES_DIR / f"{case}.yaml")
    for chunk in done.stdout.split("\n---\n"):
        source = re.search(r"^# Source: [^/]+/templates/(\S+)\.yaml$", chunk, re.M)
        for obj in documents(chunk):
            assert source, f"{ident(obj)} has no template file"
            assert source.group(1).rsplit("-", 1)[-1] == obj["kind"].lower(), source.group(1)


# ---- webhooks


@pytest.mark.parametrize(
    ("case", "secret"),
    [("default", f"{RELEASE}-webhooks"), ("external-database", "jetbridge-webhook-secrets")],
    ids=["chart-secret", "existing-secret"],
)
def test_the_webhook_function_reads_secrets_by_pipeline(case: str, secret: str) -> None:
    ksvc = function(render(case), "trigger-webhook")
    spec = ksvc["spec"]["template"]["spec"]
    env = env_of(spec["containers"][0])
    folder = env["JETBRIDGE_WEBHOOK_SECRETS_DIR"]["value"]
    assert {"name": "webhook-secrets", "mountPath": folder, "readOnly": True} in spec["containers"][
        0
    ]["volumeMounts"]
    assert {"name": "webhook-secrets", "secret": {"secretName": secret}} in spec["volumes"]
    assert "networking.knative.dev/visibility" not in ksvc["metadata"]["labels"]  # public
    for component in ("trigger", "step-runner", "reaper"):
        other = function(render(case), component)
        assert other["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"
        assert "JETBRIDGE_WEBHOOK_SECRETS_DIR" not in env_of(main_container(other))


def test_webhook_secrets_from_values_are_keys_named_after_pipelines() -> None:
    done = helm(
        "template", RELEASE, CHART, "--set", "webhooks.secrets.app=s3cret",
        "--show-only", "templates/webhooks-secret.yaml",
    )  # fmt: skip
    (secret,) = documents(done.stdout)
    assert secret["data"] == {"app": "czNjcmV0"}


def test_further_settings_reach_every_function() -> None:
    objects = render("external-database")
    for component in ("trigger", "trigger-webhook", "step-runner", "reaper"):
        env = env_of(main_container(function(objects, component)))
        assert env["JETBRIDGE_BUILD_TIMEOUT_SECONDS"]["value"] == "43200"
        assert env["JETBRIDGE_LOG_FORMAT"]["value"] == "json"
        assert env["JETBRIDGE_LOG_LEVEL"]["value"] == "WARNING"


# ---- scale


def _min_scale(objects: list[dict[str, Any]], component: str) -> str:
    annotations = function(objects, component)["spec"]["template"]["metadata"]["annotations"]
    value: str = annotations["autoscaling.knative.dev/min-scale"]
    return value


def test_the_reaper_keeps_running_as_deploy_monitoring_says() -> None:
    """Its metrics live in its process: scaled to zero between ticks, it is not scraped and
    JetBridgeReaperNotRunning fires (deploy/monitoring/README.md)."""
    readme = " ".join((MONITORING / "README.md").read_text().split())
    assert 'the reaper should keep one replica (`autoscaling.knative.dev/min-scale: "1"`' in readme
    assert "`functions.reaper.minScale`" in readme
    for case in ("default", "rwo-claim", "monitoring"):
        assert _min_scale(render(case), "reaper") == "1", case
    objects = render("default")
    assert {c: _min_scale(objects, c) for c in ("trigger", "trigger-webhook", "step-runner")} == {
        "trigger": "0", "trigger-webhook": "1", "step-runner": "0",
    }  # fmt: skip
    done = helm("template", RELEASE, CHART, "--set", "functions.reaper.minScale=0")
    assert _min_scale(documents(done.stdout), "reaper") == "0"


# ---- monitoring: deploy/monitoring/, installed by the chart


def monitoring_objects(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The PodMonitor, the PrometheusRule and the dashboard's ConfigMap, by kind."""
    found = [o for o in objects if o["metadata"].get("labels", {}).get(
        "app.kubernetes.io/component") == "monitoring"]  # fmt: skip
    kinds = Counter(o["kind"] for o in found)
    assert all(n == 1 for n in kinds.values()), kinds
    return {o["kind"]: o for o in found}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) picks ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        key, operator, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    """The labels a pod of ``obj`` has in the cluster; Knative adds its own to a revision's."""
    labels = dict(obj["spec"]["template"]["metadata"].get("labels", {}))
    if is_knative(obj):
        name = obj["metadata"]["name"]
        labels |= {
            "serving.knative.dev/service": name,
            "serving.knative.dev/configuration": name,
            "serving.knative.dev/revision": f"{name}-00001",
        }
    return labels


@pytest.mark.parametrize("case", [c for c in CASES if c != "monitoring"])
def test_monitoring_is_off_by_default(case: str) -> None:
    objects = render(case)
    assert monitoring_objects(objects) == {}
    assert not [o for o in objects if is_operator(o) or o["kind"] == "ConfigMap"]


def test_monitoring_makes_the_podmonitor_the_rule_and_the_dashboard() -> None:
    found = monitoring_objects(render("monitoring"))
    assert set(found) == {"PodMonitor", "PrometheusRule", "ConfigMap"}
    for obj in found.values():
        assert obj["metadata"]["labels"]["release"] == "prometheus", ident(obj)
    assert found["PodMonitor"]["metadata"]["namespace"] == NAMESPACE
    assert found["PrometheusRule"]["metadata"]["namespace"] == NAMESPACE
    assert found["ConfigMap"]["metadata"]["namespace"] == "monitoring"


@pytest.mark.parametrize(
    ("off", "left"),
    [
        ("podMonitor", {"PrometheusRule", "ConfigMap"}),
        ("prometheusRule", {"PodMonitor", "ConfigMap"}),
        ("dashboard", {"PodMonitor", "PrometheusRule"}),
    ],
)
def test_each_monitoring_object_can_be_left_out(off: str, left: set[str]) -> None:
    done = helm(
        "template", RELEASE, CHART, "--set", "monitoring.enabled=true",
        "--set", f"monitoring.{off}.enabled=false",
    )  # fmt: skip
    assert set(monitoring_objects(documents(done.stdout))) == left


def test_the_prometheus_rule_holds_the_alerts_of_deploy_monitoring() -> None:
    rule = monitoring_objects(render("monitoring"))["PrometheusRule"]
    standalone = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["spec"] == {"groups": standalone["spec"]["groups"]}
    assert (rule["apiVersion"], rule["kind"]) == (standalone["apiVersion"], standalone["kind"])
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "JetBridgeReaperNotRunning" in alerts
    # Prometheus' own templates reach it as they are: Helm did not expand them.
    assert any("{{ $labels.type }}" in r["annotations"]["summary"]
               for g in rule["spec"]["groups"] for r in g["rules"])  # fmt: skip


def test_the_dashboard_configmap_holds_the_dashboard_of_deploy_monitoring() -> None:
    configmap = monitoring_objects(render("monitoring"))["ConfigMap"]
    (key,) = configmap["data"]
    assert key == "jetbridge.json"
    text = (MONITORING / "dashboard.json").read_text()
    assert configmap["data"][key] == text  # byte for byte, so Grafana gets the file itself
    assert json.loads(configmap["data"][key]) == json.loads(text)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "CI"}
    assert configmap["metadata"]["name"] == f"{RELEASE}-dashboard"


def test_the_dashboard_label_is_the_sidecars() -> None:
    done = helm(
        "template", RELEASE, CHART, "--set", "monitoring.enabled=true",
        "--set", "monitoring.dashboard.label=dashboards",
        "--set-string", "monitoring.dashboard.labelValue=jetbridge",
        "--set", "monitoring.labels.dashboards=overridden",
    )  # fmt: skip
    configmap = monitoring_objects(documents(done.stdout))["ConfigMap"]
    assert configmap["metadata"]["labels"]["dashboards"] == "jetbridge"
    assert "grafana_dashboard" not in configmap["metadata"]["labels"]
    assert configmap["metadata"]["namespace"] == "default"  # the release's


@pytest.mark.parametrize("case", ["monitoring", "existing-objects"])
def test_the_pod_monitor_scrapes_the_functions_the_chart_makes_and_nothing_else(case: str) -> None:
    done = helm(
        "template", RELEASE, CHART, "--namespace", NAMESPACE, "-f", CASES_DIR / f"{case}.yaml",
        "--set", "monitoring.enabled=true",
    )  # fmt: skip
    objects = documents(done.stdout)
    monitor = monitoring_objects(objects)["PodMonitor"]
    assert monitor["metadata"]["namespace"] == NAMESPACE  # a PodMonitor looks in its own
    selector = monitor["spec"]["selector"]
    functions = [o for o in objects if is_knative(o) and o["kind"] == "Service"]
    assert len(functions) == 4
    for ksvc in functions:
        assert _selects(selector, _pod_labels(ksvc)), ident(ksvc)
        assert ksvc["metadata"]["namespace"] == NAMESPACE
        (port,) = main_container(ksvc)["ports"]
        assert port["containerPort"] == 8080  # Knative names it user-port in the pod
    others = [o for o in objects if not is_knative(o) and any(pod_specs(o))]
    assert others  # the bundled Postgres, the migration Job
    for obj in others:
        assert not _selects(selector, _pod_labels(obj)), ident(obj)
    # A step pod, or another release's function, is not scraped.
    step_pod = {MANAGED_BY: "jetbridge", "app.kubernetes.io/name": "jetbridge"}
    assert not _selects(selector, step_pod)
    other_release = _pod_labels(functions[0]) | {"app.kubernetes.io/instance": "other"}
    assert not _selects(selector, other_release)
    # Where it scrapes: the endpoint of deploy/monitoring/podmonitor.yaml.
    standalone = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    assert monitor["spec"]["podMetricsEndpoints"] == standalone["spec"]["podMetricsEndpoints"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("user-port", serving.METRICS_PATH)


def test_the_scrape_interval_is_a_value() -> None:
    done = helm(
        "template", RELEASE, CHART, "--set", "monitoring.enabled=true",
        "--set", "monitoring.podMonitor.interval=1m",
    )  # fmt: skip
    (endpoint,) = monitoring_objects(documents(done.stdout))["PodMonitor"]["spec"][
        "podMetricsEndpoints"
    ]
    assert endpoint["interval"] == "1m"


@pytest.mark.golden
@pytest.mark.parametrize("name", MONITORING_FILES)
def test_the_chart_carries_deploy_monitoring_unchanged(name: str, update_golden: bool) -> None:
    """deploy/chart/files/ is a copy of deploy/monitoring/ (Helm reads only the chart's own
    files); edit deploy/monitoring/ and `make golden` copies it."""
    source, copy = MONITORING / name, CHART_FILES / name
    if update_golden:
        copy.write_bytes(source.read_bytes())
        return
    assert copy.exists(), f"{copy.relative_to(ROOT)} is missing: run `make golden`"
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}: edit the one in "
        "deploy/monitoring/ and run `make golden` to copy it into the chart"
    )


def test_the_chart_files_are_only_those_copies() -> None:
    assert sorted(p.name for p in CHART_FILES.iterdir()) == sorted(MONITORING_FILES)
    assert all(Path(MONITORING / name).is_file() for name in MONITORING_FILES)


# ---- golden files: what `helm template` gives, reviewed like code


def _redacted(obj: dict[str, Any]) -> dict[str, Any]:
    """Secrets' values hidden: generated ones differ on every render."""
    if obj["kind"] == "Secret" and "data" in obj:
        obj = {**obj, "data": {k: "<redacted>" for k in obj["data"]}}
    return obj


@pytest.mark.golden
@pytest.mark.parametrize("case", CASES)
def test_rendered_chart_matches_golden(case: str, update_golden: bool) -> None:
    rendered = [_redacted(o) for o in render(case)]
    check_golden(CASES_DIR / "rendered" / f"{case}.yaml", rendered, update=update_golden)
