"""Kubernetes' own schemas for what JetBridge hands the cluster: ``kubernetes-validate --strict``.

Strict means an unknown field is an error too (a typo the API server would drop
silently, or refuse). ``schema_errors`` returns what is wrong, so a test can
assert on it and show it; ``VERSIONS`` is the range every object must pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kubernetes_validate

#: Every Kubernetes minor version JetBridge's manifests must be valid for.
VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37")


def schema_errors(obj: Mapping[str, Any], version: str) -> list[str]:
    """What ``kubernetes-validate --strict`` finds wrong with ``obj`` for ``version``; ``[]`` if valid.

    Raises ``AssertionError`` when the installed package has no schema of its own
    for ``version`` (it would silently check against an older one).
    """
    try:
        checked = kubernetes_validate.validate(dict(obj), version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(root)"
        return [f"Kubernetes {version}: {path}: {e.message}"]
    assert checked == version, f"kubernetes-validate checked against {checked}, not {version}"
    return []
