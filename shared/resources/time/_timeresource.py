"""The built-in ``time`` resource type: Concourse's time-resource, in the standard library.

The executables ``check``, ``in`` and ``out`` next to this file are three-line
shims into :func:`main`. Everything lives in this one module because the scripts
run inside step pods where ``shared`` is not importable (standard library only,
with the system's time zone database for ``location``).

Source keys follow concourse/time-resource, so a pipeline written for it works
unchanged:

* ``interval``: a Go duration (``30s``, ``5m``, ``1h30m``); a new version once
  this long has passed since the last one.
* ``start`` / ``stop``: a daily window (``15:04``, ``1504``, ``3:04 PM``,
  ``3PM``, ``3 PM``; a trailing ``-0700`` offset is read as Concourse reads it);
  versions only inside it, and without ``interval`` exactly one per window.
  Without them the window is the whole day, so a source with neither
  ``interval`` nor a window emits one version a day.
* ``location``: the time zone of ``start``, ``stop`` and ``days`` (default UTC).
* ``days``: weekdays on which versions are emitted (``Monday`` or ``mon``).
* ``initial_version``: emit a version on the very first check, window or not.
* ``start_after``: no version before this date and time (in ``location``).

``cron`` (a recent time-resource addition) is refused with a message, since
silently ignoring it would trigger on the wrong schedule.

Versions are ``{"time": <RFC 3339 timestamp in location>}``. ``check`` answers
the given version, then now when a new one is due. ``in`` writes the request to
``input`` and the time to ``timestamp``; ``out`` answers a version of now.

Tests inject the clock: ``JETBRIDGE_NOW`` (an RFC 3339 timestamp), when set,
is what the scripts take for now.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: The injected clock: when set, the scripts take this RFC 3339 time for now.
NOW_ENV = "JETBRIDGE_NOW"

#: One term of a Go duration (``1.5h``, ``300ms``) and its unit in microseconds (Go
#: accepts both micro signs, U+00B5 and U+03BC; timedelta keeps microseconds only).
DURATION_TERM_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
DURATION_MICROSECONDS = {
    "ns": 0.001,
    "us": 1.0,
    "\u00b5s": 1.0,
    "\u03bcs": 1.0,
    "ms": 1e3,
    "s": 1e6,
    "m": 60e6,
    "h": 3600e6,
}

#: A time of day as time-resource reads it: ``15:04``, ``1504``, ``3:04 PM``, ``3PM``,
#: ``3 PM``, each with an optional ``-0700`` offset.
TIME_OF_DAY_RE = re.compile(
    r"(?P<hour>\d{1,2})(?::?(?P<minute>\d{2}))?\s*(?P<ampm>[AaPp][Mm])?"
    r"(?:\s+(?P<offset>[+-]\d{4}))?"
)

#: ``start_after`` formats: date and time (``T`` or a space), down to the hour, or a date.
START_AFTER_FORMATS = (
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%dT%H",
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M:%S",
)

#: Weekday names time-resource accepts (any case), as Python numbers them (Monday 0).
WEEKDAYS = {
    name: number
    for number, names in enumerate(
        [
            ("mon", "monday"),
            ("tue", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
            ("sun", "sunday"),
        ]
    )
    for name in names
}

SOURCE_KEYS = frozenset(
    {"interval", "start", "stop", "location", "days", "initial_version", "start_after"}
)

MINUTES_PER_DAY = 24 * 60


class ResourceError(Exception):
    """A failure the user can act on; printed as one line, and the script exits 1."""


Version = dict[str, str]
Action = Callable[[Mapping[str, Any], Sequence[str]], Any]


def log(message: str) -> None:
    """Tell the build's log (stderr: stdout is the response)."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- parsing


def parse_duration(text: str) -> timedelta:
    """A Go duration string (``time.ParseDuration``) as a timedelta."""
    body = text.strip()
    if body in ("0", "+0", "-0"):
        return timedelta(0)
    sign = -1 if body.startswith("-") else 1
    body = body.lstrip("+-")
    total = 0.0
    position = 0
    while position < len(body):
        m = DURATION_TERM_RE.match(body, position)
        if m is None:
            break
        total += DURATION_MICROSECONDS[m.group(2)] * float(m.group(1))
        position = m.end()
    if not body or position != len(body):
        raise ValueError(f"{text!r} is not a duration like '30s', '5m' or '1h30m'")
    return timedelta(microseconds=total * sign)


def parse_time_of_day(text: str, where: str) -> int:
    """Minutes after midnight that ``text`` names (UTC when it carries an offset)."""
    m = TIME_OF_DAY_RE.fullmatch(text.strip())
    if m is None:
        raise ResourceError(
            f"{where} must be a time of day like 15:04, 1504, 3:04 PM or 3PM; found {text!r}"
        )
    hour, minute = int(m["hour"]), int(m["minute"] or 0)
    if m["minute"] is None and m["ampm"] is None:
        raise ResourceError(f"{where} {text!r} needs minutes (15:00) or AM/PM (3 PM)")
    if m["ampm"] is not None:
        if not 1 <= hour <= 12:
            raise ResourceError(f"{where} {text!r}: the hour must be 1 to 12 with AM/PM")
        hour = hour % 12 + (12 if m["ampm"].lower() == "pm" else 0)
    if hour > 23 or minute > 59:
        raise ResourceError(f"{where} {text!r} is not a time of day")
    minutes = hour * 60 + minute
    if m["offset"] is not None:
        # As time-resource does (deprecated there): the time is converted to UTC's
        # time of day, which is then read in location.
        sign = -1 if m["offset"][0] == "-" else 1
        offset = sign * (int(m["offset"][1:3]) * 60 + int(m["offset"][3:5]))
        minutes = (minutes - offset) % MINUTES_PER_DAY
    return minutes


def parse_timestamp(text: str, where: str) -> datetime:
    """An RFC 3339 timestamp with its offset (Go writes nanoseconds; micro is kept)."""
    value = text.strip()
    m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|z|[+-]\d\d:\d\d)", value)
    if m is not None and m.group(2):
        # Python reads at most microseconds: drop the rest of Go's nanoseconds.
        value = m.group(1) + m.group(2)[:7] + m.group(3)
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        parsed = None
    if m is None or parsed is None or parsed.tzinfo is None:
        raise ResourceError(
            f"{where} must be an RFC 3339 time like 2024-01-01T12:00:00Z; found {text!r}"
        )
    return parsed


def format_time(moment: datetime) -> str:
    """RFC 3339 as Go's ``time.Time`` marshals it: fraction without trailing zeros, ``Z``."""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    offset = moment.utcoffset() or timedelta(0)
    if not offset:
        return text + "Z"
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def format_go_time(moment: datetime) -> str:
    """What time-resource writes to ``timestamp``: Go's ``2006-01-02 15:04:05.999999999 -0700 MST``."""
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    offset = moment.strftime("%z") or "+0000"
    name = moment.tzname() or ""
    if offset == "+0000" and name in ("", "UTC", "UTC+00:00"):
        name = "UTC"
    elif not name or name.startswith("UTC"):
        name = offset  # a bare offset has no abbreviation; Go prints the offset again
    return f"{text} {offset} {name}"


def now(location: tzinfo) -> datetime:
    """The current time in ``location``: ``JETBRIDGE_NOW`` when set, else the wall clock."""
    injected = os.environ.get(NOW_ENV)
    if injected:
        return parse_timestamp(injected, NOW_ENV).astimezone(location)
    return datetime.now(UTC).astimezone(location)


# --------------------------------------------------------------------------- source


@dataclass(frozen=True, kw_only=True)
class Source:
    """The resource's ``source``, validated."""

    interval: timedelta | None
    start: int | None
    """Minutes after midnight in ``location``; set together with ``stop``."""
    stop: int | None
    location: tzinfo
    days: frozenset[int]
    """Weekdays (Monday 0) when versions are emitted; empty means every day."""
    initial_version: bool
    start_after: datetime | None


def _location(value: object) -> tzinfo:
    if value is None or value == "":
        return UTC
    if not isinstance(value, str):
        raise ResourceError(f"source.location must be a string, found {type(value).__name__}")
    if value == "UTC":
        return UTC
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ResourceError(
            f"source.location {value!r} is not a known time zone; use a tz database "
            "name like Europe/Berlin or America/New_York"
        ) from None


def _days(value: object) -> frozenset[int]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
        raise ResourceError(f"source.days must be a list of weekday names, found {value!r}")
    unknown = [d for d in value if d.lower() not in WEEKDAYS]
    if unknown:
        raise ResourceError(
            f"source.days: unknown weekday {unknown[0]!r}; use Monday … Sunday (or Mon … Sun)"
        )
    return frozenset(WEEKDAYS[d.lower()] for d in value)


def _start_after(value: object, location: tzinfo) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        for fmt in START_AFTER_FORMATS:
            try:
                return datetime.strptime(value, fmt).replace(tzinfo=location)
            except ValueError:
                continue
    raise ResourceError(
        f"source.start_after must be a date and time like 2024-01-31T09:00 or 2024-01-31; "
        f"found {value!r}"
    )


def parse_source(raw: object) -> Source:
    """Validate ``source``; a problem raises :class:`ResourceError` naming the field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ResourceError("source must be a JSON object")
    if "cron" in raw:
        raise ResourceError(
            "source.cron is not supported by the built-in time type; use interval, "
            "start/stop, location and days"
        )
    for key in sorted(set(raw) - SOURCE_KEYS):
        log(f"warning: ignoring source.{key}: the time type does not know it")
    interval = None
    if raw.get("interval") not in (None, ""):
        value = raw["interval"]
        try:
            interval = parse_duration(value) if isinstance(value, str) else None
        except ValueError as e:
            raise ResourceError(f"source.interval: {e}") from None
        if interval is None or interval <= timedelta(0):
            raise ResourceError(
                f"source.interval must be a positive duration like '30s', '5m' or '1h30m'; "
                f"found {value!r}"
            )
    bounds: dict[str, int | None] = {}
    for key in ("start", "stop"):
        value = raw.get(key)
        if value is None or value == "":
            bounds[key] = None
        elif isinstance(value, str):
            bounds[key] = parse_time_of_day(value, f"source.{key}")
        else:
            raise ResourceError(f"source.{key} must be a string like '15:04', found {value!r}")
    if (bounds["start"] is None) != (bounds["stop"] is None):
        given, missing = ("start", "stop") if bounds["start"] is not None else ("stop", "start")
        raise ResourceError(f"source.{given} is set but source.{missing} is not; set both")
    initial = raw.get("initial_version", False)
    if not isinstance(initial, bool):
        raise ResourceError(f"source.initial_version must be true or false, found {initial!r}")
    location = _location(raw.get("location"))
    return Source(
        interval=interval,
        start=bounds["start"],
        stop=bounds["stop"],
        location=location,
        days=_days(raw.get("days")),
        initial_version=initial,
        start_after=_start_after(raw.get("start_after"), location),
    )


def _version_time(request: Mapping[str, Any]) -> tuple[Version | None, datetime | None]:
    """The request's version as given, and the time it holds."""
    version = request.get("version")
    if version is None or version == {}:
        return None, None
    if not isinstance(version, dict) or not isinstance(version.get("time"), str):
        raise ResourceError(f'version must be {{"time": "<RFC 3339>"}} or null, found {version!r}')
    return {k: str(v) for k, v in version.items()}, parse_timestamp(version["time"], "version.time")


# --------------------------------------------------------------------------- the schedule


def _at(day: date, minutes: int, location: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, minutes // 60, minutes % 60, tzinfo=location)


def window(source: Source, moment: datetime) -> tuple[datetime, datetime]:
    """The latest daily window starting at or before ``moment``, as ``[start, stop)``.

    Without ``start``/``stop`` the window is the whole day (midnight to midnight),
    as in time-resource. Bounds are built from the wall clock in ``location``, so
    a window keeps its hours across a daylight saving change.
    """
    local = moment.astimezone(source.location)
    start_minutes = source.start or 0
    stop_minutes = source.stop or 0
    start = _at(local.date(), start_minutes, source.location)
    if _utc(start) > _utc(local):
        start = _at(local.date() - timedelta(days=1), start_minutes, source.location)
    stop = _at(start.date(), stop_minutes, source.location)
    if _utc(stop) <= _utc(start):
        stop = _at(start.date() + timedelta(days=1), stop_minutes, source.location)
    return start, stop


def _utc(moment: datetime) -> datetime:
    # Aware datetimes sharing a tzinfo compare and subtract by wall clock in Python;
    # in UTC they compare as instants, which is what a schedule needs.
    return moment.astimezone(UTC)


def is_due(source: Source, current: datetime, previous: datetime | None) -> bool:
    """Whether a new version is due at ``current``, given the last one (time-resource's rule)."""
    start, stop = window(source, current)
    local = current.astimezone(source.location)
    if source.days and local.weekday() not in source.days:
        return False
    if source.start_after is not None and not _utc(source.start_after) < _utc(current):
        return False
    if not _utc(start) <= _utc(current) < _utc(stop):
        return False
    if previous is None:
        return True
    if source.interval is not None:
        return _utc(current) - _utc(previous) >= source.interval
    # No interval: one version per window.
    return _utc(previous) < _utc(start)


# --------------------------------------------------------------------------- actions


def check(request: Mapping[str, Any], args: Sequence[str]) -> list[Version]:
    """``/opt/resource/check``: the given version, and now when a new one is due."""
    source = parse_source(request.get("source"))
    given, previous = _version_time(request)
    current = now(source.location)
    if given is not None:
        # Echoed exactly as given: Concourse tells versions apart by their JSON.
        versions = [given]
    elif source.initial_version:
        return [{"time": format_time(current)}]
    else:
        versions = []
    if is_due(source, current, previous):
        versions.append({"time": format_time(current)})
    return versions


def get(request: Mapping[str, Any], args: Sequence[str]) -> dict[str, Any]:
    """``/opt/resource/in DEST``: the request in ``input``, the time in ``timestamp``."""
    if len(args) != 1:
        raise ResourceError("usage: in DEST (the directory to fetch into)")
    dest = Path(args[0])
    source = parse_source(request.get("source"))
    given, moment = _version_time(request)
    if given is None or moment is None:
        moment = now(source.location)
        given = {"time": format_time(moment)}
    dest.mkdir(parents=True, exist_ok=True)
    recorded = {"source": request.get("source") or {}, "version": given}
    (dest / "input").write_text(json.dumps(recorded) + "\n", encoding="utf-8")
    (dest / "timestamp").write_text(format_go_time(moment), encoding="utf-8")
    return {"version": given, "metadata": []}


def put(request: Mapping[str, Any], args: Sequence[str]) -> dict[str, Any]:
    """``/opt/resource/out SRC``: a version of now (in ``location``)."""
    source = parse_source(request.get("source"))
    return {"version": {"time": format_time(now(source.location))}, "metadata": []}


def main(action: Action) -> int:
    """Run one protocol action: request from stdin, response to stdout, one-line errors."""
    try:
        raw = sys.stdin.read()
        try:
            request = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ResourceError(f"stdin is not valid JSON: {e}") from None
        if not isinstance(request, dict):
            raise ResourceError(f"stdin must be a JSON object, found {type(request).__name__}")
        response = action(request, sys.argv[1:])
    except ResourceError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except Exception as e:
        traceback.print_exc()
        print(f"error: internal error: {e!r}", file=sys.stderr)
        return 1
    json.dump(response, sys.stdout)
    sys.stdout.write("\n")
    return 0
