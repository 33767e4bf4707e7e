"""The pipeline model: Concourse pipeline YAML parsed into frozen dataclasses.

Pure: no I/O beyond the text handed in, no database, no Kubernetes (``load_vars_file``
is the one exception, a thin reader in front of the pure ``parse_vars``). Every key
outside the supported subset is an error naming the key, its YAML path and line,
and what is supported there; nothing is silently ignored. The supported subset
is written down in ``docs/pipelines.md``.

``parse_pipeline`` works in four passes over PyYAML's node tree, which keeps the line
of every value: compose (syntax errors), fill ``((vars))`` (missing vars), read the
model (keys and types), then check across parts (names, references, artifacts). Each
pass collects every problem before giving up, so one run reports them all.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from shared.errors import PipelineError, Problem, VariableError

# ---------------------------------------------------------------- the model


@dataclass(frozen=True, kw_only=True)
class Where:
    """Where a node stood in the YAML: a dotted path and a 1-based line."""

    path: str
    line: int | None = None


@dataclass(frozen=True, kw_only=True)
class Resource:
    name: str
    type: str
    source: Mapping[str, Any] = field(default_factory=dict)
    """Opaque configuration handed to the resource type's scripts."""
    check_every: str | None = None
    webhook_token: str | None = None
    icon: str | None = None
    version: Mapping[str, str] | None = None
    """Pinned: every get of the resource takes this version (unless the get pins its own)."""
    check_timeout: str | None = None
    """How long a check may run (a Go duration); ``None``: Concourse's default, an hour."""
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class ResourceType:
    name: str
    type: str
    source: Mapping[str, Any] = field(default_factory=dict)
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class ImageResource:
    type: str
    """Concourse image resource type: ``registry-image`` or ``docker-image``."""
    source: Mapping[str, Any] = field(default_factory=dict)
    version: Mapping[str, str] | None = None
    """A pinned version: ``{digest: sha256:…}`` names the image by digest."""

    @property
    def image(self) -> str:
        """The image reference a pod would use: ``repository@digest`` or ``repository[:tag]``."""
        repo = str(self.source.get("repository", ""))
        digest = (self.version or {}).get("digest")
        if digest:
            return f"{repo}@{digest}"
        tag = self.source.get("tag")
        return f"{repo}:{tag}" if tag else repo


@dataclass(frozen=True, kw_only=True)
class TaskInput:
    name: str
    path: str | None = None
    """Where the input lands relative to the working directory; defaults to ``name``."""
    optional: bool = False

    @property
    def mount(self) -> str:
        return self.path or self.name


@dataclass(frozen=True, kw_only=True)
class TaskOutput:
    name: str
    path: str | None = None

    @property
    def mount(self) -> str:
        return self.path or self.name


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    path: str
    args: tuple[str, ...] = ()
    dir: str | None = None
    user: str | None = None


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    platform: str
    run: RunConfig
    image_resource: ImageResource | None = None
    inputs: tuple[TaskInput, ...] = ()
    outputs: tuple[TaskOutput, ...] = ()
    params: Mapping[str, str] = field(default_factory=dict)
    """Environment for the task; values are strings (Concourse stringifies scalars)."""


@dataclass(frozen=True, kw_only=True)
class Hooks:
    """Steps that run after a step (or a job's plan), depending on how it ended.

    As in Concourse: ``on_success`` when it succeeded, ``on_failure`` when it failed,
    ``on_error`` when it errored, ``on_abort`` when the build was aborted during it,
    ``ensure`` whatever happened. A hook never turns a failure into a success.
    """

    on_success: Step | None = None
    on_failure: Step | None = None
    on_error: Step | None = None
    on_abort: Step | None = None
    ensure: Step | None = None

    def items(self) -> list[tuple[str, Step]]:
        """``(hook name, step)`` for each hook given, in the order above."""
        hooks = [(name, getattr(self, name)) for name in HOOK_KEYS]
        return [(name, step) for name, step in hooks if step is not None]


@dataclass(frozen=True, kw_only=True)
class StepBase:
    """What every kind of step may carry besides its own keys: Concourse's modifiers and hooks."""

    timeout: str | None = None
    """A Go duration (``90s``, ``1h30m``): the step fails when it runs longer (each attempt)."""
    attempts: int = 1
    """How many times the step is tried before it fails (Concourse's ``attempts``)."""
    hooks: Hooks = field(default_factory=Hooks)
    where: Where | None = field(default=None, compare=False)

    @property
    def timeout_seconds(self) -> int | None:
        """``timeout`` in whole seconds, rounded up (a pod's ``activeDeadlineSeconds``)."""
        return None if self.timeout is None else duration_seconds(self.timeout)


@dataclass(frozen=True, kw_only=True)
class GetStep(StepBase):
    get: str
    """The name the fetched artifact goes by in the build."""
    resource: str
    """The resource fetched; defaults to ``get``."""
    trigger: bool = False
    passed: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    version: str | Mapping[str, str] | None = None
    tags: tuple[str, ...] = ()
    """Worker tags: here, node labels the step's pod must run on (see ``docs/pipelines.md``)."""


@dataclass(frozen=True, kw_only=True)
class PutStep(StepBase):
    put: str
    resource: str
    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: str | tuple[str, ...] = "all"
    """``all`` (every artifact so far), ``detect`` (treated as ``all``) or a list of names."""
    tags: tuple[str, ...] = ()
    no_get: bool = False
    """Accepted for Concourse compatibility: JetBridge never runs the implicit get."""


@dataclass(frozen=True, kw_only=True)
class TaskStep(StepBase):
    task: str
    config: TaskConfig | None = None
    """The inline config; ``None`` when the config comes from ``file``."""
    file: str | None = None
    """``<artifact>/<path>`` of a task config file, read when the step starts."""
    params: Mapping[str, str] = field(default_factory=dict)
    """Step-level params, overriding the config's."""
    vars: Mapping[str, Any] = field(default_factory=dict)
    """Values for the ``((vars))`` of the task file."""
    image: str | None = None
    """An artifact (a get of a registry-image resource) to run the task in, instead of
    the config's ``image_resource``."""
    input_mapping: Mapping[str, str] = field(default_factory=dict)
    """Task input name → the artifact that fills it."""
    output_mapping: Mapping[str, str] = field(default_factory=dict)
    """Task output name → the artifact name it becomes in the build."""
    writable_inputs: bool = False
    """JetBridge extension: every input is a private writable copy (Concourse's behaviour)."""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class InParallelStep(StepBase):
    steps: tuple[Step, ...]
    limit: int | None = None
    fail_fast: bool = False


@dataclass(frozen=True, kw_only=True)
class DoStep(StepBase):
    """Steps run one after the other, as a unit: the first to fail ends it."""

    steps: tuple[Step, ...]


@dataclass(frozen=True, kw_only=True)
class TryStep(StepBase):
    """A step whose failure (or error) is swallowed: the try succeeds anyway."""

    step: Step


@dataclass(frozen=True, kw_only=True)
class LoadVarStep(StepBase):
    """Reads a file of an artifact into the local var ``((.:name))`` of the later steps."""

    load_var: str
    file: str
    """``<artifact>/<path>``."""
    format: str | None = None
    """``json``, ``yaml``, ``yml``, ``trim`` or ``raw``; by default from the file's extension."""
    reveal: bool = False


@dataclass(frozen=True, kw_only=True)
class SetPipelineStep(StepBase):
    """Saves a pipeline from a file of an artifact (``self``: the pipeline running the build)."""

    set_pipeline: str
    file: str
    vars: Mapping[str, Any] = field(default_factory=dict)
    var_files: tuple[str, ...] = ()
    """``<artifact>/<path>`` of vars files; later files win, ``vars`` win over all."""


@dataclass(frozen=True, kw_only=True)
class AcrossVar:
    var: str
    values: tuple[Any, ...]
    max_in_flight: int | None = 1
    """How many values run at once; ``None`` for ``all``. Concourse's default is 1."""


@dataclass(frozen=True, kw_only=True)
class AcrossStep(StepBase):
    """A step run once per combination of values, each copy with ``((.:var))`` filled in.

    ``steps`` holds the copies, one per combination (the last var changes fastest), already
    read with the values in place. ``hooks`` (from the step with ``across``) run once, after
    every copy; each copy carries its own ``attempts`` and ``timeout``.
    """

    vars: tuple[AcrossVar, ...]
    combinations: tuple[tuple[Any, ...], ...]
    steps: tuple[Step, ...]
    fail_fast: bool = False


Step: TypeAlias = (
    GetStep
    | PutStep
    | TaskStep
    | InParallelStep
    | DoStep
    | TryStep
    | LoadVarStep
    | SetPipelineStep
    | AcrossStep
)


@dataclass(frozen=True, kw_only=True)
class Job:
    name: str
    plan: tuple[Step, ...]
    serial: bool = False
    serial_groups: tuple[str, ...] = ()
    max_in_flight: int | None = None
    public: bool = False
    hooks: Hooks = field(default_factory=Hooks)
    """Job hooks: they hang off the whole plan."""
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    jobs: tuple[Job, ...]
    resources: tuple[Resource, ...] = ()
    resource_types: tuple[ResourceType, ...] = ()

    def job(self, name: str) -> Job:
        """The job called ``name``; raises ``KeyError`` naming the jobs there are."""
        for job in self.jobs:
            if job.name == name:
                return job
        names = ", ".join(j.name for j in self.jobs)
        raise KeyError(f"no job {name!r} in the pipeline; jobs: {names}")

    def resource(self, name: str) -> Resource:
        """The resource called ``name``; raises ``KeyError`` naming the resources there are."""
        for resource in self.resources:
            if resource.name == name:
                return resource
        names = ", ".join(r.name for r in self.resources)
        raise KeyError(f"no resource {name!r} in the pipeline; resources: {names}")

    def pinned_version(self, step: GetStep) -> Mapping[str, str] | None:
        """The version a get is pinned to in the pipeline: its own ``version: {…}``, else
        its resource's; ``None`` when neither pins one."""
        if isinstance(step.version, Mapping):
            return step.version
        return self.resource(step.resource).version

    def resource_type(self, name: str) -> ResourceType | None:
        """The declared resource type called ``name``, if any."""
        return next((t for t in self.resource_types if t.name == name), None)


# ---------------------------------------------------------------- the supported subset

#: Resource types a pipeline may use without declaring them under ``resource_types``:
#: the ones JetBridge ships scripts for (``shared/resources/``).
BUILTIN_RESOURCE_TYPES = frozenset({"gcs", "git", "time"})

#: Types a task's ``image_resource`` may have: both name an OCI image by ``source.repository``.
IMAGE_RESOURCE_TYPES = ("registry-image", "docker-image")

#: The keys that make a step what it is; a step has exactly one of them.
STEP_KINDS = ("get", "put", "task", "in_parallel", "do", "try", "load_var", "set_pipeline")
#: Step and job hooks, in the order Concourse nests them (innermost first): each hangs off
#: the step and the hooks before it, so an on_failure runs when an on_success hook failed.
HOOK_KEYS = ("on_success", "on_failure", "on_abort", "on_error", "ensure")
#: ``load_var`` formats; without one, the file's extension decides (``.json``, ``.yml``/``.yaml``,
#: anything else ``trim``), as in Concourse.
LOAD_VAR_FORMATS = ("json", "yaml", "yml", "trim", "raw")

# The keys accepted at each place, in the order docs/pipelines.md lists them (messages
# list them in this order too, so a reader can match the two).
_TOP_KEYS = ("resources", "resource_types", "jobs")
_RESOURCE_KEYS = (
    "name",
    "type",
    "source",
    "check_every",
    "webhook_token",
    "icon",
    "version",
    "check_timeout",
)
_RESOURCE_TYPE_KEYS = ("name", "type", "source")
_JOB_KEYS = ("name", "plan", "serial", "serial_groups", "max_in_flight", "public", *HOOK_KEYS)
# Modifiers any step may carry (``fail_fast`` only beside ``across``); composite steps
# (do, try, in_parallel) take the hooks and ``across`` but not ``timeout`` or ``attempts``.
_MODIFIER_KEYS = ("timeout", "attempts", "across", *HOOK_KEYS)
_COMPOSITE_MODIFIER_KEYS = ("across", *HOOK_KEYS)
_GET_KEYS = ("get", "resource", "trigger", "passed", "params", "version", "tags")
_PUT_KEYS = ("put", "resource", "params", "inputs", "no_get", "tags")
_TASK_KEYS = (
    "task",
    "config",
    "file",
    "params",
    "vars",
    "image",
    "input_mapping",
    "output_mapping",
    "privileged",
    "writable_inputs",
    "tags",
)
_IN_PARALLEL_KEYS = ("in_parallel",)
_IN_PARALLEL_CONFIG_KEYS = ("steps", "limit", "fail_fast")
_DO_KEYS = ("do",)
_TRY_KEYS = ("try",)
_LOAD_VAR_KEYS = ("load_var", "file", "format", "reveal")
_SET_PIPELINE_KEYS = ("set_pipeline", "file", "vars", "var_files")
_ACROSS_VAR_KEYS = ("var", "values", "max_in_flight")
_CONFIG_KEYS = ("platform", "image_resource", "inputs", "outputs", "params", "run")
_IMAGE_KEYS = ("type", "source", "version")
_INPUT_KEYS = ("name", "path", "optional")
_OUTPUT_KEYS = ("name", "path")
_RUN_KEYS = ("path", "args", "dir", "user")

_PLANNED_TYPES = "planned with resource types (issue 6, part 3)"

# Concourse keys JetBridge knows and refuses, with the reason its message gives. A key
# missing here is still refused, just without a reason. docs/pipelines.md lists them all.
_REFUSED: Mapping[str, str] = {
    "groups": "JetBridge has no web UI to group jobs in",
    "display": "JetBridge has no web UI to show a background image in",
    "var_sources": "credential managers are not supported; give the values as vars",
    "old_name": "JetBridge keeps no job history to carry over to a new name",
    "build_log_retention": "step logs are kept by the log store's retention, not per job",
    "build_logs_to_retain": "step logs are kept by the log store's retention, not per job",
    "disable_manual_trigger": "there is no web UI or fly to trigger jobs by hand",
    "interruptible": "there are no workers to drain: a step's pod always runs to its end",
    "privileged": "steps, resource types included, run as restricted pods (no root, no capabilities)",
    "container_limits": "a step pod's requests and limits come from settings "
    "(JETBRIDGE_STEP_REQUESTS, JETBRIDGE_STEP_LIMITS)",
    "caches": "a task has no worker to keep a cache on between builds",
    "rootfs_uri": "name the task's image under image_resource",
    "get_params": "a put runs no implicit get in JetBridge; add a get in a later job",
    "team": "JetBridge has no teams: set_pipeline sets a pipeline of this JetBridge",
    "instance_vars": "instanced pipelines are not supported",
    "version": "a version is pinned on a resource or on a get step",
    "check_timeout": f"a resource type's check_timeout is {_PLANNED_TYPES}",
    "public": "there is no web UI to show it in",
    "expose_build_created_by": "builds are not started by a user JetBridge knows",
    "tags": f"tags on resources and resource types are {_PLANNED_TYPES}; on a get, put or "
    "task step they select nodes",
    "params": f"a resource type's params are {_PLANNED_TYPES}; an image_resource takes none "
    "(the kubelet pulls the image)",
    "defaults": _PLANNED_TYPES,
}

# Concourse step kinds outside the subset, with the reason.
_REFUSED_STEP_KINDS: Mapping[str, str] = {
    "aggregate": "'aggregate' was removed in Concourse 7; use in_parallel",
}

# A Go duration as Concourse's check_every and timeout take it ("1m", "1h30m", "500ms").
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+|never")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

# Path of a problem that belongs to the whole document rather than a key in it.
_ROOT = "(root)"

_TAG = "tag:yaml.org,2002:"
_STR_TAG = _TAG + "str"
_MERGE_TAG = _TAG + "merge"
_TIMESTAMP_TAG = _TAG + "timestamp"
# Scalar tags whose values are plain JSON: anything else (binary, custom ``!tags``) is refused.
_JSON_TAGS = frozenset(_TAG + t for t in ("str", "null", "bool", "int", "float"))


def duration_seconds(text: str) -> int:
    """A Go duration (``1h30m``, ``90s``, ``500ms``) in whole seconds, rounded up.

    Raises ``ValueError`` for anything else (``never`` included).
    """
    if text == "never" or not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    total = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    return math.ceil(total - 1e-9)


# ---------------------------------------------------------------- entry points


def parse_pipeline(
    text: str,
    *,
    source: str = "pipeline",
    variables: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Parse Concourse pipeline YAML into a :class:`Pipeline`.

    ``((var))`` references are filled from ``variables`` first (``None`` means no vars
    were given). Raises :class:`VariableError` naming every var that was used but not
    given, and otherwise :class:`PipelineError` carrying every problem found (a YAML
    syntax error, a key outside the supported subset, a wrong type, a dangling
    reference), each with its YAML path and line. ``source`` names the text in messages.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise PipelineError([_syntax_problem(e, text)], source=source) from e
    if root is None:
        problem = Problem(path=_ROOT, message="the pipeline is empty; it needs at least `jobs`")
        raise PipelineError([problem], source=source)

    problems: list[Problem] = []
    interpolator = _Interpolator(variables or {}, problems)
    root = interpolator.document(root, source=source)
    if interpolator.missing:
        raise VariableError(interpolator.missing_message(source))

    reader = _Reader(problems)
    pipeline = reader.pipeline(root)
    if problems:
        raise PipelineError(_sorted_problems(problems), source=source)
    assert pipeline is not None, "a pipeline with no problems is always built"
    return pipeline


def parse_task_config(
    text: str, *, source: str = "task config", variables: Mapping[str, Any] | None = None
) -> TaskConfig:
    """Parse a task config file (what a task step's ``file:`` names), as ``config:`` is read.

    ``((vars))`` are filled from ``variables`` (the task step's ``vars``); ``((.:local))``
    vars are left for the step runner. Raises :class:`VariableError` for vars not given and
    :class:`PipelineError` for every other problem, with paths relative to the file.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise PipelineError([_syntax_problem(e, text)], source=source) from e
    if root is None:
        problem = Problem(
            path=_ROOT, message="the task config is empty; it needs `platform` and `run`"
        )
        raise PipelineError([problem], source=source)
    problems: list[Problem] = []
    interpolator = _Interpolator(variables or {}, problems)
    root = interpolator.document(root, source=source)
    if interpolator.missing:
        raise VariableError(interpolator.missing_message(source))
    config = _Reader(problems)._config(root, _ROOT)
    if problems:
        raise PipelineError(_sorted_problems(problems), source=source)
    assert config is not None, "a task config with no problems is always built"
    return config


def load_var_value(text: str, *, format: str | None, file: str) -> Any:
    """The value ``load_var`` gives its var from a file's text, in ``format``.

    Without a format, the extension of ``file`` decides, as in Concourse: ``.json`` is
    JSON, ``.yml``/``.yaml`` YAML, anything else ``trim`` (the text without surrounding
    whitespace). ``raw`` keeps the text as it is. Raises :class:`VariableError` when the
    text is not what its format says.
    """
    if format is None:
        lower = file.lower()
        format = (
            "json"
            if lower.endswith(".json")
            else "yaml"
            if lower.endswith((".yml", ".yaml"))
            else "trim"
        )
    if format == "raw":
        return text
    if format == "trim":
        return text.strip()
    try:
        return json.loads(text) if format == "json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        reason = _yaml_reason(e) if isinstance(e, yaml.YAMLError) else str(e)
        raise VariableError(f"{file} is not valid {format}: {reason}") from e


def _sorted_problems(problems: Sequence[Problem]) -> list[Problem]:
    """Problems in line order, each once (the copies of an ``across`` step repeat theirs)."""
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.line is None, p.line or 0, p.column or 0))


def parse_vars(text: str, *, source: str = "vars") -> dict[str, Any]:
    """Parse the YAML text of a vars file: a mapping from var name to value.

    Raises :class:`VariableError` if the text is not YAML or not a mapping with string keys.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" on line {mark.line + 1}" if mark is not None else ""
        raise VariableError(f"{source} is not valid YAML{where}: {_yaml_reason(e)}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        found = _python_kind(data)
        raise VariableError(
            f"{source} must hold a YAML mapping of var names to values; found {found}"
        )
    bad = [repr(k) for k in data if not isinstance(k, str)]
    if bad:
        raise VariableError(f"{source} has var names that are not strings: {', '.join(bad)}")
    return data


def load_vars_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a vars file (the only I/O in this module; ``parse_vars`` does the rest).

    Raises :class:`VariableError` if the file cannot be read or does not hold a mapping.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise VariableError(f"cannot read vars file {os.fspath(path)}: {e}") from e
    return parse_vars(text, source=f"vars file {os.fspath(path)}")


def parse_var_flags(flags: Sequence[str]) -> dict[str, Any]:
    """Turn ``name=value`` flags (``fly -v``) into vars; values stay strings.

    A dotted name sets a field of a mapping var, as fly does: ``git.branch=main`` gives
    ``{"git": {"branch": "main"}}``, which ``((git.branch))`` reads. A later flag for the
    same name wins. Raises :class:`VariableError` on a flag without ``=`` or without a name.
    """
    result: dict[str, Any] = {}
    for flag in flags:
        name, eq, value = flag.partition("=")
        fields = name.split(".")
        if not eq or not all(fields):
            raise VariableError(
                f"var flag {flag!r} must look like name=value (or name.field=value)"
            )
        target = result
        for depth, part in enumerate(fields[:-1]):
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                taken = ".".join(fields[: depth + 1])
                raise VariableError(
                    f"var flag {flag!r} sets a field of {taken!r}, which an earlier flag set "
                    "to a plain value"
                )
            target = child
        target[fields[-1]] = value
    return result


# ---------------------------------------------------------------- ((var)) interpolation

# ``((...))`` anywhere in a string; what is inside is checked by _VAR_REF.
_VAR = re.compile(r"\(\(([^()]*)\)\)")
# ``name`` then ``.field`` any number of times; a segment may be quoted to hold dots.
_VAR_REF = re.compile(r'(?:"[^"]*"|[^".:\s]+)(?:\.(?:"[^"]*"|[^".:\s]+))*')
_VAR_SEGMENT = re.compile(r'"([^"]*)"|([^".]+)')
# ``source:name``: Concourse's var sources, which JetBridge refuses.
_VAR_SOURCE = re.compile(r"([^\".:\s]+):")
#: A local var, ``((.:name))``: set by ``load_var`` or ``across`` and filled in later.
LOCAL_VAR_PREFIX = ".:"
#: Every ``((.:name))`` (or ``((.:name.field))``) in a string; group 1 is the name.
LOCAL_VAR = re.compile(r"\(\(\s*\.:([^().:\s]+)((?:\.[^().:\s]+)*)\s*\)\)")


class _VarScalar(ScalarNode):
    """A scalar that a whole ``((var))`` filled: carries the var's Python value as it is."""

    def __init__(self, data: Any, *, ref: str, at: Node) -> None:
        super().__init__("!var", str(data), at.start_mark, at.end_mark)
        self.data = data
        self.ref = ref


class _Interpolator:
    """Fills ``((var))`` references in a composed YAML tree, keeping line marks.

    Works on nodes rather than text so that a var's value can never change the YAML's
    structure and every node keeps the line it came from. Nodes that a var fills carry
    the line where the var was used.
    """

    def __init__(self, variables: Mapping[str, Any], problems: list[Problem]) -> None:
        self._variables = variables
        self._problems = problems
        self.missing: dict[str, tuple[str, list[int]]] = {}
        """Var reference → (why it is missing, lines where it is used)."""
        # Anchored nodes are shared; fill each once. Keeps the original alive so its id
        # is not reused.
        self._done: dict[int, tuple[Node, Node]] = {}

    def document(self, root: Node, *, source: str) -> Node:
        """The tree with every var filled; missing vars are left in place and listed."""
        try:
            return self._node(root, path=_ROOT, stack=set())
        except _RecursiveAlias as e:
            problem = Problem(
                path=e.path,
                message="a YAML alias refers to a node that contains it; pipelines must be trees",
                line=_line(e.node),
                column=_column(e.node),
            )
            raise PipelineError([problem], source=source) from None

    def missing_message(self, source: str) -> str:
        lines = []
        for ref, (why, used) in self.missing.items():
            on = ", ".join(str(n) for n in dict.fromkeys(used))
            reason = f" ({why})" if why else ""
            lines.append(f"  (({ref})) on line {on}{reason}")
        also = [f"  {p}" for p in self._problems]
        tail = "\nOther problems with vars:\n" + "\n".join(also) if also else ""
        return (
            f"{source} uses {len(self.missing)} var(s) that were not given:\n"
            + "\n".join(lines)
            + "\nGive each in a vars file or as a name=value var."
            + tail
        )

    def _node(self, node: Node, *, path: str, stack: set[int]) -> Node:
        done = self._done.get(id(node))
        if done is not None:
            return done[1]
        if id(node) in stack:
            raise _RecursiveAlias(node, path)
        result = node
        if isinstance(node, MappingNode):
            stack.add(id(node))
            node.value = [
                (self._key(k, path), self._node(v, path=_at(path, _key_text(k)), stack=stack))
                for k, v in node.value
            ]
            stack.discard(id(node))
        elif isinstance(node, SequenceNode):
            stack.add(id(node))
            node.value = [
                self._node(v, path=f"{path}[{i}]", stack=stack) for i, v in enumerate(node.value)
            ]
            stack.discard(id(node))
        elif isinstance(node, ScalarNode) and node.tag == _STR_TAG and "((" in node.value:
            result = self._scalar(node, path=path)
        self._done[id(node)] = (node, result)
        return result

    def _key(self, node: Node, path: str) -> Node:
        # A key is always a string, so a var in a key is stringified even when it is whole.
        if isinstance(node, ScalarNode) and node.tag == _STR_TAG and "((" in node.value:
            return self._embedded(node, path=path)
        return node

    def _scalar(self, node: ScalarNode, *, path: str) -> Node:
        text: str = node.value
        whole = _VAR.fullmatch(text)
        if whole is None:
            return self._embedded(node, path=path)
        found, value = self._lookup(whole.group(1), node, path)
        if not found:
            return node
        return _value_node(value, ref=whole.group(1).strip(), at=node)

    def _embedded(self, node: ScalarNode, *, path: str) -> Node:
        text: str = node.value
        pieces: list[str] = []
        complete = True
        end = 0
        for match in _VAR.finditer(text):
            pieces.append(text[end : match.start()])
            end = match.end()
            found, value = self._lookup(match.group(1), node, path)
            if not found:
                complete = False
            elif isinstance(value, Mapping | list | tuple) or value is None:
                self._problem(
                    node,
                    path,
                    f"var (({match.group(1).strip()})) holds {_python_kind(value)}, which can "
                    "fill a whole value but not be embedded in a longer string",
                )
                complete = False
            else:
                pieces.append(_stringify(value))
        if not complete:
            return node
        pieces.append(text[end:])
        return ScalarNode(_STR_TAG, "".join(pieces), node.start_mark, node.end_mark, node.style)

    def _lookup(self, inside: str, node: Node, path: str) -> tuple[bool, Any]:
        ref = inside.strip()
        if ref.startswith(LOCAL_VAR_PREFIX):
            # A local var (load_var, across): filled later, by the reader or at run time.
            if not _VAR_REF.fullmatch(ref.removeprefix(LOCAL_VAR_PREFIX)):
                self._problem(node, path, f"(({inside})) is not a local var; write ((.:name))")
            return False, None
        source = _VAR_SOURCE.match(ref)
        if source is not None:
            self._problem(
                node,
                path,
                f"(({ref})) reads var source {source.group(1)!r}; var sources are not "
                "supported, give the value as a var named "
                f"{ref[source.end() :]!r} instead",
            )
            return False, None
        if not _VAR_REF.fullmatch(ref):
            self._problem(
                node, path, f"(({inside})) is not a var reference; write ((name)) or ((name.field))"
            )
            return False, None
        name, *fields = (quoted or plain for quoted, plain in _VAR_SEGMENT.findall(ref))
        if name not in self._variables:
            self._missing(ref, "", node)
            return False, None
        value = self._variables[name]
        for depth, field_name in enumerate(fields):
            if not isinstance(value, Mapping) or field_name not in value:
                parent = ".".join([name, *fields[:depth]])
                if isinstance(value, Mapping):
                    keys = ", ".join(str(k) for k in value) or "none"
                    why = f"var {parent!r} has no field {field_name!r}; its fields: {keys}"
                else:
                    why = f"var {parent!r} holds {_python_kind(value)}, not a mapping"
                self._missing(ref, why, node)
                return False, None
            value = value[field_name]
        return True, value

    def _missing(self, ref: str, why: str, node: Node) -> None:
        line = _line(node)
        entry = self.missing.setdefault(ref, (why, []))
        if line is not None:
            entry[1].append(line)

    def _problem(self, node: Node, path: str, message: str) -> None:
        self._problems.append(
            Problem(path=path, message=message, line=_line(node), column=_column(node))
        )


class _RecursiveAlias(Exception):
    def __init__(self, node: Node, path: str) -> None:
        super().__init__(path)
        self.node = node
        self.path = path


def _value_node(value: Any, *, ref: str, at: Node) -> Node:
    """A YAML node for a var's value, marked with the line where the var was used."""
    if isinstance(value, Mapping):
        pairs = [
            (_VarScalar(k, ref=ref, at=at), _value_node(v, ref=ref, at=at))
            for k, v in value.items()
        ]
        return MappingNode(_TAG + "map", pairs, at.start_mark, at.end_mark)
    if isinstance(value, list | tuple):
        items = [_value_node(v, ref=ref, at=at) for v in value]
        return SequenceNode(_TAG + "seq", items, at.start_mark, at.end_mark)
    if isinstance(value, datetime.date):
        # A date in a vars file reads as a date; the pipeline sees it as written.
        value = value.isoformat()
    return _VarScalar(value, ref=ref, at=at)


# ---------------------------------------------------------------- reading the model


class _Invalid:
    """A scalar that could not be read; its problem is already recorded."""


_INVALID = _Invalid()


class _Reader:
    """Builds the model from YAML nodes, recording problems instead of stopping at the first.

    Each builder returns what it could build (``None`` when not even that), so that the
    checks between parts (names, references, artifacts) still run over the rest and a
    pipeline with several mistakes reports them all at once.
    """

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        self._constructor = SafeConstructor()
        # Path → node, for the checks that run after a part is built and need its line.
        self._nodes: dict[str, Node] = {}
        # Name → path of the first of each kind, for duplicate and reference checks.
        self._resource_types: dict[str, str] = {}
        self._resources: dict[str, str] = {}
        self._jobs: dict[str, str] = {}
        # Jobs read without a problem: only these are trusted for cross-job checks.
        self._complete_jobs: dict[str, Job] = {}
        # Resources named by a get or put, read or not: what Concourse calls "used".
        self._used_resources: set[str] = set()
        # Steps that could not be read at all, so far: a job with one is not checked for
        # artifacts (the missing step may be the one that makes what a later one reads).
        self._holes = 0

    # ------------------------------------------------------------ the document

    def pipeline(self, root: Node) -> Pipeline | None:
        entries = self._mapping(root, _ROOT, "the pipeline", _TOP_KEYS)
        if entries is None:
            return None
        resource_types = self._list(
            _present(entries, "resource_types"), "resource_types", self._resource_type
        )
        self._check_resource_type_types(resource_types)
        resources = self._list(_present(entries, "resources"), "resources", self._resource)
        jobs_node = self._required(entries, "jobs", _ROOT, root, "a pipeline", "a list of jobs")
        jobs: list[Job] = []
        if jobs_node is not None:
            jobs = self._list(jobs_node, "jobs", self._job)
            if isinstance(jobs_node, SequenceNode) and not jobs_node.value:
                self._problem(jobs_node, "jobs", "a pipeline needs at least one job")
        for job in jobs:
            self._check_passed(job)
        self._check_passed_cycles(jobs)
        if jobs_node is not None and self._used_resources <= set(self._resources):
            # With a get or put of an undeclared resource, the one it meant is likely
            # unused: its problem already says which names are declared.
            self._check_unused(resources)
        return Pipeline(
            jobs=tuple(jobs), resources=tuple(resources), resource_types=tuple(resource_types)
        )

    def _resource_type(self, node: Node, path: str) -> ResourceType | None:
        what = "a resource type"
        entries = self._mapping(node, path, what, _RESOURCE_TYPE_KEYS)
        if entries is None:
            return None
        name = self._name(entries, path, node, what, self._resource_types, "resource type")
        type_ = self._required_string(entries, "type", path, node, what)
        source = self._opaque(_present(entries, "source"), _at(path, "source"))
        if name is None or type_ is None:
            return None
        return ResourceType(name=name, type=type_, source=source, where=_where(path, node))

    def _check_resource_type_types(self, resource_types: Sequence[ResourceType]) -> None:
        for rt in resource_types:
            others = [n for n in self._resource_types if n != rt.name]
            known = BUILTIN_RESOURCE_TYPES | set(IMAGE_RESOURCE_TYPES)
            if rt.type not in known and rt.type not in others:
                path = _at(_where_path(rt.where), "type")
                message = _unknown_type(f"resource type {rt.name!r}", rt.type, others, known)
                self._problem_at(path, message)

    def _resource(self, node: Node, path: str) -> Resource | None:
        what = "a resource"
        entries = self._mapping(node, path, what, _RESOURCE_KEYS)
        if entries is None:
            return None
        name = self._name(entries, path, node, what, self._resources, "resource")
        type_ = self._required_string(entries, "type", path, node, what)
        if name is not None and type_ is not None:
            declared = list(self._resource_types)
            if type_ not in BUILTIN_RESOURCE_TYPES and type_ not in declared:
                message = _unknown_type(f"resource {name!r}", type_, declared)
                self._problem_at(_at(path, "type"), message)
        source = self._opaque(_present(entries, "source"), _at(path, "source"))
        check_every = self._optional(entries, "check_every", path, self._string)
        if check_every is not None and not _DURATION.fullmatch(check_every):
            self._problem_at(
                _at(path, "check_every"),
                f"check_every must be a duration like '1m' or '30s', or 'never'; "
                f"found {check_every!r}",
            )
        webhook_token = self._optional(entries, "webhook_token", path, self._string)
        icon = self._optional(entries, "icon", path, self._string)
        version = None
        version_node = _present(entries, "version")
        if isinstance(version_node, MappingNode):
            pinned = self._version(version_node, _at(path, "version"))
            version = pinned if isinstance(pinned, Mapping) else None
        elif version_node is not None:
            self._expected(version_node, _at(path, "version"), "a mapping naming one version")
        check_timeout = self._optional(entries, "check_timeout", path, self._string)
        if check_timeout is not None and (
            check_timeout == "never"
            or not _DURATION.fullmatch(check_timeout)
            or duration_seconds(check_timeout) < 1
        ):
            self._problem_at(
                _at(path, "check_timeout"),
                f"check_timeout must be a duration like '1h' or '5m'; found {check_timeout!r}",
            )
            check_timeout = None
        if name is None or type_ is None:
            return None
        return Resource(
            name=name,
            type=type_,
            source=source,
            check_every=check_every,
            webhook_token=webhook_token,
            icon=icon,
            version=version,
            check_timeout=check_timeout,
            where=_where(path, node),
        )

    def _job(self, node: Node, path: str) -> Job | None:
        what = "a job"
        holes = self._holes
        entries = self._mapping(node, path, what, _JOB_KEYS)
        if entries is None:
            return None
        name = self._name(entries, path, node, what, self._jobs, "job")
        plan_node = self._required(entries, "plan", path, node, what, "a non-empty list of steps")
        plan: list[Step] = []
        if plan_node is not None:
            plan = self._list(plan_node, _at(path, "plan"), self._step)
            if isinstance(plan_node, SequenceNode) and not plan_node.value:
                self._problem(plan_node, _at(path, "plan"), "a job's plan needs at least one step")
        serial = self._optional(entries, "serial", path, self._bool)
        serial_groups = self._optional(entries, "serial_groups", path, self._strings)
        max_in_flight = self._optional(entries, "max_in_flight", path, self._positive_int)
        public = self._optional(entries, "public", path, self._bool)
        hooks = self._hooks(entries, path)
        if name is None:
            return None
        job = Job(
            name=name,
            plan=tuple(plan),
            serial=bool(serial),
            serial_groups=serial_groups or (),
            max_in_flight=max_in_flight,
            public=bool(public),
            hooks=hooks,
            where=_where(path, node),
        )
        self._check_get_names(job)
        if self._holes == holes and plan_node is not None:
            # Only a job whose every step was read is checked for artifacts and local vars:
            # a step that failed to read may have produced what a later step needs, and
            # guessing would only add noise to the problem that is already reported.
            self._complete_jobs.setdefault(name, job)
            self._check_flow(job)
        for step in _walk(_job_steps(job)):
            if isinstance(step, GetStep | PutStep):
                self._check_resource_ref(step)
        return job

    # ------------------------------------------------------------ steps

    def _step(self, node: Node, path: str) -> Step | None:
        step = self._read_step(node, path)
        if step is None:
            self._holes += 1
        return step

    def _read_step(self, node: Node, path: str) -> Step | None:
        pairs = self._entries(node, path, "a step")
        if pairs is None:
            return None
        kinds = [k for k in STEP_KINDS if k in pairs]
        if len(kinds) == 1:
            if "across" in pairs:
                return self._across(node, pairs, path, kinds[0])
            return self._core(node, pairs, path, kinds[0])
        for key in ("get", "put", "resource"):  # a step that cannot be read may use them
            if key in pairs and isinstance(pairs[key][1], ScalarNode):
                self._used_resources.add(str(pairs[key][1].value))
        one_of = ", ".join(STEP_KINDS)
        refused = [k for k in pairs if k in _REFUSED_STEP_KINDS]
        if kinds:
            found = " and ".join(repr(k) for k in kinds)
            message = f"a step needs exactly one of {one_of}; this one has {found}"
        elif refused:
            message = f"{_REFUSED_STEP_KINDS[refused[0]]}; a step needs one of {one_of}"
        else:
            keys = ", ".join(pairs) or "none"
            message = f"a step needs exactly one of {one_of}; found keys: {keys}"
        self._problem(node, path, message)
        return None

    def _core(self, node: Node, pairs: _Pairs, path: str, kind: str) -> Step | None:
        readers: dict[str, Callable[[Node, _Pairs, str], Step | None]] = {
            "get": self._get,
            "put": self._put,
            "task": self._task,
            "in_parallel": self._in_parallel,
            "do": self._do,
            "try": self._try,
            "load_var": self._load_var,
            "set_pipeline": self._set_pipeline,
        }
        return readers[kind](node, pairs, path)

    def _kind_entries(
        self, pairs: _Pairs, path: str, what: str, keys: Sequence[str], *, composite: bool = False
    ) -> dict[str, Node]:
        """The keys of one kind of step, with the modifiers every step may carry."""
        also_known: tuple[str, ...] = ()
        if composite:
            for key in ("timeout", "attempts"):
                if key in pairs:
                    self._problem(
                        pairs[key][0],
                        _at(path, key),
                        f"`{key}` on {what} is not supported: put `{key}` on the get, put "
                        "and task steps inside it (each runs as a pod of its own)",
                    )
            also_known = ("timeout", "attempts")
        modifiers = _COMPOSITE_MODIFIER_KEYS if composite else _MODIFIER_KEYS
        return self._checked(pairs, path, what, keys, also_known=also_known, modifiers=modifiers)

    def _modifiers(self, entries: Mapping[str, Node], path: str) -> dict[str, Any]:
        """``timeout``, ``attempts`` and the hooks of a step, as keyword arguments."""
        timeout = self._optional(entries, "timeout", path, self._timeout)
        attempts = self._optional(entries, "attempts", path, self._positive_int)
        return {"timeout": timeout, "attempts": attempts or 1, "hooks": self._hooks(entries, path)}

    def _hooks(self, entries: Mapping[str, Node], path: str) -> Hooks:
        steps: dict[str, Step | None] = {}
        for key in HOOK_KEYS:
            node = _present(entries, key)
            steps[key] = None if node is None else self._step(node, _at(path, key))
        return Hooks(**steps)

    def _get(self, node: Node, pairs: _Pairs, path: str) -> GetStep | None:
        entries = self._kind_entries(pairs, path, "a get step", _GET_KEYS)
        get = self._string(entries["get"], _at(path, "get"), nonempty=True)
        resource = self._optional(entries, "resource", path, self._name_string) or get
        trigger = self._optional(entries, "trigger", path, self._bool)
        passed = self._optional(entries, "passed", path, self._strings)
        params = self._opaque(_present(entries, "params"), _at(path, "params"))
        version_node = _present(entries, "version")
        version = None
        if version_node is not None:
            version = self._version(version_node, _at(path, "version"))
        tags = self._optional(entries, "tags", path, self._strings)
        modifiers = self._modifiers(entries, path)
        if resource is not None:
            self._used_resources.add(resource)
        if get is None or resource is None:
            return None
        return GetStep(
            get=get,
            resource=resource,
            trigger=bool(trigger),
            passed=passed or (),
            params=params,
            version=version,
            tags=tags or (),
            where=_where(path, node),
            **modifiers,
        )

    def _put(self, node: Node, pairs: _Pairs, path: str) -> PutStep | None:
        entries = self._kind_entries(pairs, path, "a put step", _PUT_KEYS)
        put = self._string(entries["put"], _at(path, "put"), nonempty=True)
        resource = self._optional(entries, "resource", path, self._name_string) or put
        params = self._opaque(_present(entries, "params"), _at(path, "params"))
        inputs_node = _present(entries, "inputs")
        inputs = None
        if inputs_node is not None:
            inputs = self._put_inputs(inputs_node, _at(path, "inputs"))
        tags = self._optional(entries, "tags", path, self._strings)
        no_get = self._optional(entries, "no_get", path, self._bool)
        modifiers = self._modifiers(entries, path)
        if resource is not None:
            self._used_resources.add(resource)
        if put is None or resource is None:
            return None
        return PutStep(
            put=put,
            resource=resource,
            params=params,
            inputs="all" if inputs is None else inputs,
            tags=tags or (),
            no_get=bool(no_get),
            where=_where(path, node),
            **modifiers,
        )

    def _task(self, node: Node, pairs: _Pairs, path: str) -> TaskStep | None:
        what = "a task step"
        entries = self._kind_entries(pairs, path, what, _TASK_KEYS)
        task = self._string(entries["task"], _at(path, "task"), nonempty=True)
        file = self._optional(entries, "file", path, self._artifact_path)
        config_node = _present(entries, "config")
        config: TaskConfig | None = None
        if config_node is not None:
            config = self._config(config_node, _at(path, "config"))
            if "file" in entries:
                self._problem_at(
                    _at(path, "file"),
                    "a task step takes `config` or `file`, not both: `file` names a task "
                    "config to read from an artifact, `config` gives it inline",
                )
        elif "file" not in entries:
            self._problem(
                node,
                _at(path, "config"),
                "a task step needs `config` (the task config, inline) or `file` "
                "(<artifact>/<path> of a task config file)",
            )
        params = self._env(_present(entries, "params"), _at(path, "params"))
        task_vars = self._opaque(_present(entries, "vars"), _at(path, "vars"))
        image = self._optional(entries, "image", path, self._name_string)
        input_mapping = self._optional(entries, "input_mapping", path, self._name_map) or {}
        output_mapping = self._optional(entries, "output_mapping", path, self._name_map) or {}
        privileged = self._optional(entries, "privileged", path, self._bool)
        if privileged:
            self._problem_at(
                _at(path, "privileged"),
                "privileged tasks are refused: steps run as restricted pods (no root, no "
                "capabilities, no privilege escalation); build images with a rootless "
                "builder (kaniko, buildah) instead",
            )
        writable = self._optional(entries, "writable_inputs", path, self._bool)
        tags = self._optional(entries, "tags", path, self._strings)
        modifiers = self._modifiers(entries, path)
        if config is not None:
            self._check_mappings(config, input_mapping, output_mapping, path, task)
        if task is None or (config is None and file is None):
            return None
        return TaskStep(
            task=task,
            config=config,
            file=file,
            params=params,
            vars=task_vars,
            image=image,
            input_mapping=input_mapping,
            output_mapping=output_mapping,
            writable_inputs=bool(writable),
            tags=tags or (),
            where=_where(path, node),
            **modifiers,
        )

    def _check_mappings(
        self,
        config: TaskConfig,
        input_mapping: Mapping[str, str],
        output_mapping: Mapping[str, str],
        path: str,
        task: str | None,
    ) -> None:
        """Each mapping names an input (output) the task's config declares."""
        for key, mapping, declared in (
            ("input_mapping", input_mapping, [i.name for i in config.inputs]),
            ("output_mapping", output_mapping, [o.name for o in config.outputs]),
        ):
            kind = key.split("_")[0]
            for name in mapping:
                if name not in declared:
                    listing = ", ".join(declared) or "none"
                    self._problem_at(
                        _at(_at(path, key), name),
                        f"{key} maps {name!r}, which is not an {kind} of task {task!r}; "
                        f"its {kind}s: {listing}",
                    )

    def _in_parallel(self, node: Node, pairs: _Pairs, path: str) -> InParallelStep | None:
        what = "an in_parallel step"
        entries = self._kind_entries(pairs, path, what, _IN_PARALLEL_KEYS, composite=True)
        value = entries["in_parallel"]
        here = _at(path, "in_parallel")
        modifiers = self._modifiers(entries, path)
        if isinstance(value, SequenceNode):
            steps: list[Step] = self._list(value, here, self._step)
            return InParallelStep(steps=tuple(steps), where=_where(path, node), **modifiers)
        if not isinstance(value, MappingNode):
            expectation = "a list of steps, or a mapping with steps, limit, fail_fast"
            self._expected(value, here, expectation)
            return None
        config = self._mapping(value, here, "in_parallel", _IN_PARALLEL_CONFIG_KEYS)
        if config is None:
            return None
        steps_node = self._required(config, "steps", here, value, "in_parallel", "a list of steps")
        steps = []
        if steps_node is not None:
            steps = self._list(steps_node, _at(here, "steps"), self._step)
        limit = self._optional(config, "limit", here, self._positive_int)
        fail_fast = self._optional(config, "fail_fast", here, self._bool)
        if steps_node is None:
            return None
        return InParallelStep(
            steps=tuple(steps),
            limit=limit,
            fail_fast=bool(fail_fast),
            where=_where(path, node),
            **modifiers,
        )

    def _do(self, node: Node, pairs: _Pairs, path: str) -> DoStep | None:
        entries = self._kind_entries(pairs, path, "a do step", _DO_KEYS, composite=True)
        here = _at(path, "do")
        value = entries["do"]
        modifiers = self._modifiers(entries, path)
        if not isinstance(value, SequenceNode):
            self._expected(value, here, "a list of steps")
            return None
        steps: list[Step] = self._list(value, here, self._step)
        return DoStep(steps=tuple(steps), where=_where(path, node), **modifiers)

    def _try(self, node: Node, pairs: _Pairs, path: str) -> TryStep | None:
        entries = self._kind_entries(pairs, path, "a try step", _TRY_KEYS, composite=True)
        step = self._step(entries["try"], _at(path, "try"))
        modifiers = self._modifiers(entries, path)
        if step is None:
            return None
        return TryStep(step=step, where=_where(path, node), **modifiers)

    def _load_var(self, node: Node, pairs: _Pairs, path: str) -> LoadVarStep | None:
        what = "a load_var step"
        entries = self._kind_entries(pairs, path, what, _LOAD_VAR_KEYS)
        name = self._string(entries["load_var"], _at(path, "load_var"), nonempty=True)
        if name is not None and not _VAR_NAME.fullmatch(name):
            self._problem_at(
                _at(path, "load_var"),
                f"a local var's name is letters, digits, '-' and '_'; found {name!r}",
            )
        file_node = self._required(entries, "file", path, node, what, "<artifact>/<path>")
        file = self._artifact_path(file_node, _at(path, "file")) if file_node else None
        format_ = self._optional(entries, "format", path, self._string)
        if format_ is not None and format_ not in LOAD_VAR_FORMATS:
            self._problem_at(
                _at(path, "format"),
                f"format must be one of {', '.join(LOAD_VAR_FORMATS)}; found {format_!r}",
            )
        reveal = self._optional(entries, "reveal", path, self._bool)
        modifiers = self._modifiers(entries, path)
        if name is None or file is None:
            return None
        return LoadVarStep(
            load_var=name,
            file=file,
            format=format_,
            reveal=bool(reveal),
            where=_where(path, node),
            **modifiers,
        )

    def _set_pipeline(self, node: Node, pairs: _Pairs, path: str) -> SetPipelineStep | None:
        what = "a set_pipeline step"
        entries = self._kind_entries(pairs, path, what, _SET_PIPELINE_KEYS)
        name = self._string(entries["set_pipeline"], _at(path, "set_pipeline"), nonempty=True)
        file_node = self._required(entries, "file", path, node, what, "<artifact>/<path>")
        file = self._artifact_path(file_node, _at(path, "file")) if file_node else None
        pipeline_vars = self._opaque(_present(entries, "vars"), _at(path, "vars"))
        var_files: list[str] = []
        var_files_node = _present(entries, "var_files")
        if var_files_node is not None:
            var_files = self._list(var_files_node, _at(path, "var_files"), self._artifact_path)
        modifiers = self._modifiers(entries, path)
        if name is None or file is None:
            return None
        return SetPipelineStep(
            set_pipeline=name,
            file=file,
            vars=pipeline_vars,
            var_files=tuple(var_files),
            where=_where(path, node),
            **modifiers,
        )

    def _across(self, node: Node, pairs: _Pairs, path: str, kind: str) -> AcrossStep | None:
        """A step with ``across``: one copy per combination of values, ``((.:var))`` filled in.

        Hooks (and ``fail_fast``) belong to the across as a whole; everything else of the
        step is read once per copy, from the step's YAML with the values in place.
        """
        here = _at(path, "across")
        across_vars = self._across_vars(pairs["across"][1], here)
        for key in ("across", "fail_fast", *HOOK_KEYS):
            if key in pairs:
                self._nodes.setdefault(_at(path, key), pairs[key][1])
        fail_fast = None
        if "fail_fast" in pairs and not _is_null(pairs["fail_fast"][1]):
            fail_fast = self._bool(pairs["fail_fast"][1], _at(path, "fail_fast"))
        hooks = self._hooks({k: pairs[k][1] for k in HOOK_KEYS if k in pairs}, path)
        template = {k: v for k, v in pairs.items() if k not in ("across", "fail_fast", *HOOK_KEYS)}
        if across_vars is None:
            self._core(node, template, path, kind)  # for the problems of the step itself
            return None
        combinations = list(itertools.product(*(v.values for v in across_vars)))
        steps = []
        for values in combinations:
            scope = {v.var: value for v, value in zip(across_vars, values, strict=True)}
            filled = {
                k: (key_node, self._fill_local(value_node, scope, _at(path, k)))
                for k, (key_node, value_node) in template.items()
            }
            steps.append(self._core(node, filled, path, kind))
        if any(step is None for step in steps):
            return None
        return AcrossStep(
            vars=tuple(across_vars),
            combinations=tuple(tuple(c) for c in combinations),
            steps=tuple(s for s in steps if s is not None),
            fail_fast=bool(fail_fast),
            hooks=hooks,
            where=_where(path, node),
        )

    def _across_vars(self, node: Node, path: str) -> list[AcrossVar] | None:
        self._nodes.setdefault(path, node)
        if not isinstance(node, SequenceNode) or not node.value:
            self._expected(node, path, "a non-empty list of vars (var, values, max_in_flight)")
            return None
        before = len(self.problems)
        across_vars = self._list(node, path, self._across_var)
        names: dict[str, int] = {}
        for index, var in enumerate(across_vars):
            first = names.setdefault(var.var, index)
            if first != index:
                self._problem_at(
                    f"{path}[{index}].var",
                    f"across var {var.var!r} is already declared by {path}[{first}]",
                )
        return across_vars if len(self.problems) == before else None

    def _across_var(self, node: Node, path: str) -> AcrossVar | None:
        what = "an across var"
        entries = self._mapping(node, path, what, _ACROSS_VAR_KEYS)
        if entries is None:
            return None
        name = self._required_string(entries, "var", path, node, what)
        values_node = self._required(entries, "values", path, node, what, "a list of values")
        values: list[Any] | None = None
        if values_node is not None:
            plain = self._plain(values_node, _at(path, "values"))
            if isinstance(plain, str) and LOCAL_VAR.search(plain):
                self._problem_at(
                    _at(path, "values"),
                    "across values from a local var (load_var) are not supported yet; "
                    "give the values as a list",
                )
            elif not isinstance(plain, list) or not plain:
                self._expected(values_node, _at(path, "values"), "a non-empty list of values")
            else:
                values = plain
        limit_node = _present(entries, "max_in_flight")
        limit: int | None = 1
        if limit_node is not None:
            if self._value(limit_node, _at(path, "max_in_flight")) == "all":
                limit = None
            else:
                limit = self._positive_int(limit_node, _at(path, "max_in_flight"))
                if limit is None:
                    return None
        if name is None or values is None:
            return None
        return AcrossVar(var=name, values=tuple(values), max_in_flight=limit)

    def _fill_local(self, node: Node, scope: Mapping[str, Any], path: str) -> Node:
        """A copy of ``node`` with the across vars of ``scope`` filled in (others left as text)."""
        if isinstance(node, MappingNode):
            pairs = [(k, self._fill_local(v, scope, path)) for k, v in node.value]
            return MappingNode(node.tag, pairs, node.start_mark, node.end_mark, node.flow_style)
        if isinstance(node, SequenceNode):
            items = [self._fill_local(v, scope, path) for v in node.value]
            return SequenceNode(node.tag, items, node.start_mark, node.end_mark, node.flow_style)
        if not isinstance(node, ScalarNode) or isinstance(node, _VarScalar):
            return node
        if node.tag != _STR_TAG or "((" not in node.value:
            return node
        text: str = node.value
        whole = LOCAL_VAR.fullmatch(text.strip())
        if whole is not None and whole.group(1) in scope:
            found, value = _field(scope[whole.group(1)], whole.group(2))
            if found:
                return _value_node(value, ref=f".:{whole.group(1)}", at=node)

        def one(match: re.Match[str]) -> str:
            if match.group(1) not in scope:
                return match.group(0)
            found, value = _field(scope[match.group(1)], match.group(2))
            if not found or isinstance(value, Mapping | list | tuple) or value is None:
                self._problem(
                    node,
                    path,
                    f"{match.group(0)} cannot be embedded in a longer string: it holds "
                    f"{_python_kind(value) if found else 'no such field'}",
                )
                return match.group(0)
            return _stringify(value)

        filled = LOCAL_VAR.sub(one, text)
        return ScalarNode(_STR_TAG, filled, node.start_mark, node.end_mark, node.style)

    def _artifact_path(self, node: Node, path: str) -> str | None:
        """``<artifact>/<path>``: a file inside an artifact of the build."""
        text = self._string(node, path, nonempty=True)
        if text is None:
            return None
        artifact, _, inside = text.partition("/")
        if not artifact or not inside.strip("/") or ".." in inside.split("/"):
            self._problem_at(
                path,
                f"expected <artifact>/<path to a file in it>, like repo/ci/task.yml; found {text!r}",
            )
            return None
        return text

    def _name_map(self, node: Node, path: str) -> dict[str, str] | None:
        """``input_mapping``/``output_mapping``: names to names."""
        pairs = self._entries(node, path, "a mapping of names")
        if pairs is None:
            return None
        result = {}
        for key, (_, value) in pairs.items():
            name = self._name_string(value, _at(path, key))
            if name is not None:
                result[key] = name
        return result

    def _timeout(self, node: Node, path: str) -> str | None:
        text = self._string(node, path)
        if text is None:
            return None
        if not _DURATION.fullmatch(text) or text == "never" or duration_seconds(text) < 1:
            self._problem_at(
                path, f"timeout must be a duration like '90s', '10m' or '1h30m'; found {text!r}"
            )
            return None
        return text

    # ------------------------------------------------------------ task config

    def _config(self, node: Node, path: str) -> TaskConfig | None:
        what = "a task config"
        entries = self._mapping(node, path, what, _CONFIG_KEYS)
        if entries is None:
            return None
        platform = self._required_string(entries, "platform", path, node, what)
        if platform is not None and platform != "linux":
            self._problem_at(
                _at(path, "platform"),
                f"tasks run as Linux pods, so platform must be 'linux'; found {platform!r}",
            )
        image = self._optional(entries, "image_resource", path, self._image)
        inputs = self._optional(entries, "inputs", path, self._task_inputs) or ()
        outputs = self._optional(entries, "outputs", path, self._task_outputs) or ()
        self._check_mounts(inputs, outputs, path)
        params = self._env(_present(entries, "params"), _at(path, "params"))
        run_node = self._required(entries, "run", path, node, what, "a mapping with `path`")
        run = self._run(run_node, _at(path, "run")) if run_node is not None else None
        if platform is None or run is None:
            return None
        return TaskConfig(
            platform=platform,
            run=run,
            image_resource=image,
            inputs=inputs,
            outputs=outputs,
            params=params,
        )

    def _image(self, node: Node, path: str) -> ImageResource | None:
        what = "an image_resource"
        entries = self._mapping(node, path, what, _IMAGE_KEYS)
        if entries is None:
            return None
        type_ = self._required_string(entries, "type", path, node, what)
        if type_ is not None and type_ not in IMAGE_RESOURCE_TYPES:
            self._problem_at(
                _at(path, "type"),
                f"an image_resource's type must be one of {', '.join(IMAGE_RESOURCE_TYPES)}; "
                f"found {type_!r}",
            )
        source = self._opaque(_present(entries, "source"), _at(path, "source"))
        repository = source.get("repository")
        if not isinstance(repository, str) or not repository:
            self._problem(
                entries.get("source", node),
                _at(path, "source.repository"),
                "an image_resource needs source.repository, the image to run the task in",
            )
        version = None
        version_node = _present(entries, "version")
        if version_node is not None:
            read = self._version(version_node, _at(path, "version"))
            if isinstance(read, Mapping):
                version = read
            elif read is not None:
                self._expected(
                    version_node, _at(path, "version"), "a mapping, like {digest: sha256:…}"
                )
        if type_ is None:
            return None
        return ImageResource(type=type_, source=source, version=version)

    def _task_inputs(self, node: Node, path: str) -> tuple[TaskInput, ...] | None:
        return tuple(self._list(node, path, self._task_input))

    def _task_input(self, node: Node, path: str) -> TaskInput | None:
        what = "a task input"
        entries = self._mapping(node, path, what, _INPUT_KEYS)
        if entries is None:
            return None
        name = self._required(entries, "name", path, node, what, "a string")
        name_value = self._name_string(name, _at(path, "name")) if name is not None else None
        input_path = self._optional(entries, "path", path, self._name_string)
        optional = self._optional(entries, "optional", path, self._bool)
        if name_value is None:
            return None
        return TaskInput(name=name_value, path=input_path, optional=bool(optional))

    def _task_outputs(self, node: Node, path: str) -> tuple[TaskOutput, ...] | None:
        return tuple(self._list(node, path, self._task_output))

    def _task_output(self, node: Node, path: str) -> TaskOutput | None:
        what = "a task output"
        entries = self._mapping(node, path, what, _OUTPUT_KEYS)
        if entries is None:
            return None
        name = self._required(entries, "name", path, node, what, "a string")
        name_value = self._name_string(name, _at(path, "name")) if name is not None else None
        output_path = self._optional(entries, "path", path, self._name_string)
        if name_value is None:
            return None
        return TaskOutput(name=name_value, path=output_path)

    def _check_mounts(
        self, inputs: Sequence[TaskInput], outputs: Sequence[TaskOutput], path: str
    ) -> None:
        """Inputs and outputs are separate mounts: each needs a name and a path of its own.

        The one exception: an output with an input's name (and path) is a writable copy
        of that input, mounted in its place.
        """
        names: dict[tuple[str, str], str] = {}
        mounts: dict[str, tuple[str, str]] = {}  # mount → (path of the first, its name)
        input_mounts = {x.name: x.mount for x in inputs}
        declared = [("inputs", i, x.name, x.mount) for i, x in enumerate(inputs)]
        declared += [("outputs", i, x.name, x.mount) for i, x in enumerate(outputs)]
        for kind, index, name, mount in declared:
            here = f"{path}.{kind}[{index}]"
            first = names.setdefault((kind, name), here)
            if first != here:
                self._problem_at(here, f"{kind[:-1]} {name!r} is declared twice; first at {first}")
                continue
            if kind == "outputs" and name in input_mounts:
                if input_mounts[name] != mount:
                    self._problem_at(
                        here,
                        f"output {name!r} has the name of an input but another path ({mount!r}, "
                        f"the input's is {input_mounts[name]!r}); an output named after an "
                        "input is a writable copy of it, in its place: give both one path",
                    )
                continue
            first_path, first_name = mounts.setdefault(mount, (here, name))
            if first_path == here:
                continue
            if kind == "outputs" and ".inputs[" in first_path:
                message = (
                    f"output {name!r} would be mounted at {mount!r}, where {first_path} mounts "
                    f"input {first_name!r}; inputs are read-only in JetBridge: to write into "
                    f"it, name the output {first_name!r} (a writable copy that becomes the "
                    "output), or give the output its own path"
                )
            else:
                message = f"path {mount!r} is already used by {first_path}"
            self._problem_at(here, message)

    def _run(self, node: Node, path: str) -> RunConfig | None:
        what = "a task's run"
        entries = self._mapping(node, path, what, _RUN_KEYS)
        if entries is None:
            return None
        run_path = self._required_string(entries, "path", path, node, what)
        args = self._optional(entries, "args", path, self._strings)
        run_dir = self._optional(entries, "dir", path, self._string)
        user = self._optional(entries, "user", path, self._string)
        if run_path is None:
            return None
        return RunConfig(path=run_path, args=args or (), dir=run_dir, user=user)

    # ------------------------------------------------------------ checks across parts

    def _check_resource_ref(self, step: GetStep | PutStep) -> None:
        if step.resource in self._resources:
            return
        base = _where_path(step.where)
        kind = "get" if isinstance(step, GetStep) else "put"
        path = _at(base, "resource")
        if path not in self._nodes:
            path = _at(base, kind)
        declared = ", ".join(self._resources) or "none are declared"
        self._problem_at(
            path,
            f"{kind} step names resource {step.resource!r}, which is not declared; "
            f"resources: {declared}",
        )

    def _check_unused(self, resources: Sequence[Resource]) -> None:
        """Concourse refuses a resource no job gets or puts; so does JetBridge."""
        for resource in resources:
            if resource.name not in self._used_resources:
                self._problem_at(
                    _at(_where_path(resource.where), "name"),
                    f"resource {resource.name!r} is not used by any job; remove it, or get or "
                    "put it in a job (Concourse refuses unused resources too)",
                )

    def _check_get_names(self, job: Job) -> None:
        """A job's gets have names of their own: Concourse refuses a repeated one."""
        seen: dict[str, GetStep] = {}
        for step in _walk(_job_steps(job), first_copy_only=True):
            if not isinstance(step, GetStep):
                continue
            first = seen.setdefault(step.get, step)
            if first is step:
                continue
            where = first.where or Where(path=_ROOT)
            self._problem_at(
                _at(_where_path(step.where), "get"),
                f"get {step.get!r} is already in job {job.name!r} at {where.path} (line "
                f"{where.line}); give this one another name, with `resource: {step.resource}`",
            )

    def _check_passed(self, job: Job) -> None:
        for step in _walk(_job_steps(job)):
            if not isinstance(step, GetStep):
                continue
            for index, other in enumerate(step.passed):
                path = f"{_at(_where_path(step.where), 'passed')}[{index}]"
                if other not in self._jobs:
                    jobs = ", ".join(self._jobs)
                    self._problem_at(
                        path, f"passed names job {other!r}, which is not declared; jobs: {jobs}"
                    )
                    continue
                passed_job = self._complete_jobs.get(other)
                if passed_job is not None and step.resource not in _resources_used(passed_job):
                    self._problem_at(
                        path,
                        f"passed names job {other!r}, which never gets or puts resource "
                        f"{step.resource!r}, so no version of it can pass that job",
                    )

    def _check_passed_cycles(self, jobs: Sequence[Job]) -> None:
        """``passed`` constraints that go round in a circle let no version through, ever."""
        edges: dict[str, dict[str, str]] = {}  # job → passed job → path of the passed entry
        for job in jobs:
            for step in _walk(_job_steps(job)):
                if isinstance(step, GetStep):
                    for index, other in enumerate(step.passed):
                        if other in self._jobs:
                            path = f"{_at(_where_path(step.where), 'passed')}[{index}]"
                            edges.setdefault(job.name, {}).setdefault(other, path)
        reported: set[str] = set()
        for job in jobs:
            if job.name in reported:
                continue
            cycle = _cycle_through(job.name, edges)
            if cycle is None:
                continue
            reported.update(cycle)
            shown = " → ".join([*cycle, cycle[0]])
            self._problem_at(
                edges[cycle[0]][cycle[1 % len(cycle)]],
                f"passed constraints form a cycle: {shown} (each job takes only versions "
                "that passed the next), so no version can ever reach these jobs",
            )

    def _check_flow(self, job: Job) -> None:
        """Artifacts and local vars: each is made by an earlier step before a step reads it."""
        flow = _Flow()
        for step in job.plan:
            flow = self._flow(step, flow, job.name)
        for _, hook in job.hooks.items():
            self._flow(hook, flow, job.name)

    def _flow(self, step: Step, flow: _Flow, job: str) -> _Flow:
        """Check ``step`` against what came before; what the steps after it can use."""
        base = _where_path(step.where)
        after = flow
        if isinstance(step, AcrossStep):
            for copy_ in step.steps:  # each copy is a scope of its own: nothing leaves it
                self._flow(copy_, flow, job)
        elif isinstance(step, DoStep):
            for child in step.steps:
                after = self._flow(child, after, job)
        elif isinstance(step, TryStep):
            after = self._flow(step.step, flow, job)
        elif isinstance(step, InParallelStep):
            # Every child sees what came before it, none sees its siblings'.
            produced: dict[str, str] = {}
            for child in step.steps:
                child_after = self._flow(child, flow, job)
                child_path = _where_path(child.where)
                for name, producer in child_after.artifacts.items():
                    if flow.artifacts.get(name) == producer:
                        continue
                    first = produced.setdefault(name, child_path)
                    if first != child_path:
                        self._problem_at(
                            child_path,
                            f"artifact {name!r} is produced by both {first} and this step, "
                            "which run in parallel; give one of them another name",
                        )
                after = after.merged(child_after)
        else:
            self._check_local_refs(step, flow, job)
            after = self._leaf_flow(step, flow, job, base)
        for name, hook in step.hooks.items():
            hook_after = self._flow(hook, after, job)
            if name in ("on_success", "ensure"):  # ran whenever the steps after it run
                after = after.merged(hook_after)
        return after

    def _leaf_flow(self, step: Step, flow: _Flow, job: str, base: str) -> _Flow:
        def need(name: str, path: str, what: str) -> None:
            if name not in flow.artifacts and not flow.anything:
                earlier = ", ".join(flow.artifacts) or "nothing"
                self._problem_at(
                    path,
                    f"{what} but no earlier step in job {job!r} produces it; "
                    f"earlier steps produce: {earlier}",
                )

        if isinstance(step, GetStep):
            return flow.with_artifacts({step.get: base})
        if isinstance(step, PutStep):
            if isinstance(step.inputs, tuple):
                for index, name in enumerate(step.inputs):
                    need(name, f"{base}.inputs[{index}]", f"put {step.put!r} lists input {name!r}")
            return flow
        if isinstance(step, TaskStep):
            produced = {step.output_mapping.get(o, o): base for o in _declared_outputs(step)}
            if step.file is not None:
                artifact = step.file.split("/", 1)[0]
                need(
                    artifact,
                    f"{base}.file",
                    f"task {step.task!r} reads its config from {step.file!r}, from artifact "
                    f"{artifact!r},",
                )
            if step.image is not None:
                need(
                    step.image, f"{base}.image", f"task {step.task!r} runs in image {step.image!r}"
                )
            for index, task_input in enumerate(step.config.inputs if step.config else ()):
                artifact = step.input_mapping.get(task_input.name, task_input.name)
                if task_input.optional:
                    continue
                mapped = f" (mapped to {artifact!r})" if artifact != task_input.name else ""
                need(
                    artifact,
                    f"{base}.config.inputs[{index}]",
                    f"task {step.task!r} needs input {task_input.name!r}{mapped}",
                )
            after = flow.with_artifacts(produced)
            # A task file's outputs are only known when it is read: it may make any name.
            return replace(after, anything=True) if step.file is not None else after
        if isinstance(step, LoadVarStep):
            artifact = step.file.split("/", 1)[0]
            need(
                artifact,
                f"{base}.file",
                f"load_var {step.load_var!r} reads {step.file!r}, from artifact {artifact!r},",
            )
            first = flow.local_vars.get(step.load_var)
            if first is not None:
                self._problem_at(
                    _at(base, "load_var"),
                    f"local var {step.load_var!r} is already set by {first}; a job sets each "
                    "local var once",
                )
            return replace(flow, local_vars={**flow.local_vars, step.load_var: base})
        if isinstance(step, SetPipelineStep):
            for index, file in enumerate((step.file, *step.var_files)):
                artifact = file.split("/", 1)[0]
                path = f"{base}.file" if index == 0 else f"{base}.var_files[{index - 1}]"
                need(
                    artifact,
                    path,
                    f"set_pipeline {step.set_pipeline!r} reads {file!r}, from artifact "
                    f"{artifact!r},",
                )
        return flow

    def _check_local_refs(self, step: Step, flow: _Flow, job: str) -> None:
        """Every ``((.:var))`` a step uses is set by an earlier load_var of its job."""
        for name in dict.fromkeys(_local_refs(step)):
            if name in flow.local_vars:
                continue
            known = ", ".join(flow.local_vars) or "none"
            self._problem_at(
                _where_path(step.where),
                f"((.:{name})) is used here, but no earlier load_var step in job {job!r} sets "
                f"it (local vars set so far: {known}); an across var is only known inside "
                "its own step",
            )

    # ------------------------------------------------------------ mappings and lists

    def _entries(self, node: Node, path: str, what: str) -> _Pairs | None:
        """The keys of a mapping node, with ``<<`` merges applied; duplicates are problems."""
        self._nodes.setdefault(path, node)
        if not isinstance(node, MappingNode):
            self._expected(node, path, f"{what} (a mapping)")
            return None
        pairs: _Pairs = {}
        merged: _Pairs = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    # Earlier merged mappings win over later ones, explicit keys over all.
                    for name, pair in (self._entries(source, path, "a `<<` merge") or {}).items():
                        merged.setdefault(name, pair)
                continue
            key = self._scalar(key_node, path) if isinstance(key_node, ScalarNode) else None
            if key is _INVALID:
                continue
            if not isinstance(key, str):
                self._problem(
                    key_node, path, f"keys in {what} must be strings; found {_describe(key_node)}"
                )
                continue
            if key in pairs:
                self._problem(
                    key_node,
                    _at(path, key),
                    f"key {key!r} appears twice; the first is on line {_line(pairs[key][0])}",
                )
                continue
            pairs[key] = (key_node, value_node)
        for key, pair in merged.items():
            pairs.setdefault(key, pair)
        return pairs

    def _checked(
        self,
        pairs: _Pairs,
        path: str,
        what: str,
        allowed: Sequence[str],
        *,
        also_known: Sequence[str] = (),
        modifiers: Sequence[str] = (),
    ) -> dict[str, Node]:
        """The values of ``pairs``, with a problem for each key outside ``allowed``
        (or ``modifiers``, which messages list apart)."""
        listing = ", ".join(allowed)
        if modifiers:
            listing += f", and the step modifiers {', '.join(modifiers)}"
        allowed = (*allowed, *modifiers)
        for key, (key_node, _) in pairs.items():
            if key in allowed or key in also_known:
                continue
            reason = _REFUSED.get(key)
            if reason is not None:
                message = f"key {key!r} in {what} is not supported: {reason}; supported: {listing}"
            else:
                message = f"unknown key {key!r} in {what}; supported: {listing}"
            self._problem(key_node, _at(path, key), message)
        values = {}
        for key, (_, value_node) in pairs.items():
            self._nodes.setdefault(_at(path, key), value_node)
            values[key] = value_node
        return values

    def _mapping(
        self, node: Node, path: str, what: str, allowed: Sequence[str]
    ) -> dict[str, Node] | None:
        pairs = self._entries(node, path, what)
        return None if pairs is None else self._checked(pairs, path, what, allowed)

    def _required(
        self,
        entries: Mapping[str, Node],
        key: str,
        path: str,
        parent: Node,
        what: str,
        expectation: str,
    ) -> Node | None:
        node = entries.get(key)
        if node is None:
            self._problem(parent, _at(path, key), f"{what} needs `{key}`: {expectation}")
        return node

    def _optional(
        self,
        entries: Mapping[str, Node],
        key: str,
        path: str,
        read: Callable[[Node, str], _T | None],
    ) -> _T | None:
        """``read`` of the value under ``key``; ``None`` if the key is absent or null."""
        node = _present(entries, key)
        return None if node is None else read(node, _at(path, key))

    def _list(
        self, node: Node | None, path: str, read: Callable[[Node, str], _T | None]
    ) -> list[_T]:
        if node is None:
            return []
        self._nodes.setdefault(path, node)
        if not isinstance(node, SequenceNode):
            self._expected(node, path, "a list")
            return []
        items = (read(child, f"{path}[{i}]") for i, child in enumerate(node.value))
        return [item for item in items if item is not None]

    # ------------------------------------------------------------ scalars

    def _scalar(self, node: ScalarNode, path: str) -> object:
        """The Python value of a scalar as JSON would hold it, or ``_INVALID``."""
        if isinstance(node, _VarScalar):
            return node.data
        if node.tag in (_STR_TAG, _TIMESTAMP_TAG):
            # A timestamp stays as written: Concourse hands such values on as strings.
            return node.value
        if node.tag not in _JSON_TAGS:
            message = f"YAML tag {node.tag!r} is not supported; write a plain value"
            self._problem(node, path, message)
            return _INVALID
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError):
            tag = node.tag.removeprefix(_TAG)
            self._problem(node, path, f"{node.value!r} is not a valid {tag}")
            return _INVALID

    def _value(self, node: Node, path: str) -> object:
        """A scalar's value; ``_INVALID`` if reported already; a collection node as it is."""
        self._nodes.setdefault(path, node)
        return self._scalar(node, path) if isinstance(node, ScalarNode) else node

    def _string(self, node: Node, path: str, *, nonempty: bool = False) -> str | None:
        value = self._value(node, path)
        if value is _INVALID:
            return None
        if isinstance(value, str):
            if nonempty and not value.strip():
                self._problem(node, path, "expected a name, found an empty string")
                return None
            return value
        self._expected(node, path, "a string")
        return None

    def _name_string(self, node: Node, path: str) -> str | None:
        return self._string(node, path, nonempty=True)

    def _required_string(
        self, entries: Mapping[str, Node], key: str, path: str, parent: Node, what: str
    ) -> str | None:
        node = self._required(entries, key, path, parent, what, "a string")
        return None if node is None else self._name_string(node, _at(path, key))

    def _name(
        self,
        entries: Mapping[str, Node],
        path: str,
        parent: Node,
        what: str,
        registry: dict[str, str],
        kind: str,
    ) -> str | None:
        """The ``name`` of a resource, resource type or job; a repeated name is a problem."""
        name = self._required_string(entries, "name", path, parent, what)
        if name is None:
            return None
        first = registry.setdefault(name, path)
        if first != path:
            line = _line(self._nodes[first])
            self._problem_at(
                _at(path, "name"), f"{kind} name {name!r} is already used by {first} (line {line})"
            )
        return name

    def _bool(self, node: Node, path: str) -> bool | None:
        value = self._value(node, path)
        if value is _INVALID:
            return None
        if isinstance(value, bool):
            return value
        self._expected(node, path, "true or false")
        return None

    def _positive_int(self, node: Node, path: str) -> int | None:
        value = self._value(node, path)
        if value is _INVALID:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        self._expected(node, path, "a whole number of at least 1")
        return None

    def _strings(self, node: Node, path: str) -> tuple[str, ...] | None:
        self._nodes.setdefault(path, node)
        if not isinstance(node, SequenceNode):
            hint = ""
            if isinstance(node, ScalarNode):
                hint = f"; write a one-item list: [{node.value}]"
            self._expected(node, path, "a list of strings", hint=hint)
            return None
        items = [self._string(child, f"{path}[{i}]") for i, child in enumerate(node.value)]
        return tuple(item for item in items if item is not None)

    def _put_inputs(self, node: Node, path: str) -> str | tuple[str, ...] | None:
        if isinstance(node, SequenceNode):
            return self._strings(node, path)
        value = self._value(node, path)
        if value is _INVALID:
            return None
        if value in ("all", "detect"):
            return str(value)
        self._expected(node, path, "'all', 'detect' or a list of artifact names")
        return None

    def _version(self, node: Node, path: str) -> str | Mapping[str, str] | None:
        if isinstance(node, MappingNode):
            version = self._plain(node, path)
            fields = {}
            for key, value in version.items():
                if isinstance(value, Mapping | list):
                    self._problem_at(path, f"version field {key!r} must be a plain value")
                else:
                    fields[key] = _stringify(value)
            return fields
        value = self._value(node, path)
        if value is _INVALID:
            return None
        if value in ("latest", "every"):
            return str(value)
        self._expected(node, path, "'latest', 'every' or a mapping naming one version")
        return None

    # ------------------------------------------------------------ opaque values

    def _plain(self, node: Node, path: str) -> Any:
        """A node as plain JSON-like Python data (for ``source`` and ``params``)."""
        if isinstance(node, MappingNode):
            pairs = self._entries(node, path, "a mapping") or {}
            return {key: self._plain(value, _at(path, key)) for key, (_, value) in pairs.items()}
        if isinstance(node, SequenceNode):
            return [self._plain(child, f"{path}[{i}]") for i, child in enumerate(node.value)]
        value = self._scalar(node, path) if isinstance(node, ScalarNode) else None
        return None if value is _INVALID else value

    def _opaque(self, node: Node | None, path: str) -> dict[str, Any]:
        """A ``source`` or get/put ``params``: any mapping, handed on as it is."""
        if node is None:
            return {}
        if not isinstance(node, MappingNode):
            self._expected(node, path, "a mapping")
            return {}
        result: dict[str, Any] = self._plain(node, path)
        return result

    def _env(self, node: Node | None, path: str) -> dict[str, str]:
        """Task ``params``: strings, as Concourse makes them (scalars as written, else JSON)."""
        values = self._opaque(node, path)
        return {
            key: _stringify(value)
            if not isinstance(value, Mapping | list)
            else json.dumps(value, sort_keys=True, separators=(",", ":"))
            for key, value in values.items()
        }

    # ------------------------------------------------------------ problems

    def _expected(self, node: Node, path: str, expectation: str, *, hint: str = "") -> None:
        self._problem(node, path, f"expected {expectation}, found {_describe(node)}{hint}")

    def _problem(self, node: Node, path: str, message: str) -> None:
        self.problems.append(
            Problem(path=path, message=message, line=_line(node), column=_column(node))
        )

    def _problem_at(self, path: str, message: str) -> None:
        node = self._nodes.get(path)
        line = column = None
        if node is not None:
            line, column = _line(node), _column(node)
        self.problems.append(Problem(path=path, message=message, line=line, column=column))


# ---------------------------------------------------------------- small helpers

_T = TypeVar("_T")
_Pairs: TypeAlias = dict[str, tuple[Node, Node]]
"""Key → (key node, value node) of a mapping, in document order."""


def _line(node: Node) -> int | None:
    return node.start_mark.line + 1 if node.start_mark is not None else None


def _column(node: Node) -> int | None:
    return node.start_mark.column + 1 if node.start_mark is not None else None


def _at(path: str, key: str) -> str:
    return key if path == _ROOT else f"{path}.{key}"


def _key_text(node: Node) -> str:
    return str(node.value) if isinstance(node, ScalarNode) else "?"


def _where(path: str, node: Node) -> Where:
    return Where(path=path, line=_line(node))


def _where_path(where: Where | None) -> str:
    return where.path if where is not None else _ROOT


def _is_null(node: Node) -> bool:
    if isinstance(node, _VarScalar):
        return node.data is None
    return isinstance(node, ScalarNode) and node.tag == _TAG + "null"


def _present(entries: Mapping[str, Node], key: str) -> Node | None:
    """The value under ``key``, or ``None`` if absent or null (Go's zero value, as in Concourse)."""
    node = entries.get(key)
    return None if node is None or _is_null(node) else node


def _job_steps(job: Job) -> tuple[Step, ...]:
    """A job's plan and its hooks: every step a build of it may run."""
    return (*job.plan, *(step for _, step in job.hooks.items()))


def children(step: Step) -> tuple[Step, ...]:
    """The steps directly inside ``step`` (not its hooks)."""
    if isinstance(step, InParallelStep | DoStep | AcrossStep):
        return step.steps
    if isinstance(step, TryStep):
        return (step.step,)
    return ()


def _walk(steps: Sequence[Step], *, first_copy_only: bool = False) -> Iterator[Step]:
    """Every step, depth first: composites, their children, and every hook.

    ``first_copy_only``: of an across step, only its first copy (what Concourse validates:
    the step as written).
    """
    for step in steps:
        yield step
        inner = children(step)
        if first_copy_only and isinstance(step, AcrossStep):
            inner = inner[:1]
        yield from _walk(inner, first_copy_only=first_copy_only)
        yield from _walk([hook for _, hook in step.hooks.items()], first_copy_only=first_copy_only)


def _resources_used(job: Job) -> set[str]:
    return {s.resource for s in _walk(_job_steps(job)) if isinstance(s, GetStep | PutStep)}


def _declared_outputs(step: TaskStep) -> list[str]:
    """The outputs a task step's inline config declares, or those it maps (a task file's)."""
    if step.config is not None:
        return [o.name for o in step.config.outputs]
    return list(step.output_mapping)


def _strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings_in(key)
            yield from _strings_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings_in(item)


def _local_refs(step: Step) -> Iterator[str]:
    """The names of the local vars (``((.:name))``) a get, put, task, load_var or
    set_pipeline step uses, where JetBridge fills them: in its strings, at run time."""
    values: list[Any] = []
    if isinstance(step, GetStep | PutStep):
        values = [step.params]
    elif isinstance(step, TaskStep):
        values = [step.params, step.vars, step.file, step.image]
        if step.config is not None:
            run = step.config.run
            values += [run.path, run.args, run.dir, run.user, step.config.params]
    elif isinstance(step, LoadVarStep):
        values = [step.file]
    elif isinstance(step, SetPipelineStep):
        values = [step.file, step.vars, step.var_files]
    for text in _strings_in(values):
        for match in LOCAL_VAR.finditer(text):
            yield match.group(1)


def _field(value: Any, fields: str) -> tuple[bool, Any]:
    """``value`` followed through ``.a.b`` (as written after a var's name)."""
    for name in [f for f in fields.split(".") if f]:
        if not isinstance(value, Mapping) or name not in value:
            return False, None
        value = value[name]
    return True, value


def _cycle_through(start: str, edges: Mapping[str, Mapping[str, str]]) -> list[str] | None:
    """The shortest cycle of ``edges`` from ``start`` back to it, as a list of nodes."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in edges.get(node, {}):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return list(reversed(path))
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return None


@dataclass(frozen=True)
class _Flow:
    """What the steps so far have made, as the next step sees it."""

    artifacts: Mapping[str, str] = field(default_factory=dict)
    """Artifact name → path of the step that made it (the latest)."""
    anything: bool = False
    """A task read its config from a file: it may have made any name."""
    local_vars: Mapping[str, str] = field(default_factory=dict)
    """Local var → path of the load_var that set it."""

    def with_artifacts(self, made: Mapping[str, str]) -> _Flow:
        return replace(self, artifacts={**self.artifacts, **made})

    def merged(self, other: _Flow) -> _Flow:
        return _Flow(
            artifacts={**self.artifacts, **other.artifacts},
            anything=self.anything or other.anything,
            local_vars={**self.local_vars, **other.local_vars},
        )


#: What a local var may be called: a name Concourse accepts as an identifier.
_VAR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def _stringify(value: object) -> str:
    """A scalar as Concourse renders it in a string: ``true``, ``1``, ``1.5``; null is ``""``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # Concourse goes through JSON, where 2.0 is written 2.
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    return str(value)


def _python_kind(value: object) -> str:
    """What a value is, for messages: ``a string ('main')``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({_stringify(value)})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({_stringify(value)})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


_DESCRIBER = SafeConstructor()


def _describe(node: Node) -> str:
    """What a node holds, for messages; names the var a value came from."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, _VarScalar):
        return f"{_python_kind(node.data)} from (({node.ref}))"
    if node.tag in _JSON_TAGS:
        try:
            return _python_kind(_DESCRIBER.construct_object(node))
        except (yaml.YAMLError, ValueError):
            pass
    return _python_kind(str(node.value))


def _unknown_type(
    what: str, type_: str, declared: Sequence[str], known: Iterable[str] = BUILTIN_RESOURCE_TYPES
) -> str:
    builtin = ", ".join(sorted(known))
    listed = f" (declared: {', '.join(declared)})" if declared else ""
    return (
        f"{what} has type {type_!r}, which is neither built in ({builtin}) nor declared "
        f"under resource_types{listed}"
    )


def _yaml_reason(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError):
        reason = error.problem or "invalid YAML"
        if error.context and error.context_mark is not None:
            reason += f" ({error.context} on line {error.context_mark.line + 1})"
        elif error.context:
            reason += f" ({error.context})"
        return reason
    return str(error)


def _syntax_problem(error: yaml.YAMLError, text: str) -> Problem:
    """A YAML syntax error as a problem with its line."""
    line = column = None
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        line, column = error.problem_mark.line + 1, error.problem_mark.column + 1
    elif isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
    message = f"invalid YAML: {_yaml_reason(error)}"
    return Problem(path=_ROOT, message=message, line=line, column=column)
