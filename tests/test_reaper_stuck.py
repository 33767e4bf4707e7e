"""Stuck work: what no event will put right, put right by the reaper, on SQLite and Postgres.

Each case runs clean, and with the tick crashed or failing at its worst point
(faults armed on the runtime, the sink or the log store): the next tick finishes it.
Then a cancelled build and a crashed one must leave nothing behind after two ticks.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared import artifacts, events
from shared import status as st
from shared.archive import STAGING_PREFIX
from shared.builds import abort_build, start_build
from shared.db import transaction
from shared.errors import LogStoreUnavailable, NotFoundError, RuntimeUnavailable
from shared.pipelines import save_pipeline
from shared.podspec import LABEL_STEP
from shared.reaper import ReapReport, reap_artifacts
from tests.fakes import FakeClock
from tests.reaping import Killed, Remover, World, at

GRACE = 600
LEASE = 240


@pytest.fixture
def world(sessions: Any, tmp_path: Path, clock: FakeClock) -> World:
    return World(sessions, tmp_path, clock)


@dataclass(frozen=True)
class Stuck:
    make: Callable[[World], dict[str, Any]]
    """Puts the world in the stuck state; returns what ``check`` needs."""
    arm: Callable[[World], None]
    """Arms the fault that strikes the tick at its worst point."""
    crash: bool
    """The fault kills the tick (``Killed``), rather than failing one thing."""
    category: str
    check: Callable[[World, dict[str, Any]], None]
    """What a user sees once it is put right."""


# --- a running step whose pod vanished --------------------------------------------------


def lost_pod(world: World) -> dict[str, Any]:
    build = world.start()
    pod = world.launch(build, "repo")
    world.runtime.pods.pop(pod)  # the node went, and the pod with it: no event ever comes
    world.set_step(world.step(build, "repo").id, started_at=at(world.clock, GRACE + 1))
    return {"build": build, "pod": pod}


def lost_pod_put_right(world: World, ctx: dict[str, Any]) -> None:
    step = world.step(ctx["build"], "repo")
    assert step.status == st.ERRORED
    assert step.error == (
        f"get 'repo': pod {ctx['pod']} disappeared without reporting; "
        "the step is failed by the reaper"
    )
    assert world.step(ctx["build"], "compile").status == st.SKIPPED
    finished = world.sink.of(events.BUILD_FINISHED)
    assert [(e["build_id"], e["status"]) for e in finished] == [(ctx["build"], st.ERRORED)]
    assert world.rows() == {} and world.dirs() == set()  # its half-made output went too


def crash_when_the_step_is_recorded(world: World) -> None:
    world.sink.faults[events.STEP_FINISHED] = Killed("killed after recording the step")


# --- a pod that ended without its event reaching us -------------------------------------


def lost_event(world: World) -> dict[str, Any]:
    build = world.start()
    pod = world.launch(build, "repo")
    world.end_pod(pod)  # it succeeded, but the event was lost
    return {"build": build, "pod": pod}


def lost_event_put_right(world: World, ctx: dict[str, Any]) -> None:
    assert world.step(ctx["build"], "repo").status == st.SUCCEEDED
    assert world.rows() == {world.rows_of(ctx["build"], "repo"): artifacts.READY}
    compile_id = world.step(ctx["build"], "compile").id
    assert [e["step_id"] for e in world.sink.of(events.STEP_READY)][-1] == compile_id
    assert world.logs.read(ctx["build"], "0") == f"log of {ctx['pod']}\n".encode()
    assert ctx["pod"] not in world.runtime.pods


def crash_before_the_pod_is_deleted(world: World) -> None:
    world.runtime.faults["delete"] = Killed("killed before deleting the pod")


# --- a step.ready the Broker gave up on -------------------------------------------------


def lost_announcement(world: World) -> dict[str, Any]:
    build = world.start()  # the get is scheduled and announced; the announcement is lost
    world.set_build(build, started_at=at(world.clock, 601))
    (first,) = world.sink.of(events.STEP_READY)
    return {"build": build, "first": first}


def announced_again(world: World, ctx: dict[str, Any]) -> None:
    ready = world.sink.of(events.STEP_READY)
    assert ready == [ctx["first"], ctx["first"]]  # the same event again, same id
    assert world.step(ctx["build"], "repo").status == st.SCHEDULED


def crash_when_announcing(world: World) -> None:
    world.sink.faults[events.STEP_READY] = Killed("killed while announcing")


# --- a build past its timeout -----------------------------------------------------------


def timed_out(world: World) -> dict[str, Any]:
    build = world.start()
    pod = world.launch(build, "repo")
    world.set_build(build, started_at=at(world.clock, world.settings.build_timeout_seconds + 1))
    return {"build": build, "pod": pod}


def timed_out_put_right(world: World, ctx: dict[str, Any]) -> None:
    build = world.step(ctx["build"], "repo")
    assert build.status == st.ABORTED
    assert build.error == (
        "get 'repo' was aborted: it ran longer than the build timeout of 21600s "
        "(JETBRIDGE_BUILD_TIMEOUT_SECONDS)"
    )
    assert {world.step(ctx["build"], n).status for n in ("compile", "ship")} == {st.ABORTED}
    finished = world.sink.of(events.BUILD_FINISHED)
    assert [(e["build_id"], e["status"]) for e in finished] == [(ctx["build"], st.ABORTED)]
    assert world.runtime.pods == {}
    assert world.rows() == {} and world.dirs() == set()


# --- pods no step knows -----------------------------------------------------------------


def stray_pod(world: World) -> dict[str, Any]:
    build = world.start()
    pod = world.launch(build, "repo")
    stray = copy.deepcopy(world.runtime.pods[pod])
    stray["metadata"]["name"] = "jb-1-repo-a1-stray"
    stray["metadata"]["labels"][LABEL_STEP] = "424242"  # a step that does not exist
    world.runtime.pods["jb-1-repo-a1-stray"] = stray
    return {"build": build, "pod": pod}


def stray_pod_deleted(world: World, ctx: dict[str, Any]) -> None:
    assert list(world.runtime.pods) == [ctx["pod"]]  # the step's own pod runs on
    assert world.step(ctx["build"], "repo").status == st.RUNNING


def fail_to_delete(world: World) -> None:
    world.runtime.faults["delete"] = RuntimeUnavailable("the API answered 503")


def pod_of_an_aborted_step(world: World) -> dict[str, Any]:
    build = world.start()
    pod = world.launch(build, "repo")
    world.runtime.logs_by_name[pod] = b"cloning...\n"
    aborted = abort_build(
        world.sessions, build_id=build, runtime=None, sink=world.sink, clock=world.clock
    )
    assert aborted.pods_left == (pod,)
    return {"build": build, "pod": pod}


def aborted_pod_deleted(world: World, ctx: dict[str, Any]) -> None:
    assert world.runtime.pods == {}
    assert world.logs.read(ctx["build"], "0") == b"cloning...\n"  # kept before it went
    assert world.rows() == {} and world.dirs() == set()


def fail_to_read_its_log(world: World) -> None:
    world.runtime.faults["logs"] = RuntimeUnavailable("the API answered 503")


# --- an ended pod kept for a while ------------------------------------------------------


def retained_pod(world: World) -> dict[str, Any]:
    world.settings = dataclasses.replace(world.settings, pod_retention_seconds=600)
    build = world.start()
    pod = world.launch(build, "repo")
    world.finish(pod, delete_pod=False)  # kept for `kubectl describe`
    assert pod in world.runtime.pods
    world.clock.advance(300)
    world.reap()
    assert pod in world.runtime.pods  # not yet
    world.clock.advance(301)
    (world.logs.root / str(build) / "0.log").unlink()  # and its log is not in the store
    return {"build": build, "pod": pod}


def retained_pod_deleted(world: World, ctx: dict[str, Any]) -> None:
    assert ctx["pod"] not in world.runtime.pods
    assert world.logs.read(ctx["build"], "0") == f"log of {ctx['pod']}\n".encode()


def fail_to_keep_its_log(world: World) -> None:
    world.logs.fault = LogStoreUnavailable("the bucket answered 503")


STUCK = {
    "pod-vanished": Stuck(
        lost_pod, crash_when_the_step_is_recorded, True, "lost_pods", lost_pod_put_right
    ),
    "event-lost": Stuck(
        lost_event, crash_before_the_pod_is_deleted, True, "lost_events", lost_event_put_right
    ),
    "announcement-lost": Stuck(
        lost_announcement, crash_when_announcing, True, "lost_announcements", announced_again
    ),
    "build-timed-out": Stuck(
        timed_out, crash_before_the_pod_is_deleted, True, "timed_out_builds", timed_out_put_right
    ),
    "pod-no-step-knows": Stuck(stray_pod, fail_to_delete, False, "stray_pods", stray_pod_deleted),
    "pod-of-aborted-step": Stuck(
        pod_of_an_aborted_step, fail_to_read_its_log, False, "stray_pods", aborted_pod_deleted
    ),
    "pod-past-retention": Stuck(
        retained_pod, fail_to_keep_its_log, False, "finished_pods", retained_pod_deleted
    ),
}


@pytest.mark.parametrize("faulted", [False, True], ids=["clean", "faulted"])
@pytest.mark.parametrize("case", list(STUCK.values()), ids=list(STUCK))
def test_stuck_work_is_put_right_even_if_the_tick_fails_half_way(
    world: World, case: Stuck, faulted: bool
) -> None:
    ctx = case.make(world)
    if faulted:
        case.arm(world)
        if case.crash:
            with pytest.raises(Killed):
                world.reap()
        else:
            first = world.reap()
            assert first.tallies[case.category].failed == 1
            assert len(first.errors) == 1
        world.clock.advance(1)
    report = world.reap()
    case.check(world, ctx)
    assert report.errors == []
    if not faulted:
        assert report.tallies[case.category].done == 1
    world.assert_agree()


def test_steps_whose_pods_are_on_their_way_are_left_alone(world: World) -> None:
    build = world.start()
    pod = world.launch(build, "repo")
    world.runtime.pods.pop(pod)  # launched 0 s ago: a redelivered step.ready may still make it
    young = world.start()  # scheduled and announced just now
    running = world.launch(world.start(), "repo")  # running, its pod too
    report = world.reap()
    assert world.step(build, "repo").status == st.RUNNING
    assert world.step(young, "repo").status == st.SCHEDULED
    assert running in world.runtime.pods
    assert len(world.sink.of(events.STEP_READY)) == 3
    for category in ("lost_pods", "lost_events", "lost_announcements", "stray_pods"):
        assert report.tallies[category].found == 0


def test_a_build_with_no_timeout_is_never_aborted(world: World) -> None:
    world.settings = dataclasses.replace(world.settings, build_timeout_seconds=0)
    build = world.start()
    world.set_build(build, started_at=at(world.clock, 10 * 86400))
    world.reap()
    assert world.step(build, "repo").status == st.SCHEDULED


# --- abort_build ----------------------------------------------------------------------


def test_abort_build_stops_every_step_deletes_pods_and_keeps_logs(world: World) -> None:
    build = world.start()
    world.run(build, "repo")
    pod = world.launch(build, "compile")
    world.runtime.logs_by_name[pod] = b"compiling...\n"
    aborted = abort_build(
        world.sessions,
        build_id=build,
        runtime=world.runtime,
        logs=world.logs,
        sink=world.sink,
        clock=world.clock,
    )
    assert aborted.aborted and aborted.status == st.ABORTED
    assert aborted.steps == ("compile", "unit", "lint", "ship")
    assert aborted.pods_left == ()
    assert world.runtime.pods == {}
    assert world.logs.read(build, "1") == b"compiling...\n"
    assert world.step(build, "repo").status == st.SUCCEEDED  # what ended stays as it ended
    assert world.step(build, "compile").error == "task 'compile' was aborted: aborted by a user"
    finished = world.sink.of(events.STEP_FINISHED)
    assert [(e["name"], e["status"]) for e in finished[-4:]] == [
        ("compile", st.ABORTED),
        ("unit", st.ABORTED),
        ("lint", st.ABORTED),
        ("ship", st.ABORTED),
    ]
    (done,) = world.sink.of(events.BUILD_FINISHED)
    assert (done["status"], done["id"]) == (st.ABORTED, f"build-{build}-finished")
    # A pod that ends now records nothing: its step was aborted first.
    again = abort_build(
        world.sessions, build_id=build, runtime=world.runtime, sink=world.sink, clock=world.clock
    )
    assert not again.aborted and again.status == st.ABORTED
    assert len(world.sink.of(events.BUILD_FINISHED)) == 1


def test_abort_build_leaves_an_undeletable_pod_to_the_reaper(world: World) -> None:
    build = world.start()
    pod = world.launch(build, "repo")
    world.runtime.faults["delete"] = RuntimeUnavailable("the API answered 503")
    aborted = abort_build(
        world.sessions, build_id=build, runtime=world.runtime, sink=world.sink, clock=world.clock
    )
    assert aborted.pods_left == (pod,)
    report = world.reap()
    assert report.tallies["stray_pods"].done == 1
    assert world.runtime.pods == {}


def test_abort_build_of_an_ended_or_unknown_build(world: World) -> None:
    build = world.start()
    world.run(build, "repo", "compile", "unit", "lint", "ship")
    ended = abort_build(
        world.sessions, build_id=build, runtime=None, sink=world.sink, clock=world.clock
    )
    assert (ended.aborted, ended.status, ended.steps) == (False, st.SUCCEEDED, ())
    with pytest.raises(NotFoundError, match="no build 99"):
        abort_build(world.sessions, build_id=99, runtime=None, sink=world.sink, clock=world.clock)


# --- nothing behind -----------------------------------------------------------------------


def assert_nothing_behind(world: World, build: int) -> None:
    assert world.runtime.pods == {}, "pods left"
    assert world.rows() == {}, "artifact rows left"
    assert world.dirs() == set() and world.folders() == set(), "directories left"
    world.assert_agree()
    assert len(world.sink.of(events.BUILD_FINISHED)) == 1


@pytest.mark.parametrize(
    "fault", [None, "pod-not-deleted", "killed-mid-abort"], ids=lambda f: f or "clean"
)
def test_a_cancelled_build_leaves_nothing_behind_after_two_ticks(
    world: World, fault: str | None
) -> None:
    build = world.start()
    world.run(build, "repo")
    pod = world.launch(build, "compile")  # writing dist when it is cancelled
    (world.root / world.rows_of(build, "dist") / "half.o").write_bytes(b"\0" * 64)
    if fault == "pod-not-deleted":
        world.runtime.faults["delete"] = RuntimeUnavailable("the API answered 503")
    if fault == "killed-mid-abort":
        world.runtime.faults["delete"] = Killed("the CLI was killed")
    try:
        abort_build(
            world.sessions,
            build_id=build,
            runtime=world.runtime,
            logs=world.logs,
            sink=world.sink,
            clock=world.clock,
        )
    except Killed:
        assert fault == "killed-mid-abort"
    for _ in range(2):
        world.reap()
    assert_nothing_behind(world, build)
    assert world.step(build, "compile").status == st.ABORTED
    assert pod in world.runtime.deleted


@pytest.mark.parametrize("crash", [None, "before", "after"], ids=lambda c: c or "clean")
def test_a_crashed_build_leaves_nothing_behind_after_two_ticks(
    world: World, crash: str | None
) -> None:
    build = world.start()
    world.run(build, "repo")
    pod = world.launch(build, "compile")
    (world.root / world.rows_of(build, "dist") / "half.o").write_bytes(b"\0" * 64)
    world.runtime.pods.pop(pod)  # the node died with the pod on it
    staging = f"artifacts/{build}/{STAGING_PREFIX}{'f' * 32}.tmp1"
    world.directory(staging, age=0)  # and an upload was cut short by the same crash
    world.clock.advance(GRACE + 1)
    if crash is None:
        world.reap()
    else:
        with pytest.raises(Killed):  # and the first tick was killed too
            world.reap(Remover(crash=crash))
    world.clock.advance(LEASE + 1)
    world.reap()
    assert_nothing_behind(world, build)
    assert world.step(build, "compile").status == st.ERRORED
    assert world.step(build, "ship").status == st.SKIPPED


# --- hooks, retries and waiting builds ----------------------------------------------------

HOOKS = """
jobs:
- name: flaky
  plan:
  - task: make
    config: {platform: linux, outputs: [{name: out}], run: {path: make}}
  - task: check
    attempts: 2
    config: {platform: linux, inputs: [{name: out}], run: {path: test}}
  - task: last
    config: {platform: linux, run: {path: "true"}}
- name: hooked
  serial: true
  plan:
  - task: long
    config: {platform: linux, run: {path: sleep}}
    ensure:
      task: cleanup
      config: {platform: linux, run: {path: cleanup}}
"""


def start(world: World, job: str) -> int:
    with transaction(world.sessions) as session:
        save_pipeline(session, name="hooks", config=HOOKS, clock=world.clock)
    return start_build(
        world.sessions, pipeline="hooks", job=job, sink=world.sink, clock=world.clock
    ).build_id


@pytest.mark.parametrize(
    ("attempt", "kept"), [(1, True), (2, False)], ids=["attempt-left", "no-attempt-left"]
)
def test_a_failed_reader_with_attempts_left_keeps_what_it_reads(
    world: World, attempt: int, kept: bool
) -> None:
    build = start(world, "flaky")
    world.run(build, "make")
    out = world.rows_of(build, "out")
    check = world.step(build, "check")
    # Killed between recording the failure and rescheduling the next attempt.
    world.set_step(check.id, status=st.FAILED, attempt=attempt)
    report = ReapReport()
    reap_artifacts(
        world.sessions, root=world.root, clock=world.clock, settings=world.settings, report=report
    )
    assert (out in world.rows()) == kept
    assert report.tallies["artifacts"].done == int(not kept)


def test_an_aborted_build_runs_its_ensure_hook_then_ends_aborted(world: World) -> None:
    build = start(world, "hooked")
    pod = world.launch(build, "long")
    aborted = abort_build(
        world.sessions,
        build_id=build,
        runtime=world.runtime,
        logs=world.logs,
        sink=world.sink,
        clock=world.clock,
    )
    assert (aborted.aborted, aborted.status, aborted.steps) == (True, st.STARTED, ("long",))
    assert pod not in world.runtime.pods
    cleanup = world.step(build, "cleanup")
    assert cleanup.status == st.SCHEDULED  # Concourse runs ensure (and on_abort) hooks
    report = world.reap()  # the reaper leaves the hook to run
    assert report.tallies["timed_out_builds"].found == 0
    world.run(build, "cleanup")
    assert world.step(build, "cleanup").status == st.SUCCEEDED
    (done,) = world.sink.of(events.BUILD_FINISHED)
    assert done["status"] == st.ABORTED
    world.reap()
    assert world.runtime.pods == {} and world.rows() == {} and world.dirs() == set()


def test_a_build_waiting_for_its_turn_is_aborted_at_once(world: World) -> None:
    first = start(world, "hooked")
    waiting = start(world, "hooked")  # serial: it waits for the first
    assert world.step(waiting, "long").status == st.PENDING
    aborted = abort_build(
        world.sessions, build_id=waiting, runtime=world.runtime, sink=world.sink, clock=world.clock
    )
    assert (aborted.status, aborted.steps) == (st.ABORTED, ("long", "cleanup"))
    assert [e["build_id"] for e in world.sink.of(events.BUILD_FINISHED)] == [waiting]
    assert world.step(first, "long").status == st.SCHEDULED
