"""``jetbridge render``: the pods a build would create, printed as YAML, valid and restricted.

The output for the pipeline of ``test_podspec.py`` is a golden file
(``tests/testdata/render/app-build.yaml``, rewritten by ``make golden``); every
rendered pod, of that pipeline and of the demo, passes ``kubernetes-validate
--strict`` for Kubernetes 1.30 to 1.37 and the restricted Pod Security Standard.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from shared.cli import EXIT_BAD_PIPELINE, cli
from tests import pss
from tests.golden import ROOT, TESTDATA, check_golden
from tests.kubeschema import VERSIONS, schema_errors
from tests.test_podspec import PIPELINE, STEPS


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings come from each test's own env, never from the machine's JETBRIDGE_* vars."""
    for name in list(os.environ):
        if name.startswith("JETBRIDGE_"):
            monkeypatch.delenv(name)
    yield


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "app.yml"
    path.write_text(PIPELINE)
    return path


def render(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["render", *args], env=env, catch_exceptions=False)


def pods_of(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@pytest.mark.golden
def test_the_rendered_build_is_its_golden_file(pipeline_file: Path, update_golden: bool) -> None:
    pods = pods_of(render(str(pipeline_file), "--job", "build"))
    check_golden(TESTDATA / "render" / "app-build.yaml", pods, update=update_golden)


def test_one_pod_per_step_in_plan_order_with_artifacts_passed_along(pipeline_file: Path) -> None:
    pods = pods_of(render(str(pipeline_file), "--job", "build"))
    keys = [p["metadata"]["annotations"]["jetbridge.dev/step-key"] for p in pods]
    assert keys == list(STEPS)
    assert {p["metadata"]["labels"]["jetbridge.dev/build"] for p in pods} == {"0"}
    mounts = {
        key: {m["mountPath"]: m for m in p["spec"]["containers"][0]["volumeMounts"]}
        for key, p in zip(keys, pods, strict=True)
    }
    # The get writes the artifact the tasks then read, at the same placeholder subpath.
    assert mounts["0"]["/tmp/build/repo"] == {
        "mountPath": "/tmp/build/repo",
        "name": "artifacts",
        "subPath": "artifacts/0/repo",
    }
    assert mounts["1.0"]["/tmp/build/repo"]["subPath"] == "artifacts/0/repo"
    assert mounts["1.0"]["/tmp/build/repo"]["readOnly"] is True


def demo_pods() -> list[dict[str, Any]]:
    return pods_of(
        render(
            str(ROOT / "examples" / "demo" / "pipeline.yml"), "--job", "build", "--var", "repo=/r"
        )
    )


def app_pods(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "app.yml"
    path.write_text(PIPELINE)
    return pods_of(render(str(path), "--job", "build"))


@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_pod_is_valid_for_kubernetes(version: str, tmp_path: Path) -> None:
    pods = demo_pods() + app_pods(tmp_path)
    assert len(pods) > len(STEPS)
    errors = [e for pod in pods for e in schema_errors(pod, version)]
    assert errors == []


def test_every_rendered_pod_keeps_the_restricted_standard(tmp_path: Path) -> None:
    pods = demo_pods() + app_pods(tmp_path)
    assert {p["metadata"]["name"]: pss.violations(p["spec"]) for p in pods} == {
        p["metadata"]["name"]: [] for p in pods
    }


def test_the_pods_follow_this_process_settings(pipeline_file: Path) -> None:
    env = {
        "JETBRIDGE_NAMESPACE": "ci",
        "JETBRIDGE_STORE_CLAIM": "ci-store",
        "JETBRIDGE_STORE_ACCESS_MODE": "ReadWriteOnce",
        "JETBRIDGE_NODE_SELECTOR": '{"pool": "ci"}',
    }
    pods = pods_of(render(str(pipeline_file), "--job", "build", env=env))
    for pod in pods:
        assert pod["metadata"]["namespace"] == "ci"
        assert pod["spec"]["nodeSelector"] == {"pool": "ci"}
        assert "podAffinity" in pod["spec"]["affinity"]
        claims = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert claims == [{"name": "artifacts", "persistentVolumeClaim": {"claimName": "ci-store"}}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--job", "deploy"], "no job 'deploy' in the pipeline; jobs: build"),
        (["--job", "build", "--var", "novalue"], "must look like name=value"),
    ],
    ids=["unknown-job", "bad-var-flag"],
)
def test_a_bad_request_exits_2_naming_the_problem(
    pipeline_file: Path, args: list[str], message: str
) -> None:
    result = render(str(pipeline_file), *args)
    assert result.exit_code == EXIT_BAD_PIPELINE
    assert message in result.output
    assert "apiVersion" not in result.stdout


def test_a_pipeline_missing_a_var_exits_2() -> None:
    result = render(str(ROOT / "examples" / "demo" / "pipeline.yml"), "--job", "build")
    assert result.exit_code == EXIT_BAD_PIPELINE
    assert "repo" in result.output


def test_variables_are_rendered_as_references_into_the_builds_secret(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yml"
    path.write_text(
        """
jobs:
- name: deploy
  plan:
  - task: push
    config:
      platform: linux
      image_resource: {type: registry-image, source: {repository: busybox}}
      params: {TOKEN: ((token)), REGION: ((region))}
      run: {path: sh, args: [-c, 'curl -u "bot:((token))" https://example.com']}
"""
    )
    result = render(str(path), "--job", "deploy", "-v", "token=tok-5e1f0a9c", "-v", "region=eu")
    (pod,) = pods_of(result)
    assert "tok-5e1f0a9c" not in result.stdout
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "jb-0-secrets", "key": "1-TOKEN"}
    assert env["REGION"] == {"name": "REGION", "value": "eu"}  # too short to be a credential
    assert pod["spec"]["containers"][0]["args"][1] == (
        'curl -u "bot:$(JETBRIDGE_CREDENTIAL_1)" https://example.com'
    )
    assert schema_errors(pod, VERSIONS[-1]) == []
