#!/usr/bin/env python3
"""Regenerate the Prometheus Operator schemas vendored in ``tests/testdata/chart/operator-schemas/``.

With ``monitoring.enabled`` the chart makes a PodMonitor and a PrometheusRule; the tests
check each against the schema of the Prometheus Operator's own CRD for its kind, as they
check Knative's kinds (``deploy/knative_schemas.py``). The schemas come from PyPI:
``cloudcoil-models-prometheus-operator`` holds models generated from the
``openAPIV3Schema`` of the operator's CRDs. This script installs the pinned version into a
temporary folder (never into the project's venv: the package brings a pytest plugin with
it), and writes one JSON Schema per kind the chart uses, exactly as the models give it; the
tests make it strict.

    python deploy/monitoring/operator_schemas.py   # then review the diff of tests/testdata/chart/operator-schemas/
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
OUT = ROOT / "tests" / "testdata" / "chart" / "operator-schemas"
#: The newest version whose wheel installs on Python 3.11 (later ones need 3.14).
PACKAGE = "cloudcoil-models-prometheus-operator==0.80.1.0"
MODULE = "cloudcoil.models.prometheus_operator.v1"
KINDS = (("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"))

_DUMP = """
import importlib, json, sys, warnings
warnings.simplefilter("ignore")
module = importlib.import_module(sys.argv[1])
print(json.dumps({kind: getattr(module, kind).model_json_schema(by_alias=True) for kind in sys.argv[2:]}))
"""


def file_name(api_version: str, kind: str) -> str:
    """``monitoring.coreos.com/v1`` ``PodMonitor`` -> ``monitoring.coreos.com_v1_PodMonitor.json``."""
    return f"{api_version.replace('/', '_')}_{kind}.json"


def main() -> None:
    with tempfile.TemporaryDirectory() as target:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", target, PACKAGE],
            check=True,
        )
        dumped = subprocess.run(
            [sys.executable, "-c", _DUMP, MODULE, *(kind for _, kind in KINDS)],
            check=True, capture_output=True, text=True, env={"PYTHONPATH": target},
        ).stdout  # fmt: skip
    schemas = json.loads(dumped)
    OUT.mkdir(parents=True, exist_ok=True)
    for api_version, kind in KINDS:
        schema = schemas[kind]
        schema["$comment"] = (
            f"{api_version} {kind}: the Prometheus Operator's CRD schema as the PyPI models "
            f"{PACKAGE} give it; regenerate with deploy/monitoring/operator_schemas.py"
        )
        path = OUT / file_name(api_version, kind)
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
