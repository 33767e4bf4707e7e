"""The pod builder, as data: one golden pod per case, each valid and restricted.

Every case builds a pod the way ``launch_step`` does (a step compiled from a real
pipeline, its artifacts as mounts, settings as ``Deps`` turns them into pod
settings) and compares it, as the API would serialize it, with
``tests/testdata/pods/<case>.yaml``. Each golden pod must pass
``kubernetes-validate --strict`` for Kubernetes 1.30 to 1.37 and the Pod Security
Standard "restricted" (``tests/pss.py``).

Regenerate the golden files with ``make golden`` (``pytest -m golden --update-golden``)
and review the diff.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from kubernetes.client import ApiClient

from shared.app import pod_settings
from shared.pipeline import parse_pipeline
from shared.plan import StepSpec, compile_plan, with_version
from shared.podspec import (
    MAX_NAME,
    Mount,
    PodIds,
    PodSettings,
    build_step_pod,
    pod_name,
    secret_env,
    secret_name,
)
from shared.settings import Settings
from tests import pss
from tests.golden import TESTDATA, check_golden, load_golden
from tests.kubeschema import VERSIONS, schema_errors

GOLDEN = TESTDATA / "pods"
BUILD_ID = 42
TOKEN = "s3cr3t-t0ken-value"

PIPELINE = f"""
resource_types:
- name: slack
  type: registry-image
  source: {{repository: example.com/ci/slack-resource, tag: "1.2"}}
resources:
- name: repo
  type: git
  source: {{uri: "https://example.com/app.git", branch: main}}
- name: notify
  type: slack
  source: {{url: "https://hooks.example.com/T000"}}
jobs:
- name: build
  plan:
  - get: repo
  - in_parallel:
    - task: unit
      config:
        platform: linux
        image_resource: {{type: registry-image, source: {{repository: golang, tag: "1.22"}}}}
        inputs: [{{name: repo}}]
        params: {{GOFLAGS: -mod=mod, GREETING: "hello $USER"}}
        run: {{path: go, args: [test, ./...], dir: repo}}
    - task: lint
      config:
        platform: linux
        image_resource: {{type: registry-image, source: {{repository: golangci/golangci-lint}}}}
        inputs: [{{name: repo}}]
        params: {{API_TOKEN: "{TOKEN}", LINT_LEVEL: strict}}
        run: {{path: sh, args: [-c, 'golangci-lint run --token "$API_TOKEN"'], dir: repo}}
  - task: package
    config:
      platform: linux
      image_resource: {{type: registry-image, source: {{repository: alpine, tag: "3.20"}}}}
      inputs: [{{name: repo}}]
      outputs: [{{name: dist, path: out/dist}}]
      run: {{path: sh, args: [-c, "tar -czf out/dist/app.tgz -C repo ."]}}
  - put: notify
    params: {{text: "built app"}}
"""

#: Step ids as the database would number them: one per compiled step, in plan order.
STEPS = {spec.key: spec for spec in compile_plan(parse_pipeline(PIPELINE), "build")}
STEP_IDS = {key: 100 + i for i, key in enumerate(STEPS)}


@dataclass(frozen=True, kw_only=True)
class Case:
    id: str
    key: str
    """Which step of the pipeline's ``build`` job."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Settings changed from the defaults."""
    node: str | None = None
    secret_env: Mapping[str, str] = field(default_factory=dict)
    timeout: int | None = None
    attempt: int = 1


CASES = [
    Case(id="check", key="0:check"),
    Case(id="get", key="0"),
    Case(id="in-parallel-branch", key="1.0"),
    Case(id="secret-params", key="1.1", secret_env={"API_TOKEN": "api-token"}),
    Case(id="task", key="2"),
    Case(id="put-custom-type", key="3"),
    Case(
        id="limits",
        key="2",
        settings={
            "step_requests": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "2Gi"},
            "step_limits": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "10Gi"},
        },
    ),
    Case(id="timeout", key="2", timeout=600, attempt=2),
    Case(id="rwo-first-pod", key="1.0", settings={"store_access_mode": "ReadWriteOnce"}),
    Case(
        id="rwo-later-pod",
        key="2",
        settings={"store_access_mode": "ReadWriteOnce"},
        node="gke-ci-pool-1-3f2a9c1e-x7k2",
    ),
    Case(
        id="scheduling",
        key="2",
        settings={
            "image_pull_secrets": ("registry-creds", "mirror-creds"),
            "node_selector": {"cloud.google.com/gke-nodepool": "ci", "kubernetes.io/arch": "amd64"},
            "tolerations": (
                {"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"},
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                },
            ),
        },
    ),
]
IDS = [c.id for c in CASES]


def step_of(case: Case) -> StepSpec:
    spec = STEPS[case.key]
    if spec.version_from is not None:  # as launch_step does once the check found a version
        spec = with_version(spec, {"ref": "4b825dc642cb6eb9a060e54bf8d69288fbee4904"})
    if case.timeout is not None:
        spec = replace(spec, timeout_seconds=case.timeout)
    return spec


def mounts_of(spec: StepSpec) -> list[Mount]:
    """Mounts as launch_step makes them, with readable stand-ins for generated handles."""
    mounts = [
        Mount(subpath=f"artifacts/{BUILD_ID}/h-{i.name}", mount=i.mount, read_only=True)
        for i in spec.inputs
    ]
    mounts += [
        Mount(subpath=f"artifacts/{BUILD_ID}/h-{o.name}", mount=o.mount, read_only=False)
        for o in spec.outputs
    ]
    return mounts


def ids_of(case: Case) -> PodIds:
    return PodIds(
        pipeline="app",
        job="build",
        build_id=BUILD_ID,
        step_id=STEP_IDS[case.key],
        step_key=case.key,
        attempt=case.attempt,
    )


def settings_of(case: Case) -> PodSettings:
    return pod_settings(Settings(namespace="ci", **case.settings))


def built(case: Case) -> dict[str, Any]:
    """The case's pod as the Kubernetes API serializes it."""
    pod = build_step_pod(
        step_of(case),
        ids=ids_of(case),
        mounts=mounts_of(step_of(case)),
        settings=settings_of(case),
        node=case.node,
        secret_env=case.secret_env,
    )
    data: dict[str, Any] = ApiClient().sanitize_for_serialization(pod)
    return data


@pytest.mark.golden
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_pod_is_its_golden_file(case: Case, update_golden: bool) -> None:
    check_golden(GOLDEN / f"{case.id}.yaml", built(case), update=update_golden)


def test_every_golden_file_belongs_to_a_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.yaml")) == sorted(IDS)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_golden_pod_is_valid_for_kubernetes(case: Case, version: str) -> None:
    assert schema_errors(load_golden(GOLDEN / f"{case.id}.yaml"), version) == []


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_golden_pod_keeps_the_restricted_pod_security_standard(case: Case) -> None:
    pod = load_golden(GOLDEN / f"{case.id}.yaml")
    assert pss.violations(pod["spec"]) == []


def test_secret_env_finds_credentials_in_env_values_whole_or_json_escaped() -> None:
    key = "-----BEGIN KEY-----\nabc\n-----END KEY-----"
    env = {
        "TOKEN": "tok-123456",
        "URL": "https://user:tok-123456@example.com",
        "JETBRIDGE_REQUEST": json.dumps({"source": {"private_key": key}}),
        "LEVEL": "strict",
        "bad name": "tok-123456",
    }
    found = secret_env(env, ["tok-123456", key], step_id=7)
    assert found.refs == {
        "JETBRIDGE_REQUEST": "7-JETBRIDGE_REQUEST",
        "TOKEN": "7-TOKEN",
        "URL": "7-URL",
        # A name a Secret key cannot hold: its digest stands in.
        "bad name": "7-" + hashlib.sha256(b"bad name").hexdigest(),
    }
    assert found.data["7-URL"] == env["URL"]
    assert found.data["7-JETBRIDGE_REQUEST"] == env["JETBRIDGE_REQUEST"]
    assert found.in_command == {}
    assert secret_env(env, [], step_id=7) == secret_env({}, ["x"], step_id=7)  # nothing secret


def test_a_credential_in_the_command_becomes_a_reference_kubernetes_expands() -> None:
    step = StepSpec(
        key="1",
        name="push",
        kind="task",
        image="busybox",
        command=("sh", "-c", 'curl -H "Authorization: tok-123456" https://x/$(whoami) $HOME'),
        env={},
    )
    found = secret_env(step.env, ["tok-123456"], step_id=3, command=step.command)
    assert found.in_command == {"tok-123456": "JETBRIDGE_CREDENTIAL_1"}
    assert found.refs == {"JETBRIDGE_CREDENTIAL_1": "3-JETBRIDGE_CREDENTIAL_1"}
    assert found.data == {"3-JETBRIDGE_CREDENTIAL_1": "tok-123456"}
    ids = PodIds(pipeline="p", job="j", build_id=5, step_id=3, step_key="1")
    pod = ApiClient().sanitize_for_serialization(
        build_step_pod(
            step,
            ids=ids,
            mounts=[],
            settings=PodSettings(claim="store"),
            secret_env=found.refs,
            secret_args=found.in_command,
        )
    )
    assert "tok-123456" not in json.dumps(pod)
    # The credential by reference; every other '$' escaped, so only it is expanded.
    assert pod["spec"]["containers"][0]["args"] == [
        "-c",
        'curl -H "Authorization: $(JETBRIDGE_CREDENTIAL_1)" https://x/$$(whoami) $$HOME',
    ]


def test_a_longer_credential_is_replaced_whole_before_one_it_contains() -> None:
    found = secret_env(
        {}, ["secret", "secret-and-more"], step_id=1, command=("echo secret-and-more secret",)
    )
    assert found.in_command == {
        "secret-and-more": "JETBRIDGE_CREDENTIAL_1",
        "secret": "JETBRIDGE_CREDENTIAL_2",
    }


@pytest.mark.parametrize(
    ("case_id", "wanted"),
    [
        ("check", {"image": "ghcr.io/jetbridge/jetbridge:0.1.0", "script": "git/check"}),
        ("get", {"image": "ghcr.io/jetbridge/jetbridge:0.1.0", "script": "git/in"}),
        ("put-custom-type", {"image": "example.com/ci/slack-resource:1.2", "script": "/out"}),
        ("task", {"image": "alpine:3.20", "script": "tar -czf"}),
    ],
    ids=["check-runs-the-builtin-check", "get-runs-in", "put-runs-the-type-image", "task"],
)
def test_each_kind_runs_its_image_and_command(case_id: str, wanted: dict[str, str]) -> None:
    (case,) = [c for c in CASES if c.id == case_id]
    (container,) = built(case)["spec"]["containers"]
    assert container["image"] == wanted["image"]
    assert wanted["script"] in " ".join(container["command"] + container["args"])


def test_a_secret_param_reaches_the_pod_only_as_a_secret_reference() -> None:
    (case,) = [c for c in CASES if c.id == "secret-params"]
    pod = built(case)
    assert TOKEN in step_of(case).env.values()  # the step has it...
    assert TOKEN not in json.dumps(pod)  # ...the pod does not
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["API_TOKEN"] == {
        "name": "API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "jb-42-secrets", "key": "api-token"}},
    }
    assert env["LINT_LEVEL"] == {"name": "LINT_LEVEL", "value": "strict"}


def test_a_secret_key_a_secret_cannot_hold_is_refused() -> None:
    (case,) = [c for c in CASES if c.id == "secret-params"]
    with pytest.raises(ValueError, match="key 'api token' of Secret jb-42-secrets"):
        build_step_pod(
            step_of(case),
            ids=ids_of(case),
            mounts=[],
            settings=settings_of(case),
            secret_env={"API_TOKEN": "api token"},
        )


@pytest.mark.parametrize(
    ("access_mode", "node", "pod_affinity", "node_affinity"),
    [
        ("ReadWriteMany", None, False, False),
        ("ReadWriteMany", "node-a", False, False),
        ("ReadWriteOnce", None, True, False),
        ("ReadWriteOnce", "node-a", True, True),
    ],
    ids=["rwx", "rwx-ignores-node", "rwo-first-pod", "rwo-later-pod"],
)
def test_a_readwriteonce_store_pins_the_build_to_one_node(
    access_mode: str, node: str | None, pod_affinity: bool, node_affinity: bool
) -> None:
    case = Case(id="pin", key="2", settings={"store_access_mode": access_mode}, node=node)
    affinity = built(case)["spec"].get("affinity") or {}
    assert ("podAffinity" in affinity) == pod_affinity
    assert ("nodeAffinity" in affinity) == node_affinity
    if pod_affinity:
        (term,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["labelSelector"]["matchLabels"]["jetbridge.dev/build"] == str(BUILD_ID)
    if node_affinity:
        (selector,) = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ]
        assert selector["matchFields"] == [
            {"key": "metadata.name", "operator": "In", "values": [node]}
        ]


def test_the_timeout_becomes_the_deadline_and_the_default_covers_the_rest() -> None:
    (timed,) = [c for c in CASES if c.id == "timeout"]
    (plain,) = [c for c in CASES if c.id == "task"]
    assert built(timed)["spec"]["activeDeadlineSeconds"] == 600
    assert built(plain)["spec"]["activeDeadlineSeconds"] == Settings().step_timeout_seconds


def test_text_kubernetes_would_expand_is_passed_through_as_written() -> None:
    (case,) = [c for c in CASES if c.id == "in-parallel-branch"]
    env = {e["name"]: e["value"] for e in built(case)["spec"]["containers"][0]["env"]}
    assert env["GREETING"] == "hello $$USER"  # Kubernetes reads $$ as $: the task sees $USER


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize(
    ("ids", "step_name"),
    [
        (PodIds(pipeline="app", job="build", build_id=1, step_id=1, step_key="0"), "unit"),
        (
            PodIds(pipeline="app", job="build", build_id=7, step_id=9, step_key="1.0", attempt=3),
            "Unit_Tests (Go 1.22)",
        ),
        (
            PodIds(pipeline="p" * 200, job="j" * 200, build_id=10**12, step_id=1, step_key="9"),
            "a-very-long-step-name-" * 10,
        ),
        (PodIds(pipeline="app", job="build", build_id=1, step_id=1, step_key="0"), "---"),
    ],
    ids=["short", "mixed-case-and-spaces", "very-long", "only-dashes"],
)
def test_pod_names_are_dns_labels_of_at_most_63_characters(ids: PodIds, step_name: str) -> None:
    name = pod_name(ids, step_name)
    assert len(name) <= MAX_NAME
    assert _DNS_LABEL.fullmatch(name), name
    assert name == pod_name(ids, step_name)  # deterministic: a second launch finds the first


def test_pod_names_differ_by_attempt_and_by_step() -> None:
    base = PodIds(pipeline="p" * 80, job="build", build_id=1, step_id=1, step_key="0")
    names = {
        pod_name(base, "x" * 80),
        pod_name(replace(base, attempt=2), "x" * 80),
        pod_name(replace(base, step_key="1"), "x" * 80),
    }
    assert len(names) == 3


def test_the_build_secret_is_named_after_the_build() -> None:
    assert secret_name(42) == "jb-42-secrets"
