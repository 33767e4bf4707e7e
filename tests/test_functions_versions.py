"""Checks and triggered builds through the real functions: the trigger takes a request for
``check:<resource>`` and a ``build.finished``; the reaper's tick checks what is due."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shared import events
from shared import status as st
from shared.db import BuildRow, StepRow, transaction
from shared.pipelines import find_pipeline, load
from shared.settings import Settings
from shared.versions import save_versions, scope_of
from tests.http import installed_deps, serve_function
from tests.test_functions import post

PIPELINE = """
resources:
- {name: repo, type: git, source: {uri: /nowhere}}
jobs:
- name: build
  plan:
  - get: repo
    trigger: true
"""


@pytest.fixture
def deps(database_url: str, tmp_path: Path) -> Iterator[Any]:
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    with installed_deps(settings, {"demo": PIPELINE}) as deps:
        yield deps


def builds(deps: Any) -> list[tuple[str, str, dict[str, Any]]]:
    with transaction(deps.sessions) as session:
        rows = session.scalars(select(BuildRow).order_by(BuildRow.id)).all()
        return [(b.job_name, b.status, b.versions) for b in rows]


def test_the_trigger_runs_a_check_asked_for_as_a_build_of_check_resource(deps: Any) -> None:
    event = events.make_event(events.BUILD_REQUESTED, {"pipeline": "demo", "job": "check:repo"})
    with serve_function("trigger") as url:
        code, body = post(url, event)
        assert code == 200, body
        assert post(url, event)[0] == 200  # redelivered: the same check
    assert builds(deps) == [("check:repo", st.STARTED, {})]
    with transaction(deps.sessions) as session:
        (step,) = session.scalars(select(StepRow)).all()
    assert (step.kind, step.name) == ("check", "repo")
    assert [e["type"] for e in deps.sink.events] == [events.STEP_READY]

    unknown = events.make_event(events.BUILD_REQUESTED, {"pipeline": "demo", "job": "check:nope"})
    with serve_function("trigger") as url:
        code, body = post(url, unknown)
    assert code == 404
    assert "no resource 'nope' in the pipeline; resources: repo" in json.loads(body)["error"]


def test_build_finished_sent_to_the_trigger_starts_what_new_versions_call_for(deps: Any) -> None:
    with transaction(deps.sessions) as session:
        row = find_pipeline(session, "demo")
        save_versions(
            session,
            pipeline_id=row.id,
            resource="repo",
            scope=scope_of(load(row).resource("repo")),
            versions=[{"ref": "abc"}],
            origin="check",
            now=deps.clock(),
        )
        check = BuildRow(
            pipeline_id=row.id,
            job_name="check:repo",
            number=1,
            status=st.SUCCEEDED,
            versions={},
            created_at=deps.clock(),
        )
        session.add(check)
        session.flush()
        check_id = check.id
    finished = events.make_event(
        events.BUILD_FINISHED,
        {"build_id": check_id, "job": "check:repo", "number": 1, "status": st.SUCCEEDED},
    )
    with serve_function("trigger") as url:
        code, body = post(url, finished)
        assert code == 200, body
        assert post(url, finished)[0] == 200  # redelivered: nothing new
    assert builds(deps)[1:] == [("build", st.STARTED, {"repo": {"ref": "abc"}})]


def test_the_reaper_tick_checks_the_resources_that_are_due(deps: Any) -> None:
    with serve_function("reaper") as url:
        code, body = post(url, events.make_event(events.PING, {}))
    assert code == 200, body
    assert builds(deps) == [("check:repo", st.STARTED, {})]
