"""The built-in time resource, run as Concourse runs it, on an injected clock.

Every script runs as a subprocess with ``JETBRIDGE_NOW`` set, so each case is a
moment chosen by the test: no sleeps, no dependence on when the suite runs.
The last test shows both built-in types pass ``jetbridge validate``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from shared.cli import cli
from shared.pipeline import BUILTIN_RESOURCE_TYPES, GetStep, PutStep, parse_pipeline
from shared.resources import RESOURCE_DIRS

TIME_DIR = RESOURCE_DIRS["time"]

#: Standard library only: a run takes milliseconds; a hung one fails the test.
SCRIPT_TIMEOUT = 30


def run(
    script: str, request: Mapping[str, Any], *args: str | Path, now: str
) -> subprocess.CompletedProcess[str]:
    """Run ``/opt/resource/<script>`` the way Concourse does, at the moment ``now``."""
    env = {k: v for k, v in os.environ.items() if k != "TZ"}
    env["JETBRIDGE_NOW"] = now
    return subprocess.run(
        [str(TIME_DIR / script), *map(str, args)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, f"exit {done.returncode}, stderr:\n{done.stderr}"
    return json.loads(done.stdout)


def failed(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, f"exit {done.returncode}, stdout: {done.stdout!r}"
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def check(source: Mapping[str, Any], previous: str | None, now: str) -> list[str]:
    """The times ``check`` answers at ``now`` after version ``previous``."""
    request = {"source": source, "version": {"time": previous} if previous else None}
    return [v["time"] for v in ok(run("check", request, now=now))]


@pytest.mark.parametrize("script", ["check", "in", "out"])
def test_scripts_are_self_contained_executables(script: str) -> None:
    path = TIME_DIR / script
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert path.read_text().startswith("#!/usr/bin/env python3\n")
    module = (TIME_DIR / "_timeresource.py").read_text()
    assert "import shared" not in module and "from shared" not in module


# --------------------------------------------------------------------------- check

# 2024-03-01 is a Friday.
NOON = "2024-03-01T12:00:00Z"


@pytest.mark.parametrize(
    ("source", "previous", "now", "want"),
    [
        ({"interval": "5m"}, None, NOON, [NOON]),
        ({"interval": "5m"}, "2024-03-01T11:56:00Z", NOON, ["2024-03-01T11:56:00Z"]),
        (
            {"interval": "5m"},
            "2024-03-01T11:55:00Z",
            NOON,
            ["2024-03-01T11:55:00Z", NOON],
        ),
        (
            # Go's nanoseconds: the given version is echoed as it came, never rewritten.
            {"interval": "1h30m"},
            "2024-03-01T10:29:59.999999999Z",
            "2024-03-01T12:00:00.25Z",
            ["2024-03-01T10:29:59.999999999Z", "2024-03-01T12:00:00.25Z"],
        ),
        ({"start": "11:00", "stop": "13:00"}, None, NOON, [NOON]),
        ({"start": "13:00", "stop": "14:00"}, None, NOON, []),
        (
            {"start": "11:00", "stop": "13:00"},
            "2024-03-01T11:30:00Z",
            NOON,
            ["2024-03-01T11:30:00Z"],
        ),
        (
            {"start": "11:00", "stop": "13:00"},
            "2024-02-29T11:30:00Z",
            NOON,
            ["2024-02-29T11:30:00Z", NOON],
        ),
        (
            {"start": "10 PM", "stop": "2 AM"},
            "2024-02-29T23:00:00Z",
            "2024-03-01T01:00:00Z",
            ["2024-02-29T23:00:00Z"],
        ),
        (
            {"start": "10 PM", "stop": "2 AM", "interval": "1h"},
            "2024-02-29T23:00:00Z",
            "2024-03-01T01:00:00Z",
            ["2024-02-29T23:00:00Z", "2024-03-01T01:00:00Z"],
        ),
        ({"interval": "1m", "days": ["Monday", "sat"]}, None, NOON, []),
        ({"interval": "1m", "days": ["FRIDAY"]}, None, NOON, [NOON]),
        # 12:00 UTC is 07:00 in New York (EST); the window is in New York's hours.
        ({"start": "8:00 AM", "stop": "9:00 AM", "location": "America/New_York"}, None, NOON, []),
        (
            {"start": "8:00 AM", "stop": "9:00 AM", "location": "America/New_York"},
            None,
            "2024-03-01T13:15:00Z",
            ["2024-03-01T08:15:00-05:00"],
        ),
        (
            # Berlin moved to summer time that night: 09:30 there is 07:30 UTC.
            {"start": "09:00", "stop": "10:00", "location": "Europe/Berlin"},
            "2024-03-30T08:30:00+01:00",
            "2024-03-31T07:30:00Z",
            ["2024-03-30T08:30:00+01:00", "2024-03-31T09:30:00+02:00"],
        ),
        (
            # New York's 01:00-01:30 happens twice on 2024-11-03; as in Go, the window is
            # the first (EDT), so the second pass (EST, 06:15 UTC) is outside it.
            {"start": "01:00", "stop": "01:30", "location": "America/New_York"},
            None,
            "2024-11-03T06:15:00Z",
            [],
        ),
        (
            {"start": "9:00 AM -0500", "stop": "10:00 AM -0500"},
            None,
            "2024-03-01T14:30:00Z",
            ["2024-03-01T14:30:00Z"],
        ),
        ({"start": "9:00 AM -0500", "stop": "10:00 AM -0500"}, None, "2024-03-01T13:30:00Z", []),
        ({"start": "13:00", "stop": "14:00", "initial_version": True}, None, NOON, [NOON]),
        ({"interval": "1m", "start_after": "2024-03-01T12:30"}, None, NOON, []),
        ({"interval": "1m", "start_after": "2024-03-01"}, None, NOON, [NOON]),
        # Neither interval nor window: the window is the whole day, one version a day.
        ({}, "2024-03-01T00:10:00Z", NOON, ["2024-03-01T00:10:00Z"]),
        ({}, "2024-02-29T23:50:00Z", NOON, ["2024-02-29T23:50:00Z", NOON]),
    ],
    ids=[
        "interval-first",
        "interval-not-yet",
        "interval-passed",
        "nanoseconds-echoed",
        "window-inside",
        "window-before",
        "window-once-per-window",
        "window-next-day",
        "window-across-midnight-once",
        "window-across-midnight-interval",
        "days-other",
        "days-today",
        "location-outside",
        "location-inside",
        "location-dst",
        "location-repeated-hour",
        "offset-inside",
        "offset-outside",
        "initial-version-outside-window",
        "start-after-future",
        "start-after-past",
        "daily-same-day",
        "daily-next-day",
    ],
)
def test_check_emits_now_only_when_a_new_version_is_due(
    source: dict[str, Any], previous: str | None, now: str, want: list[str]
) -> None:
    assert check(source, previous, now) == want


def test_a_pipeline_checking_every_minute_gets_a_version_every_five() -> None:
    """Concourse feeds each check the last version; new ones come 5 minutes apart."""
    source = {"interval": "5m"}
    latest = None
    emitted = []
    for minute in range(13):
        now = f"2024-03-01T12:{minute:02d}:00Z"
        versions = check(source, latest, now)
        if versions[-1] != latest:
            emitted.append(versions[-1])
        latest = versions[-1]
    assert emitted == ["2024-03-01T12:00:00Z", "2024-03-01T12:05:00Z", "2024-03-01T12:10:00Z"]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"source": {"interval": "5 minutes"}}, "source.interval: '5 minutes' is not a duration"),
        ({"source": {"interval": "-5m"}}, "source.interval must be a positive duration"),
        ({"source": {"interval": 300}}, "source.interval must be a positive duration"),
        ({"source": {"start": "9:00"}}, "source.start is set but source.stop is not"),
        ({"source": {"start": "9", "stop": "10"}}, "source.start '9' needs minutes"),
        (
            {"source": {"start": "25:00", "stop": "26:00"}},
            "source.start '25:00' is not a time of day",
        ),
        (
            {"source": {"location": "Mars/Olympus"}},
            "source.location 'Mars/Olympus' is not a known time zone",
        ),
        ({"source": {"location": "../../etc/passwd"}}, "is not a known time zone"),
        ({"source": {"days": ["Funday"]}}, "source.days: unknown weekday 'Funday'"),
        ({"source": {"days": "Monday"}}, "source.days must be a list of weekday names"),
        ({"source": {"cron": "0 * * * *"}}, "source.cron is not supported"),
        ({"source": {}, "version": {"time": "yesterday"}}, "version.time must be an RFC 3339 time"),
        ({"source": {}, "version": {"ref": "abc"}}, 'version must be {"time": "<RFC 3339>"}'),
    ],
    ids=[
        "interval-words",
        "interval-negative",
        "interval-number",
        "start-alone",
        "start-no-minutes",
        "start-out-of-range",
        "unknown-location",
        "location-path",
        "unknown-day",
        "days-not-a-list",
        "cron",
        "bad-version",
        "other-resources-version",
    ],
)
def test_a_bad_request_fails_with_one_clear_line(request_: dict[str, Any], message: str) -> None:
    assert message in failed(run("check", request_, now=NOON))


def test_a_bad_injected_clock_is_refused() -> None:
    error = failed(run("check", {"source": {"interval": "1m"}}, now="noon"))
    assert "JETBRIDGE_NOW must be an RFC 3339 time" in error


def test_unknown_source_keys_are_ignored_with_a_warning() -> None:
    done = run("check", {"source": {"interval": "1m", "intervall": "5m"}}, now=NOON)
    assert ok(done) == [{"time": NOON}]
    assert "warning: ignoring source.intervall" in done.stderr


# --------------------------------------------------------------------------- in and out


def test_in_writes_the_request_and_the_timestamp(tmp_path: Path) -> None:
    source = {"interval": "1h", "location": "America/New_York"}
    version = {"time": "2024-03-01T07:00:00.5-05:00"}
    dest = tmp_path / "tick"

    response = ok(run("in", {"source": source, "version": version, "params": {}}, dest, now=NOON))

    assert response == {"version": version, "metadata": []}
    assert json.loads((dest / "input").read_text()) == {"source": source, "version": version}
    assert (dest / "timestamp").read_text() == "2024-03-01 07:00:00.5 -0500 -0500"


def test_out_reports_now_in_the_sources_location() -> None:
    response = ok(
        run("out", {"source": {"location": "Asia/Kolkata"}, "params": {}}, "/unused", now=NOON)
    )
    assert response == {"version": {"time": "2024-03-01T17:30:00+05:30"}, "metadata": []}


# --------------------------------------------------------------------------- pipelines


PIPELINE = """
resources:
- name: every-5m
  type: time
  source: {interval: 5m, location: Europe/Berlin, days: [Monday, Friday]}
- name: release
  type: gcs
  source:
    bucket: releases
    regexp: builds/release-(.*)\\.tgz
    json_key: ((gcs_key))
jobs:
- name: build
  plan:
  - get: every-5m
    trigger: true
  - get: release
    params: {unpack: true}
  - put: release
    params: {file: release/release-*.tgz, predefined_acl: publicRead}
"""


def test_jetbridge_validate_accepts_a_pipeline_using_both_types(tmp_path: Path) -> None:
    assert {"gcs", "time"} <= BUILTIN_RESOURCE_TYPES
    assert {"gcs", "time"} <= set(RESOURCE_DIRS)

    pipeline = parse_pipeline(PIPELINE, variables={"gcs_key": "{}"})

    assert {r.name: r.type for r in pipeline.resources} == {"every-5m": "time", "release": "gcs"}
    steps = pipeline.jobs[0].plan
    assert [type(s) for s in steps] == [GetStep, GetStep, PutStep]

    path = tmp_path / "pipeline.yml"
    path.write_text(PIPELINE)
    result = CliRunner().invoke(cli, ["validate", str(path), "-v", "gcs_key={}"])
    assert result.exit_code == 0, result.output
    assert "valid (1 job(s), 2 resource(s))" in result.output


def test_jetbridge_validate_still_refuses_an_unknown_type(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(PIPELINE.replace("type: time", "type: tme"))
    result = CliRunner().invoke(cli, ["validate", str(path), "-v", "gcs_key={}"])
    assert result.exit_code != 0
    assert "has type 'tme', which is neither built in (gcs, git, time)" in textwrap.dedent(
        result.output
    )
