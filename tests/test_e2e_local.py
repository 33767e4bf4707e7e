"""End to end on the embedded default: the real CLI, SQLite, the local runtime, the git resource.

Everything runs in a folder outside ``/tmp``, because a step's pod gets a private
``/tmp`` (its emptyDir) and would not see a repository kept there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.db import ArtifactRow, StepRow, make_engine, make_session_factory, transaction

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo"


@pytest.fixture
def workspace() -> Iterator[Path]:
    base = ROOT / ".jetbridge-test"
    base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def jetbridge(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETBRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "--data-dir", str(workspace / "data"), *args],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def make_demo_repo(workspace: Path) -> Path:
    origin = workspace / "origin.git"
    subprocess.run(
        [sys.executable, str(DEMO / "make_repo.py"), str(origin)], check=True, capture_output=True
    )
    return origin


def sessions_of(workspace: Path):  # type: ignore[no-untyped-def]
    return make_session_factory(make_engine(f"sqlite:///{workspace / 'data' / 'jetbridge.db'}"))


def test_the_demo_pipeline_succeeds_and_leaves_nothing_behind(workspace: Path) -> None:
    origin = make_demo_repo(workspace)
    result = jetbridge(
        workspace, "run", str(DEMO / "pipeline.yml"), "--job", "build", "--var", f"repo={origin}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for line in (
        "✓ get source succeeded",
        "✓ task compile succeeded",
        "✓ task unit-test succeeded",
        "✓ task package succeeded",
        "✓ put release succeeded",
        "build demo/build #1 (id 1) succeeded",
    ):
        assert line in out
    assert "│ 1 test passed" in out
    # The put pushed the package to the release branch of the origin.
    log = subprocess.run(
        ["git", "--git-dir", str(origin), "log", "--format=%s", "release"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert log.startswith("release ")
    # The reaper tick after the build took every artifact: no rows, no directories.
    with transaction(sessions_of(workspace)) as session:
        assert session.scalars(select(ArtifactRow)).all() == []
    store = workspace / "data" / "store" / "artifacts"
    assert not store.exists() or [p for p in store.rglob("*") if p.is_file()] == []
    # History and logs outlive the pods.
    builds = jetbridge(workspace, "builds")
    assert "demo/build #1" in builds.stdout and "succeeded" in builds.stdout
    logs = jetbridge(workspace, "logs", "1", "--step", "unit-test")
    assert logs.returncode == 0 and "1 test passed" in logs.stdout


FAILING = """
jobs:
- name: build
  plan:
  - task: make
    config:
      platform: linux
      outputs: [{name: out}]
      run: {path: sh, args: [-c, "echo partial > out/file; echo about to fail; exit 3"]}
  - task: never
    config:
      platform: linux
      inputs: [{name: out}]
      run: {path: "true"}
"""


def test_a_task_that_exits_3_fails_the_build_with_exit_1_and_is_cleaned(workspace: Path) -> None:
    (workspace / "p.yml").write_text(FAILING)
    result = jetbridge(workspace, "run", "p.yml", "--job", "build")
    assert result.returncode == 1
    assert "✗ task make failed: task 'make' exited with code 3" in result.stdout
    assert "│ about to fail" in result.stdout
    assert "- task never skipped" in result.stdout
    assert "build p/build #1 (id 1) failed" in result.stdout
    with transaction(sessions_of(workspace)) as session:
        assert session.scalars(select(ArtifactRow)).all() == []
        steps = {s.name: s for s in session.scalars(select(StepRow)).all()}
        assert (steps["make"].status, steps["make"].exit_code) == ("failed", 3)
        assert steps["never"].status == "skipped"


BIG = """
jobs:
- name: build
  plan:
  - task: produce
    config:
      platform: linux
      outputs: [{name: blob}]
      run:
        path: sh
        args: [-c, "head -c 4194304 /dev/urandom > blob/data && sha256sum blob/data > blob/SUM && ls -i blob/data"]
  - task: consume
    config:
      platform: linux
      inputs: [{name: blob}]
      run:
        path: sh
        args: [-c, "sha256sum -c blob/SUM && ls -i blob/data"]
"""


def test_a_4mb_output_reaches_the_next_task_unchanged_and_uncopied(workspace: Path) -> None:
    (workspace / "p.yml").write_text(BIG)
    result = jetbridge(workspace, "run", "p.yml", "--job", "build", "--keep-artifacts")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "blob/data: OK" in result.stdout
    with transaction(sessions_of(workspace)) as session:
        (artifact,) = session.scalars(select(ArtifactRow)).all()
        steps = {s.name: s for s in session.scalars(select(StepRow)).all()}
    data = workspace / "data" / "store" / artifact.subpath / "data"
    assert artifact.state == "ready" and artifact.size is not None
    assert artifact.size >= 4 * 1024 * 1024
    expected = hashlib.sha256(data.read_bytes()).hexdigest()
    assert (
        (workspace / "data" / "store" / artifact.subpath / "SUM").read_text().startswith(expected)
    )
    # Both tasks saw the same inode: the consumer read the producer's directory in place.
    inodes = [
        line.split("│")[1].split()[0]
        for line in result.stdout.splitlines()
        if "│" in line and line.rstrip().endswith("blob/data")
    ]
    assert len(inodes) == 2 and inodes[0] == inodes[1] == str(data.stat().st_ino)
    assert steps["consume"].status == "succeeded"


@pytest.mark.parametrize(
    ("pipeline", "args", "message"),
    [
        (
            "jobs:\n- name: build\n  plan:\n  - task: t\n    config: {platform: linux, run: {path: x}}\n"
            "    colour: red\n",
            [],
            "unknown key 'colour'",
        ),
        (
            "jobs:\n- name: build\n  plan:\n  - task: t\n    config:\n      platform: linux\n"
            "      inputs: [{name: src}]\n      run: {path: x}\n",
            [],
            "needs input 'src'",
        ),
        (
            "jobs:\n- name: build\n  plan:\n  - task: t\n    config:\n      platform: ((os))\n"
            "      run: {path: x}\n",
            [],
            "os",
        ),
        (
            "jobs:\n- name: build\n  plan:\n  - task: t\n    config: {platform: linux, run: {path: x}}\n",
            ["--job", "deploy"],
            "no job 'deploy'",
        ),
    ],
    ids=["unknown-key", "missing-input", "missing-var", "unknown-job"],
)
def test_a_bad_pipeline_exits_2_naming_the_problem(
    workspace: Path, pipeline: str, args: list[str], message: str
) -> None:
    (workspace / "p.yml").write_text(pipeline)
    result = jetbridge(workspace, "run", "p.yml", *(args or ["--job", "build"]))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    validate = jetbridge(workspace, "validate", "p.yml")
    if not args:
        assert validate.returncode == 2 and message in validate.stderr


def test_validate_accepts_the_demo(workspace: Path) -> None:
    result = jetbridge(workspace, "validate", str(DEMO / "pipeline.yml"), "--var", "repo=/x")
    assert result.returncode == 0
    assert "valid (1 job(s), 2 resource(s))" in result.stdout


CUSTOM_TYPE = """
resource_types:
- name: slack
  type: registry-image
  source: {repository: cfcommunity/slack-notification-resource, tag: latest}
resources:
- name: notify
  type: slack
  source: {url: "https://hooks.example.invalid"}
jobs:
- name: build
  plan:
  - get: notify
"""


def test_a_custom_resource_type_says_its_image_needs_a_cluster(workspace: Path) -> None:
    (workspace / "p.yml").write_text(CUSTOM_TYPE)
    result = jetbridge(workspace, "run", "p.yml", "--job", "build")
    assert result.returncode == 1
    assert (
        "check 'notify' cannot start: resource type 'slack' keeps its check/in/out scripts in "
        "the image 'cfcommunity/slack-notification-resource:latest', and a container image "
        "cannot run without a cluster"
    ) in result.stdout
    assert "build p/build #1 (id 1) errored" in result.stdout
