"""Run-time parts of steps, through the step runner's services, on SQLite and Postgres.

Retries as new pods, hooks, timeouts, read-only inputs, task files, local vars, image
artifacts, set_pipeline and writable inputs: each driven event by event as the bus
would (``launch_step`` for ``step.ready``, ``finish_step`` for an ended pod) over a fake
runtime whose pods write their outputs into the real artifact store.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shared import events
from shared import status as st
from shared.builds import start_build
from shared.db import ArtifactRow, BuildRow, PipelineRow, StepRow, transaction
from shared.events import RecordingSink, event_data
from shared.launching import StepFileError, read_file
from shared.logstore import DirectoryLogStore
from shared.pipelines import save_pipeline
from shared.plan import InputBinding
from shared.podspec import PodSettings
from shared.steps import finish_step, launch_step
from tests.fakes import FakeClock, FakeRuntime, Handles

#: What a pod "does" before it ends: writes files into its outputs (output name → path → text).
Writes = Mapping[str, Mapping[str, str]]


class Pod:
    """How one attempt of a step ends."""

    def __init__(
        self,
        exit_code: int = 0,
        *,
        writes: Writes | None = None,
        log: str = "",
        message: str = "",
        deadline: bool = False,
    ) -> None:
        self.exit_code = exit_code
        self.writes = writes or {}
        self.log = log
        self.message = message
        self.deadline = deadline


class Runner:
    """Runs a build of job ``build`` of a pipeline through the step runner's handlers."""

    def __init__(
        self,
        sessions: Any,
        store: Path,
        clock: FakeClock,
        pipeline: str,
        variables: Mapping[str, Any] | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.clock = clock
        self.runtime = FakeRuntime()
        self.sink = RecordingSink()
        self.logs = DirectoryLogStore(store.parent / "logs")
        self.handles = Handles()
        self.settings = PodSettings(claim="store", tag_labels={"gpu": "accelerator=nvidia-l4"})
        with transaction(sessions) as session:
            save_pipeline(
                session,
                name="demo",
                config=textwrap.dedent(pipeline),
                clock=clock,
                variables=variables,
            )

    def run(self, script: Mapping[str, Pod | Sequence[Pod]] | None = None, **versions: Any) -> int:
        """Start a build and run every announced step to its end; returns the build id."""
        script = script or {}
        build_id = start_build(
            self.sessions,
            pipeline="demo",
            job="build",
            sink=self.sink,
            clock=self.clock,
            versions=versions,
        ).build_id
        seen: set[str] = set()
        while True:
            pending = [e for e in ready_events(self.sink) if e["id"] not in seen]
            if not pending:
                return build_id
            for event in pending:
                seen.add(event["id"])
                data = event_data(event)
                name = launch_step(
                    self.sessions,
                    build_id=data["build_id"],
                    step_id=data["step_id"],
                    runtime=self.runtime,
                    store_root=self.store,
                    pod_settings=self.settings,
                    sink=self.sink,
                    clock=self.clock,
                    handles=self.handles,
                )
                if name is None:
                    continue  # no pod: a step done by the step runner, or one that errored
                step = self.step_by_id(data["step_id"])
                plan = script.get(step.name, Pod())
                pods = [plan] if isinstance(plan, Pod) else list(plan)
                self.end(name, pods[min(step.attempt, len(pods)) - 1], step)

    def end(self, name: str, pod: Pod, step: StepRow) -> None:
        with transaction(self.sessions) as session:
            outputs = session.scalars(select(ArtifactRow).where(ArtifactRow.step_id == step.id))
            for row in outputs:
                for path, text in pod.writes.get(row.name, {}).items():
                    target = self.store / row.subpath / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text)
        data = self.runtime.finish(name, pod.exit_code, log=pod.log.encode(), message=pod.message)
        if pod.deadline:
            data["status"]["reason"] = "DeadlineExceeded"
        finish_step(
            self.sessions,
            pod=data,
            runtime=self.runtime,
            logs=self.logs,
            store_root=self.store,
            sink=self.sink,
            clock=self.clock,
        )

    def step_by_id(self, step_id: int) -> StepRow:
        with transaction(self.sessions) as session:
            step = session.get(StepRow, step_id)
            assert step is not None
            return step

    def step(self, build_id: int, name: str, kind: str | None = None) -> StepRow:
        with transaction(self.sessions) as session:
            query = select(StepRow).where(StepRow.build_id == build_id, StepRow.name == name)
            query = query.where(StepRow.kind != "check" if kind is None else StepRow.kind == kind)
            return session.scalars(query).one()

    def build(self, build_id: int) -> BuildRow:
        with transaction(self.sessions) as session:
            build = session.get(BuildRow, build_id)
            assert build is not None
            return build

    def pod(self, build_id: int, name: str) -> dict[str, Any]:
        """The last pod of a step, as created (the fake keeps deleted pods' specs too)."""
        step = self.step(build_id, name)
        assert step.pod_name is not None
        return self.runtime.created[step.pod_name]

    def artifacts(self, build_id: int) -> list[ArtifactRow]:
        with transaction(self.sessions) as session:
            return list(
                session.scalars(
                    select(ArtifactRow)
                    .where(ArtifactRow.build_id == build_id)
                    .order_by(ArtifactRow.id)
                )
            )


class RecordingRuntime(FakeRuntime):
    """The fake runtime, keeping every pod it was asked to create (deleted or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.created: dict[str, dict[str, Any]] = {}

    def launch(self, pod: Any) -> None:
        super().launch(pod)
        self.created[pod.metadata.name] = json.loads(json.dumps(self.pods[pod.metadata.name]))


@pytest.fixture
def runner(sessions: Any, tmp_path: Path, clock: FakeClock) -> Callable[..., Runner]:
    def make(pipeline: str, variables: Mapping[str, Any] | None = None) -> Runner:
        made = Runner(sessions, tmp_path / "store", clock, pipeline, variables)
        made.runtime = RecordingRuntime()
        return made

    return make


def ready_events(sink: RecordingSink) -> list[Any]:
    return [e for e in sink.events if e["type"] == events.STEP_READY]


def env_of(pod: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0].get("env") or []}


def mounts_of(pod: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """Mount path → (subpath, read-only) of the artifact-store mounts."""
    return {
        m["mountPath"]: (m["subPath"], bool(m.get("readOnly")))
        for m in pod["spec"]["containers"][0]["volumeMounts"]
        if "subPath" in m
    }


TASK = "{platform: linux, run: {path: x}}"

# ---------------------------------------------------------------- retries, hooks, timeouts

RETRIES = """
jobs:
- name: build
  plan:
  - task: flaky
    attempts: 3
    tags: [gpu]
    config: {platform: linux, outputs: [{name: out}], run: {path: x}}
  - task: use
    config: {platform: linux, inputs: [{name: out}], run: {path: x}}
"""


def test_a_flaky_step_is_retried_as_new_pods_and_only_its_last_attempt_counts(
    runner: Callable[[str], Runner],
) -> None:
    r = runner(RETRIES)
    build_id = r.run(
        {
            "flaky": [
                Pod(1, writes={"out": {"f": "attempt 1"}}),
                Pod(2, writes={"out": {"f": "attempt 2"}}),
                Pod(0, writes={"out": {"f": "attempt 3"}}),
            ]
        }
    )
    assert r.build(build_id).status == st.SUCCEEDED
    flaky = r.step(build_id, "flaky")
    assert (flaky.status, flaky.attempt, flaky.exit_code, flaky.error) == (st.SUCCEEDED, 3, 0, None)
    pods = [name for name in r.runtime.launches if "-flaky-" in name]
    assert [p.split("-a")[-1][0] for p in dict.fromkeys(pods)] == ["1", "2", "3"]
    ready = [event_data(e) for e in ready_events(r.sink)]
    assert [d["attempt"] for d in ready if d["step_id"] == flaky.id] == [1, 2, 3]
    # The first two attempts' outputs belong to no step any more; the third is the artifact.
    arts = r.artifacts(build_id)
    assert [(a.step_id == flaky.id, a.state) for a in arts] == [
        (False, "creating"),
        (False, "creating"),
        (True, "ready"),
    ]
    use = r.pod(build_id, "use")
    (subpath, read_only) = mounts_of(use)["/tmp/build/out"]
    assert subpath == arts[2].subpath and read_only
    assert (r.store / subpath / "f").read_text() == "attempt 3"
    # Tags select nodes: mapped by tag_labels.
    assert r.pod(build_id, "flaky")["spec"]["nodeSelector"] == {"accelerator": "nvidia-l4"}


def test_a_step_out_of_attempts_fails_the_build_with_its_last_error(
    runner: Callable[[str], Runner],
) -> None:
    r = runner(RETRIES)
    build_id = r.run({"flaky": Pod(4)})
    flaky = r.step(build_id, "flaky")
    assert (flaky.status, flaky.attempt) == (st.FAILED, 3)
    assert r.step(build_id, "use").status == st.SKIPPED
    build = r.build(build_id)
    assert (build.status, build.error) == (st.FAILED, "task 'flaky' exited with code 4")


HOOKS = f"""
jobs:
- name: build
  plan:
  - try:
      task: lint
      config: {TASK}
  - task: unit
    timeout: 90s
    config: {TASK}
    on_failure: {{task: alert, config: {TASK}}}
    ensure: {{task: tidy, config: {TASK}}}
  - task: never
    config: {TASK}
"""


def test_hooks_run_a_try_swallows_and_a_timeout_fails_the_step(
    runner: Callable[[str], Runner],
) -> None:
    r = runner(HOOKS)
    build_id = r.run({"lint": Pod(1), "unit": Pod(137, deadline=True)})
    statuses = {
        name: r.step(build_id, name).status for name in ("lint", "unit", "alert", "tidy", "never")
    }
    assert statuses == {
        "lint": st.FAILED,
        "unit": st.FAILED,
        "alert": st.SUCCEEDED,
        "tidy": st.SUCCEEDED,
        "never": st.SKIPPED,
    }
    message = "task 'unit' timed out: it ran longer than its timeout (1m30s) and was stopped"
    assert r.step(build_id, "unit").error == message
    assert r.pod(build_id, "unit")["spec"]["activeDeadlineSeconds"] == 90
    # The swallowed failure is not the build's: the timed-out step is.
    build = r.build(build_id)
    assert (build.status, build.error) == (st.FAILED, message)


def test_a_task_that_writes_into_a_read_only_input_is_told_which_and_what_to_do(
    runner: Callable[[str], Runner],
) -> None:
    r = runner(RETRIES.replace("attempts: 3", "attempts: 1"))
    log = "touch: cannot touch 'out/x': Read-only file system\n"
    build_id = r.run({"use": Pod(1, log=log)})
    error = r.step(build_id, "use").error
    assert error is not None
    assert error.startswith("task 'use' exited with code 1: it wrote into its input 'out'")
    assert "declare an output named 'out'" in error
    assert "`writable_inputs: true`" in error


# ---------------------------------------------------------------- files read at start

FILES = """
jobs:
- name: build
  plan:
  - task: checkout
    config: {platform: linux, outputs: [{name: repo}], run: {path: x}}
  - load_var: version
    file: repo/VERSION
  - task: unit
    file: repo/ci/unit.yml
    vars: {go: "1.23"}
    input_mapping: {src: repo}
    params: {VERSION: v((.:version))}
  - task: report
    config: {platform: linux, inputs: [{name: results}], run: {path: x}}
"""

UNIT = """\
platform: linux
inputs: [{name: src}]
outputs: [{name: results}]
params: {GO: ((go)), VERSION: from-the-file}
run: {path: go, args: [test, ./..., -ldflags=-X=v((.:version))], dir: src}
"""


def test_a_local_var_and_a_task_file_are_read_when_their_steps_start(
    runner: Callable[[str], Runner],
) -> None:
    r = runner(FILES)
    build_id = r.run(
        {"checkout": Pod(writes={"repo": {"VERSION": "1.4.2\n", "ci/unit.yml": UNIT}})}
    )
    assert r.build(build_id).status == st.SUCCEEDED
    version = r.step(build_id, "version")
    assert (version.kind, version.status, version.result) == (
        "load_var",
        st.SUCCEEDED,
        {"value": "1.4.2"},
    )
    assert version.pod_name is None  # no pod: the step runner read the file itself
    unit = r.pod(build_id, "unit")
    container = unit["spec"]["containers"][0]
    # The file's own ((.:version)) is filled too.
    assert container["command"] + container["args"] == ["go", "test", "./...", "-ldflags=-X=v1.4.2"]
    assert container["workingDir"] == "/tmp/build/src"
    assert env_of(unit) == {"GO": "1.23", "VERSION": "v1.4.2"}
    assert "/tmp/build/src" in mounts_of(unit)
    assert r.step(build_id, "report").status == st.SUCCEEDED  # `results` came from the file task


@pytest.mark.parametrize(
    ("writes", "step", "message"),
    [
        (
            {"VERSION": "1"},
            "unit",
            "task 'unit' cannot start: cannot read repo/ci/unit.yml: no such file in the artifact",
        ),
        (
            {"VERSION": "1", "ci/unit.yml": "platform: linux\n"},
            "unit",
            "task 'unit' cannot start: task file repo/ci/unit.yml is not a valid pipeline (1"
            " problem(s)):\n  line 1: run: a task config needs `run`: a mapping with `path`",
        ),
        (
            {"ci/unit.yml": UNIT},
            "version",
            "load_var 'version' failed: cannot read repo/VERSION: no such file in the artifact",
        ),
    ],
    ids=["no-task-file", "bad-task-file", "no-var-file"],
)
def test_a_file_that_cannot_be_read_errors_its_step(
    runner: Callable[[str], Runner], writes: dict[str, str], step: str, message: str
) -> None:
    r = runner(FILES)
    build_id = r.run({"checkout": Pod(writes={"repo": writes})})
    assert (r.step(build_id, step).status, r.step(build_id, step).error) == (st.ERRORED, message)
    assert r.build(build_id).status == st.ERRORED


def test_a_file_read_at_start_stays_inside_its_artifact(
    runner: Callable[[str], Runner], tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not the build's to read")
    r = runner(
        "jobs:\n- name: build\n  plan:\n  - task: checkout\n"
        "    config: {platform: linux, outputs: [{name: repo}], run: {path: x}}\n"
    )
    build_id = r.run()
    (artifact,) = r.artifacts(build_id)
    os.symlink(secret, r.store / artifact.subpath / "VERSION")
    binding = InputBinding(name="repo", producer="0", mount="repo")
    with transaction(r.sessions) as session, pytest.raises(StepFileError) as caught:
        read_file(session, build_id, binding, "VERSION", r.store)
    assert str(caught.value) == "cannot read repo/VERSION: it leads outside artifact 'repo'"


# ---------------------------------------------------------------- image artifacts

IMAGES = f"""
resource_types:
- name: registry-image
  type: registry-image
  source: {{repository: concourse/registry-image-resource}}
resources:
- name: golang
  type: registry-image
  source: {{repository: example.com/golang}}
jobs:
- name: build
  plan:
  - get: golang
  - task: made
    config: {{platform: linux, outputs: [{{name: rootfs}}], run: {{path: x}}}}
  - task: in-golang
    image: golang
    config: {TASK}
  - task: in-rootfs
    image: rootfs
    config: {TASK}
"""


def test_an_image_artifact_is_the_registry_image_its_get_fetched(
    runner: Callable[[str], Runner],
) -> None:
    r = runner(IMAGES)
    answer = json.dumps({"version": {"digest": "sha256:0123abcd"}, "metadata": []})
    build_id = r.run({"golang": Pod(message=answer)}, golang={"digest": "sha256:0123abcd"})
    pod = r.pod(build_id, "in-golang")
    assert pod["spec"]["containers"][0]["image"] == "example.com/golang@sha256:0123abcd"
    # In the cluster a task's output is no image: the step errors, saying what would do.
    rootfs = r.step(build_id, "in-rootfs")
    assert rootfs.status == st.ERRORED
    assert rootfs.error == (
        "task 'in-rootfs' cannot start: image 'rootfs' is made by task 'made', and a pod's image"
        " must be a registry image: make `image:` name a get of a registry-image resource (its"
        " version's digest becomes the image, repository@digest)"
    )


def test_where_the_host_stands_in_for_images_any_artifact_will_do(
    runner: Callable[[str], Runner],
) -> None:
    r = runner(IMAGES)
    r.runtime.images_are_host = True  # type: ignore[attr-defined]
    answer = json.dumps({"version": {"digest": "sha256:0123abcd"}})
    build_id = r.run({"golang": Pod(message=answer)}, golang={"digest": "sha256:0123abcd"})
    assert r.build(build_id).status == st.SUCCEEDED


# ---------------------------------------------------------------- set_pipeline

SELF = """
jobs:
- name: build
  plan:
  - task: checkout
    config: {platform: linux, outputs: [{name: ci}], run: {path: x}}
  - set_pipeline: self
    file: ci/pipeline.yml
    vars: {cmd: make}
"""

NEW = """\
jobs:
- name: build
  plan:
  - task: t
    config: {platform: linux, run: {path: ((cmd))}}
"""


def test_set_pipeline_self_saves_the_file_through_the_registry(
    runner: Callable[[str], Runner],
) -> None:
    r = runner(SELF)
    build_id = r.run({"checkout": Pod(writes={"ci": {"pipeline.yml": NEW}})})
    step = r.step(build_id, "self")
    assert (step.status, step.result) == (
        st.SUCCEEDED,
        {"pipeline": "demo", "file": "ci/pipeline.yml"},
    )
    with transaction(r.sessions) as session:
        row = session.scalars(select(PipelineRow).where(PipelineRow.name == "demo")).one()
        assert (row.config, row.variables) == (NEW, {"cmd": "make"})


def test_set_pipeline_of_an_invalid_pipeline_errors_and_keeps_the_old_one(
    runner: Callable[[str], Runner],
) -> None:
    r = runner(SELF)
    build_id = r.run({"checkout": Pod(writes={"ci": {"pipeline.yml": "jobs: []\n"}})})
    step = r.step(build_id, "self")
    assert step.status == st.ERRORED
    assert step.error is not None and "a pipeline needs at least one job" in step.error
    with transaction(r.sessions) as session:
        row = session.scalars(select(PipelineRow).where(PipelineRow.name == "demo")).one()
        assert "set_pipeline: self" in row.config


# ---------------------------------------------------------------- writable inputs

WRITABLE = """
jobs:
- name: build
  plan:
  - task: checkout
    config: {platform: linux, outputs: [{name: src}], run: {path: x}}
  - task: patch
    config:
      platform: linux
      inputs: [{name: src}]
      outputs: [{name: src}]
      run: {path: x}
  - task: scribble
    writable_inputs: true
    config: {platform: linux, inputs: [{name: src}], run: {path: x}}
"""


def test_a_writable_input_is_a_copy_made_before_the_pod_and_the_original_stays(
    runner: Callable[[str], Runner],
) -> None:
    r = runner(WRITABLE)
    build_id = r.run(
        {
            "checkout": Pod(writes={"src": {"notes.txt": "original\n", "sub/deep.txt": "deep"}}),
            "patch": Pod(writes={"src": {"notes.txt": "patched\n"}}),
        }
    )
    assert r.build(build_id).status == st.SUCCEEDED
    arts = {(a.name, a.step_id): a for a in r.artifacts(build_id)}
    checkout = r.step(build_id, "checkout")
    patch = r.step(build_id, "patch")
    scribble = r.step(build_id, "scribble")
    original = r.store / arts[("src", checkout.id)].subpath
    copy = r.store / arts[("src", patch.id)].subpath
    assert (original / "notes.txt").read_text() == "original\n"
    assert (copy / "notes.txt").read_text() == "patched\n"
    assert (copy / "sub" / "deep.txt").read_text() == "deep"  # the copy was whole
    # The copy is mounted read-write in the input's place; the input itself is not mounted.
    assert mounts_of(r.pod(build_id, "patch")) == {
        "/tmp/build/src": (arts[("src", patch.id)].subpath, False)
    }
    # writable_inputs: a private copy of the patched `src` (what `src` is by then).
    private = arts[("writable:src", scribble.id)]
    assert mounts_of(r.pod(build_id, "scribble")) == {"/tmp/build/src": (private.subpath, False)}
    assert (r.store / private.subpath / "notes.txt").read_text() == "patched\n"


# -- ReadWriteOnce: a build's later pods on the node of its first ---------------------

SEQUENCE = """
jobs:
- name: build
  plan:
  - task: one
    config: {platform: linux, run: {path: "true"}}
  - task: two
    config: {platform: linux, run: {path: "true"}}
  - task: three
    config: {platform: linux, run: {path: "true"}}
"""


class NodeRuntime(RecordingRuntime):
    """Reports each finished pod on the next node of ``nodes`` (the first pod on the first)."""

    def __init__(self, nodes: list[str]) -> None:
        super().__init__()
        self.nodes = nodes

    def finish(self, name: str, exit_code: int = 0, **kwargs: Any) -> dict[str, Any]:
        data = super().finish(name, exit_code, **kwargs)
        data["spec"]["nodeName"] = self.nodes.pop(0)
        return data


def affinity_nodes(pod: Mapping[str, Any]) -> list[str]:
    node = (pod["spec"].get("affinity") or {}).get("nodeAffinity")
    if node is None:
        return []
    terms = node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return [v for t in terms for f in t["matchFields"] for v in f["values"]]


def test_with_pinning_later_pods_go_to_the_node_the_first_pod_ran_on(
    runner: Callable[[str], Runner],
) -> None:
    made = runner(SEQUENCE)
    made.settings = replace(made.settings, pin_to_node=True)
    # A scheduler would never put "two" elsewhere once pinned; the first node seen is kept.
    made.runtime = NodeRuntime(["node-a", "node-b", "node-c"])
    build_id = made.run()
    assert made.build(build_id).status == st.SUCCEEDED
    assert made.build(build_id).node == "node-a"
    assert affinity_nodes(made.pod(build_id, "one")) == []  # nowhere to be pinned to yet
    assert affinity_nodes(made.pod(build_id, "two")) == ["node-a"]
    assert affinity_nodes(made.pod(build_id, "three")) == ["node-a"]


def test_without_pinning_the_node_is_kept_but_pods_go_anywhere(
    runner: Callable[[str], Runner],
) -> None:
    made = runner(SEQUENCE)
    made.runtime = NodeRuntime(["node-a", "node-b", "node-c"])
    build_id = made.run()
    assert made.build(build_id).node == "node-a"  # for `kubectl`, and a later switch to RWO
    assert all("affinity" not in made.pod(build_id, n)["spec"] for n in ("one", "two", "three"))


# -- credentials: kept with the step they were planned into ------------------------------

CREDENTIALED = """
jobs:
- name: build
  plan:
  - task: one
    config: {platform: linux, run: {path: "true"}}
  - task: two
    config:
      platform: linux
      params: {TOKEN: ((token))}
      run: {path: sh, args: [-c, 'curl -u "bot:((token))" https://example.com']}
"""


class ResettingRuntime(RecordingRuntime):
    """Runs ``when_first_ends`` as the build's first pod ends (before the next is launched)."""

    def __init__(self, when_first_ends: Callable[[], None]) -> None:
        super().__init__()
        self.when_first_ends: Callable[[], None] | None = when_first_ends

    def finish(self, name: str, exit_code: int = 0, **kwargs: Any) -> dict[str, Any]:
        if self.when_first_ends is not None:
            self.when_first_ends, hook = None, self.when_first_ends
            hook()
        return super().finish(name, exit_code, **kwargs)


def test_a_credential_stays_secret_when_the_pipeline_is_set_again_mid_build(
    runner: Callable[..., Runner],
) -> None:
    made = runner(CREDENTIALED, {"token": "tok-old-4f1a9e"})

    def set_pipeline(token: str) -> None:
        with transaction(made.sessions) as session:
            save_pipeline(
                session,
                name="demo",
                config=textwrap.dedent(CREDENTIALED),
                clock=made.clock,
                variables={"token": token},
            )

    # The token is rotated while the build runs: its step "two" was planned with the old.
    made.runtime = ResettingRuntime(lambda: set_pipeline("tok-new-77c2b0"))
    build_id = made.run()
    pod = made.pod(build_id, "two")
    assert "tok-old-4f1a9e" not in json.dumps(pod)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert "secretKeyRef" in env["TOKEN"]["valueFrom"]
    assert "$(JETBRIDGE_CREDENTIAL_1)" in pod["spec"]["containers"][0]["args"][1]
    assert made.runtime.secrets[f"jb-{build_id}-secrets"] == {
        f"{made.step(build_id, 'two').id}-TOKEN": "tok-old-4f1a9e",
        f"{made.step(build_id, 'two').id}-JETBRIDGE_CREDENTIAL_1": "tok-old-4f1a9e",
    }
