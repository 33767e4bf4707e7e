"""Building a step's pod: one pure function from a step to a ``V1Pod``.

Everything that needs I/O (the artifact subpaths, the ids) is looked up before
and passed in, so the builder is tested as data against golden files. Both
runtimes consume what it returns: the cluster creates it, the local runtime
runs it on this machine. No init containers and no sidecars: inputs and outputs
are ``subPath`` mounts of the one artifact-store claim.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import (
    V1Capabilities,
    V1Container,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1LocalObjectReference,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1Pod,
    V1PodSecurityContext,
    V1PodSpec,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1SecurityContext,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from shared.plan import StepSpec

MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PREFIX = "jetbridge.dev/"
LABEL_BUILD = LABEL_PREFIX + "build"
LABEL_STEP = LABEL_PREFIX + "step"
LABEL_ATTEMPT = LABEL_PREFIX + "attempt"
LABEL_JOB = LABEL_PREFIX + "job"
LABEL_PIPELINE = LABEL_PREFIX + "pipeline"
ANNOTATION_STEP_KEY = LABEL_PREFIX + "step-key"

STORE_VOLUME = "artifacts"
TMP_VOLUME = "tmp"
CONTAINER = "step"
#: Kubernetes' limit on a pod name that also has to serve as a DNS label.
MAX_NAME = 63
#: A non-root user for every step; 65532 is the conventional "nonroot" of distroless images.
RUN_AS_USER = 65532


@dataclass(frozen=True, kw_only=True)
class PodIds:
    """Who the pod belongs to; becomes its name and labels."""

    pipeline: str
    job: str
    build_id: int
    step_id: int
    step_key: str
    attempt: int = 1


@dataclass(frozen=True, kw_only=True)
class Mount:
    """An artifact mounted into the step: its subpath on the claim and its place in the pod."""

    subpath: str
    mount: str
    """Path relative to the working directory."""
    read_only: bool


@dataclass(frozen=True, kw_only=True)
class PodSettings:
    """Cluster-wide choices for step pods, from settings."""

    claim: str
    workdir: str = "/tmp/build"
    resource_image: str = ""
    namespace: str = "default"
    default_timeout_seconds: int = 3600
    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)
    image_pull_secrets: tuple[str, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


def pod_name(ids: PodIds, step_name: str) -> str:
    """A deterministic, DNS-safe name of at most 63 characters for one attempt of one step.

    The same step and attempt always give the same name, so creating it twice is
    harmless (the second create finds the first). A hash of the whole identity
    keeps names unique when the readable part has to be cut.
    """
    identity = f"{ids.pipeline}/{ids.job}/{ids.build_id}/{ids.step_key}/{ids.attempt}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    readable = _dns(f"jb-{ids.build_id}-{step_name}")
    suffix = f"-a{ids.attempt}-{digest}"
    return readable[: MAX_NAME - len(suffix)].rstrip("-") + suffix


def build_step_pod(
    step: StepSpec, *, ids: PodIds, mounts: Sequence[Mount], settings: PodSettings
) -> V1Pod:
    """The pod that runs one attempt of ``step``."""
    workdir = settings.workdir.rstrip("/")
    volume_mounts = [V1VolumeMount(name=TMP_VOLUME, mount_path="/tmp")]
    for m in sorted(mounts, key=lambda m: m.mount):
        volume_mounts.append(
            V1VolumeMount(
                name=STORE_VOLUME,
                mount_path=f"{workdir}/{m.mount.strip('/')}",
                sub_path=m.subpath,
                read_only=m.read_only or None,
            )
        )
    image = step.image or settings.resource_image
    if step.resource is not None and step.resource.image:
        image = step.resource.image
    env = [V1EnvVar(name=k, value=_literal(v)) for k, v in sorted(step.env.items())]
    container = V1Container(
        name=CONTAINER,
        image=image,
        command=[_literal(step.command[0])] if step.command else None,
        args=[_literal(a) for a in step.command[1:]] or None,
        env=env or None,
        working_dir=f"{workdir}/{step.dir.strip('/')}" if step.dir else workdir,
        volume_mounts=volume_mounts,
        resources=_resources(settings),
        security_context=V1SecurityContext(
            allow_privilege_escalation=False,
            run_as_non_root=True,
            capabilities=V1Capabilities(drop=["ALL"]),
            seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
        ),
        termination_message_policy="File",
    )
    return V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=V1ObjectMeta(
            name=pod_name(ids, step.name),
            namespace=settings.namespace,
            labels={
                MANAGED_BY: "jetbridge",
                LABEL_PIPELINE: _label(ids.pipeline),
                LABEL_JOB: _label(ids.job),
                LABEL_BUILD: str(ids.build_id),
                LABEL_STEP: str(ids.step_id),
                LABEL_ATTEMPT: str(ids.attempt),
            },
            annotations={ANNOTATION_STEP_KEY: ids.step_key},
        ),
        spec=V1PodSpec(
            restart_policy="Never",
            automount_service_account_token=False,
            enable_service_links=False,
            active_deadline_seconds=step.timeout_seconds or settings.default_timeout_seconds,
            security_context=V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=RUN_AS_USER,
                run_as_group=RUN_AS_USER,
                fs_group=RUN_AS_USER,
                seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
            ),
            containers=[container],
            volumes=[
                V1Volume(name=TMP_VOLUME, empty_dir=V1EmptyDirVolumeSource()),
                V1Volume(
                    name=STORE_VOLUME,
                    persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
                        claim_name=settings.claim
                    ),
                ),
            ],
            image_pull_secrets=[V1LocalObjectReference(name=s) for s in settings.image_pull_secrets]
            or None,
            node_selector=dict(settings.node_selector) or None,
            tolerations=[V1Toleration(**dict(t)) for t in settings.tolerations] or None,
        ),
    )


def _literal(text: str) -> str:
    """Text Kubernetes passes through as written: it expands ``$(VAR)`` and reads ``$$`` as ``$``."""
    return text.replace("$", "$$")


def _resources(settings: PodSettings) -> V1ResourceRequirements | None:
    if not settings.requests and not settings.limits:
        return None
    return V1ResourceRequirements(
        requests=dict(settings.requests) or None, limits=dict(settings.limits) or None
    )


def _dns(text: str) -> str:
    """Lower-case letters, digits and dashes only, as a DNS label allows."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def _label(text: str) -> str:
    """A valid label value: 63 characters of ``[A-Za-z0-9._-]``, alphanumeric at both ends."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:MAX_NAME]
    return cleaned.strip("-._")
