"""Structured logs: the JSON line Cloud Logging reads, the ids on it, and secrets kept out of it."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from sqlalchemy import select

from shared import app, events, logs
from shared import status as st
from shared.db import BuildRow, StepRow, transaction
from shared.local import LocalCI
from shared.settings import Settings
from shared.webhooks import signature
from tests.http import installed_deps, serve_function
from tests.test_functions import PIPELINE, post

ROOT = Path(__file__).resolve().parent.parent
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """JetBridge's JSON log, at DEBUG, into a buffer; the logging set-up is undone after."""
    buffer = io.StringIO()
    logs.setup("json", level="DEBUG", stream=buffer)
    yield buffer
    logs.reset()
    logging.getLogger().setLevel(logging.WARNING)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (logging.DEBUG, "DEBUG"),
        (logging.INFO, "INFO"),
        (logging.WARNING, "WARNING"),
        (logging.ERROR, "ERROR"),
        (logging.CRITICAL, "CRITICAL"),
    ],
    ids=["debug", "info", "warning", "error", "critical"],
)
def test_a_json_line_has_what_cloud_logging_reads(
    captured: io.StringIO, level: int, severity: str
) -> None:
    logging.getLogger("shared.test").log(level, "step %s of build %d", "unit", 3)
    (line,) = lines(captured)
    assert line["severity"] == severity
    assert line["message"] == "step unit of build 3"
    assert TIME.fullmatch(line["time"])
    assert line["logger"] == "shared.test"
    assert line["logging.googleapis.com/sourceLocation"]["function"] == (
        "test_a_json_line_has_what_cloud_logging_reads"
    )


def test_bound_ids_are_on_every_line_inside_and_gone_after(captured: io.StringIO) -> None:
    log = logging.getLogger("shared.test")
    with logs.bound(event_id="e1", event_type=events.STEP_READY, build_id=3):
        log.info("outer")
        with logs.bound(step_id=7, job=None):
            log.warning("inner")
    log.info("after")
    outer, inner, after = lines(captured)
    assert (outer["event_id"], outer["build_id"], "step_id" in outer) == ("e1", 3, False)
    assert (inner["event_id"], inner["build_id"], inner["step_id"]) == ("e1", 3, 7)
    assert "job" not in inner  # None is left out
    assert not {"event_id", "build_id", "step_id"} & set(after)
    with pytest.raises(ValueError, match="unknown log context field"), logs.bound(colour="red"):
        pass


def test_a_traceback_is_in_the_message(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        logging.getLogger("shared.test").exception("tick failed")
    (line,) = lines(captured)
    assert line["severity"] == "ERROR"
    assert line["message"].startswith("tick failed\nTraceback (most recent call last):")
    assert "RuntimeError: disk on fire" in line["message"]


def test_text_lines_name_the_ids() -> None:
    buffer = io.StringIO()
    logs.setup("text", stream=buffer)
    try:
        with logs.bound(build_id=3, step_id=7, event_type="x"):
            logging.getLogger("shared.test").warning("slow")
    finally:
        logs.reset()
    assert buffer.getvalue() == "WARNING shared.test: slow [build_id=3 step_id=7]\n"


def test_setup_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    try:
        logs.setup("json")
        logs.setup("text")
        ours = [h for h in root.handlers if getattr(h, "jetbridge", False)]
        assert len(ours) == 1 and other in root.handlers
        with pytest.raises(ValueError, match="log format must be one of json, text"):
            logs.setup("xml")
    finally:
        logs.reset()
        root.removeHandler(other)
    assert not [h for h in root.handlers if getattr(h, "jetbridge", False)]


def test_known_secrets_are_masked_wherever_they_appear(captured: io.StringIO) -> None:
    redactor = logs.Redactor()
    redactor.add(["hunter2-longer", "hunter2-longer-still", "short", 12345678])
    formatter = logs.JsonFormatter(redactor=redactor)
    record = logging.LogRecord(
        "shared.test", logging.ERROR, __file__, 1, "login with %s failed", ("hunter2-longer",), None
    )
    try:
        raise ValueError("password hunter2-longer-still refused")
    except ValueError:
        record.exc_info = sys.exc_info()
    record.jetbridge = {"job": "deploy-hunter2-longer"}
    line = json.loads(formatter.format(record))
    assert "hunter2" not in json.dumps(line)
    assert line["message"].startswith("login with *** failed")
    assert "password *** refused" in line["message"]  # the longer secret masked whole
    assert line["job"] == "deploy-***"
    assert redactor.scrub("short 12345678") == "short 12345678"  # too short; not a string


def test_secret_values_and_url_passwords() -> None:
    variables = {"token": "abc", "nested": {"list": ["x", {"deep": "y"}]}, "n": 3}
    assert sorted(logs.secret_values(variables)) == ["abc", "x", "y"]
    assert logs.url_password("postgresql+pg8000://app:p%40ss@db/jetbridge") == "p@ss"
    assert logs.url_password("sqlite:////tmp/jetbridge.db") is None


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[Any]:
    with installed_deps(Settings(data_dir=tmp_path), {"demo": PIPELINE}) as deps:
        yield deps


def test_a_function_logs_json_lines_with_the_event_ids(
    deps: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served as in the cluster: the function's module sets up JSON logs on stderr."""
    monkeypatch.setenv("JETBRIDGE_RUNTIME", "kubernetes")  # what makes JSON the default
    monkeypatch.delenv("JETBRIDGE_LOG_FORMAT", raising=False)
    event = events.make_event(events.BUILD_REQUESTED, {"pipeline": "demo", "job": "build"})
    with serve_function("trigger") as url:
        assert post(url, event)[0] == 200
        bad = events.make_event(events.BUILD_REQUESTED, {"pipeline": "nope", "job": "build"})
        assert post(url, bad)[0] == 404
    found = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    handled = [
        line for line in found if line["message"].startswith(f"{events.BUILD_REQUESTED} handled")
    ]
    assert handled, found
    (line,) = handled
    assert line["severity"] == "INFO"
    assert (line["event_id"], line["event_type"]) == (event["id"], events.BUILD_REQUESTED)
    assert (line["pipeline"], line["job"]) == ("demo", "build")
    assert isinstance(line["build_id"], int)
    (refused,) = [line for line in found if line.get("event_id") == bad["id"]]
    assert refused["severity"] == "WARNING"
    assert refused["message"].startswith(f"{events.BUILD_REQUESTED} failed after ")
    assert "no pipeline named 'nope'" in refused["message"]
    assert refused["pipeline"] == "nope"


def test_outside_the_cluster_a_function_keeps_the_commands_own_log(
    deps: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``jetbridge serve`` loads the functions' modules: its text log stays, unless asked."""
    monkeypatch.delenv("JETBRIDGE_RUNTIME", raising=False)
    monkeypatch.delenv("JETBRIDGE_LOG_FORMAT", raising=False)

    def ours() -> list[logging.Handler]:
        return [h for h in logging.getLogger().handlers if getattr(h, "jetbridge", False)]

    with serve_function("reaper"):
        assert ours() == []
    monkeypatch.setenv("JETBRIDGE_LOG_FORMAT", "text")
    with serve_function("reaper"):
        (handler,) = ours()
        assert isinstance(handler.formatter, logs.TextFormatter)


# -- a build with secrets ------------------------------------------------------------------

TOKEN = "tok-3f9a1c7e5b2d4a6890"
WEBHOOK_SECRET = "whsec-8b1d2e4f6a9c0357"

SECRET_PIPELINE = """
resources:
- name: source
  type: git
  source: {uri: ((repo)), branch: main}
jobs:
- name: build
  plan:
  - get: source
    trigger: true
  - task: use-the-token
    config:
      platform: linux
      image_resource: {type: registry-image, source: {repository: busybox}}
      inputs: [{name: source}]
      params: {TOKEN: ((token))}
      run:
        path: sh
        args: [-ec, 'test "${#TOKEN}" -gt 10; echo "the token is set"']
"""


@pytest.fixture
def workspace() -> Iterator[Path]:
    """Outside ``/tmp``: a step's pod has a private ``/tmp`` and must see the repository."""
    base = ROOT / ".jetbridge-test"
    base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_build_with_a_secret_var_and_a_webhook_secret_logs_neither(
    workspace: Path, captured: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    origin = workspace / "origin.git"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo" / "make_repo.py"), str(origin)],
        check=True,
        capture_output=True,
    )
    commit = subprocess.run(
        ["git", "-C", str(origin), "rev-parse", "main"], check=True, capture_output=True, text=True
    ).stdout.strip()
    settings = Settings(
        data_dir=workspace / "data", webhook_secrets=json.dumps({"secretive": WEBHOOK_SECRET})
    )
    seen: list[Any] = []
    with LocalCI(settings) as ci:
        ci.set_pipeline("secretive", SECRET_PIPELINE, {"repo": str(origin), "token": TOKEN})
        ci.bus.observe(seen.append)
        body = json.dumps({"repository": str(origin), "branch": "main", "commit": commit}).encode()
        signed = signature(WEBHOOK_SECRET, body)
        app.install(ci.deps)
        try:
            with serve_function("trigger", target="webhook", signature_type="http") as url:
                logs.setup("json", level="DEBUG", stream=captured)  # the module set up stderr
                request = urllib.request.Request(
                    url + "webhooks/secretive",
                    data=body,
                    method="POST",
                    headers={
                        "Content-Type": "application/json",
                        "X-JetBridge-Event": "push",
                        "X-JetBridge-Delivery": "delivery-1",
                        "X-JetBridge-Signature-256": signed,
                    },
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = response.read().decode()
        finally:
            app.install(None)
        (build,) = json.loads(answer)["builds"]

        def finished() -> bool:
            with transaction(ci.deps.sessions) as session:
                row = session.get(BuildRow, build["id"])
                return row is not None and row.status in st.BUILD_TERMINAL

        assert ci.bus.run_until(finished, timeout=120)
        ci.bus.drain()
        ci.tick()
        with transaction(ci.deps.sessions) as session:
            status = session.get(BuildRow, build["id"]).status  # type: ignore[union-attr]
            steps = session.scalars(select(StepRow).where(StepRow.build_id == build["id"])).all()
            stored = [(s.key, s.status, s.error, s.result) for s in steps]
        step_logs = [ci.deps.logs.read(build["id"], key) or b"" for key, *_ in stored]
        secrets_left = ci.deps.runtime.secret_names()
    out, err = capfd.readouterr()
    pods = [events.event_data(e) for e in seen if e["type"] in events.POD_EVENTS]
    assert pods, "the build's pod events were seen"
    task_env = {
        var["name"]: var
        for pod in pods
        for var in pod["spec"]["containers"][0].get("env", [])
        if "use-the-token" in pod["metadata"]["name"]
    }
    assert task_env["TOKEN"] == {
        "name": "TOKEN",
        "valueFrom": {"secretKeyRef": {"name": f"jb-{build['id']}-secrets", "key": ANY}},
    }
    assert secrets_left == []  # the build finished, and the reaper's tick removed its Secret

    assert status == st.SUCCEEDED, stored
    assert b"the token is set" in b"".join(step_logs)  # the step had the secret and used it
    jetbridge_log = captured.getvalue()
    assert '"event_type": "webhook"' in jetbridge_log and '"build_id"' in jetbridge_log
    everything = "\n\x00\n".join(
        [
            jetbridge_log,
            out,
            err,
            answer,
            json.dumps(stored, default=str),
            # Every event, the pods' included: a pod refers to its credentials in the
            # build's Secret, so the pod as the API shows it holds none.
            json.dumps([events.event_data(e) for e in seen], default=str),
            b"".join(step_logs).decode(errors="replace"),
        ]
    )
    for secret in (TOKEN, WEBHOOK_SECRET, signed, signed.removeprefix("sha256=")):
        where = [i for i, part in enumerate(everything.split("\n\x00\n")) if secret in part]
        assert not where, f"{secret} found in part(s) {where} of the captured output"
    # Not even masked: no JetBridge line tried to show a secret (the mask is a backstop).
    assert logs.MASK not in jetbridge_log
