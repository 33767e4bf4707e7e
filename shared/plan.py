"""The plan: a job's steps compiled into pod-sized steps, with the conditions they run on.

Pure. Concourse runs a job's plan as a tree (sequences, ``in_parallel``, ``do``,
``try``, hooks, ``across``); here every leaf of that tree (a get, put or task, and
the few steps the step runner does itself: ``load_var``, ``set_pipeline``) becomes
one ``StepSpec``, and the tree becomes data on each of them:

- ``depends_on``: the steps whose outcome decides this one (for a step in sequence,
  every step of the node before it; for a hook, every step of the node it hangs off);
- ``when``: which outcome of those it runs on (``success``, ``failure``, ``error``,
  ``abort``, ``always``, as Concourse's hooks);
- ``try_scopes``: the ``try`` steps around it (a failure inside one is a success outside);
- ``slots``: its branch of each ``in_parallel``/``across`` around it, with the group's
  ``limit``/``max_in_flight`` and ``fail_fast``;
- ``survives_abort``: it is (inside) an ``ensure``/``on_abort`` hook, so it still runs when
  the build is aborted;
- ``attempts``, ``timeout_seconds``: how often and how long its pod may run.

``shared.conditions`` reads these and decides, from the steps' statuses, what runs,
what is skipped, what is retried and how the build ends. Artifacts are named within a
build and each input is bound now to the step that produces it (with fallbacks where a
task file may have made the name), so the step runner only looks it up.

A ``StepSpec`` is everything needed to run a step later; it is stored with the step as
JSON so a build keeps running the plan it started with even if the pipeline changes
under it. Every field added since the first release has a default, so stored specs of
older builds still read.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from shared.pipeline import (
    HOOK_KEYS,
    IMAGE_RESOURCE_TYPES,
    LOCAL_VAR,
    AcrossStep,
    DoStep,
    GetStep,
    InParallelStep,
    Job,
    LoadVarStep,
    Pipeline,
    PutStep,
    SetPipelineStep,
    Step,
    TaskConfig,
    TaskStep,
    TryStep,
    duration_seconds,
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

#: Kinds of step the step runner does itself, with no pod.
INLINE_KINDS = frozenset({"load_var", "set_pipeline"})

#: What a hook runs on, by hook.
HOOK_WHEN = {
    "on_success": "success",
    "on_failure": "failure",
    "on_abort": "abort",
    "on_error": "error",
    "ensure": "always",
}
#: ``when`` values: the outcome of ``depends_on`` a step runs on.
WHENS = ("success", "failure", "error", "abort", "always")

#: Node label a worker tag becomes when ``tag_labels`` does not name one: nodes that should
#: run steps tagged ``gpu`` carry ``jetbridge.dev/tag-gpu=true``.
TAG_LABEL_PREFIX = "jetbridge.dev/tag-"

#: Name of the private writable copy of the input mounted at a path (``writable_inputs``).
WRITABLE_PREFIX = "writable:"


@dataclass(frozen=True, kw_only=True)
class InputBinding:
    """An artifact a step reads: which step made it and where the step sees it."""

    name: str
    """The artifact's name in the build."""
    producer: str
    """Key of the step that produces it."""
    mount: str
    """Path relative to the working directory."""
    fallbacks: tuple[str, ...] = ()
    """Keys of earlier producers, tried in order when ``producer`` made no artifact of this
    name (a task that read its config from a file may not have)."""

    @property
    def producers(self) -> tuple[str, ...]:
        return (self.producer, *self.fallbacks)


@dataclass(frozen=True, kw_only=True)
class OutputBinding:
    name: str
    mount: str
    from_input: bool = False
    """The output starts as a copy of the input mounted at the same path: a writable input."""
    private: bool = False
    """A private writable copy of an input (``writable_inputs``), not for later steps."""


@dataclass(frozen=True, kw_only=True)
class Slot:
    """A step's branch of an ``in_parallel`` or ``across`` (the group)."""

    group: str
    index: int
    limit: int | None = None
    """How many branches of the group may run at once; ``None``: all."""
    fail_fast: bool = False
    """Once a branch fails, branches not started yet are skipped."""


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
class TaskFile:
    """A task whose config is read from an artifact when the step starts (``file:``)."""

    artifact: InputBinding
    """The artifact holding the file."""
    path: str
    """The file's path inside the artifact."""
    file: str
    """As the pipeline wrote it: ``<artifact>/<path>``."""
    vars: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    """The step's params, over the file's."""
    input_mapping: Mapping[str, str] = field(default_factory=dict)
    output_mapping: Mapping[str, str] = field(default_factory=dict)
    writable_inputs: bool = False
    candidates: tuple[InputBinding, ...] = ()
    """Every artifact the steps before made, by name: what the file's inputs may name."""
    anywhere: tuple[str, ...] = ()
    """Keys of earlier task-file steps, which may have made any name."""


@dataclass(frozen=True, kw_only=True)
class LoadVar:
    name: str
    path: str
    """The file's path inside the artifact (``inputs[0]``)."""
    file: str
    format: str | None = None


@dataclass(frozen=True, kw_only=True)
class SetPipeline:
    name: str
    """The pipeline to set; ``self`` is the one running the build."""
    file: str
    vars: Mapping[str, Any] = field(default_factory=dict)
    var_files: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class StepSpec:
    """One step of a build: what its pod runs, what it reads and writes, and when it runs."""

    key: str
    name: str
    kind: str
    """``check``, ``get``, ``task``, ``put``, ``load_var`` or ``set_pipeline``."""
    depends_on: tuple[str, ...] = ()
    """Steps whose outcome decides whether this one runs (it waits for all of them)."""
    when: str = "success"
    """The outcome of ``depends_on`` it runs on: one of ``WHENS``."""
    try_scopes: tuple[str, ...] = ()
    """Keys of the ``try`` steps it is inside: its failure is a success outside them."""
    slots: tuple[Slot, ...] = ()
    survives_abort: bool = False
    """Inside an ``ensure`` or ``on_abort`` hook: it still runs when the build is aborted."""
    attempts: int = 1
    image: str = ""
    """The task's image (``image_resource``); empty for get and put (the resource image)."""
    image_from: InputBinding | None = None
    """The artifact (a get of a registry-image resource) whose version is the task's image."""
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
    """The step's own ``timeout``; ``None``: the default deadline from settings."""
    tags: tuple[str, ...] = ()
    local_vars: Mapping[str, str] = field(default_factory=dict)
    """Local vars (``((.:name))``) the step uses → key of the load_var step that sets each."""
    task_file: TaskFile | None = None
    load_var: LoadVar | None = None
    set_pipeline: SetPipeline | None = None
    credentials: tuple[str, ...] = ()
    """Values of the pipeline's vars found in the step when its build was planned: they
    reach its pod through the build's Secret even if the pipeline is set again with
    other values before the step starts (they are in ``env`` and ``command`` already)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict, the form stored with the step."""
        data: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        if not self.credentials:
            del data["credentials"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepSpec:
        resource = data.get("resource")
        image_from = data.get("image_from")
        task_file = data.get("task_file")
        load_var = data.get("load_var")
        set_pipeline = data.get("set_pipeline")
        return cls(
            key=data["key"],
            name=data["name"],
            kind=data["kind"],
            depends_on=tuple(data.get("depends_on", ())),
            when=data.get("when", "success"),
            try_scopes=tuple(data.get("try_scopes", ())),
            slots=tuple(Slot(**s) for s in data.get("slots", ())),
            survives_abort=bool(data.get("survives_abort", False)),
            attempts=int(data.get("attempts", 1)),
            image=data.get("image", ""),
            image_from=_binding(image_from) if image_from else None,
            command=tuple(data.get("command", ())),
            dir=data.get("dir"),
            env=dict(data.get("env", {})),
            inputs=tuple(_binding(i) for i in data.get("inputs", ())),
            outputs=tuple(OutputBinding(**o) for o in data.get("outputs", ())),
            resource=ResourceCall(**resource) if resource else None,
            version_from=data.get("version_from"),
            timeout_seconds=data.get("timeout_seconds"),
            tags=tuple(data.get("tags", ())),
            local_vars=dict(data.get("local_vars", {})),
            task_file=_task_file(task_file) if task_file else None,
            load_var=LoadVar(**load_var) if load_var else None,
            set_pipeline=_set_pipeline(set_pipeline) if set_pipeline else None,
            credentials=tuple(data.get("credentials", ())),
        )

    def reads(self) -> tuple[InputBinding, ...]:
        """Every artifact the step may read, one binding per possible producer: its inputs,
        its image, its task file and what that file may ask for (the reaper keeps these)."""
        bindings = list(self.inputs)
        if self.image_from is not None:
            bindings.append(self.image_from)
        if self.task_file is not None:
            bindings += [self.task_file.artifact, *self.task_file.candidates]
            bindings += [
                InputBinding(name=c.name, producer=key, mount=c.mount)
                for key in self.task_file.anywhere
                for c in self.task_file.candidates
            ]
        return tuple(
            replace(b, producer=producer, fallbacks=())
            for b in bindings
            for producer in b.producers
        )


def _binding(data: Mapping[str, Any]) -> InputBinding:
    return InputBinding(
        name=data["name"],
        producer=data["producer"],
        mount=data["mount"],
        fallbacks=tuple(data.get("fallbacks", ())),
    )


def _task_file(data: Mapping[str, Any]) -> TaskFile:
    return TaskFile(
        artifact=_binding(data["artifact"]),
        path=data["path"],
        file=data["file"],
        vars=dict(data.get("vars", {})),
        params=dict(data.get("params", {})),
        input_mapping=dict(data.get("input_mapping", {})),
        output_mapping=dict(data.get("output_mapping", {})),
        writable_inputs=bool(data.get("writable_inputs", False)),
        candidates=tuple(_binding(c) for c in data.get("candidates", ())),
        anywhere=tuple(data.get("anywhere", ())),
    )


def _set_pipeline(data: Mapping[str, Any]) -> SetPipeline:
    return SetPipeline(
        name=data["name"],
        file=data["file"],
        vars=dict(data.get("vars", {})),
        var_files=tuple(data.get("var_files", ())),
    )


# ---------------------------------------------------------------- compiling


def compile_plan(
    pipeline: Pipeline, job_name: str, *, versions: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[StepSpec, ...]:
    """The steps of one build of ``job_name``, in plan order, each with when it runs.

    ``versions`` pins a ``get`` (by its name) to a resource version, as a webhook
    pins a build to the pushed commit.
    """
    job = pipeline.job(job_name)
    compiler = _Compiler(pipeline, job, dict(versions or {}))
    context = _Context()
    plan_leaves: list[str] = []
    for index, step in enumerate(job.plan):
        result = compiler.compile(step, str(index), context)
        plan_leaves += result.leaves
        context = context.after(result)
    # Job hooks hang off the whole plan, as if it were one `do` with these hooks.
    compiler.hooks(job.hooks.items(), "job", context, plan_leaves, context.produced)
    return tuple(compiler.steps)


@dataclass(frozen=True)
class _Produced:
    """Which steps may have made each artifact name, latest first."""

    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    anywhere: tuple[str, ...] = ()
    """Task-file steps so far, latest first: they may have made any name."""

    def lookup(self, name: str) -> tuple[str, ...]:
        return self.names.get(name, self.anywhere)

    def made(self, names: Sequence[str], key: str) -> _Produced:
        return replace(self, names={**self.names, **{n: (key,) for n in names}})

    def file_task(self, key: str) -> _Produced:
        # It may shadow any name made before it.
        names = {n: (key, *keys) for n, keys in self.names.items()}
        return _Produced(names=names, anywhere=(key, *self.anywhere))

    def merged(self, other: _Produced, base: _Produced) -> _Produced:
        """What parallel branches made: ``other``'s changes to ``base``, over ``self``."""
        names = dict(self.names)
        names.update({n: k for n, k in other.names.items() if base.names.get(n) != k})
        anywhere = (*[k for k in other.anywhere if k not in self.anywhere], *self.anywhere)
        return _Produced(names=names, anywhere=anywhere)

    def candidates(self) -> tuple[InputBinding, ...]:
        return tuple(_bind(n, keys, n) for n, keys in sorted(self.names.items()))


@dataclass(frozen=True)
class _Context:
    """Where a step stands: what it hangs off, and the scopes around it."""

    deps: tuple[str, ...] = ()
    when: str = "success"
    produced: _Produced = field(default_factory=_Produced)
    local_vars: Mapping[str, str] = field(default_factory=dict)
    try_scopes: tuple[str, ...] = ()
    slots: tuple[Slot, ...] = ()
    survives_abort: bool = False
    label: str = ""
    """Added to the names of the steps inside an across copy: the copy's values."""

    def after(self, result: _Result) -> _Context:
        """The context of the step that follows a node in sequence."""
        return replace(
            self,
            deps=tuple(result.leaves) or self.deps,
            when="success",
            produced=result.produced,
            local_vars=result.local_vars,
        )


@dataclass(frozen=True)
class _Result:
    leaves: list[str]
    """Every step the node compiled to, hooks included: what decides its outcome."""
    produced: _Produced
    local_vars: Mapping[str, str]


class _Compiler:
    def __init__(
        self, pipeline: Pipeline, job: Job, versions: dict[str, Mapping[str, Any]]
    ) -> None:
        self.pipeline = pipeline
        self.job = job
        self.versions = versions
        self.steps: list[StepSpec] = []

    def compile(self, step: Step, key: str, context: _Context) -> _Result:
        """Add ``step`` (and its hooks) at ``key``; what the steps after it see."""
        core = self._core(step, key, context)
        hooks = step.hooks.items()
        if not hooks:
            return core
        leaves, produced = self.hooks(hooks, key, context, core.leaves, core.produced)
        return _Result(leaves=leaves, produced=produced, local_vars=core.local_vars)

    def hooks(
        self,
        hooks: Sequence[tuple[str, Step]],
        key: str,
        context: _Context,
        leaves: Sequence[str],
        produced: _Produced,
    ) -> tuple[list[str], _Produced]:
        """Hooks in Concourse's nesting order: each hangs off the step and the hooks inside it
        (an ``on_failure`` runs when an ``on_success`` hook failed; ``ensure`` is outermost)."""
        watched = list(leaves)
        after = produced
        by_name = dict(hooks)
        for name in HOOK_KEYS:
            hook = by_name.get(name)
            if hook is None:
                continue
            hook_context = replace(
                context,
                deps=tuple(watched) or context.deps,
                when=HOOK_WHEN[name],
                produced=produced,
                survives_abort=context.survives_abort or name in ("on_abort", "ensure"),
            )
            result = self.compile(hook, f"{key}+{name}", hook_context)
            watched += result.leaves
            if name in ("on_success", "ensure"):  # ran whenever the steps after it run
                after = after.merged(result.produced, produced)
        return watched, after

    def _core(self, step: Step, key: str, context: _Context) -> _Result:
        if isinstance(step, DoStep):
            leaves: list[str] = []
            inner = context
            result = _Result(leaves=[], produced=context.produced, local_vars=context.local_vars)
            for index, child in enumerate(step.steps):
                result = self.compile(child, f"{key}.{index}", inner)
                leaves += result.leaves
                inner = inner.after(result)
            return _Result(leaves=leaves, produced=inner.produced, local_vars=inner.local_vars)
        if isinstance(step, TryStep):
            inside = replace(context, try_scopes=(*context.try_scopes, key))
            return self.compile(step.step, f"{key}.0", inside)
        if isinstance(step, InParallelStep):
            leaves = []
            produced = context.produced
            local_vars = dict(context.local_vars)
            for index, child in enumerate(step.steps):
                slot = Slot(group=key, index=index, limit=step.limit, fail_fast=step.fail_fast)
                branch = replace(context, slots=(*context.slots, slot))
                # Siblings see only what came before the in_parallel, never each other.
                result = self.compile(child, f"{key}.{index}", branch)
                leaves += result.leaves
                produced = produced.merged(result.produced, context.produced)
                local_vars.update(result.local_vars)
            return _Result(leaves=leaves, produced=produced, local_vars=local_vars)
        if isinstance(step, AcrossStep):
            return self._across(step, key, context)
        return self._leaf(step, key, context)

    def _across(self, step: AcrossStep, key: str, context: _Context) -> _Result:
        """One branch per combination, in nested groups: one per var, each with its limit."""
        leaves: list[str] = []
        every = itertools.product(*(range(len(var.values)) for var in step.vars))
        for index, (positions, copy_) in enumerate(zip(every, step.steps, strict=True)):
            slots = tuple(
                Slot(
                    group=f"{key}@" + ".".join(str(p) for p in positions[:depth]),
                    index=positions[depth],
                    limit=var.max_in_flight,
                    fail_fast=step.fail_fast,
                )
                for depth, var in enumerate(step.vars)
            )
            values = ", ".join(_as_text(v) for v in step.combinations[index])
            branch = replace(
                context, slots=(*context.slots, *slots), label=f"{context.label} ({values})"
            )
            leaves += self.compile(copy_, f"{key}.{index}", branch).leaves
        # What a copy makes stays inside it (Concourse: outputs do not leave an across).
        return _Result(leaves=leaves, produced=context.produced, local_vars=context.local_vars)

    # ------------------------------------------------------------ leaves

    def _leaf(self, step: Step, key: str, context: _Context) -> _Result:
        base = StepSpec(
            key=key,
            name="",
            kind="",
            depends_on=context.deps,
            when=context.when,
            try_scopes=context.try_scopes,
            slots=context.slots,
            survives_abort=context.survives_abort,
            attempts=step.attempts,
            timeout_seconds=step.timeout_seconds,
            local_vars={
                n: context.local_vars[n] for n in _local_refs(step) if n in context.local_vars
            },
        )
        if isinstance(step, TaskStep) and step.file is not None:
            # A task file may use any local var set so far: it is read only when it starts.
            base = replace(base, local_vars=dict(context.local_vars))
        produced = context.produced
        local_vars = context.local_vars
        leaves = [key]
        if isinstance(step, GetStep):
            spec = self._get(step, base)
            if spec.version_from is not None:
                # Concourse checks before it gets: find the newest version first.
                check = self._check(step, replace(base, key=spec.version_from))
                self.steps.append(replace(check, name=check.name + context.label))
                spec = replace(spec, depends_on=(check.key,), when="success")
                leaves = [check.key, key]
            produced = produced.made([step.get], key)
        elif isinstance(step, PutStep):
            spec = self._put(step, base, produced)
        elif isinstance(step, TaskStep):
            spec = self._task(step, base, produced)
            made = [o.name for o in spec.outputs if not o.private]
            produced = produced.made(made, key)
            if spec.task_file is not None:
                produced = produced.file_task(key).made(list(step.output_mapping.values()), key)
        elif isinstance(step, LoadVarStep):
            spec = self._load_var(step, base, produced)
            local_vars = {**local_vars, step.load_var: key}
        elif isinstance(step, SetPipelineStep):
            spec = self._set_pipeline(step, base, produced)
        else:  # pragma: no cover - every kind is handled above
            raise TypeError(f"cannot compile {type(step).__name__}")
        if context.label:
            spec = replace(spec, name=spec.name + context.label)
        self.steps.append(spec)
        return _Result(leaves=leaves, produced=produced, local_vars=local_vars)

    def _resource(self, name: str, params: Mapping[str, Any], version: Any) -> ResourceCall:
        resource = self.pipeline.resource(name)
        custom = self.pipeline.resource_type(resource.type)
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

    def _get(self, step: GetStep, base: StepSpec) -> StepSpec:
        version = self.versions.get(step.get)
        if version is None:
            version = self.pipeline.pinned_version(step)
        call = self._resource(step.resource, step.params, version)
        return replace(
            base,
            name=step.get,
            kind="get",
            version_from=None if call.version is not None else f"{base.key}:check",
            command=_resource_command(self._script(call, "in"), step.get),
            env={REQUEST_ENV: _request(call)},
            outputs=(OutputBinding(name=step.get, mount=step.get),),
            resource=call,
            tags=step.tags,
        )

    def _check(self, step: GetStep, base: StepSpec) -> StepSpec:
        call = self._resource(step.resource, {}, None)
        return replace(
            base,
            name=step.get,
            kind="check",
            command=_resource_command(self._script(call, "check"), "."),
            env={REQUEST_ENV: _request(call, with_params=False)},
            resource=call,
            tags=step.tags,
            timeout_seconds=_check_timeout(self.pipeline, step.resource),
            local_vars={},
        )

    def _put(self, step: PutStep, base: StepSpec, produced: _Produced) -> StepSpec:
        if isinstance(step.inputs, str):  # "all" or "detect": every artifact so far
            names = sorted(produced.names)
        else:
            names = [n for n in step.inputs if produced.lookup(n)]
        call = self._resource(step.resource, step.params, None)
        return replace(
            base,
            name=step.put,
            kind="put",
            command=_resource_command(self._script(call, "out"), "."),
            env={REQUEST_ENV: _request(call)},
            inputs=tuple(_bind(n, produced.lookup(n), n) for n in names),
            resource=call,
            tags=step.tags,
        )

    def _task(self, step: TaskStep, base: StepSpec, produced: _Produced) -> StepSpec:
        image_from = None
        if step.image is not None and produced.lookup(step.image):
            image_from = _bind(step.image, produced.lookup(step.image), "")
        spec = replace(base, name=step.task, kind="task", image_from=image_from, tags=step.tags)
        if step.file is not None:
            artifact, _, path = step.file.partition("/")
            task_file = TaskFile(
                artifact=_bind(artifact, produced.lookup(artifact), artifact),
                path=path,
                file=step.file,
                vars=dict(step.vars),
                params=dict(step.params),
                input_mapping=dict(step.input_mapping),
                output_mapping=dict(step.output_mapping),
                writable_inputs=step.writable_inputs,
                candidates=produced.candidates(),
                anywhere=produced.anywhere,
            )
            return replace(spec, env=dict(step.params), task_file=task_file)
        assert step.config is not None, "a task without a file has a config"
        filled, _missing = task_from_config(
            spec,
            step.config,
            params=step.params,
            input_mapping=step.input_mapping,
            output_mapping=step.output_mapping,
            writable_inputs=step.writable_inputs,
            lookup=produced.lookup,
        )
        return filled

    def _load_var(self, step: LoadVarStep, base: StepSpec, produced: _Produced) -> StepSpec:
        artifact, _, path = step.file.partition("/")
        return replace(
            base,
            name=step.load_var,
            kind="load_var",
            inputs=(_bind(artifact, produced.lookup(artifact), artifact),),
            load_var=LoadVar(name=step.load_var, path=path, file=step.file, format=step.format),
        )

    def _set_pipeline(self, step: SetPipelineStep, base: StepSpec, produced: _Produced) -> StepSpec:
        artifacts = dict.fromkeys(f.partition("/")[0] for f in (step.file, *step.var_files))
        return replace(
            base,
            name=step.set_pipeline,
            kind="set_pipeline",
            inputs=tuple(_bind(a, produced.lookup(a), a) for a in artifacts),
            set_pipeline=SetPipeline(
                name=step.set_pipeline,
                file=step.file,
                vars=dict(step.vars),
                var_files=step.var_files,
            ),
        )


def task_from_config(
    spec: StepSpec,
    config: TaskConfig,
    *,
    params: Mapping[str, str],
    input_mapping: Mapping[str, str],
    output_mapping: Mapping[str, str],
    writable_inputs: bool,
    lookup: Callable[[str], tuple[str, ...]],
) -> tuple[StepSpec, list[str]]:
    """A task step's spec from its config (inline, or read from its file when it starts).

    ``lookup`` gives the steps that may have made an artifact, latest first. Returns the
    spec and the inputs no step made (optional ones aside), as sentences.

    An output named after an input is a writable copy of that input, in its place;
    ``writable_inputs`` gives every other input a private writable copy too. Either way the
    input itself is not mounted: its copy is.
    """
    inputs = []
    missing = []
    for task_input in config.inputs:
        artifact = input_mapping.get(task_input.name, task_input.name)
        producers = lookup(artifact)
        if producers:
            inputs.append(_bind(artifact, producers, task_input.mount))
        elif not task_input.optional:  # an optional input nobody made is simply absent
            mapped = f" (mapped to {artifact!r})" if artifact != task_input.name else ""
            missing.append(f"input {task_input.name!r}{mapped} is made by no earlier step")
    input_names = {i.name: i.mount for i in config.inputs}
    outputs = [
        OutputBinding(
            name=output_mapping.get(o.name, o.name),
            mount=o.mount,
            from_input=o.name in input_names and input_names[o.name] == o.mount,
        )
        for o in config.outputs
    ]
    if writable_inputs:
        copied = {o.mount for o in outputs if o.from_input}
        outputs += [
            OutputBinding(
                name=WRITABLE_PREFIX + i.mount, mount=i.mount, from_input=True, private=True
            )
            for i in inputs
            if i.mount not in copied
        ]
    image = spec.image
    if config.image_resource is not None and spec.image_from is None:
        image = config.image_resource.image
    filled = replace(
        spec,
        image=image,
        command=(config.run.path, *config.run.args),
        dir=config.run.dir,
        env={**config.params, **params},
        inputs=tuple(inputs),
        outputs=tuple(outputs),
    )
    return filled, missing


def expand_task_file(spec: StepSpec, config: TaskConfig) -> tuple[StepSpec, list[str]]:
    """A ``file:`` task's spec, once its config is read: inputs bound from what the steps
    before it made, outputs (mapped), command, params (the step's over the file's), image.
    Returns the spec and the inputs no earlier step made."""
    task_file = spec.task_file
    assert task_file is not None, "only a task with a file is expanded"
    by_name = {c.name: c.producers for c in task_file.candidates}

    def lookup(name: str) -> tuple[str, ...]:
        return by_name.get(name, task_file.anywhere)

    filled, missing = task_from_config(
        replace(spec, task_file=None),
        config,
        params=task_file.params,
        input_mapping=task_file.input_mapping,
        output_mapping=task_file.output_mapping,
        writable_inputs=task_file.writable_inputs,
        lookup=lookup,
    )
    return filled, missing


# ---------------------------------------------------------------- at run time


def fill_local_vars(spec: StepSpec, values: Mapping[str, Any]) -> tuple[StepSpec, list[str]]:
    """``spec`` with every ``((.:name))`` filled from ``values`` (load_var results), and the
    vars that have no value (or no such field), as sentences.

    A var that is a whole string of a resource's params keeps its type (a mapping stays
    a mapping, as in Concourse); inside a longer string, or in env and args, it is written
    as text (mappings and lists as JSON).
    """
    problems: list[str] = []

    def text(value: str) -> str:
        return LOCAL_VAR.sub(lambda m: _as_text(_local(m, values, problems)), value)

    def data(value: Any) -> Any:
        if isinstance(value, str):
            whole = LOCAL_VAR.fullmatch(value.strip())
            return _local(whole, values, problems) if whole else text(value)
        if isinstance(value, Mapping):
            return {k: data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [data(v) for v in value]
        return value

    resource = spec.resource
    env = {k: text(v) for k, v in spec.env.items() if k != REQUEST_ENV}
    if resource is not None:
        resource = replace(resource, params=data(dict(resource.params)))
        env[REQUEST_ENV] = _request(resource, with_params=spec.kind != "check")
    filled = replace(
        spec,
        command=tuple(text(c) for c in spec.command),
        dir=text(spec.dir) if spec.dir is not None else None,
        env=env,
        resource=resource,
        local_vars={},
    )
    if spec.task_file is not None:
        filled = replace(
            filled,
            task_file=replace(
                spec.task_file,
                vars=data(dict(spec.task_file.vars)),
                params={k: text(v) for k, v in spec.task_file.params.items()},
            ),
        )
    if spec.set_pipeline is not None:
        filled = replace(
            filled,
            set_pipeline=replace(spec.set_pipeline, vars=data(dict(spec.set_pipeline.vars))),
        )
    return filled, list(dict.fromkeys(problems))


def _local(match: Any, values: Mapping[str, Any], problems: list[str]) -> Any:
    name, fields = match.group(1), match.group(2)
    if name not in values:
        problems.append(f"local var (({match.group(0).strip('()').strip()})) has no value")
        return match.group(0)
    value = values[name]
    for part in [f for f in fields.split(".") if f]:
        if not isinstance(value, Mapping) or part not in value:
            problems.append(f"local var {name!r} has no field {fields.lstrip('.')!r}")
            return match.group(0)
        value = value[part]
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def image_reference(resource: ResourceCall | None, result: Mapping[str, Any]) -> str | None:
    """The image a get made, as a pod names it: ``repository@digest``; ``None`` when the get
    is not of a registry image or did not report a digest."""
    if resource is None or not _is_image_type(resource.type):
        return None
    repository = resource.source.get("repository")
    version = result.get("version") or {}
    digest = version.get("digest") if isinstance(version, Mapping) else None
    if not isinstance(repository, str) or not repository or not isinstance(digest, str):
        return None
    return f"{repository}@{digest}"


def _is_image_type(type_: str) -> bool:
    return type_ in IMAGE_RESOURCE_TYPES


def tag_node_selector(
    tags: Sequence[str], tag_labels: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The node labels a step's worker tags stand for.

    ``tag_labels`` maps a tag to ``key=value`` (or a bare ``key``, meaning ``key=true``);
    any other tag ``t`` stands for ``jetbridge.dev/tag-t=true``.
    """
    selector = {}
    for tag in tags:
        label = (tag_labels or {}).get(tag, f"{TAG_LABEL_PREFIX}{tag}")
        key, eq, value = label.partition("=")
        selector[key] = value if eq else "true"
    return selector


# ---------------------------------------------------------------- helpers


def _bind(name: str, producers: tuple[str, ...], mount: str) -> InputBinding:
    return InputBinding(name=name, producer=producers[0], mount=mount, fallbacks=producers[1:])


def _local_refs(step: Step) -> Iterator[str]:
    for text in _strings(_step_strings(step)):
        for match in LOCAL_VAR.finditer(text):
            yield match.group(1)


def _step_strings(step: Step) -> list[Any]:
    if isinstance(step, GetStep | PutStep):
        return [step.params]
    if isinstance(step, TaskStep):
        values: list[Any] = [step.params, step.vars, step.file]
        if step.config is not None:
            run = step.config.run
            values += [run.path, run.args, run.dir, step.config.params]
        return values
    if isinstance(step, LoadVarStep):
        return [step.file]
    if isinstance(step, SetPipelineStep):
        return [step.file, step.vars, step.var_files]
    return []


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


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


#: The job name of a resource's check builds is this and the resource's name: ``check:repo``.
CHECK_JOB_PREFIX = "check:"


def check_spec(
    pipeline: Pipeline,
    resource: str,
    *,
    version: Mapping[str, Any] | None = None,
    key: str = "check",
) -> StepSpec:
    """The one step of a resource's check build: its type's ``check`` script, asked for the
    versions from ``version`` on (Concourse passes the newest it knows), or for the newest
    only when ``version`` is ``None``. Raises ``KeyError`` for an unknown resource."""
    model = pipeline.resource(resource)
    compiler = _Compiler(pipeline, Job(name=CHECK_JOB_PREFIX + model.name, plan=()), {})
    call = compiler._resource(model.name, {}, version)
    return StepSpec(
        key=key,
        name=model.name,
        kind="check",
        command=_resource_command(compiler._script(call, "check"), "."),
        env={REQUEST_ENV: _request(call, with_params=False)},
        resource=call,
        timeout_seconds=_check_timeout(pipeline, model.name),
    )


def _check_timeout(pipeline: Pipeline, resource: str) -> int | None:
    """A resource's ``check_timeout`` in seconds; ``None``: the default deadline from settings."""
    timeout = pipeline.resource(resource).check_timeout
    return duration_seconds(timeout) if timeout is not None else None


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
