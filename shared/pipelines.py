"""The pipeline registry: pipelines stored by name, validated before they are kept."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import PipelineRow
from shared.errors import NotFoundError
from shared.pipeline import Pipeline, parse_pipeline


def config_hash(config: str) -> str:
    return hashlib.sha256(config.encode()).hexdigest()


def save_pipeline(
    session: Session,
    *,
    name: str,
    config: str,
    clock: Callable[[], datetime],
    variables: Mapping[str, Any] | None = None,
) -> PipelineRow:
    """Store (or replace) pipeline ``name``; raises ``PipelineError`` and stores nothing if invalid."""
    variables = dict(variables or {})
    parse_pipeline(config, source=name, variables=variables)
    digest = config_hash(config + json.dumps(variables, sort_keys=True, default=str))
    row = session.scalars(select(PipelineRow).where(PipelineRow.name == name)).one_or_none()
    now = clock()
    if row is None:
        row = PipelineRow(
            name=name,
            config=config,
            variables=variables,
            config_hash=digest,
            paused=False,
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
    """The stored pipeline, parsed with the variables it was set with."""
    return parse_pipeline(row.config, source=row.name, variables=dict(row.variables))
