"""Settings read from ``JETBRIDGE_*``: maps and lists as JSON, and what the cluster would refuse, refused at start."""

from __future__ import annotations

import re
from typing import Any

import pytest

from shared.app import pod_settings
from shared.errors import ConfigurationError
from shared.settings import DEFAULT_STEP_LIMITS, DEFAULT_STEP_REQUESTS, load_settings


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({}, "step_requests", dict(DEFAULT_STEP_REQUESTS)),
        ({}, "step_limits", dict(DEFAULT_STEP_LIMITS)),
        (
            {"JETBRIDGE_STEP_REQUESTS": '{"cpu": 1, "memory": "1Gi"}'},
            "step_requests",
            {"cpu": "1", "memory": "1Gi"},
        ),
        ({"JETBRIDGE_STEP_LIMITS": "{}"}, "step_limits", {}),
        (
            {"JETBRIDGE_IMAGE_PULL_SECRETS": '["a", "b"]'},
            "image_pull_secrets",
            ("a", "b"),
        ),
        ({"JETBRIDGE_NODE_SELECTOR": '{"pool": "ci"}'}, "node_selector", {"pool": "ci"}),
        (
            {
                "JETBRIDGE_TOLERATIONS": '[{"key": "ci", "operator": "Exists", "tolerationSeconds": 5}]'
            },
            "tolerations",
            ({"key": "ci", "operator": "Exists", "tolerationSeconds": 5},),
        ),
        ({"JETBRIDGE_STORE_ACCESS_MODE": "ReadWriteOnce"}, "store_access_mode", "ReadWriteOnce"),
        ({"JETBRIDGE_POD_RETENTION_SECONDS": "900"}, "pod_retention_seconds", 900),
        (
            {
                "JETBRIDGE_LOG_STORE": "gcs",
                "JETBRIDGE_LOG_BUCKET": "b",
                "JETBRIDGE_LOG_PREFIX": "x",
            },
            "log_prefix",
            "x",
        ),
    ],
    ids=[
        "default-requests",
        "default-limits",
        "requests-numbers-become-strings",
        "no-limits",
        "pull-secrets",
        "node-selector",
        "tolerations",
        "readwriteonce",
        "retention",
        "gcs-logs",
    ],
)
def test_settings_are_read_from_the_environment(
    env: dict[str, str], field: str, value: Any
) -> None:
    assert getattr(load_settings(env), field) == value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"JETBRIDGE_NODE_SELECTOR": "pool=ci"},
            "JETBRIDGE_NODE_SELECTOR must be JSON, found 'pool=ci'",
        ),
        ({"JETBRIDGE_NODE_SELECTOR": '["ci"]'}, "must be a JSON object of strings"),
        ({"JETBRIDGE_NODE_SELECTOR": '{"a": {"b": 1}}'}, "must be a JSON object of strings"),
        ({"JETBRIDGE_IMAGE_PULL_SECRETS": '"creds"'}, "must be a JSON list of strings"),
        ({"JETBRIDGE_TOLERATIONS": '["ci"]'}, "must be a JSON list of objects"),
        (
            {"JETBRIDGE_TOLERATIONS": '[{"key": "ci", "toleration_seconds": 5}]'},
            "JETBRIDGE_TOLERATIONS[0] has unknown key(s) toleration_seconds",
        ),
        (
            {"JETBRIDGE_STEP_LIMITS": '{"memory": "2 GB"}'},
            "JETBRIDGE_STEP_LIMITS: 'memory' must be a Kubernetes quantity",
        ),
        (
            {"JETBRIDGE_STEP_LIMITS": '{"memory": "128Mi"}'},
            "asks for memory 256Mi, more than its limit 128Mi",
        ),
        (
            {"JETBRIDGE_STORE_ACCESS_MODE": "RWO"},
            "JETBRIDGE_STORE_ACCESS_MODE must be one of ReadWriteMany, ReadWriteOnce, found 'RWO'",
        ),
        ({"JETBRIDGE_POD_RETENTION_SECONDS": "-1"}, "must be 0 or more"),
    ],
    ids=[
        "not-json",
        "list-for-map",
        "nested-map",
        "string-for-list",
        "strings-for-tolerations",
        "snake-case-toleration",
        "bad-quantity",
        "request-over-limit",
        "unknown-access-mode",
        "negative-retention",
    ],
)
def test_impossible_settings_are_refused_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        load_settings(env)


def test_pod_settings_carry_every_pod_setting() -> None:
    settings = load_settings(
        {
            "JETBRIDGE_NAMESPACE": "ci",
            "JETBRIDGE_STORE_CLAIM": "store",
            "JETBRIDGE_STEP_LIMITS": '{"memory": "1Gi", "cpu": "2"}',
            "JETBRIDGE_IMAGE_PULL_SECRETS": '["creds"]',
            "JETBRIDGE_NODE_SELECTOR": '{"pool": "ci"}',
            "JETBRIDGE_TOLERATIONS": '[{"key": "ci", "operator": "Exists"}]',
            "JETBRIDGE_STORE_ACCESS_MODE": "ReadWriteOnce",
        }
    )
    pods = pod_settings(settings)
    assert (pods.namespace, pods.claim) == ("ci", "store")
    assert pods.requests == DEFAULT_STEP_REQUESTS
    assert pods.limits == {"memory": "1Gi", "cpu": "2"}
    assert pods.image_pull_secrets == ("creds",)
    assert pods.node_selector == {"pool": "ci"}
    assert pods.tolerations == ({"key": "ci", "operator": "Exists"},)
    assert pods.pin_to_node is True
