"""Resource versions, checks and triggered builds, on SQLite and Postgres.

A ``World`` plays the parts around the services: the step runner (``launch_step``,
``finish_step`` with a fake runtime), the trigger function's ``build.finished`` handler
(``triggers.after_build``), and the resources' scripts: a fake repository whose ``check``
answers versions from the one asked for on, whose ``in`` answers the version it was
given and whose ``out`` makes a new one.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from shared import checks, triggers, versions
from shared import status as st
from shared.builds import recent_builds, start_build
from shared.db import BuildRow, ResourceVersionRow, StepRow, transaction
from shared.deliveries import deliver
from shared.events import BUILD_FINISHED, STEP_READY, RecordingSink, event_data
from shared.logstore import DirectoryLogStore
from shared.pipelines import find_pipeline, save_pipeline, set_paused
from shared.podspec import PodSettings
from shared.steps import finish_step, launch_step
from shared.webhooks import Push
from tests.fakes import FakeClock, FakeRuntime, Handles

URI = "https://github.com/acme/app.git"

CHAIN = f"""
resources:
- name: repo
  type: git
  source: {{uri: "{URI}", branch: main}}
- name: release
  type: git
  source: {{uri: "{URI}", branch: release}}
  check_every: never
jobs:
- name: build
  plan:
  - get: repo
    trigger: true
  - task: compile
    config: {{platform: linux, run: {{path: make}}}}
  - put: release
- name: test
  serial: true
  plan:
  - get: repo
    trigger: true
    passed: [build]
  - task: unit
    config: {{platform: linux, run: {{path: test}}}}
- name: ship
  plan:
  - get: repo
    trigger: true
    passed: [test]
  - get: release
    passed: [build]
- name: nightly
  plan:
  - get: repo
    version: every
    trigger: true
"""


class World:
    def __init__(self, sessions: Any, store: Path, clock: FakeClock) -> None:
        self.sessions = sessions
        self.store = store
        self.clock = clock
        self.runtime = FakeRuntime()
        self.sink = RecordingSink()
        self.logs = DirectoryLogStore(store.parent / "logs")
        self.handles = Handles()
        self.commits: list[str] = []
        """The fake repository's commits on main, oldest first."""
        self.fail: set[str] = set()
        """Tasks that exit 1."""
        self.puts = 0
        self.seen = 0

    def set_pipeline(self, config: str = CHAIN, name: str = "app") -> None:
        with transaction(self.sessions) as session:
            save_pipeline(session, name=name, config=config, clock=self.clock)

    def commit(self, *refs: str) -> None:
        self.commits += refs

    def settle(self, *, triggering: bool = True) -> None:
        """Deliver every event until nothing moves: pods end as the fake scripts answer."""
        while self.seen < len(self.sink.events):
            event = self.sink.events[self.seen]
            self.seen += 1
            self.clock.advance(1)
            if event["type"] == STEP_READY:
                data = event_data(event)
                name = launch_step(
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
                if name is not None:
                    self._answer(name, data["step_id"])
            elif event["type"] == BUILD_FINISHED and triggering:
                triggers.after_build(
                    self.sessions,
                    build_id=event_data(event)["build_id"],
                    sink=self.sink,
                    clock=self.clock,
                )

    def _answer(self, pod: str, step_id: int) -> None:
        with transaction(self.sessions) as session:
            step = session.get(StepRow, step_id)
            assert step is not None
            kind, name, spec = step.kind, step.name, step.spec
        exit_code, message = 0, ""
        asked = (spec.get("resource") or {}).get("version")
        if kind == "check":
            refs = self.commits
            start = refs.index(asked["ref"]) if asked and asked["ref"] in refs else len(refs) - 1
            message = json.dumps([{"ref": r} for r in refs[max(start, 0) :]])
        elif kind == "get":
            message = json.dumps({"version": asked, "metadata": [{"name": "n", "value": name}]})
        elif kind == "put":
            self.puts += 1
            message = json.dumps({"version": {"ref": f"rel-{self.puts}"}})
        elif name in self.fail:
            exit_code = 1
        pod_data = self.runtime.finish(pod, exit_code, message=message)
        finish_step(
            self.sessions,
            pod=pod_data,
            runtime=self.runtime,
            logs=self.logs,
            store_root=self.store,
            sink=self.sink,
            clock=self.clock,
        )

    def check(self, resource: str = "repo", pipeline: str = "app") -> None:
        checks.start_check(
            self.sessions, pipeline=pipeline, resource=resource, sink=self.sink, clock=self.clock
        )
        self.settle()

    def builds(self, *, checks_too: bool = False) -> list[BuildRow]:
        with transaction(self.sessions) as session:
            query = select(BuildRow).order_by(BuildRow.id)
            if not checks_too:
                query = query.where(BuildRow.job_name.not_like("check:%"))
            return list(session.scalars(query).all())

    def runs(self, job: str) -> list[tuple[str, str | None]]:
        """``(status, repo ref)`` of each build of ``job``, oldest first."""
        return [
            (b.status, (b.versions.get("repo") or {}).get("ref"))
            for b in self.builds()
            if b.job_name == job
        ]

    def history(self, resource: str = "repo") -> list[tuple[str, int, str]]:
        with transaction(self.sessions) as session:
            rows = session.scalars(
                select(ResourceVersionRow)
                .where(ResourceVersionRow.resource == resource)
                .order_by(ResourceVersionRow.check_order, ResourceVersionRow.id)
            ).all()
            return [(r.version["ref"], r.check_order, r.origin) for r in rows]


@pytest.fixture
def world(sessions: Any, tmp_path: Path, clock: FakeClock) -> World:
    return World(sessions, tmp_path / "store", clock)


def test_a_check_saves_the_versions_it_found_oldest_first(world: World) -> None:
    world.set_pipeline()
    world.commit("a1", "a2")
    world.check()
    # Asked with no version, the check answers the newest only (Concourse's protocol).
    assert world.history() == [("a2", 1, "check")]
    world.commit("a3", "a4")
    world.check()
    assert world.history() == [("a2", 1, "check"), ("a3", 2, "check"), ("a4", 3, "check")]
    (check,) = [b for b in world.builds(checks_too=True) if b.job_name == "check:repo"][-1:]
    assert check.status == st.SUCCEEDED
    with transaction(world.sessions) as session:
        step = session.scalars(select(StepRow).where(StepRow.build_id == check.id)).one()
    # It asked for the versions from the newest it knew.
    assert json.loads(step.spec["env"]["JETBRIDGE_REQUEST"])["version"] == {"ref": "a2"}


@pytest.mark.parametrize(
    ("origin", "refs", "want"),
    [
        ("check", ["b", "c"], ["a", "b", "c"]),  # known, and the newest stays the newest
        ("check", ["a"], ["b", "c", "a"]),  # a branch forced back: a is the newest again
        ("webhook", ["b"], ["a", "c", "b"]),
        ("put", ["d"], ["a", "b", "c", "d"]),
        ("put", ["a"], ["a", "b", "c"]),  # a put of a known version moves nothing
        ("get", ["old"], ["old", "a", "b", "c"]),  # fetched by pin: never the newest
    ],
    ids=["check-known", "check-forced-back", "webhook-known", "put-new", "put-known", "get-new"],
)
def test_check_order_says_which_version_is_newest(
    world: World, origin: str, refs: list[str], want: list[str]
) -> None:
    world.set_pipeline()
    with transaction(world.sessions) as session:
        pipeline_id = find_pipeline(session, "app").id
        common = {
            "pipeline_id": pipeline_id,
            "resource": "repo",
            "scope": "s",
            "now": world.clock(),
        }
        versions.save_versions(
            session, versions=[{"ref": r} for r in "abc"], origin="check", **common
        )
        versions.save_versions(
            session, versions=[{"ref": r} for r in refs], origin=origin, **common
        )
    with transaction(world.sessions) as session:
        latest = versions.latest_version(
            session, pipeline_id=pipeline_id, resource="repo", scope="s"
        )
    assert [r for r, _, _ in world.history()] == want
    assert latest == {"ref": want[-1]}


def test_a_new_commit_flows_through_jobs_chained_with_passed(world: World) -> None:
    world.set_pipeline()
    world.commit("c1")
    world.check()
    assert world.runs("build") == [(st.SUCCEEDED, "c1")]
    assert world.runs("test") == [(st.SUCCEEDED, "c1")]
    # ship gets repo passed test, and release passed build: both from build #1's and test #1's.
    (ship,) = [b for b in world.builds() if b.job_name == "ship"]
    assert (ship.status, ship.versions) == (
        st.SUCCEEDED,
        {"repo": {"ref": "c1"}, "release": {"ref": "rel-1"}},
    )
    assert world.runs("nightly") == [(st.SUCCEEDED, "c1")]
    # In order: each downstream build was created after its upstream build ended.
    by_job = {b.job_name: b for b in world.builds()}
    assert by_job["build"].finished_at <= by_job["test"].created_at  # type: ignore[operator]
    assert by_job["test"].finished_at <= by_job["ship"].created_at  # type: ignore[operator]
    with transaction(world.sessions) as session:
        used = versions.used_by(session, by_job["build"].id)
    assert used == {
        "input": [("repo", "repo", {"ref": "c1"})],
        "output": [("release", "release", {"ref": "rel-1"})],
    }


def test_a_failing_middle_job_stops_the_flow(world: World) -> None:
    world.set_pipeline()
    world.commit("c1")
    world.check()
    world.fail = {"unit"}
    world.commit("c2")
    world.check()
    assert world.runs("build") == [(st.SUCCEEDED, "c1"), (st.SUCCEEDED, "c2")]
    assert world.runs("test") == [(st.SUCCEEDED, "c1"), (st.FAILED, "c2")]
    assert world.runs("ship") == [(st.SUCCEEDED, "c1")]
    # Asked by hand, ship takes the newest version that passed test: still c1.
    started = start_build(
        world.sessions, pipeline="app", job="ship", sink=world.sink, clock=world.clock
    )
    world.settle()
    assert world.runs("ship")[-1] == (st.SUCCEEDED, "c1")
    assert started.created


def test_scheduling_again_starts_nothing_new(world: World) -> None:
    world.set_pipeline()
    world.commit("c1")
    world.check()
    before = len(world.builds())
    assert (
        triggers.schedule(world.sessions, pipeline="app", sink=world.sink, clock=world.clock) == []
    )
    assert triggers.schedule_all(world.sessions, sink=world.sink, clock=world.clock) == []
    assert len(world.builds()) == before


def test_version_every_builds_each_new_version_in_order(world: World) -> None:
    world.set_pipeline()
    world.commit("c1")
    world.check()
    world.commit("c2", "c3", "c4")
    world.check()
    assert [ref for _, ref in world.runs("nightly")] == ["c1", "c2", "c3", "c4"]
    # latest skips to the newest.
    assert [ref for _, ref in world.runs("build")] == ["c1", "c4"]


def test_a_triggered_build_of_a_serial_job_waits_its_turn(world: World) -> None:
    world.set_pipeline()
    world.commit("c1")
    world.check()
    # A build of test (serial) under way: its steps never end here.
    start_build(world.sessions, pipeline="app", job="test", sink=world.sink, clock=world.clock)
    world.seen = len(world.sink.events)
    world.commit("c2")
    checks.start_check(
        world.sessions, pipeline="app", resource="repo", sink=world.sink, clock=world.clock
    )
    world.settle()
    statuses = [s for s, _ in world.runs("test")]
    assert statuses == [st.SUCCEEDED, st.STARTED, st.PENDING]
    assert world.runs("test")[-1] == (st.PENDING, "c2")


def test_a_job_asked_for_by_hand_with_nothing_passed_errors_saying_why(world: World) -> None:
    world.set_pipeline()
    started = start_build(
        world.sessions, pipeline="app", job="test", sink=world.sink, clock=world.clock
    )
    assert started.status == st.ERRORED
    (build,) = world.builds()
    assert build.error == "no version of 'repo' has passed 'build' yet"
    with transaction(world.sessions) as session:
        assert session.scalars(select(StepRow).where(StepRow.build_id == build.id)).all() == []
    finished = [event_data(e) for e in world.sink.events if e["type"] == BUILD_FINISHED]
    assert finished == [{"build_id": build.id, "job": "test", "number": 1, "status": st.ERRORED}]


def test_a_paused_pipeline_checks_and_triggers_nothing(world: World) -> None:
    world.set_pipeline()
    world.commit("c1")
    world.check()
    with transaction(world.sessions) as session:
        set_paused(session, "app", paused=True)
    world.commit("c2")
    report = checks.run_due_checks(world.sessions, sink=world.sink, clock=world.clock)
    assert report.started == []
    assert triggers.schedule_all(world.sessions, sink=world.sink, clock=world.clock) == []


def test_due_checks_follow_check_every(world: World) -> None:
    world.set_pipeline()
    world.commit("c1")

    def due() -> list[str]:
        return checks.run_due_checks(world.sessions, sink=world.sink, clock=world.clock).started

    assert due() == ["app/repo"]  # release has check_every: never
    world.clock.advance(120)
    assert due() == []  # due by the clock, but the check is still under way
    world.settle(triggering=False)
    assert due() == ["app/repo"]
    world.settle(triggering=False)
    world.clock.advance(50)
    assert due() == []  # less than a minute (the default check_every) since the last
    world.clock.advance(15)
    assert due() == ["app/repo"]


def test_two_ticks_in_one_slot_start_one_check(world: World, clock: FakeClock) -> None:
    world.set_pipeline()
    first = checks.run_due_checks(world.sessions, sink=world.sink, clock=clock)
    world.settle(triggering=False)  # the check ends (no commits: no versions)
    # A second reaper whose look came before the first check ended: the same slot, same id.
    with transaction(world.sessions) as session:
        session.execute(
            BuildRow.__table__.update()
            .where(BuildRow.job_name == "check:repo")
            .values(created_at=clock() - timedelta(seconds=3600))
        )
    second = checks.run_due_checks(world.sessions, sink=world.sink, clock=clock)
    assert first.started == ["app/repo"] and second.started == []


def test_old_check_builds_are_pruned(world: World) -> None:
    world.set_pipeline()
    world.commit("c1")
    for _ in range(checks.KEEP_CHECK_BUILDS + 3):
        world.clock.advance(61)
        checks.run_due_checks(world.sessions, sink=world.sink, clock=world.clock)
        world.settle(triggering=False)
    kept = [b for b in world.builds(checks_too=True) if b.job_name == "check:repo"]
    assert len(kept) == checks.KEEP_CHECK_BUILDS + 1  # the last tick's run, pruned before it
    assert [b.number for b in kept] == list(range(3, checks.KEEP_CHECK_BUILDS + 4))


def test_check_builds_are_hidden_from_the_build_list_unless_asked(world: World) -> None:
    world.set_pipeline()
    world.commit("c1")
    world.check()
    with transaction(world.sessions) as session:
        jobs = [v.job for v in recent_builds(session, limit=50)]
        everything = [v.job for v in recent_builds(session, limit=50, checks=True)]
    assert "check:repo" not in jobs and "build" in jobs
    assert "check:repo" in everything


def test_checking_an_unknown_resource_names_the_ones_there_are(world: World) -> None:
    world.set_pipeline()
    with pytest.raises(
        Exception, match="no resource 'nope' in the pipeline; resources: repo, release"
    ):
        checks.start_check(
            world.sessions, pipeline="app", resource="nope", sink=world.sink, clock=world.clock
        )


def test_a_webhook_records_the_pushed_commit_and_its_builds_use_it(world: World) -> None:
    world.set_pipeline()
    sha = "a" * 40
    push = Push(
        provider="github",
        event="push",
        delivery="d-1",
        repository=URI,
        urls=frozenset({"github.com/acme/app"}),
        branch="main",
        commit=sha,
    )
    received = deliver(
        world.sessions, pipeline="app", delivery=push, sink=world.sink, clock=world.clock
    )
    assert sorted(b.job for b in received.builds) == ["build", "nightly"]
    assert world.history() == [(sha, 1, "webhook")]
    world.settle()
    # test and ship follow through passed; nothing was built twice.
    assert world.runs("build") == [(st.SUCCEEDED, sha)]
    assert world.runs("test") == [(st.SUCCEEDED, sha)]
    assert world.runs("ship") == [(st.SUCCEEDED, sha)]
    assert world.runs("nightly") == [(st.SUCCEEDED, sha)]


TOGETHER = """
resources:
- {name: repo, type: git, source: {uri: /r}, check_every: never}
- {name: config, type: git, source: {uri: /c}, check_every: never}
jobs:
- name: build
  plan:
  - get: repo
  - get: config
  - task: compile
    config: {platform: linux, run: {path: make}}
- name: test
  plan:
  - get: repo
    passed: [build]
  - get: config
    passed: [build]
"""


def test_gets_passed_through_one_job_come_from_the_same_build(world: World) -> None:
    world.set_pipeline(TOGETHER, name="pair")
    runs = [
        ("repo-1", "config-2", True),
        ("repo-2", "config-1", True),
        ("repo-3", "config-3", False),
    ]
    for repo, config, succeeds in runs:
        world.fail = set() if succeeds else {"compile"}
        start_build(
            world.sessions,
            pipeline="pair",
            job="build",
            sink=world.sink,
            clock=world.clock,
            versions={"repo": {"ref": repo}, "config": {"ref": config}},
        )
        world.settle(triggering=False)
    start_build(world.sessions, pipeline="pair", job="test", sink=world.sink, clock=world.clock)
    world.settle(triggering=False)
    test = [b for b in world.builds() if b.job_name == "test"][-1]
    # The pair the newest successful build used: never repo-3 (its build failed), and never
    # repo-2 with config-2, which each passed build, but in different builds.
    assert test.versions == {"repo": {"ref": "repo-2"}, "config": {"ref": "config-1"}}
    assert test.status == st.SUCCEEDED


def test_the_migration_makes_the_tables_the_model_describes(engine: Any) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from shared.db import Base

    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in diffs if "versions" in repr(d)] == []


def test_destroying_a_pipeline_takes_its_versions_with_it(world: World) -> None:
    from shared.db import BuildVersionRow
    from shared.pipelines import destroy_pipeline

    world.set_pipeline()
    world.commit("c1")
    world.check()
    with transaction(world.sessions) as session:
        assert session.scalar(select(func.count()).select_from(BuildVersionRow)) > 0
        destroy_pipeline(session, "app")
    with transaction(world.sessions) as session:
        assert session.scalar(select(func.count()).select_from(ResourceVersionRow)) == 0
        assert session.scalar(select(func.count()).select_from(BuildVersionRow)) == 0
