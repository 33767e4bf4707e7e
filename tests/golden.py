"""Golden files: what a user or the cluster reads, kept as ``tests/testdata/<area>/<case>.yaml``.

Compared as data (the YAML loaded, then compared as dicts and lists), so key order
and formatting never fail a test, only a changed value does. ``make golden`` (pytest
``--update-golden -m golden``) rewrites every golden file from the code instead of
comparing; review the diff before committing it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = Path(__file__).resolve().parent / "testdata"
UPDATE_OPTION = "--update-golden"
HEADER = "# Written by `make golden`: review a change to it like code, do not edit it by hand.\n"


def check_golden(path: Path, actual: Any, *, update: bool) -> None:
    """Fail unless ``path`` holds ``actual`` (as YAML data); with ``update``, write it instead."""
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + yaml.safe_dump(actual, sort_keys=False, allow_unicode=True))
        return
    shown = path.relative_to(ROOT)
    if not path.exists():
        pytest.fail(f"no golden file {shown}: write it with `make golden` and review it")
    expected = yaml.safe_load(path.read_text())
    assert actual == expected, (
        f"differs from {shown}; if the change is meant, run `make golden` and review the diff"
    )


def load_golden(path: Path) -> Any:
    """The data of a golden file (fails the test, saying how to make it, if it is missing)."""
    if not path.exists():
        pytest.fail(f"no golden file {path.relative_to(ROOT)}: write it with `make golden`")
    return yaml.safe_load(path.read_text())
