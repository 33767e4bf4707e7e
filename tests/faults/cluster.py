"""The fake cluster with JetBridge over it, for fault tests, and the end state they all check.

``FaultCluster`` is ``tests/test_e2e_cluster.py``'s cluster (fake API server, simulated
kubelet running real pods, ApiServerSource stand-in, ``ClusterCI``) with the Broker of
``tests.faults.broker`` in place of the in-process bus and room for faulty ports
(``wrap``). ``assert_settled`` is what a user would check after any fault: every build
ended with the status it should have, every step ended, every artifact either
registered and on the store or gone from both, no pod left anywhere.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select

from shared import status as st
from shared.app import Deps
from shared.db import ArtifactRow, BuildRow, StepRow, transaction
from shared.plan import StepSpec
from shared.reaper import REAPING_PREFIX, ReapReport, Remover, reap, remove_directory
from shared.settings import Settings
from tests.faults.broker import Broker
from tests.kube.cluster import ClusterCI, FakeCluster

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "ci"
#: How long a test lets its builds take: generous, for a loaded CI machine.
WAIT = 60.0

#: make → check → ship, each reading what the one before wrote; and a build that fails.
PIPELINE = """
jobs:
- name: build
  plan:
  - task: make
    config:
      platform: linux
      outputs: [{name: out}]
      run: {path: sh, args: [-c, "echo made > out/file"]}
  - task: check
    config:
      platform: linux
      inputs: [{name: out}]
      outputs: [{name: report}]
      run: {path: sh, args: [-c, "cat out/file > report/r"]}
  - task: ship
    config:
      platform: linux
      inputs: [{name: report}]
      run: {path: sh, args: [-c, "grep -q made report/r"]}
- name: broken
  plan:
  - task: make
    config:
      platform: linux
      outputs: [{name: out}]
      run: {path: sh, args: [-c, "echo partial > out/file; exit 3"]}
  - task: never
    config:
      platform: linux
      inputs: [{name: out}]
      run: {path: "true"}
"""


@contextmanager
def workspace() -> Iterator[Path]:
    """A folder outside ``/tmp``: a pod gets a private ``/tmp`` and would not see one there."""
    base = ROOT / ".jetbridge-test"
    base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base, prefix="faults-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class FaultCluster:
    """JetBridge over the fake cluster, its events carried by ``broker`` (see the module)."""

    def __init__(
        self,
        workspace: Path,
        database_url: str,
        *,
        clock: Callable[[], Any],
        broker: Broker | None = None,
        wrap: Callable[[Deps], Deps] | None = None,
        store: Path | None = None,
        **settings: Any,
    ) -> None:
        self.clock = clock
        self.broker = broker or Broker()
        self.store = (store or workspace / "data" / "store").resolve()
        self.settings = Settings(
            data_dir=workspace / "data",
            database_url=database_url,
            namespace=NAMESPACE,
            store_root=self.store,
            **settings,
        )
        self.fake = FakeCluster(
            namespace=NAMESPACE,
            claims={self.settings.store_claim: self.store},
            work_root=workspace / "pods",
            clock=clock,
            resource_image=self.settings.resource_image,
        )
        self.server = self.fake.server
        self.kubelet = self.fake.kubelet
        try:
            self.ci = ClusterCI(
                self.settings,
                configuration=self.fake.configuration,
                clock=clock,
                share=self.kubelet.share,
                bus=self.broker,  # type: ignore[arg-type]
                wrap=wrap,
            )
        except BaseException:
            self.fake.close()
            raise
        self.deps = self.ci.deps

    def close(self) -> None:
        self.ci.close()
        self.fake.close()

    # -- driving ------------------------------------------------------------------

    def request(self, job: str, pipeline: str = "faults") -> str:
        """Ask for a build (``build.requested``); returns its event id."""
        return self.ci.request_build(pipeline, job)

    def build(self, event_id: str, pipeline: str = "faults") -> BuildRow | None:
        return self.ci.build_for(pipeline, event_id)

    def ended(self, event_ids: Iterable[str], pipeline: str = "faults") -> bool:
        for event_id in event_ids:
            build = self.build(event_id, pipeline)
            if build is None or build.status not in st.BUILD_TERMINAL:
                return False
        return True

    def run_until(self, done: Callable[[], bool], *, timeout: float = WAIT) -> None:
        if not self.broker.run_until(done, timeout=timeout):
            raise AssertionError(f"not done within {timeout:.0f}s: {self.describe()}")

    def run_builds(self, event_ids: Iterable[str], *, timeout: float = WAIT) -> None:
        """Deliver events until every build named ends, then whatever is left queued."""
        ids = list(event_ids)
        self.run_until(lambda: self.ended(ids), timeout=timeout)
        self.broker.drain()

    def tick(self, remove: Remover = remove_directory) -> ReapReport:
        """One reaper tick over the same ports the handlers use, then its events delivered."""
        deps = self.deps
        report = reap(
            deps.sessions,
            store_root=self.store,
            clock=self.clock,
            settings=self.settings,
            runtime=deps.runtime,
            logs=deps.logs,
            sink=deps.sink,
            remove=remove,
        )
        self.broker.drain()
        return report

    # -- reading ------------------------------------------------------------------

    def steps(self, event_id: str, pipeline: str = "faults") -> dict[str, StepRow]:
        build = self.build(event_id, pipeline)
        assert build is not None
        with transaction(self.deps.sessions) as session:
            rows = session.scalars(select(StepRow).where(StepRow.build_id == build.id)).all()
        return {r.name: r for r in rows}

    def artifact_states(self) -> Counter[str]:
        with transaction(self.deps.sessions) as session:
            return Counter(session.scalars(select(ArtifactRow.state)).all())

    def pods_created(self) -> Counter[str]:
        """Pods the API server created, by name (a second create of a name answers 409)."""
        names = [c.body["metadata"]["name"] for c in self.server.calls_of("create") if c.body]
        return Counter(names)

    def pods_started(self) -> Counter[str]:
        """Pods the kubelet bound to its node and started, by name: a step that ran twice shows 2."""
        return Counter(c.name for c in self.server.calls_of("create", "pods/binding"))

    def describe(self) -> str:
        with transaction(self.deps.sessions) as session:
            builds = session.scalars(select(BuildRow)).all()
            steps = session.scalars(select(StepRow)).all()
        return (
            f"builds {[(b.id, b.status) for b in builds]}, "
            f"steps {[(s.build_id, s.name, s.status) for s in steps if s.status not in st.STEP_TERMINAL]}, "
            f"queued {self.broker.pending()}, pods {[p['metadata']['name'] for p in self.server.pods(NAMESPACE)]}"
        )


def wait_for(condition: Callable[[], bool], *, timeout: float = WAIT, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds (no blind sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not true within {timeout:.0f}s: {what}"
        time.sleep(0.01)


def artifacts_on_store(store: Path) -> set[str]:
    """Every ``artifacts/<folder>/<name>`` directory on the store (claimed ones included)."""
    found: set[str] = set()
    base = store / "artifacts"
    if not base.is_dir():
        return found
    for folder in os.scandir(base):
        if folder.is_dir(follow_symlinks=False):
            for entry in os.scandir(folder.path):
                found.add(f"artifacts/{folder.name}/{entry.name}")
    return found


def assert_settled(
    cluster: FaultCluster,
    expected: Mapping[str, str],
    *,
    pipeline: str = "faults",
    reaped: bool = False,
) -> None:
    """The end state after any fault (see the module docstring).

    ``expected`` maps each build's event id to the status it must end with. With
    ``reaped``, a reaper tick has run since they ended: no artifact is left at all.
    """
    for event_id, status in expected.items():
        build = cluster.build(event_id, pipeline)
        assert build is not None, f"no build for {event_id}"
        assert build.status == status, (build.id, build.status, build.error, status)
    with transaction(cluster.deps.sessions) as session:
        builds = session.scalars(select(BuildRow)).all()
        steps = session.scalars(select(StepRow)).all()
        rows = session.scalars(select(ArtifactRow)).all()
    assert [b.id for b in builds if b.status not in st.BUILD_TERMINAL] == []
    assert [(s.build_id, s.name, s.status) for s in steps if s.status not in st.STEP_TERMINAL] == []
    # Every artifact is registered and present, or gone from both.
    registered = {r.subpath for r in rows}
    # A failed step's outputs stay ``creating`` (its step has ended) until the reaper
    # takes them; a claim (``reaping``) left over is a tick that never finished.
    assert [(r.subpath, r.state) for r in rows if r.state == "reaping"] == []
    on_store = artifacts_on_store(cluster.store)
    assert on_store == registered, {
        "unregistered": sorted(on_store - registered),
        "missing": sorted(registered - on_store),
    }
    assert not any(REAPING_PREFIX in s for s in on_store)
    # And each step registered its outputs once: a repeated launch registers nothing more.
    outputs = {s.id: len(StepSpec.from_json(s.spec).outputs) for s in steps}
    per_step = Counter(r.step_id for r in rows if r.step_id is not None)
    assert {i: n for i, n in per_step.items() if n > outputs.get(i, 0)} == {}
    if reaped:
        assert registered == set()
    # No pod left, on the API server or on the node.
    wait_for(
        lambda: cluster.server.pods(NAMESPACE) == [] and cluster.kubelet.runtime.list() == [],
        what=f"pods left: {[p['metadata']['name'] for p in cluster.server.pods(NAMESPACE)]}",
    )
    cluster.broker.assert_healthy()


def one_pod_per_step(cluster: FaultCluster) -> None:
    """No step ran twice: each step's pod was started once by the kubelet.

    A redelivered ``step.ready`` may ask the API to create the same pod again (it
    answers 409 AlreadyExists, which the runtime takes as launched); a pod started
    twice, or two pods for one attempt of a step, may not happen.
    """
    started = {n: c for n, c in cluster.pods_started().items() if c > 1}
    assert started == {}, f"pods started more than once: {started}"
    with transaction(cluster.deps.sessions) as session:
        pods = [p for p in session.scalars(select(StepRow.pod_name)).all() if p]
    assert len(pods) == len(set(pods))
    assert set(cluster.pods_created()) == set(pods), "a pod was created that no step knows"
