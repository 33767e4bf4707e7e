"""The dependencies a handler needs, built once per process from settings.

A function (or the CLI) builds a ``Deps`` at its edge and hands it down; the
services take what they use from it as keyword arguments. In the cluster the
deps come from the environment; ``jetbridge run`` and ``serve`` install their own
(the in-process bus, the local runtime) before any event is dispatched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from shared.artifacts import new_handle
from shared.db import SessionFactory, make_engine, make_session_factory
from shared.events import EventSink, HttpSink
from shared.logstore import DirectoryLogStore, LogStore
from shared.podspec import PodSettings
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

    @property
    def pod_settings(self) -> PodSettings:
        s = self.settings
        return PodSettings(
            claim=s.store_claim,
            workdir=s.workdir,
            resource_image=s.resource_image,
            namespace=s.namespace,
            default_timeout_seconds=s.step_timeout_seconds,
        )


def build_deps(
    settings: Settings,
    *,
    sink: EventSink,
    runtime: Runtime,
    clock: Callable[[], datetime] = utcnow,
    engine: Engine | None = None,
) -> Deps:
    """Deps over the database and log store that ``settings`` name."""
    engine = engine or make_engine(settings.effective_database_url)
    return Deps(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        runtime=runtime,
        logs=DirectoryLogStore(settings.effective_log_dir),
        sink=sink,
        clock=clock,
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
        from shared.runtime.kubernetes import KubernetesRuntime  # type: ignore[import-not-found,unused-ignore]

        runtime: Runtime = KubernetesRuntime.from_settings(settings)
        sink: EventSink = HttpSink(settings.event_sink)
    else:
        from shared.errors import ConfigurationError

        raise ConfigurationError(
            "a function outside `jetbridge run`/`serve` needs JETBRIDGE_RUNTIME=kubernetes "
            "and K_SINK (the Broker's address)"
        )
    return build_deps(settings, sink=sink, runtime=runtime)
