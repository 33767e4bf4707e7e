"""Logs: one JSON object per line in the cluster, plain text for a person at a terminal.

In the cluster every line is a JSON object that Cloud Logging (and any collector
that reads JSON lines: Loki, Fluent Bit, Vector) understands without a parser:
``severity`` (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``, ``CRITICAL``),
``message`` (with the traceback, where Error Reporting looks for it), ``time``
(RFC 3339, UTC), ``logger``, ``logging.googleapis.com/sourceLocation``, and the
ids of what the line is about: ``event_id``, ``event_type``, ``pipeline``,
``job``, ``build_id``, ``step_id``, ``pod``. The ids come from ``bound``, a
context variable that the handler wrapper (``shared.telemetry``) sets from each
event before its handler runs, so every line a service logs while handling the
event carries them without the service passing them along.

Secrets are never logged on purpose; as a backstop, every value given to
``redact`` (pipeline variables, the webhook secret, the database password) is
replaced with ``***`` in every line, whatever its format, before it is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO
from urllib.parse import quote, unquote, urlsplit

from shared.settings import LOG_FORMATS, Settings

#: What a secret is replaced with.
MASK = "***"
#: Shorter values are not masked: a variable's value such as ``main``, ``true`` or ``3``
#: is a word any line may hold, and masking it would garble the logs to hide nothing.
MIN_SECRET_LENGTH = 6
#: The fields ``bound`` may set, in the order they appear in a JSON line.
CONTEXT_FIELDS = ("event_id", "event_type", "pipeline", "job", "build_id", "step_id", "pod")

#: An immutable mapping as the default: ``bound`` replaces it, never changes it in place.
_context: ContextVar[Mapping[str, Any]] = ContextVar(
    "jetbridge_log_context", default=MappingProxyType({})
)


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (ids from ``CONTEXT_FIELDS``; ``None`` is left out) to every line logged inside."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def context() -> Mapping[str, Any]:
    """The ids bound where this is called."""
    return _context.get()


class Redactor:
    """Known secret values, and the masking of them in text. Safe from any thread."""

    def __init__(self) -> None:
        self._values: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, values: Iterable[Any]) -> None:
        """Remember the string values among ``values`` that are long enough to be secrets."""
        new = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH}
        with self._lock:
            # Longest first, so a secret that contains another is masked whole.
            merged = set(self._values) | new
            self._values = tuple(sorted(merged, key=lambda v: (-len(v), v)))

    def scrub(self, text: str) -> str:
        """``text`` with every known secret replaced by ``***``."""
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text


#: The process' secrets. One per process like the log handlers it serves; adding to it
#: only ever masks more.
REDACTOR = Redactor()


def redact(*values: Any) -> None:
    """Mask these values in every log line from now on (strings shorter than 6 are ignored)."""
    REDACTOR.add(values)


def secret_values(value: Any) -> list[str]:
    """Every string inside a variables mapping (nested lists and maps included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in secret_values(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in secret_values(v)]
    return []


def credentials(variables: Any) -> list[str]:
    """The values among a pipeline's variables that are treated as credentials: every
    string long enough to be one (the rule log lines are masked by)."""
    return [v for v in secret_values(variables) if len(v) >= MIN_SECRET_LENGTH]


def url_password(url: str) -> str | None:
    """The password in a URL such as a database URL, if it has one (``%``-escapes decoded)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def severity(levelno: int) -> str:
    """Cloud Logging's severity for a ``logging`` level."""
    if levelno >= logging.CRITICAL:
        return "CRITICAL"
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARNING"
    if levelno >= logging.INFO:
        return "INFO"
    return "DEBUG"


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record when it is made, in the thread that made it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "jetbridge"):
            record.jetbridge = dict(context())
        return True


def _ids(record: logging.LogRecord) -> Mapping[str, Any]:
    ids = getattr(record, "jetbridge", None)
    return ids if isinstance(ids, Mapping) else context()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, in the shape Cloud Logging reads."""

    def __init__(self, *, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or REDACTOR

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            message += "\n" + self.formatStack(record.stack_info)
        moment = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "severity": severity(record.levelno),
            "message": self.redactor.scrub(message),
            "time": moment.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "logger": record.name,
        }
        ids = _ids(record)
        for name in CONTEXT_FIELDS:
            if name in ids:
                value = ids[name]
                entry[name] = self.redactor.scrub(value) if isinstance(value, str) else value
        entry["logging.googleapis.com/sourceLocation"] = {
            "file": record.pathname,
            "line": str(record.lineno),
            "function": record.funcName,
        }
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message [build_id=3 step_id=7]``, for a terminal."""

    def __init__(self, *, redactor: Redactor | None = None) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.redactor = redactor or REDACTOR

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = _ids(record)
        shown = [f"{k}={ids[k]}" for k in CONTEXT_FIELDS if k in ids and k != "event_type"]
        if shown:
            text += f" [{' '.join(shown)}]"
        return self.redactor.scrub(text)


def redact_settings(settings: Settings) -> None:
    """Mask the secrets settings hold: the database password and the webhook secrets."""
    password = url_password(settings.database_url)
    # As the URL spells it, and as the driver (and any message of its) would.
    values: list[Any] = [password, quote(password, safe="") if password else None]
    # Not JSON: the webhook says what is wrong with it, and there is nothing to mask.
    with contextlib.suppress(ValueError):
        values += secret_values(json.loads(settings.webhook_secrets or "{}"))
    folder = settings.webhook_secrets_dir
    if folder is not None and folder.is_dir():
        # Read again on every delivery by the webhook; this backstop sees them as they are now.
        for path in folder.iterdir():
            with contextlib.suppress(OSError):
                if path.is_file() and not path.name.startswith("."):
                    values.append(path.read_text().strip())
    REDACTOR.add(values)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is written (as ``logging.lastResort``)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup(format_: str = "json", *, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send this process' logs to ``stream`` (stderr) as JSON lines or text, from ``level`` up.

    Replaces what an earlier call installed and leaves other handlers alone.
    """
    if format_ not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, found {format_!r}")
    reset()
    handler: logging.Handler = logging.StreamHandler(stream) if stream else _Stderr()
    handler.jetbridge = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if format_ == "json" else TextFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


def reset() -> None:
    """Remove the handler ``setup`` installed, if any."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "jetbridge", False):
            root.removeHandler(handler)
