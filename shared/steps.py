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

from shared import artifacts, launching, podstatus, versions
from shared import status as st
from shared.builds import advance_build, step_finished_event
from shared.conditions import explain_failure
from shared.db import ArtifactRow, BuildRow, PipelineRow, SessionFactory, StepRow, transaction
from shared.errors import NotFoundError, PodRejected, RuntimeForbidden
from shared.events import EventSink
from shared.logs import credentials
from shared.logstore import LogStore
from shared.plan import INLINE_KINDS, StepSpec, with_version
from shared.podspec import (
    LABEL_BUILD,
    MANAGED_BY,
    PodIds,
    PodSettings,
    credentialed_pod,
    pod_name,
    secret_name,
)
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
        # Its name and variables only: not the whole YAML, on every launch.
        pipeline = session.execute(
            select(PipelineRow.name, PipelineRow.variables).where(
                PipelineRow.id == build.pipeline_id
            )
        ).one()
        spec = StepSpec.from_json(step.spec)
        missing, inputs = _inputs(session, build_id, spec)
        if spec.version_from is not None:
            spec, problem = _checked_version(session, build_id, spec)
            missing += [problem] if problem else []
        custom = spec.resource is not None and spec.resource.image
        if custom and not getattr(runtime, "runs_images", True):
            assert spec.resource is not None
            missing.append(
                f"resource type {spec.resource.type!r} keeps its check/in/out scripts in the "
                f"image {spec.resource.image!r}, and a container image cannot run without a "
                f"cluster; run this pipeline with JETBRIDGE_RUNTIME=kubernetes, or use a "
                f"built-in type"
            )
        if not missing:  # what is only known now: a task file, local vars, an image artifact
            had_file = spec.task_file is not None
            spec, missing = launching.resolve(
                session,
                build_id=build_id,
                spec=spec,
                root=root,
                host_images=launching.runs_on_host(runtime),
            )
            if had_file and not missing:
                missing, inputs = _inputs(session, build_id, spec)
        if missing:
            message = f"{spec.kind} {spec.name!r} cannot start: " + "; ".join(missing)
            _finish(session, step, st.ERRORED, error=message, clock=clock)
            to_emit = step_finished_event(build_id, step)
        elif spec.kind in INLINE_KINDS:  # load_var, set_pipeline: done here, no pod
            status, error, result = launching.run_inline(
                session,
                build_id=build_id,
                pipeline=pipeline.name,
                spec=spec,
                root=root,
                clock=clock,
            )
            _finish(session, step, status, error=error, clock=clock, result=result)
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
                if step.attempt > 1:
                    launching.detach_previous_attempts(session, step.id)
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
                    # The spec as resolved now: a redelivery builds the very same pod.
                    .values(
                        status=st.RUNNING, pod_name=name, started_at=clock(), spec=spec.to_json()
                    )
                )
            else:
                outputs = list(
                    session.scalars(select(ArtifactRow).where(ArtifactRow.step_id == step.id)).all()
                )
            by_name = {o.name: o for o in outputs}
            mounts = launching.mounts(spec, inputs, by_name)
            # Values from the pipeline's ((vars)) reach the pod through the build's Secret;
            # with a ReadWriteOnce store, ``node`` is where the build's first pod ran
            # (finish_step keeps it), for a step launched after the others ended.
            pod, secrets = credentialed_pod(
                spec,
                ids=ids,
                mounts=mounts,
                settings=pod_settings,
                credentials=[*credentials(pipeline.variables), *spec.credentials],
                node=build.node,
            )
            if secrets.data and not build.has_secret:
                build.has_secret = True  # committed before the Secret exists: the reaper finds it
    if to_emit is not None:
        sink.emit(to_emit)
        advance_build(sessions, build_id=build_id, sink=sink, clock=clock)
        return None
    # The rows are committed: now the directories, then the pod (both idempotent).
    artifacts.make_directories(root, outputs)
    if any(o.from_input for o in spec.outputs) and runtime.read(name) is None:
        # Writable inputs: copied before the pod exists, so a pod always sees a whole copy.
        launching.copy_writable_inputs(root, spec, inputs, by_name)
    try:
        if secrets.data:
            labels = {MANAGED_BY: "jetbridge", LABEL_BUILD: str(build_id)}
            runtime.put_secret(secret_name(build_id), secrets.data, labels=labels)
        runtime.launch(pod)
    except (PodRejected, RuntimeForbidden) as e:
        # The same pod would be refused again: the step errors with the reason, so the
        # build ends (and says why) instead of waiting for a pod that will never exist.
        _refused(
            sessions, build_id=build_id, step_id=step_id, pod=name, error=e, sink=sink, clock=clock
        )
        return None
    return name


def _refused(
    sessions: SessionFactory,
    *,
    build_id: int,
    step_id: int,
    pod: str,
    error: Exception,
    sink: EventSink,
    clock: Clock,
) -> None:
    """Record a step errored because the runtime refused its pod."""
    emitted = None
    with transaction(sessions) as session:
        step = session.get(StepRow, step_id)
        assert step is not None
        message = f"{step.kind} {step.name!r} could not start: {error}"
        current = step.status == st.RUNNING and step.pod_name == pod
        if current and _finish(session, step, st.ERRORED, error=message, clock=clock):
            emitted = step_finished_event(build_id, step)
    if emitted is not None:
        sink.emit(emitted)
    advance_build(sessions, build_id=build_id, sink=sink, clock=clock)


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
    """Each input's ready artifact (from its producer, else its fallbacks), or a sentence
    per input that is not there."""
    return launching.find_inputs(session, build_id, spec)


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
    patience: podstatus.Patience | None = None,
    deleted: bool = False,
) -> str | None:
    """Record the end of a step from its finished pod; returns the step's status, or ``None``.

    Pods JetBridge does not own, pods still running, and pods of attempts already
    recorded are ignored, so repeated and out-of-order events change nothing.
    ``delete_pod=False`` leaves the finished pod for the reaper (``pod_retention_seconds``).
    A pod that waits on what will not come (an image that does not pull past
    ``patience``) errors its step and is deleted all the same. ``deleted``: the event
    was a delete, and ``pod`` is the pod's last state.
    """
    ref = podstatus.pod_ref(pod)
    if ref is None:
        return None
    now = clock()
    ended = podstatus.outcome(pod, kind="", name="", now=now, patience=patience, deleted=deleted)
    if ended is None:
        # Pending, scheduled or running: nothing to record, and no database to ask. Most
        # of ApiServerSource's events are these.
        return None
    with transaction(sessions) as session:
        step = session.get(StepRow, ref.step_id)
        if step is None or step.build_id != ref.build_id:
            return None
        kind, name, key, status_now = step.kind, step.name, step.key, step.status
        current = step.status == st.RUNNING and step.pod_name == ref.name
        spec = StepSpec.from_json(step.spec)
        node = (pod.get("spec") or {}).get("nodeName")
        if node and current:
            # The first node a pod of the build ended on: with a ReadWriteOnce store, the
            # node every later pod of the build is pinned to (launch_step). Pods running
            # side by side meanwhile are kept together by pod affinity.
            session.execute(
                update(BuildRow)
                .where(BuildRow.id == ref.build_id, BuildRow.node.is_(None))
                .values(node=str(node))
            )
    if not current:
        # Recorded already (a repeated event, the pod's delete after its end) or another
        # attempt's pod: nothing to record. A repeated end is advanced again, in case its
        # first delivery died between recording and advancing; a delete is not (that end's
        # own redelivery, or the reaper's settle_builds, does it).
        if deleted:
            return status_now
        if delete_pod or ended.doomed:
            runtime.delete(ref.name)
        advance_build(sessions, build_id=ref.build_id, sink=sink, clock=clock)
        return status_now
    outcome = podstatus.outcome(
        pod, kind=kind, name=name, now=now, patience=patience, deleted=deleted
    )
    assert outcome is not None  # the same pod and time as above
    data = b""
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
    # Where the plan knows more than the pod: its own timeout, a write to a read-only input.
    status, message = explain_failure(
        spec, status=outcome.status, reason=outcome.reason, message=message, log=data
    )
    root = artifacts.require_root(store_root)
    emitted = None
    with transaction(sessions) as session:
        step = session.get(StepRow, ref.step_id)
        assert step is not None
        if step.status == st.RUNNING and step.pod_name == ref.name and step.attempt == ref.attempt:
            # Two finishers of one pod (its event and the reaper's resync) can both get
            # here; the compare-and-set lets one record and announce the step.
            moved = _finish(
                session,
                step,
                status,
                error=message,
                clock=clock,
                exit_code=outcome.exit_code,
                result=dict(outcome.result),
            )
            if moved and status == st.SUCCEEDED:
                for row in session.scalars(
                    select(ArtifactRow).where(ArtifactRow.step_id == step.id)
                ).all():
                    artifacts.mark_ready(session, row, root=root, clock=clock)
                if kind == "check":  # the versions it found join the resource's history
                    versions.save_check_result(
                        session,
                        build_id=ref.build_id,
                        spec=spec,
                        result=outcome.result,
                        now=clock(),
                    )
            if moved:
                emitted = step_finished_event(ref.build_id, step, reason=outcome.reason)
            else:  # the other one recorded it first: its status is the step's
                session.refresh(step)
        final = step.status
    if emitted is not None:
        sink.emit(emitted)
    if (delete_pod or outcome.doomed) and not deleted:
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
