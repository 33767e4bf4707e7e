"""``GET /metrics`` on every function, served by the real functions-framework over HTTP.

A build runs through the three functions (trigger, step runner, reaper) with real
CloudEvents; after each one the function that took it is scraped, and the values
it should have moved are read back with Prometheus' own text parser.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from shared import app, events
from shared.db import ArtifactRow, transaction
from shared.settings import Settings
from tests.http import installed_deps, serve_function
from tests.test_functions import PIPELINE, post

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[str, Samples]:
    """The function's ``/metrics``: its content type and every sample, by name and labels."""
    with urllib.request.urlopen(url + "metrics", timeout=10) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return content_type, samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[Any]:
    with installed_deps(Settings(data_dir=tmp_path), {"demo": PIPELINE}) as deps:
        yield deps


@pytest.fixture
def functions(deps: Any) -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(serve_function(name))
            for name in ("trigger", "step_runner", "reaper")
        }


def emitted(deps: Any, type_: str) -> list[Any]:
    return [e for e in deps.sink.events if e["type"] == type_]


def test_each_function_serves_metrics_that_move_with_a_build(
    deps: Any, functions: dict[str, str]
) -> None:
    trigger, runner, reaper = functions["trigger"], functions["step_runner"], functions["reaper"]
    for url in functions.values():
        content_type, before = scrape(url)
        assert content_type.startswith("text/plain; version=0.0.4")
        assert get(before, "jetbridge_builds_started_total") == 0

    # trigger: a build request (pinned, so one get step and no check).
    request = events.make_event(
        events.BUILD_REQUESTED,
        {"pipeline": "demo", "job": "build", "versions": {"repo": {"ref": "abc123"}}},
    )
    assert post(trigger, request)[0] == 200
    assert post(trigger, request)[0] == 200  # redelivered: no second build
    _, after = scrape(trigger)
    assert get(after, "jetbridge_builds_started_total") == 1
    assert get(after, "jetbridge_steps_started_total") == 1
    assert get(after, "jetbridge_event_handling_seconds_count", type=events.BUILD_REQUESTED) == 2

    # step runner: the step's pod is launched; it writes 1000 bytes; it ends 42 s later.
    (ready,) = emitted(deps, events.STEP_READY)
    assert post(runner, ready)[0] == 200
    _, after = scrape(runner)
    assert get(after, "jetbridge_pod_launches_total") == 1
    assert get(after, "jetbridge_artifacts_created_total") == 1
    (name,) = deps.runtime.pods
    with transaction(deps.sessions) as session:
        (subpath,) = session.scalars(select(ArtifactRow.subpath)).all()
    (deps.settings.effective_store_root / subpath / "out.bin").write_bytes(b"x" * 1000)
    created = deps.clock()
    deps.clock.advance(42)
    pod = deps.runtime.finish(name, message='{"version": {"ref": "abc123"}}')
    pod["metadata"]["creationTimestamp"] = created.isoformat()
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["startedAt"] = (
        created + timedelta(seconds=3)
    ).isoformat()
    update = events.make_event(events.POD_UPDATE, pod, source="/apis/v1/namespaces/ci/pods")
    assert post(runner, update)[0] == 200
    assert post(runner, update)[0] == 200  # redelivered: counted once
    _, after = scrape(runner)
    assert get(after, "jetbridge_steps_finished_total", kind="get", status="succeeded") == 1
    assert get(after, "jetbridge_step_duration_seconds_count", kind="get", status="succeeded") == 1
    assert get(after, "jetbridge_step_duration_seconds_sum", kind="get", status="succeeded") == 42
    assert get(after, "jetbridge_pod_startup_seconds_count") == 1
    assert get(after, "jetbridge_pod_startup_seconds_sum") == 3
    assert get(after, "jetbridge_builds_finished_total", status="succeeded") == 1
    assert get(after, "jetbridge_pod_deletions_total") >= 1
    assert get(after, "jetbridge_store_bytes", state="ready") == 1000
    assert get(after, "jetbridge_store_artifacts", state="ready") == 1
    assert get(after, "jetbridge_event_handling_seconds_count", type=events.POD_UPDATE) == 2

    # reaper: the finished build's artifact goes.
    ping = events.make_event(events.PING, {}, source="/apis/v1/namespaces/ci/pingsources/reaper")
    assert post(reaper, ping)[0] == 200
    _, after = scrape(reaper)
    assert get(after, "jetbridge_reaper_ticks_total", outcome="ok") == 1
    assert get(after, "jetbridge_reaper_tick_duration_seconds_count") == 1
    assert get(after, "jetbridge_reaper_artifacts_reaped_total") == 1
    assert get(after, "jetbridge_reaper_reaped_bytes_total") == 1000
    assert get(after, "jetbridge_reaper_last_success_timestamp_seconds") == pytest.approx(
        deps.clock().timestamp()
    )
    assert get(after, "jetbridge_store_bytes", state="ready") == 0
    assert get(after, "jetbridge_pod_failures_total", cause="oom") == 0  # exported, at zero


def test_an_event_a_function_refuses_is_counted_as_an_error(
    deps: Any, functions: dict[str, str]
) -> None:
    assert post(functions["step_runner"], events.make_event("com.example.unknown", {}))[0] == 400
    _, samples = scrape(functions["step_runner"])
    assert get(samples, "jetbridge_event_errors_total", type="other", error="permanent") == 1


def test_the_webhook_target_serves_metrics_too(deps: Any) -> None:
    with serve_function("trigger", target="webhook", signature_type="http") as url:
        _, samples = scrape(url)
    assert ("jetbridge_builds_started_total", frozenset()) in samples


def test_metrics_answer_503_when_the_function_cannot_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("JETBRIDGE_RUNTIME", "K_SINK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JETBRIDGE_DATA_DIR", str(tmp_path))
    app.install(None)
    with serve_function("reaper") as url:
        try:
            urllib.request.urlopen(url + "metrics", timeout=10)
        except urllib.error.HTTPError as e:
            code, body = e.code, e.read().decode()
        else:
            pytest.fail("/metrics answered although the function has no deps")
    assert code == 503
    assert "JETBRIDGE_RUNTIME=kubernetes" in body
