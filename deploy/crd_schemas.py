#!/usr/bin/env python3
"""Regenerate the CRD schemas vendored for the tests: Knative's and the Prometheus Operator's.

The tests check every Knative object JetBridge ships (``knative/``, the chart) and the
chart's PodMonitor and PrometheusRule against the schema of the owning project's own CRD
for its kind. Those schemas come from PyPI: the ``cloudcoil-models-*`` packages are models
generated from the ``openAPIV3Schema`` of the CRDs. This script installs the pinned
versions into a temporary folder (never into the project's venv: the packages bring a
pytest plugin with them), and writes one JSON Schema per kind JetBridge uses, exactly as
the models give it; the tests make it strict.

    python deploy/crd_schemas.py              # every set; then review the diff
    python deploy/crd_schemas.py knative      # one set: knative or prometheus-operator
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SchemaSet:
    """The schemas of one project's CRDs: where they go, and which models give them."""

    owner: str
    out: Path
    packages: tuple[str, ...]
    kinds: dict[tuple[str, str], str]
    """(apiVersion, kind) -> the module holding its model."""


SETS = {
    "knative": SchemaSet(
        owner="Knative's",
        out=ROOT / "tests" / "testdata" / "knative-schemas",
        packages=(
            "cloudcoil-models-knative-serving==1.17.0.1",
            "cloudcoil-models-knative-eventing==1.17.1.1",
        ),
        kinds={
            ("serving.knative.dev/v1", "Service"): "cloudcoil.models.knative_serving.serving.v1",
            (
                "serving.knative.dev/v1beta1",
                "DomainMapping",
            ): "cloudcoil.models.knative_serving.serving.v1beta1",
            ("eventing.knative.dev/v1", "Broker"): "cloudcoil.models.knative_eventing.eventing.v1",
            ("eventing.knative.dev/v1", "Trigger"): "cloudcoil.models.knative_eventing.eventing.v1",
            ("sources.knative.dev/v1", "PingSource"): "cloudcoil.models.knative_eventing.sources.v1",
            (
                "sources.knative.dev/v1",
                "ApiServerSource",
            ): "cloudcoil.models.knative_eventing.sources.v1",
        },
    ),
    "prometheus-operator": SchemaSet(
        owner="the Prometheus Operator's",
        out=ROOT / "tests" / "testdata" / "chart" / "operator-schemas",
        # The newest version whose wheel installs on Python 3.11 (later ones need 3.14).
        packages=("cloudcoil-models-prometheus-operator==0.80.1.0",),
        kinds={
            ("monitoring.coreos.com/v1", "PodMonitor"): "cloudcoil.models.prometheus_operator.v1",
            (
                "monitoring.coreos.com/v1",
                "PrometheusRule",
            ): "cloudcoil.models.prometheus_operator.v1",
        },
    ),
}

_DUMP = """
import importlib, json, sys, warnings
warnings.simplefilter("ignore")
kinds = json.loads(sys.argv[1])
out = {}
for key, module in kinds.items():
    kind = key.split(" ")[1]
    out[key] = getattr(importlib.import_module(module), kind).model_json_schema(by_alias=True)
print(json.dumps(out))
"""


def file_name(api_version: str, kind: str) -> str:
    """``serving.knative.dev/v1`` ``Service`` -> ``serving.knative.dev_v1_Service.json``."""
    return f"{api_version.replace('/', '_')}_{kind}.json"


def write(schemas: SchemaSet) -> None:
    with tempfile.TemporaryDirectory() as target:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", target,
             *schemas.packages],
            check=True,
        )  # fmt: skip
        kinds = {f"{api} {kind}": module for (api, kind), module in schemas.kinds.items()}
        dumped = subprocess.run(
            [sys.executable, "-c", _DUMP, json.dumps(kinds)],
            check=True, capture_output=True, text=True, env={"PYTHONPATH": target},
        ).stdout  # fmt: skip
    schemas.out.mkdir(parents=True, exist_ok=True)
    for key, schema in json.loads(dumped).items():
        api_version, kind = key.split(" ")
        schema["$comment"] = (
            f"{api_version} {kind}: {schemas.owner} CRD schema as the PyPI models "
            f"{' and '.join(schemas.packages)} give it; regenerate with deploy/crd_schemas.py"
        )
        path = schemas.out / file_name(api_version, kind)
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(path.relative_to(ROOT))


def main(names: list[str]) -> None:
    unknown = [n for n in names if n not in SETS]
    if unknown:
        sys.exit(f"unknown schema set(s) {', '.join(unknown)}; known: {', '.join(SETS)}")
    for name in names or list(SETS):
        write(SETS[name])


if __name__ == "__main__":
    main(sys.argv[1:])
