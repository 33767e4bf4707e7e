"""Input resolution, pure: which version each get takes (Concourse's rules), one table per rule."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from shared.constraints import (
    Candidate,
    History,
    Input,
    UpstreamBuild,
    job_inputs,
    new_versions,
    resolve,
    version_key,
)
from shared.pipeline import parse_pipeline
from shared.plan import check_spec, compile_plan
from shared.webhooks import Push, match, tracking_resources


def v(ref: str) -> dict[str, str]:
    return {"ref": ref}


def k(ref: str) -> str:
    return version_key(v(ref))


def history(
    versions: Mapping[str, Sequence[str]] | None = None,
    builds: Mapping[str, Sequence[tuple[int, Mapping[str, Sequence[str]]]]] | None = None,
    last_used: Mapping[str, str] | None = None,
) -> History:
    """Versions oldest first by resource; builds newest first by job, each ``(id, {resource:
    [refs, outputs first]})``; last used by get name."""
    refs = {
        ref
        for build in (builds or {}).values()
        for _, used in build
        for r in used.values()
        for ref in r
    }
    return History(
        versions={
            resource: [Candidate(key=k(r), version=v(r), order=i + 1) for i, r in enumerate(refs_)]
            for resource, refs_ in (versions or {}).items()
        },
        builds={
            job: [
                UpstreamBuild(
                    id=i, job=job, versions={r: tuple(k(x) for x in xs) for r, xs in used.items()}
                )
                for i, used in items
            ]
            for job, items in (builds or {}).items()
        },
        last_used={name: k(ref) for name, ref in (last_used or {}).items()},
        known={k(r): v(r) for r in refs},
    )


@dataclass(frozen=True)
class Case:
    id: str
    inputs: Sequence[Input]
    history: History
    want: Mapping[str, str] = field(default_factory=dict)
    """Get name → ref it takes."""
    problem: str | None = None
    upstream: Mapping[str, int] | None = None


REPO = Input(name="repo", resource="repo")
CASES = [
    # ---- no passed
    Case("latest: the newest version", [REPO], history({"repo": ["a", "b", "c"]}), {"repo": "c"}),
    Case(
        "no versions yet",
        [REPO],
        history({"repo": []}),
        problem="resource 'repo' has no versions yet (no check has found one)",
    ),
    Case(
        "pinned: that version, known or not",
        [Input(name="repo", resource="repo", pinned=v("zzz"))],
        history({"repo": ["a", "b"]}),
        {"repo": "zzz"},
    ),
    Case(
        "every: the version after the one last used",
        [Input(name="repo", resource="repo", every=True)],
        history({"repo": ["a", "b", "c"]}, last_used={"repo": "a"}),
        {"repo": "b"},
    ),
    Case(
        "every: the newest again when it was the last used",
        [Input(name="repo", resource="repo", every=True)],
        history({"repo": ["a", "b", "c"]}, last_used={"repo": "c"}),
        {"repo": "c"},
    ),
    Case(
        "every: the newest when the job used none",
        [Input(name="repo", resource="repo", every=True)],
        history({"repo": ["a", "b", "c"]}),
        {"repo": "c"},
    ),
    # ---- passed, one get
    Case(
        "passed: the version of the newest upstream build, not the newest version",
        [Input(name="repo", resource="repo", passed=("build",))],
        history(
            {"repo": ["a", "b", "c"]},
            {"build": [(3, {"repo": ["b"]}), (2, {"repo": ["c"]}), (1, {"repo": ["a"]})]},
        ),
        {"repo": "b"},
        upstream={"build": 3},
    ),
    Case(
        "passed: nothing went through the upstream job",
        [Input(name="repo", resource="repo", passed=("build",))],
        history({"repo": ["a", "b"]}, {"build": []}),
        problem="no version of 'repo' has passed 'build' yet",
    ),
    Case(
        "passed: an upstream build that never used the resource does not count",
        [Input(name="repo", resource="repo", passed=("build",))],
        history({"repo": ["a"]}, {"build": [(1, {"other": ["x"]})]}),
        problem="no version of 'repo' has passed 'build' yet",
    ),
    Case(
        "passed two jobs: the newest version through both",
        [Input(name="repo", resource="repo", passed=("build", "test"))],
        history(
            {"repo": ["a", "b", "c"]},
            {
                "build": [(5, {"repo": ["c"]}), (4, {"repo": ["b"]}), (1, {"repo": ["a"]})],
                "test": [(3, {"repo": ["b"]}), (2, {"repo": ["a"]})],
            },
        ),
        {"repo": "b"},
        upstream={"build": 4, "test": 3},
    ),
    Case(
        "passed two jobs: through each, but none through both",
        [Input(name="repo", resource="repo", passed=("build", "test"))],
        history(
            {"repo": ["a", "b"]}, {"build": [(2, {"repo": ["b"]})], "test": [(1, {"repo": ["a"]})]}
        ),
        problem="no version of 'repo' has passed both 'build' and 'test' yet",
    ),
    Case(
        "passed: a put's version (an output) before the get's (an input) of the same build",
        [Input(name="repo", resource="repo", passed=("bump",))],
        history({"repo": ["a", "b"]}, {"bump": [(1, {"repo": ["b", "a"]})]}),
        {"repo": "b"},
    ),
    Case(
        "passed and pinned: the pin, when it went through",
        [Input(name="repo", resource="repo", passed=("build",), pinned=v("a"))],
        history({"repo": ["a", "b"]}, {"build": [(2, {"repo": ["b"]}), (1, {"repo": ["a"]})]}),
        {"repo": "a"},
        upstream={"build": 1},
    ),
    Case(
        "passed and pinned: the pin never went through",
        [Input(name="repo", resource="repo", passed=("build",), pinned=v("z"))],
        history({"repo": ["a"]}, {"build": [(1, {"repo": ["a"]})]}),
        problem="the pinned version {ref: z} of 'repo' has not passed 'build' yet",
    ),
    Case(
        "passed and every: the upstream build after the one last used, oldest first",
        [Input(name="repo", resource="repo", passed=("build",), every=True)],
        history(
            {"repo": ["a", "b", "c"]},
            {"build": [(3, {"repo": ["c"]}), (2, {"repo": ["b"]}), (1, {"repo": ["a"]})]},
            last_used={"repo": "a"},
        ),
        {"repo": "b"},
    ),
    Case(
        "passed and every: the newest when nothing is after the last used",
        [Input(name="repo", resource="repo", passed=("build",), every=True)],
        history(
            {"repo": ["a", "b"]},
            {"build": [(2, {"repo": ["b"]}), (1, {"repo": ["a"]})]},
            last_used={"repo": "b"},
        ),
        {"repo": "b"},
    ),
    # ---- passed, several gets: one build of each upstream job for all of them
    Case(
        "two gets, one upstream job: both from the same build",
        [
            Input(name="repo", resource="repo", passed=("build",)),
            Input(name="config", resource="config", passed=("build",)),
        ],
        history(
            {"repo": ["r1", "r2", "r3"], "config": ["c1", "c2"]},
            {
                # build 3 did not get config: it cannot vouch for a pair
                "build": [
                    (3, {"repo": ["r3"]}),
                    (2, {"repo": ["r2"], "config": ["c2"]}),
                    (1, {"repo": ["r1"], "config": ["c1"]}),
                ],
            },
        ),
        {"repo": "r2", "config": "c2"},
        upstream={"build": 2},
    ),
    Case(
        "two gets, different upstream jobs: each on its own",
        [
            Input(name="repo", resource="repo", passed=("build",)),
            Input(name="config", resource="config", passed=("lint",)),
        ],
        history(
            {"repo": ["r1", "r2"], "config": ["c1", "c2"]},
            {
                "build": [(4, {"repo": ["r2"]})],
                "lint": [(3, {"config": ["c2"]}), (1, {"config": ["c1"]})],
            },
        ),
        {"repo": "r2", "config": "c2"},
        upstream={"build": 4, "lint": 3},
    ),
    Case(
        "backtracking: the newest test build's repo never passed build, so an older pair",
        [
            Input(name="repo", resource="repo", passed=("build", "test")),
            Input(name="config", resource="config", passed=("test",)),
        ],
        history(
            {"repo": ["r1", "r2", "r3"], "config": ["c1", "c2", "c3"]},
            {
                "build": [(6, {"repo": ["r2"]}), (2, {"repo": ["r1"]})],
                "test": [
                    (9, {"repo": ["r3"], "config": ["c3"]}),
                    (8, {"repo": ["r2"], "config": ["c2"]}),
                ],
            },
        ),
        {"repo": "r2", "config": "c2"},
        upstream={"build": 6, "test": 8},
    ),
    Case(
        "two gets, one upstream job, never together",
        [
            Input(name="repo", resource="repo", passed=("build",)),
            Input(name="config", resource="config", passed=("build",)),
        ],
        history(
            {"repo": ["r1"], "config": ["c1"]},
            {"build": [(2, {"repo": ["r1"]}), (1, {"config": ["c1"]})]},
        ),
        problem="no versions of 'repo' and 'config' have passed 'build' together yet: gets that "
        "name the same upstream job take their versions from one build of it",
    ),
    Case(
        "a get without passed beside gets with it",
        [REPO, Input(name="tool", resource="tool", passed=("build",))],
        history({"repo": ["a", "b"], "tool": ["t1"]}, {"build": [(1, {"tool": ["t1"]})]}),
        {"repo": "b", "tool": "t1"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_resolve(case: Case) -> None:
    resolution = resolve(case.inputs, case.history)
    assert resolution.problem == case.problem
    if case.problem is None:
        assert {n: c.version["ref"] for n, c in resolution.chosen.items()} == case.want
        assert {n: c.key for n, c in resolution.chosen.items()} == {
            n: k(ref) for n, ref in case.want.items()
        }
    if case.upstream is not None:
        assert dict(resolution.upstream) == case.upstream


TRIGGERS = [
    ("the job never ran", {}, ("repo",)),
    ("the latest build used another version", {"repo": "a"}, ("repo",)),
    ("the latest build used this version", {"repo": "b"}, ()),
    ("only a get without trigger is new", {"repo": "b", "tool": "t0"}, ()),
]


@pytest.mark.parametrize(("desc", "used", "want"), TRIGGERS, ids=[t[0] for t in TRIGGERS])
def test_a_trigger_get_with_a_version_new_to_the_job_triggers_it(
    desc: str, used: Mapping[str, str], want: tuple[str, ...]
) -> None:
    inputs = [
        Input(name="repo", resource="repo", trigger=True),
        Input(name="tool", resource="tool"),
    ]
    resolution = resolve(inputs, history({"repo": ["a", "b"], "tool": ["t0", "t1"]}))
    last = {name: k(ref) for name, ref in used.items()}
    assert new_versions(inputs, resolution, last) == want


def test_version_keys_ignore_key_order_and_read_numbers_as_text() -> None:
    assert version_key({"a": "1", "b": "2"}) == version_key({"b": "2", "a": "1"})
    assert version_key({"n": 1}) == version_key({"n": "1"})
    assert version_key({"ref": "a"}) != version_key({"ref": "b"})


JOBS = """
resources:
- {name: repo, type: git, source: {uri: /x}}
- {name: tool, type: git, source: {uri: /y}}
jobs:
- name: unit
  plan: [{get: repo}, {get: tool}]
- name: lint
  plan: [{get: repo}, {get: tool}]
- name: ship
  plan:
  - in_parallel:
    - {get: repo, passed: [unit, lint], trigger: true}
    - do:
      - {get: tool, version: every, passed: [lint]}
  - get: pinned
    resource: repo
    version: {ref: abc}
    across:
    - var: os
      values: [linux, windows]
  on_success:
    get: hooked
    resource: tool
"""


def test_job_inputs_finds_every_get_once_with_passed_in_pipeline_order() -> None:
    pipeline = parse_pipeline(JOBS)
    inputs = job_inputs(pipeline, pipeline.job("ship"))
    assert inputs == (
        Input(name="repo", resource="repo", passed=("unit", "lint"), trigger=True),
        Input(name="tool", resource="tool", passed=("lint",), every=True),
        Input(name="pinned", resource="repo", pinned={"ref": "abc"}),
        Input(name="hooked", resource="tool"),
    )


PINNED = """
resources:
- name: repo
  type: git
  source: {uri: "https://github.com/acme/app.git", branch: main}
  version: {ref: abc123}
  check_timeout: 90s
- {name: tool, type: git, source: {uri: /y}}
jobs:
- name: build
  plan:
  - {get: repo, trigger: true}
  - {get: other, resource: repo, version: {ref: def456}}
  - {get: tool, trigger: true}
"""


def test_a_resource_pinned_in_the_pipeline_pins_its_gets_and_is_not_checked() -> None:
    pipeline = parse_pipeline(PINNED)
    inputs = job_inputs(pipeline, pipeline.job("build"))
    assert [(i.name, i.pinned) for i in inputs] == [
        ("repo", {"ref": "abc123"}),
        ("other", {"ref": "def456"}),  # the get's own pin wins
        ("tool", None),
    ]
    steps = {s.key: s for s in compile_plan(pipeline, "build")}
    assert [s.kind for s in steps.values()] == ["get", "get", "check", "get"]
    assert steps["0"].resource is not None and steps["0"].resource.version == {"ref": "abc123"}
    # A push to it starts nothing: its gets take the pinned version whatever is pushed.
    push = Push(
        provider="github",
        event="push",
        delivery="d",
        repository="https://github.com/acme/app.git",
        urls=frozenset({"github.com/acme/app"}),
        branch="main",
        commit="f" * 40,
    )
    assert tracking_resources(pipeline, push) == ()
    assert match(pipeline, push) == ()


def test_check_timeout_bounds_a_resource_check() -> None:
    pipeline = parse_pipeline(PINNED)
    assert check_spec(pipeline, "repo").timeout_seconds == 90
    assert check_spec(pipeline, "tool").timeout_seconds is None  # the default deadline
    implicit = [s for s in compile_plan(pipeline, "build") if s.kind == "check"]
    assert [s.timeout_seconds for s in implicit] == [None]
    request = json.loads(
        check_spec(pipeline, "tool", version={"ref": "x"}).env["JETBRIDGE_REQUEST"]
    )
    assert request == {"source": {"uri": "/y"}, "version": {"ref": "x"}}
