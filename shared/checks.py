"""Resource checks: a resource's ``check`` script run as a build, on a schedule or on demand.

A check is a build like any other, of a job that is not in the pipeline: ``check:<resource>``,
one step of kind ``check`` (``plan.check_spec``), so it runs through the same machinery
(step runner, pods, logs, the reaper's resync). It asks for the versions from the newest one
JetBridge knows (Concourse's protocol: the script answers that one and every newer one,
oldest first); when it succeeds, the step runner saves what it found
(``versions.save_check_result``), and its ``build.finished`` lets the trigger function
start the builds the new versions call for (``shared.triggers``).

``run_due_checks`` is called by the scheduled tick: every resource whose ``check_every``
(Concourse's default, one minute; ``never`` for none) has passed since its last check is
checked, unless its last check is still under way. A check's event id is its time slot,
so two ticks racing start one check. Only the newest ``KEEP_CHECK_BUILDS`` finished check
builds of a resource are kept: they are history nobody reads, one a minute.

``jetbridge builds`` leaves check builds out unless asked (``--checks``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import status as st
from shared.builds import Started, announce, paused_message, with_credentials
from shared.db import BuildRow, PipelineRow, SessionFactory, StepRow, transaction
from shared.errors import JetBridgeError, NotFoundError, PipelinePaused
from shared.events import EventSink
from shared.pipeline import Pipeline, Resource, duration_seconds
from shared.pipelines import find_pipeline, load
from shared.plan import CHECK_JOB_PREFIX, check_spec
from shared.versions import latest_version, scope_of

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: Concourse's default ``check_every``: a resource without one is checked every minute.
DEFAULT_CHECK_EVERY_SECONDS = 60
#: Finished check builds kept per resource; older ones (and their steps) are deleted.
KEEP_CHECK_BUILDS = 10


def check_job(resource: str) -> str:
    """The job name a resource's check builds go by."""
    return CHECK_JOB_PREFIX + resource


def checked_resource(job: str) -> str | None:
    """The resource a ``check:<resource>`` job checks; ``None`` for any other job."""
    return job.removeprefix(CHECK_JOB_PREFIX) if job.startswith(CHECK_JOB_PREFIX) else None


def check_interval(resource: Resource) -> int | None:
    """Seconds between checks of ``resource``; ``None`` for ``check_every: never``."""
    if resource.check_every is None:
        return DEFAULT_CHECK_EVERY_SECONDS
    if resource.check_every == "never":
        return None
    return max(1, duration_seconds(resource.check_every))


def start_check(
    sessions: SessionFactory,
    *,
    pipeline: str,
    resource: str,
    sink: EventSink,
    clock: Clock,
    event_id: str | None = None,
) -> Started:
    """Check ``resource`` of ``pipeline`` now: record a check build and announce its step.

    A redelivered request (same ``event_id``) is answered with the build it made
    (``created=False``). A paused pipeline checks nothing (``PipelinePaused``); an unknown
    resource is ``NotFoundError``.
    """
    job = check_job(resource)
    try:
        with transaction(sessions) as session:
            row = find_pipeline(session, pipeline, lock=True)
            existing = _same_request(session, row.id, job, event_id)
            if existing is not None:
                started = Started(
                    build_id=existing.id,
                    number=existing.number,
                    created=False,
                    status=existing.status,
                )
            elif row.paused:
                raise PipelinePaused(paused_message(pipeline))
            else:
                started = _record_check(
                    session, row, load(row), resource, clock=clock, event_id=event_id
                )
    except IntegrityError:
        # Another copy of this request got there first: answer with its build.
        with transaction(sessions) as session:
            row = find_pipeline(session, pipeline)
            found = _same_request(session, row.id, job, event_id)
        if found is None:
            raise
        started = Started(
            build_id=found.id, number=found.number, created=False, status=found.status
        )
    if started.created:
        announce(sessions, [started], sink=sink, clock=clock)
    return started


def _same_request(
    session: Session, pipeline_id: int, job: str, event_id: str | None
) -> BuildRow | None:
    """The check build ``event_id`` made, if it made one."""
    if event_id is None:
        return None
    return session.scalars(
        select(BuildRow).where(
            BuildRow.pipeline_id == pipeline_id,
            BuildRow.job_name == job,
            BuildRow.event_id == event_id,
        )
    ).one_or_none()


def _record_check(
    session: Session,
    pipeline: PipelineRow,
    model: Pipeline,
    resource: str,
    *,
    clock: Clock,
    event_id: str | None,
) -> Started:
    try:
        found = model.resource(resource)
    except KeyError as e:
        raise NotFoundError(str(e.args[0])) from None
    since = latest_version(
        session, pipeline_id=pipeline.id, resource=found.name, scope=scope_of(found)
    )
    spec = check_spec(model, found.name, version=since)
    spec = with_credentials(spec, pipeline.variables)
    job = check_job(found.name)
    last = session.scalar(
        select(func.max(BuildRow.number)).where(
            BuildRow.pipeline_id == pipeline.id, BuildRow.job_name == job
        )
    )
    now = clock()
    build = BuildRow(
        pipeline_id=pipeline.id,
        job_name=job,
        number=(last or 0) + 1,
        status=st.STARTED,
        event_id=event_id,
        versions={},
        created_at=now,
        started_at=now,
    )
    session.add(build)
    session.flush()
    session.add(
        StepRow(
            build_id=build.id,
            key=spec.key,
            name=spec.name,
            kind=spec.kind,
            depends_on=[],
            spec=spec.to_json(),
            status=st.PENDING,
            attempt=1,
            result={},
            created_at=now,
        )
    )
    session.flush()
    return Started(build_id=build.id, number=build.number, created=True)


@dataclass(kw_only=True)
class CheckReport:
    """What one ``run_due_checks`` did."""

    started: list[str] = field(default_factory=list)
    """``pipeline/resource`` of each check started."""
    errors: list[str] = field(default_factory=list)
    pruned: int = 0
    """Old check builds deleted."""

    def summary(self) -> str:
        return f"{len(self.started)} check(s) started, {self.pruned} old check build(s) deleted" + (
            f", {len(self.errors)} error(s)" if self.errors else ""
        )


def run_due_checks(sessions: SessionFactory, *, sink: EventSink, clock: Clock) -> CheckReport:
    """Check every resource of every unpaused pipeline whose ``check_every`` has passed since
    its last check (the scheduled tick); a pipeline or resource that fails is reported and
    the others go on."""
    report = CheckReport()
    now = clock()
    due: list[tuple[str, str, str]] = []
    with transaction(sessions) as session:
        for row in session.scalars(
            select(PipelineRow).where(PipelineRow.paused.is_(False)).order_by(PipelineRow.name)
        ).all():
            try:
                model = load(row)
            except JetBridgeError as e:
                report.errors.append(f"{row.name}: {e}")
                continue
            for resource in model.resources:
                interval = check_interval(resource)
                if interval is None:
                    continue
                last = session.execute(
                    select(BuildRow.status, BuildRow.created_at)
                    .where(
                        BuildRow.pipeline_id == row.id,
                        BuildRow.job_name == check_job(resource.name),
                    )
                    .order_by(BuildRow.id.desc())
                    .limit(1)
                ).one_or_none()
                if last is not None and (
                    last.status not in st.BUILD_TERMINAL
                    or (now - last.created_at).total_seconds() < interval
                ):
                    continue
                # One id per interval: two ticks in the same slot start one check.
                slot = int(now.timestamp()) // interval
                due.append((row.name, resource.name, f"check-{interval}s-{slot}"))
            report.pruned += _prune(session, row.id, model)
    for pipeline, name, event_id in due:
        try:
            started = start_check(
                sessions,
                pipeline=pipeline,
                resource=name,
                sink=sink,
                clock=clock,
                event_id=event_id,
            )
        except JetBridgeError as e:
            report.errors.append(f"{pipeline}/{name}: {e}")
            continue
        if started.created:
            report.started.append(f"{pipeline}/{name}")
    return report


def _prune(session: Session, pipeline_id: int, model: Pipeline) -> int:
    """Delete a pipeline's finished check builds past the newest ``KEEP_CHECK_BUILDS`` each."""
    deleted = 0
    for resource in model.resources:
        old = session.scalars(
            select(BuildRow.id)
            .where(
                BuildRow.pipeline_id == pipeline_id,
                BuildRow.job_name == check_job(resource.name),
                BuildRow.status.in_(st.BUILD_TERMINAL),
            )
            .order_by(BuildRow.id.desc())
            .offset(KEEP_CHECK_BUILDS)
        ).all()
        if old:
            session.execute(delete(StepRow).where(StepRow.build_id.in_(old)))
            deleted += session.execute(delete(BuildRow).where(BuildRow.id.in_(old))).rowcount  # type: ignore[attr-defined]
    return deleted
