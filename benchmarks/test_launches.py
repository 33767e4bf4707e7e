"""Step launches per second, sustained, in-process, on Postgres.

What the step runner does for each ``step.ready``, with nothing else in the way:
the event handled by ``handlers.on_step_event`` (as the function calls it), the step
moved ``scheduled → running`` by compare-and-set, its output registered (row
committed, then directory made), its pod built from the stored spec and handed to an
in-memory runtime (no HTTP: the Kubernetes API's own latency is not ours). The
builds are recorded first; then ``LAUNCHES`` announcements are delivered one after
another, as one instance of the function takes them. Sustained: the rate in each
tenth of the run is reported beside the whole run's, and the slowest tenth must
keep up with at least half the median tenth (no slowdown as the tables grow).

Sizes: ``JETBRIDGE_BENCH_LAUNCHES`` (4000).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import Recorder
from benchmarks.results import percentile
from shared import events, handlers
from shared.app import build_deps
from shared.builds import start_build
from shared.db import transaction, upgrade
from shared.events import RecordingSink
from shared.pipelines import save_pipeline
from shared.settings import Settings
from tests.fakes import FakeRuntime

LAUNCHES = int(os.environ.get("JETBRIDGE_BENCH_LAUNCHES", "4000"))
#: Four tasks side by side: four launches per build, each registering one output.
PARALLEL = 4
GROUP = "step launches (in-process)"

PIPELINE = "jobs:\n- name: fan\n  plan:\n  - in_parallel:\n" + "".join(
    f"    - task: t{i}\n      config: {{platform: linux, outputs: [{{name: o{i}}}], "
    'run: {path: "true"}}\n'
    for i in range(PARALLEL)
)

pytestmark = [pytest.mark.bench, pytest.mark.postgres, pytest.mark.timeout(1800)]


def test_step_launches_per_second_sustained(
    postgres_url: str, tmp_path: Path, benchmark: Any, results: Recorder
) -> None:
    sink = RecordingSink()
    runtime = FakeRuntime()
    deps = build_deps(
        Settings(data_dir=tmp_path, database_url=postgres_url), sink=sink, runtime=runtime
    )
    upgrade(deps.engine)
    try:
        with transaction(deps.sessions) as session:
            save_pipeline(session, name="bench", config=PIPELINE, clock=deps.clock)
        for _ in range(LAUNCHES // PARALLEL):
            start_build(deps.sessions, pipeline="bench", job="fan", sink=sink, clock=deps.clock)
        ready = [e for e in sink.events if e["type"] == events.STEP_READY]
        assert len(ready) == LAUNCHES // PARALLEL * PARALLEL
        times: list[float] = []

        def launch_all() -> float:
            began = time.perf_counter()
            for event in ready:
                start = time.perf_counter()
                handlers.on_step_event(event, deps)
                times.append(time.perf_counter() - start)
            return time.perf_counter() - began

        elapsed = benchmark.pedantic(launch_all, rounds=1, iterations=1)
    finally:
        deps.engine.dispose()
    assert len(runtime.pods) == len(ready)  # every step's pod launched, once
    rate = len(ready) / elapsed
    tenth = len(times) // 10
    rates = [tenth / sum(times[i * tenth : (i + 1) * tenth]) for i in range(10)]
    results.record(
        GROUP, "launches per second", rate, "/s", database="postgres", launches=len(ready)
    )
    results.record(GROUP, "launch p50", percentile(times, 0.5) * 1000, "ms")
    results.record(GROUP, "launch p99", percentile(times, 0.99) * 1000, "ms")
    results.record(GROUP, "slowest tenth of the run", min(rates), "/s")
    results.record(GROUP, "first tenth / last tenth", rates[0] / rates[-1], "x")
    results.note(
        GROUP,
        "each launch is one `step.ready` through `handlers.on_step_event` on Postgres: "
        "compare-and-set to running, one output registered and its directory made, the pod "
        "built and handed to an in-memory runtime (the API's latency left out).",
    )
    benchmark.extra_info.update(launches_per_second=rate, rates_by_tenth=rates)
    assert min(rates) >= statistics.median(rates) / 2, rates
