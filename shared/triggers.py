"""Triggered builds: new versions that satisfy a job's gets start a build of it.

Concourse's scheduler, level-triggered: ``schedule`` looks at a pipeline as it is, and
for every job with a ``trigger: true`` get resolves all its gets (``shared.constraints``:
the newest versions, ``every``'s next one, ``passed:`` through the upstream builds); when
a trigger get's version is one the job's latest build did not use, it starts a build
pinned to exactly those versions, through ``start_build`` (so ``serial`` and
``max_in_flight`` hold: an over-limit build waits ``pending``).

It runs whenever the answer may have changed: after any build succeeds (its versions
count for ``passed:`` now; a check build's versions are new), on the trigger function's
``build.finished``; and on every scheduled tick, which catches whatever an event missed.

Exactly once: the build's event id is a digest of the job and the versions, unique per
job, so two schedulers racing (or a redelivered event) start one build, and a set of
versions a job has built once is never built again by a trigger (Concourse: "unless a
build of the job already used exactly that set").
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from shared import status as st
from shared.builds import start_build
from shared.constraints import job_inputs, new_versions
from shared.db import BuildRow, PipelineRow, SessionFactory, transaction
from shared.errors import JetBridgeError, NotFoundError, PipelinePaused
from shared.events import EventSink
from shared.pipelines import find_pipeline, load
from shared.versions import last_used, resolve_job, scope_of

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: Rounds one ``schedule`` call makes: each starts at most one build per job, and a job with
#: ``version: every`` takes one new version a round. The rest wait for the next call.
MAX_ROUNDS = 20
#: Prefix of a triggered build's event id.
EVENT_PREFIX = "trigger-"


@dataclass(frozen=True, kw_only=True)
class Triggered:
    """A build ``schedule`` started."""

    pipeline: str
    job: str
    build_id: int
    number: int
    status: str
    versions: dict[str, dict[str, str]]
    """Get name → the version it is pinned to."""


@dataclass(frozen=True, kw_only=True)
class _Plan:
    job: str
    pins: dict[str, dict[str, str]]
    event_id: str


def schedule(
    sessions: SessionFactory, *, pipeline: str, sink: EventSink, clock: Clock
) -> list[Triggered]:
    """Start a build of every job of ``pipeline`` that new versions trigger; what it started.

    A paused pipeline starts nothing.
    """
    started: list[Triggered] = []
    for _ in range(MAX_ROUNDS):
        fresh = []
        for plan in _plans(sessions, pipeline):
            try:
                build = start_build(
                    sessions,
                    pipeline=pipeline,
                    job=plan.job,
                    sink=sink,
                    clock=clock,
                    event_id=plan.event_id,
                    versions=plan.pins,
                )
            except (PipelinePaused, NotFoundError) as e:  # paused or changed since the look
                log.info("pipeline %s: %s", pipeline, e)
                return started
            if build.created:
                log.info("%s/%s #%d triggered by %s", pipeline, plan.job, build.number, plan.pins)
                fresh.append(
                    Triggered(
                        pipeline=pipeline,
                        job=plan.job,
                        build_id=build.build_id,
                        number=build.number,
                        status=build.status,
                        versions=plan.pins,
                    )
                )
        started += fresh
        if not fresh:
            break
    return started


def _plans(sessions: SessionFactory, pipeline: str) -> list[_Plan]:
    """The builds new versions call for, one per job at most, as things stand."""
    plans = []
    with transaction(sessions) as session:
        row = find_pipeline(session, pipeline)
        if row.paused:
            return []
        model = load(row)
        for job in model.jobs:
            if not any(i.trigger for i in job_inputs(model, job)):
                continue
            inputs, resolution = resolve_job(session, pipeline_id=row.id, model=model, job=job.name)
            used = last_used(session, pipeline_id=row.id, job=job.name)
            if not resolution.ok or not new_versions(inputs, resolution, used):
                continue
            scopes = {i.name: scope_of(model.resource(i.resource)) for i in inputs}
            plans.append(
                _Plan(
                    job=job.name,
                    pins=resolution.pins(),
                    event_id=_event_id(
                        job.name,
                        {n: (scopes[n], c.key) for n, c in resolution.chosen.items()},
                    ),
                )
            )
    return plans


def _event_id(job: str, chosen: dict[str, tuple[str, str]]) -> str:
    """The same job with the same versions: the same id, so it is built once."""
    text = json.dumps([job, sorted(chosen.items())], separators=(",", ":"))
    return EVENT_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:40]


def after_build(
    sessions: SessionFactory, *, build_id: int, sink: EventSink, clock: Clock
) -> list[Triggered]:
    """``build.finished``: a build that succeeded may have made versions new to its downstream
    jobs (or, a check, found new ones); schedule its pipeline. Others change nothing."""
    with transaction(sessions) as session:
        found = session.execute(
            select(BuildRow.status, PipelineRow.name)
            .join(PipelineRow, PipelineRow.id == BuildRow.pipeline_id)
            .where(BuildRow.id == build_id)
        ).one_or_none()
    if found is None or found.status != st.SUCCEEDED:
        return []
    return schedule(sessions, pipeline=found.name, sink=sink, clock=clock)


def schedule_all(sessions: SessionFactory, *, sink: EventSink, clock: Clock) -> list[Triggered]:
    """``schedule`` every unpaused pipeline (the scheduled tick): one that fails is logged
    and skipped, the others go on."""
    with transaction(sessions) as session:
        names = session.scalars(
            select(PipelineRow.name).where(PipelineRow.paused.is_(False)).order_by(PipelineRow.name)
        ).all()
    started: list[Triggered] = []
    for name in names:
        try:
            started += schedule(sessions, pipeline=name, sink=sink, clock=clock)
        except JetBridgeError as e:
            log.warning("pipeline %s was not scheduled: %s", name, e)
    return started
