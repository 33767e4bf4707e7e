"""What the reaper's tests share: a world of builds, a store and pods, and ports that fail on cue.

Faults come in through the reaper's own ports (the directory remover, the runtime,
the sink, the log store), never by patching JetBridge's code: a *crash* is a
``Killed`` (a ``BaseException``, like the signal that stops a process) raised at
a chosen point, which the tick must not swallow; a *failure* is the error a real
port raises, which the tick must record and survive.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import select, update

from shared import artifacts
from shared import status as st
from shared.builds import start_build
from shared.db import ArtifactRow, BuildRow, PipelineRow, StepRow, transaction
from shared.events import RecordingSink, event_data
from shared.logstore import DirectoryLogStore
from shared.pipelines import save_pipeline
from shared.podspec import PodSettings
from shared.reaper import REAPING_PREFIX, ReapReport, reap
from shared.runtime import PodDict
from shared.settings import Settings
from shared.steps import finish_step, launch_step
from tests.fakes import FakeClock, FakeRuntime, Handles

#: get repo → compile (reads repo, writes dist) → unit and lint side by side → ship.
PIPELINE = """
resources:
- name: repo
  type: git
  source: {uri: /tmp/nowhere}
jobs:
- name: build
  plan:
  - get: repo
  - task: compile
    config:
      platform: linux
      inputs: [{name: repo}]
      outputs: [{name: dist}]
      run: {path: make}
  - in_parallel:
    - task: unit
      config:
        platform: linux
        inputs: [{name: dist}]
        run: {path: test}
    - task: lint
      config:
        platform: linux
        inputs: [{name: repo}]
        run: {path: lint}
  - task: ship
    config:
      platform: linux
      inputs: [{name: dist}]
      run: {path: ship}
"""

#: Settings with round numbers the tests count in.
SETTINGS = Settings(
    reaper_grace_seconds=600,
    reaper_lease_seconds=240,
    reaper_batch_size=7,  # small, so every test crosses batch boundaries
    artifact_retention_seconds=0,
    adhoc_retention_seconds=86400,
    build_timeout_seconds=21600,
    step_ready_resend_seconds=600,
    pod_retention_seconds=0,
    store_min_free_bytes=0,
    store_min_free_percent=0,
)


class Killed(BaseException):
    """The process was killed here (a SIGKILL, an OOM kill, a node gone)."""


class Usage(NamedTuple):
    total: int
    used: int
    free: int


class FakeDisk:
    """``shutil.disk_usage`` of a volume of ``total`` bytes holding the store and ``other`` bytes."""

    def __init__(self, total: int = 10**12, other: int = 0) -> None:
        self.total = total
        self.other = other
        self.calls = 0

    def __call__(self, path: Path) -> Usage:
        self.calls += 1
        used = self.other + sum(
            os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files
        )
        return Usage(self.total, used, self.total - used)


class Remover:
    """``artifacts.remove_directory``, counting what it removes and failing or crashing on cue."""

    def __init__(self, crash: str | None = None, fail: tuple[str, ...] = ()) -> None:
        self.crash = crash
        """``"before"`` the directory is deleted, or ``"after"``; once, then it heals."""
        self.fail = fail
        """Subpaths containing one of these fail with the store's error, every time."""
        self.removed: Counter[str] = Counter()
        """Removals by original name (a claimed directory's prefix taken off)."""
        self.lock = threading.Lock()  # the reaper removes a few directories at once

    def __call__(self, root: Path, subpath: str) -> int:
        with self.lock:
            crash, self.crash = self.crash, None
        if crash == "before":
            raise Killed(f"killed before removing {subpath}")
        if any(f in subpath for f in self.fail):
            raise artifacts.ArtifactStoreError(f"Permission denied: {subpath}")
        freed = artifacts.remove_directory(root, subpath)
        with self.lock:
            self.removed[original(subpath)] += 1
        if crash == "after":
            raise Killed(f"killed after removing {subpath}")
        return freed


def original(subpath: str) -> str:
    """``artifacts/3/.jetbridge-reaping-<t>-h0001`` → ``artifacts/3/h0001``."""
    folder, _, name = subpath.rpartition("/")
    if name.startswith(REAPING_PREFIX):
        name = name[len(REAPING_PREFIX) :].split("-", 1)[1]
    return f"{folder}/{name}"


class FaultyRuntime(FakeRuntime):
    """The fake runtime, whose methods raise what a test arms them with, once each."""

    def __init__(self) -> None:
        super().__init__()
        self.faults: dict[str, BaseException] = {}

    def _fault(self, method: str) -> None:
        fault = self.faults.pop(method, None)
        if fault is not None:
            raise fault

    def read(self, name: str) -> PodDict | None:
        self._fault("read")
        return super().read(name)

    def list(self) -> list[PodDict]:
        self._fault("list")
        return super().list()

    def logs(self, name: str) -> bytes:
        self._fault("logs")
        return super().logs(name)

    def delete(self, name: str) -> None:
        self._fault("delete")
        super().delete(name)


class FaultySink(RecordingSink):
    """Records events; raises what it is armed with on the first event of a given type."""

    def __init__(self) -> None:
        super().__init__()
        self.faults: dict[str, BaseException] = {}

    def emit(self, event: Any) -> None:
        fault = self.faults.pop(event["type"], None)
        if fault is not None:
            raise fault
        super().emit(event)

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [event_data(e) | {"id": e["id"]} for e in self.events if e["type"] == type_]


class FaultyLogs(DirectoryLogStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fault: BaseException | None = None

    def write(self, build_id: int, step_key: str, data: bytes) -> None:
        fault, self.fault = self.fault, None
        if fault is not None:
            raise fault
        super().write(build_id, step_key, data)


@dataclass
class World:
    """A database, a store, pods, events and a clock, with builds in whatever state a test needs."""

    sessions: Any
    tmp: Path
    clock: FakeClock
    settings: Settings = SETTINGS
    runtime: FaultyRuntime = field(default_factory=FaultyRuntime)
    sink: FaultySink = field(default_factory=FaultySink)
    disk: FakeDisk = field(default_factory=FakeDisk)
    handles: Handles = field(default_factory=Handles)
    extra: set[str] = field(default_factory=set)
    """What a case adds to what every tick must leave alone."""

    def __post_init__(self) -> None:
        self.root = self.tmp / "store"
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs = FaultyLogs(self.tmp / "logs")
        with transaction(self.sessions) as session:
            save_pipeline(session, name="demo", config=PIPELINE, clock=self.clock)

    # --- ticks -------------------------------------------------------------------------

    def reap(self, remove: Remover | None = None, *, dry_run: bool = False) -> ReapReport:
        return reap(
            self.sessions,
            store_root=self.root,
            clock=self.clock,
            settings=self.settings,
            runtime=self.runtime,
            logs=self.logs,
            sink=self.sink,
            remove=remove or Remover(),
            disk_usage=self.disk,
            dry_run=dry_run,
        )

    # --- builds driven through the real services ----------------------------------------

    def start(self) -> int:
        """A build of demo/build with the repo pinned (so no check step): its get is announced."""
        return start_build(
            self.sessions,
            pipeline="demo",
            job="build",
            sink=self.sink,
            clock=self.clock,
            versions={"repo": {"ref": "abc"}},
        ).build_id

    def step(self, build_id: int, name: str) -> StepRow:
        with transaction(self.sessions) as session:
            return session.scalars(
                select(StepRow).where(StepRow.build_id == build_id, StepRow.name == name)
            ).one()

    def launch(self, build_id: int, name: str) -> str:
        """Launch a scheduled step as its ``step.ready`` would; returns its pod's name."""
        step = self.step(build_id, name)
        pod = launch_step(
            self.sessions,
            build_id=build_id,
            step_id=step.id,
            runtime=self.runtime,
            store_root=self.root,
            pod_settings=PodSettings(claim="store"),
            sink=self.sink,
            clock=self.clock,
            handles=self.handles,
        )
        assert pod is not None, f"{name} was not launched"
        return pod

    def end_pod(self, pod: str, exit_code: int = 0) -> PodDict:
        """The pod ends (writing a file into each output first); no event is delivered yet."""
        with transaction(self.sessions) as session:
            step = session.scalars(select(StepRow).where(StepRow.pod_name == pod)).one()
            outputs = session.scalars(
                select(ArtifactRow).where(ArtifactRow.step_id == step.id)
            ).all()
        for row in outputs:
            (self.root / row.subpath / "out.txt").write_text(f"{row.name} of {pod}\n")
        return self.runtime.finish(pod, exit_code, log=f"log of {pod}\n".encode())

    def finish(self, pod: str, exit_code: int = 0, *, delete_pod: bool = True) -> None:
        """The pod ends and its event is delivered."""
        finish_step(
            self.sessions,
            pod=self.end_pod(pod, exit_code),
            runtime=self.runtime,
            logs=self.logs,
            store_root=self.root,
            sink=self.sink,
            clock=self.clock,
            delete_pod=delete_pod,
        )

    def run(self, build_id: int, *names: str) -> None:
        """Launch and finish the named steps, in order, successfully."""
        for name in names:
            self.finish(self.launch(build_id, name))

    # --- rows and directories made directly ---------------------------------------------

    def step_row(self, build_id: int, *, status: str, key: str = "0", **values: Any) -> int:
        """A step row of a build made with ``build``: a task with no inputs."""
        with transaction(self.sessions) as session:
            row = StepRow(
                build_id=build_id,
                key=key,
                name=f"step-{key}",
                kind="task",
                depends_on=[],
                spec={"key": key, "name": f"step-{key}", "kind": "task"},
                status=status,
                attempt=1,
                result={},
                created_at=self.clock(),
                **values,
            )
            session.add(row)
            session.flush()
            return row.id

    def build(
        self, status: str = st.SUCCEEDED, *, ended_ago: float = 0, pipeline_name: str = "demo"
    ) -> int:
        """A build row of ``<pipeline>/build`` with no steps, ended ``ended_ago`` seconds ago if over."""
        now = self.clock()
        with transaction(self.sessions) as session:
            pipeline = session.scalars(
                select(PipelineRow).where(PipelineRow.name == pipeline_name)
            ).one()
            number = len(session.scalars(select(BuildRow.id)).all()) + 1
            row = BuildRow(
                pipeline_id=pipeline.id,
                job_name="build",
                number=number,
                status=status,
                versions={},
                created_at=now - timedelta(seconds=ended_ago + 60),
                started_at=now - timedelta(seconds=ended_ago + 60),
                finished_at=(
                    now - timedelta(seconds=ended_ago) if status in st.BUILD_TERMINAL else None
                ),
            )
            session.add(row)
            session.flush()
            return row.id

    def artifact(
        self,
        build_id: int | None,
        *,
        state: str = artifacts.READY,
        age: float = 0,
        content: bytes = b"x" * 100,
        directory: bool = True,
        **values: Any,
    ) -> str:
        """An artifact row (and its directory, holding ``content``) made ``age`` seconds ago."""
        with transaction(self.sessions) as session:
            (row,) = artifacts.register(
                session,
                build_id=build_id,
                step_id=None,
                names=["out"],
                clock=lambda: self.clock() - timedelta(seconds=age),
                handles=self.handles,
            )
            row.state = state
            row.size = len(content) if state == artifacts.READY else None
            for key, value in values.items():
                setattr(row, key, value)
            subpath = row.subpath
        if directory:
            path = self.root / subpath
            path.mkdir(parents=True)
            (path / "file").write_bytes(content)
        return subpath

    def directory(self, subpath: str, *, age: float) -> Path:
        """A directory on the store with no row, last changed ``age`` seconds ago (by the clock)."""
        path = self.root / subpath
        path.mkdir(parents=True)
        (path / "file").write_bytes(b"y" * 10)
        self.touch(path, age=age)
        return path

    def touch(self, path: Path, *, age: float) -> None:
        moment = (self.clock() - timedelta(seconds=age)).timestamp()
        os.utime(path, (moment, moment))

    # --- what a user would check --------------------------------------------------------

    def rows(self) -> dict[str, str]:
        """Every artifact row: subpath → state."""
        with transaction(self.sessions) as session:
            rows = session.execute(select(ArtifactRow.subpath, ArtifactRow.state))
            return {r.subpath: r.state for r in rows}

    def dirs(self) -> set[str]:
        """Every entry at ``artifacts/<folder>/<name>`` on the store."""
        base = self.root / "artifacts"
        if not base.exists():
            return set()
        return {
            f"artifacts/{folder.name}/{entry.name}"
            for folder in base.iterdir()
            for entry in folder.iterdir()
        }

    def folders(self) -> set[str]:
        base = self.root / "artifacts"
        return {p.name for p in base.iterdir()} if base.exists() else set()

    def rows_of(self, build_id: int, name: str) -> str:
        """The subpath of the artifact called ``name`` in a build."""
        with transaction(self.sessions) as session:
            return session.scalars(
                select(ArtifactRow.subpath).where(
                    ArtifactRow.build_id == build_id, ArtifactRow.name == name
                )
            ).one()

    def assert_agree(self, allow: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Store and database agree: each directory has a row, no row is half-reaped.

        ``allow``: directories a tick rightly leaves without a row (younger than the
        grace period, an upload's staging while its row is ``creating``).
        """
        rows = self.rows()
        assert self.dirs() - set(rows) - allow == set(), "directories with no row"
        assert {s for s, state in rows.items() if state == artifacts.REAPING} == set()

    def set_step(self, step_id: int, **values: Any) -> None:
        with transaction(self.sessions) as session:
            session.execute(update(StepRow).where(StepRow.id == step_id).values(**values))

    def set_build(self, build_id: int, **values: Any) -> None:
        with transaction(self.sessions) as session:
            session.execute(update(BuildRow).where(BuildRow.id == build_id).values(**values))


def snapshot(world: World) -> dict[str, Any]:
    """Everything a tick could change: every table's rows, the store's tree, pods, events."""
    tables: dict[str, Any] = {}
    with transaction(world.sessions) as session:
        for row_type in (PipelineRow, BuildRow, StepRow, ArtifactRow):
            rows = session.scalars(select(row_type).order_by(row_type.id)).all()
            tables[row_type.__tablename__] = [
                {c.key: getattr(r, c.key) for c in row_type.__table__.columns} for r in rows
            ]
    tree = {
        str(p.relative_to(world.root)): (p.is_dir(), p.stat().st_mtime_ns)
        for p in _walk(world.root)
    }
    logs = sorted(str(p.relative_to(world.logs.root)) for p in _walk(world.logs.root))
    return {
        "tables": tables,
        "store": tree,
        "logs": logs,
        "pods": world.runtime.list(),
        "deleted": list(world.runtime.deleted),
        "events": [e["id"] for e in world.sink.events],
    }


def _walk(root: Path) -> Iterator[Path]:
    return iter(sorted(root.rglob("*"))) if root.exists() else iter(())


def at(clock: FakeClock, seconds: float) -> datetime:
    return clock() - timedelta(seconds=seconds)
