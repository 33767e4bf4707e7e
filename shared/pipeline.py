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
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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

    @property
    def image(self) -> str:
        """The image reference a pod would use: ``repository[:tag]``."""
        repo = str(self.source.get("repository", ""))
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
class GetStep:
    get: str
    """The name the fetched artifact goes by in the build."""
    resource: str
    """The resource fetched; defaults to ``get``."""
    trigger: bool = False
    passed: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    version: str | Mapping[str, str] | None = None
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class PutStep:
    put: str
    resource: str
    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: str | tuple[str, ...] = "all"
    """``all`` (every artifact so far), ``detect`` (treated as ``all``) or a list of names."""
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class TaskStep:
    task: str
    config: TaskConfig
    params: Mapping[str, str] = field(default_factory=dict)
    """Step-level params, overriding the config's."""
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class InParallelStep:
    steps: tuple[Step, ...]
    limit: int | None = None
    fail_fast: bool = False
    where: Where | None = field(default=None, compare=False)


Step: TypeAlias = GetStep | PutStep | TaskStep | InParallelStep


@dataclass(frozen=True, kw_only=True)
class Job:
    name: str
    plan: tuple[Step, ...]
    serial: bool = False
    serial_groups: tuple[str, ...] = ()
    max_in_flight: int | None = None
    public: bool = False
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


# ---------------------------------------------------------------- the supported subset

#: Resource types a pipeline may use without declaring them under ``resource_types``:
#: the ones JetBridge ships scripts for (``shared/resources/``).
BUILTIN_RESOURCE_TYPES = frozenset({"git"})

#: Types a task's ``image_resource`` may have: both name an OCI image by ``source.repository``.
IMAGE_RESOURCE_TYPES = ("registry-image", "docker-image")

STEP_KINDS = ("get", "put", "task", "in_parallel")

# The keys accepted at each place, in the order docs/pipelines.md lists them (messages
# list them in this order too, so a reader can match the two).
_TOP_KEYS = ("resources", "resource_types", "jobs")
_RESOURCE_KEYS = ("name", "type", "source", "check_every", "webhook_token", "icon")
_RESOURCE_TYPE_KEYS = ("name", "type", "source")
_JOB_KEYS = ("name", "plan", "serial", "serial_groups", "max_in_flight", "public")
_GET_KEYS = ("get", "resource", "trigger", "passed", "params", "version")
_PUT_KEYS = ("put", "resource", "params", "inputs")
_TASK_KEYS = ("task", "config", "params")
_IN_PARALLEL_KEYS = ("in_parallel",)
_IN_PARALLEL_CONFIG_KEYS = ("steps", "limit", "fail_fast")
_CONFIG_KEYS = ("platform", "image_resource", "inputs", "outputs", "params", "run")
_IMAGE_KEYS = ("type", "source")
_INPUT_KEYS = ("name", "path", "optional")
_OUTPUT_KEYS = ("name", "path")
_RUN_KEYS = ("path", "args", "dir", "user")

_HOOKS = "step and job hooks are not supported yet"

# Concourse keys JetBridge knows and refuses, with the reason its message gives. A key
# missing here is still refused, just without a reason.
_REFUSED: Mapping[str, str] = {
    "groups": "JetBridge has no web UI to group jobs in",
    "display": "JetBridge has no web UI to show a background image in",
    "var_sources": "credential managers are not supported; give the values as vars",
    "on_success": _HOOKS,
    "on_failure": _HOOKS,
    "on_error": _HOOKS,
    "on_abort": _HOOKS,
    "ensure": _HOOKS,
    "timeout": "timeouts are not supported yet",
    "attempts": "retries are not supported yet",
    "tags": "worker tags mean nothing here: every step runs as a pod on the cluster",
    "image": "name the task's image under config.image_resource",
    "privileged": "steps run as unprivileged pods",
    "input_mapping": "artifacts are matched by name: name the task's inputs after them",
    "output_mapping": "artifacts are matched by name: name the task's outputs as later steps need",
    "vars": "task files are not supported, so there is nothing to give vars to",
}

# Concourse step kinds outside the subset.
_REFUSED_STEP_KINDS = ("do", "try", "set_pipeline", "load_var", "across")

_TASK_FILE = "task `file:` is not supported yet; inline the config under `config:`"

# A Go duration as Concourse's check_every takes it ("1m", "1h30m", "500ms"), or "never".
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+|never")

# Path of a problem that belongs to the whole document rather than a key in it.
_ROOT = "(root)"

_TAG = "tag:yaml.org,2002:"
_STR_TAG = _TAG + "str"
_MERGE_TAG = _TAG + "merge"
_TIMESTAMP_TAG = _TAG + "timestamp"
# Scalar tags whose values are plain JSON: anything else (binary, custom ``!tags``) is refused.
_JSON_TAGS = frozenset(_TAG + t for t in ("str", "null", "bool", "int", "float"))


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
        problems.sort(key=lambda p: (p.line is None, p.line or 0, p.column or 0))
        raise PipelineError(problems, source=source)
    assert pipeline is not None, "a pipeline with no problems is always built"
    return pipeline


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
        if name is None or type_ is None:
            return None
        return Resource(
            name=name,
            type=type_,
            source=source,
            check_every=check_every,
            webhook_token=webhook_token,
            icon=icon,
            where=_where(path, node),
        )

    def _job(self, node: Node, path: str) -> Job | None:
        what = "a job"
        before = len(self.problems)
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
        if name is None:
            return None
        job = Job(
            name=name,
            plan=tuple(plan),
            serial=bool(serial),
            serial_groups=serial_groups or (),
            max_in_flight=max_in_flight,
            public=bool(public),
            where=_where(path, node),
        )
        if len(self.problems) == before:
            # Only a job read cleanly is checked for artifacts: a step that failed to
            # read may have produced what a later step needs, and guessing would only
            # add noise to the problem that is already reported.
            self._complete_jobs.setdefault(name, job)
            self._check_artifacts(job)
        for step in _flatten(job.plan):
            if isinstance(step, GetStep | PutStep):
                self._check_resource_ref(step)
        return job

    # ------------------------------------------------------------ steps

    def _step(self, node: Node, path: str) -> Step | None:
        pairs = self._entries(node, path, "a step")
        if pairs is None:
            return None
        kinds = [k for k in STEP_KINDS if k in pairs]
        if len(kinds) == 1:
            kind = kinds[0]
            if kind == "get":
                return self._get(node, pairs, path)
            if kind == "put":
                return self._put(node, pairs, path)
            if kind == "task":
                return self._task(node, pairs, path)
            return self._in_parallel(node, pairs, path)
        one_of = ", ".join(STEP_KINDS)
        refused = [k for k in pairs if k in _REFUSED_STEP_KINDS]
        if kinds:
            found = " and ".join(repr(k) for k in kinds)
            message = f"a step needs exactly one of {one_of}; this one has {found}"
        elif refused:
            message = f"{refused[0]!r} steps are not supported yet; a step needs one of {one_of}"
        else:
            keys = ", ".join(pairs) or "none"
            message = f"a step needs exactly one of {one_of}; found keys: {keys}"
        self._problem(node, path, message)
        return None

    def _get(self, node: Node, pairs: _Pairs, path: str) -> GetStep | None:
        entries = self._checked(pairs, path, "a get step", _GET_KEYS)
        get = self._string(entries["get"], _at(path, "get"), nonempty=True)
        resource = self._optional(entries, "resource", path, self._name_string) or get
        trigger = self._optional(entries, "trigger", path, self._bool)
        passed = self._optional(entries, "passed", path, self._strings)
        params = self._opaque(_present(entries, "params"), _at(path, "params"))
        version_node = _present(entries, "version")
        version = None
        if version_node is not None:
            version = self._version(version_node, _at(path, "version"))
        if get is None or resource is None:
            return None
        return GetStep(
            get=get,
            resource=resource,
            trigger=bool(trigger),
            passed=passed or (),
            params=params,
            version=version,
            where=_where(path, node),
        )

    def _put(self, node: Node, pairs: _Pairs, path: str) -> PutStep | None:
        entries = self._checked(pairs, path, "a put step", _PUT_KEYS)
        put = self._string(entries["put"], _at(path, "put"), nonempty=True)
        resource = self._optional(entries, "resource", path, self._name_string) or put
        params = self._opaque(_present(entries, "params"), _at(path, "params"))
        inputs_node = _present(entries, "inputs")
        inputs = None
        if inputs_node is not None:
            inputs = self._put_inputs(inputs_node, _at(path, "inputs"))
        if put is None or resource is None:
            return None
        return PutStep(
            put=put,
            resource=resource,
            params=params,
            inputs="all" if inputs is None else inputs,
            where=_where(path, node),
        )

    def _task(self, node: Node, pairs: _Pairs, path: str) -> TaskStep | None:
        what = "a task step"
        has_file = "file" in pairs
        if has_file:
            self._problem(pairs["file"][0], _at(path, "file"), _TASK_FILE)
        entries = self._checked(pairs, path, what, _TASK_KEYS, also_known=("file",))
        task = self._string(entries["task"], _at(path, "task"), nonempty=True)
        config: TaskConfig | None = None
        if has_file:
            if "config" in entries:
                config = self._config(entries["config"], _at(path, "config"))
        else:
            config_node = self._required(entries, "config", path, node, what, "a task config")
            if config_node is not None:
                config = self._config(config_node, _at(path, "config"))
        params = self._env(_present(entries, "params"), _at(path, "params"))
        if task is None or config is None:
            return None
        return TaskStep(task=task, config=config, params=params, where=_where(path, node))

    def _in_parallel(self, node: Node, pairs: _Pairs, path: str) -> InParallelStep | None:
        entries = self._checked(pairs, path, "an in_parallel step", _IN_PARALLEL_KEYS)
        value = entries["in_parallel"]
        here = _at(path, "in_parallel")
        if isinstance(value, SequenceNode):
            steps: list[Step] = self._list(value, here, self._step)
            return InParallelStep(steps=tuple(steps), where=_where(path, node))
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
            steps=tuple(steps), limit=limit, fail_fast=bool(fail_fast), where=_where(path, node)
        )

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
        if type_ is None:
            return None
        return ImageResource(type=type_, source=source)

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
        """Inputs and outputs are separate mounts: each needs a name and a path of its own."""
        names: dict[tuple[str, str], str] = {}
        mounts: dict[str, str] = {}
        declared = [("inputs", i, x.name, x.mount) for i, x in enumerate(inputs)]
        declared += [("outputs", i, x.name, x.mount) for i, x in enumerate(outputs)]
        for kind, index, name, mount in declared:
            here = f"{path}.{kind}[{index}]"
            first = names.setdefault((kind, name), here)
            if first != here:
                self._problem_at(here, f"{kind[:-1]} {name!r} is declared twice; first at {first}")
                continue
            first = mounts.setdefault(mount, here)
            if first == here:
                continue
            if kind == "outputs" and ".inputs[" in first:
                message = (
                    f"output {name!r} would be mounted at {mount!r}, where {first} mounts an "
                    "input; inputs are read-only in JetBridge, so give the output its own path"
                )
            else:
                message = f"path {mount!r} is already used by {first}"
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

    def _check_passed(self, job: Job) -> None:
        for step in _flatten(job.plan):
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

    def _check_artifacts(self, job: Job) -> None:
        """Every task input is produced by an earlier step (the artifact-naming rules)."""
        available: dict[str, None] = {}
        for step in job.plan:
            available.update(dict.fromkeys(self._produce(step, available, job.name)))

    def _produce(self, step: Step, available: Mapping[str, None], job: str) -> list[str]:
        """Check ``step``'s inputs against ``available``; return the artifacts it produces."""
        earlier = ", ".join(available) or "nothing"
        base = _where_path(step.where)
        if isinstance(step, GetStep):
            return [step.get]
        if isinstance(step, PutStep):
            if isinstance(step.inputs, tuple):
                for index, name in enumerate(step.inputs):
                    if name not in available:
                        self._problem_at(
                            f"{base}.inputs[{index}]",
                            f"put {step.put!r} lists input {name!r} but no earlier step in job "
                            f"{job!r} produces it; earlier steps produce: {earlier}",
                        )
            return []
        if isinstance(step, TaskStep):
            for index, task_input in enumerate(step.config.inputs):
                if task_input.optional or task_input.name in available:
                    continue
                self._problem_at(
                    f"{base}.config.inputs[{index}]",
                    f"task {step.task!r} needs input {task_input.name!r} but no earlier step in "
                    f"job {job!r} produces it; earlier steps produce: {earlier}",
                )
            return [output.name for output in step.config.outputs]
        # in_parallel: every child sees what came before it, none sees its siblings'.
        produced: dict[str, str] = {}
        for child in step.steps:
            for name in self._produce(child, available, job):
                first = produced.setdefault(name, _where_path(child.where))
                if first != _where_path(child.where):
                    self._problem_at(
                        _where_path(child.where),
                        f"artifact {name!r} is produced by both {first} and this step, which "
                        "run in parallel; give one of them another name",
                    )
        return list(produced)

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
    ) -> dict[str, Node]:
        """The values of ``pairs``, with a problem for each key outside ``allowed``."""
        listing = ", ".join(allowed)
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


def _flatten(steps: Sequence[Step]) -> Iterator[Step]:
    """Every step, with the children of each in_parallel in place of it."""
    for step in steps:
        if isinstance(step, InParallelStep):
            yield from _flatten(step.steps)
        else:
            yield step


def _resources_used(job: Job) -> set[str]:
    return {s.resource for s in _flatten(job.plan) if isinstance(s, GetStep | PutStep)}


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
