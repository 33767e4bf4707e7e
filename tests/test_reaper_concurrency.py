"""Two reapers at once (Knative may run two copies): every orphan is deleted exactly once.

On Postgres the reapers pick rows with ``SELECT … FOR UPDATE SKIP LOCKED`` and
claim them by compare-and-set; on SQLite the compare-and-set inside a
``BEGIN IMMEDIATE`` transaction is the claim. Directories with no row are
claimed by renaming them. The two ticks run in threads, started together.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from shared import status as st
from shared.reaper import ReapReport
from tests.fakes import FakeClock
from tests.reaping import Remover, World, at, original

GRACE = 600
LEASE = 240
ENDED, ABANDONED, UNREGISTERED = 240, 40, 120


class CountingRemover(Remover):
    """The store's remover, counting across threads which directories each tick removed."""

    def __init__(self, removed: Counter[str], lock: threading.Lock) -> None:
        super().__init__()
        self.shared = removed
        self.lock = lock

    def __call__(self, root: Path, subpath: str) -> int:
        freed = super().__call__(root, subpath)
        with self.lock:
            self.shared[original(subpath)] += 1
        return freed


def test_two_reapers_at_once_delete_each_orphan_exactly_once(
    sessions: Any, tmp_path: Path, clock: FakeClock
) -> None:
    world = World(sessions, tmp_path, clock)
    world.settings = dataclasses.replace(world.settings, reaper_batch_size=16)
    orphans: set[str] = set()
    for _ in range(ENDED // 20):  # artifacts of ended builds, their directories long untouched
        build = world.build(st.SUCCEEDED)
        for _ in range(20):
            subpath = world.artifact(build)
            world.touch(world.root / subpath, age=GRACE + 1)
            orphans.add(subpath)
    build = world.build(st.SUCCEEDED)
    for _ in range(ABANDONED):  # claims of a tick that died
        orphans.add(world.artifact(build, state="reaping", reaping_at=at(clock, LEASE + 1)))
    for i in range(UNREGISTERED):  # directories no row names
        subpath = f"artifacts/{900 + i % 7}/copy-{i:04d}"
        world.directory(subpath, age=GRACE + 1)
        orphans.add(subpath)
    needed = world.artifact(world.build(st.STARTED))

    removed: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(2)
    reports: list[ReapReport] = []
    failures: list[BaseException] = []

    def tick() -> None:
        remover = CountingRemover(removed, lock)
        try:
            start.wait(timeout=30)
            report = world.reap(remover)
        except BaseException as e:  # surfaced below, in the test's thread
            failures.append(e)
            return
        with lock:
            reports.append(report)

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert len(reports) == 2
    assert all(r.errors == [] for r in reports)

    twice = {subpath: n for subpath, n in removed.items() if n > 1}
    assert twice == {}, "removed by both reapers"
    assert set(removed) == orphans
    claimed = Counter[str]()
    for report in reports:
        for category in ("artifacts", "directories"):
            claimed[category] += report.tallies[category].done
    assert claimed == {"artifacts": ENDED + ABANDONED, "directories": UNREGISTERED}
    assert world.rows() == {needed: "ready"}
    assert world.dirs() == {needed}
    world.assert_agree()
