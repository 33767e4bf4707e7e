"""The Kubernetes runtime over the real ``kubernetes`` client, against the fake API server.

Each test checks what crossed the wire (the fake keeps every call) or what a user
reads in the error; API failures are injected at the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, V1Pod

from shared import app
from shared.errors import (
    ConfigurationError,
    JetBridgeError,
    NotFoundError,
    PodRejected,
    RuntimeForbidden,
    RuntimeUnavailable,
    TemporaryError,
)
from shared.plan import StepSpec
from shared.podspec import PodIds, PodSettings, build_step_pod
from shared.runtime.kubernetes import RBAC_RULES, KubernetesRuntime
from shared.settings import Settings
from tests.kube.apiserver import FakeApiServer
from tests.kube.cluster import configuration

NAMESPACE = "ci"


def step_pod(step_id: int = 1, *, name: str = "unit", namespace: str = NAMESPACE) -> V1Pod:
    spec = StepSpec(
        key=str(step_id), name=name, kind="task", image="busybox:1.36", command=("true",)
    )
    ids = PodIds(pipeline="demo", job="build", build_id=7, step_id=step_id, step_key=str(step_id))
    return build_step_pod(
        spec, ids=ids, mounts=[], settings=PodSettings(claim="artifacts", namespace=namespace)
    )


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer(namespaces=(NAMESPACE,)) as server:
        yield server


@pytest.fixture
def runtime(server: FakeApiServer) -> Iterator[KubernetesRuntime]:
    runtime = KubernetesRuntime(
        ApiClient(configuration(server.url)), namespace=NAMESPACE, grace_period_seconds=7
    )
    yield runtime
    runtime.close()


def test_launch_creates_the_pod_and_a_second_launch_finds_it(
    server: FakeApiServer, runtime: KubernetesRuntime
) -> None:
    pod = step_pod()
    runtime.launch(pod)
    runtime.launch(pod)  # a redelivered step.ready: the API answers 409, which is fine
    creates = server.calls_of("create")
    assert len(creates) == 2
    assert creates[0].body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "jetbridge"
    assert [p["metadata"]["name"] for p in server.pods(NAMESPACE)] == [pod.metadata.name]


def test_read_gives_the_pod_as_the_api_serializes_it_or_none(runtime: KubernetesRuntime) -> None:
    pod = step_pod()
    assert runtime.read(pod.metadata.name) is None
    runtime.launch(pod)
    got = runtime.read(pod.metadata.name)
    assert got is not None
    assert got["status"]["phase"] == "Pending"
    assert got["spec"]["automountServiceAccountToken"] is False  # camelCase, as events carry it
    assert got["metadata"]["creationTimestamp"].endswith("Z")


def test_list_asks_for_jetbridge_pods_only_and_follows_pages(
    server: FakeApiServer, runtime: KubernetesRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shared.runtime.kubernetes.PAGE", 2)
    names = set()
    for step_id in range(1, 6):
        pod = step_pod(step_id, name=f"s{step_id}")
        runtime.launch(pod)
        names.add(pod.metadata.name)
    foreign = ApiClient().sanitize_for_serialization(step_pod(99, name="other"))
    foreign["metadata"]["labels"] = {"app": "web"}
    foreign["metadata"]["name"] = "web-1"
    server.execute(server.admit("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", {}, foreign))
    listed = runtime.list()
    assert {p["metadata"]["name"] for p in listed} == names
    lists = server.calls_of("list")
    assert len(lists) == 3  # 2 + 2 + 1
    assert {c.query["labelSelector"] for c in lists} == {"app.kubernetes.io/managed-by=jetbridge"}


def test_logs_read_the_step_container(server: FakeApiServer, runtime: KubernetesRuntime) -> None:
    pod = step_pod()
    runtime.launch(pod)
    name = pod.metadata.name
    assert runtime.logs(name) == b""  # "waiting to start": no log yet, not an error
    server.log_source = lambda ns, pod_name, container: f"{ns}/{pod_name}/{container}\n\xff".encode(
        "latin-1"
    )
    assert runtime.logs(name) == f"{NAMESPACE}/{name}/step\n\xff".encode("latin-1")
    assert server.calls_of("get", "pods/log")[-1].query["container"] == "step"
    with pytest.raises(NotFoundError, match="pod gone-pod is not in namespace 'ci'"):
        runtime.logs("gone-pod")


def test_delete_propagates_in_the_background_with_the_grace_period(
    server: FakeApiServer, runtime: KubernetesRuntime
) -> None:
    pod = step_pod()
    runtime.launch(pod)
    runtime.delete(pod.metadata.name)
    runtime.delete(pod.metadata.name)  # gone already: fine
    first, again = server.calls_of("delete")
    assert first.body == again.body == {"propagationPolicy": "Background", "gracePeriodSeconds": 7}
    assert server.pods(NAMESPACE) == []


def test_the_runtime_needs_exactly_the_rbac_rules_it_declares(
    server: FakeApiServer, runtime: KubernetesRuntime
) -> None:
    pod = step_pod()
    runtime.launch(pod)
    runtime.read(pod.metadata.name)
    runtime.list()
    runtime.logs(pod.metadata.name)
    runtime.delete(pod.metadata.name)
    runtime.put_secret("jb-7-secrets", {"1-TOKEN": "a"}, labels={})
    runtime.put_secret("jb-7-secrets", {"2-TOKEN": "b"}, labels={})
    runtime.delete_secret("jb-7-secrets")
    used = {(c.verb, c.resource) for c in server.calls}
    assert used == set(RBAC_RULES)


def test_put_secret_creates_then_merges_and_delete_secret_is_idempotent(
    server: FakeApiServer, runtime: KubernetesRuntime
) -> None:
    labels = {"app.kubernetes.io/managed-by": "jetbridge", "jetbridge.dev/build": "7"}
    runtime.put_secret("jb-7-secrets", {"3-TOKEN": "s3cret\nline"}, labels=labels)
    runtime.put_secret("jb-7-secrets", {"4-KEY": "other"}, labels=labels)
    runtime.put_secret("jb-7-secrets", {"4-KEY": "other"}, labels=labels)  # a redelivery
    assert server.secret("jb-7-secrets", NAMESPACE) == {"3-TOKEN": "s3cret\nline", "4-KEY": "other"}
    created = server.calls_of("create", "secrets")[0].body
    assert created["metadata"]["labels"] == labels
    assert created["type"] == "Opaque"
    # A merge patch: a JSON patch with an object body would be a 400 from a real server.
    assert [c.body for c in server.calls_of("patch", "secrets")] == [
        {"stringData": {"4-KEY": "other"}}
    ] * 2
    runtime.delete_secret("jb-7-secrets")
    runtime.delete_secret("jb-7-secrets")  # gone already: fine
    assert server.secret_names(NAMESPACE) == []


def test_a_secret_the_role_may_not_write_names_the_missing_verb(
    server: FakeApiServer, runtime: KubernetesRuntime
) -> None:
    server.fail("create", "secrets", status=403)
    with pytest.raises(RuntimeForbidden, match="RBAC needs verb 'create' on 'secrets'") as e:
        runtime.put_secret("jb-7-secrets", {"1-A": "b"}, labels={})
    assert "Secret jb-7-secrets" in str(e.value) or "secrets in namespace ci" in str(e.value)
    server.fail("delete", "secrets", status=503)
    with pytest.raises(RuntimeUnavailable, match="could not delete Secret jb-7-secrets"):
        runtime.delete_secret("jb-7-secrets")


def call(runtime: KubernetesRuntime, operation: str) -> Any:
    name = step_pod().metadata.name
    if operation == "launch":
        return runtime.launch(step_pod())
    if operation == "list":
        return runtime.list()
    return getattr(runtime, operation)(name)


FAULTS = [
    # id, operation, (verb, resource), status, API message (None: the fake's own), error, words
    (
        "create-403-rbac",
        "launch",
        ("create", "pods"),
        403,
        None,
        RuntimeForbidden,
        "the service account may not create pods in namespace ci: RBAC needs verb 'create' on 'pods'",
    ),
    (
        "get-403-rbac",
        "read",
        ("get", "pods"),
        403,
        None,
        RuntimeForbidden,
        "RBAC needs verb 'get' on 'pods'",
    ),
    (
        "list-403-rbac",
        "list",
        ("list", "pods"),
        403,
        None,
        RuntimeForbidden,
        "RBAC needs verb 'list' on 'pods'",
    ),
    (
        "log-403-rbac",
        "logs",
        ("get", "pods/log"),
        403,
        None,
        RuntimeForbidden,
        "RBAC needs verb 'get' on 'pods/log'",
    ),
    (
        "delete-403-rbac",
        "delete",
        ("delete", "pods"),
        403,
        None,
        RuntimeForbidden,
        "RBAC needs verb 'delete' on 'pods'",
    ),
    (
        "create-403-quota",
        "launch",
        ("create", "pods"),
        403,
        'pods "x" is forbidden: exceeded quota: compute, requested: limits.memory=2Gi',
        RuntimeUnavailable,
        "a ResourceQuota of namespace 'ci' is used up",
    ),
    (
        "create-403-pod-security",
        "launch",
        ("create", "pods"),
        403,
        'pods "x" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true',
        PodRejected,
        'violates PodSecurity "restricted:latest"',
    ),
    (
        "create-422",
        "launch",
        ("create", "pods"),
        422,
        'Pod "x" is invalid: spec.containers[0].image: Required value',
        PodRejected,
        "the Kubernetes API refused pod jb-7-unit-a1-",
    ),
    (
        "create-400",
        "launch",
        ("create", "pods"),
        400,
        "bad request",
        PodRejected,
        "refused pod jb-7-unit",
    ),
    (
        "create-429",
        "launch",
        ("create", "pods"),
        429,
        None,
        RuntimeUnavailable,
        "Too many requests",
    ),
    (
        "create-500",
        "launch",
        ("create", "pods"),
        500,
        None,
        RuntimeUnavailable,
        "etcdserver: request timed out",
    ),
    (
        "get-503",
        "read",
        ("get", "pods"),
        503,
        None,
        RuntimeUnavailable,
        "could not get pod jb-7-unit",
    ),
    (
        "list-500",
        "list",
        ("list", "pods"),
        500,
        None,
        RuntimeUnavailable,
        "could not list the pods",
    ),
    ("log-502", "logs", ("get", "pods/log"), 502, "bad gateway", RuntimeUnavailable, "bad gateway"),
    (
        "delete-429",
        "delete",
        ("delete", "pods"),
        429,
        None,
        RuntimeUnavailable,
        "will be delivered again",
    ),
    (
        "get-401",
        "read",
        ("get", "pods"),
        401,
        None,
        RuntimeUnavailable,
        "did not accept JetBridge's credentials",
    ),
]


@pytest.mark.parametrize(
    ("operation", "target", "status", "message", "error", "words"),
    [f[1:] for f in FAULTS],
    ids=[f[0] for f in FAULTS],
)
def test_api_failures_become_jetbridge_errors_that_say_what_to_do(
    server: FakeApiServer,
    runtime: KubernetesRuntime,
    operation: str,
    target: tuple[str, str],
    status: int,
    message: str | None,
    error: type[JetBridgeError],
    words: str,
) -> None:
    if operation in ("read", "logs", "delete"):
        runtime.launch(step_pod())
    verb, resource = target
    server.fail(verb, resource, status=status, message=message)
    with pytest.raises(error) as raised:
        call(runtime, operation)
    assert words in str(raised.value)
    # Temporary means Knative delivers the event again; permanent means it is recorded.
    assert isinstance(raised.value, TemporaryError) == (error is RuntimeUnavailable)


def test_a_missing_namespace_is_a_configuration_error(server: FakeApiServer) -> None:
    runtime = KubernetesRuntime(ApiClient(configuration(server.url)), namespace="nowhere")
    with pytest.raises(ConfigurationError, match="namespace 'nowhere' does not exist"):
        runtime.launch(step_pod(namespace="nowhere"))
    runtime.close()


def test_a_pod_for_another_namespace_is_refused_before_any_call(
    server: FakeApiServer, runtime: KubernetesRuntime
) -> None:
    with pytest.raises(ConfigurationError, match="meant for namespace 'prod'"):
        runtime.launch(step_pod(namespace="prod"))
    assert server.calls == []


def test_an_api_that_does_not_answer_is_temporarily_unavailable(server: FakeApiServer) -> None:
    url = server.url
    server.stop()
    runtime = KubernetesRuntime(ApiClient(configuration(url)), namespace=NAMESPACE)
    for operation in ("launch", "read", "list", "logs", "delete"):
        with pytest.raises(
            RuntimeUnavailable, match=f"the Kubernetes API at {url} cannot be reached"
        ):
            call(runtime, operation)
    runtime.close()


KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {{server: "{url}"}}
users:
- name: jetbridge
  user: {{token: not-a-secret}}
contexts:
- name: fake
  context: {{cluster: fake, user: jetbridge, namespace: {namespace}}}
current-context: fake
"""


def test_from_settings_uses_kubeconfig_outside_a_cluster(
    server: FakeApiServer, tmp_path: Path
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(url=server.url, namespace=NAMESPACE))
    settings = Settings(namespace=NAMESPACE, pod_grace_period_seconds=3)
    runtime = KubernetesRuntime.from_settings(settings, environ={"KUBECONFIG": str(path)})
    runtime.launch(step_pod())
    runtime.delete(step_pod().metadata.name)
    runtime.close()
    assert server.calls_of("delete")[0].body["gracePeriodSeconds"] == 3


def test_from_settings_without_any_cluster_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs the Kubernetes API: not in a cluster"):
        KubernetesRuntime.from_settings(
            Settings(), environ={"KUBECONFIG": str(tmp_path / "missing")}
        )


def test_a_function_in_the_cluster_gets_the_kubernetes_runtime(
    server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(url=server.url, namespace=NAMESPACE))
    for key, value in {
        "KUBECONFIG": str(path),
        "JETBRIDGE_RUNTIME": "kubernetes",
        "JETBRIDGE_NAMESPACE": NAMESPACE,
        "JETBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'jetbridge.db'}",
        "JETBRIDGE_STORE_ROOT": str(tmp_path / "store"),
        "K_SINK": "http://127.0.0.1:9/broker",
    }.items():
        monkeypatch.setenv(key, value)
    app.install(None)
    try:
        deps = app.current()
        deps.runtime.launch(step_pod())  # through whatever wraps it (metrics)
        assert [p["metadata"]["name"] for p in deps.runtime.list()] == [step_pod().metadata.name]
        assert [c.verb for c in server.calls] == ["create", "list"]
        deps.engine.dispose()
    finally:
        app.install(None)
