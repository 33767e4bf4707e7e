"""Steps: launching a step's pod when it is announced, recording it when its pod ends.

``launch_step`` answers ``step.ready``: it moves the step ``scheduled → running``,
registers its outputs (rows committed before directories, invariant 3), builds the
pod from the stored spec and hands it to the runtime. A redelivered announcement
finds the step running and launches the same pod again, which the runtime treats
as already launched, so a crash anywhere in between heals on the next delivery.

``finish_step`` answers a pod that ended: it keeps the pod's log, records the
outcome, marks the outputs ready, and lets ``advance_build`` move the build on.
No handler waits for a pod (invariant 5).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared import artifacts, podstatus
from shared import status as st
from shared.builds import advance_build, step_finished_event
from shared.db import ArtifactRow, BuildRow, PipelineRow, SessionFactory, StepRow, transaction
from shared.errors import NotFoundError
from shared.events import EventSink
from shared.logstore import LogStore
from shared.plan import StepSpec, with_version
from shared.podspec import Mount, PodIds, PodSettings, build_step_pod, pod_name
from shared.runtime import PodDict, Runtime

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def launch_step(
    sessions: SessionFactory,
    *,
    build_id: int,
    step_id: int,
    runtime: Runtime,
    store_root: Path | None,
    pod_settings: PodSettings,
    sink: EventSink,
    clock: Clock,
    handles: Callable[[], str] = artifacts.new_handle,
) -> str | None:
    """Launch the pod of an announced step; returns its name, or ``None`` if there is nothing to do."""
    root = artifacts.require_root(store_root)
    with transaction(sessions) as session:
        step = session.get(StepRow, step_id)
        if step is None or step.build_id != build_id:
            log.info("step.ready for unknown step %s of build %s: ignored", step_id, build_id)
            return None
        if step.status not in (st.SCHEDULED, st.RUNNING):
            return None  # already finished, skipped or aborted: a late or repeated event
        build = session.get(BuildRow, build_id)
        assert build is not None
        pipeline = session.get(PipelineRow, build.pipeline_id)
        assert pipeline is not None
        spec = StepSpec.from_json(step.spec)
        missing, inputs = _inputs(session, build_id, spec)
        if spec.version_from is not None:
            spec, problem = _checked_version(session, build_id, spec)
            missing += [problem] if problem else []
        if missing:
            message = f"{spec.kind} {spec.name!r} cannot start: " + "; ".join(missing)
            _finish(session, step, st.ERRORED, error=message, clock=clock)
            to_emit = step_finished_event(build_id, step)
        else:
            to_emit = None
            ids = PodIds(
                pipeline=pipeline.name,
                job=build.job_name,
                build_id=build_id,
                step_id=step.id,
                step_key=step.key,
                attempt=step.attempt,
            )
            name = pod_name(ids, spec.name)
            if step.status == st.SCHEDULED:
                outputs = artifacts.register(
                    session,
                    build_id=build_id,
                    step_id=step.id,
                    names=[o.name for o in spec.outputs],
                    clock=clock,
                    handles=handles,
                )
                session.execute(
                    update(StepRow)
                    .where(StepRow.id == step.id, StepRow.status == st.SCHEDULED)
                    .values(status=st.RUNNING, pod_name=name, started_at=clock())
                )
            else:
                outputs = list(
                    session.scalars(select(ArtifactRow).where(ArtifactRow.step_id == step.id)).all()
                )
            by_name = {o.name: o for o in outputs}
            mounts = [Mount(subpath=a.subpath, mount=b.mount, read_only=True) for b, a in inputs]
            mounts += [
                Mount(subpath=by_name[o.name].subpath, mount=o.mount, read_only=False)
                for o in spec.outputs
                if o.name in by_name
            ]
            pod = build_step_pod(spec, ids=ids, mounts=mounts, settings=pod_settings)
    if to_emit is not None:
        sink.emit(to_emit)
        advance_build(sessions, build_id=build_id, sink=sink, clock=clock)
        return None
    # The rows are committed: now the directories, then the pod (both idempotent).
    artifacts.make_directories(root, outputs)
    runtime.launch(pod)
    return name


def _checked_version(session: Session, build_id: int, spec: StepSpec) -> tuple[StepSpec, str]:
    """The get with the newest version its check step found, or why there is none."""
    check = session.scalars(
        select(StepRow).where(StepRow.build_id == build_id, StepRow.key == spec.version_from)
    ).one_or_none()
    versions = (check.result if check is not None else {}).get("versions") or []
    if not versions or not isinstance(versions[-1], dict):
        resource = spec.resource.resource if spec.resource else spec.name
        return spec, f"resource {resource!r} has no versions (check found none)"
    return with_version(spec, versions[-1]), ""


def _inputs(
    session: Session, build_id: int, spec: StepSpec
) -> tuple[list[str], list[tuple[Any, ArtifactRow]]]:
    """Each input's ready artifact, or a sentence per input that is not there."""
    missing: list[str] = []
    found = []
    for binding in spec.inputs:
        producer = session.scalars(
            select(StepRow).where(StepRow.build_id == build_id, StepRow.key == binding.producer)
        ).one_or_none()
        row = None
        if producer is not None:
            row = session.scalars(
                select(ArtifactRow).where(
                    ArtifactRow.step_id == producer.id,
                    ArtifactRow.name == binding.name,
                    ArtifactRow.state == artifacts.READY,
                )
            ).one_or_none()
        if row is None:
            missing.append(f"input {binding.name!r} from step {binding.producer} is not available")
        else:
            found.append((binding, row))
    return missing, found


def finish_step(
    sessions: SessionFactory,
    *,
    pod: PodDict,
    runtime: Runtime,
    logs: LogStore,
    store_root: Path | None,
    sink: EventSink,
    clock: Clock,
    delete_pod: bool = True,
) -> str | None:
    """Record the end of a step from its finished pod; returns the step's status, or ``None``.

    Pods JetBridge does not own, pods still running, and pods of attempts already
    recorded are ignored, so repeated and out-of-order events change nothing.
    """
    ref = podstatus.pod_ref(pod)
    if ref is None:
        return None
    with transaction(sessions) as session:
        step = session.get(StepRow, ref.step_id)
        if step is None or step.build_id != ref.build_id:
            return None
        kind, name, key = step.kind, step.name, step.key
        current = step.status == st.RUNNING and step.pod_name == ref.name
    outcome = podstatus.outcome(pod, kind=kind, name=name)
    if outcome is None:
        return None
    data = b""
    if current:
        # Keep the log before anything may delete the pod (logs after the pod is gone).
        try:
            data = runtime.logs(ref.name)
        except NotFoundError:
            data = b"(the pod was gone before its log could be read)\n"
        logs.write(ref.build_id, key, data)
    message = outcome.message
    if outcome.status != st.SUCCEEDED and kind != "task":
        last = _last_line(data)
        if last:
            message = f"{message}: {last}"
    root = artifacts.require_root(store_root)
    emitted = None
    with transaction(sessions) as session:
        step = session.get(StepRow, ref.step_id)
        assert step is not None
        if step.status == st.RUNNING and step.pod_name == ref.name and step.attempt == ref.attempt:
            _finish(
                session,
                step,
                outcome.status,
                error=message,
                clock=clock,
                exit_code=outcome.exit_code,
                result=dict(outcome.result),
            )
            if outcome.status == st.SUCCEEDED:
                for row in session.scalars(
                    select(ArtifactRow).where(ArtifactRow.step_id == step.id)
                ).all():
                    artifacts.mark_ready(session, row, root=root, clock=clock)
            emitted = step_finished_event(ref.build_id, step)
        final = step.status
    if emitted is not None:
        sink.emit(emitted)
    if delete_pod:
        runtime.delete(ref.name)
    # Always: a crash after the step was recorded must not leave the build stuck.
    advance_build(sessions, build_id=ref.build_id, sink=sink, clock=clock)
    return final


def _finish(
    session: Session,
    step: StepRow,
    status: str,
    *,
    error: str | None,
    clock: Clock,
    exit_code: int | None = None,
    result: Mapping[str, Any] | None = None,
) -> bool:
    moved = session.execute(
        update(StepRow)
        .where(StepRow.id == step.id, StepRow.status == step.status)
        .values(
            status=status,
            error=error,
            exit_code=exit_code,
            result=dict(result or {}),
            finished_at=clock(),
        )
    )
    if moved.rowcount:  # type: ignore[attr-defined]
        step.status, step.error, step.exit_code = status, error, exit_code
        return True
    return False


def _last_line(data: bytes) -> str:
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        if line.strip():
            return line.strip()[:500]
    return ""
