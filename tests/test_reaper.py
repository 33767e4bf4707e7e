"""The reaper's artifacts and store: every kind of orphan, killed at every point, on SQLite and Postgres.

Each orphan case is reaped three ways: in one clean tick; with the tick killed
between claiming the artifact and deleting its directory; and killed between
deleting the directory and deleting the row. After a second tick (a lease
later) the orphan is gone, everything a build still needs is there, and the
store and the database agree.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from shared import artifacts
from shared import status as st
from shared.archive import STAGING_PREFIX
from shared.cli import cli
from shared.db import BuildRow, make_engine, make_session_factory, transaction, upgrade
from shared.errors import RuntimeUnavailable
from shared.pipelines import destroy_pipeline, save_pipeline
from shared.podspec import LABEL_STEP
from shared.reaper import MAX_ERRORS, MAX_EXAMPLES, REAPING_PREFIX
from tests.fakes import FakeClock
from tests.reaping import (
    PIPELINE,
    FakeDisk,
    Killed,
    Remover,
    World,
    at,
    original,
    snapshot,
)

GRACE = 600
LEASE = 240


@pytest.fixture
def world(sessions: Any, tmp_path: Path, clock: FakeClock) -> World:
    return World(sessions, tmp_path, clock)


def survivors(world: World) -> set[str]:
    """What every tick must leave alone: what running builds and live uploads still need."""
    running = world.build(st.STARTED)
    needed = world.artifact(running)  # no step has said it is done with it
    young_dir = f"artifacts/{running}/young-directory"
    world.directory(young_dir, age=10)  # no row yet, but not older than the grace period
    upload = world.artifact(None, state=artifacts.CREATING, age=10, directory=False)
    handle = upload.rsplit("/", 1)[1]
    staging = f"artifacts/adhoc/{STAGING_PREFIX}{handle}.k3j9"
    world.directory(staging, age=10 * GRACE)  # old, but its upload's row is still creating
    kept_upload = world.artifact(None, age=3600)  # younger than adhoc_retention_seconds
    return {needed, young_dir, upload, staging, kept_upload}


# --- the orphans ------------------------------------------------------------------------


def build_ended(world: World) -> str:
    return world.artifact(world.build(st.SUCCEEDED))


def failed_steps_output(world: World) -> str:
    build = world.build(st.STARTED)
    step = world.step_row(build, status=st.FAILED)
    return world.artifact(build, state=artifacts.CREATING, step_id=step)


def past_retention(world: World) -> str:
    world.settings = dataclasses.replace(world.settings, artifact_retention_seconds=3600)
    world.extra.add(world.artifact(world.build(st.FAILED, ended_ago=100)))  # kept: not yet
    return world.artifact(world.build(st.FAILED, ended_ago=3601))


def upload_cut_short(world: World) -> str:
    return world.artifact(None, state=artifacts.CREATING, age=GRACE + 1)


def build_deleted(world: World) -> str:
    with transaction(world.sessions) as session:
        save_pipeline(session, name="gone", config=PIPELINE, clock=world.clock)
    orphan = world.artifact(world.build(st.STARTED, pipeline_name="gone"))
    with transaction(world.sessions) as session:
        destroy_pipeline(session, "gone")
    return orphan


def upload_past_retention(world: World) -> str:
    return world.artifact(None, age=86400 + 1)


def past_expiry(world: World) -> str:
    return world.artifact(None, age=10, expires_at=at(world.clock, 1))


def read_by_no_step_that_may_run(world: World) -> str:
    build = world.start()
    world.run(build, "repo", "compile", "lint")  # compile and lint read repo; unit and ship dist
    dist = world.rows_of(build, "dist")
    world.extra.add(dist)
    return world.rows_of(build, "repo")


def claim_of_a_dead_tick(world: World) -> str:
    return world.artifact(
        world.build(st.SUCCEEDED),
        state=artifacts.REAPING,
        reaping_at=at(world.clock, LEASE + 1),
    )


def claim_let_go(world: World) -> str:
    return world.artifact(world.build(st.STARTED), state=artifacts.REAPING, reaping_at=None)


def directory_with_no_row(world: World) -> str:
    subpath = f"artifacts/{world.build(st.STARTED)}/d41d8cd98f00b204e9800998ecf8427e"
    world.directory(subpath, age=GRACE + 1)
    return subpath


def directory_of_an_unknown_build(world: World) -> str:
    world.directory("artifacts/999/restored-from-backup", age=GRACE + 1)
    return "artifacts/999/restored-from-backup"


def upload_staging_left_behind(world: World) -> str:
    subpath = f"artifacts/adhoc/{STAGING_PREFIX}0123456789abcdef.x7y8"
    world.directory(subpath, age=GRACE + 1)
    return subpath


def directory_claim_of_a_dead_tick(world: World) -> str:
    claimed_at = int(at(world.clock, LEASE + 1).timestamp())
    subpath = f"artifacts/{world.build(st.SUCCEEDED)}/{REAPING_PREFIX}{claimed_at}-h9999"
    world.directory(subpath, age=LEASE + 1)
    return subpath


@dataclass(frozen=True)
class Orphan:
    make: Callable[[World], str]
    kind: str
    """``row`` (claimed by compare-and-set) or ``directory`` (claimed by rename)."""
    category: str


ORPHANS = {
    "build-ended": Orphan(build_ended, "row", "artifacts"),
    "failed-steps-output": Orphan(failed_steps_output, "row", "artifacts"),
    "past-retention": Orphan(past_retention, "row", "artifacts"),
    "upload-cut-short": Orphan(upload_cut_short, "row", "artifacts"),
    "build-deleted": Orphan(build_deleted, "row", "artifacts"),
    "upload-past-retention": Orphan(upload_past_retention, "row", "artifacts"),
    "past-expiry": Orphan(past_expiry, "row", "artifacts"),
    "read-by-no-step-that-may-run": Orphan(read_by_no_step_that_may_run, "row", "artifacts"),
    "claim-of-a-dead-tick": Orphan(claim_of_a_dead_tick, "row", "artifacts"),
    "claim-let-go": Orphan(claim_let_go, "row", "artifacts"),
    "directory-with-no-row": Orphan(directory_with_no_row, "directory", "directories"),
    "directory-of-unknown-build": Orphan(directory_of_an_unknown_build, "directory", "directories"),
    "upload-staging-left-behind": Orphan(upload_staging_left_behind, "directory", "staging"),
    "directory-claim-of-dead-tick": Orphan(
        directory_claim_of_a_dead_tick, "directory", "directories"
    ),
}

CRASHES = {
    "clean": None,
    "killed-between-claim-and-delete": "before",
    "killed-between-delete-and-row": "after",
}


@pytest.mark.parametrize("crash", list(CRASHES.values()), ids=list(CRASHES))
@pytest.mark.parametrize("case", list(ORPHANS.values()), ids=list(ORPHANS))
def test_every_orphan_is_reaped_whenever_the_tick_is_killed(
    world: World, case: Orphan, crash: str | None
) -> None:
    keep = survivors(world)
    orphan = case.make(world)
    keep |= world.extra
    on_store = orphan in world.dirs()
    remover = Remover(crash=crash)
    if crash is None:
        report = world.reap(remover)
    else:
        with pytest.raises(Killed):
            world.reap(remover)
        # The kill left the work half done, exactly where it says.
        if case.kind == "row":
            assert world.rows()[orphan] == artifacts.REAPING
        assert (orphan in world.dirs()) == (crash == "before" and case.kind == "row" and on_store)
        world.clock.advance(LEASE + 1)  # a later tick finds the claim abandoned
        report = world.reap()
    assert orphan not in world.rows()
    assert orphan not in world.dirs()
    assert not any(REAPING_PREFIX in d for d in world.dirs())
    rows, dirs = world.rows(), world.dirs()
    for subpath in keep:
        assert subpath in rows or subpath in dirs, f"{subpath} was reaped"
    world.assert_agree(allow=keep)
    # What the last tick did: all of it, unless the killed one had nothing left but a row.
    finished_before = case.kind == "directory" and crash == "after"
    assert report.tallies[case.category].done == (0 if finished_before else 1)
    assert report.errors == []
    if crash is None:
        assert remover.removed[original(orphan)] == 1


def test_a_clean_tick_frees_the_bytes_and_a_second_finds_nothing(world: World) -> None:
    orphans = [world.artifact(world.build(st.SUCCEEDED), content=b"z" * 1000) for _ in range(10)]
    report = world.reap()
    assert report.artifacts_reaped == 10
    assert report.bytes_freed == 10 * 1000
    assert set(world.rows()) & set(orphans) == set()
    again = world.reap()
    assert again.summary() == "nothing to reap"
    assert world.folders() == set()  # the emptied build folders went too


def test_a_failure_is_reported_and_retried_next_tick_without_stopping_the_rest(
    world: World,
) -> None:
    build = world.build(st.SUCCEEDED)
    stuck = world.artifact(build)
    others = [world.artifact(build) for _ in range(9)]
    stuck_dir = world.directory("artifacts/999/stuck-directory", age=GRACE + 1)
    other_dir = world.directory("artifacts/999/other-directory", age=GRACE + 1)
    remover = Remover(fail=(stuck.rsplit("/", 1)[1], "stuck-directory"))
    report = world.reap(remover)
    assert report.tallies["artifacts"].done == 9
    assert report.tallies["artifacts"].failed == 1
    assert report.tallies["directories"].done == 1
    assert report.tallies["directories"].failed == 1
    assert [e for e in report.errors if stuck in e] == [
        f"artifact {stuck} could not be removed: Permission denied: {stuck}"
    ]
    assert any("artifacts/999/stuck-directory could not be removed" in e for e in report.errors)
    assert set(world.rows()) & set(others) == set()
    assert not other_dir.exists()
    # Let go, not left claimed: the very next tick, no lease later, tries again.
    assert world.rows()[stuck] == artifacts.REAPING
    report = world.reap()
    assert report.errors == []
    assert stuck not in world.rows()
    assert not stuck_dir.exists() and world.dirs() == set()
    world.assert_agree()


def test_errors_and_examples_stay_bounded(world: World) -> None:
    build = world.build(st.SUCCEEDED)
    for _ in range(MAX_ERRORS + 20):
        world.artifact(build, directory=False)
    report = world.reap(Remover(fail=("artifacts/",)))
    assert len(report.errors) == MAX_ERRORS
    assert report.errors_dropped == 20
    assert report.error_count == MAX_ERRORS + 20
    assert len(report.tallies["artifacts"].examples) == MAX_EXAMPLES
    assert f"{MAX_ERRORS + 20} error(s)" in report.summary()


def test_a_pass_that_fails_does_not_stop_the_others(world: World) -> None:
    orphan = world.artifact(world.build(st.SUCCEEDED))
    world.runtime.faults["list"] = RuntimeUnavailable("the API answered 503")
    report = world.reap()
    assert report.errors == ["the pods pass stopped: the API answered 503"]
    assert report.tallies["tick"].failed == 1
    assert orphan not in world.rows()


@pytest.mark.parametrize(
    ("status", "contents", "gone"),
    [
        (st.SUCCEEDED, False, True),
        (st.ABORTED, False, True),
        (None, False, True),  # the build is gone
        (st.STARTED, False, False),
        (st.SUCCEEDED, True, False),
    ],
    ids=["ended-build", "aborted-build", "no-such-build", "running-build", "not-empty"],
)
def test_empty_build_folders_go_when_their_build_is_over(
    world: World, status: str | None, contents: bool, gone: bool
) -> None:
    build = world.build(status) if status else 4242
    folder = world.root / "artifacts" / str(build)
    folder.mkdir(parents=True)
    if contents:
        world.artifact(build, directory=False)
        (folder / "h0001").mkdir()
        world.settings = dataclasses.replace(world.settings, artifact_retention_seconds=3600)
    for other in ("adhoc", "lost+found"):  # never taken: uploads' folder, and not ours
        (world.root / "artifacts" / other).mkdir()
    report = world.reap()
    assert folder.exists() != gone
    assert report.tallies["build_folders"].done == int(gone)
    assert {"adhoc", "lost+found"} <= world.folders()


def test_files_and_links_on_the_store_are_left_alone(world: World, tmp_path: Path) -> None:
    folder = world.root / "artifacts" / "adhoc"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("not a directory")
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "link").symlink_to(outside)
    world.touch(folder / "notes.txt", age=GRACE * 10)
    report = world.reap()
    assert report.tallies["directories"].found == 0
    assert (folder / "notes.txt").exists() and (folder / "link").is_symlink() and outside.exists()


# --- volume pressure ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pressure:
    wanted_free: int
    """``store_min_free_bytes``; the volume has 10 000 bytes, 1 000 used by others."""
    gone: tuple[str, ...]
    short: bool = False


PRESSURE = {
    # The store holds 4 expendable artifacts of 1 000 bytes (3 of ended builds, then an older
    # upload) and 1 000 bytes a running build needs: 4 000 bytes free at first.
    "enough-free": Pressure(4_000, ()),
    "oldest-ended-build-first": Pressure(4_500, ("ended-oldest",)),
    "as-many-as-needed": Pressure(6_500, ("ended-oldest", "ended-middle", "ended-newest")),
    "uploads-after-ended-builds": Pressure(
        7_500, ("ended-oldest", "ended-middle", "ended-newest", "upload")
    ),
    "running-builds-never": Pressure(
        9_000, ("ended-oldest", "ended-middle", "ended-newest", "upload"), short=True
    ),
}


@pytest.mark.parametrize(
    "crash", [None, "before", "after"], ids=["clean", "killed-before", "killed-after"]
)
@pytest.mark.parametrize("case", list(PRESSURE.values()), ids=list(PRESSURE))
def test_pressure_reclaims_the_oldest_expendable_artifacts_first(
    world: World, case: Pressure, crash: str | None
) -> None:
    world.settings = dataclasses.replace(
        world.settings, artifact_retention_seconds=86400, store_min_free_bytes=case.wanted_free
    )
    world.disk = FakeDisk(total=10_000, other=1_000)
    kb = b"p" * 1000
    made = {  # made out of age order, so neither ids nor insertion order give the answer
        "ended-newest": world.artifact(
            world.build(st.SUCCEEDED, ended_ago=100), content=kb, age=200
        ),
        "ended-oldest": world.artifact(
            world.build(st.SUCCEEDED, ended_ago=100), content=kb, age=400
        ),
        "ended-middle": world.artifact(world.build(st.FAILED, ended_ago=100), content=kb, age=300),
        # Older than all of them, but an upload: it goes after ended builds' artifacts.
        "upload": world.artifact(None, content=kb, age=1000),
        "running": world.artifact(world.build(st.STARTED), content=kb, age=5000),
    }
    if crash is not None and case.gone:
        with pytest.raises(Killed):
            world.reap(Remover(crash=crash))
        world.clock.advance(LEASE + 1)
    report = world.reap()
    rows = world.rows()
    gone = {name for name, subpath in made.items() if subpath not in rows}
    assert gone == set(case.gone)
    assert {name for name, s in made.items() if s not in world.dirs()} == set(case.gone)
    if crash is None:
        assert report.tallies["pressure"].done == len(case.gone)
        assert report.tallies["pressure"].bytes == 1000 * len(case.gone)
    assert report.wanted_free_bytes == case.wanted_free
    assert any("still short of free space" in n for n in report.notes) == case.short
    world.assert_agree()


def test_pressure_counts_a_percentage_of_the_store(world: World) -> None:
    world.settings = dataclasses.replace(
        world.settings, artifact_retention_seconds=86400, store_min_free_percent=45
    )
    world.disk = FakeDisk(total=10_000, other=5_000)
    first = world.artifact(world.build(st.SUCCEEDED), content=b"p" * 1000, age=20)
    second = world.artifact(world.build(st.SUCCEEDED), content=b"p" * 1000, age=10)
    report = world.reap()  # 3 000 free, 4 500 wanted: both go
    assert report.wanted_free_bytes == 4_500
    assert first not in world.rows() and second not in world.rows()


# --- dry run and the report ----------------------------------------------------------


def test_a_dry_run_changes_nothing_and_says_what_the_tick_will_do(world: World) -> None:
    survivors(world)
    for case in ORPHANS.values():
        case.make(world)
    world.settings = dataclasses.replace(world.settings, artifact_retention_seconds=0)
    # And stuck work: a running step whose pod vanished long ago, a pod no step knows.
    build = world.start()
    world.runtime.pods.pop(world.launch(build, "repo"))
    world.set_step(world.step(build, "repo").id, started_at=at(world.clock, GRACE + 1))
    stray = copy.deepcopy(world.runtime.pods[world.launch(world.start(), "repo")])
    stray["metadata"]["name"] = "stray"
    stray["metadata"]["labels"][LABEL_STEP] = "424242"
    world.runtime.pods["stray"] = stray
    before = snapshot(world)
    dry = world.reap(dry_run=True)
    assert snapshot(world) == before
    assert dry.dry_run and dry.bytes_freed == 0
    assert dry.summary().startswith("would put right: ")
    assert dry.tallies["lost_pods"].found == 1
    assert dry.tallies["stray_pods"].found == 1
    assert dry.tallies["artifacts"].found == 11  # with what retention kept, now 0
    real = world.reap()
    for category, tally in real.tallies.items():
        if category in ("artifacts", "build_folders"):
            continue  # a real tick also takes what its own earlier passes freed
        assert dry.tallies[category].found == tally.done, category


def test_the_report_reads_as_a_person_would_say_it(world: World) -> None:
    world.artifact(world.build(st.SUCCEEDED), content=b"r" * 2048)
    world.directory("artifacts/999/old", age=GRACE + 1)
    report = world.reap()
    assert report.summary() == (
        "put right: 1 artifact(s) no build needs, 1 director(ies) with no row, "
        "2 empty build folder(s); 2.0 KiB freed"
    )
    lines = report.lines()
    assert lines[0] == (
        "artifacts: artifact(s) no build needs, reclaimed: found 1, done 1, 2.0 KiB"
    )
    assert lines[1] == "  artifacts/1/h0001 (ready): build 1 succeeded"
    data = report.as_dict()
    assert data["categories"]["directories"] == {"found": 1, "done": 1, "bytes": 10, "failed": 0}


# --- the command ----------------------------------------------------------------------


def test_jetbridge_reap_prints_the_report_and_dry_run_changes_nothing(
    tmp_path: Path, clock: FakeClock
) -> None:
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'jetbridge.db'}")
    upgrade(engine)
    # The command runs on the real clock: the build ended a day before it.
    yesterday = FakeClock(datetime.now(UTC) - timedelta(days=1))
    world = World(make_session_factory(engine), data, yesterday)
    orphan = world.artifact(world.build(st.SUCCEEDED))
    runner = CliRunner()
    env = {"JETBRIDGE_STORE_MIN_FREE_PERCENT": "0"}
    dry = runner.invoke(cli, ["--data-dir", str(data), "reap", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines()[0] == (
        "dry run, nothing changed: would put right: 1 artifact(s) no build needs; "
        "100 B would be freed"
    )
    assert f"    {orphan} (ready): build 1 succeeded" in dry.output
    assert orphan in world.rows()
    done = runner.invoke(cli, ["--data-dir", str(data), "reap"], env=env)
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[0] == (
        "put right: 1 artifact(s) no build needs, 1 empty build folder(s); 100 B freed"
    )
    assert world.rows() == {} and world.dirs() == set()
    engine.dispose()


def test_jetbridge_abort_build_names_what_it_stopped(tmp_path: Path, clock: FakeClock) -> None:
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'jetbridge.db'}")
    upgrade(engine)
    world = World(make_session_factory(engine), data, clock)
    build = world.start()
    runner = CliRunner()
    missing = runner.invoke(cli, ["--data-dir", str(data), "abort-build", "99"])
    assert missing.exit_code == 1
    assert "no build 99; `jetbridge builds` lists them" in missing.output
    result = runner.invoke(cli, ["--data-dir", str(data), "abort-build", str(build)])
    assert result.exit_code == 0, result.output
    assert result.output == f"build {build} aborted (repo, compile, unit, lint, ship)\n"
    again = runner.invoke(cli, ["--data-dir", str(data), "abort-build", str(build)])
    assert again.output == f"build {build} had already aborted: nothing to abort\n"
    with transaction(world.sessions) as session:
        aborted = session.get(BuildRow, build)
        assert aborted is not None and aborted.status == st.ABORTED
    engine.dispose()
