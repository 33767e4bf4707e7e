"""The pipeline registry through the CLI: set-pipeline, pipelines, pause, unpause, destroy,
trigger-job and builds --watch, on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from shared import artifacts
from shared import status as st
from shared.builds import start_build, watch_builds
from shared.cli import cli
from shared.db import (
    ArtifactRow,
    BuildRow,
    DeliveryRow,
    PipelineRow,
    StepRow,
    make_engine,
    make_session_factory,
    transaction,
    upgrade,
)
from shared.events import RecordingSink
from shared.pipelines import save_pipeline
from tests.fakes import FakeClock

PIPELINE = """\
resources:
- name: repo
  type: git
  source: {uri: ((repo)), branch: main}
jobs:
- name: unit
  plan:
  - get: repo
    trigger: true
  - task: test
    config: {platform: linux, inputs: [{name: repo}], run: {path: "true"}}
"""

TASK_ONLY = """\
jobs:
- name: hello
  plan:
  - task: say
    config: {platform: linux, run: {path: sh, args: [-c, "echo hello from the task"]}}
"""


class Jetbridge:
    """The ``jetbridge`` command, run in this process against one data dir and database."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.engine = make_engine(database_url)
        upgrade(self.engine)
        self.sessions = make_session_factory(self.engine)

    def __call__(self, *args: str, input: str | None = None) -> Result:
        env = {"JETBRIDGE_DATABASE_URL": self.database_url, "JETBRIDGE_EVENT_SINK": ""}
        return CliRunner().invoke(
            cli, ["--data-dir", str(self.data_dir), *args], input=input, env=env
        )

    def count(self, table: Any, *where: Any) -> int:
        with transaction(self.sessions) as session:
            return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)


@pytest.fixture
def jetbridge(tmp_path: Path, database_url: str) -> Any:
    tool = Jetbridge(tmp_path / "data", database_url)
    yield tool
    tool.engine.dispose()


def write(tmp_path: Path, text: str, name: str = "pipeline.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_set_pipeline_shows_the_change_asks_and_stores_a_new_pipeline_paused(
    jetbridge: Jetbridge, tmp_path: Path
) -> None:
    config = write(tmp_path, PIPELINE)
    result = jetbridge(
        "set-pipeline", "-p", "app", "-c", str(config), "-v", "repo=/srv/app.git", input="y\n"
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "--- /dev/null\n+++ app (new)\n" in out
    assert "+  source: {uri: ((repo)), branch: main}\n" in out
    assert "variable added 'repo'\n" in out
    assert "apply this configuration? [y/N]: y\n" in out
    assert "pipeline 'app' created, paused: `jetbridge unpause-pipeline app` lets it build" in out
    listing = jetbridge("pipelines")
    assert listing.output.splitlines() == [
        "name                     paused  builds  last       jobs",
        "app                      yes          0  -          unit",
    ]
    again = jetbridge("set-pipeline", "-p", "app", "-c", str(config), "-v", "repo=/srv/app.git")
    assert again.exit_code == 0 and again.output == "pipeline 'app' is unchanged\n"


def test_set_pipeline_diffs_against_the_stored_one_and_never_shows_variable_values(
    jetbridge: Jetbridge, tmp_path: Path
) -> None:
    config = write(tmp_path, PIPELINE)
    first = jetbridge("set-pipeline", "-p", "app", "-c", str(config), "-v", "repo=hunter2", "-n")
    assert first.exit_code == 0
    assert jetbridge("unpause-pipeline", "app").output == "unpaused 'app'\n"
    changed = write(tmp_path, PIPELINE.replace("name: unit", "name: test"))
    result = jetbridge(
        "set-pipeline", "-p", "app", "-c", str(changed), "-v", "repo=correct-horse", "-n"
    )
    assert result.exit_code == 0, result.output
    assert "-- name: unit\n+- name: test\n" in result.output
    assert "variable changed 'repo'\n" in result.output
    assert "hunter2" not in result.output and "correct-horse" not in result.output
    assert result.output.endswith("pipeline 'app' updated\n")  # and still unpaused
    with transaction(jetbridge.sessions) as session:
        row = session.scalars(select(PipelineRow)).one()
        assert (row.paused, row.variables) == (False, {"repo": "correct-horse"})


@pytest.mark.parametrize(
    ("args", "text", "code", "message"),
    [
        (
            ["-p", "app", "-v", "repo=x"],
            PIPELINE.replace("trigger: true", "trigger: yes please"),
            2,
            "jobs[0].plan[0].trigger",
        ),
        (["-p", "app"], PIPELINE, 2, "uses 1 var(s) that were not given:\n  ((repo)) on line 4"),
        (["-p", "bad name", "-v", "repo=x"], PIPELINE, 2, "a pipeline name is 1 to 200 letters"),
        (["-p", "webhooks", "-v", "repo=x"], PIPELINE, 2, "and not 'webhooks'"),
    ],
    ids=["invalid-pipeline", "missing-var", "bad-name", "reserved-name"],
)
def test_set_pipeline_refuses_what_is_wrong_and_stores_nothing(
    jetbridge: Jetbridge, tmp_path: Path, args: list[str], text: str, code: int, message: str
) -> None:
    result = jetbridge("set-pipeline", *args, "-c", str(write(tmp_path, text)), "-n")
    assert result.exit_code == code, result.output
    assert message in result.output
    assert jetbridge.count(PipelineRow) == 0


def test_declining_set_pipeline_changes_nothing(jetbridge: Jetbridge, tmp_path: Path) -> None:
    result = jetbridge(
        "set-pipeline", "-p", "app", "-c", str(write(tmp_path, TASK_ONLY)), input="n\n"
    )
    assert result.exit_code == 1
    assert "Aborted!" in result.output
    assert jetbridge.count(PipelineRow) == 0


@pytest.mark.parametrize(
    ("commands", "last", "code"),
    [
        ([["pause-pipeline", "app"]], "'app' was paused already", 0),  # new: paused
        ([["unpause-pipeline", "app"], ["pause-pipeline", "app"]], "paused 'app'", 0),
        ([["unpause-pipeline", "app"]], "unpaused 'app'", 0),
        (
            [["unpause-pipeline", "app"], ["unpause-pipeline", "app"]],
            "'app' was unpaused already",
            0,
        ),
        ([["pause-pipeline", "nope"]], "no pipeline named 'nope'; pipelines: app", 2),
        ([["destroy-pipeline", "nope", "-n"]], "no pipeline named 'nope'; pipelines: app", 2),
    ],
    ids=["new-is-paused", "pause", "unpause", "unpause-twice", "unknown", "destroy-unknown"],
)
def test_pause_and_unpause_say_what_they_did(
    jetbridge: Jetbridge, tmp_path: Path, commands: list[list[str]], last: str, code: int
) -> None:
    jetbridge("set-pipeline", "-p", "app", "-c", str(write(tmp_path, TASK_ONLY)), "-n")
    for command in commands:
        result = jetbridge(*command)
    assert result.exit_code == code, result.output
    assert result.output.strip().endswith(last)


def test_destroy_pipeline_removes_its_builds_and_leaves_its_artifacts_to_the_reaper(
    jetbridge: Jetbridge, tmp_path: Path
) -> None:
    clock = FakeClock()
    with transaction(jetbridge.sessions) as session:
        save_pipeline(session, name="app", config=TASK_ONLY, clock=clock)
        save_pipeline(session, name="other", config=TASK_ONLY, clock=clock)
    ids = [
        start_build(
            jetbridge.sessions, pipeline=p, job="hello", sink=RecordingSink(), clock=clock
        ).build_id
        for p in ("app", "app", "other")
    ]
    with transaction(jetbridge.sessions) as session:
        step = session.scalars(select(StepRow).where(StepRow.build_id == ids[0])).one()
        artifacts.register(session, build_id=ids[0], step_id=step.id, names=["out"], clock=clock)
        session.add(
            DeliveryRow(
                pipeline_id=session.scalars(
                    select(PipelineRow.id).where(PipelineRow.name == "app")
                ).one(),
                delivery_id="d-1",
                provider="github",
                event="push",
                commit="abc1234",
                build_ids=ids[:2],
                received_at=clock(),
            )
        )
    declined = jetbridge("destroy-pipeline", "app", input="n\n")
    assert declined.exit_code == 1 and jetbridge.count(BuildRow) == 3
    result = jetbridge("destroy-pipeline", "app", input="y\n")
    assert result.exit_code == 0, result.output
    assert (
        "destroy pipeline 'app' with all its builds? This cannot be undone [y/N]: y"
        in result.output
    )
    assert result.output.endswith(
        "destroyed 'app': 2 build(s), 2 of them not finished; 1 artifact(s) left for the reaper\n"
    )
    assert jetbridge.count(PipelineRow) == 1
    assert jetbridge.count(BuildRow) == 1 and jetbridge.count(StepRow) == 1
    assert jetbridge.count(DeliveryRow) == 0
    with transaction(jetbridge.sessions) as session:
        orphan = session.scalars(select(ArtifactRow)).one()
    assert (orphan.build_id, orphan.step_id, orphan.name) == (None, None, "out")


def test_trigger_job_runs_the_stored_pipeline_here_when_there_is_no_sink(
    jetbridge: Jetbridge, tmp_path: Path
) -> None:
    jetbridge("set-pipeline", "-p", "app", "-c", str(write(tmp_path, TASK_ONLY)), "-n")
    paused = jetbridge("trigger-job", "app/hello")
    assert paused.exit_code == 2
    assert "pipeline 'app' is paused: it starts no builds" in paused.output
    jetbridge("unpause-pipeline", "app")
    result = jetbridge("trigger-job", "app/hello", "--watch")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "build app/hello #1 (id 1) started"
    assert "✓ task say succeeded" in lines
    assert "  │ hello from the task" in lines
    assert lines[-1] == "build app/hello #1 (id 1) succeeded"


@pytest.mark.parametrize(
    ("target", "code", "message"),
    [
        ("app", 2, "expected PIPELINE/JOB, found 'app'"),
        ("app/nope", 2, "no job 'nope' in the pipeline; jobs: hello"),
        ("nope/hello", 2, "no pipeline named 'nope'; pipelines: app"),
    ],
    ids=["no-job", "unknown-job", "unknown-pipeline"],
)
def test_trigger_job_names_what_it_cannot_find(
    jetbridge: Jetbridge, tmp_path: Path, target: str, code: int, message: str
) -> None:
    jetbridge("set-pipeline", "-p", "app", "-c", str(write(tmp_path, TASK_ONLY)), "-n")
    jetbridge("unpause-pipeline", "app")
    result = jetbridge("trigger-job", target)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert jetbridge.count(BuildRow) == 0


def test_watching_builds_shows_each_new_build_and_each_change_until_idle(
    jetbridge: Jetbridge,
) -> None:
    clock = FakeClock()
    sink = RecordingSink()
    with transaction(jetbridge.sessions) as session:
        save_pipeline(
            session,
            name="app",
            config=TASK_ONLY.replace("- name: hello\n", "- name: hello\n  serial: true\n"),
            clock=clock,
        )
    first = start_build(jetbridge.sessions, pipeline="app", job="hello", sink=sink, clock=clock)
    world: list[Callable[[], None]] = [
        # What happens between two looks, one thing per look.
        lambda: start_build(
            jetbridge.sessions, pipeline="app", job="hello", sink=sink, clock=clock
        ),
        lambda: _end(jetbridge, first.build_id, st.FAILED),
        lambda: _end(jetbridge, first.build_id + 1, st.SUCCEEDED),
    ]
    looks: list[float] = []

    def sleep(seconds: float) -> None:
        looks.append(seconds)
        if world:
            world.pop(0)()

    seen = [
        (v.number, v.status)
        for v in watch_builds(
            jetbridge.sessions, count=5, interval=0.5, sleep=sleep, until_idle=True
        )
    ]
    assert seen == [(1, "started"), (2, "pending"), (1, "failed"), (2, "succeeded")]
    assert looks == [0.5, 0.5, 0.5]


def _end(jetbridge: Jetbridge, build_id: int, status: str) -> None:
    with transaction(jetbridge.sessions) as session:
        build = session.get(BuildRow, build_id)
        assert build is not None
        build.status = status


def test_builds_watch_until_idle_lists_finished_builds_and_stops(
    jetbridge: Jetbridge, tmp_path: Path
) -> None:
    jetbridge("set-pipeline", "-p", "app", "-c", str(write(tmp_path, TASK_ONLY)), "-n")
    jetbridge("unpause-pipeline", "app")
    jetbridge("trigger-job", "app/hello")
    result = jetbridge("builds", "--watch", "--until-idle", "--interval", "0.01")
    assert result.exit_code == 0, result.output
    header, line = result.output.splitlines()
    assert header.split() == ["id", "build", "status", "started", "duration"]
    assert line.split()[:4] == ["1", "app/hello", "#1", "succeeded"]
