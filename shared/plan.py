"""The plan: a job's steps compiled into a graph of pod-sized steps with dependencies.

Pure. Concourse runs a job's plan in sequence and the children of ``in_parallel``
side by side; here that becomes, for every step, the set of steps it waits for.
Artifacts are named within a build (a ``get`` makes one named after itself, a
task one per output), and each input is bound now to the step that produces it,
so the step runner only has to look up that step's artifact.

A ``StepSpec`` is everything needed to build a step's pod later; it is stored
with the step as JSON so a build keeps running the plan it started with even if
the pipeline changes under it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from shared.pipeline import (
    GetStep,
    InParallelStep,
    Job,
    Pipeline,
    PutStep,
    Step,
    TaskStep,
)

#: Where the built-in resource types live in the resource image: one folder per
#: type holding ``check``, ``in`` and ``out``. Custom types use Concourse's ``/opt/resource``.
BUILTIN_TYPES_PATH = "/opt/resource-types"
CUSTOM_TYPE_PATH = "/opt/resource"

#: The environment variable that carries a resource request (source, version, params) into
#: a get or put pod: pods have no stdin, so the wrapper pipes it into the script.
REQUEST_ENV = "JETBRIDGE_REQUEST"
#: Kubernetes' default ``terminationMessagePath``: a resource script's answer goes there.
TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True, kw_only=True)
class InputBinding:
    """An artifact a step reads: which step made it and where the step sees it."""

    name: str
    """The artifact's name in the build."""
    producer: str
    """Key of the step that produces it."""
    mount: str
    """Path relative to the working directory."""


@dataclass(frozen=True, kw_only=True)
class OutputBinding:
    name: str
    mount: str


@dataclass(frozen=True, kw_only=True)
class ResourceCall:
    """A get or put: which resource script runs with what request."""

    resource: str
    type: str
    source: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    version: Mapping[str, Any] | None = None
    image: str | None = None
    """Image of a custom resource type; ``None`` for built-in types (the resource image)."""


@dataclass(frozen=True, kw_only=True)
class StepSpec:
    """One step of a build: what its pod runs and what it reads and writes."""

    key: str
    name: str
    kind: str
    """``check``, ``get``, ``task`` or ``put``."""
    depends_on: tuple[str, ...] = ()
    image: str = ""
    """The task's image (``image_resource``); empty for get and put (the resource image)."""
    command: tuple[str, ...] = ()
    dir: str | None = None
    """Working directory relative to the build's working directory (``run.dir``)."""
    env: Mapping[str, str] = field(default_factory=dict)
    inputs: tuple[InputBinding, ...] = ()
    outputs: tuple[OutputBinding, ...] = ()
    resource: ResourceCall | None = None
    version_from: str | None = None
    """Key of the ``check`` step whose newest version this get fetches (no version pinned)."""
    timeout_seconds: int | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict, the form stored with the step."""
        data: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepSpec:
        resource = data.get("resource")
        return cls(
            key=data["key"],
            name=data["name"],
            kind=data["kind"],
            depends_on=tuple(data.get("depends_on", ())),
            image=data.get("image", ""),
            command=tuple(data.get("command", ())),
            dir=data.get("dir"),
            env=dict(data.get("env", {})),
            inputs=tuple(InputBinding(**i) for i in data.get("inputs", ())),
            outputs=tuple(OutputBinding(**o) for o in data.get("outputs", ())),
            resource=ResourceCall(**resource) if resource else None,
            version_from=data.get("version_from"),
            timeout_seconds=data.get("timeout_seconds"),
        )


def compile_plan(
    pipeline: Pipeline, job_name: str, *, versions: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[StepSpec, ...]:
    """The steps of one build of ``job_name``, in plan order, each with what it waits for.

    ``versions`` pins a ``get`` (by its name) to a resource version, as a webhook
    pins a build to the pushed commit.
    """
    job = pipeline.job(job_name)
    compiler = _Compiler(pipeline, job, dict(versions or {}))
    deps: tuple[str, ...] = ()
    produced: dict[str, str] = {}
    for index, step in enumerate(job.plan):
        deps, produced = compiler.compile(step, str(index), deps, produced)
    return tuple(compiler.steps)


class _Compiler:
    def __init__(
        self, pipeline: Pipeline, job: Job, versions: dict[str, Mapping[str, Any]]
    ) -> None:
        self.pipeline = pipeline
        self.job = job
        self.versions = versions
        self.steps: list[StepSpec] = []

    def compile(
        self, step: Step, key: str, deps: tuple[str, ...], produced: dict[str, str]
    ) -> tuple[tuple[str, ...], dict[str, str]]:
        """Add ``step`` after ``deps``; return the keys that end it and the artifacts known after it."""
        if isinstance(step, InParallelStep):
            leaves: list[str] = []
            after = dict(produced)
            for index, child in enumerate(step.steps):
                # Siblings see only what came before the in_parallel, never each other.
                child_leaves, child_produced = self.compile(child, f"{key}.{index}", deps, produced)
                leaves.extend(child_leaves)
                after.update({n: p for n, p in child_produced.items() if produced.get(n) != p})
            return (tuple(leaves) or deps), after
        if isinstance(step, GetStep):
            spec = self._get(step, key, deps)
            if spec.version_from is not None:
                # Concourse checks before it gets: find the newest version first.
                self.steps.append(self._check(step, spec.version_from, deps))
                spec = replace(spec, depends_on=(spec.version_from,))
        elif isinstance(step, PutStep):
            spec = self._put(step, key, deps, produced)
        else:
            spec = self._task(step, key, deps, produced)
        self.steps.append(spec)
        after = dict(produced)
        after.update({o.name: key for o in spec.outputs})
        return (key,), after

    def _resource(self, name: str, params: Mapping[str, Any], version: Any) -> ResourceCall:
        resource = self.pipeline.resource(name)
        custom = next((t for t in self.pipeline.resource_types if t.name == resource.type), None)
        return ResourceCall(
            resource=name,
            type=resource.type,
            source=dict(resource.source),
            params=dict(params),
            version=dict(version) if isinstance(version, Mapping) else None,
            image=_image_of(custom.source) if custom else None,
        )

    def _script(self, call: ResourceCall, verb: str) -> str:
        folder = CUSTOM_TYPE_PATH if call.image else f"{BUILTIN_TYPES_PATH}/{call.type}"
        return f"{folder}/{verb}"

    def _get(self, step: GetStep, key: str, deps: tuple[str, ...]) -> StepSpec:
        version = self.versions.get(step.get)
        if version is None and isinstance(step.version, Mapping):
            version = step.version
        call = self._resource(step.resource, step.params, version)
        return StepSpec(
            key=key,
            name=step.get,
            kind="get",
            depends_on=deps,
            version_from=None if call.version is not None else f"{key}:check",
            command=_resource_command(self._script(call, "in"), step.get),
            env={REQUEST_ENV: _request(call)},
            outputs=(OutputBinding(name=step.get, mount=step.get),),
            resource=call,
        )

    def _check(self, step: GetStep, key: str, deps: tuple[str, ...]) -> StepSpec:
        call = self._resource(step.resource, {}, None)
        return StepSpec(
            key=key,
            name=step.get,
            kind="check",
            depends_on=deps,
            command=_resource_command(self._script(call, "check"), "."),
            env={REQUEST_ENV: _request(call, with_params=False)},
            resource=call,
        )

    def _put(
        self, step: PutStep, key: str, deps: tuple[str, ...], produced: Mapping[str, str]
    ) -> StepSpec:
        if isinstance(step.inputs, str):  # "all" or "detect": every artifact so far
            names = sorted(produced)
        else:
            names = [n for n in step.inputs if n in produced]
        call = self._resource(step.resource, step.params, None)
        return StepSpec(
            key=key,
            name=step.put,
            kind="put",
            depends_on=deps,
            command=_resource_command(self._script(call, "out"), "."),
            env={REQUEST_ENV: _request(call)},
            inputs=tuple(InputBinding(name=n, producer=produced[n], mount=n) for n in names),
            resource=call,
        )

    def _task(
        self, step: TaskStep, key: str, deps: tuple[str, ...], produced: Mapping[str, str]
    ) -> StepSpec:
        config = step.config
        inputs = tuple(
            InputBinding(name=i.name, producer=produced[i.name], mount=i.mount)
            for i in config.inputs
            if i.name in produced  # an optional input nobody made is simply absent
        )
        env = {**config.params, **step.params}
        return StepSpec(
            key=key,
            name=step.task,
            kind="task",
            depends_on=deps,
            image=config.image_resource.image if config.image_resource else "",
            command=(config.run.path, *config.run.args),
            dir=config.run.dir,
            env=env,
            inputs=inputs,
            outputs=tuple(OutputBinding(name=o.name, mount=o.mount) for o in config.outputs),
        )


def _image_of(source: Mapping[str, Any]) -> str:
    repo = str(source.get("repository", ""))
    tag = source.get("tag")
    return f"{repo}:{tag}" if tag else repo


def _request(call: ResourceCall, *, with_params: bool = True) -> str:
    """The JSON a resource script reads on stdin."""
    request: dict[str, Any] = {"source": dict(call.source)}
    if with_params:
        request["params"] = dict(call.params)
    if call.version is not None or not with_params:
        request["version"] = dict(call.version) if call.version is not None else None
    return json.dumps(request, sort_keys=True)


def with_version(spec: StepSpec, version: Mapping[str, Any]) -> StepSpec:
    """A get whose version was found by its check step, ready to run."""
    assert spec.resource is not None
    call = replace(spec.resource, version=dict(version))
    return replace(
        spec, resource=call, env={**spec.env, REQUEST_ENV: _request(call)}, version_from=None
    )


def _resource_command(script: str, target: str) -> tuple[str, ...]:
    """A get or put pod's command: pipe the request into the script, its answer into the
    termination message (where the cluster keeps it after the pod ends), its log to stderr."""
    return (
        "/bin/sh",
        "-c",
        f'printf \'%s\' "${REQUEST_ENV}" | "$0" "$1" > "$2"',
        script,
        target,
        TERMINATION_LOG,
    )
