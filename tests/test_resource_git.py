"""The built-in git resource, run as Concourse runs it: an executable, JSON in, JSON out.

Every test builds a real origin repository in a temporary directory and calls
``check``, ``in`` and ``out`` as subprocesses, so what is checked is what a
pipeline sees: stdout, stderr, the exit code, and the origin's refs afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shared.resources import RESOURCE_DIRS

GIT_DIR = RESOURCE_DIRS["git"]

#: Long enough for a clone of a tiny local repository on a slow CI machine,
#: short enough that a hung git fails the test instead of the suite.
SCRIPT_TIMEOUT = 60

#: Credentials that must never be printed.
PASSWORD = "hunter2-s3cr3t-Pa55"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBfakeKEYmaterialTHATmustNEVERbePRINTEDanywhereATALL0000000\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with no user or system git config and a private TMPDIR."""
    home = tmp_path / "home"
    tmp = tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    clean.update(
        HOME=str(home),
        TMPDIR=str(tmp),
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        LC_ALL="C",
    )
    return clean


def git(*args: str, cwd: Path, env: Mapping[str, str]) -> str:
    """Run git for the test's own setup; identity comes from the environment."""
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={
            **env,
            "GIT_AUTHOR_NAME": "Ada Author",
            "GIT_AUTHOR_EMAIL": "ada@example.com",
            "GIT_COMMITTER_NAME": "Cy Committer",
            "GIT_COMMITTER_EMAIL": "cy@example.com",
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=SCRIPT_TIMEOUT,
    )
    assert done.returncode == 0, f"git {args} failed: {done.stderr}"
    return done.stdout.strip()


@dataclass
class Origin:
    """A bare origin repository, and a working clone that commits and pushes to it."""

    root: Path
    env: dict[str, str]
    clock: int = 0
    shas: dict[str, str] = field(default_factory=dict)

    @property
    def bare(self) -> Path:
        return self.root / "origin.git"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def uri(self) -> str:
        return f"file://{self.bare}"

    def _dated(self) -> dict[str, str]:
        # Distinct, increasing dates: tag order by creation date is then certain.
        self.clock += 1
        date = f"2024-01-01T00:{self.clock:02d}:00+00:00"
        return {**self.env, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}

    def commit(self, message: str, files: Mapping[str, str], *, branch: str = "main") -> str:
        """Commit ``files`` on ``branch`` and push it; the new sha, also kept by message."""
        env = self._dated()
        if git("symbolic-ref", "--short", "HEAD", cwd=self.work, env=env) != branch:
            git("checkout", "--quiet", branch, cwd=self.work, env=env)
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        git("add", "--all", cwd=self.work, env=env)
        git("commit", "--quiet", "-m", message, cwd=self.work, env=env)
        git("push", "--quiet", "origin", branch, cwd=self.work, env=env)
        sha = git("rev-parse", "HEAD", cwd=self.work, env=env)
        self.shas[message.splitlines()[0]] = sha
        return sha

    def tag(self, name: str, sha: str, *, annotated: bool = False) -> None:
        env = self._dated()
        extra = ["-a", "-m", f"release {name}"] if annotated else []
        git("tag", *extra, name, sha, cwd=self.work, env=env)
        git("push", "--quiet", "origin", f"refs/tags/{name}", cwd=self.work, env=env)

    def head(self, branch: str = "main") -> str:
        return git("rev-parse", f"refs/heads/{branch}", cwd=self.bare, env=self.env)


@pytest.fixture
def origin(tmp_path: Path, env: dict[str, str]) -> Origin:
    """main: one -> two (docs/) -> three (src/) -> four (docs/ and README); feature off two."""
    repo = Origin(root=tmp_path / "origin", env=env)
    repo.root.mkdir()
    git("init", "--quiet", "--bare", "-b", "main", str(repo.bare), cwd=repo.root, env=env)
    git("init", "--quiet", "-b", "main", str(repo.work), cwd=repo.root, env=env)
    git("remote", "add", "origin", str(repo.bare), cwd=repo.work, env=env)
    repo.commit("one", {"README": "hello\n"})
    repo.commit("two\n\nA longer body.", {"docs/guide.md": "guide v1\n"})
    git("branch", "feature", cwd=repo.work, env=env)
    repo.commit("three", {"src/app.py": "print('v1')\n"})
    repo.commit("four", {"docs/guide.md": "guide v2\n", "README": "hello again\n"})
    repo.commit("feature work", {"feature.txt": "wip\n"}, branch="feature")
    return repo


def run(
    script: str, request: Mapping[str, Any], *args: str | Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``/opt/resource/<script>`` the way Concourse does."""
    return subprocess.run(
        [str(GIT_DIR / script), *map(str, args)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    """The JSON response of a run that must have succeeded."""
    assert done.returncode == 0, f"exit {done.returncode}, stderr:\n{done.stderr}"
    return json.loads(done.stdout)


def failed(done: subprocess.CompletedProcess[str]) -> str:
    """The error line of a run that must have failed, and printed nothing on stdout."""
    assert done.returncode == 1, f"exit {done.returncode}, stdout: {done.stdout!r}"
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def closed_port() -> int:
    """A loopback port nothing listens on, so a connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------- layout


def test_resource_dirs_hold_the_three_executables() -> None:
    assert set(RESOURCE_DIRS) == {"gcs", "git", "time"}
    for script in ("check", "in", "out"):
        path = RESOURCE_DIRS["git"] / script
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o755, f"{path} has mode {oct(mode)}"
        assert path.read_text().startswith("#!/usr/bin/env python3\n")


# --------------------------------------------------------------------------- check


@pytest.mark.parametrize(
    ("source", "want"),
    [
        ({}, "four"),
        ({"branch": "main"}, "four"),
        ({"branch": "feature"}, "feature work"),
        ({"paths": ["src"]}, "three"),
        ({"paths": ["docs/*.md"]}, "four"),
        ({"ignore_paths": ["docs", "README"]}, "three"),
    ],
    ids=["default-branch", "main", "feature", "paths", "paths-glob", "ignore-paths"],
)
def test_check_without_version_reports_the_latest(
    origin: Origin, env: dict[str, str], source: dict[str, Any], want: str
) -> None:
    versions = ok(run("check", {"source": {"uri": origin.uri, **source}, "version": None}, env=env))
    assert versions == [{"ref": origin.shas[want]}]


@pytest.mark.parametrize(
    ("source", "start", "want"),
    [
        ({}, "two", ["two", "three", "four"]),
        ({}, "four", ["four"]),
        ({"paths": ["docs"]}, "two", ["two", "four"]),
        ({"paths": ["src"]}, "two", ["three"]),
        ({"ignore_paths": ["src"]}, "one", ["one", "two", "four"]),
        ({"branch": "feature"}, "one", ["one", "two", "feature work"]),
    ],
    ids=["all", "at-latest", "paths", "start-outside-paths", "ignore-paths", "branch"],
)
def test_check_from_a_version_lists_it_and_every_newer_one_oldest_first(
    origin: Origin, env: dict[str, str], source: dict[str, Any], start: str, want: list[str]
) -> None:
    request = {"source": {"uri": origin.uri, **source}, "version": {"ref": origin.shas[start]}}
    versions = ok(run("check", request, env=env))
    assert versions == [{"ref": origin.shas[name]} for name in want]


def test_check_again_after_a_push_uses_its_cache_and_sees_the_new_commit(
    origin: Origin, env: dict[str, str]
) -> None:
    source = {"uri": origin.uri, "paths": ["src"]}
    first = ok(run("check", {"source": source, "version": None}, env=env))
    five = origin.commit("five", {"src/app.py": "print('v2')\n"})
    again = ok(run("check", {"source": source, "version": first[-1]}, env=env))
    assert again == [{"ref": origin.shas["three"]}, {"ref": five}]
    assert list((Path(env["TMPDIR"]) / "jetbridge-git-cache").glob("*/HEAD"))


def test_check_from_a_version_that_is_gone_reports_the_latest(
    origin: Origin, env: dict[str, str]
) -> None:
    gone = "0123456789abcdef" * 2 + "01234567"
    request = {"source": {"uri": origin.uri}, "version": {"ref": gone}}
    assert ok(run("check", request, env=env)) == [{"ref": origin.shas["four"]}]


def test_check_with_tag_filter_reports_matching_tags(origin: Origin, env: dict[str, str]) -> None:
    # Ordered by creation as in Concourse: a lightweight tag by its commit's date,
    # an annotated one by when it was tagged (here: after every commit).
    origin.tag("v1.0.0", origin.shas["one"])
    origin.tag("v1.1.0", origin.shas["three"], annotated=True)
    origin.tag("nightly", origin.shas["four"])
    origin.tag("v2.0.0", origin.shas["four"], annotated=True)
    source = {"uri": origin.uri, "tag_filter": "v*"}

    latest = ok(run("check", {"source": source, "version": None}, env=env))
    assert latest == [{"ref": "v2.0.0", "commit": origin.shas["four"]}]

    since = ok(run("check", {"source": source, "version": {"ref": "v1.1.0"}}, env=env))
    assert since == [
        # An annotated tag's version names the commit it points to, not the tag object.
        {"ref": "v1.1.0", "commit": origin.shas["three"]},
        {"ref": "v2.0.0", "commit": origin.shas["four"]},
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({}, "source.uri is required"),
        ({"uri": "--upload-pack=touch /tmp/pwned"}, "source.uri must be a URL or a path"),
        ({"uri": ""}, "source.uri is required"),
        ({"uri": "ORIGIN", "branch": "nope"}, "branch nope not found in file://"),
        ({"uri": "ORIGIN", "paths": "src"}, None),
        ({"uri": "ORIGIN", "paths": [1]}, "source.paths must be a list of non-empty strings"),
        ({"uri": "ORIGIN", "git_config": [{"value": "x"}]}, "source.git_config must be a list"),
    ],
    ids=[
        "no-uri",
        "option-uri",
        "empty-uri",
        "unknown-branch",
        "paths-as-string-ok",
        "bad-paths",
        "bad-config",
    ],
)
def test_check_rejects_a_bad_source_with_one_clear_line(
    origin: Origin, env: dict[str, str], source: dict[str, Any], message: str | None
) -> None:
    source = {k: origin.uri if v == "ORIGIN" else v for k, v in source.items()}
    done = run("check", {"source": source, "version": None}, env=env)
    if message is None:
        assert ok(done) == [{"ref": origin.shas["three"]}]
    else:
        assert message in failed(done)


# --------------------------------------------------------------------------- in


def test_in_checks_out_the_exact_commit_and_describes_it(
    origin: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "build" / "repo"
    dest.mkdir(parents=True)
    sha = origin.shas["two"]
    request = {"source": {"uri": origin.uri}, "version": {"ref": sha}, "params": {}}

    response = ok(run("in", request, dest, env=env))

    assert response["version"] == {"ref": sha}
    metadata = {m["name"]: m["value"] for m in response["metadata"]}
    assert metadata == {
        "commit": sha,
        "author": "Ada Author <ada@example.com>",
        "author_date": "2024-01-01 00:02:00 +0000",
        "committer": "Cy Committer <cy@example.com>",
        "committer_date": "2024-01-01 00:02:00 +0000",
        "branch": "main",
        "message": "two",
    }
    assert git("rev-parse", "HEAD", cwd=dest, env=env) == sha
    assert git("status", "--porcelain", cwd=dest, env=env) == ""
    assert (dest / "docs/guide.md").read_text() == "guide v1\n"
    assert not (dest / "src").exists(), "a file from a later commit was checked out"
    assert (dest / ".git/ref").read_text().strip() == sha
    assert (dest / ".git/commit_message").read_text() == "two\n\nA longer body.\n"
    # Detached: a task that commits on top does not move a local branch by accident.
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=dest, env=env) == "HEAD"


def test_in_with_depth_still_finds_an_older_commit(
    origin: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "repo"
    sha = origin.shas["one"]
    request = {"source": {"uri": origin.uri}, "version": {"ref": sha}, "params": {"depth": 1}}
    assert ok(run("in", request, dest, env=env))["version"] == {"ref": sha}
    assert git("rev-parse", "HEAD", cwd=dest, env=env) == sha
    assert (dest / "README").read_text() == "hello\n"


def test_in_a_tag_version_from_check(origin: Origin, env: dict[str, str], tmp_path: Path) -> None:
    origin.tag("v1.0.0", origin.shas["three"], annotated=True)
    source = {"uri": origin.uri, "tag_filter": "v*"}
    [version] = ok(run("check", {"source": source, "version": None}, env=env))
    dest = tmp_path / "repo"
    response = ok(run("in", {"source": source, "version": version}, dest, env=env))
    assert response["version"] == version
    assert git("rev-parse", "HEAD", cwd=dest, env=env) == origin.shas["three"]
    assert (dest / ".git/ref").read_text().strip() == "v1.0.0"


def test_in_of_a_missing_ref_fails_naming_it(
    origin: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    missing = "deadbeef" * 5
    request = {"source": {"uri": origin.uri}, "version": {"ref": missing}}
    error = failed(run("in", request, tmp_path / "repo", env=env))
    assert error == f"error: ref {missing} not found in {origin.uri}"


# --------------------------------------------------------------------------- out


def clone_into_build(origin: Origin, env: dict[str, str], build: Path) -> Path:
    """What a job does before a put: get the repository, then commit in a task."""
    repo = build / "repo"
    request = {"source": {"uri": origin.uri}, "version": {"ref": origin.head()}}
    ok(run("in", request, repo, env=env))
    return repo


def commit_in(repo: Path, env: dict[str, str], name: str, content: str) -> str:
    (repo / name).write_text(content)
    git("add", name, cwd=repo, env=env)
    git("commit", "--quiet", "-m", f"add {name}", cwd=repo, env=env)
    return git("rev-parse", "HEAD", cwd=repo, env=env)


def test_out_pushes_the_new_commit_and_reports_its_sha(
    origin: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    build = tmp_path / "build"
    repo = clone_into_build(origin, env, build)
    sha = commit_in(repo, env, "built.txt", "artifact\n")
    (build / "version").write_text("v9.9.9\n")
    # No branch anywhere: the remote's default branch.
    request = {"source": {"uri": origin.uri}, "params": {"repository": "repo", "tag": "version"}}

    response = ok(run("out", request, build, env=env))

    assert response["version"] == {"ref": sha}
    metadata = {m["name"]: m["value"] for m in response["metadata"]}
    assert metadata["branch"] == "main"
    assert metadata["tag"] == "v9.9.9"
    assert origin.head("main") == sha
    assert git("rev-parse", "refs/tags/v9.9.9^{commit}", cwd=origin.bare, env=env) == sha


def test_out_to_another_branch_creates_it(
    origin: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    build = tmp_path / "build"
    sha = commit_in(clone_into_build(origin, env, build), env, "x", "x\n")
    request = {"source": {"uri": origin.uri}, "params": {"repository": "repo", "branch": "rc"}}
    assert ok(run("out", request, build, env=env))["version"] == {"ref": sha}
    assert origin.head("rc") == sha
    assert origin.head("main") == origin.shas["four"]


def test_out_rejected_push_fails_and_rebase_or_force_resolve_it(
    origin: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    build = tmp_path / "build"
    repo = clone_into_build(origin, env, build)
    mine = commit_in(repo, env, "mine.txt", "mine\n")
    theirs = origin.commit("theirs", {"theirs.txt": "theirs\n"})
    source = {"uri": origin.uri, "branch": "main"}

    def put(**params: Any) -> subprocess.CompletedProcess[str]:
        request = {"source": source, "params": {"repository": "repo", **params}}
        return run("out", request, build, env=env)

    error = failed(put())
    assert f"push to branch main of {origin.uri} was rejected" in error
    assert origin.head() == theirs

    rebased = ok(put(rebase=True))
    new = rebased["version"]["ref"]
    assert new != mine
    assert origin.head() == new
    assert git("rev-parse", f"{new}^", cwd=origin.bare, env=env) == theirs
    assert git("show", "-s", "--format=%s", new, cwd=origin.bare, env=env) == "add mine.txt"

    git("reset", "--quiet", "--hard", mine, cwd=repo, env=env)
    forced = ok(put(force=True))
    assert forced["version"] == {"ref": mine}
    assert origin.head() == mine


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "params.repository is required"),
        ({"repository": ""}, "params.repository is required"),
        ({"repository": "nope"}, "params.repository: 'nope' is not a directory under"),
        ({"repository": "../origin"}, "params.repository: '../origin' is not a directory under"),
        ({"repository": "plain"}, "is not a git repository with at least one commit"),
        ({"repository": "repo", "tag": "missing-file"}, "params.tag: 'missing-file' is not a file"),
        ({"repository": "repo", "force": "yes"}, "params.force must be true or false"),
    ],
    ids=["missing", "empty", "absent-dir", "outside-src", "not-a-repo", "no-tag-file", "bad-bool"],
)
def test_out_with_bad_params_fails_clearly_and_pushes_nothing(
    origin: Origin, env: dict[str, str], tmp_path: Path, params: dict[str, Any], message: str
) -> None:
    build = tmp_path / "build"
    commit_in(clone_into_build(origin, env, build), env, "x", "x\n")
    (build / "plain").mkdir()
    error = failed(run("out", {"source": {"uri": origin.uri}, "params": params}, build, env=env))
    assert message in error
    if params.get("repository") is None:
        assert "(found: plain, repo)" in error
    assert origin.head() == origin.shas["four"]


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("script", "source"),
    [
        ("check", {"uri": "https://ci:{password}@127.0.0.1:{port}/repo.git"}),
        ("check", {"uri": "https://127.0.0.1:{port}/", "username": "ci", "password": "{password}"}),
        ("in", {"uri": "https://ci:{password}@127.0.0.1:{port}/repo.git"}),
        ("out", {"uri": "https://ci:{password}@127.0.0.1:{port}/repo.git", "branch": "main"}),
        ("check", {"uri": "ssh://git@127.0.0.1:{port}/repo.git", "private_key": "{key}"}),
        ("check", {"uri": "https://127.0.0.1:{port}/", "git_config": "{header}"}),
        ("in", {"uri": "ssh://git@127.0.0.1:{port}/repo.git", "private_key": "{key}"}),
    ],
    ids=["check-uri", "check-fields", "in-uri", "out-uri", "check-key", "header", "in-key"],
)
def test_a_failing_run_never_prints_a_secret(
    origin: Origin, env: dict[str, str], tmp_path: Path, script: str, source: dict[str, str]
) -> None:
    port = closed_port()
    header = [{"name": "http.extraHeader", "value": f"Authorization: Bearer {PASSWORD}"}]
    request_source: dict[str, Any] = {
        k: header if v == "{header}" else v.format(password=PASSWORD, port=port, key=PRIVATE_KEY)
        for k, v in source.items()
    }
    build = tmp_path / "build"
    args: list[Path] = []
    request: dict[str, Any] = {"source": request_source, "version": {"ref": origin.shas["four"]}}
    if script == "in":
        args = [build / "repo"]
    elif script == "out":
        commit_in(clone_into_build(origin, env, build), env, "x", "x\n")
        request = {"source": request_source, "params": {"repository": "repo"}}
        args = [build]

    done = run(script, request, *args, env=env)

    error = failed(done)
    assert "127.0.0.1" in error, "the message should say which remote failed"
    key_lines = [line for line in PRIVATE_KEY.splitlines() if not line.startswith("-----")]
    for secret in [PASSWORD, *key_lines]:
        assert secret not in done.stderr
    for path in Path(env["TMPDIR"]).rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert PASSWORD.encode() not in content, f"{path} holds the password"
            assert key_lines[0].encode() not in content, f"{path} holds the private key"


def test_in_keeps_https_credentials_out_of_the_clone(
    origin: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    """Credentials in the uri go to git through the environment, never to .git/config."""
    dest = tmp_path / "repo"
    # A file:// remote ignores credentials, so the clone succeeds and can be inspected.
    source = {"uri": origin.uri, "username": "ci", "password": PASSWORD}
    request = {"source": source, "version": {"ref": origin.shas["four"]}}
    done = run("in", request, dest, env=env)
    ok(done)
    assert PASSWORD not in done.stderr
    assert PASSWORD not in (dest / ".git" / "config").read_text()
