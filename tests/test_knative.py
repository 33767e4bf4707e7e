"""``knative/``: the plain manifests, built by the real ``kubectl kustomize`` and checked as
the cluster would check them, and kept in step with the chart (same routes, same rights).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared import events
from shared.podspec import MANAGED_BY
from shared.runtime.kubernetes import RBAC_RULES
from tests.kubeschema import VERSIONS, schema_errors
from tests.manifests import (
    ROOT,
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

KNATIVE = ROOT / "knative"
NAMESPACE = "jetbridge"
#: Manifests kept beside the kustomization but applied on their own (their comments say how).
STANDALONE = ("db-upgrade-job.yaml", "domain-mapping.yaml")

_built: list[dict[str, Any]] = []


def built() -> list[dict[str, Any]]:
    """What ``kubectl kustomize knative/`` gives (built once), as a fresh copy."""
    if not _built:
        _built.extend(documents(run([tool("kubectl"), "kustomize", KNATIVE]).stdout))
    copy: list[dict[str, Any]] = json.loads(json.dumps(_built))
    return copy


def every_object() -> list[dict[str, Any]]:
    standalone = [o for name in STANDALONE for o in documents((KNATIVE / name).read_text())]
    return built() + standalone


def test_every_manifest_is_built_or_applied_on_its_own() -> None:
    listed = set(documents((KNATIVE / "kustomization.yaml").read_text())[0]["resources"])
    files = {p.name for p in KNATIVE.glob("*.yaml")} - {"kustomization.yaml"}
    assert files == listed | set(STANDALONE)


def test_everything_lands_in_one_namespace() -> None:
    for obj in built():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, ident(obj)
    for binding in (o for o in built() if o["kind"] == "RoleBinding"):
        assert {s["namespace"] for s in binding["subjects"]} == {NAMESPACE}


@pytest.mark.parametrize("version", VERSIONS)
def test_kubernetes_objects_are_valid(version: str) -> None:
    objects = [o for o in every_object() if not is_knative(o)]
    assert {o["kind"] for o in objects} >= {"Namespace", "Role", "PersistentVolumeClaim", "Job"}
    problems = [f"{ident(o)}: {error}" for o in objects for error in schema_errors(o, version)]
    assert not problems, "\n".join(problems)


def test_knative_objects_are_valid() -> None:
    objects = [o for o in every_object() if is_knative(o)]
    kinds = {o["kind"] for o in objects}
    assert kinds == {
        "Service",
        "Broker",
        "Trigger",
        "PingSource",
        "ApiServerSource",
        "DomainMapping",
    }
    problems = [f"{ident(o)} {error}" for o in objects for error in knative_errors(o)]
    assert not problems, "\n".join(problems)


def test_every_pod_meets_the_restricted_standard() -> None:
    pods = [(ident(o), spec) for o in every_object() for spec in pod_specs(o)]
    assert len(pods) == 5  # four functions and the migration Job
    problems = [f"{where}: {v}" for where, spec in pods for v in violations(spec)]
    assert not problems, "\n".join(problems)


def services() -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in built() if is_knative(o) and o["kind"] == "Service"}


def test_functions_run_their_entry_points_with_known_settings() -> None:
    expected = {
        "trigger": ("functions/trigger/main.py", "handle", "cloudevent"),
        "trigger-webhook": ("functions/trigger/main.py", "webhook", "http"),
        "step-runner": ("functions/step_runner/main.py", "handle", "cloudevent"),
        "reaper": ("functions/reaper/main.py", "handle", "cloudevent"),
    }
    found = {}
    for name, ksvc in services().items():
        env = env_of(ksvc["spec"]["template"]["spec"]["containers"][0])
        found[name] = tuple(
            env[k]["value"]
            for k in ("FUNCTION_SOURCE", "FUNCTION_TARGET", "FUNCTION_SIGNATURE_TYPE")
        )
        unknown = sorted(
            n for n in env if n.startswith("JETBRIDGE_") and n not in settings_env_names()
        )
        assert unknown == [], f"{name} sets variables no setting reads"
        assert env["JETBRIDGE_NAMESPACE"]["value"] == NAMESPACE
    assert found == expected


def test_the_step_runner_and_reaper_mount_the_claim() -> None:
    (claim,) = [o["metadata"]["name"] for o in built() if o["kind"] == "PersistentVolumeClaim"]
    for name, ksvc in services().items():
        spec = ksvc["spec"]["template"]["spec"]
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == ([claim] if name in ("step-runner", "reaper") else []), name
        env = env_of(spec["containers"][0])
        assert env["JETBRIDGE_STORE_CLAIM"]["value"] == claim


def test_the_feature_flags_the_claim_needs_are_named() -> None:
    for path in (KNATIVE / "kustomization.yaml", KNATIVE / "README.md"):
        text = path.read_text()
        assert "kubernetes.podspec-persistent-volume-claim" in text, path.name
        assert "kubernetes.podspec-persistent-volume-write" in text, path.name


def test_triggers_route_each_event_type_to_its_function() -> None:
    (broker,) = [o["metadata"]["name"] for o in built() if o["kind"] == "Broker"]
    routes = {}
    for trigger in (o for o in built() if o["kind"] == "Trigger"):
        assert trigger["spec"]["broker"] == broker
        routes[trigger["spec"]["filter"]["attributes"]["type"]] = trigger["spec"]["subscriber"][
            "ref"
        ]["name"]
    assert routes == {
        events.BUILD_REQUESTED: "trigger",
        events.BUILD_FINISHED: "trigger",
        events.STEP_READY: "step-runner",
        **{t: "step-runner" for t in events.POD_EVENTS},
        events.PING: "reaper",
    }
    sink = f"/{NAMESPACE}/{broker}"
    for name, ksvc in services().items():
        env = env_of(ksvc["spec"]["template"]["spec"]["containers"][0])
        assert env["JETBRIDGE_EVENT_SINK"]["value"].endswith(sink), name


def test_sources_watch_step_pods_and_tick_through_the_broker() -> None:
    (pods,) = [o for o in built() if o["kind"] == "ApiServerSource"]
    (ping,) = [o for o in built() if o["kind"] == "PingSource"]
    assert pods["spec"]["mode"] == "Resource"
    assert pods["spec"]["resources"][0]["selector"] == {"matchLabels": {MANAGED_BY: "jetbridge"}}
    for source in (pods, ping):
        assert source["spec"]["sink"]["ref"]["kind"] == "Broker"
    account = pods["spec"]["serviceAccountName"]
    assert rules_for(account) == {("get", "pods"), ("list", "pods"), ("watch", "pods")}


def rules_for(account: str) -> set[tuple[str, str]]:
    """What a ServiceAccount may do, through the RoleBindings that name it."""
    roles = {o["metadata"]["name"]: o for o in built() if o["kind"] == "Role"}
    pairs: set[tuple[str, str]] = set()
    for binding in (o for o in built() if o["kind"] == "RoleBinding"):
        if any(s["name"] == account for s in binding["subjects"]):
            for rule in roles[binding["roleRef"]["name"]]["rules"]:
                assert rule["apiGroups"] == [""]
                pairs |= {(v, r) for v in rule["verbs"] for r in rule["resources"]}
    return pairs


def test_each_function_may_do_exactly_what_it_calls() -> None:
    accounts = {
        n: s["spec"]["template"]["spec"]["serviceAccountName"] for n, s in services().items()
    }
    assert rules_for(accounts["step-runner"]) == set(RBAC_RULES)
    assert rules_for(accounts["reaper"]) == set(RBAC_RULES)
    assert rules_for(accounts["trigger"]) == set()
    assert rules_for(accounts["trigger-webhook"]) == set()
    assert not any(o["kind"] in ("ClusterRole", "ClusterRoleBinding") for o in built())


def test_only_the_webhook_function_is_public() -> None:
    for name, ksvc in services().items():
        visibility = ksvc["metadata"]["labels"].get("networking.knative.dev/visibility")
        assert visibility == (None if name == "trigger-webhook" else "cluster-local"), name
    (mapping,) = documents((KNATIVE / "domain-mapping.yaml").read_text())
    assert mapping["spec"]["ref"]["name"] == "trigger-webhook"


def test_the_resource_image_is_the_functions_image() -> None:
    for ksvc in services().values():
        container = ksvc["spec"]["template"]["spec"]["containers"][0]
        assert env_of(container)["JETBRIDGE_RESOURCE_IMAGE"]["value"] == container["image"]
