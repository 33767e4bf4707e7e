"""Compiling a job's plan: dependencies follow Concourse's sequence and in_parallel semantics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.pipeline import parse_pipeline, parse_task_config
from shared.plan import (
    BUILTIN_TYPES_PATH,
    REQUEST_ENV,
    ResourceCall,
    Slot,
    StepSpec,
    compile_plan,
    expand_task_file,
    fill_local_vars,
    image_reference,
    tag_node_selector,
    with_version,
)

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
        # A step hangs off every step of the node before it: a get is its check and itself.
        ("1", ("0:check", "0")),
        ("2.0", ("1",)),
        ("2.1:check", ("1",)),
        ("2.1", ("2.1:check",)),
        ("3", ("2.0", "2.1:check", "2.1")),
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


# ---------------------------------------------------------------- conditions as data

CONDITIONS = """
resources: [{name: repo, type: git, source: {uri: /r}}]
jobs:
- name: j
  plan:
  - get: repo
    attempts: 3
    timeout: 2m
    tags: [gpu]
  - load_var: version
    file: repo/VERSION
  - try:
      task: lint
      config: {platform: linux, run: {path: lint}}
  - in_parallel:
      limit: 1
      fail_fast: true
      steps:
      - task: unit
        file: repo/ci/unit.yml
        input_mapping: {src: repo}
        params: {V: ((.:version))}
        on_failure:
          task: alert
          config: {platform: linux, run: {path: alert}}
      - task: fmt
        writable_inputs: true
        config:
          platform: linux
          inputs: [{name: repo}, {name: cfg, optional: true}]
          outputs: [{name: repo}]
          run: {path: fmt}
  - task: use
    image: repo
    config:
      platform: linux
      inputs: [{name: repo}, {name: report}]
      run: {path: x}
  ensure:
    task: tidy
    config: {platform: linux, run: {path: tidy}}
"""


@pytest.fixture
def conditioned() -> dict[str, StepSpec]:
    specs = compile_plan(parse_pipeline(CONDITIONS), "j", versions={"repo": {"ref": "a"}})
    return {s.key: s for s in specs}


def test_conditions_are_data_on_each_step(conditioned: dict[str, StepSpec]) -> None:
    rows = {
        key: (s.name, s.depends_on, s.when, s.try_scopes, s.survives_abort)
        for key, s in conditioned.items()
    }
    assert rows == {
        "0": ("repo", (), "success", (), False),
        "1": ("version", ("0",), "success", (), False),
        "2.0": ("lint", ("1",), "success", ("2",), False),
        "3.0": ("unit", ("2.0",), "success", (), False),
        "3.0+on_failure": ("alert", ("3.0",), "failure", (), False),
        "3.1": ("fmt", ("2.0",), "success", (), False),
        "4": ("use", ("3.0", "3.0+on_failure", "3.1"), "success", (), False),
        "job+ensure": (
            "tidy",
            ("0", "1", "2.0", "3.0", "3.0+on_failure", "3.1", "4"),
            "always",
            (),
            True,
        ),
    }


def test_branches_carry_their_group_limit_and_fail_fast(conditioned: dict[str, StepSpec]) -> None:
    slots = {key: s.slots for key, s in conditioned.items() if s.slots}
    assert slots == {
        "3.0": (Slot(group="3", index=0, limit=1, fail_fast=True),),
        "3.0+on_failure": (Slot(group="3", index=0, limit=1, fail_fast=True),),
        "3.1": (Slot(group="3", index=1, limit=1, fail_fast=True),),
    }


def test_modifiers_reach_the_spec(conditioned: dict[str, StepSpec]) -> None:
    get = conditioned["0"]
    assert (get.attempts, get.timeout_seconds, get.tags) == (3, 120, ("gpu",))


def test_a_task_file_is_bound_when_it_starts(conditioned: dict[str, StepSpec]) -> None:
    unit = conditioned["3.0"]
    assert unit.task_file is not None
    assert (unit.task_file.artifact.name, unit.task_file.artifact.producer) == ("repo", "0")
    assert unit.task_file.path == "ci/unit.yml"
    assert [(c.name, c.producer) for c in unit.task_file.candidates] == [("repo", "0")]
    assert unit.local_vars == {"version": "1"}
    config = parse_task_config(
        "platform: linux\ninputs: [{name: src}, {name: extra, optional: true}]\n"
        "outputs: [{name: report}]\nparams: {A: a, V: file}\nrun: {path: go, args: [test]}\n"
    )
    expanded, missing = expand_task_file(unit, config)
    assert missing == []
    assert expanded.task_file is None
    assert [(i.name, i.producer, i.mount) for i in expanded.inputs] == [("repo", "0", "src")]
    assert [o.name for o in expanded.outputs] == ["report"]
    assert expanded.command == ("go", "test")
    assert expanded.env == {"A": "a", "V": "((.:version))"}  # the step's params win


def test_after_a_task_file_an_artifact_may_come_from_it_or_from_before(
    conditioned: dict[str, StepSpec],
) -> None:
    use = conditioned["4"]
    by_name = {i.name: i for i in use.inputs}
    # fmt's writable copy (3.1) surely makes `repo`; `report` is known only to the file
    # task (3.0), which may make any name.
    assert by_name["repo"].producers == ("3.1",)
    assert by_name["report"].producers == ("3.0",)
    # Had no branch surely made `repo`, the file task would come first, then the get.
    after_file = compile_plan(
        parse_pipeline(CONDITIONS.replace("outputs: [{name: repo}]", "outputs: []")),
        "j",
        versions={"repo": {"ref": "a"}},
    )
    use = next(s for s in after_file if s.name == "use")
    assert {i.name: i.producers for i in use.inputs}["repo"] == ("3.0", "0")
    assert use.image_from is not None and use.image_from.producers == ("3.0", "0")


def test_writable_inputs_become_outputs(conditioned: dict[str, StepSpec]) -> None:
    fmt = conditioned["3.1"]
    assert [(o.name, o.mount, o.from_input, o.private) for o in fmt.outputs] == [
        ("repo", "repo", True, False),  # named after its input: the copy becomes `repo`
    ]
    assert [i.name for i in fmt.inputs] == ["repo"]  # `cfg` is optional and made by no one


def test_local_vars_fill_params_and_requests_at_run_time(
    conditioned: dict[str, StepSpec],
) -> None:
    unit = conditioned["3.0"]
    filled, problems = fill_local_vars(unit, {"version": "1.4.2"})
    assert problems == []
    assert filled.task_file is not None and filled.task_file.params == {"V": "1.4.2"}
    assert filled.local_vars == {}
    _, problems = fill_local_vars(unit, {})
    assert problems == ["local var ((.:version)) has no value"]


def test_a_local_var_keeps_its_type_in_a_resource_request() -> None:
    spec = StepSpec(
        key="1",
        name="out",
        kind="put",
        resource=ResourceCall(
            resource="out", type="git", params={"tag": "((.:v))", "msg": "v((.:v.n))"}
        ),
    )
    filled, problems = fill_local_vars(spec, {"v": {"n": 7}})
    assert problems == []
    assert json.loads(filled.env[REQUEST_ENV])["params"] == {"tag": {"n": 7}, "msg": "v7"}


def test_reads_covers_every_artifact_a_step_may_open(conditioned: dict[str, StepSpec]) -> None:
    reads = {(b.producer, b.name) for b in conditioned["4"].reads()}
    assert reads == {("3.1", "repo"), ("3.0", "report")}
    assert {(b.producer, b.name) for b in conditioned["3.0"].reads()} == {("0", "repo")}


def test_across_copies_are_named_after_their_values_and_keep_their_outputs() -> None:
    text = """
jobs:
- name: j
  plan:
  - task: build
    across: [{var: os, values: [linux, darwin]}]
    config: {platform: linux, outputs: [{name: bin}], run: {path: make, args: [((.:os))]}}
  - task: after
    config: {platform: linux, inputs: [{name: bin, optional: true}], run: {path: x}}
"""
    specs = compile_plan(parse_pipeline(text), "j")
    assert [(s.key, s.name, s.command) for s in specs] == [
        ("0.0", "build (linux)", ("make", "linux")),
        ("0.1", "build (darwin)", ("make", "darwin")),
        ("1", "after", ("x",)),
    ]
    assert specs[2].inputs == ()  # what an across copy makes stays inside it
    assert specs[2].depends_on == ("0.0", "0.1")


@pytest.mark.parametrize(
    ("tags", "labels", "expected"),
    [
        ((), {}, {}),
        (("gpu",), {}, {"jetbridge.dev/tag-gpu": "true"}),
        (("gpu",), {"gpu": "accelerator=nvidia-l4"}, {"accelerator": "nvidia-l4"}),
        (("arm",), {"arm": "kubernetes.io/arch=arm64"}, {"kubernetes.io/arch": "arm64"}),
        (("ci",), {"ci": "pool"}, {"pool": "true"}),
    ],
    ids=["none", "default-label", "mapped", "mapped-well-known", "bare-key"],
)
def test_tags_become_node_labels(
    tags: tuple[str, ...], labels: dict[str, str], expected: dict[str, str]
) -> None:
    assert tag_node_selector(tags, labels) == expected


@pytest.mark.parametrize(
    ("type_", "source", "result", "expected"),
    [
        (
            "registry-image",
            {"repository": "golang"},
            {"version": {"digest": "sha256:ab"}},
            "golang@sha256:ab",
        ),
        (
            "docker-image",
            {"repository": "x/y"},
            {"version": {"digest": "sha256:cd"}},
            "x/y@sha256:cd",
        ),
        ("git", {"repository": "golang"}, {"version": {"digest": "sha256:ab"}}, None),
        ("registry-image", {"repository": "golang"}, {"version": {"tag": "1"}}, None),
    ],
    ids=["registry-image", "docker-image", "not-an-image", "no-digest"],
)
def test_an_image_artifact_is_named_by_its_digest(
    type_: str, source: dict[str, str], result: dict[str, Any], expected: str | None
) -> None:
    call = ResourceCall(resource="img", type=type_, source=source)
    assert image_reference(call, result) == expected


def test_every_new_spec_survives_the_database_round_trip(conditioned: dict[str, StepSpec]) -> None:
    for spec in conditioned.values():
        assert StepSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
