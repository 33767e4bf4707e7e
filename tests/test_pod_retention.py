"""``pod_retention_seconds``: a finished pod goes at once (0) or stays for the reaper (more).

Either way its log is kept first, so ``jetbridge logs`` never depends on the pod.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import events
from shared.app import build_deps
from shared.db import transaction, upgrade
from shared.events import RecordingSink
from shared.handlers import on_step_event, on_trigger_event
from shared.pipelines import save_pipeline
from shared.settings import Settings
from tests.fakes import FakeClock, FakeRuntime

PIPELINE = """
jobs:
- name: build
  plan:
  - task: unit
    config:
      platform: linux
      run: {path: "true"}
"""


@pytest.mark.parametrize(
    ("retention", "deleted"),
    [(0, True), (900, False)],
    ids=["zero-deletes-at-once", "positive-leaves-it-for-the-reaper"],
)
def test_a_finished_pod_is_deleted_only_without_retention(
    database_url: str, tmp_path: Path, retention: int, deleted: bool
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, pod_retention_seconds=retention
    )
    runtime = FakeRuntime()
    deps = build_deps(settings, sink=RecordingSink(), runtime=runtime, clock=FakeClock())
    try:
        upgrade(deps.engine)
        with transaction(deps.sessions) as session:
            save_pipeline(session, name="app", config=PIPELINE, clock=deps.clock)
        request = {"pipeline": "app", "job": "build"}
        build = on_trigger_event(events.make_event(events.BUILD_REQUESTED, request), deps)
        (ready,) = [e for e in deps.sink.events if e["type"] == events.STEP_READY]
        on_step_event(ready, deps)
        (name,) = runtime.running()

        pod = runtime.finish(name, 0, log=b"all green\n")
        on_step_event(events.make_event(events.POD_UPDATE, pod), deps)

        assert deps.logs.read(build["build_id"], "0") == b"all green\n"
        assert (name in runtime.deleted) == deleted
        assert (name in runtime.pods) == (not deleted)
        finished = [e for e in deps.sink.events if e["type"] == events.BUILD_FINISHED]
        assert [events.event_data(e)["status"] for e in finished] == ["succeeded"]
    finally:
        deps.engine.dispose()
