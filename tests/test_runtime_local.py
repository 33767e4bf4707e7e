"""The local runtime runs a step's pod on this machine, in bubblewrap or a folder of links.

Every test runs real processes in both sandboxes (``bwrap`` is skipped only where
bubblewrap is not installed) and checks what a user would: files in the claim
directory, the pod reported to ``on_finish`` and by ``read``, the log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import (
    V1Container,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1HostPathVolumeSource,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1Pod,
    V1PodSecurityContext,
    V1PodSpec,
    V1Probe,
    V1ResourceRequirements,
    V1SecretKeySelector,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from shared.errors import ConfigurationError, NotFoundError, PodRejected
from shared.runtime import PodDict
from shared.runtime.local import LocalRuntime

CLAIM = "artifacts"
WORKDIR = "/tmp/build/step"
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
STAMP = "2024-01-02T03:04:05Z"
RESOURCE_IMAGE = "jetbridge/git-resource:1.0"
#: Seconds for a sleeping step: unique to this test process, so that looking for it
#: among all processes finds no other worker's.
SLEEP = str(1_000_000 + os.getpid())
#: How long a pod may take to finish before a test fails: generous, for a loaded CI machine.
WAIT_SECONDS = 30.0

SANDBOXES = [
    pytest.param(
        "bwrap",
        marks=pytest.mark.skipif(
            shutil.which("bwrap") is None, reason="bubblewrap (Debian package bubblewrap) is absent"
        ),
    ),
    pytest.param("links"),
]
BWRAP_ONLY = [SANDBOXES[0]]


class Finished:
    """``on_finish``: keeps every reported pod, with an event per pod name to wait on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, list[PodDict]] = defaultdict(list)
        self._events: dict[str, threading.Event] = defaultdict(threading.Event)

    def __call__(self, pod: PodDict) -> None:
        name = pod["metadata"]["name"]
        with self._lock:
            self._pods[name].append(pod)
            event = self._events[name]
        event.set()

    def wait(self, name: str) -> PodDict:
        with self._lock:
            event = self._events[name]
        assert event.wait(WAIT_SECONDS), f"pod {name} did not finish within {WAIT_SECONDS}s"
        with self._lock:
            return self._pods[name][0]

    def count(self, name: str) -> int:
        with self._lock:
            return len(self._pods[name])


def make_pod(
    name: str,
    command: Sequence[str],
    *,
    mounts: Sequence[tuple[str, str, bool]] = (),
    env: dict[str, str] | None = None,
    working_dir: str = WORKDIR,
    image: str = "debian:12",
    deadline: int | None = None,
    termination_policy: str | None = None,
) -> V1Pod:
    """A pod shaped like the pod builder's: ``tmp`` emptyDir at /tmp, claim subPaths.

    ``mounts`` holds ``(mount path, subPath on the claim, read only)``.
    """
    volume_mounts = [V1VolumeMount(name="tmp", mount_path="/tmp")]
    volume_mounts += [
        V1VolumeMount(name=CLAIM, mount_path=path, sub_path=sub_path, read_only=read_only or None)
        for path, sub_path, read_only in mounts
    ]
    return V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=V1ObjectMeta(name=name, labels={"jetbridge.dev/step": "7"}),
        spec=V1PodSpec(
            restart_policy="Never",
            active_deadline_seconds=deadline,
            containers=[
                V1Container(
                    name="step",
                    image=image,
                    command=list(command[:1]),
                    args=list(command[1:]) or None,
                    env=[V1EnvVar(name=k, value=v) for k, v in (env or {}).items()] or None,
                    working_dir=working_dir,
                    volume_mounts=volume_mounts,
                    termination_message_policy=termination_policy,
                )
            ],
            volumes=[
                V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource()),
                V1Volume(
                    name=CLAIM,
                    persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(claim_name=CLAIM),
                ),
            ],
        ),
    )


def spec_of(pod: V1Pod) -> V1PodSpec:
    assert pod.spec is not None
    return pod.spec


def terminated(pod: PodDict) -> dict[str, Any]:
    state: dict[str, Any] = pod["status"]["containerStatuses"][0]["state"]
    assert "terminated" in state, state
    return state["terminated"]  # type: ignore[no-any-return]


def wait_until(what: str, predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until it holds, failing after ``WAIT_SECONDS``."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def processes_running(*argv: str) -> list[int]:
    """Pids of live processes whose command line is exactly ``argv``."""
    wanted = "\0".join(argv).encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline == wanted and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(params=SANDBOXES)
def sandbox(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """The directory standing in for the artifact-store claim, with one input artifact."""
    root = tmp_path / "store"
    (root / "builds/1/src").mkdir(parents=True)
    (root / "builds/1/src/greeting.txt").write_text("hello from an input\n")
    return root


@pytest.fixture
def resource_dir(tmp_path: Path) -> Path:
    """A host folder holding a resource type's ``in`` script, as the git resource image has."""
    folder = tmp_path / "git-resource"
    folder.mkdir()
    script = folder / "in"
    script.write_text(
        '#!/bin/sh\necho "fetching into $1"\necho \'{"ref": "abc123"}\' > "$1/version"\n'
    )
    script.chmod(0o755)
    return folder


@pytest.fixture
def finished() -> Finished:
    return Finished()


@pytest.fixture
def make_runtime(
    sandbox: str, store: Path, tmp_path: Path, finished: Finished, resource_dir: Path
) -> Iterator[Callable[[], LocalRuntime]]:
    made: list[LocalRuntime] = []

    def make() -> LocalRuntime:
        runtime = LocalRuntime(
            claims={CLAIM: store},
            work_root=tmp_path / "work",
            on_finish=finished,
            image_binds={RESOURCE_IMAGE: {"/opt/resource": resource_dir}},
            sandbox=sandbox,  # type: ignore[arg-type]
            clock=lambda: NOW,
        )
        assert runtime.sandbox == sandbox
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


@pytest.fixture
def runtime(make_runtime: Callable[[], LocalRuntime]) -> LocalRuntime:
    return make_runtime()


@pytest.mark.parametrize(
    "working_dir", [WORKDIR, "/workspace/step"], ids=["workdir-in-tmp", "workdir-missing-on-host"]
)
def test_task_reads_an_input_and_writes_an_output(
    runtime: LocalRuntime, finished: Finished, store: Path, working_dir: str
) -> None:
    pod = make_pod(
        "copy",
        ["sh", "-c", "cat src/greeting.txt > out/result.txt && echo copied"],
        mounts=[
            (f"{working_dir}/src", "builds/1/src", True),
            (f"{working_dir}/out", "builds/1/out", False),
        ],
        working_dir=working_dir,
    )
    runtime.launch(pod)

    reported = finished.wait("copy")
    assert reported["status"]["phase"] == "Succeeded", runtime.logs("copy")
    assert (store / "builds/1/out/result.txt").read_text() == "hello from an input\n"
    assert runtime.logs("copy") == b"copied\n"


@pytest.mark.parametrize("sandbox", BWRAP_ONLY, indirect=True)
def test_a_read_only_input_cannot_be_written(
    runtime: LocalRuntime, finished: Finished, store: Path
) -> None:
    pod = make_pod(
        "vandal",
        ["sh", "-c", "echo defaced > src/greeting.txt"],
        mounts=[(f"{WORKDIR}/src", "builds/1/src", True)],
    )
    runtime.launch(pod)

    reported = finished.wait("vandal")
    assert reported["status"]["phase"] == "Failed"
    assert terminated(reported)["exitCode"] != 0
    assert b"Read-only file system" in runtime.logs("vandal")
    assert (store / "builds/1/src/greeting.txt").read_text() == "hello from an input\n"


@pytest.mark.parametrize(
    ("script", "policy", "exit_code", "phase", "reason", "message"),
    [
        ("exit 0", None, 0, "Succeeded", "Completed", None),
        (
            'printf "3 tests failed" > "$TERMINATION_LOG"; exit 3',
            None,
            3,
            "Failed",
            "Error",
            "3 tests failed",
        ),
        (
            'head -c 5000 /dev/zero | tr "\\0" x > "$TERMINATION_LOG"',
            None,
            0,
            "Succeeded",
            "Completed",
            "x" * 4096,
        ),
        ("kill -9 $$$$", None, 137, "Failed", "Error", None),  # $$ is Kubernetes' escape for $
        (
            "echo noise; echo last words; exit 1",
            "FallbackToLogsOnError",
            1,
            "Failed",
            "Error",
            "noise\nlast words\n",
        ),
        ("echo fine", "FallbackToLogsOnError", 0, "Succeeded", "Completed", None),
    ],
    ids=[
        "success",
        "failure-with-message",
        "message-cut-at-4096-bytes",
        "killed-by-signal",
        "fallback-to-logs-on-error",
        "no-fallback-on-success",
    ],
)
def test_exit_code_and_termination_message_reach_on_finish_and_read(
    runtime: LocalRuntime,
    finished: Finished,
    script: str,
    policy: str | None,
    exit_code: int,
    phase: str,
    reason: str,
    message: str | None,
) -> None:
    # The pod builder passes paths as values, which the links sandbox rewrites.
    runtime.launch(
        make_pod(
            "ending",
            ["sh", "-c", script],
            termination_policy=policy,
            env={"TERMINATION_LOG": "/dev/termination-log"},
        )
    )

    reported = finished.wait("ending")
    assert reported["status"]["phase"] == phase
    state = terminated(reported)
    assert (state["exitCode"], state["reason"], state.get("message")) == (
        exit_code,
        reason,
        message,
    )
    assert runtime.read("ending") == reported


def test_read_shows_the_pod_as_the_api_would(runtime: LocalRuntime, finished: Finished) -> None:
    assert runtime.read("shown") is None
    runtime.launch(make_pod("shown", ["true"]))
    pod = finished.wait("shown")

    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    metadata = pod["metadata"]
    assert metadata["name"] == "shown"
    assert metadata["namespace"] == "local"
    assert metadata["labels"] == {"jetbridge.dev/step": "7"}
    assert metadata["creationTimestamp"] == STAMP
    assert metadata["uid"]
    assert pod["spec"]["containers"][0]["workingDir"] == WORKDIR
    assert pod["status"]["startTime"] == STAMP
    status = pod["status"]["containerStatuses"][0]
    assert (status["name"], status["image"]) == ("step", "debian:12")
    assert terminated(pod) == {
        "exitCode": 0,
        "reason": "Completed",
        "startedAt": STAMP,
        "finishedAt": STAMP,
    }


def test_logs_interleave_stdout_and_stderr(runtime: LocalRuntime, finished: Finished) -> None:
    runtime.launch(make_pod("chatty", ["sh", "-c", "echo one; echo two >&2; echo three"]))
    finished.wait("chatty")

    assert runtime.logs("chatty") == b"one\ntwo\nthree\n"
    with pytest.raises(NotFoundError, match="never-launched"):
        runtime.logs("never-launched")


def test_working_dir_and_env_are_honoured(
    runtime: LocalRuntime,
    finished: Finished,
    store: Path,
    sandbox: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JETBRIDGE_HOST_ONLY", "leaked")
    script = (
        'echo "$GREETING $(TARGET)"; echo "$AGAIN"; echo "host=${JETBRIDGE_HOST_ONLY-unset}"; '
        'echo "home=$HOME"; ls; pwd > out/pwd'
    )
    pod = make_pod(
        "env",
        ["sh", "-c", script],
        env={"GREETING": "hello", "TARGET": "world", "AGAIN": "$(GREETING) again"},
        mounts=[
            (f"{WORKDIR}/src", "builds/1/src", True),
            (f"{WORKDIR}/out", "builds/1/out", False),
        ],
    )
    runtime.launch(pod)
    reported = finished.wait("env")

    assert reported["status"]["phase"] == "Succeeded", runtime.logs("env")
    lines = runtime.logs("env").decode().splitlines()
    assert lines[:3] == ["hello world", "hello again", "host=unset"]
    assert lines[4:] == ["out", "src"]  # the working directory holds the mounts
    pwd = (store / "builds/1/out/pwd").read_text().strip()
    if sandbox == "bwrap":
        assert lines[3] == "home=/tmp"
        assert pwd == WORKDIR
    else:  # a directory in the pod's scratch stands in, and /tmp is in the scratch too
        assert Path(lines[3].removeprefix("home=")).is_relative_to(tmp_path / "work")
        assert Path(pwd).is_relative_to(tmp_path / "work")


def secret_ref(name: str, secret: str, key: str, *, optional: bool | None = None) -> V1EnvVar:
    ref = V1SecretKeySelector(name=secret, key=key, optional=optional)
    return V1EnvVar(name=name, value_from=V1EnvVarSource(secret_key_ref=ref))


def test_env_from_a_secret_is_read_from_the_runtimes_secrets(
    runtime: LocalRuntime, finished: Finished
) -> None:
    runtime.put_secret("jb-1-secrets", {"1-TOKEN": "tok-1"}, labels={})
    runtime.put_secret("jb-1-secrets", {"1-OTHER": "other"}, labels={})  # merged, not replaced
    pod = make_pod("secretive", ["sh", "-c", 'echo "$TOKEN $(OTHER) ${MAYBE-unset}"'])
    spec_of(pod).containers[0].env = [
        secret_ref("TOKEN", "jb-1-secrets", "1-TOKEN"),
        secret_ref("OTHER", "jb-1-secrets", "1-OTHER"),
        secret_ref("MAYBE", "jb-1-secrets", "1-MAYBE", optional=True),
    ]
    runtime.launch(pod)
    reported = finished.wait("secretive")
    assert reported["status"]["phase"] == "Succeeded", runtime.logs("secretive")
    assert runtime.logs("secretive") == b"tok-1 other unset\n"
    # The pod as read shows the reference, never the value.
    assert "tok-1" not in json.dumps(runtime.read("secretive"))
    runtime.delete_secret("jb-1-secrets")
    runtime.delete_secret("jb-1-secrets")  # gone already: fine
    assert runtime.secret_names() == []


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({}, "Secret 'jb-1-secrets', which does not exist, so has no key '1-TOKEN'"),
        ({"jb-1-secrets": {"1-OTHER": "x"}}, "Secret 'jb-1-secrets', which has no key '1-TOKEN'"),
    ],
    ids=["no-secret", "no-key"],
)
def test_a_pod_whose_secret_is_missing_is_refused_saying_which(
    runtime: LocalRuntime, secrets: dict[str, dict[str, str]], message: str
) -> None:
    for name, data in secrets.items():
        runtime.put_secret(name, data, labels={})
    pod = make_pod("lacking", ["true"])
    spec_of(pod).containers[0].env = [secret_ref("TOKEN", "jb-1-secrets", "1-TOKEN")]
    with pytest.raises(
        PodRejected, match=f"pod lacking: env TOKEN comes from {re.escape(message)}"
    ):
        runtime.launch(pod)
    assert runtime.read("lacking") is None


def test_the_deadline_kills_the_pod_and_reports_deadline_exceeded(
    runtime: LocalRuntime, finished: Finished
) -> None:
    runtime.launch(make_pod("slow", ["sleep", SLEEP], deadline=1))

    reported = finished.wait("slow")
    assert reported["status"]["phase"] == "Failed"
    assert reported["status"]["reason"] == "DeadlineExceeded"
    state = terminated(reported)
    assert (state["exitCode"], state["reason"]) == (137, "DeadlineExceeded")
    assert processes_running("sleep", SLEEP) == []


def test_launching_twice_runs_once(runtime: LocalRuntime, finished: Finished, store: Path) -> None:
    pod = make_pod(
        "once",
        ["sh", "-c", "echo ran >> out/runs"],
        mounts=[(f"{WORKDIR}/out", "builds/1/out", False)],
    )
    threads = [threading.Thread(target=runtime.launch, args=(pod,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = finished.wait("once")
    runtime.launch(pod)  # a finished pod of that name counts as launched too

    assert (store / "builds/1/out/runs").read_text() == "ran\n"
    assert finished.count("once") == 1
    assert runtime.read("once") == first


@pytest.mark.parametrize("how", ["delete", "close"])
def test_stopping_a_running_pod_kills_it_and_reports_nothing(
    runtime: LocalRuntime, finished: Finished, tmp_path: Path, how: str
) -> None:
    runtime.launch(make_pod("sleeper", ["sh", "-c", f"echo started; exec sleep {SLEEP}"]))
    wait_until("the pod to start", lambda: b"started" in runtime.logs("sleeper"))
    running = runtime.read("sleeper")
    assert running is not None
    assert running["status"]["phase"] == "Running"
    assert running["status"]["containerStatuses"][0]["state"] == {"running": {"startedAt": STAMP}}
    assert processes_running("sleep", SLEEP) != []

    if how == "delete":
        runtime.delete("sleeper")
        assert runtime.read("sleeper") is None
        with pytest.raises(NotFoundError):
            runtime.logs("sleeper")
        assert list((tmp_path / "work").iterdir()) == []
        runtime.delete("sleeper")  # deleting a pod that is gone is fine
    else:
        runtime.close()
        with pytest.raises(RuntimeError, match="closed"):
            runtime.launch(make_pod("late", ["true"]))

    assert processes_running("sleep", SLEEP) == []
    assert finished.count("sleeper") == 0  # the watcher is done: nothing can come later


@pytest.mark.parametrize(
    "command",
    [["no-such-command-jetbridge"], ["/no/such/tool", "--flag"], ["./missing.sh"]],
    ids=["bare-name", "absolute-path", "relative-path"],
)
def test_a_command_that_cannot_start_fails_the_pod_with_127(
    runtime: LocalRuntime, finished: Finished, command: list[str]
) -> None:
    runtime.launch(make_pod("missing", command))

    reported = finished.wait("missing")
    assert reported["status"]["phase"] == "Failed"
    state = terminated(reported)
    assert (state["exitCode"], state["reason"]) == (127, "ContainerCannotRun")
    assert command[0] in state["message"]


def test_an_image_bind_provides_the_resource_scripts(
    runtime: LocalRuntime, finished: Finished, store: Path
) -> None:
    out = f"{WORKDIR}/out"
    runtime.launch(
        make_pod(
            "get",
            ["/opt/resource/in", out],
            image=RESOURCE_IMAGE,
            mounts=[(out, "builds/1/out", False)],
        )
    )
    runtime.launch(
        make_pod("other-image", ["/opt/resource/in", out], mounts=[(out, "builds/1/other", False)])
    )

    reported = finished.wait("get")
    assert reported["status"]["phase"] == "Succeeded", runtime.logs("get")
    assert runtime.logs("get").startswith(b"fetching into ")
    assert (store / "builds/1/out/version").read_text() == '{"ref": "abc123"}\n'
    # the bind belongs to that image only
    assert terminated(finished.wait("other-image"))["exitCode"] == 127


@pytest.mark.parametrize(
    "sub_path",
    ["../outside", "builds/../../outside", "/etc", "escape-link"],
    ids=["dot-dot", "dot-dot-deeper", "absolute", "symlink-out"],
)
def test_a_sub_path_escaping_the_claim_is_refused(
    runtime: LocalRuntime, finished: Finished, store: Path, tmp_path: Path, sub_path: str
) -> None:
    (tmp_path / "outside").mkdir()
    (store / "escape-link").symlink_to(tmp_path / "outside")
    pod = make_pod("escape", ["true"], mounts=[(f"{WORKDIR}/in", sub_path, True)])

    with pytest.raises(ConfigurationError, match=r"volumeMounts\[1\]\.subPath .*outside claim"):
        runtime.launch(pod)
    assert runtime.read("escape") is None
    assert list((tmp_path / "work").iterdir()) == []


def _with_value_from(spec: V1PodSpec) -> None:
    spec.containers[0].env = [V1EnvVar(name="TOKEN", value_from=V1EnvVarSource())]


def _with_host_path(spec: V1PodSpec) -> None:
    spec.volumes = [
        *(spec.volumes or []),
        V1Volume(name="host", host_path=V1HostPathVolumeSource(path="/")),
    ]


def _with_init_container(spec: V1PodSpec) -> None:
    spec.init_containers = [V1Container(name="init", command=["true"])]


def _with_two_containers(spec: V1PodSpec) -> None:
    spec.containers.append(V1Container(name="sidecar", command=["true"]))


def _with_probe(spec: V1PodSpec) -> None:
    spec.containers[0].liveness_probe = V1Probe(period_seconds=5)


def _with_unknown_claim(spec: V1PodSpec) -> None:
    spec.volumes = [
        V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource()),
        V1Volume(
            name=CLAIM,
            persistent_volume_claim=(V1PersistentVolumeClaimVolumeSource(claim_name="elsewhere")),
        ),
    ]


def _with_restarts(spec: V1PodSpec) -> None:
    spec.restart_policy = "OnFailure"


def _without_command(spec: V1PodSpec) -> None:
    spec.containers[0].command = None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_with_value_from, r"spec\.containers\[0\]\.env\[0\]\.valueFrom"),
        (_with_host_path, r"spec\.volumes\[2\]\.hostPath"),
        (_with_init_container, r"spec\.initContainers"),
        (_with_two_containers, r"spec\.containers must hold exactly one"),
        (_with_probe, r"spec\.containers\[0\]\.livenessProbe"),
        (_with_unknown_claim, r"claimName 'elsewhere'"),
        (_with_restarts, r"spec\.restartPolicy"),
        (_without_command, r"spec\.containers\[0\]\.command is required"),
    ],
    ids=[
        "value-from",
        "host-path",
        "init-container",
        "two-containers",
        "probe",
        "unknown-claim",
        "restart-policy",
        "no-command",
    ],
)
def test_a_pod_the_runtime_cannot_honour_is_refused_naming_the_field(
    runtime: LocalRuntime, change: Callable[[V1PodSpec], None], field: str
) -> None:
    pod = make_pod("odd", ["true"], mounts=[(f"{WORKDIR}/in", "builds/1/src", True)])
    change(spec_of(pod))

    with pytest.raises(ConfigurationError, match=field):
        runtime.launch(pod)
    assert runtime.read("odd") is None


def test_resources_and_security_context_are_accepted_and_ignored(
    runtime: LocalRuntime, finished: Finished
) -> None:
    pod = make_pod("hardened", ["true"])
    spec = spec_of(pod)
    spec.security_context = V1PodSecurityContext(run_as_user=65532, run_as_non_root=True)
    spec.node_selector = {"pool": "ci"}
    spec.tolerations = [V1Toleration(key="ci", operator="Exists")]
    spec.containers[0].resources = V1ResourceRequirements(limits={"cpu": "1"})
    runtime.launch(pod)

    assert finished.wait("hardened")["status"]["phase"] == "Succeeded"


def test_without_bubblewrap_a_warning_is_logged_once_per_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shared.runtime.local._links_warned", False)  # as in a fresh process
    for _ in range(2):
        LocalRuntime(
            claims={}, work_root=tmp_path / "work", on_finish=lambda pod: None, sandbox="links"
        ).close()

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "bubblewrap not found: steps run with a working directory of links; "
        "read-only inputs are not enforced"
    ]


def test_the_sandbox_must_exist_when_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap here
    with pytest.raises(ConfigurationError, match="bubblewrap"):
        LocalRuntime(
            claims={}, work_root=tmp_path / "work", on_finish=lambda pod: None, sandbox="bwrap"
        )
    assert os.environ["PATH"] == str(tmp_path)
