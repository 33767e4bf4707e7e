"""JetBridge's cluster path in one process: the harness the cluster tests drive.

``FakeCluster`` is the cluster: the fake API server, the simulated kubelet that
runs its pods with the local runtime (the claim is a local folder), and an
ApiServerSource stand-in that turns every pod change into a CloudEvent.

``ClusterCI`` is JetBridge on top of any cluster, configured like ``LocalCI``
(``shared/local.py``) but with the Kubernetes runtime: the same in-process bus and
the same handlers, with pods created over HTTP through the real ``kubernetes``
client and reported back by watch events, as Knative would deliver them. It
runs against ``FakeCluster`` here and against a live cluster in ``tests/live``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, Configuration
from sqlalchemy import select

from shared import events, handlers
from shared import status as st
from shared.app import Deps, build_deps
from shared.bus import InProcessBus
from shared.db import BuildRow, PipelineRow, StepRow, transaction, upgrade
from shared.local import local_repository, resource_types_dir
from shared.pipelines import load, save_pipeline
from shared.runtime.kubernetes import RETRIES, KubernetesRuntime
from shared.settings import Settings
from tests.kube.apiserver import FakeApiServer
from tests.kube.kubelet import SimulatedKubelet
from tests.kube.watch import PodEventSource


def configuration(url: str) -> Configuration:
    """A client configuration for the fake API server at ``url``."""
    config = Configuration(host=url)
    config.retries = RETRIES  # as in production (``KubernetesRuntime.from_settings``)
    return config


class FakeCluster:
    """The fake API server with a simulated kubelet on one node (see the module docstring)."""

    def __init__(
        self,
        *,
        namespace: str,
        claims: Mapping[str, Path],
        work_root: Path,
        clock: Callable[[], datetime],
        resource_image: str,
        sandbox: str = "auto",
    ) -> None:
        self.namespace = namespace
        self.server = FakeApiServer(namespaces=(namespace,), clock=clock).start()
        self.configuration = configuration(self.server.url)
        self.kubelet = SimulatedKubelet(
            ApiClient(self.configuration),
            namespace=namespace,
            claims=claims,
            work_root=work_root,
            clock=clock,
            image_binds={resource_image: {"/opt/resource-types": resource_types_dir()}},
            sandbox=sandbox,
        )
        self.server.log_source = self.kubelet.log
        self.kubelet.start()

    def close(self) -> None:
        self.kubelet.stop()
        self.server.stop()


class ClusterCI:
    """A whole JetBridge in this process over a cluster's API (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        configuration: Configuration,
        clock: Callable[[], datetime],
        share: Callable[[Path], None] | None = None,
        bus: InProcessBus | None = None,
        wrap: Callable[[Deps], Deps] | None = None,
    ) -> None:
        """``bus`` replaces the in-process bus (the fault tests' broker, which duplicates,
        shuffles and redelivers); ``wrap`` may replace ports of the deps the handlers get
        (a runtime or a sink that fails on cue)."""
        data_dir = settings.data_dir.resolve()
        settings = settings.with_overrides(
            runtime="kubernetes",
            data_dir=data_dir,
            store_root=(settings.store_root or data_dir / "store").resolve(),
        )
        self.settings = settings
        assert settings.store_root is not None
        settings.store_root.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._share = share
        self.bus = bus if bus is not None else InProcessBus()
        self.runtime = KubernetesRuntime(
            ApiClient(configuration),
            namespace=settings.namespace,
            grace_period_seconds=settings.pod_grace_period_seconds,
        )
        self.deps: Deps = build_deps(settings, sink=self.bus, runtime=self.runtime, clock=clock)
        if wrap is not None:
            self.deps = wrap(self.deps)
        upgrade(self.deps.engine)
        deps = self.deps
        self.bus.subscribe(
            events.BUILD_REQUESTED, lambda e: _ignore(handlers.on_trigger_event(e, deps))
        )
        self.bus.subscribe(events.STEP_READY, lambda e: handlers.on_step_event(e, deps))
        for type_ in events.POD_EVENTS:
            self.bus.subscribe(type_, lambda e: handlers.on_step_event(e, deps))
        self.source = PodEventSource(
            ApiClient(configuration), namespace=settings.namespace, sink=self.bus
        ).start()

    def __enter__(self) -> ClusterCI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.source.stop()
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
            if path is not None and self._share is not None:
                self._share(path)

    def request_build(
        self, pipeline: str, job: str, versions: Mapping[str, Any] | None = None
    ) -> str:
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

    def run_until(self, done: Callable[[], bool], *, timeout: float = 60) -> None:
        """Deliver events until ``done()``; fails the test after ``timeout`` seconds."""
        if not self.bus.run_until(done, timeout=timeout):
            raise TimeoutError(f"not done within {timeout:.0f}s")

    def run_build(
        self,
        pipeline: str,
        job: str,
        *,
        timeout: float = 60,
        versions: Mapping[str, Any] | None = None,
    ) -> BuildRow:
        """Run one build of ``job`` to its end and return it."""
        event_id = self.request_build(pipeline, job, versions)
        return self.finish(pipeline, event_id, timeout=timeout)

    def finish(self, pipeline: str, event_id: str, *, timeout: float = 60) -> BuildRow:
        """Deliver events until the build of ``event_id`` ends; returns it."""
        state: dict[str, BuildRow | None] = {"build": None}

        def finished() -> bool:
            if event_id in self.bus.rejected:
                return True
            state["build"] = self.build_for(pipeline, event_id)
            build = state["build"]
            return build is not None and build.status in st.BUILD_TERMINAL

        self.run_until(finished, timeout=timeout)
        self.bus.drain()
        if event_id in self.bus.rejected:
            raise self.bus.rejected[event_id]
        build = state["build"]
        assert build is not None
        return build

    def step(self, build_id: int, name: str) -> StepRow:
        """The step called ``name`` (not its check step)."""
        with transaction(self.deps.sessions) as session:
            return session.scalars(
                select(StepRow).where(
                    StepRow.build_id == build_id, StepRow.name == name, StepRow.kind != "check"
                )
            ).one()


def _ignore(_result: object) -> None:
    """Handlers behind the bus answer nothing; the build is found by its event id instead."""
