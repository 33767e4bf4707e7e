"""The fake API server answers as the real one does where JetBridge's tests rely on it.

Driven with the real ``kubernetes`` client, as the runtime drives it: the status
codes and bodies a create, a conflict, a bad pod and a graceful delete get, label
selectors, and a watch that resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import watch
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from tests.kube.apiserver import FakeApiServer
from tests.kube.cluster import configuration

NS = "default"


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def api(server: FakeApiServer) -> Iterator[CoreV1Api]:
    client = ApiClient(configuration(server.url))
    yield CoreV1Api(client)
    client.close()


def pod(
    name: str, labels: dict[str, str] | None = None, image: str = "busybox:1"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "step", "image": image}]},
    }


def body(response: Any) -> Any:
    return json.loads(response.data)


def test_create_answers_201_with_what_the_server_set_and_409_the_second_time(
    api: CoreV1Api,
) -> None:
    created = api.create_namespaced_pod(NS, pod("a"), _preload_content=False)
    assert created.status == 201
    data = body(created)
    assert data["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    assert data["metadata"]["uid"] and data["metadata"]["resourceVersion"] == "1"
    assert data["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    with pytest.raises(ApiException) as conflict:
        api.create_namespaced_pod(NS, pod("a"), _preload_content=False)
    assert conflict.value.status == 409
    assert json.loads(conflict.value.body)["reason"] == "AlreadyExists"


@pytest.mark.parametrize(
    ("name", "image", "message"),
    [
        ("Bad_Name", "busybox:1", 'metadata.name: Invalid value: "Bad_Name"'),
        ("ok", "", "spec.containers[0].image: Required value"),
    ],
    ids=["bad-name", "no-image"],
)
def test_an_invalid_pod_is_422_naming_the_field(
    api: CoreV1Api, name: str, image: str, message: str
) -> None:
    with pytest.raises(ApiException) as invalid:
        api.create_namespaced_pod(NS, pod(name, image=image), _preload_content=False)
    assert invalid.value.status == 422
    assert message in json.loads(invalid.value.body)["message"]


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("", ["a", "b", "c"]),
        ("app=web", ["a", "b"]),
        ("app==web,tier!=db", ["a"]),
        ("tier in (db, cache)", ["b"]),
        ("tier notin (db)", ["a", "c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c"]),
    ],
    ids=["all", "equals", "and-not-equals", "in", "notin", "exists", "does-not-exist"],
)
def test_list_filters_by_label_selector(api: CoreV1Api, selector: str, names: list[str]) -> None:
    api.create_namespaced_pod(NS, pod("a", {"app": "web", "tier": "front"}), _preload_content=False)
    api.create_namespaced_pod(NS, pod("b", {"app": "web", "tier": "db"}), _preload_content=False)
    api.create_namespaced_pod(NS, pod("c", {"app": "batch"}), _preload_content=False)
    listed = body(api.list_namespaced_pod(NS, label_selector=selector, _preload_content=False))
    assert [p["metadata"]["name"] for p in listed["items"]] == names


def test_a_bound_running_pod_is_deleted_gracefully_an_unbound_one_at_once(
    server: FakeApiServer, api: CoreV1Api
) -> None:
    api.create_namespaced_pod(NS, pod("bound"), _preload_content=False)
    api.create_namespaced_pod(NS, pod("unbound"), _preload_content=False)
    binding = {"target": {"kind": "Node", "name": "node-1"}, "metadata": {"name": "bound"}}
    api.create_namespaced_pod_binding("bound", NS, binding, _preload_content=False)
    api.delete_namespaced_pod("bound", NS, _preload_content=False)
    api.delete_namespaced_pod("unbound", NS, _preload_content=False)
    kept = server.pod("bound")
    assert kept is not None and kept["metadata"]["deletionGracePeriodSeconds"] == 30
    assert server.pod("unbound") is None
    api.delete_namespaced_pod("bound", NS, grace_period_seconds=0, _preload_content=False)
    assert [t for t, p in server.history() if p["metadata"]["name"] == "bound"] == [
        "ADDED",
        "MODIFIED",  # bound
        "MODIFIED",  # deletionTimestamp set
        "DELETED",
    ]


def test_a_watch_streams_changes_and_resumes_from_a_resource_version(
    server: FakeApiServer, api: CoreV1Api
) -> None:
    api.create_namespaced_pod(NS, pod("a"), _preload_content=False)
    first = list(
        watch.Watch().stream(api.list_namespaced_pod, NS, timeout_seconds=0, deserialize=False)
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in first] == [("ADDED", "a")]
    version = first[-1]["object"]["metadata"]["resourceVersion"]
    api.patch_namespaced_pod_status(
        "a",
        NS,
        {"status": {"phase": "Running"}},
        _preload_content=False,
        _content_type="application/merge-patch+json",
    )
    api.delete_namespaced_pod("a", NS, _preload_content=False)
    resumed = list(
        watch.Watch().stream(
            api.list_namespaced_pod,
            NS,
            resource_version=version,
            timeout_seconds=0,
            deserialize=False,
        )
    )
    assert [(e["type"], e["object"]["status"]["phase"]) for e in resumed] == [
        ("MODIFIED", "Running"),
        ("DELETED", "Running"),
    ]
