"""Reading a pod's status as its step's outcome: one row per way a pod ends (or does not)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import status as st
from shared.podstatus import Outcome, Patience, outcome, pod_ref

CREATED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PATIENCE = Patience(image_pull_seconds=300, unschedulable_seconds=600)
IMAGE = "registry.example/app:1.2"


def pod(
    *,
    phase: str = "Pending",
    state: dict[str, Any] | None = None,
    reason: str | None = None,
    message: str | None = None,
    conditions: list[dict[str, Any]] | None = None,
    deleting: bool = False,
    limits: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod as the API serializes it, with just the parts a case sets."""
    status: dict[str, Any] = {"phase": phase}
    if state is not None:
        status["containerStatuses"] = [{"name": "step", "image": IMAGE, "state": state}]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if conditions:
        status["conditions"] = conditions
    metadata: dict[str, Any] = {
        "name": "jb-1-unit-a1-0123abcd",
        "creationTimestamp": CREATED.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if deleting:
        metadata["deletionTimestamp"] = (CREATED + timedelta(seconds=30)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    container: dict[str, Any] = {"name": "step", "image": IMAGE}
    if limits:
        container["resources"] = {"limits": limits}
    return {"metadata": metadata, "spec": {"containers": [container]}, "status": status}


def terminated(code: int, reason: str = "Error", message: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"exitCode": code, "reason": reason}
    if message is not None:
        state["message"] = message
    return {"terminated": state}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, "message": message}}


UNSCHEDULABLE = [
    {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient memory.",
    }
]

CASES = [
    (
        "succeeded",
        pod(phase="Succeeded", state=terminated(0, "Completed", '{"version": {"ref": "abc"}}')),
        0,
        False,
        Outcome(status=st.SUCCEEDED, exit_code=0, result={"version": {"ref": "abc"}}),
    ),
    (
        "failed-with-exit-code",
        pod(phase="Failed", state=terminated(3)),
        0,
        False,
        Outcome(
            status=st.FAILED,
            exit_code=3,
            reason="Error",
            message="task 'unit' exited with code 3",
        ),
    ),
    (
        "oom-killed-with-limit",
        pod(phase="Failed", state=terminated(137, "OOMKilled"), limits={"memory": "512Mi"}),
        0,
        False,
        Outcome(
            status=st.FAILED,
            exit_code=137,
            reason="OOMKilled",
            message="task 'unit' ran out of memory (OOMKilled); its limit is 512Mi",
        ),
    ),
    (
        "oom-killed-without-limit",
        pod(phase="Failed", state=terminated(137, "OOMKilled")),
        0,
        False,
        Outcome(
            status=st.FAILED,
            exit_code=137,
            reason="OOMKilled",
            message="task 'unit' ran out of memory (OOMKilled); it has no memory limit, so the node ran out",
        ),
    ),
    (
        "deadline-exceeded",
        pod(
            phase="Failed",
            state=terminated(137, "DeadlineExceeded"),
            reason="DeadlineExceeded",
            message="Pod was active on the node longer than the specified deadline",
        ),
        0,
        False,
        Outcome(
            status=st.ERRORED,
            exit_code=137,
            reason="DeadlineExceeded",
            message="task 'unit' timed out: it ran past its deadline and was stopped",
        ),
    ),
    (
        "evicted",
        pod(
            phase="Failed",
            state=terminated(137, "ContainerStatusUnknown"),
            reason="Evicted",
            message="The node was low on resource: ephemeral-storage. ",
        ),
        0,
        False,
        Outcome(
            status=st.ERRORED,
            exit_code=137,
            reason="Evicted",
            message="task 'unit' was evicted from its node: The node was low on resource: ephemeral-storage.",
        ),
    ),
    (
        "node-shutdown",
        pod(
            phase="Failed",
            reason="Terminated",
            message="Pod was terminated in response to imminent node shutdown.",
        ),
        0,
        False,
        Outcome(
            status=st.ERRORED,
            reason="Terminated",
            message="task 'unit' was stopped by its node (Terminated: Pod was terminated in response to imminent node shutdown.)",
        ),
    ),
    (
        "deleted-event-while-running",
        pod(phase="Running", state={"running": {}}),
        0,
        True,
        Outcome(
            status=st.ERRORED,
            reason="Deleted",
            message="task 'unit': pod was deleted before the step finished (node drain?)",
        ),
    ),
    (
        "deletion-timestamp-while-running",
        pod(phase="Running", state={"running": {}}, deleting=True),
        0,
        False,
        Outcome(
            status=st.ERRORED,
            reason="Deleted",
            message="task 'unit': pod was deleted before the step finished (node drain?)",
        ),
    ),
    (
        "killed-by-its-deletion",
        pod(phase="Failed", state=terminated(143), deleting=True),
        0,
        False,
        Outcome(
            status=st.ERRORED,
            exit_code=143,
            reason="Deleted",
            message="task 'unit': pod was deleted before the step finished (node drain?)",
        ),
    ),
    (
        "failed-by-itself-then-deleted",
        pod(phase="Failed", state=terminated(2), deleting=True),
        0,
        True,
        Outcome(
            status=st.FAILED,
            exit_code=2,
            reason="Error",
            message="task 'unit' exited with code 2",
        ),
    ),
    (
        "succeeded-then-deleted",
        pod(phase="Succeeded", state=terminated(0, "Completed")),
        0,
        True,
        Outcome(status=st.SUCCEEDED, exit_code=0),
    ),
    (
        "image-pull-backoff-past-patience",
        pod(state=waiting("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"')),
        301,
        False,
        Outcome(
            status=st.ERRORED,
            reason="ImagePullBackOff",
            doomed=True,
            message=(
                f"task 'unit' could not start: image '{IMAGE}' was not pulled for 5m1s "
                f'(ImagePullBackOff: Back-off pulling image "{IMAGE}")'
            ),
        ),
    ),
    (
        "err-image-pull-past-patience",
        pod(state=waiting("ErrImagePull", "not found")),
        3600,
        False,
        Outcome(
            status=st.ERRORED,
            reason="ErrImagePull",
            doomed=True,
            message=f"task 'unit' could not start: image '{IMAGE}' was not pulled for 1h (ErrImagePull: not found)",
        ),
    ),
    (
        "invalid-image-name-at-once",
        pod(state=waiting("InvalidImageName", "couldn't parse image name")),
        0,
        False,
        Outcome(
            status=st.ERRORED,
            reason="InvalidImageName",
            doomed=True,
            message=f"task 'unit' could not start: image '{IMAGE}' was not pulled (InvalidImageName: couldn't parse image name)",
        ),
    ),
    (
        "unschedulable-past-patience",
        pod(conditions=UNSCHEDULABLE),
        600,
        False,
        Outcome(
            status=st.ERRORED,
            reason="Unschedulable",
            doomed=True,
            message="task 'unit' could not be scheduled for 10m: 0/3 nodes are available: 3 Insufficient memory.",
        ),
    ),
]


@pytest.mark.parametrize(
    ("pod_json", "age", "deleted", "want"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_a_pod_that_ended_its_step_says_how(
    pod_json: dict[str, Any], age: int, deleted: bool, want: Outcome
) -> None:
    now = CREATED + timedelta(seconds=age)
    got = outcome(pod_json, kind="task", name="unit", now=now, patience=PATIENCE, deleted=deleted)
    assert got == want


WAITING = [
    ("pending", pod(), 10_000),
    ("container-creating", pod(state=waiting("ContainerCreating")), 10_000),
    ("running", pod(phase="Running", state={"running": {}}), 10_000),
    ("image-pull-within-patience", pod(state=waiting("ImagePullBackOff")), 299),
    ("unschedulable-within-patience", pod(conditions=UNSCHEDULABLE), 599),
    (
        "no-creation-time",
        {"status": {"containerStatuses": [{"state": waiting("ErrImagePull")}]}},
        0,
    ),
]


@pytest.mark.parametrize(("pod_json", "age"), [c[1:] for c in WAITING], ids=[c[0] for c in WAITING])
def test_a_pod_that_may_still_finish_has_no_outcome(pod_json: dict[str, Any], age: int) -> None:
    now = CREATED + timedelta(seconds=age)
    assert outcome(pod_json, kind="task", name="unit", now=now, patience=PATIENCE) is None


def test_a_get_names_its_kind_and_the_patience_is_configurable() -> None:
    stuck = pod(state=waiting("ErrImagePull"))
    now = CREATED + timedelta(seconds=30)
    assert outcome(stuck, kind="get", name="repo", now=now, patience=PATIENCE) is None
    quick = Patience(image_pull_seconds=30, unschedulable_seconds=30)
    got = outcome(stuck, kind="get", name="repo", now=now, patience=quick)
    assert got is not None and got.message is not None
    assert got.message.startswith(
        f"get 'repo' could not start: image '{IMAGE}' was not pulled for 30s"
    )


@pytest.mark.parametrize(
    ("labels", "owned"),
    [
        (
            {
                "app.kubernetes.io/managed-by": "jetbridge",
                "jetbridge.dev/build": "1",
                "jetbridge.dev/step": "2",
            },
            True,
        ),
        (
            {
                "app.kubernetes.io/managed-by": "helm",
                "jetbridge.dev/build": "1",
                "jetbridge.dev/step": "2",
            },
            False,
        ),
        (
            {
                "app.kubernetes.io/managed-by": "jetbridge",
                "jetbridge.dev/build": "x",
                "jetbridge.dev/step": "2",
            },
            False,
        ),
        ({}, False),
    ],
    ids=["ours", "someone-elses", "bad-label", "unlabelled"],
)
def test_only_pods_jetbridge_labelled_are_its_own(labels: dict[str, str], owned: bool) -> None:
    ref = pod_ref({"metadata": {"name": "p", "labels": labels}})
    assert (ref is not None) == owned
