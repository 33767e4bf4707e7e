"""The reaper: a scheduled tick that makes the store, the database and the runtime agree.

Minimal for now: artifacts that no build needs any more (their build has
finished) are removed, crash-safely: the row is marked ``reaping``, the directory
deleted, then the row. A tick killed anywhere in between leaves a ``reaping``
row, which the next tick finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, select, update

from shared import artifacts
from shared import status as st
from shared.db import ArtifactRow, BuildRow, SessionFactory, transaction
from shared.errors import JetBridgeError

log = logging.getLogger(__name__)

#: Rows claimed per transaction: bounds memory and lock time whatever the table's size.
BATCH = 500


@dataclass(kw_only=True)
class ReapReport:
    """What one tick found and did."""

    dry_run: bool = False
    artifacts_found: int = 0
    artifacts_reaped: int = 0
    bytes_freed: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verb = "would reap" if self.dry_run else "reaped"
        text = (
            f"{verb} {self.artifacts_found if self.dry_run else self.artifacts_reaped} artifact(s)"
        )
        if not self.dry_run:
            text += f", {self.bytes_freed} bytes freed"
        if self.errors:
            text += f", {len(self.errors)} error(s)"
        return text


def reap(
    sessions: SessionFactory,
    *,
    store_root: Path | None,
    clock: Callable[[], datetime],
    dry_run: bool = False,
) -> ReapReport:
    """One tick: reclaim every artifact whose build has finished."""
    root = artifacts.require_root(store_root)
    report = ReapReport(dry_run=dry_run)
    last_id = 0
    while True:
        with transaction(sessions) as session:
            rows = session.execute(
                select(ArtifactRow.id, ArtifactRow.subpath, ArtifactRow.state)
                .join(BuildRow, BuildRow.id == ArtifactRow.build_id)
                .where(
                    ArtifactRow.id > last_id,
                    BuildRow.status.in_(st.BUILD_TERMINAL)
                    | (ArtifactRow.state == artifacts.REAPING),
                )
                .order_by(ArtifactRow.id)
                .limit(BATCH)
            ).all()
            if not rows:
                break
            last_id = rows[-1].id
            report.artifacts_found += len(rows)
            if dry_run:
                continue
            claimed = []
            for row in rows:
                moved = session.execute(
                    update(ArtifactRow)
                    .where(ArtifactRow.id == row.id, ArtifactRow.state == row.state)
                    .values(state=artifacts.REAPING)
                )
                if moved.rowcount:  # type: ignore[attr-defined]
                    claimed.append(row)
        for row in claimed if not dry_run else ():
            try:
                report.bytes_freed += artifacts.remove_directory(root, row.subpath)
            except JetBridgeError as e:
                # Logged and left `reaping`: the next tick tries again; the rest go on.
                report.errors.append(f"artifact {row.subpath}: {e}")
                log.warning("could not remove artifact %s: %s", row.subpath, e)
                continue
            with transaction(sessions) as session:
                session.execute(delete(ArtifactRow).where(ArtifactRow.id == row.id))
            report.artifacts_reaped += 1
    log.info("reaper tick: %s", report.summary())
    return report
