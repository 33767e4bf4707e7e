"""The pipeline parser: the supported subset read into the model, every problem located.

Each problem case is one row: a small pipeline that is valid but for one mistake, and the
exact path, line and message a user would see. A row that reported more than its one
problem fails too, so the parser cannot hide a mistake behind noise.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from shared.errors import PipelineError, VariableError
from shared.pipeline import (
    GetStep,
    ImageResource,
    InParallelStep,
    Job,
    Pipeline,
    PutStep,
    Resource,
    ResourceType,
    RunConfig,
    TaskConfig,
    TaskInput,
    TaskOutput,
    TaskStep,
    Where,
    load_vars_file,
    parse_pipeline,
    parse_var_flags,
)


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems_of(text: str, variables: dict[str, Any] | None = None) -> list[tuple[str, int | None]]:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(yaml_text(text), variables=variables)
    return [(p.path, p.line) for p in caught.value.problems]


# ---------------------------------------------------------------- a full valid pipeline

FULL = yaml_text(
    """
    resource_types:
    - name: slack
      type: registry-image
      source: {repository: cfcommunity/slack-notification-resource}
    - name: registry-image
      type: registry-image
      source: {repository: concourse/registry-image-resource}

    resources:
    - name: repo
      type: git
      icon: github
      check_every: 1m
      source:
        uri: ((repo.uri))
        branch: main
    - name: golang
      type: registry-image
      source: ((image))
    - name: notify
      type: slack
      webhook_token: ((token))

    jobs:
    - name: build
      serial: true
      max_in_flight: 2
      plan:
      - in_parallel:
          limit: 2
          fail_fast: true
          steps:
          - get: repo
            trigger: true
          - get: toolchain
            resource: golang
            params: {format: oci}
      - task: compile
        params: {LEVEL: 3}
        config:
          platform: linux
          image_resource:
            type: registry-image
            source: {repository: golang, tag: "((go))"}
          inputs:
          - name: repo
          - name: cache
            path: .cache
            optional: true
          outputs:
          - name: built
            path: out
          params:
            DEBUG: true
            COUNT: 1
            RATIO: 2.5
            EMPTY:
            LIST: [1, two]
            TAG: go((go))-linux
          run:
            path: sh
            args: [-c, "go build -o ../out ./..."]
            dir: repo
            user: root
      - put: notify
        inputs: [built]
        params: {text: built}
    - name: ship
      public: true
      serial_groups: [deploy]
      plan:
      - in_parallel:
        - get: repo
          passed: [build]
          version: {ref: abc123}
        - get: golang
          version: every
      - put: repo
        params: {tag: repo/tag}
    """
)

FULL_VARS: dict[str, Any] = {
    "repo": {"uri": "https://example.com/app.git"},
    "image": {"repository": "golang", "tag": "1.22"},
    "token": "s3cret",
    "go": "1.22",
}


def test_a_full_pipeline_is_read_field_by_field() -> None:
    pipeline = parse_pipeline(FULL, variables=FULL_VARS)

    assert pipeline.resource_types == (
        ResourceType(
            name="slack",
            type="registry-image",
            source={"repository": "cfcommunity/slack-notification-resource"},
        ),
        ResourceType(
            name="registry-image",
            type="registry-image",
            source={"repository": "concourse/registry-image-resource"},
        ),
    )
    assert pipeline.resources == (
        Resource(
            name="repo",
            type="git",
            icon="github",
            check_every="1m",
            source={"uri": "https://example.com/app.git", "branch": "main"},
        ),
        Resource(
            name="golang", type="registry-image", source={"repository": "golang", "tag": "1.22"}
        ),
        Resource(name="notify", type="slack", webhook_token="s3cret"),
    )

    build = pipeline.job("build")
    assert (build.serial, build.max_in_flight, build.public, build.serial_groups) == (
        True,
        2,
        False,
        (),
    )
    fetch, compile_, notify = build.plan
    assert fetch == InParallelStep(
        limit=2,
        fail_fast=True,
        steps=(
            GetStep(get="repo", resource="repo", trigger=True),
            GetStep(get="toolchain", resource="golang", params={"format": "oci"}),
        ),
    )
    assert compile_ == TaskStep(
        task="compile",
        params={"LEVEL": "3"},
        config=TaskConfig(
            platform="linux",
            image_resource=ImageResource(
                type="registry-image", source={"repository": "golang", "tag": "1.22"}
            ),
            inputs=(
                TaskInput(name="repo"),
                TaskInput(name="cache", path=".cache", optional=True),
            ),
            outputs=(TaskOutput(name="built", path="out"),),
            params={
                "DEBUG": "true",
                "COUNT": "1",
                "RATIO": "2.5",
                "EMPTY": "",
                "LIST": '[1,"two"]',
                "TAG": "go1.22-linux",
            },
            run=RunConfig(
                path="sh", args=("-c", "go build -o ../out ./..."), dir="repo", user="root"
            ),
        ),
    )
    assert isinstance(compile_, TaskStep)
    assert compile_.config.image_resource is not None
    assert compile_.config.image_resource.image == "golang:1.22"
    assert [i.mount for i in compile_.config.inputs] == ["repo", ".cache"]
    assert notify == PutStep(
        put="notify", resource="notify", inputs=("built",), params={"text": "built"}
    )

    ship = pipeline.job("ship")
    assert (ship.serial, ship.max_in_flight, ship.public, ship.serial_groups) == (
        False,
        None,
        True,
        ("deploy",),
    )
    assert ship.plan == (
        InParallelStep(
            steps=(
                GetStep(get="repo", resource="repo", passed=("build",), version={"ref": "abc123"}),
                GetStep(get="golang", resource="golang", version="every"),
            )
        ),
        PutStep(put="repo", resource="repo", params={"tag": "repo/tag"}, inputs="all"),
    )


def test_every_part_knows_where_it_stood() -> None:
    pipeline = parse_pipeline(FULL, variables=FULL_VARS)
    build, ship = pipeline.jobs
    fetch = build.plan[0]
    assert isinstance(fetch, InParallelStep)
    parallel = ship.plan[0]
    assert isinstance(parallel, InParallelStep)
    wheres = [
        pipeline.resource_types[0].where,
        *(r.where for r in pipeline.resources),
        build.where,
        *(s.where for s in build.plan),
        *(s.where for s in fetch.steps),
        ship.where,
        *(s.where for s in parallel.steps),
    ]
    assert wheres == [
        Where(path="resource_types[0]", line=2),
        Where(path="resources[0]", line=10),
        Where(path="resources[1]", line=17),
        Where(path="resources[2]", line=20),
        Where(path="jobs[0]", line=25),
        Where(path="jobs[0].plan[0]", line=29),
        Where(path="jobs[0].plan[1]", line=38),
        Where(path="jobs[0].plan[2]", line=65),
        Where(path="jobs[0].plan[0].in_parallel.steps[0]", line=33),
        Where(path="jobs[0].plan[0].in_parallel.steps[1]", line=35),
        Where(path="jobs[1]", line=68),
        Where(path="jobs[1].plan[0].in_parallel[0]", line=73),
        Where(path="jobs[1].plan[0].in_parallel[1]", line=76),
    ]


def test_yaml_anchors_and_merge_keys_are_followed() -> None:
    pipeline = parse_pipeline(
        yaml_text(
            """
            jobs:
            - name: a
              plan:
              - task: one
                config: &config
                  platform: linux
                  run: {path: make}
                  params: &env {A: "1", B: "2"}
              - task: two
                config:
                  <<: *config
                  params:
                    <<: *env
                    B: "3"
            """
        )
    )
    one, two = pipeline.jobs[0].plan
    assert isinstance(one, TaskStep) and isinstance(two, TaskStep)
    assert one.config.run == two.config.run == RunConfig(path="make")
    assert two.config.params == {"A": "1", "B": "3"}


# ---------------------------------------------------------------- one problem at a time

PROBLEMS = [
    # (id, pipeline, path, line, message)
    (
        "unknown-top-level-key",
        """
        jobs: [{name: a, plan: [{get: r}]}]
        resources: [{name: r, type: git}]
        foo: 1
        """,
        "foo",
        3,
        "unknown key 'foo' in the pipeline; supported: resources, resource_types, jobs",
    ),
    (
        "groups-refused",
        """
        groups: [{name: all, jobs: [a]}]
        jobs: [{name: a, plan: [{task: t, config: {platform: linux, run: {path: x}}}]}]
        """,
        "groups",
        1,
        "key 'groups' in the pipeline is not supported: JetBridge has no web UI to group jobs"
        " in; supported: resources, resource_types, jobs",
    ),
    (
        "var-sources-refused",
        """
        var_sources: []
        jobs: [{name: a, plan: [{task: t, config: {platform: linux, run: {path: x}}}]}]
        """,
        "var_sources",
        1,
        "key 'var_sources' in the pipeline is not supported: credential managers are not"
        " supported; give the values as vars; supported: resources, resource_types, jobs",
    ),
    (
        "unknown-key-in-task-step",
        """
        jobs:
        - name: a
          plan:
          - task: t
            foo: bar
            config: {platform: linux, run: {path: x}}
        """,
        "jobs[0].plan[0].foo",
        5,
        "unknown key 'foo' in a task step; supported: task, config, file, params, vars, image,"
        " input_mapping, output_mapping, privileged, writable_inputs, tags, and the step"
        " modifiers timeout, attempts, across, on_success, on_failure, on_abort, on_error,"
        " ensure",
    ),
    (
        "unknown-key-in-run",
        """
        jobs:
        - name: a
          plan:
          - get: r
          - get: s
            resource: r
          - task: t
            config:
              platform: linux
              run:
                path: x
                shell: bash
        resources: [{name: r, type: git}]
        """,
        "jobs[0].plan[2].config.run.shell",
        12,
        "unknown key 'shell' in a task's run; supported: path, args, dir, user",
    ),
    (
        "unknown-key-in-resource",
        """
        resources: [{name: r, type: git, colour: red}]
        jobs: [{name: a, plan: [{get: r}]}]
        """,
        "resources[0].colour",
        1,
        "unknown key 'colour' in a resource; supported: name, type, source, check_every,"
        " webhook_token, icon, version, check_timeout",
    ),
    (
        "planned-key-in-resource",
        """
        resources: [{name: r, type: git, tags: [gpu]}]
        jobs: [{name: a, plan: [{get: r}]}]
        """,
        "resources[0].tags",
        1,
        "key 'tags' in a resource is not supported: tags on resources and resource types are"
        " planned with resource types (issue 6, part 3); on a get, put or task step they select"
        " nodes; supported: name, type, source, check_every, webhook_token, icon, version,"
        " check_timeout",
    ),
    (
        "resource-version-not-a-mapping",
        """
        resources: [{name: r, type: git, version: every}]
        jobs: [{name: a, plan: [{get: r}]}]
        """,
        "resources[0].version",
        1,
        "expected a mapping naming one version, found a string ('every')",
    ),
    (
        "resource-check-timeout-not-a-duration",
        """
        resources: [{name: r, type: git, check_timeout: soon}]
        jobs: [{name: a, plan: [{get: r}]}]
        """,
        "resources[0].check_timeout",
        1,
        "check_timeout must be a duration like '1h' or '5m'; found 'soon'",
    ),
    (
        "version-on-a-put",
        """
        resources: [{name: r, type: git}]
        jobs: [{name: a, plan: [{put: r, version: {ref: x}}]}]
        """,
        "jobs[0].plan[0].version",
        2,
        "key 'version' in a put step is not supported: a version is pinned on a resource or on"
        " a get step; supported: put, resource, params, inputs, no_get, tags, and the step"
        " modifiers timeout, attempts, across, on_success, on_failure, on_abort, on_error,"
        " ensure",
    ),
    (
        "job-key-refused-with-reason",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          plan: [{get: r}]
          interruptible: true
        """,
        "jobs[0].interruptible",
        5,
        "key 'interruptible' in a job is not supported: there are no workers to drain: a step's"
        " pod always runs to its end; supported: name, plan, serial, serial_groups,"
        " max_in_flight, public, on_success, on_failure, on_abort, on_error, ensure",
    ),
    (
        "task-file-from-no-artifact",
        """
        jobs:
        - name: a
          plan:
          - task: t
            file: ci/t.yml
        """,
        "jobs[0].plan[0].file",
        5,
        "task 't' reads its config from 'ci/t.yml', from artifact 'ci', but no earlier step in"
        " job 'a' produces it; earlier steps produce: nothing",
    ),
    (
        "step-with-no-kind",
        """
        jobs:
        - name: a
          plan:
          - trigger: true
        """,
        "jobs[0].plan[0]",
        4,
        "a step needs exactly one of get, put, task, in_parallel, do, try, load_var,"
        " set_pipeline; found keys: trigger",
    ),
    (
        "step-with-two-kinds",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          plan:
          - get: r
            put: r
        """,
        "jobs[0].plan[0]",
        5,
        "a step needs exactly one of get, put, task, in_parallel, do, try, load_var,"
        " set_pipeline; this one has 'get' and 'put'",
    ),
    (
        "aggregate-refused",
        """
        jobs:
        - name: a
          plan:
          - aggregate: []
        """,
        "jobs[0].plan[0]",
        4,
        "'aggregate' was removed in Concourse 7; use in_parallel; a step needs one of get, put,"
        " task, in_parallel, do, try, load_var, set_pipeline",
    ),
    (
        "plan-missing",
        """
        jobs:
        - name: a
          serial: true
        """,
        "jobs[0].plan",
        2,
        "a job needs `plan`: a non-empty list of steps",
    ),
    (
        "plan-empty",
        """
        jobs:
        - name: a
          plan: []
        """,
        "jobs[0].plan",
        3,
        "a job's plan needs at least one step",
    ),
    (
        "jobs-missing",
        """
        resources: [{name: r, type: git}]
        """,
        "jobs",
        1,
        "a pipeline needs `jobs`: a list of jobs",
    ),
    (
        "platform-missing",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config:
              run: {path: x}
        """,
        "jobs[0].plan[0].config.platform",
        6,
        "a task config needs `platform`: a string",
    ),
    (
        "run-path-missing",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config:
              platform: linux
              run: {args: [x]}
        """,
        "jobs[0].plan[0].config.run.path",
        7,
        "a task's run needs `path`: a string",
    ),
    (
        "string-where-list-needed",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          plan: [{get: r}]
        - name: b
          plan:
          - get: r
            passed: a
        """,
        "jobs[1].plan[0].passed",
        8,
        "expected a list of strings, found a string ('a'); write a one-item list: [a]",
    ),
    (
        "string-where-boolean-needed",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          plan:
          - get: r
            trigger: "yes"
        """,
        "jobs[0].plan[0].trigger",
        6,
        "expected true or false, found a string ('yes')",
    ),
    (
        "number-where-string-needed",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config:
              platform: linux
              run: {path: x, args: [--count, 3]}
        """,
        "jobs[0].plan[0].config.run.args[1]",
        7,
        "expected a string, found an integer (3)",
    ),
    (
        "zero-max-in-flight",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          max_in_flight: 0
          plan: [{get: r}]
        """,
        "jobs[0].max_in_flight",
        4,
        "expected a whole number of at least 1, found an integer (0)",
    ),
    (
        "source-not-a-mapping",
        """
        resources: [{name: r, type: git, source: [uri]}]
        jobs: [{name: a, plan: [{get: r}]}]
        """,
        "resources[0].source",
        1,
        "expected a mapping, found a list",
    ),
    (
        "duplicate-yaml-key",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          plan: [{get: r}]
          name: b
        """,
        "jobs[0].name",
        5,
        "key 'name' appears twice; the first is on line 3",
    ),
    (
        "duplicate-resource-name",
        """
        resources:
        - name: r
          type: git
        - name: r
          type: git
        jobs: [{name: a, plan: [{get: r}]}]
        """,
        "resources[1].name",
        4,
        "resource name 'r' is already used by resources[0] (line 2)",
    ),
    (
        "duplicate-job-name",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          plan: [{get: r}]
        - name: a
          plan: [{get: r}]
        """,
        "jobs[1].name",
        5,
        "job name 'a' is already used by jobs[0] (line 3)",
    ),
    (
        "get-of-unknown-resource",
        """
        resources: [{name: repo, type: git}, {name: clock, type: git}]
        jobs:
        - name: a
          plan:
          - get: rpeo
        """,
        "jobs[0].plan[0].get",
        5,
        "get step names resource 'rpeo', which is not declared; resources: repo, clock",
    ),
    (
        "put-of-unknown-resource-via-resource-key",
        """
        resources: [{name: repo, type: git}]
        jobs:
        - name: a
          plan:
          - put: out
            resource: image
            inputs: []
        """,
        "jobs[0].plan[0].resource",
        6,
        "put step names resource 'image', which is not declared; resources: repo",
    ),
    (
        "undeclared-resource-type",
        """
        resources:
        - name: r
          type: svn
        jobs: [{name: a, plan: [{get: r}]}]
        """,
        "resources[0].type",
        3,
        "resource 'r' has type 'svn', which is neither built in (gcs, git, time) nor declared under"
        " resource_types",
    ),
    (
        "resource-type-of-undeclared-type",
        """
        resource_types: [{name: slack, type: oci-image}]
        resources: [{name: r, type: slack}]
        jobs: [{name: a, plan: [{get: r}]}]
        """,
        "resource_types[0].type",
        1,
        "resource type 'slack' has type 'oci-image', which is neither built in (docker-image,"
        " gcs, git, registry-image, time) nor declared under resource_types",
    ),
    (
        "check-every-not-a-duration",
        """
        resources:
        - name: r
          type: git
          check_every: 5 minutes
        jobs: [{name: a, plan: [{get: r}]}]
        """,
        "resources[0].check_every",
        4,
        "check_every must be a duration like '1m' or '30s', or 'never'; found '5 minutes'",
    ),
    (
        "image-resource-without-repository",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config:
              platform: linux
              image_resource:
                type: registry-image
                source: {tag: "3"}
              run: {path: x}
        """,
        "jobs[0].plan[0].config.image_resource.source.repository",
        9,
        "an image_resource needs source.repository, the image to run the task in",
    ),
    (
        "parallel-siblings-produce-one-artifact",
        """
        resources: [{name: repo, type: git}]
        jobs:
        - name: a
          plan:
          - in_parallel:
            - get: repo
            - task: t
              config:
                platform: linux
                run: {path: x}
                outputs: [{name: repo}]
        """,
        "jobs[0].plan[0].in_parallel[1]",
        7,
        "artifact 'repo' is produced by both jobs[0].plan[0].in_parallel[0] and this step,"
        " which run in parallel; give one of them another name",
    ),
    (
        "get-version-neither-latest-nor-every",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          plan:
          - get: r
            version: newest
        """,
        "jobs[0].plan[0].version",
        6,
        "expected 'latest', 'every' or a mapping naming one version, found a string ('newest')",
    ),
    (
        "passed-unknown-job",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: build
          plan: [{get: r}]
        - name: ship
          plan:
          - get: r
            passed: [build, tset]
        """,
        "jobs[1].plan[0].passed[1]",
        8,
        "passed names job 'tset', which is not declared; jobs: build, ship",
    ),
    (
        "task-input-not-produced",
        """
        resources: [{name: repo, type: git}]
        jobs:
        - name: build
          plan:
          - get: repo
          - task: test
            config:
              platform: linux
              run: {path: make}
              inputs:
              - name: repo
              - name: built
        """,
        "jobs[0].plan[1].config.inputs[1]",
        12,
        "task 'test' needs input 'built' but no earlier step in job 'build' produces it;"
        " earlier steps produce: repo",
    ),
    (
        "task-input-from-a-parallel-sibling",
        """
        resources: [{name: repo, type: git}]
        jobs:
        - name: build
          plan:
          - in_parallel:
            - get: repo
            - task: test
              config:
                platform: linux
                run: {path: make}
                inputs: [{name: repo}]
        """,
        "jobs[0].plan[0].in_parallel[1].config.inputs[0]",
        11,
        "task 'test' needs input 'repo' but no earlier step in job 'build' produces it;"
        " earlier steps produce: nothing",
    ),
    (
        "put-produces-nothing",
        """
        resources: [{name: repo, type: git}]
        jobs:
        - name: build
          plan:
          - put: repo
            inputs: []
          - task: test
            config:
              platform: linux
              run: {path: make}
              inputs: [{name: repo}]
        """,
        "jobs[0].plan[1].config.inputs[0]",
        11,
        "task 'test' needs input 'repo' but no earlier step in job 'build' produces it;"
        " earlier steps produce: nothing",
    ),
    (
        "output-over-a-read-only-input",
        """
        resources: [{name: repo, type: git}]
        jobs:
        - name: build
          plan:
          - get: repo
          - task: fmt
            config:
              platform: linux
              run: {path: gofmt}
              inputs: [{name: repo}]
              outputs: [{name: formatted, path: repo}]
        """,
        "jobs[0].plan[1].config.outputs[0]",
        11,
        "output 'formatted' would be mounted at 'repo', where jobs[0].plan[1].config.inputs[0]"
        " mounts input 'repo'; inputs are read-only in JetBridge: to write into it, name the"
        " output 'repo' (a writable copy that becomes the output), or give the output its own"
        " path",
    ),
    (
        "non-linux-platform",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config: {platform: darwin, run: {path: x}}
        """,
        "jobs[0].plan[0].config.platform",
        5,
        "tasks run as Linux pods, so platform must be 'linux'; found 'darwin'",
    ),
    (
        "var-source-refused",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config:
              platform: linux
              run: {path: ((vault:deploy-key))}
        """,
        "jobs[0].plan[0].config.run.path",
        7,
        "((vault:deploy-key)) reads var source 'vault'; var sources are not supported, give"
        " the value as a var named 'deploy-key' instead",
    ),
]


# Step modifiers, hooks and the steps beyond get/put/task: one mistake each.
PROBLEMS += [
    (
        "timeout-on-a-do-refused",
        """
        jobs:
        - name: a
          plan:
          - do:
            - task: t
              config: {platform: linux, run: {path: x}}
            timeout: 1m
        """,
        "jobs[0].plan[0].timeout",
        7,
        "`timeout` on a do step is not supported: put `timeout` on the get, put and task"
        " steps inside it (each runs as a pod of its own)",
    ),
    (
        "attempts-on-in-parallel-refused",
        """
        jobs:
        - name: a
          plan:
          - in_parallel: [{task: t, config: {platform: linux, run: {path: x}}}]
            attempts: 2
        """,
        "jobs[0].plan[0].attempts",
        5,
        "`attempts` on an in_parallel step is not supported: put `attempts` on the get, put"
        " and task steps inside it (each runs as a pod of its own)",
    ),
    (
        "timeout-not-a-duration",
        """
        jobs:
        - name: a
          plan:
          - task: t
            timeout: 0s
            config: {platform: linux, run: {path: x}}
        """,
        "jobs[0].plan[0].timeout",
        5,
        "timeout must be a duration like '90s', '10m' or '1h30m'; found '0s'",
    ),
    (
        "privileged-refused",
        """
        jobs:
        - name: a
          plan:
          - task: t
            privileged: true
            config: {platform: linux, run: {path: x}}
        """,
        "jobs[0].plan[0].privileged",
        5,
        "privileged tasks are refused: steps run as restricted pods (no root, no capabilities,"
        " no privilege escalation); build images with a rootless builder (kaniko, buildah)"
        " instead",
    ),
    (
        "task-with-file-and-config",
        """
        jobs:
        - name: a
          plan:
          - task: make-ci
            config: {platform: linux, outputs: [{name: ci}], run: {path: x}}
          - task: t
            file: ci/t.yml
            config: {platform: linux, run: {path: x}}
        """,
        "jobs[0].plan[1].file",
        7,
        "a task step takes `config` or `file`, not both: `file` names a task config to read"
        " from an artifact, `config` gives it inline",
    ),
    (
        "task-with-neither-file-nor-config",
        """
        jobs:
        - name: a
          plan:
          - task: t
            params: {A: b}
        """,
        "jobs[0].plan[0].config",
        4,
        "a task step needs `config` (the task config, inline) or `file` (<artifact>/<path> of"
        " a task config file)",
    ),
    (
        "task-file-without-a-path",
        """
        jobs:
        - name: a
          plan:
          - task: t
            file: task.yml
        """,
        "jobs[0].plan[0].file",
        5,
        "expected <artifact>/<path to a file in it>, like repo/ci/task.yml; found 'task.yml'",
    ),
    (
        "image-from-no-artifact",
        """
        jobs:
        - name: a
          plan:
          - task: t
            image: golang
            config: {platform: linux, run: {path: x}}
        """,
        "jobs[0].plan[0].image",
        5,
        "task 't' runs in image 'golang' but no earlier step in job 'a' produces it; earlier"
        " steps produce: nothing",
    ),
    (
        "input-mapping-of-no-input",
        """
        jobs:
        - name: a
          plan:
          - task: t
            input_mapping: {srcc: repo}
            config: {platform: linux, inputs: [{name: src, optional: true}], run: {path: x}}
        """,
        "jobs[0].plan[0].input_mapping.srcc",
        5,
        "input_mapping maps 'srcc', which is not an input of task 't'; its inputs: src",
    ),
    (
        "output-mapping-of-no-output",
        """
        jobs:
        - name: a
          plan:
          - task: t
            output_mapping: {out: bin}
            config: {platform: linux, outputs: [{name: dist}], run: {path: x}}
        """,
        "jobs[0].plan[0].output_mapping.out",
        5,
        "output_mapping maps 'out', which is not an output of task 't'; its outputs: dist",
    ),
    (
        "mapped-input-not-produced",
        """
        jobs:
        - name: a
          plan:
          - task: t
            input_mapping: {src: repo}
            config: {platform: linux, inputs: [{name: src}], run: {path: x}}
        """,
        "jobs[0].plan[0].config.inputs[0]",
        6,
        "task 't' needs input 'src' (mapped to 'repo') but no earlier step in job 'a' produces"
        " it; earlier steps produce: nothing",
    ),
    (
        "writable-copy-on-another-path",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config:
              platform: linux
              inputs: [{name: src, optional: true}]
              outputs: [{name: src, path: out}]
              run: {path: x}
        """,
        "jobs[0].plan[0].config.outputs[0]",
        8,
        "output 'src' has the name of an input but another path ('out', the input's is 'src');"
        " an output named after an input is a writable copy of it, in its place: give both one"
        " path",
    ),
    (
        "load-var-bad-format",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config: {platform: linux, outputs: [{name: out}], run: {path: x}}
          - load_var: v
            file: out/v
            format: toml
        """,
        "jobs[0].plan[1].format",
        8,
        "format must be one of json, yaml, yml, trim, raw; found 'toml'",
    ),
    (
        "load-var-set-twice",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config: {platform: linux, outputs: [{name: out}], run: {path: x}}
          - load_var: v
            file: out/v
          - load_var: v
            file: out/w
        """,
        "jobs[0].plan[2].load_var",
        8,
        "local var 'v' is already set by jobs[0].plan[1]; a job sets each local var once",
    ),
    (
        "local-var-never-set",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config: {platform: linux, run: {path: echo, args: [((.:version))]}}
        """,
        "jobs[0].plan[0]",
        4,
        "((.:version)) is used here, but no earlier load_var step in job 'a' sets it (local vars"
        " set so far: none); an across var is only known inside its own step",
    ),
    (
        "local-var-set-later",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config: {platform: linux, outputs: [{name: out}], run: {path: echo, args: [((.:v))]}}
          - load_var: v
            file: out/v
        """,
        "jobs[0].plan[0]",
        4,
        "((.:v)) is used here, but no earlier load_var step in job 'a' sets it (local vars set"
        " so far: none); an across var is only known inside its own step",
    ),
    (
        "set-pipeline-team-refused",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config: {platform: linux, outputs: [{name: ci}], run: {path: x}}
          - set_pipeline: self
            file: ci/pipeline.yml
            team: main
        """,
        "jobs[0].plan[1].team",
        8,
        "key 'team' in a set_pipeline step is not supported: JetBridge has no teams:"
        " set_pipeline sets a pipeline of this JetBridge; supported: set_pipeline, file, vars,"
        " var_files, and the step modifiers timeout, attempts, across, on_success, on_failure,"
        " on_abort, on_error, ensure",
    ),
    (
        "across-values-from-a-local-var",
        """
        jobs:
        - name: a
          plan:
          - task: t
            across:
            - var: v
              values: ((.:list))
            config: {platform: linux, run: {path: x}}
        """,
        "jobs[0].plan[0].across[0].values",
        7,
        "across values from a local var (load_var) are not supported yet; give the values as a"
        " list",
    ),
    (
        "across-var-twice",
        """
        jobs:
        - name: a
          plan:
          - task: t
            across:
            - {var: v, values: [a]}
            - {var: v, values: [b]}
            config: {platform: linux, run: {path: x}}
        """,
        "jobs[0].plan[0].across[1].var",
        7,
        "across var 'v' is already declared by jobs[0].plan[0].across[0]",
    ),
    (
        "across-max-in-flight-zero",
        """
        jobs:
        - name: a
          plan:
          - task: t
            across:
            - {var: v, values: [a], max_in_flight: 0}
            config: {platform: linux, run: {path: x}}
        """,
        "jobs[0].plan[0].across[0].max_in_flight",
        6,
        "expected a whole number of at least 1, found an integer (0)",
    ),
    (
        "repeated-get-name",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          plan:
          - get: r
          - get: r
        """,
        "jobs[0].plan[1].get",
        6,
        "get 'r' is already in job 'a' at jobs[0].plan[0] (line 5); give this one another"
        " name, with `resource: r`",
    ),
    (
        "unused-resource",
        """
        resources:
        - {name: r, type: git}
        - {name: docs, type: git}
        jobs:
        - name: a
          plan: [{get: r}]
        """,
        "resources[1].name",
        3,
        "resource 'docs' is not used by any job; remove it, or get or put it in a job"
        " (Concourse refuses unused resources too)",
    ),
    (
        "passed-cycle",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          plan: [{get: r, passed: [b]}]
        - name: b
          plan: [{get: r, passed: [a]}]
        """,
        "jobs[0].plan[0].passed[0]",
        4,
        "passed constraints form a cycle: a → b → a (each job takes only versions that passed"
        " the next), so no version can ever reach these jobs",
    ),
    (
        "passed-itself",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          plan: [{get: r, passed: [a]}]
        """,
        "jobs[0].plan[0].passed[0]",
        4,
        "passed constraints form a cycle: a → a (each job takes only versions that passed the"
        " next), so no version can ever reach these jobs",
    ),
    (
        "get-params-refused",
        """
        resources: [{name: r, type: git}]
        jobs:
        - name: a
          plan:
          - put: r
            get_params: {depth: 1}
        """,
        "jobs[0].plan[0].get_params",
        6,
        "key 'get_params' in a put step is not supported: a put runs no implicit get in"
        " JetBridge; add a get in a later job; supported: put, resource, params, inputs, no_get,"
        " tags, and the step modifiers timeout, attempts, across, on_success, on_failure,"
        " on_abort, on_error, ensure",
    ),
    (
        "container-limits-refused",
        """
        jobs:
        - name: a
          plan:
          - task: t
            container_limits: {cpu: 1}
            config: {platform: linux, run: {path: x}}
        """,
        "jobs[0].plan[0].container_limits",
        5,
        "key 'container_limits' in a task step is not supported: a step pod's requests and"
        " limits come from settings (JETBRIDGE_STEP_REQUESTS, JETBRIDGE_STEP_LIMITS);"
        " supported: task, config, file, params, vars, image, input_mapping, output_mapping,"
        " privileged, writable_inputs, tags, and the step modifiers timeout, attempts, across,"
        " on_success, on_failure, on_abort, on_error, ensure",
    ),
    (
        "hook-with-a-bad-step",
        """
        jobs:
        - name: a
          plan:
          - task: t
            config: {platform: linux, run: {path: x}}
            on_failure: {tsak: alert}
        """,
        "jobs[0].plan[0].on_failure",
        6,
        "a step needs exactly one of get, put, task, in_parallel, do, try, load_var,"
        " set_pipeline; found keys: tsak",
    ),
]


@pytest.mark.parametrize(
    ("text", "path", "line", "message"),
    [row[1:] for row in PROBLEMS],
    ids=[row[0] for row in PROBLEMS],
)
def test_a_mistake_is_one_problem_with_its_path_and_line(
    text: str, path: str, line: int, message: str
) -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(yaml_text(text))
    assert [(p.path, p.line, p.message) for p in caught.value.problems] == [(path, line, message)]
    assert f"line {line}: {path}: {message}" in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    text = """
        groups: []
        resources:
        - name: repo
          type: git
        - name: repo
          type: svn
        jobs:
        - name: build
          plan:
          - get: rpo
            trigger: maybe
          - task: test
            file: ci
        - name: ship
          plan:
          - get: repo
            passed: [buidl]
        """
    assert problems_of(text) == [
        ("groups", 1),
        ("resources[1].name", 5),
        ("resources[1].type", 6),
        ("jobs[0].plan[0].get", 10),
        ("jobs[0].plan[0].trigger", 11),
        ("jobs[0].plan[1].file", 13),
        ("jobs[1].plan[0].passed[0]", 17),
    ]


def test_a_pipeline_error_names_its_source() -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline("jobs: nope\n", source="ci/pipeline.yml")
    assert caught.value.source == "ci/pipeline.yml"
    assert str(caught.value).startswith("ci/pipeline.yml is not a valid pipeline")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("jobs:\n- name: a\n  plan: [\n", 4, "invalid YAML: expected the node content"),
        ("jobs:\n  - name: a\n   plan: []\n", 3, "invalid YAML: expected <block end>"),
        ("jobs: []\n---\njobs: []\n", 2, "invalid YAML: but found another document"),
        ("jobs: [1\nresources: []\n", 2, "invalid YAML: expected ',' or ']'"),
    ],
    ids=["unclosed-flow-list", "bad-indent", "two-documents", "flow-list-without-comma"],
)
def test_a_yaml_syntax_error_is_a_problem_with_its_line(text: str, line: int, message: str) -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(text)
    (problem,) = caught.value.problems
    assert problem.line == line
    assert problem.message.startswith(message)


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("", "(root)", "the pipeline is empty; it needs at least `jobs`"),
        ("- a\n", "(root)", "expected the pipeline (a mapping), found a list"),
        ("jobs: !custom x\n", "jobs", "expected a list, found a string ('x')"),
        ("a: &a [*a]\n", "a[0]", "a YAML alias refers to a node that contains it"),
    ],
    ids=["empty", "not-a-mapping", "custom-tag", "recursive-alias"],
)
def test_a_document_that_is_no_pipeline_at_all(text: str, path: str, message: str) -> None:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(text)
    (problem,) = caught.value.problems
    assert (problem.path, problem.message[: len(message)]) == (path, message)


# ---------------------------------------------------------------- params


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", "true"),
        ("false", "false"),
        ("1", "1"),
        ("2.0", "2"),
        ("2.5", "2.5"),
        ("~", ""),
        ("'007'", "007"),
        ("2024-01-02", "2024-01-02"),
        ("{b: 2, a: [x, null]}", '{"a":["x",null],"b":2}'),
    ],
    ids=["true", "false", "int", "whole-float", "float", "null", "quoted", "date", "mapping"],
)
def test_task_params_become_strings_as_concourse_makes_them(value: str, expected: str) -> None:
    text = f"""
        jobs:
        - name: a
          plan:
          - task: t
            params: {{STEP: {value}}}
            config:
              platform: linux
              run: {{path: x}}
              params: {{CONFIG: {value}}}
        """
    step = parse_pipeline(yaml_text(text)).jobs[0].plan[0]
    assert isinstance(step, TaskStep)
    assert (step.params, step.config.params) == ({"STEP": expected}, {"CONFIG": expected})


# ---------------------------------------------------------------- vars

VARS_PIPELINE = """
    resources:
    - name: repo
      type: git
      source: ((git))
    jobs:
    - name: ((job.name))
      max_in_flight: ((limit))
      plan:
      - get: repo
      - task: t
        config:
          platform: linux
          run:
            path: ((cmd))
            args: ((args))
          params:
            URL: "https://((git.host))/((job.name)):((limit))"
            ((env_name)): set
            DOTTED: (("with.dot"))
"""


@pytest.mark.parametrize(
    ("variables", "where", "expected"),
    [
        (
            {"git": {"uri": "u", "host": "h", "depth": 1}},
            lambda p: p.resources[0].source,
            {"uri": "u", "host": "h", "depth": 1},
        ),
        ({"limit": 3}, lambda p: p.jobs[0].max_in_flight, 3),
        ({"args": ["-c", "make"]}, lambda p: p.jobs[0].plan[1].config.run.args, ("-c", "make")),
        ({"job": {"name": "build"}}, lambda p: p.jobs[0].name, "build"),
        ({"cmd": "make"}, lambda p: p.jobs[0].plan[1].config.run.path, "make"),
        (
            {"git": {"host": "example.com"}, "job": {"name": "b"}, "limit": 3},
            lambda p: p.jobs[0].plan[1].config.params["URL"],
            "https://example.com/b:3",
        ),
        ({"env_name": "MODE"}, lambda p: p.jobs[0].plan[1].config.params["MODE"], "set"),
        ({"with.dot": True}, lambda p: p.jobs[0].plan[1].config.params["DOTTED"], "true"),
    ],
    ids=[
        "whole-mapping",
        "whole-int",
        "whole-list",
        "nested-field",
        "whole-string",
        "embedded-several",
        "in-a-key",
        "quoted-name",
    ],
)
def test_vars_fill_the_pipeline(variables: dict[str, Any], where: Any, expected: Any) -> None:
    given: dict[str, Any] = {
        "git": {"uri": "u", "host": "h"},
        "job": {"name": "j"},
        "limit": 1,
        "cmd": "true",
        "args": [],
        "env_name": "E",
        "with.dot": "x",
    }
    pipeline = parse_pipeline(yaml_text(VARS_PIPELINE), variables={**given, **variables})
    assert where(pipeline) == expected


def test_every_missing_var_is_named_with_its_lines() -> None:
    with pytest.raises(VariableError) as caught:
        parse_pipeline(yaml_text(VARS_PIPELINE), variables={"git": {"uri": "u"}, "limit": 1})
    message = str(caught.value)
    assert message.startswith("pipeline uses 6 var(s) that were not given:\n")
    for line in [
        "((job.name)) on line 6, 17",
        "((cmd)) on line 14",
        "((args)) on line 15",
        "((git.host)) on line 17 (var 'git' has no field 'host'; its fields: uri)",
        "((env_name)) on line 18",
        '(("with.dot")) on line 19',
    ]:
        assert f"\n  {line}\n" in message + "\n"


def test_no_variables_means_every_var_is_missing() -> None:
    with pytest.raises(VariableError, match=r"\(\(cmd\)\) on line 1"):
        parse_pipeline("jobs: ((cmd))\n")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["a"], "var ((v)) holds a list, which can fill a whole value but not be embedded"),
        (None, "var ((v)) holds null, which can fill a whole value but not be embedded"),
    ],
    ids=["list", "null"],
)
def test_only_a_scalar_var_can_be_embedded(value: Any, message: str) -> None:
    text = """
        jobs:
        - name: a
          plan:
          - task: t
            config: {platform: linux, run: {path: "bin/((v))"}}
        """
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(yaml_text(text), variables={"v": value})
    (problem,) = caught.value.problems
    assert (problem.path, problem.line) == ("jobs[0].plan[0].config.run.path", 5)
    assert problem.message.startswith(message)


def test_a_var_of_the_wrong_type_says_where_it_came_from() -> None:
    text = """
        jobs:
        - name: a
          max_in_flight: ((n))
          plan: [{task: t, config: {platform: linux, run: {path: x}}}]
        """
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(yaml_text(text), variables={"n": "2"})
    (problem,) = caught.value.problems
    expected = "expected a whole number of at least 1, found a string ('2') from ((n))"
    assert (problem.path, problem.line, problem.message) == ("jobs[0].max_in_flight", 3, expected)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["a=1"], {"a": "1"}),
        (["a=x=y", "b="], {"a": "x=y", "b": ""}),
        (["git.uri=u", "git.branch=main"], {"git": {"uri": "u", "branch": "main"}}),
        (["a=1", "a=2"], {"a": "2"}),
    ],
    ids=["plain", "equals-in-value", "nested", "last-wins"],
)
def test_var_flags(flags: list[str], expected: dict[str, Any]) -> None:
    assert parse_var_flags(flags) == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["a"], "var flag 'a' must look like name=value"),
        (["=1"], "var flag '=1' must look like name=value"),
        (["a=1", "a.b=2"], "var flag 'a.b=2' sets a field of 'a', which an earlier flag set"),
    ],
    ids=["no-equals", "no-name", "field-of-a-string"],
)
def test_bad_var_flags(flags: list[str], message: str) -> None:
    with pytest.raises(VariableError) as caught:
        parse_var_flags(flags)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a: 1\nb: {c: [x]}\n", {"a": 1, "b": {"c": ["x"]}}),
        ("", {}),
    ],
    ids=["mapping", "empty"],
)
def test_vars_files(tmp_path: Path, content: str, expected: dict[str, Any]) -> None:
    path = tmp_path / "vars.yml"
    path.write_text(content)
    assert load_vars_file(path) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- a\n", "must hold a YAML mapping of var names to values; found a list"),
        ("a: [\n", "is not valid YAML on line 2"),
        ("1: a\n", "has var names that are not strings: 1"),
        (None, "cannot read vars file"),
    ],
    ids=["list", "syntax", "int-key", "missing-file"],
)
def test_bad_vars_files(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "vars.yml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(VariableError) as caught:
        load_vars_file(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_the_model_lookups_name_what_there_is() -> None:
    pipeline = Pipeline(jobs=(Job(name="a", plan=()),))
    with pytest.raises(KeyError, match="no job 'b' in the pipeline; jobs: a"):
        pipeline.job("b")
    with pytest.raises(KeyError, match="no resource 'r' in the pipeline; resources: "):
        pipeline.resource("r")


# ---------------------------------------------------------------- modifiers, hooks, more steps

MODIFIERS = yaml_text(
    """
    resources: [{name: repo, type: git}]
    jobs:
    - name: a
      plan:
      - get: repo
        tags: [gpu]
        attempts: 2
        timeout: 1h30m
      - load_var: version
        file: repo/VERSION
        format: trim
      - do:
        - task: unit
          file: repo/ci/unit.yml
          vars: {go: "1.23"}
          image: repo
          input_mapping: {src: repo}
          output_mapping: {report: unit-report}
          writable_inputs: true
          params: {V: ((.:version))}
        on_failure:
          put: repo
          inputs: []
      - try:
          task: lint
          config: {platform: linux, run: {path: lint}}
      - task: build
        across:
        - var: os
          values: [linux, darwin]
          max_in_flight: all
        fail_fast: true
        config: {platform: linux, run: {path: make, args: [((.:os))]}}
        ensure:
          set_pipeline: self
          file: repo/ci/pipeline.yml
          vars: {a: b}
          var_files: [repo/ci/vars.yml]
      on_abort:
        task: tidy
        config: {platform: linux, run: {path: tidy}}
    """
)


def test_modifiers_hooks_and_the_other_steps_are_read_field_by_field() -> None:
    from shared.pipeline import (
        AcrossStep,
        AcrossVar,
        DoStep,
        Hooks,
        LoadVarStep,
        SetPipelineStep,
        TryStep,
    )

    job = parse_pipeline(MODIFIERS).job("a")
    get, load, do, try_, across = job.plan
    assert get == GetStep(get="repo", resource="repo", tags=("gpu",), attempts=2, timeout="1h30m")
    assert isinstance(get, GetStep) and get.timeout_seconds == 5400
    assert load == LoadVarStep(load_var="version", file="repo/VERSION", format="trim")
    assert do == DoStep(
        steps=(
            TaskStep(
                task="unit",
                file="repo/ci/unit.yml",
                vars={"go": "1.23"},
                image="repo",
                input_mapping={"src": "repo"},
                output_mapping={"report": "unit-report"},
                writable_inputs=True,
                params={"V": "((.:version))"},
            ),
        ),
        hooks=Hooks(on_failure=PutStep(put="repo", resource="repo", inputs=())),
    )
    assert try_ == TryStep(
        step=TaskStep(task="lint", config=TaskConfig(platform="linux", run=RunConfig(path="lint")))
    )
    assert isinstance(across, AcrossStep)
    assert across.vars == (AcrossVar(var="os", values=("linux", "darwin"), max_in_flight=None),)
    assert across.fail_fast and across.combinations == (("linux",), ("darwin",))
    assert [s.config.run.args for s in across.steps if isinstance(s, TaskStep) and s.config] == [
        ("linux",),
        ("darwin",),
    ]
    assert across.hooks.ensure == SetPipelineStep(
        set_pipeline="self",
        file="repo/ci/pipeline.yml",
        vars={"a": "b"},
        var_files=("repo/ci/vars.yml",),
    )
    assert job.hooks == Hooks(
        on_abort=TaskStep(
            task="tidy", config=TaskConfig(platform="linux", run=RunConfig(path="tidy"))
        )
    )


def test_an_across_var_that_fills_a_whole_value_keeps_its_type() -> None:
    text = yaml_text(
        """
        jobs:
        - name: a
          plan:
          - task: t
            across:
            - var: args
              values: [[-v, one], [-q]]
            config: {platform: linux, run: {path: x, args: ((.:args))}}
        """
    )
    (across,) = parse_pipeline(text).job("a").plan
    runs = [s.config.run.args for s in across.steps if isinstance(s, TaskStep) and s.config]
    assert runs == [("-v", "one"), ("-q",)]


TASK_FILE = yaml_text(
    """
    platform: linux
    inputs: [{name: src}]
    params: {GO: ((go))}
    run: {path: go, args: [test, ((.:pkg))]}
    """
)


def test_a_task_file_reads_like_an_inline_config() -> None:
    from shared.pipeline import parse_task_config

    config = parse_task_config(TASK_FILE, variables={"go": "1.23"})
    assert config == TaskConfig(
        platform="linux",
        inputs=(TaskInput(name="src"),),
        params={"GO": "1.23"},
        run=RunConfig(path="go", args=("test", "((.:pkg))")),
    )


@pytest.mark.parametrize(
    ("text", "variables", "error", "message"),
    [
        (TASK_FILE, {}, VariableError, "((go)) on line 3"),
        ("platform: linux\n", {}, PipelineError, "line 1: run: a task config needs `run`"),
        ("", {}, PipelineError, "the task config is empty"),
        (
            "platform: linux\nrun: {path: x}\ncolour: red\n",
            {},
            PipelineError,
            "unknown key 'colour'",
        ),
    ],
    ids=["missing-var", "no-run", "empty", "unknown-key"],
)
def test_a_bad_task_file_says_what_is_wrong(
    text: str, variables: dict[str, Any], error: type[Exception], message: str
) -> None:
    from shared.pipeline import parse_task_config

    with pytest.raises(error) as caught:
        parse_task_config(text, source="task file repo/ci/t.yml", variables=variables)
    assert message in str(caught.value)
    assert "repo/ci/t.yml" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "format_", "file", "expected"),
    [
        ("1.4.2\n", None, "VERSION", "1.4.2"),
        ('{"a": [1, 2]}', None, "v.json", {"a": [1, 2]}),
        ("a: b\n", None, "v.yml", {"a": "b"}),
        ("a: b\n", "raw", "v.yml", "a: b\n"),
        ("  x \n", "trim", "v.json", "x"),
        ("[1]", "yaml", "v", [1]),
    ],
    ids=["by-default-trim", "json-by-extension", "yaml-by-extension", "raw", "trim", "yaml"],
)
def test_load_var_reads_a_file_as_its_format_says(
    text: str, format_: str | None, file: str, expected: Any
) -> None:
    from shared.pipeline import load_var_value

    assert load_var_value(text, format=format_, file=file) == expected


def test_load_var_refuses_what_is_not_its_format() -> None:
    from shared.pipeline import load_var_value

    with pytest.raises(VariableError, match=r"repo/v\.json is not valid json"):
        load_var_value("{nope", format=None, file="repo/v.json")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("1h30m", 5400), ("500ms", 1), ("1.5m", 90), ("2h", 7200)],
)
def test_durations_in_whole_seconds_rounded_up(text: str, seconds: int) -> None:
    from shared.pipeline import duration_seconds

    assert duration_seconds(text) == seconds
