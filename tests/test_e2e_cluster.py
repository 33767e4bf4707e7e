"""End to end through the cluster path: the Kubernetes runtime over HTTP, a simulated kubelet.

Builds run with ``KubernetesRuntime`` against the fake API server; the simulated
kubelet runs each pod with the local runtime and writes its status back; an
ApiServerSource stand-in delivers every pod change to the step runner as Knative
would. Scenarios that mean the same on a laptop run on both paths (``path``
fixture); the ways only a cluster can fail a pod run on the cluster path, each
checking the message the user reads on the step and the build's status. All of
it on SQLite and on Postgres.

Everything runs in a folder outside ``/tmp``: a pod gets a private ``/tmp`` and
would not see a repository kept there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from sqlalchemy import select

from shared import events, handlers
from shared import status as st
from shared.db import ArtifactRow, BuildRow, StepRow, transaction
from shared.events import event_data
from shared.local import LocalCI
from shared.settings import Settings
from tests.fakes import FakeClock
from tests.faults.cluster import PIPELINE
from tests.kube.apiserver import FakeApiServer
from tests.kube.cluster import ClusterCI, FakeCluster
from tests.kube.kubelet import EVICTION_MESSAGE, UNSCHEDULABLE_MESSAGE, step_pods

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo"
NAMESPACE = "ci"
#: How long a test lets a build take: generous, for a loaded CI machine.
WAIT = 60.0

FAILING = """
jobs:
- name: build
  plan:
  - task: make
    config:
      platform: linux
      outputs: [{name: out}]
      run: {path: sh, args: [-c, "echo partial > out/file; echo about to fail; exit 3"]}
  - task: never
    config:
      platform: linux
      inputs: [{name: out}]
      run: {path: "true"}
"""

#: A step that runs until something stops it, then one that must be skipped.
LONG = """
jobs:
- name: build
  plan:
  - task: work
    config:
      platform: linux
      image_resource:
        type: registry-image
        source: {{repository: {repository}, tag: "1"}}
      run: {{path: sh, args: [-c, "echo working; sleep 600"]}}
  - task: after
    config:
      platform: linux
      run: {{path: "true"}}
"""


@pytest.fixture
def workspace() -> Iterator[Path]:
    base = ROOT / ".jetbridge-test"
    base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Cluster:
    """The fake cluster and JetBridge over it, for one test."""

    def __init__(self, workspace: Path, database_url: str, clock: FakeClock, **settings: Any):
        self.clock = clock
        self.settings = Settings(
            data_dir=workspace / "data",
            database_url=database_url,
            namespace=NAMESPACE,
            **settings,
        )
        store = (workspace / "data" / "store").resolve()
        self.fake = FakeCluster(
            namespace=NAMESPACE,
            claims={self.settings.store_claim: store},
            work_root=workspace / "pods",
            clock=clock,
            resource_image=self.settings.resource_image,
        )
        self.server = self.fake.server
        self.kubelet = self.fake.kubelet
        self.ci = ClusterCI(
            self.settings.with_overrides(store_root=store),
            configuration=self.fake.configuration,
            clock=clock,
            share=self.kubelet.share,
        )

    def close(self) -> None:
        self.ci.close()
        self.fake.close()

    def pod_of(self, step: str) -> dict[str, Any] | None:
        """The pod of the step called ``step`` on the API server, if there is one."""
        pattern = re.compile(step_pods(step))
        pods = [p for p in self.server.pods(NAMESPACE) if pattern.match(p["metadata"]["name"])]
        return pods[0] if pods else None

    def run_until_seen(self, step: str, check: Callable[[dict[str, Any]], bool]) -> str:
        """Deliver events until the step runner has had one of the step's pod passing
        ``check``; returns the pod's name."""
        pattern = re.compile(step_pods(step))

        def matching() -> list[dict[str, Any]]:
            return [
                e.data
                for e in self.ci.source.events()
                if pattern.match(e.data["metadata"]["name"]) and check(e.data)
            ]

        self.ci.run_until(lambda: bool(matching()), timeout=WAIT)
        self.ci.bus.drain()
        return str(matching()[0]["metadata"]["name"])

    def retry(self) -> None:
        """The kubelet's and scheduler's next attempt, delivered to the step runner."""
        sent = len(self.ci.source.events())
        self.kubelet.retry()
        self.ci.run_until(lambda: len(self.ci.source.events()) > sent, timeout=WAIT)
        self.ci.bus.drain()

    def step(self, event_id: str, name: str) -> StepRow:
        build = self.ci.build_for("long", event_id)
        assert build is not None
        return steps_of(self.ci, build.id)[name]


@pytest.fixture
def cluster(workspace: Path, database_url: str, clock: FakeClock) -> Iterator[Cluster]:
    cluster = Cluster(workspace, database_url, clock)
    yield cluster
    cluster.close()


#: The fake API server behind each ClusterCI that ``open_path`` opened.
SERVERS: dict[int, FakeApiServer] = {}


@pytest.fixture(params=["local", "cluster"])
def open_path(
    request: pytest.FixtureRequest, workspace: Path, database_url: str, clock: FakeClock
) -> Iterator[Callable[..., LocalCI | ClusterCI]]:
    """Opens JetBridge with the given settings on the local path (``jetbridge run``) or
    the cluster path."""
    opened: list[Callable[[], None]] = []

    def open_(**settings: Any) -> LocalCI | ClusterCI:
        if request.param == "local":
            local = LocalCI(
                Settings(data_dir=workspace / "data", database_url=database_url, **settings),
                clock=clock,
            )
            opened.append(local.close)
            return local
        cluster = Cluster(workspace, database_url, clock, **settings)
        opened.append(cluster.close)
        SERVERS[id(cluster.ci)] = cluster.server
        return cluster.ci

    yield open_
    for close in reversed(opened):
        close()
    SERVERS.clear()


@pytest.fixture
def path(open_path: Callable[..., LocalCI | ClusterCI]) -> LocalCI | ClusterCI:
    return open_path()


def steps_of(ci: LocalCI | ClusterCI, build_id: int) -> dict[str, StepRow]:
    with transaction(ci.deps.sessions) as session:
        rows = session.scalars(
            select(StepRow).where(StepRow.build_id == build_id, StepRow.kind != "check")
        ).all()
    return {row.name: row for row in rows}


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not true within {timeout:.0f}s"
        time.sleep(0.01)


def running(pod: dict[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") == "Running"


def waiting_on(reason: str) -> Callable[[dict[str, Any]], bool]:
    def check(pod: dict[str, Any]) -> bool:
        for container in pod.get("status", {}).get("containerStatuses") or []:
            if container.get("state", {}).get("waiting", {}).get("reason") == reason:
                return True
        return False

    return check


def unscheduled(pod: dict[str, Any]) -> bool:
    return any(
        c.get("reason") == "Unschedulable" for c in pod.get("status", {}).get("conditions") or []
    )


# -- the same scenarios on both paths ------------------------------------------------


def test_the_demo_pipeline_succeeds(path: LocalCI | ClusterCI, workspace: Path) -> None:
    origin = workspace / "origin.git"
    subprocess.run(
        [sys.executable, str(DEMO / "make_repo.py"), str(origin)], check=True, capture_output=True
    )
    path.set_pipeline("demo", (DEMO / "pipeline.yml").read_text(), {"repo": str(origin)})
    build = path.run_build("demo", "build", timeout=WAIT)
    steps = steps_of(path, build.id)
    assert build.status == st.SUCCEEDED, {n: (s.status, s.error) for n, s in steps.items()}
    assert {n: s.status for n, s in steps.items()} == {
        "source": st.SUCCEEDED,
        "compile": st.SUCCEEDED,
        "unit-test": st.SUCCEEDED,
        "package": st.SUCCEEDED,
        "release": st.SUCCEEDED,
    }
    assert b"1 test passed" in path.deps.logs.read(build.id, steps["unit-test"].key)
    released = subprocess.run(
        ["git", "--git-dir", str(origin), "log", "--format=%s", "release"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert released.startswith("release ")


def test_a_failing_task_fails_the_build_and_skips_what_follows(
    path: LocalCI | ClusterCI,
) -> None:
    path.set_pipeline("failing", FAILING)
    build = path.run_build("failing", "build", timeout=WAIT)
    steps = steps_of(path, build.id)
    assert (steps["make"].status, steps["make"].exit_code) == (st.FAILED, 3)
    assert steps["make"].error == "task 'make' exited with code 3"
    assert b"about to fail" in path.deps.logs.read(build.id, steps["make"].key)
    assert steps["never"].status == st.SKIPPED
    assert (build.status, build.error) == (st.FAILED, "task 'make' exited with code 3")


def test_a_step_past_its_deadline_errors_the_build(
    open_path: Callable[..., LocalCI | ClusterCI],
) -> None:
    ci = open_path(step_timeout_seconds=1)
    ci.set_pipeline("slow", LONG.format(repository="busybox"))
    build = ci.run_build("slow", "build", timeout=WAIT)
    steps = steps_of(ci, build.id)
    message = "task 'work' timed out: it ran past its deadline and was stopped"
    assert (steps["work"].status, steps["work"].error) == (st.ERRORED, message)
    assert steps["after"].status == st.SKIPPED
    assert (build.status, build.error) == (st.ERRORED, message)


# -- what only a cluster does to a pod ------------------------------------------------


def start_long(cluster: Cluster, repository: str = "busybox") -> str:
    """Start a build of ``LONG``; returns the build request's event id."""
    cluster.ci.set_pipeline("long", LONG.format(repository=repository))
    return cluster.ci.request_build("long", "build")


def ended(cluster: Cluster, event_id: str) -> tuple[BuildRow, dict[str, StepRow]]:
    build = cluster.ci.finish("long", event_id, timeout=WAIT)
    return build, steps_of(cluster.ci, build.id)


def assert_errored(build: BuildRow, steps: dict[str, StepRow], message: str) -> None:
    assert (steps["work"].status, steps["work"].error) == (st.ERRORED, message)
    assert steps["after"].status == st.SKIPPED
    assert (build.status, build.error) == (st.ERRORED, message)


def test_an_oom_killed_step_fails_naming_its_memory_limit(
    workspace: Path, database_url: str, clock: FakeClock
) -> None:
    cluster = Cluster(
        workspace,
        database_url,
        clock,
        step_requests={"memory": "32Mi"},
        step_limits={"memory": "64Mi"},
    )
    try:
        cluster.kubelet.oom_kill(step_pods("work"))
        build, steps = ended(cluster, start_long(cluster))
    finally:
        cluster.close()
    message = "task 'work' ran out of memory (OOMKilled); its limit is 64Mi"
    assert (steps["work"].status, steps["work"].exit_code) == (st.FAILED, 137)
    assert steps["work"].error == message
    assert (build.status, build.error) == (st.FAILED, message)


def test_an_evicted_step_errors_with_the_nodes_reason(cluster: Cluster) -> None:
    event_id = start_long(cluster)
    name = cluster.run_until_seen("work", running)
    wait_for(lambda: b"working" in cluster.ci.runtime.logs(name))
    cluster.kubelet.evict(name)
    build, steps = ended(cluster, event_id)
    assert_errored(
        build, steps, f"task 'work' was evicted from its node: {EVICTION_MESSAGE.strip()}"
    )
    assert b"working" in cluster.ci.deps.logs.read(build.id, steps["work"].key)


def test_a_step_whose_pod_is_drained_errors_and_the_pod_goes(cluster: Cluster) -> None:
    event_id = start_long(cluster)
    name = cluster.run_until_seen("work", running)
    cluster.kubelet.drain(name)
    build, steps = ended(cluster, event_id)
    assert_errored(
        build, steps, "task 'work': pod was deleted before the step finished (node drain?)"
    )
    cluster.ci.run_until(lambda: cluster.server.pod(name, NAMESPACE) is None, timeout=WAIT)


def test_an_image_that_never_pulls_errors_the_step_after_the_timeout(cluster: Cluster) -> None:
    cluster.kubelet.fail_pulls(r"^registry\.invalid/")
    event_id = start_long(cluster, repository="registry.invalid/nope")
    name = cluster.run_until_seen("work", waiting_on("ErrImagePull"))
    assert cluster.step(event_id, "work").status == st.RUNNING  # not yet: it may still pull
    cluster.clock.advance(cluster.settings.image_pull_timeout_seconds)
    cluster.retry()  # the kubelet's next attempt, reported as ImagePullBackOff
    build, steps = ended(cluster, event_id)
    assert_errored(
        build,
        steps,
        "task 'work' could not start: image 'registry.invalid/nope:1' was not pulled for 5m "
        '(ImagePullBackOff: Back-off pulling image "registry.invalid/nope:1")',
    )
    # The pod does not linger, pulling forever.
    cluster.ci.run_until(lambda: cluster.server.pod(name, NAMESPACE) is None, timeout=WAIT)


def test_an_invalid_image_name_errors_the_step_at_once(cluster: Cluster) -> None:
    cluster.kubelet.fail_pulls(r"^registry\.invalid/", reason="InvalidImageName")
    build, steps = ended(cluster, start_long(cluster, repository="registry.invalid/Bad_Name"))
    assert_errored(
        build,
        steps,
        "task 'work' could not start: image 'registry.invalid/Bad_Name:1' was not pulled "
        '(InvalidImageName: Failed to apply default image tag "registry.invalid/Bad_Name:1": '
        'couldn\'t parse image name "registry.invalid/Bad_Name:1": invalid reference format)',
    )


def test_an_unschedulable_step_errors_after_the_timeout_even_with_retention(
    workspace: Path, database_url: str, clock: FakeClock
) -> None:
    cluster = Cluster(workspace, database_url, clock, pod_retention_seconds=3600)
    try:
        cluster.kubelet.refuse(step_pods("work"))
        event_id = start_long(cluster)
        name = cluster.run_until_seen("work", unscheduled)
        cluster.clock.advance(cluster.settings.unschedulable_timeout_seconds - 1)
        cluster.retry()
        assert cluster.step(event_id, "work").status == st.RUNNING  # a node may still come
        cluster.clock.advance(1)
        cluster.retry()
        build, steps = ended(cluster, event_id)
        # Kept pods are the finished ones; a pod nothing will run is deleted all the same.
        cluster.ci.run_until(lambda: cluster.server.pod(name, NAMESPACE) is None, timeout=WAIT)
    finally:
        cluster.close()
    assert_errored(
        build, steps, f"task 'work' could not be scheduled for 10m: {UNSCHEDULABLE_MESSAGE}"
    )


# -- the API failing JetBridge --------------------------------------------------------


def test_a_service_account_that_may_not_create_pods_errors_the_step_saying_so(
    cluster: Cluster,
) -> None:
    cluster.server.fail("create", "pods", status=403, times=None)
    cluster.ci.set_pipeline("failing", FAILING)
    build = cluster.ci.run_build("failing", "build", timeout=WAIT)
    steps = steps_of(cluster.ci, build.id)
    assert steps["make"].status == st.ERRORED
    assert steps["make"].error is not None
    assert steps["make"].error.startswith(
        "task 'make' could not start: the service account may not create pods in namespace ci: "
        "RBAC needs verb 'create' on 'pods'"
    )
    assert build.status == st.ERRORED


def test_an_invalid_pod_errors_the_step_with_the_apis_message(cluster: Cluster) -> None:
    message = 'Pod "x" is invalid: spec.containers[0].resources.limits: Invalid value: "64Mi"'
    cluster.server.fail("create", "pods", status=422, message=message)
    cluster.ci.set_pipeline("failing", FAILING)
    build = cluster.ci.run_build("failing", "build", timeout=WAIT)
    error = steps_of(cluster.ci, build.id)["make"].error
    assert error is not None
    assert error.startswith(
        "task 'make' could not start: the Kubernetes API refused pod jb-1-make-"
    )
    assert error.endswith(message)
    assert build.status == st.ERRORED


@pytest.mark.parametrize(
    ("verb", "resource", "status"),
    [
        ("create", "pods", 429),
        ("create", "pods", 500),
        ("get", "pods/log", 503),
        ("delete", "pods", 429),
    ],
    ids=["create-throttled", "create-failed", "log-unavailable", "delete-throttled"],
)
def test_a_briefly_failing_api_is_retried_and_the_build_succeeds(
    cluster: Cluster, verb: str, resource: str, status: int
) -> None:
    cluster.server.fail(verb, resource, status=status, times=2)
    cluster.ci.set_pipeline(
        "ok",
        "jobs:\n- name: build\n  plan:\n  - task: hello\n    config: {platform: linux, run: {path: echo, args: [hello]}}\n",
    )
    build = cluster.ci.run_build("ok", "build", timeout=WAIT)
    assert build.status == st.SUCCEEDED
    assert len(cluster.server.calls_of(verb, resource)) == 3  # two refusals, then the call
    step = steps_of(cluster.ci, build.id)["hello"]
    assert cluster.ci.deps.logs.read(build.id, step.key) == b"hello\n"


# -- events: foreign, repeated, out of order ------------------------------------------


def test_events_for_pods_jetbridge_does_not_own_are_ignored(cluster: Cluster) -> None:
    pod = {
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "web", "image": "nginx:1", "command": ["true"]}],
        },
    }
    call = cluster.server.admit("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", {}, pod)
    cluster.server.execute(call)

    def seen_it_finish() -> bool:
        return any(
            e.data["metadata"]["name"] == "web-1"
            and e.data.get("status", {}).get("phase") == "Succeeded"
            for e in cluster.ci.source.events()
        )

    cluster.ci.run_until(seen_it_finish, timeout=WAIT)
    cluster.ci.bus.drain()
    assert cluster.ci.bus.rejected == {}
    assert cluster.server.pod("web-1", NAMESPACE) is not None  # not JetBridge's to delete
    assert [c for c in cluster.server.calls if c.name == "web-1" and c.verb == "get"] == []


def test_repeated_and_out_of_order_pod_events_change_nothing(cluster: Cluster) -> None:
    cluster.ci.set_pipeline("failing", FAILING)
    build = cluster.ci.run_build("failing", "build", timeout=WAIT)
    seen: list[CloudEvent] = []
    cluster.ci.bus.observe(seen.append)

    def snapshot() -> list[tuple[Any, ...]]:
        with transaction(cluster.ci.deps.sessions) as session:
            steps = session.scalars(select(StepRow).order_by(StepRow.id)).all()
            arts = session.scalars(select(ArtifactRow).order_by(ArtifactRow.id)).all()
            row = session.get(BuildRow, build.id)
            assert row is not None
            return [
                (row.status, row.error, row.finished_at),
                *[(s.status, s.error, s.exit_code, s.finished_at) for s in steps],
                *[(a.state, a.digest) for a in arts],
            ]

    before = snapshot()
    pod_events = [e for e in cluster.ci.source.events() if e["type"] in events.POD_EVENTS]
    assert {e["type"] for e in pod_events} == set(events.POD_EVENTS)
    # Every event again, newest first (a Running update after the Failed one), twice over.
    replay = list(reversed(pod_events)) * 2
    for event in replay:
        cluster.ci.bus.emit(event)
    cluster.ci.bus.drain()
    assert snapshot() == before
    raised = [e["type"] for e in seen if e["type"] not in events.POD_EVENTS]
    assert raised == []  # no step.ready, step.finished or build.finished again
    assert cluster.ci.bus.rejected == {}
    assert {event_data(e)["metadata"]["name"] for e in pod_events} <= {
        s.pod_name for s in steps_of(cluster.ci, build.id).values() if s.pod_name
    }


# -- credentials and the build's Secret -------------------------------------------------

TOKEN = "tok-9c2e7a41d05b"

CREDENTIALED = f"""
jobs:
- name: build
  plan:
  - task: use
    config:
      platform: linux
      params: {{TOKEN: ((token)), GREETING: hello}}
      run:
        path: sh
        args: [-ec, 'test "$TOKEN" = "{TOKEN}"; echo "$GREETING, the token is right"']
"""


def secrets_held(ci: LocalCI | ClusterCI) -> dict[str, dict[str, str]]:
    """The Secrets where the runtime keeps them: the API server, or the local runtime."""
    if isinstance(ci, ClusterCI):
        server = SERVERS[id(ci)]
        return {n: server.secret(n, NAMESPACE) or {} for n in server.secret_names(NAMESPACE)}
    runtime = ci.deps.runtime
    return {n: dict(runtime._secrets[n]) for n in runtime.secret_names()}  # type: ignore[attr-defined]


def reap(ci: LocalCI | ClusterCI) -> Any:
    """One reaper tick, as PingSource's event would run it (no checks scheduled)."""
    ping = events.make_event(events.PING, {}, source="//test/ping")
    return handlers.on_reaper_event(ping, ci.deps, scheduling=False)


def test_a_credential_reaches_the_step_only_through_the_builds_secret_which_is_reaped(
    open_path: Callable[..., LocalCI | ClusterCI],
) -> None:
    ci = open_path()
    seen: list[CloudEvent] = []
    ci.bus.observe(seen.append)
    ci.set_pipeline("creds", CREDENTIALED, {"token": TOKEN})
    build = ci.run_build("creds", "build", timeout=WAIT)
    step = steps_of(ci, build.id)["use"]
    assert build.status == st.SUCCEEDED, (step.status, step.error)
    assert b"hello, the token is right" in (ci.deps.logs.read(build.id, step.key) or b"")
    pods = [event_data(e) for e in seen if e["type"] in events.POD_EVENTS]
    assert pods
    env = {v["name"]: v for v in pods[0]["spec"]["containers"][0]["env"]}
    key = f"{step.id}-TOKEN"
    secret = f"jb-{build.id}-secrets"
    assert env["TOKEN"] == {
        "name": "TOKEN",
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
    }
    assert env["GREETING"] == {"name": "GREETING", "value": "hello"}  # not a credential: literal
    assert all(TOKEN not in str(pod) for pod in pods)
    # The credential written into the script: an env var from the Secret, which the
    # command names for Kubernetes to expand.
    assert env["JETBRIDGE_CREDENTIAL_1"]["valueFrom"]["secretKeyRef"]["key"] == (
        f"{step.id}-JETBRIDGE_CREDENTIAL_1"
    )
    assert '= "$(JETBRIDGE_CREDENTIAL_1)"' in pods[0]["spec"]["containers"][0]["args"][1]
    assert secrets_held(ci) == {secret: {key: TOKEN, f"{step.id}-JETBRIDGE_CREDENTIAL_1": TOKEN}}
    with transaction(ci.deps.sessions) as session:
        assert session.get(BuildRow, build.id).has_secret is True  # type: ignore[union-attr]

    report = reap(ci)
    assert report.tallies["secrets"].done == 1
    assert secrets_held(ci) == {}
    with transaction(ci.deps.sessions) as session:
        assert session.get(BuildRow, build.id).has_secret is False  # type: ignore[union-attr]
    assert reap(ci).tallies["secrets"].found == 0  # nothing left to do


def test_a_pod_whose_secret_is_missing_errors_its_step_after_the_timeout(cluster: Cluster) -> None:
    # The Secret cannot be read (deleted by hand, say): the kubelet cannot create the container.
    cluster.server.fail("get", "secrets", status=404, times=None)
    cluster.ci.set_pipeline("creds", CREDENTIALED, {"token": TOKEN})
    event_id = cluster.ci.request_build("creds", "build")
    cluster.run_until_seen("use", waiting_on("CreateContainerConfigError"))
    build = cluster.ci.build_for("creds", event_id)
    assert build is not None
    assert steps_of(cluster.ci, build.id)["use"].status == st.RUNNING  # it may still come
    cluster.clock.advance(cluster.settings.image_pull_timeout_seconds)
    # The kubelet's status does not change while it waits, so no event comes: the
    # reaper's resync reads the pod and ends the step.
    reap(cluster.ci)
    build = cluster.ci.finish("creds", event_id, timeout=WAIT)
    step = steps_of(cluster.ci, build.id)["use"]
    message = (
        "task 'use' could not start: its container could not be created for 5m "
        f'(CreateContainerConfigError: secret "jb-{build.id}-secrets" not found)'
    )
    assert (step.status, step.error) == (st.ERRORED, message)
    assert (build.status, build.error) == (st.ERRORED, message)


def test_a_role_that_may_not_write_secrets_errors_the_step_saying_so(cluster: Cluster) -> None:
    cluster.server.fail("create", "secrets", status=403, times=None)
    cluster.ci.set_pipeline("creds", CREDENTIALED, {"token": TOKEN})
    build = cluster.ci.run_build("creds", "build", timeout=WAIT)
    step = steps_of(cluster.ci, build.id)["use"]
    assert step.status == st.ERRORED
    assert step.error is not None
    assert step.error.startswith(
        "task 'use' could not start: the service account may not create secrets in namespace "
        "ci: RBAC needs verb 'create' on 'secrets'"
    )
    assert cluster.server.pods(NAMESPACE) == []  # no pod was made that could not start


# -- a ReadWriteOnce store ----------------------------------------------------------------

#: make → check → ship, each reading what the one before wrote (and a job that fails).
THREE_STEPS = PIPELINE


def test_with_a_read_write_once_store_a_later_pod_is_pinned_to_the_first_pods_node(
    workspace: Path, database_url: str, clock: FakeClock
) -> None:
    cluster = Cluster(workspace, database_url, clock, store_access_mode="ReadWriteOnce")
    try:
        cluster.ci.set_pipeline("rwo", THREE_STEPS)
        build = cluster.ci.run_build("rwo", "build", timeout=WAIT)
        created = {
            c.body["metadata"]["name"]: c.body for c in cluster.server.calls_of("create", "pods")
        }
    finally:
        cluster.close()
    assert build.status == st.SUCCEEDED
    assert build.node == cluster.kubelet.node
    (first,) = [p for n, p in created.items() if re.match(step_pods("make"), n)]
    (later,) = [p for n, p in created.items() if re.match(step_pods("ship"), n)]
    # The first pod goes wherever the scheduler puts it, near its build's other pods…
    assert "nodeAffinity" not in first["spec"]["affinity"]
    assert "podAffinity" in first["spec"]["affinity"]
    # …a later one must run on the node that first pod ran on, where the claim is attached.
    terms = later["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {
            "matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [cluster.kubelet.node]}
            ]
        }
    ]


def test_with_a_read_write_many_store_pods_are_not_pinned(cluster: Cluster) -> None:
    cluster.ci.set_pipeline("rwm", THREE_STEPS)
    build = cluster.ci.run_build("rwm", "build", timeout=WAIT)
    assert build.status == st.SUCCEEDED
    assert all("affinity" not in c.body["spec"] for c in cluster.server.calls_of("create", "pods"))
