"""``jetbridge serve`` end to end: a GitHub push over HTTP builds a real repository here.

The server runs in this process on a free loopback port, with the real
functions-framework, the in-process bus, the local runtime and SQLite. Everything
lives in a folder outside ``/tmp``: a step's pod gets a private ``/tmp`` and would
not see a repository kept there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cloudevents.conversion import to_binary
from sqlalchemy import func, select

from shared import events
from shared import status as st
from shared.cli import cli
from shared.db import BuildRow, DeliveryRow, StepRow, transaction
from shared.server import Server
from shared.settings import Settings
from tests.hooks import SECRET, body_of, github_headers, payload, post

ROOT = Path(__file__).resolve().parent.parent
MAKE_REPO = ROOT / "examples" / "demo" / "make_repo.py"

PIPELINE = """\
resources:
- name: source
  type: git
  source: {uri: ((repo)), branch: main}
jobs:
- name: test
  plan:
  - get: source
    trigger: true
  - task: check
    config:
      platform: linux
      inputs: [{name: source}]
      run:
        path: sh
        args: [-ec, "echo built $(cat source/.git/ref); test -f source/greet.py"]
"""


@pytest.fixture
def workspace() -> Iterator[Path]:
    base = ROOT / ".jetbridge-test"
    base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def jetbridge(data: Path, *args: str) -> Any:
    result = CliRunner().invoke(
        cli,
        ["--data-dir", str(data), *args],
        env={"JETBRIDGE_DATABASE_URL": "", "JETBRIDGE_EVENT_SINK": ""},
    )
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def served(workspace: Path) -> Iterator[tuple[Server, Path]]:
    """A repository, its pipeline set and unpaused by the CLI, and ``jetbridge serve``."""
    origin = workspace / "origin.git"
    subprocess.run([sys.executable, str(MAKE_REPO), str(origin)], check=True, capture_output=True)
    (workspace / "pipeline.yml").write_text(PIPELINE)
    data = workspace / "data"
    jetbridge(
        data,
        "set-pipeline",
        "-p",
        "demo",
        "-c",
        str(workspace / "pipeline.yml"),
        "-v",
        f"repo={origin}",
        "-n",
    )
    jetbridge(data, "unpause-pipeline", "demo")
    settings = Settings(data_dir=data, webhook_secrets=json.dumps({"demo": SECRET}))
    server = Server(settings, host="127.0.0.1", port=0, reaper_interval=3600)
    server.start()
    yield server, origin
    server.stop()


def head_of(origin: Path) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(origin), "rev-parse", "main"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def rows(server: Server) -> dict[str, int]:
    with transaction(server.ci.deps.sessions) as session:
        return {
            t.__tablename__: int(session.scalar(select(func.count()).select_from(t)) or 0)
            for t in (BuildRow, StepRow, DeliveryRow)
        }


def wait_for_build(server: Server, build_id: int, timeout: float = 120) -> BuildRow:
    """Poll the database until the build ends (a deadline, not a sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while True:
        with transaction(server.ci.deps.sessions) as session:
            build = session.get(BuildRow, build_id)
        assert build is not None
        if build.status in st.BUILD_TERMINAL:
            return build
        assert time.monotonic() < deadline, f"build {build_id} still {build.status}"
        time.sleep(0.05)


def test_a_github_push_to_serve_builds_the_pushed_commit_once(served: tuple[Server, Path]) -> None:
    server, origin = served
    sha = head_of(origin)
    # GitHub's push, for a repository whose clone URL is the origin made here.
    data = payload(
        "github-push", after=sha, **{"repository.clone_url": str(origin), "head_commit.id": sha}
    )
    data["commits"][0]["id"] = sha
    body = body_of(data)
    headers = github_headers(body, delivery="f0c0a7a0-1d6e-11ef-8a3e-5d6a4c1e2b3f")

    status, answer = post(f"{server.url}/webhooks/demo", body, headers)
    assert status == 201, answer
    ((build_ref),) = answer["builds"]
    build = wait_for_build(server, build_ref["id"])
    assert build.status == st.SUCCEEDED, build.error
    assert build.versions == {"source": {"ref": sha}}
    with transaction(server.ci.deps.sessions) as session:
        check = session.scalars(select(StepRow).where(StepRow.name == "check")).one()
    log = server.ci.deps.logs.read(build.id, check.key)
    assert log is not None and f"built {sha}" in log.decode()
    written = rows(server)

    again, repeat = post(f"{server.url}/webhooks/demo", body, headers)
    assert again == 200
    assert repeat["builds"] == [{**build_ref, "status": "succeeded"}]
    assert rows(server) == written

    forged, refused = post(f"{server.url}/webhooks/demo", body, github_headers(body, "guessed"))
    assert forged == 401
    assert "X-Hub-Signature-256 does not match" in refused["error"]
    assert rows(server) == written


def test_serve_takes_cloudevents_at_each_functions_path(served: tuple[Server, Path]) -> None:
    server, _ = served
    event = events.make_event(events.BUILD_REQUESTED, {"pipeline": "demo", "job": "test"})
    headers, body = to_binary(event)
    assert post(f"{server.url}/trigger", body, headers)[0] == 200
    with transaction(server.ci.deps.sessions) as session:
        build = session.scalars(select(BuildRow).where(BuildRow.event_id == event["id"])).one()
    assert wait_for_build(server, build.id).status == st.SUCCEEDED
    unknown = events.make_event("com.example.unknown", {})
    headers, body = to_binary(unknown)
    status, answer = post(f"{server.url}/step-runner", body, headers)
    assert (
        status == 400 and "does not handle events of type 'com.example.unknown'" in answer["error"]
    )
    ping = events.make_event(events.PING, {})
    headers, body = to_binary(ping)
    assert post(f"{server.url}/reaper", body, headers)[0] == 200
    assert post(f"{server.url}/healthz", b"", {}, method="GET") == (200, {"text": "ok\n"})
    status, answer = post(f"{server.url}/nowhere", b"", {}, method="GET")
    assert status == 404 and "/webhooks" in answer["routes"]


def test_trigger_job_sends_to_serve_and_builds_watch_follows_until_idle(
    served: tuple[Server, Path],
) -> None:
    server, _ = served
    data = server.ci.settings.data_dir
    env = {"JETBRIDGE_DATABASE_URL": "", "JETBRIDGE_EVENT_SINK": f"{server.url}/trigger"}
    sent = CliRunner().invoke(cli, ["--data-dir", str(data), "trigger-job", "demo/test"], env=env)
    assert sent.exit_code == 0, sent.output
    assert sent.stdout.startswith("build demo/test #1 (id 1) ")
    watched = CliRunner().invoke(
        cli,
        ["--data-dir", str(data), "builds", "--watch", "--until-idle", "--interval", "0.05"],
        env=env,
    )
    assert watched.exit_code == 0, watched.output
    statuses = [line.split()[3] for line in watched.stdout.splitlines()[1:]]
    assert statuses[-1] == "succeeded"
    followed = CliRunner().invoke(
        cli, ["--data-dir", str(data), "trigger-job", "demo/test", "--watch"], env=env
    )
    assert followed.exit_code == 0, followed.output
    assert "✓ task check succeeded" in followed.stdout
    assert followed.stdout.splitlines()[-1] == "build demo/test #2 (id 2) succeeded"


def test_the_reaper_ticks_on_its_schedule(workspace: Path) -> None:
    server = Server(Settings(data_dir=workspace / "data"), port=0, reaper_interval=0.01)
    with server:
        deadline = time.monotonic() + 30
        while server.ci.last_report is None:
            assert time.monotonic() < deadline, "no reaper tick"
            time.sleep(0.01)
    assert server.ci.last_report.errors == []
