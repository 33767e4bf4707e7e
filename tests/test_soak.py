"""The soak, compressed: thousands of builds in one process, the reaper ticking between them.

``jetbridge serve`` is one long-lived process: ``LocalCI`` (in-process bus, local runtime
running real pods, SQLite by default) and a reaper tick on a schedule. This runs builds
through it in waves, a reaper tick after each wave, and samples what must not grow:
the process's resident memory, its open file descriptors and threads, the artifact rows
and the store's bytes. After a warm-up the first sample is the baseline; at the end,
after a last tick, each must be back at it (within ``TOLERANCE``). Builds and steps rows
and the step logs grow by design (the build history); they are reported, not bounded.

``make test`` runs a short soak (``JETBRIDGE_SOAK_BUILDS``, 100 by default); ``make soak``
runs 2,000 and writes the report into docs/benchmarks.md and docs/benchmarks.json
(``JETBRIDGE_SOAK_REPORT=1``). ``JETBRIDGE_SOAK_DATABASE=postgres`` runs it on the test
Postgres server instead of SQLite (``make soak`` runs both).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from benchmarks import results as bench_results
from shared import status as st
from shared.db import ArtifactRow, BuildRow, StepRow, transaction
from shared.local import LocalCI
from shared.settings import Settings
from tests.faults.cluster import workspace

BUILDS = int(os.environ.get("JETBRIDGE_SOAK_BUILDS", "100"))
DATABASE = os.environ.get("JETBRIDGE_SOAK_DATABASE", "sqlite")
REPORT = os.environ.get("JETBRIDGE_SOAK_REPORT") == "1"
#: Builds in flight at once, then a reaper tick: a busy ``serve`` between two of its ticks.
WAVE = 10
#: Builds run before the baseline is taken: imports, caches and pools warm up first.
WARMUP = 20
#: Every tenth build fails (its half-written output must be reaped like any other).
FAILING_EVERY = 10
#: How far each measure may end above its baseline. Rows and bytes on the store must come
#: back exactly; descriptors and threads to within a couple (a pooled connection, a
#: logging handler opened late); memory to within what the allocator's fragmentation moves
#: by, while a leak of 4 KiB a build would pass it by 2,000 builds. On SQLite, memory may
#: also grow by ``SQLITE_CACHE_MIB`` per pooled connection: SQLite's page cache, inside
#: this process, fills as the database file grows (the build history) up to that size.
TOLERANCE: dict[str, float] = {
    "artifact_rows": 0,
    "store_bytes": 0,
    "store_entries": 0,
    "open_fds": 2,
    "threads": 1,
    "rss_mib": 8,
}
#: SQLite's default ``cache_size`` (-2000: 2,000 KiB a connection).
SQLITE_CACHE_MIB = 2000 / 1024

PIPELINE = """
jobs:
- name: build
  plan:
  - task: make
    config:
      platform: linux
      outputs: [{name: out}]
      run: {path: sh, args: [-c, "head -c 65536 /dev/zero > out/blob; echo made > out/note"]}
  - task: use
    config:
      platform: linux
      inputs: [{name: out}]
      run: {path: sh, args: [-c, "test -s out/blob && cat out/note"]}
- name: broken
  plan:
  - task: make
    config:
      platform: linux
      outputs: [{name: out}]
      run: {path: sh, args: [-c, "echo partial > out/file; exit 3"]}
"""


@dataclass(frozen=True, kw_only=True)
class Sample:
    builds: int
    seconds: float
    rss_mib: float
    open_fds: int
    threads: int
    artifact_rows: int
    store_bytes: int
    store_entries: int
    build_rows: int
    step_rows: int
    log_bytes: int
    db_connections: int
    """Connections the engine's pool holds (SQLite keeps a page cache in each)."""


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _tree(path: Path) -> tuple[int, int]:
    """Bytes and entries under ``path``."""
    size = entries = 0
    for dirpath, dirs, files in os.walk(path):
        entries += len(dirs) + len(files)
        for name in files:
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return size, entries


def sample(ci: LocalCI, builds: int, started: float) -> Sample:
    gc.collect()
    with transaction(ci.deps.sessions) as session:
        count = {
            row: session.scalar(select(func.count()).select_from(row))
            for row in (ArtifactRow, BuildRow, StepRow)
        }
    store = ci.settings.effective_store_root
    assert store is not None
    store_bytes, store_entries = _tree(store / "artifacts")
    return Sample(
        builds=builds,
        seconds=time.monotonic() - started,
        rss_mib=_rss_mib(),
        open_fds=len(os.listdir("/proc/self/fd")),
        threads=threading.active_count(),
        artifact_rows=count[ArtifactRow] or 0,
        store_bytes=store_bytes,
        store_entries=store_entries,
        build_rows=count[BuildRow] or 0,
        step_rows=count[StepRow] or 0,
        log_bytes=_tree(ci.settings.effective_log_dir)[0],
        db_connections=ci.deps.engine.pool.checkedin() + ci.deps.engine.pool.checkedout(),  # type: ignore[attr-defined]
    )


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """``""`` (the SQLite file of the data directory), or a fresh Postgres schema."""
    if DATABASE != "postgres":
        return ""
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def ci(database: str) -> Iterator[LocalCI]:
    with workspace() as folder:
        url = database or f"sqlite:///{folder / 'data' / 'jetbridge.db'}"
        local = LocalCI(Settings(data_dir=folder / "data", database_url=url))
        try:
            local.set_pipeline("soak", PIPELINE)
            yield local
        finally:
            local.close()


@pytest.mark.timeout(max(300, BUILDS * 2))
def test_a_long_run_of_builds_returns_to_its_baseline(ci: LocalCI) -> None:
    assert BUILDS > WARMUP, f"JETBRIDGE_SOAK_BUILDS must be over the warm-up of {WARMUP}"
    started = time.monotonic()
    samples: list[Sample] = []
    statuses: dict[str, int] = {}
    every = max(WAVE, (BUILDS // 10) // WAVE * WAVE)  # about ten samples over the run
    done = 0
    while done < BUILDS:
        wave = []
        for i in range(done, min(done + WAVE, BUILDS)):
            job = "broken" if i % FAILING_EVERY == FAILING_EVERY - 1 else "build"
            wave.append((job, ci.request_build("soak", job)))
        ended = _run(ci, wave)
        for (job, _), status in zip(wave, ended, strict=True):
            want = st.FAILED if job == "broken" else st.SUCCEEDED
            assert status == want, (job, status)
            statuses[status] = statuses.get(status, 0) + 1
        done += len(wave)
        report = ci.tick()
        assert report.errors == [], report.errors
        if done == WARMUP or (done % every == 0 and done < BUILDS):
            samples.append(sample(ci, done, started))
    final = ci.tick()
    assert final.errors == []
    last = sample(ci, done, started)
    samples.append(last)
    baseline = next(s for s in samples if s.builds == WARMUP)
    verdict = compare(baseline, last)
    table = report_table(samples, baseline, last, verdict, statuses)
    summary = {
        "builds": BUILDS,
        "database": "postgres" if DATABASE == "postgres" else "sqlite",
        "wall_seconds": round(last.seconds, 1),
        "builds_per_second": round(BUILDS / last.seconds, 2),
        "baseline": asdict(baseline),
        "end": asdict(last),
        "tolerance": TOLERANCE,
        "samples": [asdict(s) for s in samples],
        "statuses": statuses,
    }
    if REPORT:
        print("\n" + "\n".join(table))
        bench_results.write_soak(summary["database"], summary, table)
    failed = {k: v for k, v in verdict.items() if not v["ok"]}
    assert failed == {}, "\n".join(table)
    assert last.build_rows == BUILDS and last.step_rows >= BUILDS


def _run(ci: LocalCI, wave: list[tuple[str, str]]) -> list[str]:
    """Deliver events until every build of the wave has ended; their statuses."""
    found: dict[str, str] = {}

    def ended() -> bool:
        for _, event_id in wave:
            if event_id not in found:
                build = ci.build_for("soak", event_id)
                if build is None or build.status not in st.BUILD_TERMINAL:
                    return False
                found[event_id] = build.status
        return True

    assert ci.bus.run_until(ended, timeout=120), "a wave of builds did not finish in 2 min"
    ci.bus.drain()
    assert ci.bus.rejected == {}
    return [found[event_id] for _, event_id in wave]


def compare(baseline: Sample, last: Sample) -> dict[str, dict[str, Any]]:
    """Each bounded measure: baseline, end, growth, allowed growth, and whether it held."""
    verdict = {}
    for key, allowed in TOLERANCE.items():
        before, after = getattr(baseline, key), getattr(last, key)
        if key == "rss_mib" and DATABASE != "postgres":
            allowed = round(allowed + SQLITE_CACHE_MIB * last.db_connections, 1)
        verdict[key] = {
            "baseline": before,
            "end": after,
            "growth": after - before,
            "allowed": allowed,
            "ok": after - before <= allowed,
        }
    return verdict


def report_table(
    samples: list[Sample],
    baseline: Sample,
    last: Sample,
    verdict: dict[str, dict[str, Any]],
    statuses: dict[str, int],
) -> list[str]:
    """The soak's report, as Markdown lines."""
    database = "Postgres" if DATABASE == "postgres" else "SQLite"
    lines = [
        f"`make soak`: {last.builds:,} builds (two steps each; every {FAILING_EVERY}th one "
        f"fails) through `LocalCI`, the process behind `jetbridge serve`, on {database}, "
        f"{WAVE} at a time with a reaper tick after each wave, in {last.seconds:.0f} s "
        f"({last.builds / last.seconds:.1f} builds/s); outcomes {statuses}. Baseline taken "
        f"after {WARMUP} builds of warm-up; end after a last tick.",
        "",
        "| measure | baseline | end | growth | allowed | holds |",
        "|---|---|---|---|---|---|",
    ]
    for key, v in verdict.items():
        shown = [
            f"{v[k]:.1f}" if isinstance(v[k], float) else f"{v[k]:,}"
            for k in ("baseline", "end", "growth")
        ]
        allowed = f"+{v['allowed']:g}"
        lines.append(f"| {key} | {' | '.join(shown)} | {allowed} | {'yes' if v['ok'] else 'NO'} |")
    lines += [
        f"| build_rows (grow by design) | {baseline.build_rows:,} | {last.build_rows:,} | "
        f"{last.build_rows - baseline.build_rows:+,} | | |",
        f"| step_rows (grow by design) | {baseline.step_rows:,} | {last.step_rows:,} | "
        f"{last.step_rows - baseline.step_rows:+,} | | |",
        f"| log_bytes (grow by design) | {baseline.log_bytes:,} | {last.log_bytes:,} | "
        f"{last.log_bytes - baseline.log_bytes:+,} | | |",
        "",
        "| builds | s | RSS MiB | fds | threads | artifact rows | store bytes | build rows "
        "| db connections |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in samples:
        lines.append(
            f"| {s.builds:,} | {s.seconds:.0f} | {s.rss_mib:.1f} | {s.open_fds} | {s.threads} | "
            f"{s.artifact_rows} | {s.store_bytes:,} | {s.build_rows:,} | {s.db_connections} |"
        )
    return lines
