"""Benchmarks share the test suite's database fixtures (SQLite, and Postgres where it runs),
record what they measured as named results, and ``make bench`` writes them down.

Each benchmark takes the ``results`` fixture and records numbers by name
(``results.record("step transitions", "p50", 16.4, "ms", database="postgres")``), and
may add human lines to ``REPORT`` for the terminal. At the end of the session the
terminal gets a "measured" section; with ``JETBRIDGE_BENCH_REPORT=1`` (``make bench``)
docs/benchmarks.md and docs/benchmarks.json are written from the records
(``benchmarks/results.py``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from benchmarks.results import Results, test_id, write
from tests.conftest import database_url, postgres_database, postgres_url  # noqa: F401  (fixtures)

#: Lines the benchmarks want shown in the summary, in the order they ran.
REPORT: list[str] = []
#: Every result recorded in this session.
RESULTS = Results()
_STARTED: list[float] = []


class Recorder:
    """What a benchmark records through: named results, notes, and a line for the terminal."""

    def __init__(self, results: Results) -> None:
        self._results = results

    def record(
        self, benchmark: str, name: str, value: float, unit: str = "", **context: Any
    ) -> None:
        result = self._results.record(benchmark, name, value, unit, **context)
        where = ", ".join(f"{k} {v}" for k, v in context.items())
        REPORT.append(f"{benchmark}: {name} {result.shown()}" + (f" ({where})" if where else ""))

    def note(self, benchmark: str, text: str) -> None:
        if text not in self._results.notes.get(benchmark, []):
            self._results.note(benchmark, text)


@pytest.fixture
def results() -> Recorder:
    """Record named results; ``make bench`` writes them to docs/benchmarks.md and .json."""
    return Recorder(RESULTS)


#: Benchmarks that measure this process's peak memory run first, before the others have
#: grown its heap (freed memory stays with the process and would hide their own peak).
MEMORY_FIRST = ("test_reaper_bench.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not any(name in item.nodeid for name in MEMORY_FIRST))


def pytest_sessionstart(session: pytest.Session) -> None:
    _STARTED.append(time.monotonic())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    seconds = RESULTS.seconds
    key = test_id(report.nodeid)
    seconds[key] = seconds.get(key, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("measured")
        for line in REPORT:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("JETBRIDGE_BENCH_REPORT") != "1" or not RESULTS.items:
        return
    wall = time.monotonic() - _STARTED[0] if _STARTED else None
    failed = session.testsfailed
    if failed:
        RESULTS.note("run", f"{failed} benchmark(s) failed; their numbers are missing")
    write(RESULTS, wall_seconds=wall)
