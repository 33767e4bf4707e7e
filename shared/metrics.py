"""Metrics: what JetBridge counts, and the wrappers that count it without touching the services.

Every process keeps its own ``prometheus_client.CollectorRegistry`` inside a
``Metrics`` (one per ``Deps``, so tests never share counters), served on
``GET /metrics`` by each function (``shared.serving``). Nothing here is called
by a service: the numbers come from wrappers around the ports and from the
events the services already raise, as the style guide asks ("cross-cutting
concerns in a wrapper, not in each backend"):

* ``InstrumentedSink`` wraps the event sink: every event a service emits is
  counted, and ``step.ready``, ``step.finished`` and ``build.finished`` become the
  step and build counters, the step duration and the pod failure causes;
* ``InstrumentedRuntime`` wraps the runtime: pod launches, deletions, API latency
  and errors, and the artifacts a launched pod writes (its read-write mounts of
  the store);
* ``Metrics.handling`` times each event a handler takes and counts its errors
  (``shared.telemetry.observed`` puts every handler call inside it);
* ``Metrics.reaper_tick`` turns a reaper tick's ``ReapReport`` into counters;
* ``StoreCollector`` reads the store's size from the database (one aggregate
  query) and its free space from the file system, when Prometheus scrapes.

Names follow Prometheus' conventions: ``jetbridge_`` prefix, ``_total`` for
counters, base units (``_seconds``, ``_bytes``). Label values come from small
closed sets (statuses, step kinds, failure causes, known event types); anything
outside a set is counted as ``other``, so a stranger sending odd event types
cannot blow up the number of series.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from cloudevents.http import CloudEvent
from kubernetes.client import V1Pod
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import events, webhooks
from shared import status as st
from shared.errors import EventError, PermanentError, TemporaryError
from shared.podspec import STORE_VOLUME
from shared.runtime import PodDict, Runtime

log = logging.getLogger(__name__)

#: Why a step's pod failed, as ``jetbridge_pod_failures_total`` labels it.
CAUSES = ("image_pull", "oom", "eviction", "deadline", "deleted", "unschedulable", "error")

#: Kubernetes' words (``podstatus.Outcome.reason``) for each cause. A reason not listed
#: here on an errored step is ``error``; on a failed step it is the step's own exit code,
#: which is the user's verdict, not a pod failure.
REASON_CAUSES: Mapping[str, str] = {
    "ErrImagePull": "image_pull",
    "ImagePullBackOff": "image_pull",
    "InvalidImageName": "image_pull",
    "ErrImageNeverPull": "image_pull",
    "OOMKilled": "oom",
    "Evicted": "eviction",
    # The node took the pod away (graceful node shutdown, preemption, a lost node).
    "Shutdown": "eviction",
    "NodeShutdown": "eviction",
    "Terminated": "eviction",
    "Preempting": "eviction",
    "NodeLost": "eviction",
    "DeadlineExceeded": "deadline",
    "Deleted": "deleted",
    "Unschedulable": "unschedulable",
}

#: Reasons a container gives when its own command simply exited: not a pod failure.
EXIT_REASONS = frozenset({"Error", "Completed"})

#: The ``type`` of a webhook delivery, which is an HTTP request, not a CloudEvent.
WEBHOOK = "webhook"
#: The event types that become label values; any other is ``other``.
EVENT_TYPES = frozenset(
    {
        WEBHOOK,
        *webhooks.source_event_types(),
        events.BUILD_REQUESTED,
        events.STEP_READY,
        events.STEP_FINISHED,
        events.BUILD_FINISHED,
        events.PING,
        *events.POD_EVENTS,
    }
)
STEP_KINDS = frozenset({"get", "put", "task", "check"})
OTHER = "other"

# Buckets, in seconds. Steps run from a second (a skipped check) to hours (a long test
# suite); a pod starts in about a second when its image is cached and in minutes when a
# large image is pulled or a node is added; a handler answers in milliseconds unless
# the database or the Kubernetes API is slow; a reaper tick is bounded by its batches.
STEP_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
POD_STARTUP_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REAPER_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600)


class TallyLike(Protocol):
    """One category of a reaper tick's report (``shared.reaper.Tally``)."""

    @property
    def done(self) -> int: ...
    @property
    def failed(self) -> int: ...


class ReapReportLike(Protocol):
    """What the metrics read of a reaper tick's report (``shared.reaper.ReapReport``)."""

    @property
    def dry_run(self) -> bool: ...
    @property
    def tallies(self) -> Mapping[str, TallyLike]: ...
    @property
    def artifacts_reaped(self) -> int: ...
    @property
    def bytes_freed(self) -> int: ...
    @property
    def wanted_free_bytes(self) -> int | None: ...


@dataclass(kw_only=True)
class Handling:
    """One event being handled: how long it took, and what its handler emitted."""

    type: str
    emitted: list[str] = field(default_factory=list)
    seconds: float = 0.0


#: The event this thread (or task) is handling, so the sink can note what it emitted.
_handling: ContextVar[Handling | None] = ContextVar("jetbridge_handling", default=None)


def failure_cause(status: str, reason: str | None) -> str | None:
    """The cause label of a step that ended with ``status`` for ``reason``, or ``None``.

    ``None`` means no pod failure: the step succeeded, was skipped, failed by its own
    exit code, or errored before it had a pod (a missing input has no reason).
    """
    if status not in (st.FAILED, st.ERRORED) or not reason:
        return None
    cause = REASON_CAUSES.get(reason)
    if cause is not None:
        return cause
    if status == st.FAILED or reason in EXIT_REASONS:
        return None
    return "error"


def pod_startup_seconds(pod: Mapping[str, Any]) -> float | None:
    """Seconds from the pod's creation to its container's start, if the pod says both."""
    created = _timestamp((pod.get("metadata") or {}).get("creationTimestamp"))
    started = [
        _timestamp(((c.get("state") or {}).get(state) or {}).get("startedAt"))
        for c in (pod.get("status") or {}).get("containerStatuses") or ()
        if isinstance(c, Mapping)
        for state in ("running", "terminated")
    ]
    moments = [s for s in started if s is not None]
    if created is None or not moments:
        return None
    seconds = (min(moments) - created).total_seconds()
    return seconds if seconds >= 0 else None


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _label(value: Any, allowed: Iterable[str]) -> str:
    return value if isinstance(value, str) and value in allowed else OTHER


def event_label(type_: Any) -> str:
    """The ``type`` label of an event type: itself if JetBridge knows it, else ``other``."""
    return _label(type_, EVENT_TYPES)


def _error_label(error: BaseException) -> str:
    if isinstance(error, PermanentError):
        return "permanent"
    if isinstance(error, TemporaryError):
        return "temporary"
    return "unexpected"


class Metrics:
    """Every JetBridge metric, registered in one registry (a fresh one unless given).

    ``timer`` measures durations (monotonic seconds); tests inject their own.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        timer: Callable[[], float] = time.perf_counter,
        process: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.timer = timer
        r = self.registry
        if process:  # the process' CPU, memory and file descriptors, and the GC's work
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

        # Builds and steps, from the events the services emit.
        self.builds_started = Counter(
            "jetbridge_builds_started_total",
            "Builds recorded from a build request (a redelivered request is not counted again).",
            registry=r,
        )
        self.builds_finished = Counter(
            "jetbridge_builds_finished_total",
            "Builds that reached a final status, by status.",
            ["status"],
            registry=r,
        )
        self.steps_started = Counter(
            "jetbridge_steps_started_total",
            "Step attempts announced to run (step.ready).",
            registry=r,
        )
        self.steps_finished = Counter(
            "jetbridge_steps_finished_total",
            "Steps that reached a final status, by step kind and status.",
            ["kind", "status"],
            registry=r,
        )
        self.step_duration = Histogram(
            "jetbridge_step_duration_seconds",
            "Time from a step's pod being launched to the step being recorded, by kind and status.",
            ["kind", "status"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.pod_failures = Counter(
            "jetbridge_pod_failures_total",
            "Steps whose pod failed for a reason other than the step's own exit code, by cause.",
            ["cause"],
            registry=r,
        )
        self.pod_startup = Histogram(
            "jetbridge_pod_startup_seconds",
            "Time from a step pod's creation to its container starting.",
            buckets=POD_STARTUP_BUCKETS,
            registry=r,
        )
        # The runtime, from its wrapper.
        self.pod_launches = Counter(
            "jetbridge_pod_launches_total",
            "Step pods handed to the runtime (a redelivered step.ready launches the same pod again).",
            registry=r,
        )
        self.pod_deletions = Counter(
            "jetbridge_pod_deletions_total", "Step pods JetBridge deleted.", registry=r
        )
        self.runtime_requests = Histogram(
            "jetbridge_runtime_request_seconds",
            "Time the runtime took to answer, by operation.",
            ["operation"],
            buckets=RUNTIME_BUCKETS,
            registry=r,
        )
        self.runtime_errors = Counter(
            "jetbridge_runtime_errors_total",
            "Runtime calls that failed, by operation and error class "
            "(permanent, temporary, unexpected).",
            ["operation", "error"],
            registry=r,
        )
        # The artifact store.
        self.artifacts_created = Counter(
            "jetbridge_artifacts_created_total",
            "Artifacts created: the outputs of the step pods launched.",
            registry=r,
        )
        # The reaper, from its reports.
        self.reaper_ticks = Counter(
            "jetbridge_reaper_ticks_total",
            "Reaper ticks, by outcome (ok, or failed when the tick itself could not run).",
            ["outcome"],
            registry=r,
        )
        self.reaper_tick_duration = Histogram(
            "jetbridge_reaper_tick_duration_seconds",
            "Time one reaper tick took.",
            buckets=REAPER_BUCKETS,
            registry=r,
        )
        self.reaper_errors = Counter(
            "jetbridge_reaper_errors_total",
            "Things a reaper tick failed to put right (retried on the next tick), by category "
            "(tick: a whole pass that could not run).",
            ["category"],
            registry=r,
        )
        self.reaper_done = Counter(
            "jetbridge_reaper_reclaimed_total",
            "Things a reaper tick put right, by category (lost pods, stray pods, artifacts…).",
            ["category"],
            registry=r,
        )
        self.reaper_artifacts = Counter(
            "jetbridge_reaper_artifacts_reaped_total",
            "Artifacts the reaper removed.",
            registry=r,
        )
        self.reaper_bytes = Counter(
            "jetbridge_reaper_reaped_bytes_total",
            "Bytes the reaper freed on the artifact store.",
            registry=r,
        )
        self.reaper_last_success = Gauge(
            "jetbridge_reaper_last_success_timestamp_seconds",
            "When the last reaper tick that ran to its end finished (Unix time).",
            registry=r,
        )
        self.store_wanted_free = Gauge(
            "jetbridge_store_wanted_free_bytes",
            "Free space the reaper keeps on the store (from store_min_free_bytes and _percent); "
            "below it, it reclaims the oldest artifacts no running build needs.",
            registry=r,
        )
        # Events, from the sink wrapper and the handler wrapper.
        self.events_emitted = Counter(
            "jetbridge_events_emitted_total",
            "Events the services sent, by type.",
            ["type"],
            registry=r,
        )
        self.event_emit_errors = Counter(
            "jetbridge_event_emit_errors_total",
            "Events that could not be sent (the Broker did not take them), by type.",
            ["type"],
            registry=r,
        )
        self.event_handling = Histogram(
            "jetbridge_event_handling_seconds",
            "Time a handler took with one event, by event type (errors included).",
            ["type"],
            buckets=HANDLING_BUCKETS,
            registry=r,
        )
        self.event_errors = Counter(
            "jetbridge_event_errors_total",
            "Events whose handler failed, by event type and error class: permanent "
            "(refused, not retried), temporary (answered 503, retried) or unexpected (a bug).",
            ["type", "error"],
            registry=r,
        )
        # Series an alert divides by or compares exist from the start, at zero.
        for status in sorted(st.BUILD_TERMINAL):
            self.builds_finished.labels(status)
        for cause in CAUSES:
            self.pod_failures.labels(cause)
        for outcome in ("ok", "failed"):
            self.reaper_ticks.labels(outcome)

    # -- events --------------------------------------------------------------------

    @contextlib.contextmanager
    def handling(self, type_: str) -> Iterator[Handling]:
        """Time the handling of one event and count it if it fails (the error goes on)."""
        label = event_label(type_)
        handling = Handling(type=type_)
        token = _handling.set(handling)
        start = self.timer()
        try:
            yield handling
        except Exception as e:
            self.event_errors.labels(label, _error_label(e)).inc()
            raise
        finally:
            handling.seconds = max(0.0, self.timer() - start)
            self.event_handling.labels(label).observe(handling.seconds)
            _handling.reset(token)

    def emitted(self, event: CloudEvent) -> None:
        """Count an event a service sent, and what it says about builds and steps."""
        type_ = event["type"]
        self.events_emitted.labels(event_label(type_)).inc()
        current = _handling.get()
        if current is not None:
            current.emitted.append(type_)
        if type_ == events.STEP_READY:
            self.steps_started.inc()
        elif type_ in (events.STEP_FINISHED, events.BUILD_FINISHED):
            data = _data(event)
            if type_ == events.BUILD_FINISHED:
                self.builds_finished.labels(_label(data.get("status"), st.BUILD_TERMINAL)).inc()
            else:
                self._step_finished(data)

    def _step_finished(self, data: Mapping[str, Any]) -> None:
        kind = _label(data.get("kind"), STEP_KINDS)
        status = _label(data.get("status"), st.STEP_TERMINAL)
        self.steps_finished.labels(kind, status).inc()
        started = _timestamp(data.get("started_at"))
        finished = _timestamp(data.get("finished_at"))
        if started is not None and finished is not None and finished >= started:
            self.step_duration.labels(kind, status).observe((finished - started).total_seconds())
        cause = failure_cause(str(data.get("status")), data.get("reason"))
        if cause is not None:
            self.pod_failures.labels(cause).inc()

    def pod_finished(self, pod: Mapping[str, Any]) -> None:
        """A pod whose event recorded its step: how long it took to start, once per step attempt."""
        seconds = pod_startup_seconds(pod)
        if seconds is not None:
            self.pod_startup.observe(seconds)

    # -- builds and the reaper, from what their handlers answered ------------------------

    def build_requested(self, answer: Any) -> None:
        """What a handler answered: count the builds it created (any other answer counts none).

        A build request answers a mapping (``created``, ``build_id``); a git source's
        event a mapping of ``deliveries``; a webhook a ``Received`` (``created``,
        ``builds``). A redelivery created nothing, and is not counted again.
        """
        if isinstance(answer, Mapping):
            if answer.get("created") and "build_id" in answer:
                self.builds_started.inc()
            for delivery in answer.get("deliveries") or ():
                if isinstance(delivery, Mapping) and delivery.get("created"):
                    self.builds_started.inc(len(delivery.get("builds") or ()))
        elif getattr(answer, "created", False):
            self.builds_started.inc(len(getattr(answer, "builds", None) or ()))

    def reaper_tick(self, report: ReapReportLike | None, *, seconds: float, now: datetime) -> None:
        """One reaper tick: its report, or ``None`` when the tick itself failed."""
        self.reaper_tick_duration.observe(seconds)
        if report is None:
            self.reaper_ticks.labels("failed").inc()
            return
        self.reaper_ticks.labels("ok").inc()
        for category, tally in report.tallies.items():
            if tally.failed:
                self.reaper_errors.labels(category).inc(tally.failed)
            if tally.done and not report.dry_run:
                self.reaper_done.labels(category).inc(tally.done)
        if not report.dry_run:
            self.reaper_artifacts.inc(report.artifacts_reaped)
            self.reaper_bytes.inc(report.bytes_freed)
        if report.wanted_free_bytes is not None:
            self.store_wanted_free.set(report.wanted_free_bytes)
        self.reaper_last_success.set(now.timestamp())

    # -- the store ----------------------------------------------------------------------

    def watch_store(
        self, usage: Callable[[], Sequence[StoreUsage]], root: Path | None = None
    ) -> None:
        """Report the store's size (``usage``, read at each scrape) and ``root``'s free space."""
        self.registry.register(StoreCollector(usage, root))


def _data(event: CloudEvent) -> Mapping[str, Any]:
    try:
        return events.event_data(event)
    except EventError:
        return {}


# -- the ports' wrappers -----------------------------------------------------------------


class InstrumentedSink:
    """An ``EventSink`` that counts what goes through it; anything else is the wrapped sink's."""

    def __init__(self, inner: events.EventSink, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def emit(self, event: CloudEvent) -> None:
        try:
            self.inner.emit(event)
        except Exception:
            self.metrics.event_emit_errors.labels(event_label(event["type"])).inc()
            raise
        self.metrics.emitted(event)

    def __getattr__(self, name: str) -> Any:
        # What a caller knows of the sink it passed in (a test's recorded events) stays reachable.
        return getattr(self.inner, name)


class InstrumentedRuntime:
    """A ``Runtime`` that times every call and counts launches, deletions and errors."""

    def __init__(self, inner: Runtime, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    @contextlib.contextmanager
    def _call(self, operation: str) -> Iterator[None]:
        start = self.metrics.timer()
        try:
            yield
        except Exception as e:
            self.metrics.runtime_errors.labels(operation, _error_label(e)).inc()
            raise
        finally:
            elapsed = max(0.0, self.metrics.timer() - start)
            self.metrics.runtime_requests.labels(operation).observe(elapsed)

    def launch(self, pod: V1Pod) -> None:
        with self._call("launch"):
            self.inner.launch(pod)
        self.metrics.pod_launches.inc()
        self.metrics.artifacts_created.inc(_outputs(pod))

    def read(self, name: str) -> PodDict | None:
        with self._call("read"):
            return self.inner.read(name)

    def list(self) -> list[PodDict]:
        with self._call("list"):
            return self.inner.list()

    def logs(self, name: str) -> bytes:
        with self._call("logs"):
            return self.inner.logs(name)

    def delete(self, name: str) -> None:
        with self._call("delete"):
            self.inner.delete(name)
        self.metrics.pod_deletions.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _outputs(pod: V1Pod) -> int:
    """How many artifacts a step pod writes: its read-write mounts of the store."""
    spec = pod.spec
    if spec is None:
        return 0
    return sum(
        1
        for container in spec.containers or ()
        for mount in container.volume_mounts or ()
        if mount.name == STORE_VOLUME and mount.sub_path and not mount.read_only
    )


# -- the store's size ----------------------------------------------------------------------


class StoreUsage(Protocol):
    """The artifacts in one state and the bytes they hold (``shared.artifacts.Usage``)."""

    @property
    def state(self) -> str: ...
    @property
    def artifacts(self) -> int: ...
    @property
    def bytes(self) -> int: ...


class StoreCollector(Collector):
    """The artifact store's size, from the database, and its file system's room, at each scrape.

    One aggregate query per scrape: the artifacts table holds only what the reaper has
    not reclaimed yet, so it stays small. When the database cannot be read the size
    series are left out of that scrape (a gap, not a wrong zero).
    """

    def __init__(self, usage: Callable[[], Sequence[StoreUsage]], root: Path | None) -> None:
        self.usage = usage
        self.root = root

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "jetbridge_store_artifacts",
                "Artifacts on the store, by state (creating, ready, reaping).",
                labels=["state"],
            ),
            GaugeMetricFamily(
                "jetbridge_store_bytes",
                "Bytes the artifacts on the store hold, by state (sizes are recorded when ready).",
                labels=["state"],
            ),
            GaugeMetricFamily(
                "jetbridge_store_capacity_bytes",
                "Size of the file system that holds the artifact store.",
            ),
            GaugeMetricFamily(
                "jetbridge_store_available_bytes",
                "Free space left on the file system that holds the artifact store.",
            ),
        ]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        artifacts, size, capacity, available = self._families()
        try:
            rows = list(self.usage())
        except Exception as e:  # a scrape must not fail because the database is away
            log.warning("store metrics: could not read artifact sizes: %s", e)
            rows = None
        if rows is not None:
            for row in rows:
                artifacts.add_metric([row.state], row.artifacts)
                size.add_metric([row.state], row.bytes)
            yield artifacts
            yield size
        if self.root is not None:
            try:
                fs = os.statvfs(self.root)
            except OSError:
                return  # this function does not mount the store
            capacity.add_metric([], fs.f_blocks * fs.f_frsize)
            available.add_metric([], fs.f_bavail * fs.f_frsize)
            yield capacity
            yield available


def metric_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name ``registry`` can expose (``_total``, ``_bucket``, ``_sum``… included)."""
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names
