"""The build and step services, driven event by event with a fake runtime, on SQLite and Postgres."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from shared import events
from shared import status as st
from shared.builds import advance_build, start_build
from shared.db import ArtifactRow, BuildRow, StepRow, transaction
from shared.errors import NotFoundError
from shared.events import RecordingSink, event_data
from shared.logstore import DirectoryLogStore
from shared.pipelines import save_pipeline
from shared.podspec import PodSettings
from shared.steps import finish_step, launch_step
from tests.fakes import FakeClock, FakeRuntime, Handles

PIPELINE = """
resources:
- name: repo
  type: git
  source: {uri: /tmp/nowhere}
jobs:
- name: build
  plan:
  - get: repo
  - task: compile
    config:
      platform: linux
      inputs: [{name: repo}]
      outputs: [{name: dist}]
      run: {path: make}
  - in_parallel:
    - task: unit
      config:
        platform: linux
        inputs: [{name: dist}]
        run: {path: test}
    - task: lint
      config:
        platform: linux
        inputs: [{name: repo}]
        run: {path: lint}
  - task: ship
    config:
      platform: linux
      inputs: [{name: dist}]
      run: {path: ship}
"""


#: What the git resource's check answers: versions, oldest first.
CHECKED = '[{"ref": "1111111"}, {"ref": "2222222"}]'


class Driver:
    """The step runner's two handlers, called as the bus would call them."""

    def __init__(self, sessions: Any, store: Path, clock: FakeClock) -> None:
        self.sessions = sessions
        self.store = store
        self.clock = clock
        self.runtime = FakeRuntime()
        self.sink = RecordingSink()
        self.logs = DirectoryLogStore(store.parent / "logs")
        self.handles = Handles()
        with transaction(sessions) as session:
            save_pipeline(session, name="demo", config=PIPELINE, clock=clock)

    def start(
        self, event_id: str | None = None, versions: dict[str, dict[str, str]] | None = None
    ) -> int:
        return start_build(
            self.sessions,
            pipeline="demo",
            job="build",
            sink=self.sink,
            clock=self.clock,
            event_id=event_id,
            versions=versions,
        ).build_id

    def ready_events(self) -> list[Any]:
        return [e for e in self.sink.events if e["type"] == events.STEP_READY]

    def launch(self, event: Any) -> str | None:
        data = event_data(event)
        return launch_step(
            self.sessions,
            build_id=data["build_id"],
            step_id=data["step_id"],
            runtime=self.runtime,
            store_root=self.store,
            pod_settings=PodSettings(claim="store"),
            sink=self.sink,
            clock=self.clock,
            handles=self.handles,
        )

    def finish(self, name: str, exit_code: int = 0, **kwargs: Any) -> str | None:
        pod = self.runtime.finish(name, exit_code, **kwargs)
        return finish_step(
            self.sessions,
            pod=pod,
            runtime=self.runtime,
            logs=self.logs,
            store_root=self.store,
            sink=self.sink,
            clock=self.clock,
        )

    def step(self, build_id: int, name: str, kind: str | None = None) -> StepRow:
        """The step called ``name`` (not its check step, unless ``kind="check"``)."""
        with transaction(self.sessions) as session:
            query = select(StepRow).where(StepRow.build_id == build_id, StepRow.name == name)
            if kind is None:
                query = query.where(StepRow.kind != "check")
            else:
                query = query.where(StepRow.kind == kind)
            return session.scalars(query).one()

    def build(self, build_id: int) -> BuildRow:
        with transaction(self.sessions) as session:
            row = session.get(BuildRow, build_id)
            assert row is not None
            return row

    def run_all(self, build_id: int, fail: dict[str, int] | None = None) -> None:
        """Launch every announced step and finish every pod until nothing moves."""
        fail = fail or {}
        seen: set[str] = set()
        while True:
            pending = [e for e in self.ready_events() if e["id"] not in seen]
            if not pending:
                return
            for event in pending:
                seen.add(event["id"])
                name = self.launch(event)
                if name is None:
                    continue
                step_name = _step_name(self, event)
                self.finish(
                    name,
                    fail.get(step_name, 0),
                    log=f"log of {step_name}\n".encode(),
                    message=CHECKED if self.kind_of(event) == "check" else "",
                )

    def kind_of(self, event: Any) -> str:
        with transaction(self.sessions) as session:
            step = session.get(StepRow, event_data(event)["step_id"])
            assert step is not None
            return step.kind


def _step_name(driver: Driver, event: Any) -> str:
    with transaction(driver.sessions) as session:
        step = session.get(StepRow, event_data(event)["step_id"])
        assert step is not None
        return step.name


@pytest.fixture
def driver(sessions: Any, tmp_path: Path, clock: FakeClock) -> Driver:
    return Driver(sessions, tmp_path / "store", clock)


def test_a_build_runs_step_by_step_to_success(driver: Driver) -> None:
    build_id = driver.start()
    # Only the first step (the check before the first get) is announced.
    assert [event_data(e)["step_id"] for e in driver.ready_events()] == [
        driver.step(build_id, "repo", kind="check").id
    ]
    driver.run_all(build_id)
    build = driver.build(build_id)
    assert build.status == st.SUCCEEDED
    finished = [e for e in driver.sink.events if e["type"] == events.BUILD_FINISHED]
    assert [event_data(e)["status"] for e in finished] == [st.SUCCEEDED]
    with transaction(driver.sessions) as session:
        arts = session.scalars(select(ArtifactRow).order_by(ArtifactRow.id)).all()
        assert [(a.name, a.state) for a in arts] == [("repo", "ready"), ("dist", "ready")]
        assert all(a.digest and len(a.digest) == 64 for a in arts)
    assert driver.logs.read(build_id, driver.step(build_id, "unit").key) == b"log of unit\n"


def test_in_parallel_branches_are_announced_together(driver: Driver) -> None:
    build_id = driver.start()
    for name, kind in (("repo", "check"), ("repo", None), ("compile", None)):
        (event,) = [
            e
            for e in driver.ready_events()
            if event_data(e)["step_id"] == driver.step(build_id, name, kind).id
        ]
        pod = driver.launch(event)
        assert pod is not None
        driver.finish(pod, message=CHECKED if kind == "check" else "")
    announced = {_step_name(driver, e) for e in driver.ready_events()}
    assert {"unit", "lint"} <= announced
    assert "ship" not in announced


def test_a_failing_task_skips_what_waits_for_it_and_fails_the_build(driver: Driver) -> None:
    build_id = driver.start()
    driver.run_all(build_id, fail={"unit": 3})
    assert driver.step(build_id, "unit").status == st.FAILED
    assert driver.step(build_id, "unit").exit_code == 3
    assert driver.step(build_id, "unit").error == "task 'unit' exited with code 3"
    assert driver.step(build_id, "lint").status == st.SUCCEEDED  # its sibling still ran
    assert driver.step(build_id, "ship").status == st.SKIPPED
    build = driver.build(build_id)
    assert build.status == st.FAILED
    assert build.error == "task 'unit' exited with code 3"


def test_the_same_event_twice_starts_one_build(driver: Driver) -> None:
    first = start_build(
        driver.sessions,
        pipeline="demo",
        job="build",
        sink=driver.sink,
        clock=driver.clock,
        event_id="delivery-1",
    )
    second = start_build(
        driver.sessions,
        pipeline="demo",
        job="build",
        sink=driver.sink,
        clock=driver.clock,
        event_id="delivery-1",
    )
    assert first.created and not second.created
    assert first.build_id == second.build_id
    with transaction(driver.sessions) as session:
        assert session.scalar(select(func.count()).select_from(BuildRow)) == 1
    assert len(driver.ready_events()) == 1


def test_step_ready_twice_launches_one_pod_and_one_set_of_outputs(driver: Driver) -> None:
    driver.start(versions={"repo": {"ref": "abc"}})
    (event,) = driver.ready_events()  # the get: it has one output
    first = driver.launch(event)
    again = driver.launch(event)
    assert first == again
    assert len(driver.runtime.pods) == 1
    with transaction(driver.sessions) as session:
        step = session.get(StepRow, event_data(event)["step_id"])
        assert step is not None
        count = session.scalar(
            select(func.count()).select_from(ArtifactRow).where(ArtifactRow.step_id == step.id)
        )
    assert count == 1


def test_the_get_fetches_the_newest_version_its_check_found(driver: Driver) -> None:
    build_id = driver.start()
    driver.run_all(build_id)
    assert driver.step(build_id, "repo", kind="check").result == {
        "versions": [{"ref": "1111111"}, {"ref": "2222222"}]
    }
    get = driver.step(build_id, "repo")
    assert get.status == st.SUCCEEDED
    assert get.pod_name not in driver.runtime.pods  # deleted once its log was kept
    assert get.pod_name in driver.runtime.launches


def test_a_check_that_finds_nothing_errors_the_get(driver: Driver) -> None:
    build_id = driver.start()
    (event,) = driver.ready_events()
    pod = driver.launch(event)
    assert pod is not None
    driver.finish(pod, message="[]")
    get_ready = driver.ready_events()[-1]
    assert driver.launch(get_ready) is None  # nothing to launch: no version to fetch
    get = driver.step(build_id, "repo")
    assert get.status == st.ERRORED
    assert (
        get.error == "get 'repo' cannot start: resource 'repo' has no versions (check found none)"
    )


def test_a_finished_pod_reported_twice_is_recorded_once(driver: Driver) -> None:
    build_id = driver.start(versions={"repo": {"ref": "abc"}})
    pod = driver.launch(driver.ready_events()[0])
    assert pod is not None
    data = driver.runtime.finish(pod, 0)
    for _ in range(2):
        finish_step(
            driver.sessions,
            pod=data,
            runtime=driver.runtime,
            logs=driver.logs,
            store_root=driver.store,
            sink=driver.sink,
            clock=driver.clock,
        )
    finished = [e for e in driver.sink.events if e["type"] == events.STEP_FINISHED]
    assert len(finished) == 1
    assert driver.step(build_id, "repo").status == st.SUCCEEDED


def test_pods_jetbridge_does_not_own_are_ignored(driver: Driver) -> None:
    foreign = {
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "status": {"phase": "Failed"},
    }
    assert (
        finish_step(
            driver.sessions,
            pod=foreign,
            runtime=driver.runtime,
            logs=driver.logs,
            store_root=driver.store,
            sink=driver.sink,
            clock=driver.clock,
        )
        is None
    )
    assert driver.sink.events == []


def test_a_running_pod_update_changes_nothing(driver: Driver) -> None:
    build_id = driver.start(versions={"repo": {"ref": "abc"}})
    name = driver.launch(driver.ready_events()[0])
    assert name is not None
    running = driver.runtime.read(name)
    assert running is not None
    finish_step(
        driver.sessions,
        pod=running,
        runtime=driver.runtime,
        logs=driver.logs,
        store_root=driver.store,
        sink=driver.sink,
        clock=driver.clock,
    )
    assert driver.step(build_id, "repo").status == st.RUNNING


def test_an_input_whose_artifact_is_gone_errors_the_step(driver: Driver) -> None:
    build_id = driver.start(versions={"repo": {"ref": "abc"}})
    pod = driver.launch(driver.ready_events()[0])
    assert pod is not None
    driver.finish(pod)
    with transaction(driver.sessions) as session:  # the artifact vanished (say, reaped by hand)
        session.execute(ArtifactRow.__table__.delete())
    (event,) = [
        e
        for e in driver.ready_events()
        if event_data(e)["step_id"] == driver.step(build_id, "compile").id
    ]
    assert driver.launch(event) is None
    compile_step = driver.step(build_id, "compile")
    assert compile_step.status == st.ERRORED
    assert (
        compile_step.error
        == "task 'compile' cannot start: input 'repo' from step 0 is not available"
    )
    assert driver.build(build_id).status == st.ERRORED


def test_advance_is_idempotent(driver: Driver) -> None:
    build_id = driver.start()
    before = len(driver.sink.events)
    for _ in range(3):
        advance_build(driver.sessions, build_id=build_id, sink=driver.sink, clock=driver.clock)
    assert len(driver.sink.events) == before


def test_unknown_job_and_pipeline_are_named(driver: Driver) -> None:
    with pytest.raises(NotFoundError, match="no pipeline named 'nope'; pipelines: demo"):
        start_build(
            driver.sessions, pipeline="nope", job="build", sink=driver.sink, clock=driver.clock
        )
    with pytest.raises(NotFoundError, match="no job 'deploy'"):
        start_build(
            driver.sessions, pipeline="demo", job="deploy", sink=driver.sink, clock=driver.clock
        )
    with transaction(driver.sessions) as session:
        assert session.scalar(select(func.count()).select_from(BuildRow)) == 0
