"""The dependencies a handler needs, built once per process from settings.

A function (or the CLI) builds a ``Deps`` at its edge and hands it down; the
services take what they use from it as keyword arguments. In the cluster the
deps come from the environment; ``jetbridge run`` and ``serve`` install their own
(the in-process bus, the local runtime) before any event is dispatched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine

from shared import artifacts
from shared.artifacts import new_handle
from shared.db import SessionFactory, make_engine, make_session_factory, transaction
from shared.events import EventSink, HttpSink
from shared.logstore import LogStore, make_log_store
from shared.metrics import InstrumentedRuntime, InstrumentedSink, Metrics
from shared.podspec import PodSettings
from shared.podstatus import Patience
from shared.runtime import Runtime
from shared.settings import Settings, load_settings


def utcnow() -> datetime:
    """The real clock; injected everywhere as ``clock`` so tests can choose the time."""
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Deps:
    settings: Settings
    engine: Engine
    sessions: SessionFactory
    runtime: Runtime
    logs: LogStore
    sink: EventSink
    clock: Callable[[], datetime] = utcnow
    handles: Callable[[], str] = new_handle
    metrics: Metrics = field(default_factory=Metrics)
    """This process' metrics; ``sink`` and ``runtime`` report to it (see ``build_deps``)."""

    @property
    def pod_settings(self) -> PodSettings:
        return pod_settings(self.settings)

    @property
    def patience(self) -> Patience:
        """How long a pending pod may wait on its image or a node before its step errors."""
        return Patience(
            image_pull_seconds=self.settings.image_pull_timeout_seconds,
            unschedulable_seconds=self.settings.unschedulable_timeout_seconds,
        )


def pod_settings(s: Settings) -> PodSettings:
    """What the pod builder takes from settings (``jetbridge render`` uses it without deps)."""
    return PodSettings(
        claim=s.store_claim,
        workdir=s.workdir,
        resource_image=s.resource_image,
        namespace=s.namespace,
        default_timeout_seconds=s.step_timeout_seconds,
        requests=dict(s.step_requests),
        limits=dict(s.step_limits),
        image_pull_secrets=tuple(s.image_pull_secrets),
        node_selector=dict(s.node_selector),
        tag_labels=dict(s.tag_labels),
        tolerations=tuple(s.tolerations),
        pin_to_node=s.store_access_mode == "ReadWriteOnce",
    )


def build_deps(
    settings: Settings,
    *,
    sink: EventSink,
    runtime: Runtime,
    clock: Callable[[], datetime] = utcnow,
    engine: Engine | None = None,
    metrics: Metrics | None = None,
) -> Deps:
    """Deps over the database and log store that ``settings`` name.

    The one place metrics are wired: ``sink`` and ``runtime`` are wrapped to count
    what goes through them, and the store's size is read at each scrape.
    """
    engine = engine or make_engine(settings.effective_database_url)
    sessions = make_session_factory(engine)
    metrics = metrics or Metrics()

    def store_usage() -> list[artifacts.Usage]:
        with transaction(sessions) as session:
            return artifacts.usage(session)

    metrics.watch_store(store_usage, settings.effective_store_root)
    return Deps(
        settings=settings,
        engine=engine,
        sessions=sessions,
        # The commands that only read build no runtime (None), and still have none.
        runtime=InstrumentedRuntime(runtime, metrics) if runtime is not None else runtime,
        logs=make_log_store(settings),
        sink=InstrumentedSink(sink, metrics),
        clock=clock,
        metrics=metrics,
    )


_current: Deps | None = None
_lock = threading.Lock()


def install(deps: Deps | None) -> None:
    """Make ``deps`` what the functions' handlers use in this process (``None`` to forget)."""
    global _current
    with _lock:
        _current = deps


def current() -> Deps:
    """The installed deps, or deps built from the environment on first use (the cluster's way)."""
    global _current
    with _lock:
        if _current is None:
            _current = _from_environment()
        return _current


def _from_environment() -> Deps:
    settings = load_settings()
    if settings.runtime == "kubernetes":
        from shared.runtime.kubernetes import KubernetesRuntime

        runtime: Runtime = KubernetesRuntime.from_settings(settings)
        sink: EventSink = HttpSink(settings.event_sink)
    else:
        from shared.errors import ConfigurationError

        raise ConfigurationError(
            "a function outside `jetbridge run`/`serve` needs JETBRIDGE_RUNTIME=kubernetes "
            "and K_SINK (the Broker's address)"
        )
    return build_deps(settings, sink=sink, runtime=runtime)
