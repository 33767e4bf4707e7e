"""The artifact store: rows before directories, ready with a digest, streams checked, nothing half-made."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from shared import artifacts
from shared.db import ArtifactRow, BuildRow, PipelineRow, transaction
from shared.errors import ArchiveError, ConfigurationError, NotFoundError
from shared.reaper import reap
from shared.settings import Settings
from tests.fakes import FakeClock, Handles


def count_rows(sessions: Any) -> int:
    with transaction(sessions) as session:
        return int(session.scalar(select(func.count()).select_from(ArtifactRow)) or 0)


def dirs_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_dir()] if root.exists() else []


def test_create_registers_the_row_then_the_directory(
    sessions: Any, tmp_path: Path, clock: FakeClock
) -> None:
    row, path = artifacts.create_artifact(
        sessions, root=tmp_path, name="dist", clock=clock, handles=Handles()
    )
    assert row.state == artifacts.CREATING
    assert row.subpath == "artifacts/adhoc/h0001"
    assert path == (tmp_path / "artifacts/adhoc/h0001").resolve() and path.is_dir()
    (path / "a.txt").write_text("hello")
    with transaction(sessions) as session:
        fresh = session.get(ArtifactRow, row.id)
        assert fresh is not None
        assert artifacts.mark_ready(session, fresh, root=tmp_path, clock=clock)
        assert not artifacts.mark_ready(session, fresh, root=tmp_path, clock=clock)  # only once
    with transaction(sessions) as session:
        ready = session.get(ArtifactRow, row.id)
        assert ready is not None
        assert (ready.state, ready.size) == ("ready", 5)
        assert ready.digest is not None and len(ready.digest) == 64


@pytest.mark.parametrize(
    "root",
    [None, Settings(runtime="kubernetes").effective_store_root],
    ids=["unset", "cluster-without-claim-mount"],
)
def test_no_store_root_is_a_clear_error_and_writes_nothing(
    sessions: Any, clock: FakeClock, root: Path | None
) -> None:
    with pytest.raises(ConfigurationError, match="artifact store root is not configured"):
        artifacts.create_artifact(sessions, root=root, name="dist", clock=clock)
    assert count_rows(sessions) == 0


def test_a_failed_registration_leaves_no_directory(
    sessions: Any, engine: Any, tmp_path: Path, clock: FakeClock
) -> None:
    with engine.begin() as conn:  # the database refuses the insert
        conn.execute(text("DROP TABLE artifacts"))
    with pytest.raises(Exception, match="artifacts"):
        artifacts.create_artifact(sessions, root=tmp_path, name="dist", clock=clock)
    assert dirs_under(tmp_path) == []


def test_a_crash_between_row_and_directory_is_reapable(
    sessions: Any, tmp_path: Path, clock: FakeClock
) -> None:
    with transaction(sessions) as session:
        pipeline = PipelineRow(
            name="p",
            config="",
            variables={},
            config_hash="",
            paused=False,
            created_at=clock(),
            updated_at=clock(),
        )
        session.add(pipeline)
        session.flush()
        build = BuildRow(
            pipeline_id=pipeline.id,
            job_name="j",
            number=1,
            status="errored",
            versions={},
            created_at=clock(),
        )
        session.add(build)
        session.flush()
        artifacts.register(session, build_id=build.id, step_id=None, names=["dist"], clock=clock)
    # ...and the process died before mkdir: the row is there, the directory is not.
    report = reap(sessions, store_root=tmp_path, clock=clock)
    assert report.artifacts_reaped == 1
    assert count_rows(sessions) == 0


def test_stream_out_then_in_round_trips_with_the_same_digest(
    sessions: Any, tmp_path: Path, clock: FakeClock
) -> None:
    root = tmp_path / "store"
    row, path = artifacts.create_artifact(sessions, root=root, name="src", clock=clock)
    (path / "sub").mkdir()
    (path / "sub" / "f.bin").write_bytes(b"x" * 10_000)
    with transaction(sessions) as session:
        fresh = session.get(ArtifactRow, row.id)
        assert fresh is not None
        artifacts.mark_ready(session, fresh, root=root, clock=clock)
        digest = fresh.digest
    buffer = io.BytesIO()
    assert artifacts.stream_out(sessions, row.handle, buffer, root=root) > 10_000
    buffer.seek(0)
    copy = artifacts.stream_in(sessions, buffer, root=root, name="copy", clock=clock)
    assert copy.state == "ready"
    with transaction(sessions) as session:
        assert session.get(ArtifactRow, copy.id).digest == digest  # type: ignore[union-attr]


def test_a_bad_archive_leaves_no_row_and_no_directory(
    sessions: Any, tmp_path: Path, clock: FakeClock
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    buffer.seek(0)
    root = tmp_path / "store"
    with pytest.raises(ArchiveError, match=r"\.\./escape\.txt"):
        artifacts.stream_in(sessions, buffer, root=root, name="evil", clock=clock)
    assert count_rows(sessions) == 0
    assert [p for p in root.rglob("*") if not p.is_dir()] == []
    adhoc = root / "artifacts" / "adhoc"  # the shared parent may stay; no artifact directory does
    assert not adhoc.exists() or list(adhoc.iterdir()) == []
    assert not (root / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()


def test_stream_out_of_an_unready_artifact_is_refused(
    sessions: Any, tmp_path: Path, clock: FakeClock
) -> None:
    row, _ = artifacts.create_artifact(sessions, root=tmp_path, name="dist", clock=clock)
    with pytest.raises(NotFoundError, match="it is creating"):
        artifacts.stream_out(sessions, row.handle, io.BytesIO(), root=tmp_path)


@pytest.mark.parametrize(
    "subpath",
    ["../outside", "/etc", "artifacts/../../x", "."],
    ids=["dotdot", "absolute", "nested-dotdot", "root-itself"],
)
def test_subpaths_never_resolve_outside_the_store(tmp_path: Path, subpath: str) -> None:
    with pytest.raises(artifacts.ArtifactStoreError, match="does not resolve inside"):
        artifacts.resolve(tmp_path, subpath)
