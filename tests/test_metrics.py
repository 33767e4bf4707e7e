"""The metrics: what each wrapper counts, read back from the registry as a scrape would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import (
    V1Container,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1VolumeMount,
)
from prometheus_client import CollectorRegistry

from shared import events, telemetry
from shared import status as st
from shared.app import build_deps
from shared.artifacts import register
from shared.db import ArtifactRow, BuildRow, PipelineRow, StepRow, transaction, upgrade
from shared.errors import DatabaseUnavailable, EventError, NotFoundError
from shared.events import RecordingSink
from shared.metrics import (
    CAUSES,
    InstrumentedRuntime,
    InstrumentedSink,
    Metrics,
    failure_cause,
    metric_names,
    pod_startup_seconds,
)
from shared.podspec import STORE_VOLUME
from shared.reaper import ReapReport
from shared.settings import Settings
from tests.fakes import FakeClock, FakeRuntime

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Ticks:
    """A timer that moves by ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist (yet)."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def finished(status: str, *, kind: str = "task", reason: str | None = None, seconds: float = 0):
    data: dict[str, Any] = {
        "build_id": 1,
        "step_id": 2,
        "kind": kind,
        "status": status,
        "reason": reason,
        "started_at": T0.isoformat() if seconds else None,
        "finished_at": (T0 + timedelta(seconds=seconds)).isoformat() if seconds else None,
    }
    return events.make_event(events.STEP_FINISHED, data)


@pytest.mark.parametrize(
    ("status", "reason", "cause"),
    [
        (st.FAILED, "OOMKilled", "oom"),
        (st.ERRORED, "Evicted", "eviction"),
        (st.ERRORED, "Shutdown", "eviction"),
        (st.ERRORED, "DeadlineExceeded", "deadline"),
        (st.ERRORED, "ImagePullBackOff", "image_pull"),
        (st.ERRORED, "ErrImagePull", "image_pull"),
        (st.ERRORED, "InvalidImageName", "image_pull"),
        (st.ERRORED, "Unschedulable", "unschedulable"),
        (st.ERRORED, "Deleted", "deleted"),
        (st.ERRORED, "ContainerCannotRun", "error"),
        (st.ERRORED, "UnexpectedAdmissionError", "error"),
        (st.FAILED, "Error", None),
        (st.ERRORED, None, None),
        (st.SUCCEEDED, None, None),
        (st.SKIPPED, None, None),
    ],
    ids=[
        "oom",
        "evicted",
        "node-shutdown",
        "deadline",
        "image-backoff",
        "image-pull",
        "invalid-image",
        "unschedulable",
        "deleted",
        "cannot-run",
        "other-node-reason",
        "own-exit-code",
        "missing-input",
        "succeeded",
        "skipped",
    ],
)
def test_failure_causes(status: str, reason: str | None, cause: str | None) -> None:
    assert failure_cause(status, reason) == cause
    assert cause is None or cause in CAUSES


def test_the_sink_counts_steps_builds_durations_and_pod_failures() -> None:
    metrics = Metrics(process=False)
    inner = RecordingSink()
    sink = InstrumentedSink(inner, metrics)
    sink.emit(events.make_event(events.STEP_READY, {"build_id": 1, "step_id": 2, "attempt": 1}))
    sink.emit(finished(st.SUCCEEDED, kind="get", seconds=12))
    sink.emit(finished(st.FAILED, reason="OOMKilled", seconds=90))
    sink.emit(finished(st.FAILED, reason="Error", seconds=3))
    sink.emit(finished(st.SKIPPED))
    sink.emit(events.make_event(events.BUILD_FINISHED, {"build_id": 1, "status": st.FAILED}))

    assert len(inner.events) == 6 and sink.events is inner.events  # still the wrapped sink's
    assert value(metrics, "jetbridge_steps_started_total") == 1
    assert value(metrics, "jetbridge_steps_finished_total", kind="get", status="succeeded") == 1
    assert value(metrics, "jetbridge_steps_finished_total", kind="task", status="failed") == 2
    assert value(metrics, "jetbridge_steps_finished_total", kind="task", status="skipped") == 1
    assert (
        value(metrics, "jetbridge_step_duration_seconds_count", kind="task", status="failed") == 2
    )
    assert value(metrics, "jetbridge_step_duration_seconds_sum", kind="task", status="failed") == 93
    assert (
        value(metrics, "jetbridge_step_duration_seconds_sum", kind="get", status="succeeded") == 12
    )
    # A skipped step never ran: no duration.
    assert (
        value(metrics, "jetbridge_step_duration_seconds_count", kind="task", status="skipped") == 0
    )
    assert value(metrics, "jetbridge_pod_failures_total", cause="oom") == 1
    assert sum(value(metrics, "jetbridge_pod_failures_total", cause=c) for c in CAUSES) == 1
    assert value(metrics, "jetbridge_builds_finished_total", status="failed") == 1
    assert value(metrics, "jetbridge_events_emitted_total", type=events.STEP_FINISHED) == 4


def test_label_values_stay_in_their_sets() -> None:
    metrics = Metrics(process=False)
    sink = InstrumentedSink(RecordingSink(), metrics)
    sink.emit(events.make_event("com.example.whatever", {}))
    sink.emit(finished("exploded", kind="rocket"))
    assert value(metrics, "jetbridge_events_emitted_total", type="other") == 1
    assert value(metrics, "jetbridge_steps_finished_total", kind="other", status="other") == 1


def test_a_sink_that_fails_counts_the_event_as_not_sent() -> None:
    def refuse(event: Any) -> None:
        raise DatabaseUnavailable("broker down")

    metrics = Metrics(process=False)
    sink = InstrumentedSink(RecordingSink(then=refuse), metrics)
    with pytest.raises(DatabaseUnavailable):
        sink.emit(finished(st.SUCCEEDED))
    assert value(metrics, "jetbridge_event_emit_errors_total", type=events.STEP_FINISHED) == 1
    assert value(metrics, "jetbridge_steps_finished_total", kind="task", status="succeeded") == 0


@pytest.mark.parametrize(
    ("error", "label"),
    [
        (EventError("bad"), "permanent"),
        (DatabaseUnavailable("down"), "temporary"),
        (ZeroDivisionError(), "unexpected"),
    ],
    ids=["permanent", "temporary", "unexpected"],
)
def test_handling_times_each_event_and_counts_errors_by_class(error: Exception, label: str) -> None:
    metrics = Metrics(process=False, timer=Ticks(0.25))
    with metrics.handling(events.STEP_READY):
        pass
    with pytest.raises(type(error)), metrics.handling(events.STEP_READY):
        raise error
    assert value(metrics, "jetbridge_event_handling_seconds_count", type=events.STEP_READY) == 2
    assert value(metrics, "jetbridge_event_handling_seconds_sum", type=events.STEP_READY) == 0.5
    assert value(metrics, "jetbridge_event_errors_total", type=events.STEP_READY, error=label) == 1


def store_pod(*mounts: tuple[str, bool]) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(name="jb-1-unit-a1-0000"),
        spec=V1PodSpec(
            containers=[
                V1Container(
                    name="step",
                    volume_mounts=[
                        V1VolumeMount(name="tmp", mount_path="/tmp"),
                        *(
                            V1VolumeMount(
                                name=STORE_VOLUME,
                                mount_path=f"/tmp/build/{sub}",
                                sub_path=f"artifacts/1/{sub}",
                                read_only=ro or None,
                            )
                            for sub, ro in mounts
                        ),
                    ],
                )
            ]
        ),
    )


def test_the_runtime_counts_launches_outputs_deletions_and_errors() -> None:
    metrics = Metrics(process=False, timer=Ticks(0.5))
    fake = FakeRuntime()
    runtime = InstrumentedRuntime(fake, metrics)
    runtime.launch(store_pod(("source", True), ("dist", False), ("report", False)))
    runtime.delete("jb-1-unit-a1-0000")
    with pytest.raises(NotFoundError):  # what the fake raises for an unknown pod's logs
        runtime.logs("nope")
    assert fake.launches == ["jb-1-unit-a1-0000"] and runtime.launches is fake.launches
    assert value(metrics, "jetbridge_pod_launches_total") == 1
    assert value(metrics, "jetbridge_artifacts_created_total") == 2  # the read-write mounts
    assert value(metrics, "jetbridge_pod_deletions_total") == 1
    assert (
        value(metrics, "jetbridge_runtime_errors_total", operation="logs", error="permanent") == 1
    )
    assert value(metrics, "jetbridge_runtime_request_seconds_count", operation="launch") == 1
    assert value(metrics, "jetbridge_runtime_request_seconds_sum", operation="launch") == 0.5


@pytest.mark.parametrize(
    ("status", "seconds"),
    [
        (
            {"containerStatuses": [{"state": {"running": {"startedAt": "2026-01-01T12:00:07Z"}}}]},
            7.0,
        ),
        (
            {
                "containerStatuses": [
                    {"state": {"terminated": {"startedAt": "2026-01-01T12:01:00Z", "exitCode": 0}}}
                ]
            },
            60.0,
        ),
        ({"containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]}, None),
        ({}, None),
    ],
    ids=["running", "terminated", "never-started", "no-status"],
)
def test_pod_startup_is_creation_to_container_start(
    status: dict[str, Any], seconds: float | None
) -> None:
    pod = {"metadata": {"creationTimestamp": "2026-01-01T12:00:00Z"}, "status": status}
    assert pod_startup_seconds(pod) == seconds


def test_a_reaper_report_becomes_counters() -> None:
    metrics = Metrics(process=False)
    report = ReapReport(wanted_free_bytes=10_000)
    report.done("artifacts", count=2, size=4096)
    report.done("stray_pods")
    report.error("artifacts", "artifact x", PermissionError("permission denied"))
    report.error("tick", "resync", DatabaseUnavailable("down"))
    metrics.reaper_tick(report, seconds=1.5, now=T0)
    dry = ReapReport(dry_run=True)
    dry.found("artifacts", "artifact y", size=99)
    metrics.reaper_tick(dry, seconds=0.1, now=T0 + timedelta(minutes=1))
    metrics.reaper_tick(None, seconds=0.1, now=T0 + timedelta(minutes=2))
    assert value(metrics, "jetbridge_reaper_ticks_total", outcome="ok") == 2
    assert value(metrics, "jetbridge_reaper_ticks_total", outcome="failed") == 1
    assert value(metrics, "jetbridge_reaper_artifacts_reaped_total") == 2
    assert value(metrics, "jetbridge_reaper_reaped_bytes_total") == 4096
    assert value(metrics, "jetbridge_reaper_reclaimed_total", category="stray_pods") == 1
    assert value(metrics, "jetbridge_reaper_errors_total", category="artifacts") == 1
    assert value(metrics, "jetbridge_reaper_errors_total", category="tick") == 1
    assert value(metrics, "jetbridge_reaper_tick_duration_seconds_count") == 3
    assert value(metrics, "jetbridge_store_wanted_free_bytes") == 10_000
    # A failed tick does not move the last success.
    last = T0 + timedelta(minutes=1)
    assert value(metrics, "jetbridge_reaper_last_success_timestamp_seconds") == last.timestamp()


@pytest.mark.parametrize(
    ("answer", "builds"),
    [
        ({"build_id": 7, "number": 1, "created": True}, 1),
        ({"build_id": 7, "number": 1, "created": False}, 0),
        (
            {
                "deliveries": [
                    {"created": True, "builds": [{"id": 1}, {"id": 2}]},
                    {"created": False, "builds": [{"id": 3}]},
                ]
            },
            2,
        ),
        (SimpleNamespace(created=True, builds=(SimpleNamespace(id=4),)), 1),
        (SimpleNamespace(created=False, builds=(SimpleNamespace(id=4),)), 0),
        (None, 0),
        (ReapReport(), 0),
    ],
    ids=["request", "redelivered", "git-source", "webhook", "webhook-again", "none", "report"],
)
def test_builds_started_come_from_what_the_trigger_answered(answer: Any, builds: int) -> None:
    metrics = Metrics(process=False)
    metrics.build_requested(answer)
    assert value(metrics, "jetbridge_builds_started_total") == builds


def test_each_metrics_has_its_own_registry() -> None:
    one, two = Metrics(process=False), Metrics(process=False)
    one.builds_started.inc()
    assert value(one, "jetbridge_builds_started_total") == 1
    assert value(two, "jetbridge_builds_started_total") == 0
    given = CollectorRegistry()
    assert Metrics(given, process=False).registry is given


def test_the_store_size_comes_from_the_database(database_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    deps = build_deps(settings, sink=RecordingSink(), runtime=FakeRuntime(), clock=FakeClock())
    upgrade(deps.engine)
    try:
        with transaction(deps.sessions) as session:
            pipeline = PipelineRow(
                name="p",
                config="",
                variables={},
                config_hash="x",
                paused=False,
                created_at=T0,
                updated_at=T0,
            )
            session.add(pipeline)
            session.flush()
            build = BuildRow(
                pipeline_id=pipeline.id, job_name="j", number=1, status="started", created_at=T0
            )
            session.add(build)
            session.flush()
            step = StepRow(
                build_id=build.id,
                key="0",
                name="s",
                kind="task",
                status="running",
                created_at=T0,
            )
            session.add(step)
            session.flush()
            rows = register(
                session,
                build_id=build.id,
                step_id=step.id,
                names=["a", "b", "c"],
                clock=deps.clock,
            )
            for row, size in zip(rows[:2], (1000, 24), strict=True):
                session.execute(
                    ArtifactRow.__table__.update()
                    .where(ArtifactRow.id == row.id)
                    .values(state="ready", size=size)
                )
        (tmp_path / "store").mkdir()
        metrics = deps.metrics
        assert value(metrics, "jetbridge_store_bytes", state="ready") == 1024
        assert value(metrics, "jetbridge_store_artifacts", state="ready") == 2
        assert value(metrics, "jetbridge_store_artifacts", state="creating") == 1
        assert value(metrics, "jetbridge_store_bytes", state="reaping") == 0
        assert value(metrics, "jetbridge_store_capacity_bytes") > 0
        assert (
            0
            < value(metrics, "jetbridge_store_available_bytes")
            <= value(metrics, "jetbridge_store_capacity_bytes")
        )
    finally:
        deps.engine.dispose()


def test_a_scrape_without_the_database_leaves_the_store_size_out(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql+pg8000://postgres@127.0.0.1:1/none"
    )
    deps = build_deps(settings, sink=RecordingSink(), runtime=FakeRuntime())
    try:
        names = metric_names(deps.metrics.registry)  # the scrape itself succeeds
        assert "jetbridge_store_bytes" not in names
        assert "jetbridge_builds_started_total" in names
    finally:
        deps.engine.dispose()


def test_observed_counts_a_created_build_and_a_pod_start(tmp_path: Path) -> None:
    """The handler wrapper: a request's answer and the pod event that recorded its step."""
    settings = Settings(data_dir=tmp_path)
    deps = build_deps(settings, sink=RecordingSink(), runtime=FakeRuntime(), clock=FakeClock())
    try:
        request = events.make_event(events.BUILD_REQUESTED, {"pipeline": "p", "job": "j"})
        answers = iter([{"build_id": 7, "created": True}, {"build_id": 7, "created": False}])
        telemetry.observed(lambda e, d: next(answers), request, deps)
        telemetry.observed(lambda e, d: next(answers), request, deps)  # a redelivery
        assert value(deps.metrics, "jetbridge_builds_started_total") == 1

        pod = {
            "metadata": {"name": "x", "creationTimestamp": "2026-01-01T12:00:00Z"},
            "status": {
                "containerStatuses": [
                    {"state": {"terminated": {"startedAt": "2026-01-01T12:00:04Z", "exitCode": 0}}}
                ]
            },
        }
        update = events.make_event(events.POD_UPDATE, pod)
        telemetry.observed(lambda e, d: None, update, deps)  # recorded nothing: not counted
        telemetry.observed(lambda e, d: d.sink.emit(finished(st.SUCCEEDED)), update, deps)
        assert value(deps.metrics, "jetbridge_pod_startup_seconds_count") == 1
        assert value(deps.metrics, "jetbridge_pod_startup_seconds_sum") == 4
    finally:
        deps.engine.dispose()
