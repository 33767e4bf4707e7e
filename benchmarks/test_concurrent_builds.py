"""1,000 concurrent builds of three steps each, through the simulated kubelet, on Postgres.

Every build is requested at once. Each is three tasks in sequence, each sleeping
``STEP_SECONDS`` and passing a file on to the next through an output: the pods really
run (the simulated kubelet of ``tests/kube/`` runs each with the local runtime), the
Kubernetes runtime creates and deletes them over HTTP against the fake API server,
and the ApiServerSource stand-in brings every pod change back as a CloudEvent. The
step runner and trigger run as ``WORKERS`` instances (threads taking events from one
bus, as Knative scales a function out), against one Postgres.

Measured: the wall time from the first request to the last ``build.finished``,
against the ideal, the pods' run time alone (three steps of ``STEP_SECONDS``: what
the builds would take if the control plane cost nothing); builds finished per
second; and, asserted to be 0: steps lost (a step that did not succeed, a build
that did not finish) and steps run twice (a pod started more than once, or two pods
for one step).

Sizes: ``JETBRIDGE_BENCH_BUILDS`` (1000), ``JETBRIDGE_BENCH_STEP_SECONDS`` (2),
``JETBRIDGE_BENCH_WORKERS`` (4).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from benchmarks.conftest import Recorder
from benchmarks.results import percentile
from shared import events
from shared import status as st
from shared.app import utcnow
from shared.db import BuildRow, StepRow, transaction
from shared.settings import Settings
from tests.faults.cluster import workspace
from tests.kube.cluster import ClusterCI, FakeCluster

BUILDS = int(os.environ.get("JETBRIDGE_BENCH_BUILDS", "1000"))
STEP_SECONDS = float(os.environ.get("JETBRIDGE_BENCH_STEP_SECONDS", "2"))
WORKERS = int(os.environ.get("JETBRIDGE_BENCH_WORKERS", "4"))
NAMESPACE = "ci"
#: Give up after this long: a lost step would otherwise hang the benchmark.
TIMEOUT = float(os.environ.get("JETBRIDGE_BENCH_TIMEOUT", "900"))
GROUP = "1,000 concurrent builds" if BUILDS == 1000 else f"{BUILDS:,} concurrent builds"

PIPELINE = f"""
jobs:
- name: three
  plan:
  - task: fetch
    config:
      platform: linux
      outputs: [{{name: src}}]
      run: {{path: sh, args: [-c, "sleep {STEP_SECONDS}; echo source > src/file"]}}
  - task: compile
    config:
      platform: linux
      inputs: [{{name: src}}]
      outputs: [{{name: bin}}]
      run: {{path: sh, args: [-c, "sleep {STEP_SECONDS}; cat src/file > bin/file"]}}
  - task: test
    config:
      platform: linux
      inputs: [{{name: bin}}]
      run: {{path: sh, args: [-c, "sleep {STEP_SECONDS}; grep -q source bin/file"]}}
"""

pytestmark = [pytest.mark.bench, pytest.mark.postgres, pytest.mark.timeout(TIMEOUT + 300)]


@pytest.fixture
def cluster(postgres_url: str) -> Iterator[tuple[FakeCluster, ClusterCI]]:
    with workspace() as folder:
        settings = Settings(
            data_dir=folder / "data", database_url=postgres_url, namespace=NAMESPACE
        )
        store = (folder / "data" / "store").resolve()
        fake = FakeCluster(
            namespace=NAMESPACE,
            claims={settings.store_claim: store},
            work_root=folder / "pods",
            clock=utcnow,
            resource_image=settings.resource_image,
        )
        ci = ClusterCI(
            settings.with_overrides(store_root=store),
            configuration=fake.configuration,
            clock=utcnow,
            share=fake.kubelet.share,
        )
        try:
            yield fake, ci
        finally:
            ci.close()
            fake.close()


def test_a_thousand_concurrent_builds_of_three_steps(
    cluster: tuple[FakeCluster, ClusterCI], benchmark: Any, results: Recorder
) -> None:
    fake, ci = cluster
    ci.set_pipeline("bench", PIPELINE)
    finished: list[float] = []
    lock = threading.Lock()

    def on_event(event: Any) -> None:
        if event["type"] == events.BUILD_FINISHED:
            with lock:
                finished.append(time.monotonic())

    ci.bus.observe(on_event)
    outcome: dict[str, float] = {}

    def run() -> None:
        started = time.monotonic()
        for _ in range(BUILDS):
            ci.request_build("bench", "three")
        deadline = started + TIMEOUT

        def done() -> bool:
            return len(finished) >= BUILDS or time.monotonic() > deadline

        workers = [
            threading.Thread(target=ci.bus.run_until, args=(done,), kwargs={"timeout": TIMEOUT})
            for _ in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        outcome["wall"] = (max(finished) if finished else time.monotonic()) - started
        ci.bus.drain()

    benchmark.pedantic(run, rounds=1, iterations=1)
    wall = outcome["wall"]
    ideal = 3 * STEP_SECONDS

    with transaction(ci.deps.sessions) as session:
        builds = Counter(
            dict(
                session.execute(
                    select(BuildRow.status, func.count()).group_by(BuildRow.status)
                ).all()
            )
        )
        steps = session.execute(select(StepRow.id, StepRow.status, StepRow.pod_name)).all()
        spans = session.execute(select(BuildRow.started_at, BuildRow.finished_at)).all()
    pods_of_step = Counter(
        c.body["metadata"]["labels"]["jetbridge.dev/step"]
        for c in fake.server.calls_of("create")
        if c.body
    )
    starts = Counter(c.name for c in fake.server.calls_of("create", "pods/binding"))
    lost = sum(1 for s in steps if s.status != st.SUCCEEDED) + (BUILDS - builds[st.SUCCEEDED])
    twice = sum(1 for n in starts.values() if n > 1) + sum(
        1 for n in pods_of_step.values() if n > 1
    )
    durations = [(end - start).total_seconds() for start, end in spans if start and end]

    results.record(GROUP, "wall time", wall, "s", builds=BUILDS, steps=3 * BUILDS)
    results.record(GROUP, "ideal (pod run time alone)", ideal, "s", step_seconds=STEP_SECONDS)
    results.record(GROUP, "wall / ideal", wall / ideal, "x")
    results.record(GROUP, "builds finished per second", BUILDS / wall, "/s", workers=WORKERS)
    results.record(GROUP, "step pods per second", 3 * BUILDS / wall, "/s")
    results.record(GROUP, "build duration p50", percentile(durations, 0.5), "s")
    results.record(GROUP, "build duration p99", percentile(durations, 0.99), "s")
    results.record(GROUP, "steps lost", lost, "", asserted="0")
    results.record(GROUP, "steps run twice", twice, "", asserted="0")
    results.note(
        GROUP,
        f"{BUILDS:,} builds requested at once, three {STEP_SECONDS:g}-second steps each, pods "
        f"run by the simulated kubelet (real processes), {WORKERS} instances of the functions "
        "taking events from one bus, Postgres. The ideal is the pods' run time alone; the "
        "gap is the control plane (and the kubelet) working through "
        f"{3 * BUILDS:,} launches and their pod events on this machine.",
    )
    benchmark.extra_info.update(wall_seconds=wall, ideal_seconds=ideal, lost=lost, twice=twice)
    assert dict(builds) == {st.SUCCEEDED: BUILDS}, dict(builds)
    assert lost == 0
    assert twice == 0
    assert len(steps) == 3 * BUILDS
