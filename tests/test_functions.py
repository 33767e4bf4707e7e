"""The three functions served by the real functions-framework, called with real CloudEvents over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from sqlalchemy import func, select

from shared import app, events
from shared.app import build_deps
from shared.db import BuildRow, transaction
from shared.events import RecordingSink
from shared.settings import Settings
from tests.fakes import FakeRuntime
from tests.http import installed_deps, serve_function

PIPELINE = """
resources:
- {name: repo, type: git, source: {uri: /nowhere}}
jobs:
- name: build
  plan:
  - get: repo
"""


@pytest.fixture
def deps(database_url: str, tmp_path: Path) -> Iterator[Any]:
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    with installed_deps(settings, {"demo": PIPELINE}) as deps:
        yield deps


def post(url: str, event: Any, mode: str = "binary") -> tuple[int, str]:
    headers, body = (to_binary if mode == "binary" else to_structured)(event)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def build_count(deps: Any) -> int:
    with transaction(deps.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(BuildRow)) or 0)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_trigger_starts_a_build_once_per_event(deps: Any, mode: str) -> None:
    event = events.make_event(events.BUILD_REQUESTED, {"pipeline": "demo", "job": "build"})
    with serve_function("trigger") as url:
        assert post(url, event, mode)[0] == 200
        assert post(url, event, mode)[0] == 200  # redelivered
    assert build_count(deps) == 1
    ready = [e for e in deps.sink.events if e["type"] == events.STEP_READY]
    assert len(ready) == 1


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ({"job": "build"}, 400, "field 'pipeline' must be str, found None"),
        ({"pipeline": "nope", "job": "build"}, 404, "no pipeline named 'nope'; pipelines: demo"),
        (
            {"pipeline": "demo", "job": "deploy"},
            404,
            "no job 'deploy' in the pipeline; jobs: build",
        ),
        (
            {"pipeline": "demo", "job": "build", "versions": [1]},
            400,
            "'versions' must map get names to versions",
        ),
    ],
    ids=["missing-field", "unknown-pipeline", "unknown-job", "bad-versions"],
)
def test_trigger_refuses_bad_requests_and_writes_nothing(
    deps: Any, data: dict[str, Any], status: int, message: str
) -> None:
    event = events.make_event(events.BUILD_REQUESTED, data)
    with serve_function("trigger") as url:
        code, body = post(url, event)
    assert code == status
    assert message in json.loads(body)["error"]
    assert build_count(deps) == 0


def test_step_runner_refuses_an_event_type_it_does_not_handle(deps: Any) -> None:
    event = events.make_event("com.example.unknown", {})
    with serve_function("step_runner") as url:
        code, body = post(url, event)
    assert code == 400
    assert "does not handle events of type 'com.example.unknown'" in body


def test_step_runner_launches_the_announced_step(deps: Any) -> None:
    with serve_function("trigger") as url:
        post(url, events.make_event(events.BUILD_REQUESTED, {"pipeline": "demo", "job": "build"}))
    (ready,) = [e for e in deps.sink.events if e["type"] == events.STEP_READY]
    with serve_function("step_runner") as url:
        assert post(url, ready)[0] == 200
    assert len(deps.runtime.pods) == 1


def test_a_database_that_is_down_answers_503_so_the_event_comes_again(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql+pg8000://postgres@127.0.0.1:1/none"
    )
    deps = build_deps(settings, sink=RecordingSink(), runtime=FakeRuntime())
    app.install(deps)
    try:
        event = events.make_event(events.BUILD_REQUESTED, {"pipeline": "demo", "job": "build"})
        with serve_function("trigger") as url:
            code, body = post(url, event)
    finally:
        app.install(None)
    assert code == 503
    assert "the database cannot be reached" in body


def test_reaper_answers_a_ping(deps: Any) -> None:
    event = events.make_event(events.PING, {}, source="/apis/v1/namespaces/ci/pingsources/reaper")
    with serve_function("reaper") as url:
        code, _ = post(url, event)
    assert code == 200
    assert json.loads("{}") == {}
