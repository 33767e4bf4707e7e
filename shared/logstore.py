"""The log store: where a step's log is kept once its pod may be gone.

A port with implementations chosen from settings; this module holds the
directory store (on the claim in the cluster, in the data directory locally).
Logs are keyed by build and step, one file per attempt's final log.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol


class LogStore(Protocol):
    def write(self, build_id: int, step_key: str, data: bytes) -> None:
        """Keep ``data`` as the log of the step; writing again replaces it."""

    def read(self, build_id: int, step_key: str) -> bytes | None:
        """The step's log, or ``None`` when none was kept."""


class DirectoryLogStore:
    """Logs as files: ``<root>/<build>/<step key>.log``, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, build_id: int, step_key: str) -> Path:
        return self.root / str(int(build_id)) / f"{step_key.replace('/', '_')}.log"

    def write(self, build_id: int, step_key: str, data: bytes) -> None:
        path = self._path(build_id, step_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".log-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def read(self, build_id: int, step_key: str) -> bytes | None:
        try:
            return self._path(build_id, step_key).read_bytes()
        except FileNotFoundError:
            return None
