"""Fakes of JetBridge's ports, shared by the tests (fakes over mocks)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client import ApiClient, V1Pod

from shared.errors import NotFoundError
from shared.runtime import PodDict


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Handles:
    """Predictable artifact handles: h0001, h0002, …"""

    def __init__(self) -> None:
        self._n = itertools.count(1)

    def __call__(self) -> str:
        return f"h{next(self._n):04d}"


class FakeRuntime:
    """Keeps pods in memory; a test ends them with ``finish``."""

    def __init__(self) -> None:
        self.pods: dict[str, PodDict] = {}
        self.launches: list[str] = []
        self.deleted: list[str] = []
        self.logs_by_name: dict[str, bytes] = {}
        self.secrets: dict[str, dict[str, str]] = {}

    def launch(self, pod: V1Pod) -> None:
        name = pod.metadata.name
        self.launches.append(name)
        if name in self.pods:
            return
        data = ApiClient().sanitize_for_serialization(pod)
        data["status"] = {"phase": "Running"}
        self.pods[name] = data

    def read(self, name: str) -> PodDict | None:
        return copy.deepcopy(self.pods.get(name))

    def list(self) -> list[PodDict]:
        return [copy.deepcopy(p) for _, p in sorted(self.pods.items())]

    def logs(self, name: str) -> bytes:
        if name not in self.pods and name not in self.logs_by_name:
            raise NotFoundError(f"pod {name} not found")
        return self.logs_by_name.get(name, b"")

    def delete(self, name: str) -> None:
        self.deleted.append(name)
        self.pods.pop(name, None)

    def put_secret(self, name: str, data: Mapping[str, str], *, labels: Mapping[str, str]) -> None:
        self.secrets.setdefault(name, {}).update(data)

    def delete_secret(self, name: str) -> None:
        self.secrets.pop(name, None)

    def finish(
        self,
        name: str,
        exit_code: int = 0,
        *,
        message: str = "",
        reason: str | None = None,
        log: bytes = b"",
    ) -> PodDict:
        """End a pod as the kubelet would and return it (the pod-update event's data)."""
        pod = self.pods[name]
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "message": message,
        }
        pod["status"] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{"name": "step", "state": {"terminated": terminated}}],
        }
        self.logs_by_name[name] = log
        return copy.deepcopy(pod)

    def running(self) -> list[str]:
        return [n for n, p in self.pods.items() if p["status"]["phase"] == "Running"]
