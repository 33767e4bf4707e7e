"""JetBridge against a real cluster: the runtime, real pod statuses read right, a build.

Skipped, saying so once, unless ``KUBECONFIG`` names a cluster (``make e2e-live``).
What the cluster needs is in docs/architecture.md ("Running the live suite").
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, Configuration, V1Pod

from shared import status as st
from shared.app import utcnow
from shared.plan import StepSpec
from shared.podspec import LABEL_PIPELINE, PodIds, PodSettings, build_step_pod
from shared.podstatus import Patience, outcome
from shared.runtime import PodDict
from shared.runtime.kubernetes import KubernetesRuntime
from shared.settings import Settings
from tests.kube.cluster import ClusterCI
from tests.live.conftest import CLAIM, POD_SECONDS, live_configuration

_cluster = live_configuration()
if isinstance(_cluster, str):
    pytest.skip(_cluster, allow_module_level=True)

BUSYBOX = "busybox:1.36"
NOW_PATIENCE = Patience(image_pull_seconds=0, unschedulable_seconds=0)


@pytest.fixture
def runtime(live: Configuration, namespace: str) -> Iterator[KubernetesRuntime]:
    runtime = KubernetesRuntime(ApiClient(live), namespace=namespace, grace_period_seconds=0)
    yield runtime
    for pod in runtime.list():
        runtime.delete(pod["metadata"]["name"])
    runtime.close()


def step_pod(
    namespace: str,
    step_id: int,
    *,
    image: str = BUSYBOX,
    node_selector: dict[str, str] | None = None,
) -> V1Pod:
    spec = StepSpec(
        key=str(step_id),
        name=f"live-{step_id}",
        kind="task",
        image=image,
        command=("sh", "-c", "echo hello from $(hostname)"),
    )
    ids = PodIds(pipeline="live", job="j", build_id=1, step_id=step_id, step_key=str(step_id))
    settings = PodSettings(claim=CLAIM, namespace=namespace, node_selector=node_selector or {})
    return build_step_pod(spec, ids=ids, mounts=[], settings=settings)


def wait_for(runtime: KubernetesRuntime, name: str, check: Callable[[PodDict], bool]) -> PodDict:
    deadline = time.monotonic() + POD_SECONDS
    while True:
        pod = runtime.read(name)
        if pod is not None and check(pod):
            return pod
        assert time.monotonic() < deadline, f"pod {name} never got there: {pod}"
        time.sleep(1)


def read_as_task(pod: PodDict) -> Any:
    return outcome(pod, kind="task", name="t", now=datetime.now(UTC), patience=NOW_PATIENCE)


def test_a_pod_runs_and_the_runtime_reads_lists_logs_and_deletes_it(
    runtime: KubernetesRuntime, namespace: str
) -> None:
    pod = step_pod(namespace, 1)
    name = pod.metadata.name
    runtime.launch(pod)
    runtime.launch(pod)  # exists already: launched
    assert name in {p["metadata"]["name"] for p in runtime.list()}
    done = wait_for(runtime, name, lambda p: read_as_task(p) is not None)
    result = read_as_task(done)
    assert result.status == st.SUCCEEDED, result
    assert b"hello from" in runtime.logs(name)
    runtime.delete(name)
    deadline = time.monotonic() + POD_SECONDS
    while runtime.read(name) is not None:
        assert time.monotonic() < deadline, f"pod {name} was not deleted"
        time.sleep(1)


def test_an_image_that_never_pulls_is_read_as_doomed_naming_the_image(
    runtime: KubernetesRuntime, namespace: str
) -> None:
    image = "registry.invalid/jetbridge/nope:1"
    pod = step_pod(namespace, 2, image=image)
    runtime.launch(pod)
    stuck = wait_for(runtime, pod.metadata.name, lambda p: read_as_task(p) is not None)
    result = read_as_task(stuck)
    assert result.doomed and result.status == st.ERRORED
    assert f"image {image!r} was not pulled" in result.message


def test_a_pod_no_node_can_take_is_read_as_doomed_with_the_schedulers_reason(
    runtime: KubernetesRuntime, namespace: str
) -> None:
    pod = step_pod(namespace, 3, node_selector={"jetbridge.dev/no-such-node": "true"})
    runtime.launch(pod)
    stuck = wait_for(runtime, pod.metadata.name, lambda p: read_as_task(p) is not None)
    result = read_as_task(stuck)
    assert result.doomed and result.reason == "Unschedulable"
    assert "could not be scheduled" in result.message


PIPELINE = """
jobs:
- name: build
  plan:
  - task: hello
    config:
      platform: linux
      image_resource: {type: registry-image, source: {repository: busybox, tag: "1.36"}}
      run: {path: sh, args: [-c, "echo hello from the cluster"]}
  - task: fail
    config:
      platform: linux
      image_resource: {type: registry-image, source: {repository: busybox, tag: "1.36"}}
      run: {path: sh, args: [-c, "echo failing; exit 3"]}
  - task: never
    config:
      platform: linux
      image_resource: {type: registry-image, source: {repository: busybox, tag: "1.36"}}
      run: {path: "true"}
"""


def test_a_build_runs_through_the_cluster_path(
    live: Configuration, namespace: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, namespace=namespace, store_claim=CLAIM)
    with ClusterCI(settings, configuration=live, clock=utcnow) as ci:
        ci.set_pipeline("live", PIPELINE)
        build = ci.run_build("live", "build", timeout=POD_SECONDS * 2)
        hello, fail, never = (ci.step(build.id, n) for n in ("hello", "fail", "never"))
        assert hello.status == st.SUCCEEDED
        assert b"hello from the cluster" in ci.deps.logs.read(build.id, hello.key)
        assert (fail.status, fail.error) == (st.FAILED, "task 'fail' exited with code 3")
        assert never.status == st.SKIPPED
        assert build.status == st.FAILED


LIVE_DEMO = (
    "JETBRIDGE_LIVE_NAMESPACE",
    "JETBRIDGE_LIVE_STORE_ROOT",
    "JETBRIDGE_LIVE_RESOURCE_IMAGE",
    "JETBRIDGE_LIVE_REPO",
)


@pytest.mark.skipif(
    not all(os.environ.get(v) for v in LIVE_DEMO),
    reason="the demo needs " + ", ".join(LIVE_DEMO) + " (see docs/architecture.md)",
)
def test_the_demo_pipeline_succeeds_on_the_cluster(live: Configuration, tmp_path: Path) -> None:
    """The demo in a namespace whose claim this machine sees at ``JETBRIDGE_LIVE_STORE_ROOT``."""
    demo = Path(__file__).resolve().parents[2] / "examples" / "demo" / "pipeline.yml"
    pipeline = f"live-demo-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        data_dir=tmp_path,
        namespace=os.environ["JETBRIDGE_LIVE_NAMESPACE"],
        store_claim=os.environ.get("JETBRIDGE_LIVE_CLAIM", CLAIM),
        store_root=Path(os.environ["JETBRIDGE_LIVE_STORE_ROOT"]),
        resource_image=os.environ["JETBRIDGE_LIVE_RESOURCE_IMAGE"],
    )
    with ClusterCI(settings, configuration=live, clock=utcnow) as ci:
        try:
            ci.set_pipeline(pipeline, demo.read_text(), {"repo": os.environ["JETBRIDGE_LIVE_REPO"]})
            build = ci.run_build(pipeline, "build", timeout=POD_SECONDS * 4)
            assert build.status == st.SUCCEEDED, build.error
        finally:  # only this run's pods: the namespace may hold an installed JetBridge's
            for pod in ci.runtime.list():
                if pod["metadata"]["labels"].get(LABEL_PIPELINE) == pipeline:
                    ci.runtime.delete(pod["metadata"]["name"])
