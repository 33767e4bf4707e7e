"""What a pod's status means for its step: pure, from the pod as the API serializes it.

The same reading serves the pod-update events of Knative's ApiServerSource, the
local runtime's finish reports, and the reaper's resync of pods whose event was lost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared import status as st
from shared.podspec import LABEL_ATTEMPT, LABEL_BUILD, LABEL_STEP, MANAGED_BY


@dataclass(frozen=True, kw_only=True)
class PodRef:
    """Which step (and which attempt of it) a pod belongs to, from its labels."""

    name: str
    build_id: int
    step_id: int
    attempt: int


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How a finished pod ended, in the words a user reads."""

    status: str
    """``succeeded``, ``failed`` or ``errored``."""
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    result: Mapping[str, Any] = field(default_factory=dict)
    """A resource script's JSON answer, from the termination message."""


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


def outcome(pod: Mapping[str, Any], *, kind: str, name: str) -> Outcome | None:
    """The step's result if the pod has finished, else ``None``.

    ``kind`` and ``name`` phrase the message (``task 'unit' exited with code 3``).
    """
    status = pod.get("status") or {}
    phase = status.get("phase")
    terminated = _terminated(status)
    what = f"{kind} {name!r}"
    if phase == "Succeeded" or (
        terminated and terminated.get("exitCode") == 0 and phase != "Failed"
    ):
        return Outcome(
            status=st.SUCCEEDED,
            exit_code=0,
            result=_result(terminated),
        )
    if phase != "Failed":
        return None
    reason = status.get("reason") or (terminated or {}).get("reason")
    exit_code = (terminated or {}).get("exitCode")
    if reason == "DeadlineExceeded":
        return Outcome(
            status=st.ERRORED,
            exit_code=exit_code,
            reason=reason,
            message=f"{what} timed out: it ran past its deadline and was stopped",
        )
    if reason == "ContainerCannotRun":
        detail = (terminated or {}).get("message") or "the command could not start"
        return Outcome(
            status=st.ERRORED,
            exit_code=exit_code,
            reason=reason,
            message=f"{what} could not run: {detail.strip()}",
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


def _terminated(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for container in status.get("containerStatuses") or ():
        state = container.get("state") or {}
        if state.get("terminated"):
            terminated: Mapping[str, Any] = state["terminated"]
            return terminated
    return None


def _result(terminated: Mapping[str, Any] | None) -> dict[str, Any]:
    message = (terminated or {}).get("message") or ""
    try:
        parsed = json.loads(message)
    except ValueError:
        return {}
    if isinstance(parsed, list):  # check answers with a list of versions, oldest first
        return {"versions": parsed}
    return parsed if isinstance(parsed, dict) else {}
