"""What the step runner does when a step starts, besides building its pod.

Some of a step is only known when it starts, and is read from the artifacts of the
steps before it, straight from the store (the step runner mounts the claim):

- a task's config from its ``file:`` (parsed by the same reader as an inline
  ``config:``, then bound to the build's artifacts);
- the local vars it uses (``((.:name))``), from the results of ``load_var`` steps;
- the image of a task run with ``image:``: a get of a registry-image resource, whose
  version's digest names the image (``repository@digest``). Where the runtime stands the
  host in for every image (``jetbridge run``), any artifact will do.

Two kinds of step need no pod at all, and run here: ``load_var`` (a file into a local
var, kept as the step's result) and ``set_pipeline`` (a file into the pipeline registry).

And a writable input (an output named after an input, or ``writable_inputs: true``) is
a copy of the producer's directory, made here before the pod starts, into the output's
directory, registered ``creating`` like any output: copied with reflinks where the file
system has them (``shared.treecopy``).

Files are read inside their artifact only: a path (or a symlink in the artifact) that
leads out of it is refused, and so is a file over ``MAX_FILE_BYTES``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared import artifacts
from shared import status as st
from shared.db import ArtifactRow, StepRow
from shared.errors import ArtifactStoreError, PipelineError, VariableError
from shared.pipeline import load_var_value, parse_task_config, parse_vars
from shared.pipelines import save_pipeline
from shared.plan import (
    InputBinding,
    StepSpec,
    expand_task_file,
    fill_local_vars,
    image_reference,
)
from shared.podspec import Mount
from shared.treecopy import copy_tree

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: A task file, vars file or pipeline is YAML a person wrote: a megabyte is far more than
#: any, and small enough to read into memory.
MAX_FILE_BYTES = 1024 * 1024


class StepFileError(Exception):
    """A file a step reads at start cannot be read; the message says which and why."""


def runs_on_host(runtime: object) -> bool:
    """Whether the runtime stands this machine's file system in for every image."""
    return bool(getattr(runtime, "images_are_host", False))


def find_artifact(session: Session, build_id: int, binding: InputBinding) -> ArtifactRow | None:
    """The ready artifact a binding names: of its producer, else of its fallbacks, in order."""
    for producer_key in binding.producers:
        producer = session.scalars(
            select(StepRow).where(StepRow.build_id == build_id, StepRow.key == producer_key)
        ).one_or_none()
        if producer is None:
            continue
        row = session.scalars(
            select(ArtifactRow).where(
                ArtifactRow.step_id == producer.id,
                ArtifactRow.name == binding.name,
                ArtifactRow.state == artifacts.READY,
            )
        ).one_or_none()
        if row is not None:
            return row
    return None


def find_inputs(
    session: Session, build_id: int, spec: StepSpec
) -> tuple[list[str], list[tuple[InputBinding, ArtifactRow]]]:
    """Each input's ready artifact, or a sentence per input that is not there."""
    missing: list[str] = []
    found = []
    for binding in spec.inputs:
        row = find_artifact(session, build_id, binding)
        if row is None:
            missing.append(f"input {binding.name!r} from step {binding.producer} is not available")
        else:
            found.append((binding, row))
    return missing, found


def resolve(
    session: Session,
    *,
    build_id: int,
    spec: StepSpec,
    root: Path,
    host_images: bool,
) -> tuple[StepSpec, list[str]]:
    """The spec as it runs now, or the reasons it cannot start.

    Local vars filled in, a task file read and expanded, an ``image:`` artifact turned
    into an image reference. Safe to call again on what it returned (it is stored as the
    step's spec once the step runs, so a redelivered ``step.ready`` builds the same pod).
    """
    problems: list[str] = []
    what = f"{spec.kind} {spec.name!r}"
    values = _local_var_values(session, build_id, spec.local_vars) if spec.local_vars else {}
    if spec.local_vars:
        spec, unfilled = fill_local_vars(spec, values)
        problems += unfilled
    if spec.task_file is not None and not problems:
        task_file = spec.task_file
        try:
            text = read_file(session, build_id, task_file.artifact, task_file.path, root)
            config = parse_task_config(
                text, source=f"task file {task_file.file}", variables=task_file.vars
            )
        except (StepFileError, PipelineError, VariableError) as e:
            problems.append(str(e))
        else:
            spec, missing = expand_task_file(spec, config)
            problems += [f"{m} (task file {task_file.file})" for m in missing]
            spec, unfilled = fill_local_vars(spec, values)  # the file's own ((.:vars))
            problems += [f"{u} (task file {task_file.file})" for u in unfilled]
    if spec.image_from is not None and not problems:
        image, problem = _image(session, build_id, spec, host_images=host_images)
        if problem:
            problems.append(problem)
        elif image:
            spec = replace(spec, image=image)
    if problems:
        log.info("%s cannot start: %s", what, "; ".join(problems))
    return spec, problems


def _local_var_values(
    session: Session, build_id: int, local_vars: Mapping[str, str]
) -> dict[str, Any]:
    """The values load_var steps set, by var name (a var whose step has not run is absent)."""
    values = {}
    for name, key in local_vars.items():
        row = session.scalars(
            select(StepRow).where(StepRow.build_id == build_id, StepRow.key == key)
        ).one_or_none()
        if row is not None and row.status == st.SUCCEEDED and "value" in (row.result or {}):
            values[name] = row.result["value"]
    return values


def _image(
    session: Session, build_id: int, spec: StepSpec, *, host_images: bool
) -> tuple[str | None, str | None]:
    """The image an ``image:`` artifact names, or why there is none."""
    binding = spec.image_from
    assert binding is not None
    row = find_artifact(session, build_id, binding)
    if row is None:
        return None, f"image {binding.name!r} from step {binding.producer} is not available"
    producer = session.get(StepRow, row.step_id) if row.step_id is not None else None
    reference = None
    if producer is not None:
        reference = image_reference(StepSpec.from_json(producer.spec).resource, producer.result)
    if reference is not None:
        return reference, None
    if host_images:
        return None, None  # this machine stands in for the image
    made_by = f"{producer.kind} {producer.name!r}" if producer is not None else "a step"
    return None, (
        f"image {binding.name!r} is made by {made_by}, and a pod's image must be a registry "
        "image: make `image:` name a get of a registry-image resource (its version's digest "
        "becomes the image, repository@digest)"
    )


def read_file(session: Session, build_id: int, binding: InputBinding, path: str, root: Path) -> str:
    """The text of ``path`` inside the artifact ``binding`` names; ``StepFileError`` if not."""
    shown = f"{binding.name}/{path}"
    row = find_artifact(session, build_id, binding)
    if row is None:
        raise StepFileError(
            f"cannot read {shown}: artifact {binding.name!r} from step {binding.producer} "
            "is not available"
        )
    base = artifacts.resolve(root, row.subpath)
    target = (base / path).resolve()
    if not target.is_relative_to(base):
        raise StepFileError(f"cannot read {shown}: it leads outside artifact {binding.name!r}")
    try:
        size = target.stat().st_size
        if not target.is_file():
            raise StepFileError(f"cannot read {shown}: it is not a file")
        if size > MAX_FILE_BYTES:
            raise StepFileError(
                f"cannot read {shown}: {size} bytes, more than the {MAX_FILE_BYTES} a step "
                "reads at start"
            )
        return target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StepFileError(f"cannot read {shown}: no such file in the artifact") from None
    except UnicodeDecodeError:
        raise StepFileError(f"cannot read {shown}: it is not UTF-8 text") from None
    except OSError as e:
        raise StepFileError(f"cannot read {shown}: {e.strerror or e}") from e


# ---------------------------------------------------------------- steps with no pod


def run_inline(
    session: Session,
    *,
    build_id: int,
    pipeline: str,
    spec: StepSpec,
    root: Path,
    clock: Clock,
) -> tuple[str, str | None, dict[str, Any]]:
    """Run a ``load_var`` or ``set_pipeline`` step here: its status, error and result."""
    what = f"{spec.kind} {spec.name!r}"
    binding = spec.inputs[0] if spec.inputs else None
    try:
        if spec.load_var is not None and binding is not None:
            load = spec.load_var
            text = read_file(session, build_id, binding, load.path, root)
            value = load_var_value(text, format=load.format, file=load.file)
            return st.SUCCEEDED, None, {"value": value}
        if spec.set_pipeline is not None:
            return _set_pipeline(session, build_id, pipeline, spec, root, clock)
    except (StepFileError, VariableError) as e:
        return st.ERRORED, f"{what} failed: {e}", {}
    return st.ERRORED, f"{what} cannot run: nothing to do", {}


def _set_pipeline(
    session: Session, build_id: int, pipeline: str, spec: StepSpec, root: Path, clock: Clock
) -> tuple[str, str | None, dict[str, Any]]:
    assert spec.set_pipeline is not None
    setting = spec.set_pipeline
    by_name = {b.name: b for b in spec.inputs}

    def read(file: str) -> str:
        artifact, _, path = file.partition("/")
        return read_file(session, build_id, by_name[artifact], path, root)

    name = pipeline if setting.name == "self" else setting.name
    variables: dict[str, Any] = {}
    for file in setting.var_files:
        variables.update(parse_vars(read(file), source=f"vars file {file}"))
    variables.update(setting.vars)
    config = read(setting.file)
    what = f"set_pipeline {setting.name!r}"
    try:
        save_pipeline(session, name=name, config=config, variables=variables, clock=clock)
    except (PipelineError, VariableError) as e:
        return st.ERRORED, f"{what} failed: {e}", {}
    return st.SUCCEEDED, None, {"pipeline": name, "file": setting.file}


# ---------------------------------------------------------------- writable inputs


def detach_previous_attempts(session: Session, step_id: int) -> int:
    """Let go of the outputs an earlier attempt of a step left ``creating``.

    The next attempt registers outputs of its own; the old rows keep their build (the
    reaper removes them with it, or sooner once they are past its grace) but no longer
    belong to the step, so only the last attempt's outputs become its artifacts.
    """
    moved = session.execute(
        update(ArtifactRow)
        .where(ArtifactRow.step_id == step_id, ArtifactRow.state == artifacts.CREATING)
        .values(step_id=None)
    )
    return int(moved.rowcount)  # type: ignore[attr-defined]


def mounts(
    spec: StepSpec,
    inputs: Sequence[tuple[InputBinding, ArtifactRow]],
    outputs: Mapping[str, ArtifactRow],
) -> list[Mount]:
    """The pod's mounts: inputs read-only, outputs read-write, and a writable copy of an
    input mounted in the input's place (the input itself is not mounted)."""
    copied = {o.mount for o in spec.outputs if o.from_input}
    found = [
        Mount(subpath=row.subpath, mount=binding.mount, read_only=True)
        for binding, row in inputs
        if binding.mount not in copied
    ]
    found += [
        Mount(subpath=outputs[o.name].subpath, mount=o.mount, read_only=False)
        for o in spec.outputs
        if o.name in outputs
    ]
    return found


def copy_writable_inputs(
    root: Path,
    spec: StepSpec,
    inputs: Sequence[tuple[InputBinding, ArtifactRow]],
    outputs: Mapping[str, ArtifactRow],
) -> None:
    """Fill each writable input's output directory with a copy of the input.

    Called after the output directories exist and before the pod is launched; once the
    pod exists, the copy is complete, so a redelivery that finds the pod must not call
    this again. A copy a crash cut short is started over.
    """
    by_mount = {binding.mount: row for binding, row in inputs}
    for output in spec.outputs:
        source = by_mount.get(output.mount)
        if not output.from_input or source is None or output.name not in outputs:
            continue  # an optional input nobody made: the output starts empty
        target = artifacts.resolve(root, outputs[output.name].subpath)
        _empty(target)
        report = copy_tree(artifacts.resolve(root, source.subpath), target)
        os.chmod(target, artifacts.OUTPUT_MODE)
        log.info(
            "%s %r: input %r copied for writing (%s)",
            spec.kind,
            spec.name,
            output.mount,
            report.method,
        )


def _empty(directory: Path) -> None:
    try:
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    except OSError as e:
        raise ArtifactStoreError(f"cannot empty {directory}: {e.strerror or e}") from e
