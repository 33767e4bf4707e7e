"""End to end: a new commit flows through three jobs chained with ``passed:``, and a failing
middle job stops it. ``LocalCI`` with scheduling on (as ``jetbridge serve`` runs it): a real
git repository, the built-in git resource's check, get and in scripts, pods run here.

The workspace is outside ``/tmp``: a step's pod has a private ``/tmp`` and would not see a
repository kept there.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import status as st
from shared.db import BuildRow, transaction
from shared.local import LocalCI
from shared.settings import Settings
from shared.versions import used_by

ROOT = Path(__file__).resolve().parent.parent

PIPELINE = """
resources:
- name: repo
  type: git
  source: {uri: ((repo)), branch: main}
  check_every: never   # the test checks it, when it has pushed

jobs:
- name: build
  plan:
  - get: repo
    trigger: true
  - task: compile
    config:
      platform: linux
      inputs: [{name: repo}]
      run: {path: sh, args: [-c, "cat repo/VERSION"]}
- name: test
  plan:
  - get: repo
    trigger: true
    passed: [build]
  - task: unit
    config:
      platform: linux
      inputs: [{name: repo}]
      run: {path: sh, args: [-c, "if [ -e repo/BROKEN ]; then echo broken; exit 1; fi"]}
- name: ship
  plan:
  - get: repo
    trigger: true
    passed: [test]
  - task: release
    config:
      platform: linux
      inputs: [{name: repo}]
      run: {path: sh, args: [-c, "echo shipping $(cat repo/VERSION)"]}
"""

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "JetBridge Test",
    "GIT_AUTHOR_EMAIL": "test@jetbridge.invalid",
    "GIT_COMMITTER_NAME": "JetBridge Test",
    "GIT_COMMITTER_EMAIL": "test@jetbridge.invalid",
}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        env=ENV,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


class Repo:
    """A bare origin and a clone to commit in."""

    def __init__(self, base: Path) -> None:
        self.origin = base / "origin.git"
        self.work = base / "work"
        git("init", "--bare", "-q", str(self.origin), cwd=base)
        git("clone", "-q", str(self.origin), str(self.work), cwd=base)

    def commit(self, version: str, *, broken: bool = False) -> str:
        (self.work / "VERSION").write_text(version + "\n")
        if broken:
            (self.work / "BROKEN").write_text("yes\n")
        elif (self.work / "BROKEN").exists():
            (self.work / "BROKEN").unlink()
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", version, cwd=self.work)
        git("push", "-q", "origin", "HEAD:main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


@pytest.fixture
def workspace() -> Iterator[Path]:
    base = ROOT / ".jetbridge-test"
    base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base, prefix="passed-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def runs(builds: list[BuildRow], job: str) -> list[tuple[str, str]]:
    """``(status, commit)`` of each build of ``job``, oldest first."""
    return [(b.status, b.versions["repo"]["ref"]) for b in builds if b.job_name == job]


def test_a_commit_flows_through_three_jobs_in_order_and_a_failing_middle_job_stops_it(
    workspace: Path,
) -> None:
    repo = Repo(workspace)
    first = repo.commit("1.0")
    with LocalCI(Settings(data_dir=workspace / "data"), scheduling=True) as ci:
        ci.set_pipeline("app", PIPELINE, {"repo": str(repo.origin)})

        # The check finds the commit; build takes it, then test, then ship, one after another.
        ci.request_build("app", "check:repo")
        builds = [b for b in ci.run_until_idle(timeout=240) if not b.job_name.startswith("check:")]
        assert [(b.job_name, b.status) for b in builds] == [
            ("build", st.SUCCEEDED),
            ("test", st.SUCCEEDED),
            ("ship", st.SUCCEEDED),
        ]
        assert {b.versions["repo"]["ref"] for b in builds} == {first}
        for upstream, downstream in itertools.pairwise(builds):
            assert upstream.finished_at is not None
            assert upstream.finished_at <= downstream.created_at
        with transaction(ci.deps.sessions) as session:
            fetched = [used_by(session, b.id)["input"] for b in builds]
        assert fetched == [[("repo", "repo", {"ref": first})]] * 3

        # A commit that breaks the tests: build takes it, test fails, ship never sees it.
        second = repo.commit("2.0", broken=True)
        ci.request_build("app", "check:repo")
        builds = [b for b in ci.run_until_idle(timeout=240) if not b.job_name.startswith("check:")]
        assert runs(builds, "build") == [(st.SUCCEEDED, first), (st.SUCCEEDED, second)]
        assert runs(builds, "test") == [(st.SUCCEEDED, first), (st.FAILED, second)]
        assert runs(builds, "ship") == [(st.SUCCEEDED, first)]

        # Triggered by hand, ship takes the newest commit that passed test: the first.
        build = ci.run_build("app", "ship", timeout=120)
        assert (build.status, build.versions) == (st.SUCCEEDED, {"repo": {"ref": first}})


TICKED = """
resources:
- name: repo
  type: git
  source: {uri: ((repo)), branch: main}
  check_every: 1h
jobs:
- name: build
  plan:
  - get: repo
    trigger: true
"""


def test_the_scheduled_tick_checks_what_is_due_and_the_versions_it_finds_trigger_builds(
    workspace: Path,
) -> None:
    repo = Repo(workspace)
    first = repo.commit("1.0")
    with LocalCI(Settings(data_dir=workspace / "data"), scheduling=True) as ci:
        ci.set_pipeline("ticked", TICKED, {"repo": str(repo.origin)})
        ci.tick()
        builds = ci.run_until_idle(timeout=120)
        assert [(b.job_name, b.status) for b in builds] == [
            ("check:repo", st.SUCCEEDED),
            ("build", st.SUCCEEDED),
        ]
        assert builds[1].versions == {"repo": {"ref": first}}
        # Within the hour: no check, so a new commit waits.
        repo.commit("2.0")
        ci.tick()
        assert len(ci.run_until_idle(timeout=120)) == 2


def jetbridge(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETBRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "--data-dir", str(workspace / "data"), *args],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_resource_and_trigger_job_from_the_command_line(workspace: Path) -> None:
    repo = Repo(workspace)
    commit = repo.commit("1.0")
    (workspace / "p.yml").write_text(PIPELINE)
    setup = jetbridge(
        workspace, "set-pipeline", "-p", "app", "-c", "p.yml", "-n", "-v", f"repo={repo.origin}"
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert jetbridge(workspace, "unpause-pipeline", "app").returncode == 0

    # test's get has passed: [build], and build never ran.
    early = jetbridge(workspace, "trigger-job", "app/test")
    assert early.returncode == 1, early.stdout + early.stderr
    assert "build app/test #1 (id 1) errored" in early.stdout
    assert "! no version of 'repo' has passed 'build' yet" in early.stdout

    checked = jetbridge(workspace, "check-resource", "app/repo")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "build app/check:repo #1 (id 2) succeeded" in checked.stdout
    assert "newest versions of app/repo:" in checked.stdout
    assert f"  ref: {commit}  (check, first seen " in checked.stdout

    listed = jetbridge(workspace, "builds")
    assert "app/test #1" in listed.stdout and "check:repo" not in listed.stdout
    assert "app/check:repo #1" in jetbridge(workspace, "builds", "--checks").stdout

    unknown = jetbridge(workspace, "check-resource", "app/nope")
    assert unknown.returncode != 0
    assert "no resource 'nope' in the pipeline; resources: repo" in unknown.stderr
