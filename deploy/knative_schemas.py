#!/usr/bin/env python3
"""Regenerate the Knative schemas vendored in ``tests/testdata/knative-schemas/``.

The tests check every Knative object JetBridge ships against the schema of Knative's own
CRD for its kind. Those schemas come from PyPI: ``cloudcoil-models-knative-serving`` and
``cloudcoil-models-knative-eventing`` are models generated from the ``openAPIV3Schema`` of
Knative's CRDs. This script installs the pinned versions into a temporary folder (never
into the project's venv: the package brings a pytest plugin with it), and writes one JSON
Schema per kind JetBridge uses, exactly as the models give it; the tests make it strict.

    python deploy/knative_schemas.py        # then review the diff of tests/testdata/knative-schemas/
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "testdata" / "knative-schemas"
PACKAGES = (
    "cloudcoil-models-knative-serving==1.17.0.1",
    "cloudcoil-models-knative-eventing==1.17.1.1",
)
#: (apiVersion, kind) -> the module holding its model.
KINDS = {
    ("serving.knative.dev/v1", "Service"): "cloudcoil.models.knative_serving.serving.v1",
    (
        "serving.knative.dev/v1beta1",
        "DomainMapping",
    ): "cloudcoil.models.knative_serving.serving.v1beta1",
    ("eventing.knative.dev/v1", "Broker"): "cloudcoil.models.knative_eventing.eventing.v1",
    ("eventing.knative.dev/v1", "Trigger"): "cloudcoil.models.knative_eventing.eventing.v1",
    ("sources.knative.dev/v1", "PingSource"): "cloudcoil.models.knative_eventing.sources.v1",
    ("sources.knative.dev/v1", "ApiServerSource"): "cloudcoil.models.knative_eventing.sources.v1",
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


def main() -> None:
    with tempfile.TemporaryDirectory() as target:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", target, *PACKAGES],
            check=True,
        )
        kinds = {f"{api} {kind}": module for (api, kind), module in KINDS.items()}
        dumped = subprocess.run(
            [sys.executable, "-c", _DUMP, json.dumps(kinds)],
            check=True, capture_output=True, text=True, env={"PYTHONPATH": target},
        ).stdout  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    for key, schema in json.loads(dumped).items():
        api_version, kind = key.split(" ")
        schema["$comment"] = (
            f"{api_version} {kind}: Knative's CRD schema as the PyPI models "
            f"{' and '.join(PACKAGES)} give it; regenerate with deploy/knative_schemas.py"
        )
        path = OUT / file_name(api_version, kind)
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
