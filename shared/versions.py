"""Resource versions: what checks, webhooks, gets and puts found, and which builds used them.

Every version of a resource is one row of ``resource_versions`` (per pipeline, resource
and resource configuration), unique by the digest of its canonical JSON, so a version a
check found, a webhook pushed and a get fetched is the same row. ``check_order`` orders
them, higher is newer:

- a **check** answers versions oldest first: new ones are numbered after every known one,
  in that order; the last it answers (the resource's newest) moves to the top if it was
  known and lower (a branch forced back to an older commit: that commit is newest again);
- a **webhook** reports the pushed commit: new, or known and moved to the top, as a check's last;
- a **put** makes a version: new ones go on top;
- a **get** of a version nobody reported (pinned by hand) is kept at the bottom
  (``check_order`` 0), so it never becomes "the newest" by being fetched.

``build_versions`` says what each build used (its gets' versions, ``input``) and made (its
puts', ``output``), written when the build ends; ``passed:`` counts only successful builds.
``history`` loads what ``shared.constraints`` needs to resolve a job's gets.

Writes never fail on a duplicate: two builds ending at once may both report a version,
and ``INSERT … ON CONFLICT DO NOTHING`` (Postgres and SQLite alike) keeps one row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared import status as st
from shared.constraints import (
    BUILD_WINDOW,
    VERSION_WINDOW,
    Candidate,
    History,
    Input,
    Resolution,
    UpstreamBuild,
    canonical_version,
    job_inputs,
    resolve,
    resource_scope,
    version_key,
)
from shared.db import BuildRow, BuildVersionRow, ResourceVersionRow, StepRow
from shared.errors import NotFoundError
from shared.pipeline import Pipeline, Resource
from shared.plan import StepSpec

log = logging.getLogger(__name__)

CHECK = "check"
WEBHOOK = "webhook"
GET = "get"
PUT = "put"

INPUT = "input"
OUTPUT = "output"


def scope_of(resource: Resource) -> str:
    """The configuration a resource's versions belong to."""
    return resource_scope(resource.type, resource.source)


def save_versions(
    session: Session,
    *,
    pipeline_id: int,
    resource: str,
    scope: str,
    versions: Sequence[Mapping[str, Any]],
    origin: str,
    now: datetime,
    metadata: Sequence[Any] | None = None,
) -> list[ResourceVersionRow]:
    """Record ``versions`` (oldest first) of a resource as ``origin`` reported them.

    Returns their rows, in the order given. ``metadata`` goes with the last version, kept
    when the row had none.
    """
    versions = [dict(v) for v in versions if isinstance(v, Mapping) and v]
    if not versions:
        return []
    where = (
        ResourceVersionRow.pipeline_id == pipeline_id,
        ResourceVersionRow.resource == resource,
        ResourceVersionRow.scope == scope,
    )
    top = session.scalar(select(func.max(ResourceVersionRow.check_order)).where(*where)) or 0
    keys = [version_key(v) for v in versions]
    for version, key in zip(versions, keys, strict=True):
        order = 0 if origin == GET else top + 1
        added = session.execute(
            _insert_ignoring(session, ResourceVersionRow).values(
                pipeline_id=pipeline_id,
                resource=resource,
                scope=scope,
                version=canonical_version(version),
                version_key=key,
                check_order=order,
                origin=origin,
                first_seen=now,
            )
        )
        if added.rowcount and origin != GET:  # type: ignore[attr-defined]
            top += 1
    rows = {
        r.version_key: r
        for r in session.scalars(
            select(ResourceVersionRow).where(*where, ResourceVersionRow.version_key.in_(keys))
        ).all()
    }
    newest = rows[keys[-1]]
    if origin in (CHECK, WEBHOOK) and newest.check_order < top:
        # The resource says this is its newest version: so it is, even if known before.
        session.execute(
            update(ResourceVersionRow)
            .where(ResourceVersionRow.id == newest.id)
            .values(check_order=top + 1)
        )
        newest.check_order = top + 1
    if metadata and newest.meta is None:
        session.execute(
            update(ResourceVersionRow)
            .where(ResourceVersionRow.id == newest.id, ResourceVersionRow.meta.is_(None))
            .values(meta=list(metadata))
        )
        newest.meta = list(metadata)
    return [rows[k] for k in keys]


def save_check_result(
    session: Session, *, build_id: int, spec: StepSpec, result: Mapping[str, Any], now: datetime
) -> list[ResourceVersionRow]:
    """A check step succeeded: keep the versions it answered with (oldest first)."""
    call = spec.resource
    build = session.get(BuildRow, build_id)
    found = result.get("versions")
    if call is None or build is None or not isinstance(found, list):
        return []
    return save_versions(
        session,
        pipeline_id=build.pipeline_id,
        resource=call.resource,
        scope=resource_scope(call.type, call.source),
        versions=[v for v in found if isinstance(v, Mapping)],
        origin=CHECK,
        now=now,
    )


def record_build_versions(
    session: Session, *, build: BuildRow, steps: Iterable[StepRow], now: datetime
) -> int:
    """A build ended: record the versions its gets fetched and its puts made.

    Every succeeded get and put is recorded, whatever the build's outcome; ``passed:`` only
    counts those of successful builds. Returns how many uses were recorded.
    """
    uses = []
    for step in steps:
        if step.status != st.SUCCEEDED or step.kind not in (GET, PUT):
            continue
        spec = StepSpec.from_json(step.spec)
        call = spec.resource
        if call is None:
            continue
        answered = (step.result or {}).get("version")
        version = answered if isinstance(answered, Mapping) and answered else call.version
        if version:
            uses.append((call.resource, version_key(version), step, spec, call, version))
    # One order for every writer (resource, then version), so two builds ending at once wait
    # on each other's new rows in the same order and never deadlock.
    uses.sort(key=lambda use: use[:2])
    count = 0
    for _resource, _key, step, spec, call, version in uses:
        metadata = (step.result or {}).get("metadata")
        (row,) = save_versions(
            session,
            pipeline_id=build.pipeline_id,
            resource=call.resource,
            scope=resource_scope(call.type, call.source),
            versions=[version],
            origin=step.kind,
            now=now,
            metadata=metadata if isinstance(metadata, list) else None,
        )
        # A get's name is its artifact's (its step name carries an across copy's values).
        name = spec.outputs[0].name if step.kind == GET and spec.outputs else spec.name
        added = session.execute(
            _insert_ignoring(session, BuildVersionRow).values(
                build_id=build.id,
                pipeline_id=build.pipeline_id,
                job_name=build.job_name,
                name=name,
                resource=call.resource,
                version_id=row.id,
                direction=INPUT if step.kind == GET else OUTPUT,
            )
        )
        count += added.rowcount  # type: ignore[attr-defined]
    return count


def latest_version(
    session: Session, *, pipeline_id: int, resource: str, scope: str
) -> dict[str, Any] | None:
    """The newest known version of a resource, or ``None``."""
    row = session.scalars(
        select(ResourceVersionRow)
        .where(
            ResourceVersionRow.pipeline_id == pipeline_id,
            ResourceVersionRow.resource == resource,
            ResourceVersionRow.scope == scope,
        )
        .order_by(ResourceVersionRow.check_order.desc(), ResourceVersionRow.id.desc())
        .limit(1)
    ).one_or_none()
    return dict(row.version) if row is not None else None


def versions_of(
    session: Session, *, pipeline_id: int, resource: Resource, limit: int = 20
) -> list[ResourceVersionRow]:
    """A resource's newest ``limit`` versions, newest first (``jetbridge check-resource``)."""
    return list(
        session.scalars(
            select(ResourceVersionRow)
            .where(
                ResourceVersionRow.pipeline_id == pipeline_id,
                ResourceVersionRow.resource == resource.name,
                ResourceVersionRow.scope == scope_of(resource),
            )
            .order_by(ResourceVersionRow.check_order.desc(), ResourceVersionRow.id.desc())
            .limit(limit)
        ).all()
    )


def used_by(session: Session, build_id: int) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """What a build used and made: ``{"input": [(name, resource, version)], "output": […]}``."""
    rows = session.execute(
        select(BuildVersionRow, ResourceVersionRow.version)
        .join(ResourceVersionRow, ResourceVersionRow.id == BuildVersionRow.version_id)
        .where(BuildVersionRow.build_id == build_id)
        .order_by(BuildVersionRow.id)
    ).all()
    found: dict[str, list[tuple[str, str, dict[str, Any]]]] = {INPUT: [], OUTPUT: []}
    for use, version in rows:
        found[use.direction].append((use.name, use.resource, dict(version)))
    return found


# ---------------------------------------------------------------- resolving a job's gets


def history(
    session: Session, *, pipeline_id: int, model: Pipeline, job: str, inputs: Sequence[Input]
) -> History:
    """What ``constraints.resolve`` needs for ``inputs`` of ``job``, from the database."""
    scopes = {i.resource: scope_of(model.resource(i.resource)) for i in inputs}
    versions: dict[str, list[Candidate]] = {}
    for resource, scope in scopes.items():
        rows = session.execute(
            select(
                ResourceVersionRow.version_key,
                ResourceVersionRow.version,
                ResourceVersionRow.check_order,
            )
            .where(
                ResourceVersionRow.pipeline_id == pipeline_id,
                ResourceVersionRow.resource == resource,
                ResourceVersionRow.scope == scope,
            )
            .order_by(ResourceVersionRow.check_order.desc(), ResourceVersionRow.id.desc())
            .limit(VERSION_WINDOW)
        ).all()
        versions[resource] = [
            Candidate(key=r.version_key, version=dict(r.version), order=r.check_order)
            for r in reversed(rows)
        ]
    upstream_jobs = sorted({j for i in inputs for j in i.passed})
    builds: dict[str, list[UpstreamBuild]] = {}
    known: dict[str, dict[str, Any]] = {}
    for upstream in upstream_jobs:
        ids = session.scalars(
            select(BuildRow.id)
            .where(
                BuildRow.pipeline_id == pipeline_id,
                BuildRow.job_name == upstream,
                BuildRow.status == st.SUCCEEDED,
            )
            .order_by(BuildRow.id.desc())
            .limit(BUILD_WINDOW)
        ).all()
        uses = (
            []
            if not ids
            else session.execute(
                select(
                    BuildVersionRow.build_id,
                    BuildVersionRow.direction,
                    ResourceVersionRow.resource,
                    ResourceVersionRow.scope,
                    ResourceVersionRow.version_key,
                    ResourceVersionRow.version,
                )
                .join(ResourceVersionRow, ResourceVersionRow.id == BuildVersionRow.version_id)
                .where(BuildVersionRow.build_id.in_(list(ids)))
                .order_by(BuildVersionRow.id)
            ).all()
        )
        carried: dict[int, dict[str, list[str]]] = {i: {} for i in ids}
        # Outputs first: what a build made is what it passes on before what it fetched.
        for use in sorted(uses, key=lambda u: u.direction != OUTPUT):
            if scopes.get(use.resource) != use.scope:
                continue
            keys = carried[use.build_id].setdefault(use.resource, [])
            if use.version_key not in keys:
                keys.append(use.version_key)
            known.setdefault(use.version_key, dict(use.version))
        builds[upstream] = [
            UpstreamBuild(id=i, job=upstream, versions={r: tuple(k) for r, k in carried[i].items()})
            for i in ids
        ]
    return History(
        versions=versions,
        builds=builds,
        last_used=last_used(session, pipeline_id=pipeline_id, job=job),
        known=known,
    )


def last_used(session: Session, *, pipeline_id: int, job: str) -> dict[str, str]:
    """Get name → key of the version the job's latest build used (pinned, or as it ran)."""
    build = session.scalars(
        select(BuildRow)
        .where(BuildRow.pipeline_id == pipeline_id, BuildRow.job_name == job)
        .order_by(BuildRow.id.desc())
        .limit(1)
    ).one_or_none()
    if build is None:
        return {}
    used = {
        name: version_key(version)
        for name, version in (build.versions or {}).items()
        if isinstance(version, Mapping)
    }
    for name, key in session.execute(
        select(BuildVersionRow.name, ResourceVersionRow.version_key)
        .join(ResourceVersionRow, ResourceVersionRow.id == BuildVersionRow.version_id)
        .where(BuildVersionRow.build_id == build.id, BuildVersionRow.direction == INPUT)
    ).all():
        used.setdefault(name, key)
    return used


def resolve_job(
    session: Session,
    *,
    pipeline_id: int,
    model: Pipeline,
    job: str,
    pinned: Mapping[str, Mapping[str, Any]] | None = None,
    passed_only: bool = False,
) -> tuple[tuple[Input, ...], Resolution]:
    """The versions ``job``'s gets take now (``pinned`` ones as given), and its inputs.

    ``passed_only``: resolve only the gets with ``passed`` (a build started by hand, whose
    other gets run their check when the build starts, as they always do).
    """
    try:
        job_model = model.job(job)
    except KeyError as e:
        raise NotFoundError(str(e.args[0])) from None
    pinned = pinned or {}
    inputs = tuple(
        replace(i, pinned=dict(pinned[i.name])) if i.name in pinned else i
        for i in job_inputs(model, job_model)
    )
    chosen = [i for i in inputs if i.passed] if passed_only else list(inputs)
    if not chosen or all(i.name in pinned for i in chosen):
        return inputs, Resolution(
            chosen={
                i.name: Candidate(key=version_key(i.pinned), version=dict(i.pinned))
                for i in chosen
                if i.pinned is not None
            }
        )
    found = history(session, pipeline_id=pipeline_id, model=model, job=job, inputs=chosen)
    return inputs, resolve(chosen, found)


# ---------------------------------------------------------------- helpers


def _insert_ignoring(session: Session, table: type[Any]) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` in the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()
