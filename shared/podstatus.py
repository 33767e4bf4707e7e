"""What a pod's status means for its step: pure, from the pod as the API serializes it.

The same reading serves the pod events of Knative's ApiServerSource (add, update,
delete), the local runtime's finish reports, and the reaper's resync of pods whose
event was lost. A pod ends its step in one of three ways:

* it **finished**: ``Succeeded``, or ``Failed`` with an exit code, an ``OOMKilled``
  container, a deadline, an eviction or another reason the node gave;
* it was **deleted** before it finished (a delete event, or a ``deletionTimestamp``
  on a pod that never finished: a node drain, someone's ``kubectl delete``);
* it is **doomed**: still ``Pending``, but waiting on something that will not
  come. An image name that cannot be valid fails at once; an image that does not
  pull, or a pod no node can take, fails once the pod is older than its
  ``Patience``. The caller records the step and deletes the pod.

Anything else (``Pending``, ``Running``) is ``None``: nothing to record yet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared import status as st
from shared.podspec import CONTAINER, LABEL_ATTEMPT, LABEL_BUILD, LABEL_STEP, MANAGED_BY

#: Waiting reasons of a container whose image cannot be pulled; the kubelet alternates them.
PULL_RETRYING = frozenset({"ErrImagePull", "ImagePullBackOff"})
#: Waiting reasons that no retry can cure: fail the step at once.
PULL_HOPELESS = frozenset({"InvalidImageName", "ErrImageNeverPull"})
#: Waiting reasons of a container the kubelet cannot create from its spec (a Secret or a key
#: of it that is not there): retried, as the missing object may still come.
CONFIG_RETRYING = frozenset({"CreateContainerConfigError", "CreateContainerError"})
#: Exit codes of a process killed by SIGKILL and SIGTERM: what a deleted pod's container shows.
KILLED_EXIT_CODES = frozenset({137, 143})
DELETED_MESSAGE = "pod was deleted before the step finished (node drain?)"


@dataclass(frozen=True, kw_only=True)
class PodRef:
    """Which step (and which attempt of it) a pod belongs to, from its labels."""

    name: str
    build_id: int
    step_id: int
    attempt: int


@dataclass(frozen=True, kw_only=True)
class Patience:
    """How long a pending pod may wait on something that can still come before its step errors."""

    image_pull_seconds: int = 300
    """An image that does not pull (``ErrImagePull``/``ImagePullBackOff``), or a container
    that cannot be created (``CreateContainerConfigError``: its Secret is missing)."""
    unschedulable_seconds: int = 600
    """No node takes the pod (``PodScheduled`` false, reason ``Unschedulable``)."""


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How a pod ended its step, in the words a user reads."""

    status: str
    """``succeeded``, ``failed`` or ``errored``."""
    exit_code: int | None = None
    reason: str | None = None
    """What Kubernetes called it: ``OOMKilled``, ``Evicted``, ``ImagePullBackOff``, ``Deleted`` …"""
    message: str | None = None
    result: Mapping[str, Any] = field(default_factory=dict)
    """A resource script's JSON answer, from the termination message."""
    doomed: bool = False
    """The pod has not ended and never will by itself: whoever records the step deletes it."""


def pod_ref(pod: Mapping[str, Any]) -> PodRef | None:
    """The step a pod runs, or ``None`` when JetBridge does not own it."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if labels.get(MANAGED_BY) != "jetbridge":
        return None
    try:
        return PodRef(
            name=str(metadata["name"]),
            build_id=int(labels[LABEL_BUILD]),
            step_id=int(labels[LABEL_STEP]),
            attempt=int(labels.get(LABEL_ATTEMPT, 1)),
        )
    except (KeyError, ValueError):
        return None


def outcome(
    pod: Mapping[str, Any],
    *,
    kind: str,
    name: str,
    now: datetime,
    patience: Patience | None = None,
    deleted: bool = False,
) -> Outcome | None:
    """The step's result if the pod has ended it (see the module docstring), else ``None``.

    ``kind`` and ``name`` phrase the message (``task 'unit' exited with code 3``);
    ``now`` and ``patience`` decide when a pending pod is doomed; ``deleted`` says the
    pod is gone (the event was a delete, whose data is the pod's last state).
    """
    status = pod.get("status") or {}
    phase = status.get("phase")
    container = _container_status(status)
    terminated = (container.get("state") or {}).get("terminated")
    what = f"{kind} {name!r}"
    deleted = deleted or bool((pod.get("metadata") or {}).get("deletionTimestamp"))
    if phase == "Succeeded" or (
        terminated and terminated.get("exitCode") == 0 and phase != "Failed"
    ):
        return Outcome(status=st.SUCCEEDED, exit_code=0, result=_result(terminated))
    if phase == "Failed":
        return _failed(pod, status, terminated, what=what, deleted=deleted)
    if deleted:
        return Outcome(status=st.ERRORED, reason="Deleted", message=f"{what}: {DELETED_MESSAGE}")
    return _doomed(pod, status, container, what=what, now=now, patience=patience or Patience())


def _failed(
    pod: Mapping[str, Any],
    status: Mapping[str, Any],
    terminated: Mapping[str, Any] | None,
    *,
    what: str,
    deleted: bool,
) -> Outcome:
    """The outcome of a ``Failed`` pod: the node's reason first, then the container's."""
    terminated = terminated or {}
    pod_reason = status.get("reason")
    pod_message = (status.get("message") or "").strip()
    reason = pod_reason or terminated.get("reason")
    exit_code = terminated.get("exitCode")
    if pod_reason == "DeadlineExceeded":
        return Outcome(
            status=st.ERRORED,
            exit_code=exit_code,
            reason=pod_reason,
            message=f"{what} timed out: it ran past its deadline and was stopped",
        )
    if pod_reason == "Evicted":
        detail = pod_message or "the node ran short of a resource"
        return Outcome(
            status=st.ERRORED,
            exit_code=exit_code,
            reason=pod_reason,
            message=f"{what} was evicted from its node: {detail}",
        )
    if terminated.get("reason") == "OOMKilled":
        limit = _memory_limit(pod)
        where = f"its limit is {limit}" if limit else "it has no memory limit, so the node ran out"
        return Outcome(
            status=st.FAILED,
            exit_code=exit_code,
            reason="OOMKilled",
            message=f"{what} ran out of memory (OOMKilled); {where}",
        )
    if deleted and (exit_code is None or exit_code in KILLED_EXIT_CODES):
        # Killed by its deletion, not ended by its own command.
        return Outcome(
            status=st.ERRORED,
            exit_code=exit_code,
            reason="Deleted",
            message=f"{what}: {DELETED_MESSAGE}",
        )
    if terminated.get("reason") == "ContainerCannotRun":
        detail = terminated.get("message") or "the command could not start"
        return Outcome(
            status=st.ERRORED,
            exit_code=exit_code,
            reason="ContainerCannotRun",
            message=f"{what} could not run: {detail.strip()}",
        )
    if pod_reason:
        # The node ended it (graceful node shutdown, a node lost, an admission error…).
        detail = f"{pod_reason}: {pod_message}" if pod_message else pod_reason
        return Outcome(
            status=st.ERRORED,
            exit_code=exit_code,
            reason=pod_reason,
            message=f"{what} was stopped by its node ({detail})",
        )
    if exit_code is None:
        return Outcome(
            status=st.ERRORED,
            reason=reason,
            message=f"{what} ended without an exit code ({reason or 'unknown reason'})",
        )
    return Outcome(
        status=st.FAILED,
        exit_code=exit_code,
        reason=reason,
        message=f"{what} exited with code {exit_code}",
    )


def _doomed(
    pod: Mapping[str, Any],
    status: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    what: str,
    now: datetime,
    patience: Patience,
) -> Outcome | None:
    """The outcome of a pod still waiting on something that will not come, else ``None``."""
    age = _age(pod, now)
    waiting = (container.get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    if reason in PULL_HOPELESS or (
        reason in PULL_RETRYING and age is not None and age >= patience.image_pull_seconds
    ):
        image = _image(pod) or container.get("image") or "?"
        detail = (waiting.get("message") or "").strip()
        since = "" if reason in PULL_HOPELESS else f" for {_duration(age or 0)}"
        return Outcome(
            status=st.ERRORED,
            reason=reason,
            doomed=True,
            message=(
                f"{what} could not start: image {image!r} was not pulled{since} "
                f"({reason}{': ' + detail if detail else ''})"
            ),
        )
    if reason in CONFIG_RETRYING and age is not None and age >= patience.image_pull_seconds:
        detail = (waiting.get("message") or "").strip() or "no detail given"
        return Outcome(
            status=st.ERRORED,
            reason=reason,
            doomed=True,
            message=(
                f"{what} could not start: its container could not be created for "
                f"{_duration(age)} ({reason}: {detail})"
            ),
        )
    scheduled = _condition(status, "PodScheduled")
    if (
        scheduled is not None
        and scheduled.get("status") == "False"
        and scheduled.get("reason") == "Unschedulable"
        and age is not None
        and age >= patience.unschedulable_seconds
    ):
        detail = (scheduled.get("message") or "").strip() or "no node fits it"
        return Outcome(
            status=st.ERRORED,
            reason="Unschedulable",
            doomed=True,
            message=(f"{what} could not be scheduled for {_duration(age)}: {detail}"),
        )
    return None


def _container_status(status: Mapping[str, Any]) -> Mapping[str, Any]:
    """The step container's status (the first container's, if none is called ``step``)."""
    statuses = [c for c in status.get("containerStatuses") or () if isinstance(c, Mapping)]
    for container in statuses:
        if container.get("name") == CONTAINER:
            return container
    return statuses[0] if statuses else {}


def _spec_container(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    containers = [c for c in (pod.get("spec") or {}).get("containers") or () if c]
    for container in containers:
        if container.get("name") == CONTAINER:
            return dict(container)
    return dict(containers[0]) if containers else {}


def _image(pod: Mapping[str, Any]) -> str | None:
    image = _spec_container(pod).get("image")
    return str(image) if image else None


def _memory_limit(pod: Mapping[str, Any]) -> str | None:
    limits = (_spec_container(pod).get("resources") or {}).get("limits") or {}
    limit = limits.get("memory")
    return str(limit) if limit else None


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == type_:
            return condition
    return None


def _age(pod: Mapping[str, Any], now: datetime) -> float | None:
    """Seconds since the pod was created, or ``None`` if it does not say when."""
    created = (pod.get("metadata") or {}).get("creationTimestamp")
    if not isinstance(created, str):
        return None
    try:
        moment = datetime.fromisoformat(created)
    except ValueError:
        return None
    return (now - moment).total_seconds()


def _duration(seconds: float) -> str:
    """``45s``, ``5m``, ``5m30s``, ``2h``: how long, as a person would say it."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if minutes else ""
    return text + (f"{secs}s" if secs and not hours else "")


def _result(terminated: Mapping[str, Any] | None) -> dict[str, Any]:
    message = (terminated or {}).get("message") or ""
    try:
        parsed = json.loads(message)
    except ValueError:
        return {}
    if isinstance(parsed, list):  # check answers with a list of versions, oldest first
        return {"versions": parsed}
    return parsed if isinstance(parsed, dict) else {}
