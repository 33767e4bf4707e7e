"""The artifact store: directories on one shared claim, each registered in the database.

A step's outputs are directories under the store root, at generated subpaths
(``artifacts/<build>/<handle>``), mounted into the producing pod read-write and
into every later pod read-only, the same directory, never copied. The order of
writes keeps invariant 3: the row (``creating``) is committed before its
directory exists, and marked ``ready`` with size and digest only once the
producing step succeeded, so after any crash the reaper finds every directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared import archive
from shared.db import ArtifactRow, SessionFactory, transaction
from shared.errors import ArtifactStoreError, ConfigurationError, StoreFullError

Clock = Callable[[], datetime]
Names = Callable[[], str]

CREATING = "creating"
READY = "ready"
REAPING = "reaping"

#: Output directories are written by the step's (non-root) user and read by later steps'.
OUTPUT_MODE = 0o777


def new_handle() -> str:
    """A fresh artifact handle: 32 hex characters, never derived from user input."""
    return uuid.uuid4().hex


def require_root(root: Path | None) -> Path:
    """The store root, or a ``ConfigurationError`` saying how to set it."""
    if root is None or str(root) == "":
        raise ConfigurationError(
            "the artifact store root is not configured: set JETBRIDGE_STORE_ROOT "
            "(in the cluster, where the artifact-store claim is mounted)"
        )
    return root


def resolve(root: Path, subpath: str) -> Path:
    """The directory of ``subpath``, refusing anything that would resolve outside ``root``."""
    base = root.resolve()
    path = (base / subpath).resolve()
    if not path.is_relative_to(base) or path == base:
        raise ArtifactStoreError(f"subpath {subpath!r} does not resolve inside the store {base}")
    return path


def register(
    session: Session,
    *,
    build_id: int | None,
    step_id: int | None,
    names: Sequence[str],
    clock: Clock,
    handles: Names = new_handle,
) -> list[ArtifactRow]:
    """Add ``creating`` rows for artifacts about to be made. The caller commits before mkdir."""
    now = clock()
    rows = []
    for name in names:
        handle = handles()
        prefix = f"artifacts/{build_id}" if build_id is not None else "artifacts/adhoc"
        row = ArtifactRow(
            handle=handle,
            build_id=build_id,
            step_id=step_id,
            name=name,
            subpath=f"{prefix}/{handle}",
            state=CREATING,
            created_at=now,
        )
        session.add(row)
        rows.append(row)
    session.flush()
    return rows


def make_directories(root: Path, rows: Iterable[ArtifactRow]) -> None:
    """Create each registered artifact's directory (after its row is committed)."""
    for row in rows:
        path = resolve(root, row.subpath)
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, OUTPUT_MODE)
        except OSError as e:
            raise _store_error(e, path) from e


def mark_ready(session: Session, row: ArtifactRow, *, root: Path, clock: Clock) -> bool:
    """Record size and digest and move ``creating`` → ``ready``; ``False`` if another got there first."""
    path = resolve(root, row.subpath)
    try:
        digest = archive.tree_digest(path)
    except FileNotFoundError:
        return False
    result = session.execute(
        update(ArtifactRow)
        .where(ArtifactRow.id == row.id, ArtifactRow.state == CREATING)
        .values(state=READY, size=digest.size, digest=digest.sha256, ready_at=clock())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def create_artifact(
    sessions: SessionFactory,
    *,
    root: Path | None,
    name: str,
    clock: Clock,
    build_id: int | None = None,
    step_id: int | None = None,
    handles: Names = new_handle,
) -> tuple[ArtifactRow, Path]:
    """Allocate one artifact: row first (committed), then its directory. The seed's CreateVolumeForArtifact."""
    store = require_root(root)
    with transaction(sessions) as session:
        (row,) = register(
            session, build_id=build_id, step_id=step_id, names=[name], clock=clock, handles=handles
        )
    make_directories(store, [row])
    return row, resolve(store, row.subpath)


def stream_in(
    sessions: SessionFactory,
    fileobj: BinaryIO,
    *,
    root: Path | None,
    name: str,
    clock: Clock,
    build_id: int | None = None,
    handles: Names = new_handle,
) -> ArtifactRow:
    """A new ``ready`` artifact from a tar stream, checked entry by entry.

    On a bad archive nothing is left: no directory, and the row is removed.
    """
    store = require_root(root)
    with transaction(sessions) as session:
        (row,) = register(
            session, build_id=build_id, step_id=None, names=[name], clock=clock, handles=handles
        )
    target = resolve(store, row.subpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        archive.stream_in(fileobj, target)
        os.chmod(target, OUTPUT_MODE)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        with transaction(sessions) as session:
            session.execute(
                ArtifactRow.__table__.delete().where(ArtifactRow.id == row.id)  # type: ignore[attr-defined]
            )
        raise
    with transaction(sessions) as session:
        fresh = session.get(ArtifactRow, row.id)
        assert fresh is not None
        mark_ready(session, fresh, root=store, clock=clock)
    return fresh


def stream_out(
    sessions: SessionFactory, handle: str, fileobj: BinaryIO, *, root: Path | None
) -> int:
    """Write a ``ready`` artifact as a tar stream; returns the bytes written."""
    store = require_root(root)
    with transaction(sessions) as session:
        row = session.scalars(select(ArtifactRow).where(ArtifactRow.handle == handle)).one_or_none()
    if row is None or row.state != READY:
        from shared.errors import NotFoundError

        state = "no such artifact" if row is None else f"it is {row.state}"
        raise NotFoundError(f"artifact {handle} cannot be streamed out: {state}")
    return archive.stream_out(resolve(store, row.subpath), fileobj)


def remove_directory(root: Path, subpath: str) -> int:
    """Delete an artifact's directory; returns the bytes freed. A missing directory frees 0."""
    path = resolve(root, subpath)
    freed = 0
    if not path.exists():
        return 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # a file gone already frees nothing more
                freed += os.lstat(os.path.join(dirpath, f)).st_size
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise _store_error(e, path) from e
    return freed


def _store_error(e: OSError, path: Path) -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"the artifact store is full: no space left writing {path}")
    return ArtifactStoreError(f"artifact store error at {path}: {e.strerror or e}")


@dataclass(frozen=True, kw_only=True)
class Usage:
    """The artifacts in one state and the bytes they hold (a size is known once ``ready``)."""

    state: str
    artifacts: int
    bytes: int


def usage(session: Session) -> list[Usage]:
    """How much the store holds, by state: one aggregate query (the metrics read it)."""
    rows = session.execute(
        select(ArtifactRow.state, func.count(), func.coalesce(func.sum(ArtifactRow.size), 0))
        .group_by(ArtifactRow.state)
        .order_by(ArtifactRow.state)
    ).all()
    found = {
        state: Usage(state=state, artifacts=int(n), bytes=int(size or 0)) for state, n, size in rows
    }
    return [
        found.get(s) or Usage(state=s, artifacts=0, bytes=0) for s in (CREATING, READY, REAPING)
    ]
