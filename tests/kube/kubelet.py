"""A simulated kubelet (and scheduler) for the fake API server: pods really run, locally.

It watches the namespace's pods over the API like a kubelet. Each new pod is
bound to ``node`` (``pods/binding``), run by ``shared.runtime.local.LocalRuntime``
(the very pod the Kubernetes runtime created; the claim is a local folder), and
its status is written back through ``pods/status``: ``Running`` once started,
then ``Succeeded``/``Failed`` as the local runtime reports it. The API server's
log endpoint reads the local runtime's log. A pod marked for deletion (a node
drain) is killed, reported ``Failed`` with exit code 143, and removed (grace 0).

What the cluster can do that a laptop cannot, on demand:

* ``fail_pulls(pattern)``: pods whose image matches never start; they wait in
  ``ErrImagePull`` (or ``InvalidImageName``) and flip to ``ImagePullBackOff`` on
  each ``retry()``, as the kubelet's back-off does;
* ``refuse(pattern)``: pods whose name matches stay unscheduled
  (``PodScheduled=False``, ``Unschedulable``); ``retry()`` is the scheduler trying again;
* ``oom_kill(pattern)``: pods whose name matches are killed once running and
  reported ``OOMKilled`` with exit code 137;
* ``evict(name)``: the node evicts a running pod (``Failed``, reason ``Evicted``);
* ``drain(name)``: ``kubectl drain`` deletes a running pod through the API.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from shared.errors import NotFoundError
from shared.runtime.local import LocalRuntime
from tests.kube.apiserver import rfc3339
from tests.kube.watch import PodDict, PodWatch

log = logging.getLogger(__name__)

NODE = "node-1"
EVICTION_MESSAGE = (
    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. "
)
UNSCHEDULABLE_MESSAGE = (
    "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are available: "
    "1 No preemption victims found for incoming pod."
)


def step_pods(step: str) -> str:
    """A pattern matching the pod names of the step called ``step`` (``jb-<build>-<step>-a<n>-…``)."""
    dns = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", step.lower())).strip("-")
    return rf"^jb-\d+-{re.escape(dns)}-a\d+-[0-9a-f]{{8}}$"


@dataclass(kw_only=True)
class _Pod:
    """What the kubelet knows of one pod."""

    name: str
    stage: str
    """``unschedulable``, ``pulling``, ``running``, ``done`` or ``gone``."""
    image: str
    pull_reason: str = ""
    wait_message: str = ""
    started: str = ""


class SimulatedKubelet:
    """Runs the pods of one namespace of the fake API server (see the module docstring)."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        claims: Mapping[str, Path],
        work_root: Path,
        clock: Callable[[], datetime],
        image_binds: Mapping[str, Mapping[str, Path]] | None = None,
        sandbox: str = "auto",
        node: str = NODE,
    ) -> None:
        self._api = CoreV1Api(api_client)
        self._client = api_client
        self.namespace = namespace
        self.node = node
        self._clock = clock
        self.runtime = LocalRuntime(
            claims=claims,
            work_root=work_root,
            on_finish=self._finished,
            image_binds=image_binds,
            sandbox=sandbox,  # type: ignore[arg-type]
            clock=clock,
        )
        self._lock = threading.RLock()
        self._pods: dict[str, _Pod] = {}
        self._logs: dict[str, bytes] = {}
        self._pull_failures: list[tuple[re.Pattern[str], str]] = []
        self._unschedulable: list[re.Pattern[str]] = []
        self._oom: list[re.Pattern[str]] = []
        self._watch = PodWatch(
            api_client, namespace=namespace, on_event=self._on_event, name="kubelet"
        )

    def start(self) -> SimulatedKubelet:
        self._watch.start()
        return self

    def stop(self) -> None:
        self._watch.stop()
        self.runtime.close()

    def share(self, path: Path) -> None:
        """A host directory every pod sees (a repository a pod would reach over the network)."""
        self.runtime.share(path)

    # -- what a test asks for ----------------------------------------------------

    def fail_pulls(self, image: str, *, reason: str = "ErrImagePull") -> None:
        """Pods whose image matches the pattern ``image`` never pull it."""
        self._pull_failures.append((re.compile(image), reason))

    def refuse(self, pod: str) -> None:
        """Pods whose name matches the pattern ``pod`` fit no node."""
        self._unschedulable.append(re.compile(pod))

    def oom_kill(self, pod: str) -> None:
        """Pods whose name matches the pattern ``pod`` run out of memory once running."""
        self._oom.append(re.compile(pod))

    def evict(self, name: str, message: str = EVICTION_MESSAGE) -> None:
        """Evict a running pod, as the kubelet does when the node runs short."""
        pod = self._stop(name)
        if pod is None:
            raise AssertionError(f"pod {name} is not running here: nothing to evict")
        with self._lock:
            self._patch(
                name,
                {
                    "phase": "Failed",
                    "reason": "Evicted",
                    "message": message,
                    "containerStatuses": [
                        self._terminated(pod, exit_code=137, reason="ContainerStatusUnknown")
                    ],
                },
            )

    def drain(self, name: str) -> None:
        """Delete a pod through the API, as ``kubectl drain`` does (with its grace period)."""
        self._api.delete_namespaced_pod(name, self.namespace, _preload_content=False)

    def retry(self) -> None:
        """The kubelet pulls again and the scheduler tries again: stuck pods report again."""
        with self._lock:
            stuck = [p for p in self._pods.values() if p.stage in ("pulling", "unschedulable")]
            for pod in stuck:
                if pod.stage == "pulling":
                    if pod.pull_reason in ("ErrImagePull", "ImagePullBackOff"):
                        pod.pull_reason = (
                            "ImagePullBackOff"
                            if pod.pull_reason == "ErrImagePull"
                            else "ErrImagePull"
                        )
                    self._patch(pod.name, {"containerStatuses": [self._waiting(pod)]})
                else:
                    self._patch(pod.name, {"conditions": [self._unschedulable_condition()]})

    def log(self, namespace: str, name: str, container: str) -> bytes | None:
        """The API server's log endpoint: ``None`` while the container has not started."""
        with self._lock:
            if name in self._logs:
                return self._logs[name]
            pod = self._pods.get(name)
            if pod is None or pod.stage not in ("running", "done"):
                return None
        try:
            return self.runtime.logs(name)
        except NotFoundError:
            return None

    # -- reacting to pods --------------------------------------------------------

    def _on_event(self, type_: str, pod: PodDict) -> None:
        """Called on the watch's thread, one event at a time."""
        name = pod["metadata"]["name"]
        with self._lock:
            known = self._pods.get(name)
        if type_ == "DELETED":
            self._stop(name)
            with self._lock:
                self._pods.pop(name, None)
                self._logs.pop(name, None)
        elif known is None and type_ == "ADDED":
            self._admit(pod)
        elif known is not None and pod["metadata"].get("deletionTimestamp"):
            self._terminate(known)

    def _admit(self, pod: PodDict) -> None:
        name = pod["metadata"]["name"]
        image = pod["spec"]["containers"][0]["image"]
        record = _Pod(name=name, stage="unschedulable", image=image)
        with self._lock:
            self._pods[name] = record
            if any(p.search(name) for p in self._unschedulable):
                self._patch(name, {"conditions": [self._unschedulable_condition()]})
                return
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        self._api.create_namespaced_pod_binding(
            name, self.namespace, binding, _preload_content=False
        )
        with self._lock:
            for pattern, reason in self._pull_failures:
                if pattern.search(image):
                    record.stage, record.pull_reason = "pulling", reason
                    started = {"startTime": rfc3339(self._clock())}
                    self._patch(name, {**started, "containerStatuses": [self._waiting(record)]})
                    return
        missing = self._load_secrets(pod)
        with self._lock:
            if missing:
                # As a kubelet: the container waits for its Secret, and says so.
                record.stage, record.pull_reason = "pulling", "CreateContainerConfigError"
                record.wait_message = missing
                started = {"startTime": rfc3339(self._clock())}
                self._patch(name, {**started, "containerStatuses": [self._waiting(record)]})
                return
            record.stage = "running"
            record.started = rfc3339(self._clock())
        self.runtime.launch(self._client.deserialize(json.dumps(pod), "V1Pod", "application/json"))
        with self._lock:
            if record.stage != "running":
                return  # it finished (or was stopped) already: that status is written
            self._patch(
                name,
                {
                    "phase": "Running",
                    "startTime": record.started,
                    "containerStatuses": [
                        {
                            "name": "step",
                            "image": image,
                            "imageID": "",
                            "ready": True,
                            "started": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": record.started}},
                        }
                    ],
                },
            )
        if any(p.search(name) for p in self._oom) and self._stop(name) is not None:
            with self._lock:
                self._patch(
                    name,
                    {
                        "phase": "Failed",
                        "containerStatuses": [
                            self._terminated(record, exit_code=137, reason="OOMKilled")
                        ],
                    },
                )

    def _load_secrets(self, pod: PodDict) -> str:
        """Hand the Secrets the pod's env refers to to the local runtime, as a kubelet
        reads them from the API; the message of the first one missing, else ``""``."""
        for container in pod["spec"]["containers"]:
            for var in container.get("env") or []:
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if not ref:
                    continue
                try:
                    secret = self._api.read_namespaced_secret(ref["name"], self.namespace)
                except ApiException as e:
                    if e.status == 404 and not ref.get("optional"):
                        return f'secret "{ref["name"]}" not found'
                    if e.status == 404:
                        continue
                    raise
                data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
                if ref["key"] not in data and not ref.get("optional"):
                    return (
                        f"couldn't find key {ref['key']} in Secret {self.namespace}/{ref['name']}"
                    )
                self.runtime.put_secret(ref["name"], data, labels={})
        return ""

    def _terminate(self, pod: _Pod) -> None:
        """A pod marked for deletion: stop it (SIGTERM ends it with 143), then remove it."""
        with self._lock:
            if pod.stage == "gone":
                return
        if self._stop(pod.name) is not None:
            with self._lock:
                self._patch(
                    pod.name,
                    {
                        "phase": "Failed",
                        "containerStatuses": [self._terminated(pod, exit_code=143, reason="Error")],
                    },
                )
        with self._lock:
            pod.stage = "gone"
        self._api.delete_namespaced_pod(
            pod.name, self.namespace, grace_period_seconds=0, _preload_content=False
        )

    def _finished(self, local: PodDict) -> None:
        """The local runtime's report of a pod that ended: its status goes to the API."""
        name = local["metadata"]["name"]
        status = local["status"]
        patch = {"phase": status["phase"], "containerStatuses": status["containerStatuses"]}
        for key in ("reason", "message"):
            if key in status:
                patch[key] = status[key]
        with self._lock:
            pod = self._pods.get(name)
            if pod is None or pod.stage != "running":
                return
            pod.stage = "done"
            try:
                self._patch(name, patch)
            except Exception:
                log.exception("could not report pod %s", name)

    # -- helpers -----------------------------------------------------------------

    def _stop(self, name: str) -> _Pod | None:
        """Kill a running pod's process, keeping its log for the API; the pod if it ran.

        The stage moves first, under the lock, so a report of the same process ending
        meanwhile is ignored; the kill itself happens outside the lock, as it waits
        for the local runtime's watcher, which may be waiting for the lock.
        """
        with self._lock:
            pod = self._pods.get(name)
            running = pod is not None and pod.stage == "running"
            if running:
                assert pod is not None
                pod.stage = "done"
        try:
            log_data = self.runtime.logs(name)
        except NotFoundError:
            log_data = None
        self.runtime.delete(name)
        if log_data is not None:
            with self._lock:
                self._logs[name] = log_data
        return pod if running else None

    def _patch(self, name: str, status: dict[str, Any]) -> None:
        self._api.patch_namespaced_pod_status(
            name,
            self.namespace,
            {"status": status},
            _preload_content=False,
            _content_type="application/merge-patch+json",
        )

    def _waiting(self, pod: _Pod) -> dict[str, Any]:
        messages = {
            "ErrImagePull": (
                f'failed to pull and unpack image "{pod.image}": failed to resolve reference '
                f'"{pod.image}": not found'
            ),
            "ImagePullBackOff": f'Back-off pulling image "{pod.image}"',
            "InvalidImageName": (
                f'Failed to apply default image tag "{pod.image}": couldn\'t parse image name '
                f'"{pod.image}": invalid reference format'
            ),
        }
        return {
            "name": "step",
            "image": pod.image,
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {
                "waiting": {
                    "reason": pod.pull_reason,
                    "message": messages.get(pod.pull_reason, pod.wait_message),
                }
            },
        }

    def _terminated(self, pod: _Pod, *, exit_code: int, reason: str) -> dict[str, Any]:
        now = rfc3339(self._clock())
        return {
            "name": "step",
            "image": pod.image,
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": reason,
                    "startedAt": pod.started or now,
                    "finishedAt": now,
                }
            },
        }

    def _unschedulable_condition(self) -> dict[str, Any]:
        return {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": UNSCHEDULABLE_MESSAGE,
            "lastProbeTime": rfc3339(self._clock()),
        }
