"""Benchmarks share the test suite's database fixtures (SQLite, and Postgres where it runs)
and print what they measured at the end of the run."""

from __future__ import annotations

import pytest

from tests.conftest import database_url, postgres_database  # noqa: F401  (fixtures)

#: Lines the benchmarks want shown in the summary, in the order they ran.
REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("measured")
        for line in REPORT:
            terminalreporter.write_line(line)
