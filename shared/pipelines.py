"""The pipeline registry: pipelines stored by name, validated before they are kept.

``jetbridge set-pipeline`` saves (showing the change first), ``pause-pipeline`` and
``unpause-pipeline`` stop and resume new builds, ``destroy-pipeline`` removes a
pipeline with its builds. A parsed pipeline is cached by its text and variables, so
a webhook storm does not parse the same YAML once per delivery.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from shared import logs
from shared import status as st
from shared.db import ArtifactRow, BuildRow, DeliveryRow, PipelineRow, StepRow
from shared.errors import NotFoundError, PipelineError, Problem, VariableError
from shared.pipeline import Pipeline, parse_pipeline
from shared.webhooks import PIPELINE_NAME, RESERVED_NAME

#: Parsed pipelines kept in memory: more than any one JetBridge serves, small next to its heap.
LOADED_PIPELINES = 128


def config_hash(config: str) -> str:
    return hashlib.sha256(config.encode()).hexdigest()


def _digest(config: str, variables: Mapping[str, Any]) -> str:
    return config_hash(config + json.dumps(variables, sort_keys=True, default=str))


def check_name(name: str) -> str:
    """``name`` if a pipeline may be called that (it appears in webhook URLs and as a file name)."""
    if not PIPELINE_NAME.fullmatch(name) or name == RESERVED_NAME:
        problem = Problem(
            path="(name)",
            message=f"a pipeline name is 1 to 200 letters, digits, '.', '_' or '-', starting "
            f"with a letter or digit, and not {RESERVED_NAME!r}; found {name!r}",
        )
        raise PipelineError([problem], source=repr(name))
    return name


def save_pipeline(
    session: Session,
    *,
    name: str,
    config: str,
    clock: Callable[[], datetime],
    variables: Mapping[str, Any] | None = None,
    paused_if_new: bool = False,
) -> PipelineRow:
    """Store (or replace) pipeline ``name``; raises ``PipelineError`` and stores nothing if invalid.

    A new pipeline starts paused when ``paused_if_new`` (``set-pipeline``, as Concourse's
    ``fly`` does: nothing runs until its owner has looked at it); replacing a pipeline
    keeps whether it was paused.
    """
    variables = dict(variables or {})
    parse_pipeline(config, source=name, variables=variables)
    digest = _digest(config, variables)
    row = session.scalars(select(PipelineRow).where(PipelineRow.name == name)).one_or_none()
    now = clock()
    if row is None:
        row = PipelineRow(
            name=name,
            config=config,
            variables=variables,
            config_hash=digest,
            paused=paused_if_new,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
    elif row.config_hash != digest:
        row.config = config
        row.variables = variables
        row.config_hash = digest
        row.updated_at = now
    session.flush()
    return row


def find_pipeline(session: Session, name: str, *, lock: bool = False) -> PipelineRow:
    """The pipeline called ``name``, or ``NotFoundError`` listing the ones there are."""
    query = select(PipelineRow).where(PipelineRow.name == name)
    if lock:
        query = query.with_for_update()
    row = session.scalars(query).one_or_none()
    if row is None:
        known = session.scalars(select(PipelineRow.name).order_by(PipelineRow.name)).all()
        listing = ", ".join(known) if known else "none yet"
        raise NotFoundError(f"no pipeline named {name!r}; pipelines: {listing}")
    return row


def load(row: PipelineRow) -> Pipeline:
    """The stored pipeline, parsed with the variables it was set with (cached by content)."""
    return _parse(row.name, row.config, json.dumps(row.variables, sort_keys=True, default=str))


@functools.lru_cache(maxsize=LOADED_PIPELINES)
def _parse(name: str, config: str, variables: str) -> Pipeline:
    values = json.loads(variables)
    # Concourse's ((vars)) are credentials: no log line of this process shows their values.
    logs.redact(*logs.secret_values(values))
    # The model is frozen dataclasses: one parsed copy is safely shared by every caller.
    return parse_pipeline(config, source=name, variables=values)


@dataclass(frozen=True, kw_only=True)
class Change:
    """What ``set-pipeline`` would change: the YAML as a unified diff, and which variables."""

    created: bool
    diff: tuple[str, ...]
    """Unified diff lines of the stored YAML against the new (``((vars))`` unexpanded)."""
    variables: tuple[str, ...]
    """``added 'x'``, ``changed 'y'``, ``removed 'z'``: names only, values may be secrets."""

    @property
    def unchanged(self) -> bool:
        return not self.created and not self.diff and not self.variables


def change_of(session: Session, *, name: str, config: str, variables: Mapping[str, Any]) -> Change:
    """How saving ``config`` as ``name`` would differ from what is stored."""
    row = session.scalars(select(PipelineRow).where(PipelineRow.name == name)).one_or_none()
    old_config, old_vars = (row.config, dict(row.variables)) if row is not None else ("", {})
    diff = difflib.unified_diff(
        old_config.splitlines(keepends=True),
        config.splitlines(keepends=True),
        fromfile=f"{name} (stored)" if row is not None else "/dev/null",
        tofile=f"{name} (new)",
    )
    lines = tuple(line if line.endswith("\n") else line + "\n" for line in diff)
    changed = []
    for key in sorted(set(old_vars) | set(variables)):
        if key not in old_vars:
            changed.append(f"added {key!r}")
        elif key not in variables:
            changed.append(f"removed {key!r}")
        elif old_vars[key] != variables[key]:
            changed.append(f"changed {key!r}")
    return Change(created=row is None, diff=lines, variables=tuple(changed))


def set_paused(session: Session, name: str, *, paused: bool) -> bool:
    """Pause or unpause ``name``; ``False`` when it already was. Paused: the trigger starts
    no new build of it (builds already accepted run on)."""
    row = find_pipeline(session, name, lock=True)
    if row.paused == paused:
        return False
    row.paused = paused
    session.flush()
    return True


@dataclass(frozen=True, kw_only=True)
class Destroyed:
    """What ``destroy_pipeline`` removed, and the artifacts it left to the reaper."""

    builds: int
    running: int
    """Builds that had not finished; their pods report to nobody and the reaper removes them."""
    orphaned_artifacts: int


def destroy_pipeline(session: Session, name: str) -> Destroyed:
    """Remove ``name`` with its builds, steps and deliveries.

    Its artifacts' rows stay, with no build (``build_id`` NULL): their directories are
    on the store, and only the reaper removes directories, so it finds them as orphans.
    Rows go children first, the pipeline last: the same order as a finishing build
    takes its locks (build, then pipeline), so the two cannot deadlock.
    """
    row = find_pipeline(session, name)
    of_pipeline = select(BuildRow.id).where(BuildRow.pipeline_id == row.id)
    counts = session.execute(
        select(BuildRow.status, func.count())
        .where(BuildRow.pipeline_id == row.id)
        .group_by(BuildRow.status)
    ).all()
    builds = sum(n for _, n in counts)
    running = sum(n for status, n in counts if status not in st.BUILD_TERMINAL)
    orphaned = session.execute(
        update(ArtifactRow)
        .where(ArtifactRow.build_id.in_(of_pipeline))
        .values(build_id=None, step_id=None)
    )
    session.execute(delete(StepRow).where(StepRow.build_id.in_(of_pipeline)))
    session.execute(delete(DeliveryRow).where(DeliveryRow.pipeline_id == row.id))
    session.execute(delete(BuildRow).where(BuildRow.pipeline_id == row.id))
    session.execute(delete(PipelineRow).where(PipelineRow.id == row.id))
    return Destroyed(
        builds=builds,
        running=running,
        orphaned_artifacts=orphaned.rowcount,  # type: ignore[attr-defined]
    )


@dataclass(frozen=True, kw_only=True)
class Summary:
    """One line of ``jetbridge pipelines``."""

    name: str
    paused: bool
    jobs: tuple[str, ...]
    builds: int
    last_status: str | None
    """Status of the newest build, ``None`` before the first."""
    updated_at: datetime


def summaries(session: Session) -> Sequence[Summary]:
    """Every pipeline, by name, with its jobs and how its newest build went."""
    rows = session.scalars(select(PipelineRow).order_by(PipelineRow.name)).all()
    counts = dict(
        session.execute(
            select(BuildRow.pipeline_id, func.count()).group_by(BuildRow.pipeline_id)
        ).all()
    )
    newest = select(func.max(BuildRow.id)).group_by(BuildRow.pipeline_id)
    last = dict(
        session.execute(
            select(BuildRow.pipeline_id, BuildRow.status).where(BuildRow.id.in_(newest))
        ).all()
    )
    out = []
    for row in rows:
        try:
            jobs = tuple(j.name for j in load(row).jobs)
        except (PipelineError, VariableError):  # valid when saved; a stricter parser may refuse it
            jobs = ()
        out.append(
            Summary(
                name=row.name,
                paused=row.paused,
                jobs=jobs,
                builds=int(counts.get(row.id, 0)),
                last_status=last.get(row.id),
                updated_at=row.updated_at,
            )
        )
    return out
