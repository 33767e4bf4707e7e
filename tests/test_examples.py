"""Every pipeline in ``examples/`` runs here, through ``jetbridge run`` (or ``validate``),
to the result it is there to show: its exit code and the lines a user would look for.

The runs are independent (a workspace each, outside ``/tmp``, which a step's pod sees as
its own emptyDir), so a module fixture starts them all at once and each test reads its
own run's result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.db import BuildRow, PipelineRow, make_engine, make_session_factory, transaction
from shared.versions import used_by

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@dataclass(frozen=True)
class Case:
    id: str
    pipeline: str
    """Path under examples/."""
    job: str | None
    """The job to run; ``None`` to validate the pipeline instead."""
    exit_code: int
    lines: Sequence[str] = ()
    """Lines (or parts of lines) the output must have, in this order."""
    absent: Sequence[str] = ()
    needs_repo: bool = False
    """The files example: make its git repository and pass it as ((repo))."""
    enforces_read_only: bool = False
    """Shows a write to a read-only input failing: only bubblewrap enforces that."""
    args: Sequence[str] = field(default_factory=tuple)
    repo_script: str = "files/make_repo.py"
    """With ``needs_repo``: the script (under examples/) that makes the repository."""
    before: Sequence[str] = ()
    """Jobs run first, one ``jetbridge run`` each, in the same workspace (their output is
    kept too, before the case's own)."""


CASES = [
    Case(
        "hooks-on-failure",
        "hooks/pipeline.yml",
        "on-failure",
        1,
        lines=(
            "✗ task build failed: task 'build' exited with code 1",
            "✓ task alert succeeded",
            "│ the build failed, telling the team",
            "✓ task cleanup succeeded",
            "- task ship skipped",
            "✓ task job-alert succeeded",
            "build hooks/on-failure #1 (id 1) failed",
        ),
    ),
    Case(
        "hooks-on-success",
        "hooks/pipeline.yml",
        "on-success",
        0,
        lines=("✓ task build succeeded", "✓ task celebrate succeeded", "- task alert skipped"),
    ),
    Case(
        "hooks-on-error",
        "hooks/pipeline.yml",
        "on-error",
        1,
        lines=(
            "! task broken errored: task 'broken' could not run",
            "- task alert skipped",
            "✓ task report succeeded",
            "build hooks/on-error #1 (id 1) errored",
        ),
    ),
    Case(
        "hooks-ensure-fails",
        "hooks/pipeline.yml",
        "ensure-fails",
        1,
        lines=(
            "✓ task build succeeded",
            "✗ task teardown failed",
            "build hooks/ensure-fails #1 (id 1) failed",
        ),
    ),
    Case(
        "try-and-do",
        "hooks/pipeline.yml",
        "try-and-do",
        0,
        lines=(
            "✓ task lint succeeded",
            "✗ task style failed",
            "- task docs skipped",
            "✓ task note succeeded",
            "✓ task build succeeded",
            "│ built anyway",
            "build hooks/try-and-do #1 (id 1) succeeded",
        ),
    ),
    Case(
        "attempts",
        "retries/pipeline.yml",
        "attempts",
        0,
        lines=(
            "▶ task flaky (attempt 1 of 3)",
            "✗ task flaky failed",
            "▶ task flaky (attempt 2 of 3)",
            "✗ task flaky failed",
            "▶ task flaky (attempt 3 of 3)",
            "✓ task flaky succeeded",
            "│ third time lucky",
            "build retries/attempts #1 (id 1) succeeded",
        ),
    ),
    Case(
        "timeout",
        "retries/pipeline.yml",
        "timeout",
        1,
        lines=(
            "▶ task slow (attempt 1 of 2)",
            "✗ task slow failed: task 'slow' timed out: it ran longer than its timeout (1s)",
            "▶ task slow (attempt 2 of 2)",
            "✗ task slow failed: task 'slow' timed out",
            "build retries/timeout #1 (id 1) failed",
        ),
    ),
    Case(
        "in-parallel-limit",
        "parallel/pipeline.yml",
        "limit",
        0,
        lines=("build parallel/limit #1 (id 1) succeeded",),
    ),
    Case(
        "in-parallel-fail-fast",
        "parallel/pipeline.yml",
        "fail-fast",
        1,
        lines=(
            "✗ task unit failed",
            "- task integration skipped",
            "- task e2e skipped",
            "build parallel/fail-fast #1 (id 1) failed",
        ),
    ),
    Case(
        "across",
        "parallel/pipeline.yml",
        "across",
        0,
        lines=(
            "│ building for linux/amd64",
            "│ building for windows/arm64",
            "✓ task release succeeded",
            "build parallel/across #1 (id 1) succeeded",
        ),
    ),
    Case(
        "run-time-files",
        "files/pipeline.yml",
        "run-time-files",
        0,
        lines=(
            "✓ task greet succeeded",
            "│ hello, jetbridge",
            "✓ load_var version succeeded",
            "│ releasing 1.4.2",
            "✓ task in-image succeeded",
            "✓ set_pipeline self succeeded",
            "build files/run-time-files #1 (id 1) succeeded",
        ),
        needs_repo=True,
    ),
    Case(
        "copy-becomes-output",
        "writable-inputs/pipeline.yml",
        "copy-becomes-output",
        0,
        lines=("│ src: original", "│ patched: original patched"),
    ),
    Case(
        "writable-inputs",
        "writable-inputs/pipeline.yml",
        "writable-inputs",
        0,
        lines=("│ wrote src/build.log", "│ src is as checkout left it"),
    ),
    Case(
        "read-only-input",
        "writable-inputs/pipeline.yml",
        "read-only",
        1,
        lines=(
            "✗ task scribble failed: task 'scribble' exited with code 2: it wrote into its input"
            " 'src', which is read-only (Read-only file system). JetBridge mounts inputs"
            " read-only, uncopied; to write into 'src', declare an output named 'src' (a"
            " writable copy of the input that becomes that output), or set `writable_inputs:"
            " true` on the task step (private writable copies of all its inputs)",
        ),
        enforces_read_only=True,
    ),
    Case(
        "passed-flow",
        "versions/pipeline.yml",
        "test",
        0,
        lines=(
            "│ built ",
            "build versions/build #1 (id 1) succeeded",
            "✓ get repo succeeded",
            "│ 1 test passed",
            "build versions/test #1 (id 2) succeeded",
        ),
        needs_repo=True,
        repo_script="demo/make_repo.py",
        before=("build",),
    ),
    Case(
        "passed-nothing-yet",
        "versions/pipeline.yml",
        "test",
        1,
        lines=(
            "build versions/test #1 (id 1) errored",
            "! no version of 'repo' has passed 'build' yet",
        ),
        absent=("▶ get repo",),
        needs_repo=True,
        repo_script="demo/make_repo.py",
    ),
    Case(
        "privileged-refused",
        "invalid/privileged.yml",
        None,
        2,
        lines=("line 7: jobs[0].plan[0].privileged: privileged tasks are refused",),
    ),
    Case(
        "validation-parity",
        "invalid/mistakes.yml",
        None,
        2,
        lines=(
            "(8 problem(s))",
            "line 16: jobs[0].plan[0].passed[0]: passed constraints form a cycle: build → test",
            "line 17: jobs[0].plan[1].get: get 'repo' is already in job 'build'",
            "line 19: jobs[0].plan[2].timeout: timeout must be a duration",
            "line 20: jobs[0].plan[2].attempts: expected a whole number of at least 1",
            "line 23: jobs[0].plan[2].config.inputs[1]: task 'unit' needs input 'built'",
            "line 29: jobs[1].plan[1]: ((.:version)) is used here",
            "line 37: jobs[2].plan[0].passed[0]: passed names job 'deploy'",
            "line 39: jobs[2].plan[1].colour: unknown key 'colour' in a put step",
        ),
    ),
]


@dataclass(frozen=True)
class Result:
    exit_code: int
    out: str
    workspace: Path


def run_case(case: Case, base: Path) -> Result:
    workspace = Path(tempfile.mkdtemp(dir=base, prefix=f"{case.id}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETBRIDGE_")}
    args = [str(EXAMPLES / case.pipeline)]
    if case.needs_repo:
        origin = workspace / "origin.git"
        subprocess.run(
            [sys.executable, str(EXAMPLES / case.repo_script), str(origin)],
            check=True,
            capture_output=True,
        )
        args += ["--var", f"repo={origin}"]
    commands = [["run", *args, "--job", job] for job in case.before]
    commands.append(["validate", *args] if case.job is None else ["run", *args, "--job", case.job])
    out = ""
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-m", "shared.cli", "--data-dir", str(workspace / "data"), *command],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        out += result.stdout + result.stderr
    return Result(result.returncode, out, workspace)


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, Result]]:
    base = ROOT / ".jetbridge-test"
    base.mkdir(exist_ok=True)
    base = Path(tempfile.mkdtemp(dir=base, prefix="examples-"))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        futures = {case.id: pool.submit(run_case, case, base) for case in CASES}
        done = {key: future.result() for key, future in futures.items()}
    yield done
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_example_runs_to_its_expected_result(case: Case, results: dict[str, Result]) -> None:
    result = results[case.id]
    if case.enforces_read_only and "read-only inputs are not enforced" in result.out:
        pytest.skip("bubblewrap cannot run here, so read-only inputs are not enforced")
    assert result.exit_code == case.exit_code, result.out
    position = 0
    for line in case.lines:
        found = result.out.find(line, position)
        assert found >= 0, f"{line!r} not found (in order) in:\n{result.out}"
        position = found + len(line)
    for line in case.absent:
        assert line not in result.out


def test_in_parallel_limit_holds_two_branches_at_a_time(results: dict[str, Result]) -> None:
    running = widest = 0
    for line in results["in-parallel-limit"].out.splitlines():
        if line.startswith("▶ task test-"):
            running += 1
        elif line.startswith("✓ task test-"):
            running -= 1
        widest = max(widest, running)
    assert widest == 2


def test_set_pipeline_self_saved_the_pipeline_from_the_repository(
    results: dict[str, Result],
) -> None:
    result = results["run-time-files"]
    engine = make_engine(f"sqlite:///{result.workspace / 'data' / 'jetbridge.db'}")
    try:
        with transaction(make_session_factory(engine)) as session:
            row = session.scalars(select(PipelineRow).where(PipelineRow.name == "files")).one()
            assert row.variables["set_by"] == "run-time-files"
            assert row.config == (EXAMPLES / "files" / "pipeline.yml").read_text()
    finally:
        engine.dispose()


def test_a_job_with_passed_gets_the_commit_its_upstream_job_built(
    results: dict[str, Result],
) -> None:
    result = results["passed-flow"]
    engine = make_engine(f"sqlite:///{result.workspace / 'data' / 'jetbridge.db'}")
    try:
        with transaction(make_session_factory(engine)) as session:
            build, test = session.scalars(select(BuildRow).order_by(BuildRow.id)).all()
            built = used_by(session, build.id)["input"]
            tested = used_by(session, test.id)["input"]
    finally:
        engine.dispose()
    head = subprocess.run(
        ["git", "-C", str(result.workspace / "origin.git"), "rev-parse", "main"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert built == tested == [("repo", "repo", {"ref": head})]
    # Built by hand, build checked for the newest commit; test was pinned to what build used.
    assert (build.versions, test.versions) == ({}, {"repo": {"ref": head}})
