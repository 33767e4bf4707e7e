"""Settings: every knob JetBridge reads, from ``JETBRIDGE_*`` environment variables.

Read once at the edge (a function's start, the CLI) into one frozen dataclass and
handed to services as a keyword argument; nothing below the edge reads the
environment. Each field's docstring is its documentation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from shared.errors import ConfigurationError

#: Default local data directory, relative to the current folder, as Concourse's
#: ``fly`` keeps its state beside the user rather than in a global place.
DEFAULT_DATA_DIR = ".jetbridge"

#: Image of the built-in resource types (git, …) for get and put steps in the cluster.
DEFAULT_RESOURCE_IMAGE = "ghcr.io/jetbridge/jetbridge:0.1.0"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What a JetBridge process needs to know about its surroundings."""

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    """Local state: the SQLite database, the artifact store and the logs, unless set apart."""
    database_url: str = ""
    """SQLAlchemy URL. Empty: SQLite in the data directory. Postgres: ``postgresql+pg8000://…``."""
    store_root: Path | None = None
    """Where the artifact-store claim is mounted in this process. Empty: ``<data_dir>/store``."""
    store_claim: str = "jetbridge-artifacts"
    """Name of the PersistentVolumeClaim that holds the artifact store (the pods mount it)."""
    log_dir: Path | None = None
    """Directory log store. Empty: ``<data_dir>/logs``."""
    runtime: str = "local"
    """Where step pods run: ``local`` (this machine) or ``kubernetes``."""
    namespace: str = "default"
    """Kubernetes namespace of step pods."""
    workdir: str = "/tmp/build"
    """A task's working directory in its pod; inputs and outputs are mounted beneath it."""
    resource_image: str = DEFAULT_RESOURCE_IMAGE
    """Image of the built-in resource types, used by get and put steps."""
    step_timeout_seconds: int = 3600
    """Deadline of a step with no ``timeout`` of its own (the pod's ``activeDeadlineSeconds``)."""
    reaper_grace_seconds: int = 600
    """How old a ``creating`` artifact or an unregistered directory must be before the reaper takes it."""
    sandbox: str = "auto"
    """Local runtime isolation: ``auto`` (bubblewrap when present), ``bwrap`` or ``links``."""
    event_sink: str = ""
    """URL events are posted to in the cluster (Knative's ``K_SINK``); empty: the in-process bus."""

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'jetbridge.db').resolve()}"

    @property
    def effective_store_root(self) -> Path | None:
        """The store root; in the cluster it must be set (where the claim is mounted)."""
        if self.store_root is not None:
            return self.store_root
        return None if self.runtime == "kubernetes" else self.data_dir / "store"

    @property
    def effective_log_dir(self) -> Path:
        return self.log_dir if self.log_dir is not None else self.data_dir / "logs"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields changed (CLI flags win over the environment)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def env_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return "JETBRIDGE_" + field_name.upper()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``JETBRIDGE_*`` variables (``K_SINK`` too, as Knative injects it)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(env_name(f.name))
        if raw is None or raw == "":
            continue
        values[f.name] = _convert(f.name, str(f.type), raw)
    if "event_sink" not in values and env.get("K_SINK"):
        values["event_sink"] = env["K_SINK"]
    settings = Settings(**values)
    if settings.runtime not in ("local", "kubernetes"):
        raise ConfigurationError(
            f"{env_name('runtime')} must be 'local' or 'kubernetes', found {settings.runtime!r}"
        )
    if settings.sandbox not in ("auto", "bwrap", "links"):
        raise ConfigurationError(
            f"{env_name('sandbox')} must be 'auto', 'bwrap' or 'links', found {settings.sandbox!r}"
        )
    return settings


def _convert(name: str, type_name: str, raw: str) -> Any:
    if "Path" in type_name:
        return Path(raw)
    if type_name == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigurationError(
                f"{env_name(name)} must be a whole number, found {raw!r}"
            ) from None
    return raw
