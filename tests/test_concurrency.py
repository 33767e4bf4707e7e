"""Concourse's concurrency limits: serial, serial_groups, max_in_flight, on SQLite and Postgres.

A build over its job's limit waits ``pending`` (nothing of it announced) and starts,
oldest first, when a build holding a slot finishes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from shared import events
from shared import status as st
from shared.builds import Started, start_build
from shared.db import BuildRow, StepRow, transaction
from shared.errors import PipelinePaused
from shared.events import RecordingSink, event_data
from shared.logstore import DirectoryLogStore
from shared.pipelines import save_pipeline, set_paused
from shared.podspec import PodSettings
from shared.steps import finish_step, launch_step
from tests.fakes import FakeClock, FakeRuntime, Handles

TASK = '  plan: [{task: t, config: {platform: linux, run: {path: "true"}}}]\n'
PIPELINE = (
    "jobs:\n"
    + "- name: serial\n  serial: true\n"
    + TASK
    + "- name: two\n  max_in_flight: 2\n"
    + TASK
    + "- name: deploy-a\n  serial_groups: [deploy]\n"
    + TASK
    + "- name: deploy-b\n  serial_groups: [deploy, db]\n  max_in_flight: 5\n"
    + TASK
    + "- name: migrate\n  serial_groups: [db]\n"
    + TASK
    + "- name: free\n"
    + TASK
)


class Driver:
    """Starts builds and runs them to their end with a fake runtime, as the functions would."""

    def __init__(self, sessions: Any, store: Path, clock: FakeClock) -> None:
        self.sessions = sessions
        self.store = store
        self.clock = clock
        self.runtime = FakeRuntime()
        self.sink = RecordingSink()
        self.logs = DirectoryLogStore(store.parent / "logs")
        self.handles = Handles()
        self.builds: list[int] = []
        with transaction(sessions) as session:
            save_pipeline(session, name="demo", config=PIPELINE, clock=clock)

    def start(self, job: str, event_id: str | None = None) -> Started:
        started = start_build(
            self.sessions,
            pipeline="demo",
            job=job,
            sink=self.sink,
            clock=self.clock,
            event_id=event_id,
        )
        self.builds.append(started.build_id)
        return started

    def announced(self) -> list[int]:
        """Builds whose steps were announced, in order."""
        ready = [
            event_data(e)["build_id"] for e in self.sink.events if e["type"] == events.STEP_READY
        ]
        return [self.builds.index(b) for b in dict.fromkeys(ready)]

    def finish(self, index: int, exit_code: int = 0) -> None:
        """Run build ``index``'s announced step to its end (one task: the build ends with it)."""
        build_id = self.builds[index]
        (event,) = [
            e
            for e in self.sink.events
            if e["type"] == events.STEP_READY and event_data(e)["build_id"] == build_id
        ]
        name = launch_step(
            self.sessions,
            build_id=build_id,
            step_id=event_data(event)["step_id"],
            runtime=self.runtime,
            store_root=self.store,
            pod_settings=PodSettings(claim="store"),
            sink=self.sink,
            clock=self.clock,
            handles=self.handles,
        )
        assert name is not None
        finish_step(
            self.sessions,
            pod=self.runtime.finish(name, exit_code),
            runtime=self.runtime,
            logs=self.logs,
            store_root=self.store,
            sink=self.sink,
            clock=self.clock,
        )

    def statuses(self) -> list[str]:
        with transaction(self.sessions) as session:
            by_id = dict(session.execute(select(BuildRow.id, BuildRow.status)).all())
        return [by_id[b] for b in self.builds]


@pytest.fixture
def driver(sessions: Any, tmp_path: Path, clock: FakeClock) -> Driver:
    return Driver(sessions, tmp_path / "store", clock)


P, S, OK, FAIL = st.PENDING, st.STARTED, st.SUCCEEDED, st.FAILED


@pytest.mark.parametrize(
    ("actions", "statuses", "announced"),
    [
        (["serial", "serial", "serial"], [S, P, P], [0]),
        (["serial", "serial", "serial", 0], [OK, S, P], [0, 1]),
        (["serial", "serial", "serial", 0, 1], [OK, OK, S], [0, 1, 2]),
        (["serial", "serial", ("fail", 0)], [FAIL, S], [0, 1]),
        (["two", "two", "two"], [S, S, P], [0, 1]),
        (["two", "two", "two", 1], [S, OK, S], [0, 1, 2]),
        (["deploy-a", "deploy-b", "deploy-a"], [S, P, P], [0]),
        (["deploy-a", "deploy-b", "deploy-a", 0], [OK, S, P], [0, 1]),
        (["deploy-b", "migrate", "deploy-a", "free"], [S, P, P, S], [0, 3]),
        (["deploy-a", "migrate", "deploy-b", 1], [S, OK, P], [0, 1]),
        (["free", "free", "free"], [S, S, S], [0, 1, 2]),
        (["serial", "two", "deploy-a", "migrate"], [S, S, S, S], [0, 1, 2, 3]),
    ],
    ids=[
        "serial-one-at-a-time",
        "serial-next-on-finish",
        "serial-in-order",
        "a-failed-build-frees-its-slot",
        "max-in-flight-2",
        "max-in-flight-any-finish-frees",
        "serial-group-across-jobs",
        "serial-group-oldest-first",
        "groups-overlap-through-one-job",
        "group-waits-behind-its-own-queue",
        "no-limit",
        "limits-are-per-job-and-group",
    ],
)
def test_builds_over_a_limit_wait_and_start_in_order(
    driver: Driver, actions: list[Any], statuses: list[str], announced: list[int]
) -> None:
    for action in actions:
        if isinstance(action, str):
            driver.start(action)
        elif isinstance(action, tuple):
            driver.finish(action[1], exit_code=1)
        else:
            driver.finish(action)
    assert driver.statuses() == statuses
    assert driver.announced() == announced


def test_a_pending_build_reports_itself_pending_and_has_no_start_time(driver: Driver) -> None:
    first = driver.start("serial")
    second = driver.start("serial")
    assert (first.status, second.status) == (S, P)
    with transaction(driver.sessions) as session:
        build = session.get(BuildRow, second.build_id)
        assert build is not None
        assert build.started_at is None
        steps = session.scalars(select(StepRow.status).where(StepRow.build_id == build.id)).all()
    assert steps == [st.PENDING]


def test_a_pending_build_whose_job_was_removed_is_aborted_when_a_slot_frees(
    driver: Driver,
) -> None:
    driver.start("serial")
    driver.start("serial")
    with transaction(driver.sessions) as session:
        save_pipeline(
            session,
            name="demo",
            config=PIPELINE.replace("name: serial", "name: one"),
            clock=driver.clock,
        )
    driver.finish(0)
    assert driver.statuses() == [OK, st.ABORTED]
    with transaction(driver.sessions) as session:
        build = session.get(BuildRow, driver.builds[1])
        assert build is not None and build.error == "job 'serial' is no longer in the pipeline"


def test_a_paused_pipeline_starts_nothing(driver: Driver) -> None:
    with transaction(driver.sessions) as session:
        set_paused(session, "demo", paused=True)
    with pytest.raises(PipelinePaused, match="pipeline 'demo' is paused"):
        driver.start("free")
    with transaction(driver.sessions) as session:
        assert session.scalar(select(func.count()).select_from(BuildRow)) == 0


def _race(driver: Driver, count: int, job: str) -> list[Started]:
    barrier = threading.Barrier(count)
    results: list[Started] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        barrier.wait()
        try:
            results.append(
                start_build(
                    driver.sessions,
                    pipeline="demo",
                    job=job,
                    sink=driver.sink,
                    clock=driver.clock,
                    event_id=f"race-{i}",
                )
            )
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


@pytest.mark.parametrize(
    ("job", "running"), [("serial", 1), ("two", 2)], ids=["serial", "max-in-flight"]
)
def test_concurrent_starts_racing_take_exactly_the_free_slots(
    driver: Driver, job: str, running: int
) -> None:
    results = _race(driver, 4, job)
    assert sorted(r.status for r in results) == sorted([S] * running + [P] * (4 - running))
    assert sorted(r.number for r in results) == [1, 2, 3, 4]
    with transaction(driver.sessions) as session:
        started = session.scalar(
            select(func.count()).select_from(BuildRow).where(BuildRow.status == S)
        )
    assert started == running


def test_a_build_finishing_while_another_is_recorded_never_strands_it(driver: Driver) -> None:
    """The start and the end of a build race: the new build runs as soon as the slot is free."""
    driver.start("serial")
    for round_ in range(10):
        barrier = threading.Barrier(2)
        current = len(driver.builds) - 1

        def finish(barrier: threading.Barrier = barrier, current: int = current) -> None:
            barrier.wait()
            driver.finish(current)

        def start(barrier: threading.Barrier = barrier, round_: int = round_) -> None:
            barrier.wait()
            driver.start("serial", event_id=f"round-{round_}")

        threads = [threading.Thread(target=finish), threading.Thread(target=start)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert driver.statuses()[-2:] == [OK, S], f"round {round_}"
