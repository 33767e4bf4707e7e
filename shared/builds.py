"""Builds: starting one from a request, moving it along as its steps finish.

``start_build`` records a build and its compiled steps in one transaction (a
redelivered request finds the build it made before and starts nothing), then
``advance_build`` announces whatever can run. ``advance_build`` is the one place
a build moves: it is called after every step finishes, takes the build's row
lock so two finishing steps cannot both miss the end, and is safe to call any
number of times.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import events
from shared import status as st
from shared.db import BuildRow, SessionFactory, StepRow, transaction
from shared.errors import NotFoundError, PipelineError
from shared.events import EventSink
from shared.pipelines import find_pipeline, load
from shared.plan import compile_plan

Clock = Callable[[], datetime]


@dataclass(frozen=True, kw_only=True)
class Started:
    """What ``start_build`` did: the build, and whether this call created it."""

    build_id: int
    number: int
    created: bool


def start_build(
    sessions: SessionFactory,
    *,
    pipeline: str,
    job: str,
    sink: EventSink,
    clock: Clock,
    event_id: str | None = None,
    versions: Mapping[str, Mapping[str, Any]] | None = None,
) -> Started:
    """Record a build of ``pipeline``/``job`` and announce its first steps."""
    try:
        with transaction(sessions) as session:
            started = _record_build(session, pipeline, job, clock, event_id, versions or {})
    except IntegrityError:
        # Another copy of this request got there first: answer with its build.
        with transaction(sessions) as session:
            existing = _build_for_event(session, pipeline, job, event_id)
            if existing is None:
                raise
            started = Started(build_id=existing.id, number=existing.number, created=False)
    advance_build(sessions, build_id=started.build_id, sink=sink, clock=clock)
    return started


def _record_build(
    session: Session,
    pipeline_name: str,
    job: str,
    clock: Clock,
    event_id: str | None,
    versions: Mapping[str, Mapping[str, Any]],
) -> Started:
    row = find_pipeline(session, pipeline_name, lock=True)
    if event_id is not None:
        existing = _build_for_event(session, pipeline_name, job, event_id)
        if existing is not None:
            return Started(build_id=existing.id, number=existing.number, created=False)
    model = load(row)
    try:
        model.job(job)
    except KeyError as e:
        raise NotFoundError(str(e.args[0])) from None
    specs = compile_plan(model, job, versions=versions)
    last = session.scalar(
        select(func.max(BuildRow.number)).where(
            BuildRow.pipeline_id == row.id, BuildRow.job_name == job
        )
    )
    now = clock()
    build = BuildRow(
        pipeline_id=row.id,
        job_name=job,
        number=(last or 0) + 1,
        status=st.STARTED,
        event_id=event_id,
        versions={k: dict(v) for k, v in versions.items()},
        created_at=now,
        started_at=now,
    )
    session.add(build)
    session.flush()
    for spec in specs:
        session.add(
            StepRow(
                build_id=build.id,
                key=spec.key,
                name=spec.name,
                kind=spec.kind,
                depends_on=list(spec.depends_on),
                spec=spec.to_json(),
                status=st.PENDING,
                attempt=1,
                result={},
                created_at=now,
            )
        )
    session.flush()
    return Started(build_id=build.id, number=build.number, created=True)


def _build_for_event(
    session: Session, pipeline_name: str, job: str, event_id: str | None
) -> BuildRow | None:
    if event_id is None:
        return None
    row = find_pipeline(session, pipeline_name)
    return session.scalars(
        select(BuildRow).where(
            BuildRow.pipeline_id == row.id, BuildRow.job_name == job, BuildRow.event_id == event_id
        )
    ).one_or_none()


def advance_build(sessions: SessionFactory, *, build_id: int, sink: EventSink, clock: Clock) -> str:
    """Announce the steps that can run, skip those that never will, finish the build when done.

    Returns the build's status afterwards. Idempotent: a second call with
    nothing new changes nothing and announces nothing.
    """
    to_announce: list[StepRow] = []
    skipped: list[StepRow] = []
    finished: BuildRow | None = None
    with transaction(sessions) as session:
        build = session.scalars(
            select(BuildRow).where(BuildRow.id == build_id).with_for_update()
        ).one_or_none()
        if build is None:
            raise NotFoundError(f"no build {build_id}")
        if build.status in st.BUILD_TERMINAL:
            return build.status
        steps = session.scalars(select(StepRow).where(StepRow.build_id == build_id)).all()
        by_key = {s.key: s for s in steps}
        now = clock()
        changed = True
        while changed:  # skipping one step can doom the ones after it
            changed = False
            for step in steps:
                if step.status != st.PENDING:
                    continue
                deps = [by_key[k].status for k in step.depends_on if k in by_key]
                if any(d in st.STEP_UNSUCCESSFUL for d in deps):
                    if _move(session, step, st.PENDING, st.SKIPPED, finished_at=now):
                        skipped.append(step)
                        changed = True
                elif all(d == st.SUCCEEDED for d in deps) and _move(
                    session, step, st.PENDING, st.SCHEDULED
                ):
                    to_announce.append(step)
        if all(s.status in st.STEP_TERMINAL for s in steps):
            outcome = st.build_outcome([s.status for s in steps])
            errors = [s.error for s in steps if s.error]
            moved = session.execute(
                update(BuildRow)
                .where(BuildRow.id == build_id, BuildRow.status == build.status)
                .values(status=outcome, finished_at=now, error=errors[0] if errors else None)
            )
            if moved.rowcount:  # type: ignore[attr-defined]
                build.status = outcome
                finished = build
        result = build.status
    for step in skipped:
        sink.emit(step_finished_event(build_id, step))
    for step in to_announce:
        sink.emit(step_ready_event(build_id, step))
    if finished is not None:
        sink.emit(
            events.make_event(
                events.BUILD_FINISHED,
                {
                    "build_id": build_id,
                    "job": finished.job_name,
                    "number": finished.number,
                    "status": finished.status,
                },
                subject=f"builds/{build_id}",
                id_=f"build-{build_id}-finished",
            )
        )
    return result


def step_ready_event(build_id: int, step: StepRow) -> Any:
    """The ``step.ready`` announcement for one attempt of a step (a stable id per attempt)."""
    return events.make_event(
        events.STEP_READY,
        {"build_id": build_id, "step_id": step.id, "attempt": step.attempt},
        subject=f"builds/{build_id}/steps/{step.key}",
        id_=f"step-{step.id}-{step.attempt}-ready",
    )


def step_finished_event(build_id: int, step: StepRow) -> Any:
    """``step.finished``: a step reached a final status (succeeded, failed, errored, skipped…)."""
    return events.make_event(
        events.STEP_FINISHED,
        {
            "build_id": build_id,
            "step_id": step.id,
            "key": step.key,
            "name": step.name,
            "kind": step.kind,
            "status": step.status,
            "exit_code": step.exit_code,
            "error": step.error,
        },
        subject=f"builds/{build_id}/steps/{step.key}",
        id_=f"step-{step.id}-{step.attempt}-finished",
    )


def _move(session: Session, step: StepRow, frm: str, to: str, **values: Any) -> bool:
    """Compare-and-set one step's status; keeps the in-memory row in step with the database."""
    result = session.execute(
        update(StepRow)
        .where(StepRow.id == step.id, StepRow.status == frm)
        .values(status=to, **values)
    )
    if result.rowcount:  # type: ignore[attr-defined]
        step.status = to
        return True
    return False


def builds_of(session: Session, *, limit: int = 50) -> Sequence[BuildRow]:
    return session.scalars(select(BuildRow).order_by(BuildRow.id.desc()).limit(limit)).all()


__all__ = ["PipelineError", "Started", "advance_build", "builds_of", "start_build"]
