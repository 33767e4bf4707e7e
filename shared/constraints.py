"""Input resolution: which version each ``get`` of a job takes, as Concourse's scheduler picks it.

Pure: the versions a pipeline knows and the builds that used them come in as data
(``History``, loaded by ``shared.versions``); the choice goes out (``Resolution``).
The rules are Concourse's (its ``atc/scheduler/algorithm``):

- A get without ``passed`` takes the newest version of its resource (highest check
  order); with ``version: every``, the version after the one the job's latest build used
  (the newest, if it used none); with a pinned ``version``, that version.
- A get with ``passed: [a, b]`` takes a version that went through (was an input or an
  output of) a *successful* build of every job it names. Upstream builds are tried
  newest first, so the version is the one the newest upstream build used.
- Gets of one job that name the same upstream job take their versions from *the same*
  build of it: a build of ``test`` that gets ``repo`` and ``config`` with
  ``passed: [build]`` tests a pair that ``build`` built together, never ``repo`` from one
  build and ``config`` from another. Each upstream job is bound to one build, and every
  get naming it takes its version from that build.
- With ``every`` and ``passed``, upstream builds after the one the job last used are
  tried oldest first (each gets its own build, in order), then the rest newest first.

A job is triggered (``new_versions``) when a get with ``trigger: true`` resolves to a
version other than the one the job's latest build used for it, as Concourse's "first
occurrence" rule decides.

Versions are compared by ``version_key``: a digest of the version's canonical JSON, so
``{"ref": "abc"}`` from a check, a webhook and a get are one version.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.pipeline import GetStep, Job, Pipeline, Step, children

#: How many of an upstream job's newest successful builds the resolver looks through. Concourse
#: pages through all of them; past this many builds without a match, the version is "not yet".
BUILD_WINDOW = 200
#: How many of a resource's newest versions the resolver looks through (``every`` steps from
#: the version last used; one that fell out of this window restarts at the oldest kept).
VERSION_WINDOW = 1000


def canonical_version(version: Mapping[str, Any]) -> dict[str, str]:
    """A version as JetBridge keeps it: Concourse's versions are maps of strings, so a value a
    script answered as a number (or anything else) is kept as its JSON text."""
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in version.items()}


def version_key(version: Mapping[str, Any]) -> str:
    """A version's identity: the SHA-256 of its canonical JSON (keys sorted, values strings)."""
    text = json.dumps(canonical_version(version), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def resource_scope(type_: str, source: Mapping[str, Any]) -> str:
    """The identity of a resource's configuration: its versions belong to it.

    Concourse keeps versions per resource *config* (type and source): a resource whose
    source changes starts a fresh history, and the old versions no longer count.
    """
    text = json.dumps({"type": type_, "source": source}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- the model


@dataclass(frozen=True, kw_only=True)
class Input:
    """One get of a job, as the resolver sees it."""

    name: str
    """The get's name (what a build pins by)."""
    resource: str
    passed: tuple[str, ...] = ()
    """Upstream jobs, in the pipeline's order (Concourse orders them by job id)."""
    trigger: bool = False
    every: bool = False
    pinned: Mapping[str, str] | None = None
    """A version pinned by the pipeline (the get's or the resource's ``version: {…}``) or by
    the build request."""


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A version the resolver may choose."""

    key: str
    version: Mapping[str, Any]
    order: int = 0
    """Check order: higher is newer."""


@dataclass(frozen=True, kw_only=True)
class UpstreamBuild:
    """A successful build of an upstream job and the versions that went through it."""

    id: int
    job: str
    versions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Resource → version keys, its outputs (puts) first, then its inputs (gets)."""


@dataclass(frozen=True, kw_only=True)
class History:
    """What the database knows, as far as one job's resolution needs it."""

    versions: Mapping[str, Sequence[Candidate]] = field(default_factory=dict)
    """Resource → its known versions, oldest first (ascending check order)."""
    builds: Mapping[str, Sequence[UpstreamBuild]] = field(default_factory=dict)
    """Upstream job → its successful builds, newest first."""
    last_used: Mapping[str, str] = field(default_factory=dict)
    """Get name → key of the version the job's latest build used for it."""
    known: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Version key → the version, for every key an upstream build mentions."""


@dataclass(frozen=True, kw_only=True)
class Resolution:
    """What each get takes, or why some get can take nothing yet."""

    chosen: Mapping[str, Candidate] = field(default_factory=dict)
    """Get name → the version it takes."""
    problem: str | None = None
    """Why not every get could be resolved (the first reason found)."""
    upstream: Mapping[str, int] = field(default_factory=dict)
    """Upstream job → the build the ``passed`` versions came from."""

    @property
    def ok(self) -> bool:
        return self.problem is None

    def pins(self) -> dict[str, dict[str, Any]]:
        """Get name → version, as ``start_build`` takes them."""
        return {name: dict(c.version) for name, c in self.chosen.items()}


def job_inputs(pipeline: Pipeline, job: Job) -> tuple[Input, ...]:
    """Every get of ``job`` (plan and hooks, however deep), one per get name, in plan order."""
    order = {j.name: i for i, j in enumerate(pipeline.jobs)}
    inputs: dict[str, Input] = {}
    for step in _gets(_job_steps(job)):
        if step.get in inputs:
            continue  # the copies of an across step: one get
        pinned = pipeline.pinned_version(step)
        inputs[step.get] = Input(
            name=step.get,
            resource=step.resource,
            passed=tuple(sorted(step.passed, key=lambda j: (order.get(j, len(order)), j))),
            trigger=step.trigger,
            every=step.version == "every",
            pinned=dict(pinned) if pinned is not None else None,
        )
    return tuple(inputs.values())


def _job_steps(job: Job) -> tuple[Step, ...]:
    return (*job.plan, *(step for _, step in job.hooks.items()))


def _gets(steps: Sequence[Step]) -> Iterator[GetStep]:
    for step in steps:
        if isinstance(step, GetStep):
            yield step
        yield from _gets(children(step))
        yield from _gets([hook for _, hook in step.hooks.items()])


# ---------------------------------------------------------------- resolving


def resolve(inputs: Sequence[Input], history: History) -> Resolution:
    """The version every input takes, or the first reason one cannot take any yet.

    Inputs without ``passed`` are resolved each on its own; those with ``passed``
    together, since inputs naming one upstream job must agree on its build.
    """
    chosen: dict[str, Candidate] = {}
    for item in inputs:
        if item.passed:
            continue
        candidate, problem = _individual(item, history)
        if candidate is None:
            return Resolution(problem=problem)
        chosen[item.name] = candidate
    group = [i for i in inputs if i.passed]
    if not group:
        return Resolution(chosen=chosen)
    found = _Group(group, history).solve()
    if found is None:
        return Resolution(chosen=chosen, problem=_group_problem(group, history))
    picked, upstream = found
    for item in group:
        chosen[item.name] = picked[item.name]
    return Resolution(chosen=chosen, upstream=upstream)


def new_versions(
    inputs: Sequence[Input], resolution: Resolution, last_used: Mapping[str, str]
) -> tuple[str, ...]:
    """The ``trigger: true`` gets whose resolved version the job's latest build did not use.

    A job is triggered when this is not empty (Concourse's "first occurrence"): a new
    version of a get without ``trigger`` alone starts nothing.
    """
    return tuple(
        i.name
        for i in inputs
        if i.trigger
        and i.name in resolution.chosen
        and resolution.chosen[i.name].key != last_used.get(i.name)
    )


def _individual(item: Input, history: History) -> tuple[Candidate | None, str]:
    if item.pinned is not None:
        return Candidate(key=version_key(item.pinned), version=dict(item.pinned)), ""
    versions = history.versions.get(item.resource, ())
    if not versions:
        return None, f"resource {item.resource!r} has no versions yet (no check has found one)"
    if item.every:
        last = history.last_used.get(item.name)
        for position, candidate in enumerate(versions):
            if candidate.key == last:
                return versions[min(position + 1, len(versions) - 1)], ""
    return versions[-1], ""


class _Group:
    """A depth-first search binding each upstream job to one of its builds.

    Decisions are (input, upstream job) pairs in input order; binding a job to a build
    fixes the version of *every* input naming that job, so inputs sharing an upstream job
    agree on its build. A binding that contradicts a version already fixed is skipped; a
    dead end undoes the latest binding and tries that job's next build.
    """

    def __init__(self, group: Sequence[Input], history: History) -> None:
        self.group = group
        self.history = history
        self.decisions = [(item, job) for item in group for job in item.passed]
        self.keys: dict[str, str] = {
            i.name: version_key(i.pinned) for i in group if i.pinned is not None
        }
        self.bound: dict[str, int] = {}

    def solve(self) -> tuple[dict[str, Candidate], dict[str, int]] | None:
        if not self._search(0):
            return None
        picked = {}
        for item in self.group:
            key = self.keys[item.name]
            version = self.history.known.get(key)
            if version is None:
                version = next(
                    (
                        c.version
                        for c in self.history.versions.get(item.resource, ())
                        if c.key == key
                    ),
                    item.pinned or {},
                )
            picked[item.name] = Candidate(
                key=key, version=dict(version), order=self._order(item, key)
            )
        return picked, dict(self.bound)

    def _order(self, item: Input, key: str) -> int:
        for candidate in self.history.versions.get(item.resource, ()):
            if candidate.key == key:
                return candidate.order
        return 0

    def _search(self, index: int) -> bool:
        if index == len(self.decisions):
            return True
        item, job = self.decisions[index]
        if job in self.bound:
            return self._search(index + 1)
        related = [i for i in self.group if job in i.passed]
        for build in self._builds(job, item):
            for assignment in self._assignments(build, related):
                saved = dict(self.keys)
                self.keys.update(assignment)
                self.bound[job] = build.id
                if self._search(index + 1):
                    return True
                self.keys = saved
                del self.bound[job]
        return False

    def _assignments(
        self, build: UpstreamBuild, related: Sequence[Input]
    ) -> Iterator[dict[str, str]]:
        """Every way this build can fix the versions of the inputs naming its job."""
        options: list[tuple[str, ...]] = []
        for item in related:
            there = build.versions.get(item.resource, ())
            fixed = self.keys.get(item.name)
            if fixed is not None:
                if fixed not in there:
                    return
                options.append((fixed,))
            elif there:
                options.append(there)
            else:
                return
        for keys in itertools.product(*options):
            yield {item.name: key for item, key in zip(related, keys, strict=True)}

    def _builds(self, job: str, item: Input) -> list[UpstreamBuild]:
        builds = list(self.history.builds.get(job, ()))[:BUILD_WINDOW]
        last = self.history.last_used.get(item.name)
        if not item.every or last is None:
            return builds
        # every: the builds after the newest one that carried the version last used, oldest
        # first; then the rest, newest first (Concourse's "unused builds" order).
        used = next((b.id for b in builds if last in b.versions.get(item.resource, ())), None)
        if used is None:
            return builds
        after = sorted((b for b in builds if b.id > used), key=lambda b: b.id)
        return after + [b for b in builds if b.id <= used]


def _group_problem(group: Sequence[Input], history: History) -> str:
    """Why the inputs with ``passed`` cannot be resolved: one input alone, or only together."""
    for item in group:
        if _Group([item], history).solve() is None:
            jobs = _and(item.passed)
            if item.pinned is not None:
                return (
                    f"the pinned version {_show(item.pinned)} of {item.resource!r} has not "
                    f"passed {jobs} yet"
                )
            each = {1: "", 2: " both"}.get(len(item.passed), " all of")
            return f"no version of {item.resource!r} has passed{each} {jobs} yet"
    named = [j for i in group for j in i.passed]
    shared = [j for j in dict.fromkeys(named) if named.count(j) > 1]
    names = _and([i.resource for i in group])
    return (
        f"no versions of {names} have passed {_and(shared)} together yet: gets that name the "
        "same upstream job take their versions from one build of it"
    )


def _and(names: Sequence[str]) -> str:
    quoted = [repr(n) for n in dict.fromkeys(names)]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _show(version: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in version.items()) + "}"
