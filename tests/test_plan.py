"""Compiling a job's plan: dependencies follow Concourse's sequence and in_parallel semantics."""

from __future__ import annotations

import json

import pytest

from shared.pipeline import parse_pipeline
from shared.plan import BUILTIN_TYPES_PATH, REQUEST_ENV, StepSpec, compile_plan, with_version

PIPELINE = """
resources:
- name: repo
  type: git
  source: {uri: "https://example.com/r.git", branch: main}
- name: out
  type: git
  source: {uri: "https://example.com/o.git"}
jobs:
- name: build
  plan:
  - get: repo
    params: {depth: 1}
  - task: compile
    config:
      platform: linux
      image_resource: {type: registry-image, source: {repository: golang, tag: "1.23"}}
      inputs: [{name: repo, path: src}]
      outputs: [{name: bin}]
      params: {GOOS: linux, CGO: "0"}
      run: {path: make, args: [all], dir: src}
    params: {CGO: "1"}
  - in_parallel:
    - task: unit
      config:
        platform: linux
        inputs: [{name: bin}, {name: cache, optional: true}]
        run: {path: test}
    - get: docs
      resource: repo
  - put: out
    params: {repository: bin}
"""


@pytest.fixture
def steps() -> dict[str, StepSpec]:
    return {s.name: s for s in compile_plan(parse_pipeline(PIPELINE), "build") if s.kind != "check"}


@pytest.fixture
def by_key() -> dict[str, StepSpec]:
    return {s.key: s for s in compile_plan(parse_pipeline(PIPELINE), "build")}


def test_steps_come_in_plan_order_with_positional_keys(by_key: dict[str, StepSpec]) -> None:
    assert [(s.key, s.name, s.kind) for s in by_key.values()] == [
        ("0:check", "repo", "check"),
        ("0", "repo", "get"),
        ("1", "compile", "task"),
        ("2.0", "unit", "task"),
        ("2.1:check", "docs", "check"),
        ("2.1", "docs", "get"),
        ("3", "out", "put"),
    ]


@pytest.mark.parametrize(
    ("key", "depends_on"),
    [
        ("0:check", ()),
        ("0", ("0:check",)),
        ("1", ("0",)),
        ("2.0", ("1",)),
        ("2.1:check", ("1",)),
        ("2.1", ("2.1:check",)),
        ("3", ("2.0", "2.1")),
    ],
    ids=[
        "first-check",
        "get-after-its-check",
        "sequence",
        "branch-a",
        "branch-b-check",
        "branch-b-get",
        "after-in-parallel-waits-for-all",
    ],
)
def test_dependencies(by_key: dict[str, StepSpec], key: str, depends_on: tuple[str, ...]) -> None:
    assert by_key[key].depends_on == depends_on


def test_an_unpinned_get_takes_the_newest_version_its_check_finds(
    by_key: dict[str, StepSpec],
) -> None:
    check, get = by_key["0:check"], by_key["0"]
    assert check.command[3] == f"{BUILTIN_TYPES_PATH}/git/check"
    assert json.loads(check.env[REQUEST_ENV]) == {
        "source": {"uri": "https://example.com/r.git", "branch": "main"},
        "version": None,
    }
    assert get.version_from == "0:check"
    ready = with_version(get, {"ref": "abc"})
    assert ready.version_from is None
    assert json.loads(ready.env[REQUEST_ENV])["version"] == {"ref": "abc"}


def test_task_inputs_are_bound_to_their_producers(steps: dict[str, StepSpec]) -> None:
    compile_step = steps["compile"]
    assert [(i.name, i.producer, i.mount) for i in compile_step.inputs] == [("repo", "0", "src")]
    assert [(o.name, o.mount) for o in compile_step.outputs] == [("bin", "bin")]
    # An optional input nobody produced is simply absent.
    assert [(i.name, i.producer) for i in steps["unit"].inputs] == [("bin", "1")]


def test_task_run_image_and_params(steps: dict[str, StepSpec]) -> None:
    compile_step = steps["compile"]
    assert compile_step.image == "golang:1.23"
    assert compile_step.command == ("make", "all")
    assert compile_step.dir == "src"
    assert compile_step.env == {"GOOS": "linux", "CGO": "1"}  # step params win


def test_get_runs_the_builtin_in_script_with_the_request(steps: dict[str, StepSpec]) -> None:
    get = steps["repo"]
    assert get.command[3] == f"{BUILTIN_TYPES_PATH}/git/in"
    assert [(o.name, o.mount) for o in get.outputs] == [("repo", "repo")]
    request = json.loads(get.env[REQUEST_ENV])
    assert request == {
        "source": {"uri": "https://example.com/r.git", "branch": "main"},
        "params": {"depth": 1},
    }


def test_put_sees_every_artifact_so_far(steps: dict[str, StepSpec]) -> None:
    put = steps["out"]
    assert put.command[3] == f"{BUILTIN_TYPES_PATH}/git/out"
    assert sorted((i.name, i.producer) for i in put.inputs) == [
        ("bin", "1"),
        ("docs", "2.1"),
        ("repo", "0"),
    ]


def test_a_pinned_version_reaches_the_get_request_with_no_check() -> None:
    steps = compile_plan(parse_pipeline(PIPELINE), "build", versions={"repo": {"ref": "abc123"}})
    assert (steps[0].key, steps[0].kind) == ("0", "get")
    request = json.loads(steps[0].env[REQUEST_ENV])
    assert request["version"] == {"ref": "abc123"}


def test_specs_survive_the_database_round_trip(steps: dict[str, StepSpec]) -> None:
    for spec in steps.values():
        assert StepSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
