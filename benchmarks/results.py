"""Named results, and the two files ``make bench`` writes from them: docs/benchmarks.md and .json.

Every benchmark records what it measured through the ``results`` fixture
(``benchmarks/conftest.py``) as named values with a unit: ``results.record(
"transition.p50", 16.4, "ms", database="postgres")``. At the end of the session the
Markdown table and the JSON file beside it are written from those records, with
the machine (cores, memory, Python, Postgres) and the date. ``make soak`` adds its
own section to both (``write_soak``) and keeps the rest; ``make bench`` keeps the
soak section it finds.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MARKDOWN = DOCS / "benchmarks.md"
JSON = DOCS / "benchmarks.json"
#: The heading of the section ``make soak`` writes; everything from it on belongs to the soak.
SOAK_HEADING = "## Soak"
#: The table's order: the issue's list first; any other benchmark after, as it ran.
ORDER = (
    "control plane per step transition",
    "step launches (in-process)",
    "webhooks over HTTP",
    "concurrent builds",
    "artifact streams",
    "reaper: one tick",
    "writable inputs",
)


def _rank(group: str) -> int:
    return next((i for i, name in enumerate(ORDER) if name in group), len(ORDER))


@dataclass(frozen=True, kw_only=True)
class Result:
    """One number a benchmark measured."""

    benchmark: str
    """The group it belongs to, a row heading of the table: ``step transitions``."""
    name: str
    """What was measured: ``p50``, ``launches/s``."""
    value: float
    unit: str
    context: dict[str, Any] = field(default_factory=dict)
    """The conditions it was measured under (database, clients, sizes …)."""
    note: str = ""

    def shown(self) -> str:
        return f"{_number(self.value)} {self.unit}".strip()


@dataclass
class Results:
    """What one session of benchmarks measured, in the order it was recorded."""

    items: list[Result] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    """Sentences per benchmark group: what was run, what it means, what was cut short."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each benchmark test, by its id."""

    def record(
        self,
        benchmark: str,
        name: str,
        value: float,
        unit: str = "",
        *,
        note: str = "",
        **context: Any,
    ) -> Result:
        result = Result(
            benchmark=benchmark, name=name, value=value, unit=unit, context=context, note=note
        )
        self.items.append(result)
        return result

    def note(self, benchmark: str, text: str) -> None:
        self.notes.setdefault(benchmark, []).append(text)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "processor": platform.machine(),
    }
    try:
        with open("/proc/meminfo") as f:
            total = next(line for line in f if line.startswith("MemTotal:"))
        info["memory_gib"] = round(int(total.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line for line in f if line.startswith("model name")), "")
        if model:
            info["cpu"] = model.split(":", 1)[1].strip()
    except OSError:
        pass
    postgres = _postgres_version()
    if postgres:
        info["postgres"] = postgres
    return info


def _postgres_version() -> str:
    try:
        done = subprocess.run(
            ["psql", "--version"], capture_output=True, text=True, check=False, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    found = re.search(r"\d+(?:\.\d+)+", done.stdout) if done.returncode == 0 else None
    return found.group(0) if found else ""


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.01:
        return f"{value:.2f}"
    return f"{value:.2g}"


def _context(context: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in context.items())


def write(
    results: Results,
    *,
    markdown: Path = MARKDOWN,
    json_path: Path = JSON,
    command: str = "make bench",
    wall_seconds: float | None = None,
) -> None:
    """Write both files from ``results``, keeping a soak section already there."""
    now = datetime.datetime.now(datetime.UTC)
    host = machine()
    previous = _read_json(json_path)
    data: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "machine": host,
        "command": command,
        "wall_seconds": wall_seconds,
        "results": [asdict(r) for r in results.items],
        "notes": results.notes,
        "seconds": results.seconds,
    }
    if "soak" in previous:
        data["soak"] = previous["soak"]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    soak = _soak_section(markdown)
    markdown.write_text(_markdown(results, host, now, command, wall_seconds) + soak)


def _markdown(
    results: Results,
    host: Mapping[str, Any],
    now: datetime.datetime,
    command: str,
    wall_seconds: float | None,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Measured {now:%Y-%m-%d %H:%M} UTC by `{command}` on {host.get('cores')} cores"
        + (f" ({host['cpu']})" if host.get("cpu") else "")
        + (f", {host['memory_gib']} GiB of memory" if host.get("memory_gib") else "")
        + f", Python {host.get('python')}"
        + (f", PostgreSQL {host['postgres']}" if host.get("postgres") else "")
        + (f"; the whole run took {wall_seconds / 60:.1f} min." if wall_seconds else "."),
        "Every database number is on a real server on loopback; every cluster number is",
        "through the real `kubernetes` client against the fake API server of `tests/kube/`.",
        "",
        "**Reproduce:** `make bench` (it writes this file and `benchmarks.json` beside it);",
        "one benchmark: `make bench PYTEST_ARGS='-k transition'`; the sizes are environment",
        "variables named in each benchmark's docstring (`benchmarks/`). `make soak` adds the",
        "soak section at the end.",
        "",
        "| benchmark | measured | value | conditions |",
        "|---|---|---|---|",
    ]
    for r in sorted(results.items, key=lambda r: _rank(r.benchmark)):
        cells = (r.benchmark, r.name, r.shown(), _context(r.context))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if results.notes:
        lines += ["", "## Notes", ""]
        for group, notes in sorted(results.notes.items(), key=lambda n: _rank(n[0])):
            for text in notes:
                lines.append(f"- **{group}**: {text}")
    if results.seconds:
        lines += ["", "<details><summary>Time each benchmark took</summary>", ""]
        lines += ["| benchmark | seconds |", "|---|---|"]
        for test, seconds in results.seconds.items():
            lines.append(f"| `{test}` | {seconds:.0f} |")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _soak_section(markdown: Path) -> str:
    """The soak section of an existing file (from its heading to the end), or nothing."""
    try:
        text = markdown.read_text()
    except OSError:
        return ""
    index = text.find("\n" + SOAK_HEADING + "\n")
    return "\n" + text[index + 1 :] if index >= 0 else ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_soak(
    label: str,
    summary: Mapping[str, Any],
    table: Sequence[str],
    *,
    markdown: Path = MARKDOWN,
    json_path: Path = JSON,
) -> None:
    """Put one soak's report (``label``: its database) in the soak section at the end of the
    Markdown file, and its data under ``soak`` in the JSON file, replacing an earlier
    report of the same label and keeping everything else."""
    try:
        text = markdown.read_text()
    except OSError:
        text = "# Benchmarks\n"
    index = text.find("\n" + SOAK_HEADING + "\n")
    head, section = (text[: index + 1], text[index + 1 :]) if index >= 0 else (text, "")
    reports = _subsections(section)
    reports[label] = "\n".join([f"### {label}", "", *table]).rstrip("\n") + "\n"
    body = "\n".join(reports[k] for k in sorted(reports))
    markdown.write_text(head.rstrip("\n") + "\n\n" + SOAK_HEADING + "\n\n" + body)
    data = _read_json(json_path)
    soaks = data.get("soak") if isinstance(data.get("soak"), dict) else {}
    soaks = {k: v for k, v in soaks.items() if isinstance(v, dict) and "builds" in v}
    soaks[label] = dict(summary)
    data["soak"] = soaks
    json_path.write_text(json.dumps(data, indent=2) + "\n")


def _subsections(section: str) -> dict[str, str]:
    """The ``### <label>`` reports of a soak section, by label."""
    found: dict[str, str] = {}
    for part in re.split(r"(?m)^(?=### )", section):
        if part.startswith("### "):
            label = part.splitlines()[0][4:].strip()
            found[label] = part.rstrip("\n") + "\n"
    return found


def test_id(nodeid: str) -> str:
    """``benchmarks/test_x.py::test_y[postgres]`` → ``test_x::test_y[postgres]``."""
    return re.sub(r"^benchmarks/|\.py(?=::)", "", nodeid)


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
