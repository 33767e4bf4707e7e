"""The log store: where a step's log is kept once its pod may be gone.

A port with two implementations, chosen from settings by ``make_log_store``: the
directory store here (on the claim in the cluster, in the data directory
locally) and a Google Cloud Storage bucket (``logstore_gcs.py``). Logs are keyed
by build and step, one object per step: its last attempt's final log.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from shared.errors import ConfigurationError
from shared.settings import Settings


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


def make_log_store(settings: Settings, *, client: Any = None) -> LogStore:
    """The log store ``settings`` name: a directory (``log_dir``) or a GCS bucket.

    ``client`` is a ``google.cloud.storage.Client`` to use for ``gcs``; without one,
    a client is made from the environment (Workload Identity or Application Default
    Credentials in the cluster; ``STORAGE_EMULATOR_HOST`` points it at an emulator).
    """
    if settings.log_store != "gcs":
        return DirectoryLogStore(settings.effective_log_dir)
    # Imported here: only a process that keeps its logs in GCS loads the Google client.
    from shared.logstore_gcs import GcsLogStore

    if client is None:
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage

        try:
            client = storage.Client()
        except DefaultCredentialsError as e:
            raise ConfigurationError(
                f"JETBRIDGE_LOG_STORE=gcs needs Google credentials (Workload Identity in the "
                f"cluster, GOOGLE_APPLICATION_CREDENTIALS elsewhere) and found none: {e}"
            ) from e
    return GcsLogStore(client, bucket=settings.log_bucket, prefix=settings.log_prefix)
