"""The runtime port: launch a step's pod, read it, read its logs, delete it; keep a build's Secret.

Two implementations consume the very same ``V1Pod``: ``local`` (this machine,
bubblewrap or a folder of links) and ``kubernetes`` (the cluster). A runtime
never waits for a pod: it reports a finished pod by calling ``on_finish`` (the
local runtime) or the cluster does, through Knative's ApiServerSource.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes.client import V1Pod

#: A pod as the Kubernetes API serializes it (camelCase keys), the shape
#: ApiServerSource puts in its events' data.
PodDict = dict[str, Any]


class Runtime(Protocol):
    """Where step pods run."""

    def launch(self, pod: V1Pod) -> None:
        """Start ``pod``. A pod of the same name that already exists counts as launched."""

    def read(self, name: str) -> PodDict | None:
        """The pod as the API shows it now, or ``None`` when there is no such pod."""

    def list(self) -> list[PodDict]:
        """Every pod labelled ``app.kubernetes.io/managed-by: jetbridge`` (the reaper's resync)."""

    def logs(self, name: str) -> bytes:
        """Everything the pod's container wrote to stdout and stderr so far."""

    def delete(self, name: str) -> None:
        """Stop and remove the pod; deleting a pod that is gone is not an error."""

    def put_secret(self, name: str, data: Mapping[str, str], *, labels: Mapping[str, str]) -> None:
        """Make the Secret ``name`` hold at least ``data`` (keys it has and ``data`` lacks stay).

        Pods refer to their credentials in it (``secretKeyRef``); it is written before
        the pod that needs it is launched. Writing the same data again changes nothing.
        """

    def delete_secret(self, name: str) -> None:
        """Remove the Secret ``name``; deleting one that is gone is not an error."""
