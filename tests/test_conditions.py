"""Step conditions, as Concourse documents them: hooks, try, do, attempts, in_parallel, across.

Each row is a pipeline and a script of how its steps end; a small pure simulator runs
the compiled plan through ``decide`` round by round, as ``advance_build`` and the step
runner would, and the row says which steps ran, how each ended and how the build did.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from shared import status as st
from shared.conditions import StepState, decide, explain_failure, may_still_run
from shared.pipeline import parse_pipeline
from shared.plan import InputBinding, OutputBinding, StepSpec, compile_plan


def task(name: str, **extra: str) -> str:
    """A task step in flow style, with extra keys given as YAML text."""
    more = "".join(f", {k}: {v}" for k, v in extra.items())
    return f"{{task: {name}, config: {{platform: linux, run: {{path: x}}}}{more}}}"


def pipeline(plan: str, hooks: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(plan).strip(), "    ")
    job_hooks = textwrap.indent(textwrap.dedent(hooks).strip(), "  ") if hooks else ""
    return f"jobs:\n- name: j\n  plan:\n{body}\n{job_hooks}\n"


@dataclass
class Run:
    outcome: str
    statuses: dict[str, str]
    attempts: dict[str, int]
    rounds: list[list[str]] = field(default_factory=list)
    """Names of the steps started in each round (all running at once)."""


def simulate(text: str, script: Mapping[str, str | Sequence[str]] | None = None) -> Run:
    """Run the plan: a step ends as ``script`` says (one result per attempt), else succeeds."""
    script = script or {}
    specs = compile_plan(parse_pipeline(text), "j")
    names = {s.key: s.name for s in specs}
    status = {s.key: st.PENDING for s in specs}
    attempt = dict.fromkeys(status, 1)
    rounds: list[list[str]] = []
    for _ in range(100):
        states = [
            StepState(key=s.key, status=status[s.key], attempt=attempt[s.key], spec=s)
            for s in specs
        ]
        decision = decide(states)
        for key in decision.retry:
            status[key] = st.SCHEDULED
            attempt[key] += 1
        for key in decision.skip:
            status[key] = st.SKIPPED
        for key in decision.schedule:
            status[key] = st.SCHEDULED
        if decision.outcome is not None:
            assert not decision.schedule and not decision.retry
            return Run(
                outcome=decision.outcome,
                statuses={names[k]: v for k, v in status.items()},
                attempts={names[k]: v for k, v in attempt.items()},
                rounds=rounds,
            )
        started = [k for k, v in status.items() if v == st.SCHEDULED]
        assert started, f"nothing runs and the build is not over: {status}"
        rounds.append([names[k] for k in started])
        for key in started:
            results = script.get(names[key], st.SUCCEEDED)
            if isinstance(results, str):
                results = [results]
            status[key] = results[min(attempt[key], len(results)) - 1]
    raise AssertionError("the build did not end in 100 rounds")


S, F, E, A, K = st.SUCCEEDED, st.FAILED, st.ERRORED, st.ABORTED, st.SKIPPED

CASES = [
    # (id, plan, job hooks, script, build outcome, expected statuses of some steps)
    (
        "sequence-stops-at-a-failure",
        f"- {task('a')}\n- {task('b')}",
        "",
        {"a": F},
        F,
        {"a": F, "b": K},
    ),
    (
        "on-success-runs-after-success",
        f"- {task('a', on_success=task('hook'))}\n- {task('b')}",
        "",
        {},
        S,
        {"a": S, "hook": S, "b": S},
    ),
    (
        "failing-on-success-hook-fails-the-build",
        f"- {task('a', on_success=task('hook'))}\n- {task('b')}",
        "",
        {"hook": F},
        F,
        {"a": S, "hook": F, "b": K},
    ),
    (
        "on-failure-runs-and-the-build-still-fails",
        f"- {task('a', on_failure=task('hook'))}\n- {task('b')}",
        "",
        {"a": F},
        F,
        {"a": F, "hook": S, "b": K},
    ),
    (
        "on-failure-not-on-error",
        f"- {task('a', on_failure=task('hook'))}",
        "",
        {"a": E},
        E,
        {"a": E, "hook": K},
    ),
    (
        "on-error-runs-on-error",
        f"- {task('a', on_error=task('hook'), on_failure=task('other'))}",
        "",
        {"a": E},
        E,
        {"a": E, "hook": S, "other": K},
    ),
    (
        "on-failure-sees-a-failed-on-success-hook",
        f"- {task('a', on_success=task('s'), on_failure=task('f'))}",
        "",
        {"s": F},
        F,
        {"a": S, "s": F, "f": S},
    ),
    (
        "ensure-runs-after-success",
        f"- {task('a', ensure=task('cleanup'))}",
        "",
        {},
        S,
        {"a": S, "cleanup": S},
    ),
    (
        "ensure-runs-after-failure",
        f"- {task('a', ensure=task('cleanup'))}\n- {task('b')}",
        "",
        {"a": F},
        F,
        {"a": F, "cleanup": S, "b": K},
    ),
    (
        "failing-ensure-fails-the-build",
        f"- {task('a', ensure=task('cleanup'))}\n- {task('b')}",
        "",
        {"cleanup": F},
        F,
        {"a": S, "cleanup": F, "b": K},
    ),
    (
        "try-swallows-a-failure",
        f"- try: {task('a')}\n- {task('b')}",
        "",
        {"a": F},
        S,
        {"a": F, "b": S},
    ),
    (
        "try-swallows-an-error",
        f"- try: {task('a')}\n- {task('b')}",
        "",
        {"a": E},
        S,
        {"a": E, "b": S},
    ),
    (
        "try-does-not-swallow-an-abort",
        f"- try: {task('a')}\n- {task('b')}",
        "",
        {"a": A},
        A,
        {"a": A, "b": K},
    ),
    (
        "inside-a-try-a-failure-still-stops-the-do",
        f"- try: {{do: [{task('a')}, {task('b')}]}}\n- {task('c')}",
        "",
        {"a": F},
        S,
        {"a": F, "b": K, "c": S},
    ),
    (
        "on-failure-of-a-try-never-runs",
        f"- try: {task('a')}\n  on_failure: {task('hook')}",
        "",
        {"a": F},
        S,
        {"a": F, "hook": K},
    ),
    (
        "on-failure-inside-a-try-runs",
        f"- try: {task('a', on_failure=task('hook'))}",
        "",
        {"a": F},
        S,
        {"a": F, "hook": S},
    ),
    (
        "do-with-on-failure-catches-its-second-step",
        f"- do: [{task('a')}, {task('b')}]\n  on_failure: {task('hook')}",
        "",
        {"b": F},
        F,
        {"a": S, "b": F, "hook": S},
    ),
    (
        "hook-waits-for-the-whole-in-parallel",
        f"- in_parallel: [{task('a')}, {task('b')}]\n  on_failure: {task('hook')}\n- {task('c')}",
        "",
        {"a": F},
        F,
        {"a": F, "b": S, "hook": S, "c": K},
    ),
    (
        "skipped-steps-fail-nothing",
        f"- {task('a', on_failure=task('hook'))}",
        "",
        {},
        S,
        {"a": S, "hook": K},
    ),
    (
        "attempts-retry-until-success",
        f"- {task('flaky', attempts='3')}\n- {task('b')}",
        "",
        {"flaky": [F, E, S]},
        S,
        {"flaky": S, "b": S},
    ),
    (
        "attempts-exhausted-fail",
        f"- {task('flaky', attempts='2', on_failure=task('hook'))}",
        "",
        {"flaky": [F, F, S]},
        F,
        {"flaky": F, "hook": S},
    ),
    (
        "job-on-failure-hangs-off-the-whole-plan",
        f"- {task('a')}\n- {task('b')}",
        f"on_failure: {task('alert')}\nensure: {task('tidy')}",
        {"b": F},
        F,
        {"a": S, "b": F, "alert": S, "tidy": S},
    ),
    (
        "job-on-success",
        f"- {task('a')}",
        f"on_success: {task('celebrate')}\non_failure: {task('alert')}",
        {},
        S,
        {"a": S, "celebrate": S, "alert": K},
    ),
    (
        "abort-runs-on-abort-and-ensure-only",
        f"- {task('a', on_abort=task('aborted'), on_failure=task('failed'), ensure=task('tidy'))}"
        f"\n- {task('b')}",
        "",
        {"a": A},
        A,
        {"a": A, "aborted": S, "failed": K, "tidy": S, "b": K},
    ),
    (
        "abort-stops-retries",
        f"- {task('a', attempts='3')}",
        "",
        {"a": A},
        A,
        {"a": A},
    ),
    (
        "in-parallel-fail-fast-skips-branches-not-started",
        "- in_parallel:\n    limit: 1\n    fail_fast: true\n"
        f"    steps: [{task('a')}, {task('b')}, {task('c')}]",
        "",
        {"a": F},
        F,
        {"a": F, "b": K, "c": K},
    ),
    (
        "in-parallel-without-fail-fast-runs-every-branch",
        f"- in_parallel:\n    limit: 1\n    steps: [{task('a')}, {task('b')}, {task('c')}]",
        "",
        {"a": F},
        F,
        {"a": F, "b": S, "c": S},
    ),
    (
        "error-outranks-failure",
        f"- in_parallel: [{task('a')}, {task('b')}]",
        "",
        {"a": F, "b": E},
        E,
        {"a": F, "b": E},
    ),
]


@pytest.mark.parametrize(
    ("plan", "hooks", "script", "outcome", "expected"),
    [row[1:] for row in CASES],
    ids=[row[0] for row in CASES],
)
def test_steps_run_and_builds_end_as_concourse_says(
    plan: str,
    hooks: str,
    script: dict[str, str | list[str]],
    outcome: str,
    expected: dict[str, str],
) -> None:
    run = simulate(pipeline(plan, hooks), script)
    assert {name: run.statuses[name] for name in expected} == expected
    assert run.outcome == outcome


def test_a_retried_step_counts_its_attempts() -> None:
    run = simulate(pipeline(f"- {task('flaky', attempts='3')}"), {"flaky": [F, E, S]})
    assert run.attempts["flaky"] == 3
    assert run.rounds == [["flaky"], ["flaky"], ["flaky"]]


@pytest.mark.parametrize(
    ("plan", "widest"),
    [
        (f"- in_parallel: [{task('a')}, {task('b')}, {task('c')}]", 3),
        (f"- in_parallel: {{limit: 2, steps: [{task('a')}, {task('b')}, {task('c')}]}}", 2),
        (f"- in_parallel: {{limit: 1, steps: [{task('a')}, {task('b')}, {task('c')}]}}", 1),
        (
            # A limit counts branches, not steps: a branch of two steps holds one place.
            "- in_parallel:\n    limit: 1\n"
            f"    steps: [{{do: [{task('a1')}, {task('a2')}]}}, {task('b')}]",
            1,
        ),
        (
            "- task: t\n  across:\n  - var: v\n    values: [a, b, c, d]\n"
            "  config: {platform: linux, run: {path: x, args: ['((.:v))']}}",
            1,  # Concourse's default max_in_flight
        ),
        (
            "- task: t\n  across:\n  - var: v\n    values: [a, b, c, d]\n    max_in_flight: 2\n"
            "  config: {platform: linux, run: {path: x, args: ['((.:v))']}}",
            2,
        ),
        (
            "- task: t\n  across:\n  - var: v\n    values: [a, b, c, d]\n    max_in_flight: all\n"
            "  config: {platform: linux, run: {path: x, args: ['((.:v))']}}",
            4,
        ),
    ],
    ids=[
        "no-limit",
        "limit-2",
        "limit-1",
        "limit-counts-branches",
        "across-default-one",
        "across-max-in-flight-2",
        "across-all",
    ],
)
def test_limits_bound_the_branches_under_way(plan: str, widest: int) -> None:
    run = simulate(pipeline(plan))
    assert run.outcome == S
    assert max(len(r) for r in run.rounds) == widest


def test_across_runs_a_copy_per_combination_with_the_values_filled_in() -> None:
    text = pipeline(
        "- task: t\n  across:\n  - var: os\n    values: [linux, darwin]\n"
        "  - var: n\n    values: ['1', '2']\n    max_in_flight: all\n"
        "  config: {platform: linux, run: {path: echo, args: ['((.:os))-((.:n))']}}"
    )
    specs = compile_plan(parse_pipeline(text), "j")
    assert [s.command for s in specs] == [
        ("echo", "linux-1"),
        ("echo", "linux-2"),
        ("echo", "darwin-1"),
        ("echo", "darwin-2"),
    ]
    # os: one at a time (default); n: both at once within each os.
    assert [[len(r)] for r in simulate(text).rounds] == [[2], [2]]
    assert [s.name for s in specs] == [
        "t (linux, 1)",
        "t (linux, 2)",
        "t (darwin, 1)",
        "t (darwin, 2)",
    ]


def test_across_without_fail_fast_runs_every_copy() -> None:
    text = pipeline(
        "- task: t\n  across:\n  - var: v\n    values: [a, b, c]\n"
        "  config: {platform: linux, run: {path: x, args: ['((.:v))']}}"
    )
    specs = compile_plan(parse_pipeline(text), "j")
    first = specs[0].key
    status = {s.key: st.PENDING for s in specs}
    status[first] = st.FAILED
    states = [StepState(key=s.key, status=status[s.key], attempt=1, spec=s) for s in specs]
    assert decide(states).schedule == (specs[1].key,)


def test_a_step_failed_with_attempts_left_may_still_run() -> None:
    spec = StepSpec(key="0", name="t", kind="task", attempts=2)
    assert may_still_run(st.FAILED, 1, spec)
    assert not may_still_run(st.FAILED, 2, spec)
    assert may_still_run(st.PENDING, 1, spec)
    assert not may_still_run(st.SKIPPED, 1, spec)


def test_an_old_spec_without_conditions_reads_as_success_after_its_dependencies() -> None:
    old = {"key": "1", "name": "b", "kind": "task", "depends_on": ["0"], "command": ["x"]}
    spec = StepSpec.from_json(old)
    assert (spec.when, spec.attempts, spec.try_scopes, spec.slots) == ("success", 1, (), ())
    first = StepSpec(key="0", name="a", kind="task")
    states = [
        StepState(key="0", status=st.SUCCEEDED, attempt=1, spec=first),
        StepState(key="1", status=st.PENDING, attempt=1, spec=spec),
    ]
    assert decide(states).schedule == ("1",)


# ---------------------------------------------------------------- verdicts of finished steps

TASK = StepSpec(
    key="1",
    name="fmt",
    kind="task",
    inputs=(InputBinding(name="repo", producer="0", mount="repo"),),
)


@pytest.mark.parametrize(
    ("spec", "status", "reason", "log", "expected_status", "expected"),
    [
        (
            StepSpec(key="1", name="slow", kind="task", timeout_seconds=90),
            E,
            "DeadlineExceeded",
            b"",
            F,
            "task 'slow' timed out: it ran longer than its timeout (1m30s) and was stopped",
        ),
        (
            StepSpec(key="1", name="slow", kind="task"),
            E,
            "DeadlineExceeded",
            b"",
            E,
            "from the pod",
        ),
        (
            TASK,
            F,
            "Error",
            b"touch: cannot touch 'repo/x': Read-only file system\n",
            F,
            "from the pod: it wrote into its input 'repo', which is read-only (Read-only file"
            " system). JetBridge mounts inputs read-only, uncopied; to write into 'repo', declare"
            " an output named 'repo' (a writable copy of the input that becomes that output), or"
            " set `writable_inputs: true` on the task step (private writable copies of all its"
            " inputs)",
        ),
        (
            TASK,
            F,
            "Error",
            b"exit 1\n",
            F,
            "from the pod",
        ),
        (
            StepSpec(
                key="1",
                name="fmt",
                kind="task",
                inputs=(InputBinding(name="repo", producer="0", mount="repo"),),
                outputs=(OutputBinding(name="repo", mount="repo", from_input=True),),
            ),
            F,
            "Error",
            b"sh: can't create /etc/x: Read-only file system\n",
            F,
            "from the pod",
        ),
    ],
    ids=[
        "own-timeout-fails",
        "default-deadline-errors",
        "read-only-input-named",
        "other-failure-unchanged",
        "writable-copy-not-blamed",
    ],
)
def test_a_finished_step_is_judged_with_what_the_plan_knows(
    spec: StepSpec,
    status: str,
    reason: str,
    log: bytes,
    expected_status: str,
    expected: str,
) -> None:
    verdict = explain_failure(spec, status=status, reason=reason, message="from the pod", log=log)
    assert verdict == (expected_status, expected)


def test_the_input_a_task_wrote_into_is_found_among_several() -> None:
    spec = StepSpec(
        key="2",
        name="t",
        kind="task",
        inputs=(
            InputBinding(name="repo", producer="0", mount="repo"),
            InputBinding(name="lib", producer="1", mount="vendor/lib"),
        ),
    )
    log = b"cp: cannot create regular file 'vendor/lib/x.h': Read-only file system\n"
    _, message = explain_failure(spec, status=F, reason="Error", message="m", log=log)
    assert message is not None and "its input 'lib'" in message
    unknown = b"mkdir: cannot create directory '/x': Read-only file system\n"
    _, message = explain_failure(spec, status=F, reason="Error", message="m", log=unknown)
    assert message is not None and "one of its inputs ('repo', 'lib')" in message
