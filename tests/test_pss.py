"""The checkers the golden pods are held to can fail: each violation is caught and named.

``tests/pss.py`` (the Pod Security Standard "restricted") and ``tests/kubeschema.py``
(``kubernetes-validate --strict``) each get a known-good pod, then one mutation per
row that breaks exactly one rule, and must report that rule.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests import pss
from tests.golden import TESTDATA, load_golden
from tests.kubeschema import VERSIONS, schema_errors

Pod = dict[str, Any]


def good_pod() -> Pod:
    pod: Pod = copy.deepcopy(load_golden(TESTDATA / "pods" / "task.yaml"))
    return pod


def container(pod: Pod) -> dict[str, Any]:
    c: dict[str, Any] = pod["spec"]["containers"][0]
    return c


def sc(pod: Pod) -> dict[str, Any]:
    s: dict[str, Any] = container(pod)["securityContext"]
    return s


def with_init_container(pod: Pod) -> None:
    init = copy.deepcopy(container(pod))
    init["name"] = "init"
    del init["securityContext"]["allowPrivilegeEscalation"]
    pod["spec"]["initContainers"] = [init]


# Each row: a change that breaks one rule, and the words the violation must say.
VIOLATIONS: list[tuple[str, Callable[[Pod], Any], str]] = [
    ("host-network", lambda p: p["spec"].update(hostNetwork=True), "spec.hostNetwork is true"),
    ("host-pid", lambda p: p["spec"].update(hostPID=True), "spec.hostPID is true"),
    ("host-ipc", lambda p: p["spec"].update(hostIPC=True), "spec.hostIPC is true"),
    (
        "host-path",
        lambda p: p["spec"]["volumes"].append({"name": "docker", "hostPath": {"path": "/var"}}),
        "spec.volumes[docker] is a hostPath volume",
    ),
    (
        "nfs-volume",
        lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
        "spec.volumes[n] is a nfs volume",
    ),
    ("privileged", lambda p: sc(p).update(privileged=True), "securityContext.privileged is true"),
    (
        "privilege-escalation",
        lambda p: sc(p).update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation must be false",
    ),
    (
        "privilege-escalation-unset",
        lambda p: sc(p).pop("allowPrivilegeEscalation"),
        "allowPrivilegeEscalation must be false",
    ),
    (
        "init-container-escalates",
        with_init_container,
        "spec.initContainers[init].securityContext.allowPrivilegeEscalation must be false",
    ),
    (
        "container-may-be-root",
        lambda p: sc(p).update(runAsNonRoot=False),
        "spec.containers[step] may run as root",
    ),
    (
        "nobody-says-non-root",
        lambda p: (sc(p).pop("runAsNonRoot"), p["spec"]["securityContext"].pop("runAsNonRoot")),
        "may run as root",
    ),
    (
        "pod-user-root",
        lambda p: p["spec"]["securityContext"].update(runAsUser=0),
        "spec.securityContext.runAsUser is 0",
    ),
    ("container-user-root", lambda p: sc(p).update(runAsUser=0), "securityContext.runAsUser is 0"),
    (
        "seccomp-unconfined",
        lambda p: sc(p).update(seccompProfile={"type": "Unconfined"}),
        "seccompProfile.type is 'Unconfined'",
    ),
    (
        "no-seccomp-anywhere",
        lambda p: (sc(p).pop("seccompProfile"), p["spec"]["securityContext"].pop("seccompProfile")),
        "has no seccomp profile",
    ),
    (
        "capabilities-not-dropped",
        lambda p: sc(p).update(capabilities={"drop": ["NET_RAW"]}),
        "capabilities.drop must include ALL",
    ),
    (
        "capability-added",
        lambda p: sc(p)["capabilities"].update(add=["SYS_ADMIN", "NET_BIND_SERVICE"]),
        "capabilities.add has SYS_ADMIN",
    ),
    (
        "host-port",
        lambda p: container(p).update(ports=[{"containerPort": 80, "hostPort": 80}]),
        "ports[0].hostPort is 80",
    ),
    ("proc-mount", lambda p: sc(p).update(procMount="Unmasked"), "procMount is 'Unmasked'"),
    (
        "unsafe-sysctl",
        lambda p: p["spec"]["securityContext"].update(
            sysctls=[{"name": "kernel.msgmax", "value": "1"}]
        ),
        "unsafe sysctl 'kernel.msgmax'",
    ),
    (
        "selinux-type",
        lambda p: sc(p).update(seLinuxOptions={"type": "spc_t"}),
        "seLinuxOptions.type is 'spc_t'",
    ),
    (
        "selinux-user",
        lambda p: sc(p).update(seLinuxOptions={"user": "system_u"}),
        "seLinuxOptions.user is set",
    ),
    (
        "apparmor-unconfined",
        lambda p: sc(p).update(appArmorProfile={"type": "Unconfined"}),
        "appArmorProfile.type is 'Unconfined'",
    ),
    (
        "windows-host-process",
        lambda p: sc(p).update(windowsOptions={"hostProcess": True}),
        "windowsOptions.hostProcess is true",
    ),
]


def test_the_good_pod_has_no_violation() -> None:
    assert pss.violations(good_pod()["spec"]) == []


@pytest.mark.parametrize(
    ("change", "message"), [(c, m) for _, c, m in VIOLATIONS], ids=[i for i, _, _ in VIOLATIONS]
)
def test_each_restricted_rule_is_enforced(change: Callable[[Pod], Any], message: str) -> None:
    pod = good_pod()
    change(pod)
    found = pss.violations(pod["spec"])
    assert any(message in v for v in found), found


@pytest.mark.parametrize(
    ("kind", "obj", "found"),
    [
        ("Pod", {"kind": "Pod", "spec": {"containers": []}}, True),
        (
            "Deployment",
            {"kind": "Deployment", "spec": {"template": {"spec": {"containers": []}}}},
            True,
        ),
        (
            "CronJob",
            {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {}}}}}},
            True,
        ),
        ("ConfigMap", {"kind": "ConfigMap", "data": {}}, False),
    ],
    ids=["pod", "deployment", "cronjob", "configmap"],
)
def test_pod_spec_of_finds_the_pod_spec_in_workloads(kind: str, obj: Pod, found: bool) -> None:
    assert (pss.pod_spec_of(obj) is not None) == found


SCHEMA_BREAKS: list[tuple[str, Callable[[Pod], Any], str]] = [
    ("unknown-field", lambda p: p["spec"].update(restartPolicyy="Never"), "restartPolicyy"),
    (
        "wrong-type",
        lambda p: p["spec"].update(activeDeadlineSeconds="an hour"),
        "activeDeadlineSeconds",
    ),
    (
        "unknown-container-field",
        lambda p: container(p).update(imagePullSecret="x"),
        "imagePullSecret",
    ),
    ("no-containers", lambda p: p["spec"].pop("containers"), "containers"),
]


@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
@pytest.mark.parametrize(
    ("change", "words"), [(c, w) for _, c, w in SCHEMA_BREAKS], ids=[i for i, _, _ in SCHEMA_BREAKS]
)
def test_the_schema_check_catches_a_broken_pod(
    change: Callable[[Pod], Any], words: str, version: str
) -> None:
    pod = good_pod()
    change(pod)
    (error,) = schema_errors(pod, version)
    assert words in error
