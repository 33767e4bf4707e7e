"""The reaper and the step runner racing on the same build, in two threads, on Postgres.

A pod ends; its event reaches the step runner (``finish_step``) at the very moment a
reaper tick, finding the same ended pod, resyncs the step from it (``resync_steps``
calls ``finish_step`` too, as if the event had been lost). A runtime that holds both
at the pod's log (``RendezvousRuntime``) makes them meet there every time, so both
have seen the step running when they go on to record it. Exactly one of them may win:
the step recorded once, ``step.finished`` sent once, the next step announced once, the
build finished once; and when it is over, the reaper leaves no artifact, no directory
and no pod. Then the same race without the rendezvous, as it comes, over many builds.

On SQLite every write transaction holds the one writer lock, so the two cannot both
see the step running; the race is Postgres's.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from shared import events
from shared import status as st
from shared.db import BuildRow, make_engine, make_session_factory, transaction, upgrade
from shared.events import event_data
from shared.steps import finish_step
from tests.fakes import FakeClock
from tests.faults.ports import RendezvousRuntime
from tests.reaping import World

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

#: The demo pipeline of the reaper's tests: get, compile, unit and lint side by side, ship.
STEPS = ("repo", "compile", "unit", "lint", "ship")
BUILDS = 3


@pytest.fixture
def world(postgres_database: str, tmp_path: Path, clock: FakeClock):  # type: ignore[no-untyped-def]
    reset = create_engine(postgres_database, isolation_level="AUTOCOMMIT")
    with reset.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    reset.dispose()
    engine = make_engine(postgres_database)
    upgrade(engine)
    world = World(make_session_factory(engine), tmp_path, clock)
    yield world
    engine.dispose()


def race(*actions: Callable[[], object]) -> None:
    """Run the actions in threads of their own, together; re-raise what any raised."""
    errors: list[BaseException] = []

    def run(action: Callable[[], object]) -> None:
        try:
            action()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a racer never finished"
    if errors:
        raise errors[0]


def counts(world: World, type_: str, key: str) -> Counter[object]:
    return Counter(event_data(e)[key] for e in world.sink.events if e["type"] == type_)


def test_the_reaper_and_the_step_runner_finishing_one_step_at_once_record_it_once(
    world: World,
) -> None:
    runtime = RendezvousRuntime(world.runtime)
    world.runtime = runtime  # type: ignore[assignment]
    builds = [world.start() for _ in range(BUILDS)]
    for build_id in builds:
        for name in STEPS:
            pod = world.end_pod(world.launch(build_id, name))

            def step_runner(pod: dict[str, object] = pod) -> None:
                finish_step(
                    world.sessions,
                    pod=pod,
                    runtime=world.runtime,
                    logs=world.logs,
                    store_root=world.root,
                    sink=world.sink,
                    clock=world.clock,
                )

            race(step_runner, world.reap)
    assert len(runtime.met) == BUILDS * len(STEPS), runtime.alone  # every race was run
    with transaction(world.sessions) as session:
        statuses = session.scalars(select(BuildRow.status).where(BuildRow.id.in_(builds))).all()
    assert statuses == [st.SUCCEEDED] * BUILDS
    finished = counts(world, events.STEP_FINISHED, "step_id")
    assert len(finished) == BUILDS * len(STEPS)
    assert [s for s, n in finished.items() if n > 1] == [], "a step was recorded twice"
    ready = Counter(e["id"] for e in world.sink.events if e["type"] == events.STEP_READY)
    assert [i for i, n in ready.items() if n > 1] == [], "a step was announced twice"
    assert sorted(counts(world, events.BUILD_FINISHED, "build_id").values()) == [1] * BUILDS
    # Over: the next tick leaves nothing behind.
    report = world.reap()
    assert report.errors == []
    assert world.rows() == {}
    assert world.dirs() == set()
    assert world.runtime.list() == []


def test_a_reaper_ticking_in_a_loop_beside_the_step_runner_changes_no_outcome(
    world: World,
) -> None:
    stop = threading.Event()
    ticks: list[int] = []
    errors: list[str] = []

    def reaper() -> None:
        while not stop.is_set():
            report = world.reap()
            errors.extend(report.errors)
            ticks.append(1)

    thread = threading.Thread(target=reaper)
    thread.start()
    try:
        builds = [world.start() for _ in range(6)]
        for build_id in builds:
            for name in STEPS:
                pod = world.launch(build_id, name)
                world.finish(pod)
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    assert len(ticks) > 1
    finished = counts(world, events.STEP_FINISHED, "step_id")
    assert len(finished) == len(builds) * len(STEPS)
    assert [s for s, n in finished.items() if n > 1] == []
    assert sorted(counts(world, events.BUILD_FINISHED, "build_id").values()) == [1] * len(builds)
    world.reap()
    assert world.rows() == {}
    assert world.dirs() == set()
    assert world.runtime.list() == []
