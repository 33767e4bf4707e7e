"""Builds: starting one from a request, moving it along as its steps finish.

``start_build`` records a build and its compiled steps in one transaction (a
redelivered request finds the build it made before and starts nothing), then
``advance_build`` announces whatever can run. ``advance_build`` is the one place
a build moves: it is called after every step finishes, takes the build's row
lock so two finishing steps cannot both miss the end, and is safe to call any
number of times.

Concurrency limits are Concourse's: ``serial: true``, ``serial_groups`` and
``max_in_flight``. A build over its job's limit is recorded ``pending`` and starts,
oldest first, when a build holding a slot finishes. Every decision to start a build
of a pipeline is taken under that pipeline's row lock (``SELECT … FOR UPDATE``), so
two starts racing cannot both take the last slot. Locks are always taken build row
first, pipeline row second, never the other way round.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import events
from shared import status as st
from shared.conditions import StepState, decide
from shared.db import BuildRow, PipelineRow, SessionFactory, StepRow, transaction
from shared.errors import (
    JetBridgeError,
    NotFoundError,
    PipelineError,
    PipelinePaused,
    VariableError,
)
from shared.events import EventSink
from shared.logs import credentials
from shared.logstore import LogStore
from shared.pipeline import Job, Pipeline
from shared.pipelines import find_pipeline, load
from shared.plan import CHECK_JOB_PREFIX, StepSpec, compile_plan
from shared.podspec import credentials_in
from shared.runtime import Runtime
from shared.versions import record_build_versions, resolve_job

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


@dataclass(frozen=True, kw_only=True)
class Started:
    """What ``start_build`` did: the build, and whether this call created it."""

    build_id: int
    number: int
    created: bool
    status: str = st.STARTED
    """``started``, or ``pending`` while its job's concurrency limit is reached."""
    unblocked: tuple[int, ...] = ()
    """Other builds this call started: waiting ones a raised limit let through."""


def paused_message(name: str) -> str:
    return (
        f"pipeline {name!r} is paused: it starts no builds; "
        f"`jetbridge unpause-pipeline {name}` resumes it"
    )


def job_limit(job: Job) -> int | None:
    """How many builds of ``job`` may run at once; ``None``: no limit.

    ``serial`` and ``serial_groups`` mean one, and win over ``max_in_flight``, as in Concourse.
    """
    if job.serial or job.serial_groups:
        return 1
    return job.max_in_flight


def with_credentials(spec: StepSpec, variables: Mapping[str, Any]) -> StepSpec:
    """``spec`` keeping the values of the vars it was planned with that it holds: a
    credential goes through the build's Secret even if the vars change before it starts."""
    return replace(spec, credentials=credentials_in(spec, credentials(variables)))


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
    """Record a build of ``pipeline``/``job`` and announce its first steps.

    A paused pipeline starts nothing (``PipelinePaused``); a build over its job's
    concurrency limit is recorded ``pending`` and announced when a slot frees.
    """
    try:
        with transaction(sessions) as session:
            row = find_pipeline(session, pipeline, lock=True)
            existing = _build_for_event(session, pipeline, job, event_id)
            if existing is not None:
                started = _existing(existing)
            elif row.paused:
                raise PipelinePaused(paused_message(pipeline))
            else:
                started = record_build(
                    session, row, load(row), job, clock=clock, event_id=event_id, versions=versions
                )
    except IntegrityError:
        # Another copy of this request got there first: answer with its build.
        with transaction(sessions) as session:
            found = _build_for_event(session, pipeline, job, event_id)
            if found is None:
                raise
            started = _existing(found)
    announce(sessions, [started], sink=sink, clock=clock)
    return started


def _existing(build: BuildRow) -> Started:
    return Started(build_id=build.id, number=build.number, created=False, status=build.status)


def announce(
    sessions: SessionFactory, started: Sequence[Started], *, sink: EventSink, clock: Clock
) -> None:
    """Announce the first steps of builds just recorded (and of builds they unblocked)."""
    for item in started:
        if item.created and item.status == st.ERRORED:  # ended as it was recorded
            with transaction(sessions) as session:
                build = session.get(BuildRow, item.build_id)
            if build is not None:
                sink.emit(build_finished_event(build))
            continue
        for build_id in (item.build_id, *item.unblocked):
            advance_build(sessions, build_id=build_id, sink=sink, clock=clock)


def record_build(
    session: Session,
    pipeline: PipelineRow,
    model: Pipeline,
    job: str,
    *,
    clock: Clock,
    event_id: str | None = None,
    versions: Mapping[str, Mapping[str, Any]] | None = None,
) -> Started:
    """Record a build of ``job`` and its steps in ``session``; nothing is announced yet.

    The caller holds ``pipeline``'s row lock (``find_pipeline(..., lock=True)``) and
    has checked that it is not paused. The build starts at once, or waits ``pending``
    when its job's limits are reached; ``announce`` after the commit.
    """
    versions = versions or {}
    try:
        job_model = model.job(job)
    except KeyError as e:
        raise NotFoundError(str(e.args[0])) from None
    # Gets with `passed:` take the newest versions that went through the upstream jobs.
    _inputs, resolved = resolve_job(
        session, pipeline_id=pipeline.id, model=model, job=job, pinned=versions, passed_only=True
    )
    if not resolved.ok:
        return _record_unresolved(session, pipeline, job, resolved.problem or "", clock, event_id)
    versions = {**resolved.pins(), **versions}
    specs = [
        with_credentials(spec, pipeline.variables)
        for spec in compile_plan(model, job, versions=versions)
    ]
    limited = job_limit(job_model) is not None
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
        # A limited job's build waits its turn behind any older one.
        status=st.PENDING if limited else st.STARTED,
        event_id=event_id,
        versions={k: dict(v) for k, v in versions.items()},
        created_at=now,
        started_at=None if limited else now,
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
    if not limited:
        return Started(build_id=build.id, number=build.number, created=True)
    started = start_waiting(session, pipeline.id, model, now)
    return Started(
        build_id=build.id,
        number=build.number,
        created=True,
        status=st.STARTED if build.id in started else st.PENDING,
        unblocked=tuple(b for b in started if b != build.id),
    )


def _record_unresolved(
    session: Session,
    pipeline: PipelineRow,
    job: str,
    problem: str,
    clock: Clock,
    event_id: str | None,
) -> Started:
    """A build whose gets with ``passed:`` have no version yet: it errors at once, saying
    which, with no steps (nothing could run)."""
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
        status=st.ERRORED,
        event_id=event_id,
        versions={},
        error=problem,
        created_at=now,
        started_at=now,
        finished_at=now,
    )
    session.add(build)
    session.flush()
    return Started(build_id=build.id, number=build.number, created=True, status=st.ERRORED)


def start_waiting(session: Session, pipeline_id: int, model: Pipeline, now: datetime) -> list[int]:
    """Start the ``pending`` builds of a pipeline that its jobs' limits now allow, oldest first.

    The caller holds the pipeline's row lock. A build that must wait holds back every
    younger build of its job and of its serial groups, so builds start in the order they
    came. A pending build whose job left the pipeline is aborted. Returns the ids started,
    for ``announce`` after the commit.
    """
    jobs = {j.name: j for j in model.jobs}
    rows = session.execute(
        select(BuildRow.id, BuildRow.job_name, BuildRow.status)
        .where(
            BuildRow.pipeline_id == pipeline_id,
            BuildRow.status.in_((st.PENDING, st.STARTED)),
        )
        .order_by(BuildRow.id)
    ).all()
    in_job: Counter[str] = Counter()
    in_group: Counter[str] = Counter()
    for row in rows:
        if row.status == st.STARTED:
            in_job[row.job_name] += 1
            job = jobs.get(row.job_name)
            in_group.update(job.serial_groups if job is not None else ())
    held_jobs: set[str] = set()
    held_groups: set[str] = set()
    started: list[int] = []
    for row in rows:
        if row.status != st.PENDING:
            continue
        job = jobs.get(row.job_name)
        if job is None:
            _abort_pending(
                session, row.id, f"job {row.job_name!r} is no longer in the pipeline", now
            )
            continue
        limit = job_limit(job)
        groups = set(job.serial_groups)
        if (
            row.job_name in held_jobs
            or groups & held_groups
            or (limit is not None and in_job[row.job_name] >= limit)
            or any(in_group[g] for g in groups)
        ):
            held_jobs.add(row.job_name)
            held_groups.update(groups)
            continue
        moved = session.execute(
            update(BuildRow)
            .where(BuildRow.id == row.id, BuildRow.status == st.PENDING)
            .values(status=st.STARTED, started_at=now)
        )
        if moved.rowcount:  # type: ignore[attr-defined]
            started.append(row.id)
            in_job[row.job_name] += 1
            in_group.update(groups)
    return started


def _abort_pending(session: Session, build_id: int, reason: str, now: datetime) -> None:
    moved = session.execute(
        update(BuildRow)
        .where(BuildRow.id == build_id, BuildRow.status == st.PENDING)
        .values(status=st.ABORTED, finished_at=now, error=reason)
    )
    if moved.rowcount:  # type: ignore[attr-defined]
        session.execute(
            update(StepRow)
            .where(StepRow.build_id == build_id, StepRow.status == st.PENDING)
            .values(status=st.ABORTED, finished_at=now)
        )


def _free_slot(session: Session, pipeline_id: int, now: datetime) -> list[int]:
    """A build of the pipeline just finished: start what was waiting for its slot."""
    # The pipeline's lock first, then the look: a build recorded pending at this very
    # moment is either seen here or sees this build finished (never neither).
    row = session.scalars(
        select(PipelineRow).where(PipelineRow.id == pipeline_id).with_for_update()
    ).one_or_none()
    if row is None:
        return []
    waiting = session.scalar(
        select(BuildRow.id)
        .where(BuildRow.pipeline_id == pipeline_id, BuildRow.status == st.PENDING)
        .limit(1)
    )
    if waiting is None:
        return []
    try:
        model = load(row)
    except (PipelineError, VariableError) as e:
        log.error("pipeline %s no longer loads; its waiting builds stay waiting: %s", row.name, e)
        return []
    return start_waiting(session, pipeline_id, model, now)


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
    unblocked: list[int] = []
    with transaction(sessions) as session:
        build = session.scalars(
            select(BuildRow).where(BuildRow.id == build_id).with_for_update()
        ).one_or_none()
        if build is None:
            raise NotFoundError(f"no build {build_id}")
        if build.status in st.BUILD_TERMINAL or build.status == st.PENDING:
            return build.status  # over, or not started: nothing of it may run
        steps = session.scalars(
            select(StepRow).where(StepRow.build_id == build_id).order_by(StepRow.id)
        ).all()
        by_key = {s.key: s for s in steps}
        now = clock()
        # What runs, what never will, what is retried: the plan's conditions decide.
        decision = decide(
            [
                StepState(
                    key=s.key, status=s.status, attempt=s.attempt, spec=StepSpec.from_json(s.spec)
                )
                for s in steps
            ]
        )
        for key in decision.retry:
            step = by_key[key]
            values = _next_attempt(step)
            if _move(session, step, step.status, st.SCHEDULED, **values):
                step.attempt = values["attempt"]
                to_announce.append(step)
        for key in decision.skip:
            if _move(session, by_key[key], st.PENDING, st.SKIPPED, finished_at=now):
                skipped.append(by_key[key])
        for key in decision.schedule:
            if _move(session, by_key[key], st.PENDING, st.SCHEDULED):
                to_announce.append(by_key[key])
        if decision.outcome is not None and all(s.status in st.STEP_TERMINAL for s in steps):
            outcome = decision.outcome
            culprit = by_key.get(decision.culprit or "")
            error = culprit.error if culprit is not None else None
            moved = session.execute(
                update(BuildRow)
                .where(BuildRow.id == build_id, BuildRow.status == build.status)
                .values(status=outcome, finished_at=now, error=error)
            )
            if moved.rowcount:  # type: ignore[attr-defined]
                build.status = outcome
                finished = build
                # What its gets used and its puts made: `passed:` is answered from this.
                record_build_versions(session, build=build, steps=steps, now=now)
                unblocked = _free_slot(session, build.pipeline_id, now)
        result = build.status
    for step in skipped:
        sink.emit(step_finished_event(build_id, step))
    for step in to_announce:
        sink.emit(step_ready_event(build_id, step))
    if finished is not None:
        sink.emit(build_finished_event(finished))
    for waiting in unblocked:
        advance_build(sessions, build_id=waiting, sink=sink, clock=clock)
    return result


@dataclass(frozen=True, kw_only=True)
class Aborted:
    """What ``abort_build`` did."""

    build_id: int
    status: str
    """The build's status afterwards: ``aborted``; ``started`` while its ``ensure`` or
    ``on_abort`` hooks run; or how it had ended before."""
    aborted: bool
    """Whether this call stopped anything; ``False`` when the build had ended already (or
    all that was left of it were hooks that run on an abort)."""
    steps: tuple[str, ...] = ()
    """Names of the steps it stopped, or that will now never run."""
    pods_left: tuple[str, ...] = ()
    """Pods that could not be deleted now: the reaper deletes them on a later tick."""


def abort_build(
    sessions: SessionFactory,
    *,
    build_id: int,
    runtime: Runtime | None,
    sink: EventSink,
    clock: Clock,
    logs: LogStore | None = None,
    reason: str = "aborted by a user",
) -> Aborted:
    """Stop a build, as Concourse does: every step not ended is ``aborted``, then its pods go.

    Steps inside an ``ensure`` or ``on_abort`` hook are the exception: they still run,
    and ``advance_build`` starts them; the build ends ``aborted`` once they have (at
    once, when there are none). A build still ``pending`` (waiting on its job's
    limits) never started, so it ends ``aborted`` here with all its steps.

    The database moves first, in one transaction under the build's row lock (as in
    ``advance_build``), so a pod that ends while it is deleted finds its step aborted
    and records nothing. A running step's log is kept before its pod is deleted, where
    it can be read. A pod that cannot be deleted now (or one a launch in flight creates
    after this) is left to the reaper, which deletes the pods of ended steps. A build
    that has ended already is left as it was.
    """
    now = clock()
    stopped: list[StepRow] = []
    with transaction(sessions) as session:
        build = session.scalars(
            select(BuildRow).where(BuildRow.id == build_id).with_for_update()
        ).one_or_none()
        if build is None:
            raise NotFoundError(f"no build {build_id}")
        if build.status in st.BUILD_TERMINAL:
            return Aborted(build_id=build_id, status=build.status, aborted=False)
        waiting = build.status == st.PENDING
        steps = session.scalars(
            select(StepRow).where(StepRow.build_id == build_id).order_by(StepRow.id)
        ).all()
        for step in steps:
            if step.status in st.STEP_TERMINAL:
                continue
            if not waiting and StepSpec.from_json(step.spec).survives_abort:
                continue  # an ensure or on_abort hook: it runs all the same
            error = f"{step.kind} {step.name!r} was aborted: {reason}"
            if _move(session, step, step.status, st.ABORTED, finished_at=now, error=error):
                step.error = error
                stopped.append(step)
        if waiting:
            session.execute(
                update(BuildRow)
                .where(BuildRow.id == build_id, BuildRow.status == st.PENDING)
                .values(status=st.ABORTED, finished_at=now, error=reason)
            )
            build.status = st.ABORTED
    for step in stopped:
        sink.emit(step_finished_event(build_id, step))
    if waiting:
        sink.emit(build_finished_event(build))
        status = st.ABORTED
    else:  # the hooks that survive an abort start, or the build ends (freeing its slot)
        status = advance_build(sessions, build_id=build_id, sink=sink, clock=clock)
    left = [
        step.pod_name
        for step in stopped
        if step.pod_name is not None
        and not _stop_pod(runtime, logs, build_id=build_id, key=step.key, pod=step.pod_name)
    ]
    return Aborted(
        build_id=build_id,
        status=status,
        aborted=bool(stopped) or waiting,
        steps=tuple(s.name for s in stopped),
        pods_left=tuple(left),
    )


def _stop_pod(
    runtime: Runtime | None, logs: LogStore | None, *, build_id: int, key: str, pod: str
) -> bool:
    """Keep an aborted step's log if it can be read, then delete its pod; ``False`` if it stays."""
    if runtime is None:
        return False
    if logs is not None:
        try:
            logs.write(build_id, key, runtime.logs(pod))
        except JetBridgeError as e:  # nothing to read (never started, gone) or no store now
            log.info("log of aborted pod %s not kept: %s", pod, e)
    try:
        runtime.delete(pod)
    except JetBridgeError as e:
        log.warning("could not delete pod %s of an aborted build (the reaper retries): %s", pod, e)
        return False
    return True


def build_finished_event(build: BuildRow) -> Any:
    """``build.finished``: a build reached a final status (one stable id per build)."""
    return events.make_event(
        events.BUILD_FINISHED,
        {
            "build_id": build.id,
            "job": build.job_name,
            "number": build.number,
            "status": build.status,
        },
        subject=f"builds/{build.id}",
        id_=f"build-{build.id}-finished",
    )


def step_ready_event(build_id: int, step: StepRow) -> Any:
    """The ``step.ready`` announcement for one attempt of a step (a stable id per attempt)."""
    return events.make_event(
        events.STEP_READY,
        {"build_id": build_id, "step_id": step.id, "attempt": step.attempt},
        subject=f"builds/{build_id}/steps/{step.key}",
        id_=f"step-{step.id}-{step.attempt}-ready",
    )


def step_finished_event(build_id: int, step: StepRow, *, reason: str | None = None) -> Any:
    """``step.finished``: a step reached a final status (succeeded, failed, errored, skipped…).

    ``reason`` is Kubernetes' word for how the pod ended (``OOMKilled``, ``Evicted`` …);
    ``started_at`` (its pod launched) and ``finished_at`` time the step; the metrics
    read all three from the event.
    """
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
            "reason": reason,
            "started_at": step.started_at.isoformat() if step.started_at else None,
            "finished_at": step.finished_at.isoformat() if step.finished_at else None,
        },
        subject=f"builds/{build_id}/steps/{step.key}",
        id_=f"step-{step.id}-{step.attempt}-finished",
    )


def _next_attempt(step: StepRow) -> dict[str, Any]:
    """The columns of a step tried again: the next attempt, nothing left of the last one."""
    return {
        "attempt": step.attempt + 1,
        "pod_name": None,
        "exit_code": None,
        "error": None,
        "result": {},
        "started_at": None,
        "finished_at": None,
    }


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


@dataclass(frozen=True, kw_only=True)
class BuildView:
    """A build as ``jetbridge builds`` shows it."""

    id: int
    pipeline: str
    job: str
    number: int
    status: str
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def label(self) -> str:
        return f"{self.pipeline}/{self.job} #{self.number}"


def _views(session: Session, *conditions: Any, limit: int | None = None) -> list[BuildView]:
    query = (
        select(BuildRow, PipelineRow.name)
        .join(PipelineRow, PipelineRow.id == BuildRow.pipeline_id)
        .where(*conditions)
        .order_by(BuildRow.id.desc() if limit is not None else BuildRow.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return [
        BuildView(
            id=b.id,
            pipeline=name,
            job=b.job_name,
            number=b.number,
            status=b.status,
            started_at=b.started_at,
            finished_at=b.finished_at,
        )
        for b, name in session.execute(query).all()
    ]


def _jobs_only(checks: bool) -> tuple[Any, ...]:
    """No resource checks (builds of ``check:<resource>``) unless ``checks``."""
    return () if checks else (BuildRow.job_name.not_like(f"{CHECK_JOB_PREFIX}%"),)


def recent_builds(session: Session, *, limit: int, checks: bool = False) -> list[BuildView]:
    """The newest ``limit`` builds, newest first; resource checks only with ``checks``."""
    return _views(session, *_jobs_only(checks), limit=limit)


def watch_builds(
    sessions: SessionFactory,
    *,
    count: int,
    interval: float,
    sleep: Callable[[float], None],
    until_idle: bool = False,
    checks: bool = False,
) -> Iterator[BuildView]:
    """Builds as they change: the newest ``count`` (oldest first), then each new build and each
    change of status, looking every ``interval`` seconds (``sleep`` waits).

    With ``until_idle`` it ends once no build it has seen is pending or running; resource
    checks are among them only with ``checks``.
    """
    with transaction(sessions) as session:
        first = recent_builds(session, limit=count, checks=checks)
    last_id = max((v.id for v in first), default=0)
    if not first:
        with transaction(sessions) as session:
            last_id = session.scalar(select(func.max(BuildRow.id))) or 0
    active = {v.id: v.status for v in first if v.status not in st.BUILD_TERMINAL}
    yield from reversed(first)
    while not (until_idle and not active):
        sleep(interval)
        with transaction(sessions) as session:
            changed = _views(
                session,
                (BuildRow.id > last_id) | BuildRow.id.in_(list(active)),
                *_jobs_only(checks),
            )
        for view in changed:
            last_id = max(last_id, view.id)
            if active.get(view.id) == view.status:
                continue
            if view.status in st.BUILD_TERMINAL:
                active.pop(view.id, None)
            else:
                active[view.id] = view.status
            yield view


__all__ = [
    "Aborted",
    "PipelineError",
    "Started",
    "abort_build",
    "advance_build",
    "announce",
    "builds_of",
    "recent_builds",
    "record_build",
    "start_build",
    "start_waiting",
    "watch_builds",
]
