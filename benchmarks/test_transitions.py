"""Control-plane time per step transition, through the cluster path with the fake API server.

A transition is what JetBridge does between one step's pod ending and the next
step's pod being created: the pod event travels the watch to the step runner,
which reads the log, records the step (outputs digested and marked ready),
deletes the pod, advances the build, announces the next step, registers its
output and creates its pod over HTTP. It is timed at the API server, from the
kubelet's status write (``Succeeded``) to the next pod's create. The kubelet here
ends each pod at once without running anything, so only the control plane is
measured. ``make bench`` runs it; the median and 99th percentile are printed.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api

from benchmarks.conftest import Recorder
from shared import status as st
from shared.app import utcnow
from shared.podspec import MANAGED_BY
from shared.settings import Settings
from tests.kube.apiserver import FakeApiServer, rfc3339
from tests.kube.cluster import ClusterCI, configuration
from tests.kube.watch import PodWatch

NAMESPACE = "ci"
STEPS = 20
BUILDS = 15


def chain(steps: int) -> str:
    """A job of ``steps`` tasks, each reading the output of the one before."""
    lines = ["jobs:", "- name: chain", "  plan:"]
    for i in range(steps):
        inputs = f"inputs: [{{name: o{i - 1}}}], " if i else ""
        lines.append(f"  - task: s{i}")
        lines.append(
            f"    config: {{platform: linux, {inputs}outputs: [{{name: o{i}}}], "
            'run: {path: "true"}}'
        )
    return "\n".join(lines) + "\n"


class InstantKubelet:
    """Ends every JetBridge pod as soon as it is created: exit code 0, nothing run."""

    def __init__(self, server: FakeApiServer) -> None:
        self._client = ApiClient(configuration(server.url))
        self._api = CoreV1Api(self._client)
        server.log_source = lambda namespace, name, container: b""
        self._watch = PodWatch(
            self._client, namespace=NAMESPACE, on_event=self._on_event, name="instant-kubelet"
        )

    def start(self) -> InstantKubelet:
        self._watch.start()
        return self

    def stop(self) -> None:
        self._watch.stop()
        self._client.close()

    def _on_event(self, type_: str, pod: dict[str, Any]) -> None:
        labels = pod["metadata"].get("labels") or {}
        if type_ != "ADDED" or labels.get(MANAGED_BY) != "jetbridge":
            return
        now = rfc3339(utcnow())
        terminated = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
        status = {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "step", "state": {"terminated": terminated}}],
        }
        self._api.patch_namespaced_pod_status(
            pod["metadata"]["name"], NAMESPACE, {"status": status}, _preload_content=False
        )


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[tuple[FakeApiServer, ClusterCI]]:
    server = FakeApiServer(namespaces=(NAMESPACE,)).start()
    kubelet = InstantKubelet(server).start()
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, namespace=NAMESPACE)
    ci = ClusterCI(settings, configuration=configuration(server.url), clock=utcnow)
    yield server, ci
    ci.close()
    kubelet.stop()
    server.stop()


def transitions(server: FakeApiServer) -> list[float]:
    """Seconds from each pod's ``Succeeded`` status write to the next pod's create, per build."""
    creates = [c for c in server.calls_of("create") if c.body]
    ended = {
        c.name: c.at
        for c in server.calls_of("patch", "pods/status")
        if c.body["status"].get("phase") == "Succeeded"
    }
    by_build: dict[str, list[tuple[float, str]]] = {}
    for call in creates:
        build = call.body["metadata"]["labels"]["jetbridge.dev/build"]
        by_build.setdefault(build, []).append((call.at, call.body["metadata"]["name"]))
    times = []
    for pods in by_build.values():
        for (_, previous), (created, _) in itertools.pairwise(pods):
            times.append(created - ended[previous])
    return times


@pytest.mark.bench
def test_control_plane_time_per_step_transition(
    cluster: tuple[FakeApiServer, ClusterCI], database_url: str, benchmark: Any, results: Recorder
) -> None:
    server, ci = cluster
    ci.set_pipeline("bench", chain(STEPS))

    def one_build() -> None:
        build = ci.run_build("bench", "chain", timeout=120)
        assert build.status == st.SUCCEEDED

    benchmark.pedantic(one_build, rounds=BUILDS, iterations=1)
    times = sorted(transitions(server))
    assert len(times) == BUILDS * (STEPS - 1)
    median = statistics.median(times)
    p99 = times[min(len(times) - 1, round(0.99 * len(times)))]
    database = "postgres" if database_url.startswith("postgresql") else "sqlite"
    benchmark.extra_info.update(median_ms=median * 1000, p99_ms=p99 * 1000, samples=len(times))
    group = "control plane per step transition"
    results.record(group, "p50", median * 1000, "ms", database=database, transitions=len(times))
    results.record(group, "p99", p99 * 1000, "ms", database=database, transitions=len(times))
    results.note(
        group,
        "from a pod's `Succeeded` status write at the API server to the next step's pod "
        "create: watch, step runner (log kept, step recorded, outputs digested, pod "
        "deleted, build advanced), `step.ready`, launch; pods end at once.",
    )
