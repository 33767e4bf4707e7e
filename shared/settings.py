"""Settings: every knob JetBridge reads, from ``JETBRIDGE_*`` environment variables.

Read once at the edge (a function's start, the CLI) into one frozen dataclass and
handed to services as a keyword argument; nothing below the edge reads the
environment. Each field's docstring is its documentation.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from shared.errors import ConfigurationError

#: Default local data directory, relative to the current folder, as Concourse's
#: ``fly`` keeps its state beside the user rather than in a global place.
DEFAULT_DATA_DIR = ".jetbridge"

#: Image of the built-in resource types (git, …) for get and put steps in the cluster.
DEFAULT_RESOURCE_IMAGE = "ghcr.io/jetbridge/jetbridge:0.1.0"

#: What a step pod asks the scheduler for when nothing else is said: enough for a shell
#: script or a git clone, small enough that a busy node still takes a few builds.
DEFAULT_STEP_REQUESTS: Mapping[str, str] = {"cpu": "250m", "memory": "256Mi"}
#: Limits of a step pod. Memory only: a CPU limit throttles a build even on an idle node,
#: while a memory limit keeps one build from starving its neighbours (and a step that
#: passes it fails as OOMKilled, which the user is told).
DEFAULT_STEP_LIMITS: Mapping[str, str] = {"memory": "2Gi"}

#: The artifact-store claim's access modes JetBridge knows what to do with.
ACCESS_MODES = ("ReadWriteMany", "ReadWriteOnce")
#: Where step logs are kept: a directory (on the claim in the cluster) or a GCS bucket.
LOG_STORES = ("directory", "gcs")
#: How JetBridge's own log is written, and the levels it may start from.
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Keys of a Kubernetes toleration, as JSON spells them.
TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})
#: A Kubernetes resource quantity: ``250m``, ``1.5``, ``512Mi``, ``1e3``.
_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?")


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
    step_requests: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_STEP_REQUESTS))
    """Resources a step pod requests, as a JSON object: ``{"cpu": "250m", "memory": "256Mi"}``."""
    step_limits: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_STEP_LIMITS))
    """Resource limits of a step pod, as a JSON object: ``{"memory": "2Gi"}``; ``{}`` for none."""
    image_pull_secrets: tuple[str, ...] = ()
    """Secrets (in the namespace) to pull step images with, as a JSON list of names."""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    """Node labels step pods must run on, as a JSON object: ``{"pool": "ci"}``."""
    tag_labels: Mapping[str, str] = field(default_factory=dict)
    """The node label each Concourse worker tag (a step's ``tags``) stands for, as a JSON object
    of ``key=value`` (a bare ``key`` means ``key=true``): ``{"gpu": "cloud.google.com/gke-
    accelerator=nvidia-l4"}``. A tag not listed, ``t``, stands for ``jetbridge.dev/tag-t=true``."""
    tolerations: tuple[Mapping[str, Any], ...] = ()
    """Taints step pods tolerate, as a JSON list of Kubernetes tolerations (camelCase keys)."""
    store_access_mode: str = "ReadWriteMany"
    """Access mode of the artifact-store claim: ``ReadWriteMany``, or ``ReadWriteOnce``, where
    every pod of a build is pinned to the node of the build's first pod."""
    pod_retention_seconds: int = 0
    """How long a finished step's pod stays after its log is kept: 0 deletes it at once; more
    leaves it (for ``kubectl describe``) until the reaper deletes it that long after it ended."""
    log_store: str = "directory"
    """Where step logs are kept: ``directory`` (``log_dir``) or ``gcs`` (``log_bucket``)."""
    log_bucket: str = ""
    """Google Cloud Storage bucket of the ``gcs`` log store."""
    log_prefix: str = ""
    """Object-name prefix in ``log_bucket``: logs are ``<prefix>/<build>/<step key>.log``."""
    reaper_grace_seconds: int = 600
    """How old a ``creating`` artifact or an unregistered directory must be before the reaper takes it.
    Also how long a ``running`` step may have no pod (while its ``step.ready`` is redelivered)
    before the reaper errors it: longer than the Broker's redeliveries take (about 8.5 minutes)."""
    reaper_lease_seconds: int = 240
    """How long a reaper tick's claim on what it is deleting holds. A ``reaping`` row or a
    ``.jetbridge-reaping-*`` directory claimed longer ago was left by a tick that died, and a
    later tick finishes it. Under the cluster's 5-minute schedule, so the next tick does; far
    over what deleting one batch takes (a slower tick only means a directory deleted twice)."""
    reaper_batch_size: int = 1000
    """Rows or store entries the reaper handles per transaction: bounds its memory and how long
    it holds locks, whatever the size of the tables and the store."""
    artifact_retention_seconds: int = 0
    """How long a finished build's artifacts are kept after it ended (to download or inspect
    them); 0: the next tick takes them. While it is over 0, a running build's artifacts are kept
    too, even once every step that reads them has ended."""
    adhoc_retention_seconds: int = 86400
    """How long an artifact uploaded with no build (``stream_in``) is kept after its upload."""
    build_timeout_seconds: int = 21600
    """A build still running this long after it started is aborted by the reaper and its pods
    deleted; 0: no limit. Six hours, GitHub Actions' limit for a job: room for several steps at
    their default deadline."""
    step_ready_resend_seconds: int = 600
    """A step ``scheduled`` this long with no pod launched lost its ``step.ready`` (the Broker
    gave up): the reaper announces it again, with the same event id. Longer than the Broker's
    redeliveries take, so it only speaks when they are over."""
    store_min_free_bytes: int = 0
    """Free space the reaper keeps on the artifact store, by reclaiming the oldest artifacts no
    running build needs (a finished build's first, kept by ``artifact_retention_seconds``)."""
    store_min_free_percent: int = 10
    """The same as a percentage of the store's size; the larger of the two counts, and 0 for
    both turns it off. 10 %: room for a few builds' outputs on a busy claim."""
    image_pull_timeout_seconds: int = 300
    """How long a step's pod may fail to pull its image (``ErrImagePull``, ``ImagePullBackOff``)
    before the step errors, naming the image. The kubelet's back-off between pulls reaches its
    cap of 300 s by then, so a registry hiccup has had several retries."""
    unschedulable_timeout_seconds: int = 600
    """How long a step's pod may stay unschedulable before the step errors with the scheduler's
    reason; long enough for a cluster autoscaler to add a node."""
    pod_grace_period_seconds: int = 30
    """Seconds a deleted (aborted) step pod gets between SIGTERM and SIGKILL; Kubernetes' default."""
    sandbox: str = "auto"
    """Local runtime isolation: ``auto`` (bubblewrap when present), ``bwrap`` or ``links``."""
    event_sink: str = ""
    """URL events are posted to in the cluster (Knative's ``K_SINK``); empty: the in-process bus."""
    webhook_secrets: str = field(default="", repr=False)
    """Webhook secrets as a JSON object, pipeline name → secret: ``{"app": "s3cret"}``. Never
    printed; a pipeline with no secret here or in ``webhook_secrets_dir`` takes no webhooks."""
    webhook_secrets_dir: Path | None = None
    """A folder with one file per pipeline, named after it, holding its webhook secret: a
    Kubernetes Secret mounted as a volume. Read on every delivery, so a rotated secret counts at once."""
    webhook_max_bytes: int = 4 * 1024 * 1024
    """Largest webhook body taken; a bigger one is answered 413 unread. GitHub's push payloads
    list at most 20 commits and stay well under this; its hard cap is 25 MB."""
    reaper_interval_seconds: int = 60
    """How often ``jetbridge serve`` runs a reaper tick (PingSource's schedule in the cluster)."""
    log_format: str = ""
    """How JetBridge writes its own log: ``json`` (one object per line, as Cloud Logging reads it)
    or ``text``. Empty: ``json`` in the cluster's functions, the ``jetbridge`` command's text here."""
    log_level: str = "INFO"
    """The least severe lines a function logs: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``."""

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
    _check_pod_settings(settings)
    _check_log_settings(settings)
    return settings


def _check_pod_settings(settings: Settings) -> None:
    """What the cluster would refuse only when the first pod is created, refused now."""
    for name in ("step_requests", "step_limits"):
        for resource, quantity in getattr(settings, name).items():
            if not _QUANTITY.fullmatch(quantity):
                raise ConfigurationError(
                    f"{env_name(name)}: {resource!r} must be a Kubernetes quantity "
                    f"(like '500m', '1', '512Mi'), found {quantity!r}"
                )
    for resource in sorted(set(settings.step_requests) & set(settings.step_limits)):
        request, limit = settings.step_requests[resource], settings.step_limits[resource]
        if _quantity(request) > _quantity(limit):
            raise ConfigurationError(
                f"{env_name('step_requests')} asks for {resource} {request}, more than its limit "
                f"{limit} in {env_name('step_limits')}; Kubernetes refuses such a pod"
            )
    for i, toleration in enumerate(settings.tolerations):
        unknown = sorted(set(toleration) - TOLERATION_KEYS)
        if unknown:
            raise ConfigurationError(
                f"{env_name('tolerations')}[{i}] has unknown key(s) {', '.join(unknown)}; "
                f"a toleration has {', '.join(sorted(TOLERATION_KEYS))}"
            )
    if settings.store_access_mode not in ACCESS_MODES:
        raise ConfigurationError(
            f"{env_name('store_access_mode')} must be one of {', '.join(ACCESS_MODES)}, "
            f"found {settings.store_access_mode!r}"
        )
    if settings.pod_retention_seconds < 0:
        raise ConfigurationError(
            f"{env_name('pod_retention_seconds')} must be 0 or more, "
            f"found {settings.pod_retention_seconds}"
        )


_SUFFIXES = {
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
    **{s + "i": Decimal(1024) ** (i + 1) for i, s in enumerate("KMGTPE")},
    "m": Decimal("0.001"),
    "u": Decimal("0.000001"),
    "n": Decimal("0.000000001"),
}


def _quantity(text: str) -> Decimal:
    """A quantity that matched ``_QUANTITY`` as a number, to compare a request with a limit."""
    number = re.match(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text)
    assert number is not None
    return Decimal(number.group(0)) * _SUFFIXES.get(text[number.end() :], Decimal(1))


def _check_log_settings(settings: Settings) -> None:
    if settings.log_format not in ("", *LOG_FORMATS):
        raise ConfigurationError(
            f"{env_name('log_format')} must be one of {', '.join(LOG_FORMATS)}, "
            f"found {settings.log_format!r}"
        )
    if settings.log_level not in LOG_LEVELS:
        raise ConfigurationError(
            f"{env_name('log_level')} must be one of {', '.join(LOG_LEVELS)}, "
            f"found {settings.log_level!r}"
        )
    if settings.log_store not in LOG_STORES:
        raise ConfigurationError(
            f"{env_name('log_store')} must be one of {', '.join(LOG_STORES)}, "
            f"found {settings.log_store!r}"
        )
    if settings.log_store == "gcs" and not settings.log_bucket:
        raise ConfigurationError(
            f"{env_name('log_store')}=gcs needs {env_name('log_bucket')}, the bucket to keep logs in"
        )


def _convert(name: str, type_name: str, raw: str) -> Any:
    if "Path" in type_name:
        return Path(raw)
    if type_name.startswith(("Mapping", "tuple")):
        return _json(name, type_name, raw)
    if type_name == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigurationError(
                f"{env_name(name)} must be a whole number, found {raw!r}"
            ) from None
    return raw


def _json(name: str, type_name: str, raw: str) -> Any:
    """A map or list setting, written as JSON (what a Helm chart's ``toJson`` gives)."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigurationError(
            f"{env_name(name)} must be JSON, found {raw!r} ({e.msg} at column {e.colno})"
        ) from None
    if type_name.startswith("Mapping"):
        # Numbers are welcome where Kubernetes takes strings: {"cpu": 1} means "1".
        if isinstance(value, dict) and all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in value.values()
        ):
            return {k: str(v) for k, v in value.items()}
        expected = 'a JSON object of strings, like {"key": "value"}'
    elif type_name == "tuple[str, ...]":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        expected = 'a JSON list of strings, like ["a", "b"]'
    else:
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return tuple(value)
        expected = 'a JSON list of objects, like [{"key": "value"}]'
    raise ConfigurationError(f"{env_name(name)} must be {expected}, found {raw!r}")
