"""The live suite: runs against whatever cluster ``KUBECONFIG`` names, or is skipped.

Each session gets a namespace of its own (Pod Security "restricted" enforced, so
every pod JetBridge makes is checked against it) with the artifact-store claim in
it, and deletes the namespace at the end, whatever happened.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import config as k8s_config
from kubernetes.client import ApiClient, Configuration, CoreV1Api

from shared.runtime.kubernetes import RETRIES

CLAIM = "jetbridge-artifacts"
#: How long a pod may take to pull a small image and run on a real cluster.
POD_SECONDS = 300


def live_configuration() -> Configuration | str:
    """The client configuration of the cluster ``KUBECONFIG`` names, or why there is none."""
    path = os.environ.get("KUBECONFIG")
    if not path:
        return "no cluster: KUBECONFIG is not set (make e2e-live runs against the one it names)"
    configuration = Configuration()
    try:
        k8s_config.load_kube_config(config_file=path, client_configuration=configuration)
        client = ApiClient(configuration)
        CoreV1Api(client).get_api_resources(_request_timeout=10)
        client.close()
    except Exception as e:
        return f"no cluster: KUBECONFIG={path} names none that answers ({e})"
    configuration.retries = RETRIES
    return configuration


@pytest.fixture(scope="session")
def live() -> Configuration:
    """The cluster's client configuration (``test_live`` skips the module without one)."""
    configuration = live_configuration()
    if isinstance(configuration, str):
        pytest.skip(configuration)
    return configuration


@pytest.fixture(scope="session")
def namespace(live: Configuration) -> Iterator[str]:
    """A namespace for this session, with the claim; deleted at the end."""
    client = ApiClient(live)
    api = CoreV1Api(client)
    name = f"jetbridge-live-{uuid.uuid4().hex[:8]}"
    api.create_namespace(
        {
            "metadata": {
                "name": name,
                "labels": {
                    "app.kubernetes.io/managed-by": "jetbridge-tests",
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            }
        }
    )
    try:
        api.create_namespaced_persistent_volume_claim(
            name,
            {
                "metadata": {"name": CLAIM},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        yield name
    finally:
        api.delete_namespace(name, propagation_policy="Background")
        client.close()
