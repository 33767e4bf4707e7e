"""JetBridge on one machine: the three functions' handlers on an in-process bus over the local runtime.

This is the embedded default behind ``jetbridge run``: SQLite in the data
directory, the artifact store beside it, pods run by the local runtime, which
reports finished pods as the same ApiServerSource-shaped event the cluster sends.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent
from sqlalchemy import select

from shared import events, handlers, telemetry
from shared import status as st
from shared.app import Deps, build_deps, utcnow
from shared.bus import InProcessBus
from shared.db import BuildRow, PipelineRow, StepRow, transaction, upgrade
from shared.pipelines import load, save_pipeline
from shared.reaper import ReapReport
from shared.resources import RESOURCE_DIRS
from shared.runtime.local import LocalRuntime
from shared.settings import Settings

#: The source ApiServerSource puts on its events; the local runtime uses the same shape.
POD_EVENT_SOURCE = "//jetbridge.dev/local-runtime"


def local_repository(uri: Any) -> Path | None:
    """The directory a git ``uri`` names on this machine (a path or ``file://``), if any.

    A cluster pod reaches its repository over the network; locally the same
    repository is a directory that get and put pods must be able to read and push to.
    """
    if not isinstance(uri, str):
        return None
    path = Path(uri.removeprefix("file://")) if uri.startswith(("file://", "/")) else None
    return path.resolve() if path is not None and path.is_dir() else None


def resource_types_dir() -> Path:
    """The folder holding every built-in resource type's scripts, bound at ``/opt/resource-types``."""
    return next(iter(RESOURCE_DIRS.values())).parent


def _ignore(_result: object) -> None:
    """Handlers behind the bus answer nothing; the build is found by its event id instead."""


class LocalCI:
    """A whole JetBridge in this process. Use as a context manager; it stops every pod on exit.

    ``scheduling``: new versions start builds, as in the cluster: a build that succeeds
    triggers its downstream jobs (``build.finished`` to the trigger's handler), and each
    tick checks the resources that are due and starts what their versions call for.
    ``jetbridge serve`` schedules; ``run``, ``trigger-job`` and ``check-resource``, which
    run one build and stop, do not.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        scheduling: bool = False,
    ) -> None:
        self.scheduling = scheduling
        # Absolute paths: the sandbox binds them from wherever the pod's process starts.
        settings = settings.with_overrides(data_dir=settings.data_dir.resolve())
        if settings.store_root is not None:
            settings = settings.with_overrides(store_root=settings.store_root.resolve())
        self.settings = settings
        self.bus = InProcessBus()
        store = settings.effective_store_root
        assert store is not None  # always set for the local runtime
        store.mkdir(parents=True, exist_ok=True)
        self.runtime = LocalRuntime(
            claims={settings.store_claim: store},
            work_root=settings.data_dir / "pods",
            on_finish=self._pod_finished,
            image_binds={settings.resource_image: {"/opt/resource-types": resource_types_dir()}},
            sandbox=settings.sandbox,  # type: ignore[arg-type]
            clock=clock,
        )
        self.deps: Deps = build_deps(settings, sink=self.bus, runtime=self.runtime, clock=clock)
        upgrade(self.deps.engine)
        deps = self.deps
        self.bus.subscribe(
            events.BUILD_REQUESTED,
            lambda e: _ignore(telemetry.observed(handlers.on_trigger_event, e, deps)),
        )
        # Subscribed first, so the step's pod can reach a repository on this machine.
        self.bus.subscribe(events.STEP_READY, self._share_repository)
        self.bus.subscribe(
            events.STEP_READY, lambda e: telemetry.observed(handlers.on_step_event, e, deps)
        )
        for type_ in events.POD_EVENTS:
            self.bus.subscribe(type_, lambda e: telemetry.observed(handlers.on_step_event, e, deps))
        if scheduling:
            self.bus.subscribe(
                events.BUILD_FINISHED,
                lambda e: _ignore(telemetry.observed(handlers.on_trigger_event, e, deps)),
            )
        self.last_report: ReapReport | None = None
        self.bus.subscribe(events.PING, self._tick)

    def _pod_finished(self, pod: dict[str, Any]) -> None:
        name = pod.get("metadata", {}).get("name", "")
        self.bus.emit(
            events.make_event(
                events.POD_UPDATE, pod, source=POD_EVENT_SOURCE, subject=f"pods/{name}"
            )
        )

    def _share_repository(self, event: CloudEvent) -> None:
        """A get, put or check of a git repository on this machine: let its pod reach it.

        ``set_pipeline`` shares the repositories of pipelines set through it; this covers
        pipelines set by ``jetbridge set-pipeline`` while ``jetbridge serve`` runs.
        """
        step_id = events.event_data(event).get("step_id")
        if not isinstance(step_id, int):
            return
        with transaction(self.deps.sessions) as session:
            step = session.get(StepRow, step_id)
            resource = step.spec.get("resource") if step is not None else None
        if isinstance(resource, dict) and resource.get("type") == "git":
            path = local_repository((resource.get("source") or {}).get("uri"))
            if path is not None:
                self.runtime.share(path)

    def _tick(self, event: CloudEvent) -> None:
        tick = functools.partial(handlers.on_reaper_event, scheduling=self.scheduling)
        self.last_report = telemetry.observed(tick, event, self.deps)

    def __enter__(self) -> LocalCI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.runtime.close()
        self.deps.engine.dispose()

    def set_pipeline(
        self, name: str, config: str, variables: Mapping[str, Any] | None = None
    ) -> None:
        """Store the pipeline; its git repositories on this machine become reachable from pods."""
        with transaction(self.deps.sessions) as session:
            row = save_pipeline(
                session, name=name, config=config, variables=variables, clock=self.deps.clock
            )
            model = load(row)
        for resource in model.resources:
            path = local_repository(resource.source.get("uri")) if resource.type == "git" else None
            if path is not None:
                self.runtime.share(path)

    def request_build(
        self, pipeline: str, job: str, versions: Mapping[str, Any] | None = None
    ) -> str:
        """Send ``build.requested`` as the CLI or a webhook would; returns the event id."""
        event_id = uuid.uuid4().hex
        self.bus.emit(
            events.make_event(
                events.BUILD_REQUESTED,
                {"pipeline": pipeline, "job": job, "versions": dict(versions or {})},
                id_=event_id,
            )
        )
        return event_id

    def build_for(self, pipeline: str, event_id: str) -> BuildRow | None:
        with transaction(self.deps.sessions) as session:
            return session.scalars(
                select(BuildRow)
                .join(PipelineRow, PipelineRow.id == BuildRow.pipeline_id)
                .where(PipelineRow.name == pipeline, BuildRow.event_id == event_id)
            ).one_or_none()

    def run_build(
        self,
        pipeline: str,
        job: str,
        *,
        timeout: float = 3600,
        versions: Mapping[str, Any] | None = None,
    ) -> BuildRow:
        """Run one build of ``job`` to its end and return it (then one reaper tick)."""
        event_id = self.request_build(pipeline, job, versions)
        state: dict[str, BuildRow | None] = {"build": None}

        def finished() -> bool:
            if event_id in self.bus.rejected:
                return True
            build = self.build_for(pipeline, event_id)
            state["build"] = build
            return build is not None and build.status in st.BUILD_TERMINAL

        if not self.bus.run_until(finished, timeout=timeout):
            raise TimeoutError(f"build of {pipeline}/{job} did not finish within {timeout:.0f}s")
        self.bus.drain()  # deliver what the last step raised (step.finished, build.finished)
        if event_id in self.bus.rejected:
            raise self.bus.rejected[event_id]
        build = state["build"]
        assert build is not None
        return build

    def run_until_idle(self, *, timeout: float = 600) -> list[BuildRow]:
        """Deliver events until no build is pending or running and none is on its way; returns
        every build, oldest first. With ``scheduling``, what new versions trigger runs too."""

        def idle() -> bool:
            if self.bus.pending():
                return False
            with transaction(self.deps.sessions) as session:
                active = session.scalar(
                    select(BuildRow.id)
                    .where(BuildRow.status.in_((st.PENDING, st.STARTED)))
                    .limit(1)
                )
            return active is None

        if not self.bus.run_until(idle, timeout=timeout):
            raise TimeoutError(f"builds were still running after {timeout:.0f}s")
        with transaction(self.deps.sessions) as session:
            return list(session.scalars(select(BuildRow).order_by(BuildRow.id)).all())

    def tick(self) -> ReapReport:
        """One reaper tick through the bus, as PingSource would send it."""
        self.bus.emit(events.make_event(events.PING, {}, source="//jetbridge.dev/local-ping"))
        self.bus.drain()
        assert self.last_report is not None
        return self.last_report
