"""The reaper at scale: one full tick over a million artifact rows and 100 000 orphan directories.

``make bench`` runs it on Postgres and on SQLite and prints, for the one tick,
its wall time and its peak memory (the process's peak resident set, reset just
before the tick where Linux allows it, and tracemalloc's peak of Python
allocations when ``JETBRIDGE_BENCH_TRACEMALLOC=1``, which slows the tick).

What is seeded: 10 000 builds of 100 artifacts each. 9 000 builds have ended:
their 900 000 rows go (their directories were never made, so the tick pays for
the database work and one look at the store per row). 1 000 builds still run,
each a finished producer and a running step that reads all 100 of its
artifacts: those 100 000 rows, and their directories, must stay. And 100 000
directories no row names, each with one file, untouched for a day, in 1 000
folders of ended builds: they go, and so do the folders. Smaller runs:
``JETBRIDGE_BENCH_ROWS``, ``JETBRIDGE_BENCH_DIRS``.
"""

from __future__ import annotations

import io
import json
import os
import resource
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from benchmarks.conftest import Recorder
from shared import status as st
from shared.db import ArtifactRow, make_engine, make_session_factory, transaction, upgrade
from shared.events import RecordingSink
from shared.logstore import DirectoryLogStore
from shared.pipelines import save_pipeline
from shared.podspec import LABEL_BUILD, LABEL_STEP, MANAGED_BY
from shared.reaper import reap
from shared.settings import Settings
from tests.conftest import POSTGRES_URL
from tests.fakes import FakeRuntime

ROWS = int(os.environ.get("JETBRIDGE_BENCH_ROWS", "1000000"))
DIRS = int(os.environ.get("JETBRIDGE_BENCH_DIRS", "100000"))
PER_BUILD = 100
RUNNING_EVERY = 10  # one build in ten still runs
ORPHANS_PER_FOLDER = 100
#: Rows per COPY or executemany: a few megabytes of text at a time.
CHUNK = 50_000

PIPELINE = """
jobs:
- name: build
  plan:
  - task: make
    config: {platform: linux, run: {path: make}}
"""

pytestmark = [pytest.mark.bench, pytest.mark.timeout(7200)]


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bench.db'}"
        name = None
    else:
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text("select 1"))
        except Exception as e:
            pytest.skip(f"Postgres at {POSTGRES_URL} cannot be reached: {e}")
        name = f"jetbridge_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()
    if name is not None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_one_tick_over_a_million_rows(
    engine: Engine,
    tmp_path: Path,
    benchmark: Any,
    capsys: pytest.CaptureFixture[str],
    results: Recorder,
) -> None:
    sessions = make_session_factory(engine)
    root = tmp_path / "store"
    now = datetime.now(UTC)
    started = time.perf_counter()
    seeded = seed(engine, sessions, root, now)
    seeding = time.perf_counter() - started

    settings = Settings(store_min_free_percent=10)
    outcome: dict[str, Any] = {}

    def tick() -> None:
        trace = os.environ.get("JETBRIDGE_BENCH_TRACEMALLOC") == "1"
        reset = _reset_peak_rss()
        outcome["rss_start"] = _rss()
        if trace:
            tracemalloc.start()
        began = time.perf_counter()
        outcome["report"] = reap(
            sessions,
            store_root=root,
            clock=lambda: now,
            settings=settings,
            runtime=seeded["runtime"],
            logs=DirectoryLogStore(tmp_path / "logs"),
            sink=RecordingSink(),
        )
        outcome["seconds"] = time.perf_counter() - began
        if trace:
            outcome["traced_peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        outcome["peak_rss"] = _peak_rss()
        outcome["rss_reset"] = reset

    benchmark.pedantic(tick, rounds=1, iterations=1)
    report = outcome["report"]
    with transaction(sessions) as session:
        left = session.scalar(select(func.count()).select_from(ArtifactRow))
    lines = [
        f"reaper tick on {engine.dialect.name}: {ROWS:,} artifact rows, {DIRS:,} orphan directories",
        f"  seeding: {seeding:.1f} s",
        f"  tick:    {outcome['seconds']:.1f} s",
        f"  peak RSS during the tick: {outcome['peak_rss'] / 2**20:.0f} MiB"
        + ("" if outcome["rss_reset"] else " (of the whole process: could not reset the peak)"),
    ]
    if "traced_peak" in outcome:
        lines.append(f"  tracemalloc peak: {outcome['traced_peak'] / 2**20:.1f} MiB")
    lines.append(f"  report: {report.summary()}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    group = "reaper: one tick"
    where = {"database": engine.dialect.name, "rows": f"{ROWS:,}", "orphan dirs": f"{DIRS:,}"}
    results.record(group, "tick", outcome["seconds"], "s", **where)
    peak = "peak RSS" if outcome["rss_reset"] else "peak RSS (whole process)"
    results.record(group, peak, outcome["peak_rss"] / 2**20, "MiB", **where)
    results.record(group, "RSS at the tick's start", outcome["rss_start"] / 2**20, "MiB", **where)
    results.record(group, "seeding (not the tick)", seeding, "s", **where)
    results.note(
        group,
        f"{ROWS:,} artifact rows ({ROWS - seeded['kept']:,} expendable, {seeded['kept']:,} of "
        f"running builds kept) and {DIRS:,} orphan directories; one full tick "
        "(`reap`), peak resident memory reset just before it.",
    )
    benchmark.extra_info.update(
        tick_seconds=outcome["seconds"],
        peak_rss_bytes=outcome["peak_rss"],
        rows=ROWS,
        directories=DIRS,
    )
    assert report.errors == []
    assert report.tallies["artifacts"].done == seeded["expendable"]
    assert report.tallies["directories"].done == DIRS
    assert left == seeded["kept"]
    assert sorted(p.name for p in (root / "artifacts").iterdir()) == sorted(
        str(b) for b in seeded["running"]
    )


def seed(engine: Engine, sessions: Any, root: Path, now: datetime) -> dict[str, Any]:
    """Builds, steps and artifact rows in bulk; the running builds' and orphan directories."""
    day_ago = now - timedelta(days=1)
    builds = ROWS // PER_BUILD
    with transaction(sessions) as session:
        pipeline = save_pipeline(session, name="bench", config=PIPELINE, clock=lambda: day_ago)
        pipeline_id = pipeline.id
    stamp = day_ago.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    fresh = now.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    running = [b for b in range(1, builds + 1) if b % RUNNING_EVERY == 0]
    columns = ("id", "number", "status", "started_at", "finished_at")
    _bulk(  # ended a day ago, or started just now (well inside the build timeout)
        engine,
        "builds",
        (*columns, "pipeline_id", "job_name", "versions", "created_at"),
        (
            (
                (b, b, st.STARTED, fresh, None)
                if b % RUNNING_EVERY == 0
                else (b, b, st.SUCCEEDED, stamp, stamp)
            )
            + (pipeline_id, "build", "{}", stamp)
            for b in range(1, builds + 1)
        ),
    )
    names = [f"out{i}" for i in range(PER_BUILD)]
    reader = {
        "key": "1",
        "name": "read",
        "kind": "task",
        "inputs": [{"name": n, "producer": "0", "mount": n} for n in names],
    }
    make = json.dumps({"key": "0", "name": "make", "kind": "task"})
    read = json.dumps(reader)
    runtime = FakeRuntime()
    steps = []
    for i, b in enumerate(running):  # a finished producer, and a running step reading it all
        pod = f"jb-{b}-read-a1"
        steps.append((2 * i + 1, b, "0", "make", "[]", make, st.SUCCEEDED, None, stamp))
        steps.append((2 * i + 2, b, "1", "read", '["0"]', read, st.RUNNING, pod, fresh))
        runtime.pods[pod] = {
            "metadata": {
                "name": pod,
                "labels": {
                    MANAGED_BY: "jetbridge",
                    LABEL_BUILD: str(b),
                    LABEL_STEP: str(2 * i + 2),
                },
            },
            "status": {"phase": "Running"},
        }
    columns = ("id", "build_id", "key", "name", "depends_on", "spec", "status", "pod_name")
    _bulk(
        engine,
        "steps",
        (*columns, "started_at", "kind", "attempt", "result", "created_at"),
        ((*row, "task", 1, "{}", stamp) for row in steps),
    )
    producer = {b: 2 * i + 1 for i, b in enumerate(running)}
    _bulk(
        engine,
        "artifacts",
        (
            "handle",
            "build_id",
            "step_id",
            "name",
            "subpath",
            "state",
            "size",
            "created_at",
            "ready_at",
        ),
        (
            (
                h := f"{b:08x}{i:024x}",
                b,
                producer.get(b),
                names[i],
                f"artifacts/{b}/{h}",
                "ready",
                1,
                stamp,
                stamp,
            )
            for b in range(1, builds + 1)
            for i in range(PER_BUILD)
        ),
    )
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # the ids were given: move the sequences past
            for table in ("builds", "steps"):
                conn.execute(
                    text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
                )
        # What autovacuum (or SQLite's optimizer, given ANALYZE) knows of a table this size.
        conn.execute(text("ANALYZE"))
    old = day_ago.timestamp()
    for b in running:  # what still runs has its directories
        for i in range(PER_BUILD):
            (root / "artifacts" / str(b) / f"{b:08x}{i:024x}").mkdir(parents=True)
    ended = [b for b in range(1, builds + 1) if b % RUNNING_EVERY != 0]
    for n in range(DIRS):
        folder = root / "artifacts" / str(ended[(n // ORPHANS_PER_FOLDER) % len(ended)])
        path = folder / f"copy-{n:06d}"
        path.mkdir(parents=True)
        (path / "f").write_bytes(b"x")
        os.utime(path, (old, old))
    kept = len(running) * PER_BUILD
    return {
        "running": running,
        "kept": kept,
        "expendable": builds * PER_BUILD - kept,
        "runtime": runtime,
    }


def _bulk(
    engine: Engine, table: str, columns: tuple[str, ...], rows: Iterator[tuple[Any, ...]]
) -> None:
    """Insert many rows fast: COPY on Postgres, executemany on SQLite, in chunks."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        chunk: list[tuple[Any, ...]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= CHUNK:
                _flush(engine, cursor, table, columns, chunk)
                chunk = []
        if chunk:
            _flush(engine, cursor, table, columns, chunk)
        raw.commit()
    finally:
        raw.close()


def _flush(
    engine: Engine, cursor: Any, table: str, columns: tuple[str, ...], chunk: list[tuple[Any, ...]]
) -> None:
    if engine.dialect.name == "postgresql":
        buffer = io.StringIO()
        for row in chunk:
            buffer.write("\t".join(r"\N" if v is None else str(v) for v in row) + "\n")
        buffer.seek(0)
        cursor.execute(f"COPY {table} ({', '.join(columns)}) FROM STDIN", stream=buffer)
    else:
        marks = ", ".join("?" for _ in columns)
        cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", chunk)


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident set (Linux ``clear_refs``); ``False`` if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes, if it is there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss() -> int:
    """The process's resident set now, in bytes."""
    return _status_bytes("VmRSS") or 0


def _peak_rss() -> int:
    """The process's peak resident set in bytes, since the last reset."""
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
