"""What a cluster does to a pod: evicted, drained, OOM-killed, an image that never pulls, a
step past its deadline. ``tests/test_e2e_cluster.py`` checks the message each one gives;
here each is checked for what it leaves behind: the step and the build ended with the
right status, the step's half-written output registered and on the store until the
reaper takes it (with everything else of the build), and no pod left on the API server
or on the node. On SQLite and Postgres.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shared import status as st
from shared.db import ArtifactRow, transaction
from tests.fakes import FakeClock
from tests.faults.cluster import NAMESPACE, FaultCluster, assert_settled, workspace
from tests.kube.kubelet import step_pods

pytestmark = pytest.mark.timeout(180)

#: make writes ``out``; work reads it, half-writes ``partial`` and runs until stopped;
#: after would read ``partial`` and must be skipped.
PIPELINE = """
jobs:
- name: build
  plan:
  - task: make
    config:
      platform: linux
      outputs: [{{name: out}}]
      run: {{path: sh, args: [-c, "echo made > out/file"]}}
  - task: work
    config:
      platform: linux
      image_resource:
        type: registry-image
        source: {{repository: {repository}, tag: "1"}}
      inputs: [{{name: out}}]
      outputs: [{{name: partial}}]
      run: {{path: sh, args: [-c, "echo half > partial/file; echo working; sleep 600"]}}
  - task: after
    config:
      platform: linux
      inputs: [{{name: partial}}]
      run: {{path: "true"}}
"""


def _phase(pod: dict[str, Any]) -> str:
    return str(pod.get("status", {}).get("phase", ""))


def _waiting(pod: dict[str, Any]) -> str:
    for container in pod.get("status", {}).get("containerStatuses") or []:
        reason = container.get("state", {}).get("waiting", {}).get("reason")
        if reason:
            return str(reason)
    return ""


def evict(cluster: FaultCluster, pod: str) -> None:
    cluster.kubelet.evict(pod)


def drain(cluster: FaultCluster, pod: str) -> None:
    cluster.kubelet.drain(pod)


def give_up_pulling(cluster: FaultCluster, pod: str) -> None:
    """The image pull timeout passes; the kubelet's next attempt reports ``ImagePullBackOff``."""
    cluster.clock.advance(cluster.settings.image_pull_timeout_seconds)  # type: ignore[attr-defined]
    cluster.kubelet.retry()


@dataclass(frozen=True, kw_only=True)
class PodFault:
    desc: str
    status: str
    """What the step ends as (the build ends the same)."""
    says: str
    """What the step's error must say."""
    arm: Callable[[FaultCluster], None] = lambda cluster: None
    wait_for: str = "running"
    """The pod's state before the fault strikes: ``running`` (its output half-written),
    ``pulling`` (its image never came), or ``none`` (the fault needs no hand)."""
    strike: Callable[[FaultCluster, str], None] | None = None
    repository: str = "busybox"
    settings: dict[str, Any] = field(default_factory=dict)


FAULTS = [
    PodFault(desc="evicted", status=st.ERRORED, says="was evicted from its node", strike=evict),
    PodFault(
        desc="drained",
        status=st.ERRORED,
        says="pod was deleted before the step finished (node drain?)",
        strike=drain,
    ),
    PodFault(
        desc="oom-killed",
        status=st.FAILED,
        says="ran out of memory (OOMKilled); its limit is 64Mi",
        arm=lambda cluster: cluster.kubelet.oom_kill(step_pods("work")),
        wait_for="none",
        settings={"step_limits": {"memory": "64Mi"}},
    ),
    PodFault(
        desc="image-never-pulls",
        status=st.ERRORED,
        says="could not start: image 'registry.invalid/nope:1' was not pulled for 5m",
        arm=lambda cluster: cluster.kubelet.fail_pulls(r"^registry\.invalid/"),
        wait_for="pulling",
        strike=give_up_pulling,
        repository="registry.invalid/nope",
    ),
    PodFault(
        desc="past-its-deadline",
        status=st.ERRORED,
        says="timed out: it ran past its deadline and was stopped",
        wait_for="none",
        settings={"step_timeout_seconds": 1},
    ),
]


@pytest.fixture
def folder() -> Iterator[Path]:
    with workspace() as path:
        yield path


@pytest.mark.parametrize("fault", FAULTS, ids=[f.desc for f in FAULTS])
def test_a_pod_the_cluster_stops_ends_its_build_and_leaves_nothing(
    folder: Path, database_url: str, clock: FakeClock, fault: PodFault
) -> None:
    cluster = FaultCluster(folder, database_url, clock=clock, **fault.settings)
    try:
        cluster.ci.set_pipeline("faults", PIPELINE.format(repository=fault.repository))
        fault.arm(cluster)
        event_id = cluster.request("build")
        if fault.wait_for != "none":

            def work_pod() -> dict[str, Any] | None:
                pods = [
                    p for p in cluster.server.pods(NAMESPACE) if "-work-" in p["metadata"]["name"]
                ]
                return pods[0] if pods else None

            def ready_for_it() -> bool:
                pod = work_pod()
                if pod is None:
                    return False
                if fault.wait_for == "pulling":
                    return _waiting(pod) == "ErrImagePull"
                name = pod["metadata"]["name"]
                return _phase(pod) == "Running" and b"working" in cluster.ci.runtime.logs(name)

            cluster.run_until(ready_for_it)
            pod = work_pod()
            assert pod is not None and fault.strike is not None
            fault.strike(cluster, pod["metadata"]["name"])
        cluster.run_builds([event_id])

        steps = cluster.steps(event_id)
        work = steps["work"]
        assert work.status == fault.status, (work.status, work.error)
        assert work.error is not None and fault.says in work.error, work.error
        assert (steps["make"].status, steps["after"].status) == (st.SUCCEEDED, st.SKIPPED)
        # The half-written output is registered (never ready) and on the store, or was
        # never made (the pod never started): either way nothing is lost track of.
        with transaction(cluster.deps.sessions) as session:
            partial = session.scalars(
                select(ArtifactRow).where(ArtifactRow.step_id == work.id)
            ).one()
        assert partial.state == "creating"
        assert_settled(cluster, {event_id: fault.status})
        if fault.wait_for == "running":
            assert (cluster.store / partial.subpath / "file").read_text() == "half\n"
        report = cluster.tick()
        assert report.errors == []
        assert_settled(cluster, {event_id: fault.status}, reaped=True)
    finally:
        cluster.close()
