"""Building a step's pod: one pure function from a step to a ``V1Pod``.

Everything that needs I/O (the artifact subpaths, the ids, the node a build is
pinned to, which env values are secrets) is looked up before and passed in, so
the builder is tested as data against golden files (``tests/testdata/pods/``).
Both runtimes consume what it returns: the cluster creates it, the local runtime
runs it on this machine. No init containers and no sidecars: inputs and outputs
are ``subPath`` mounts of the one artifact-store claim.

What every pod gets, and why:

- the Pod Security Standard "restricted" (non-root user, no privilege
  escalation, every capability dropped, ``RuntimeDefault`` seccomp), no
  service-account token and no service links: a step is untrusted code;
- ``restartPolicy: Never`` and ``activeDeadlineSeconds``: a step runs once and
  never longer than its timeout;
- a writable ``emptyDir`` at ``/tmp`` (``HOME`` and the working directory live
  under it), so images with a read-only or root-owned file system still work;
- requests and limits, image pull secrets, node selector and tolerations from
  settings;
- with a ReadWriteOnce claim (``PodSettings.pin_to_node``), pod affinity to the
  other pods of its build, plus node affinity to ``node`` once the caller knows
  where the build's first pod ran: one node can mount the claim, so all of a
  build's pods go there;
- env values that are secrets (``secret_env``) as ``secretKeyRef``s to the
  build's Secret (``secret_name``), never as literals in the pod.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import (
    V1Affinity,
    V1Capabilities,
    V1Container,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1LabelSelector,
    V1LocalObjectReference,
    V1NodeAffinity,
    V1NodeSelector,
    V1NodeSelectorRequirement,
    V1NodeSelectorTerm,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1Pod,
    V1PodAffinity,
    V1PodAffinityTerm,
    V1PodSecurityContext,
    V1PodSpec,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1SecretKeySelector,
    V1SecurityContext,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from shared.plan import StepSpec, tag_node_selector

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
#: The node label the scheduler groups pods by when pinning a build to one node.
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
#: What a Secret's keys may hold (``[-._a-zA-Z0-9]+``), checked before the API would refuse it.
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
#: The longest key a Secret may hold (it is a DNS subdomain).
MAX_SECRET_KEY = 253
#: JSON's spelling of a toleration's keys to the client model's.
_TOLERATION_FIELDS = {
    "key": "key",
    "operator": "operator",
    "value": "value",
    "effect": "effect",
    "tolerationSeconds": "toleration_seconds",
}


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
    """Kubernetes tolerations as JSON spells them (``tolerationSeconds``)."""
    pin_to_node: bool = False
    """The claim is ReadWriteOnce: keep every pod of a build on one node."""
    tag_labels: Mapping[str, str] = field(default_factory=dict)
    """Worker tag → the node label (``key=value``) a step with that tag must run on."""


def secret_name(build_id: int) -> str:
    """The Secret that holds a build's secret env values (``secret_env`` refers into it).

    One per build, so a build only ever sees its own values, and the reaper removes
    it with the build's other leftovers.
    """
    return f"jb-{int(build_id)}-secrets"


@dataclass(frozen=True)
class SecretEnv:
    """A step's env values that hold credentials, and where they go in the build's Secret."""

    refs: Mapping[str, str]
    """Env name → key in the build's Secret: ``build_step_pod``'s ``secret_env``."""
    data: Mapping[str, str]
    """Key → value: what the build's Secret must hold before the pod starts."""
    in_command: Mapping[str, str] = field(default_factory=dict)
    """A credential as the command holds it → the env var (in ``refs``) that carries it:
    ``build_step_pod``'s ``secret_args``."""


#: The env vars that carry credentials written in a step's command: ``<prefix><n>``.
CREDENTIAL_ENV_PREFIX = "JETBRIDGE_CREDENTIAL_"


def secret_env(
    env: Mapping[str, str],
    credentials: Iterable[str],
    *,
    step_id: int,
    command: Sequence[str] = (),
) -> SecretEnv:
    """Which of a step's env values and command hold a credential, and their Secret keys.

    ``credentials`` are the values a pipeline's ``((vars))`` were set to: Concourse
    treats every one as a credential. An env value that contains any of them (a
    param set from a var, a resource request whose ``source`` has one) reaches the
    pod through the build's Secret, never as a literal in the pod's spec, where
    anyone allowed to read pods would see it. A credential written into the
    command (``run.args``) gets an env var of its own from the Secret, and the
    command refers to it as ``$(JETBRIDGE_CREDENTIAL_<n>)``, which Kubernetes
    expands. Keys are ``<step id>-<env name>`` (a name a key cannot hold is
    replaced by its digest), so two steps of a build never overwrite each other's
    values, and writing them again changes nothing.
    """
    secrets = _forms(credentials)
    refs: dict[str, str] = {}
    data: dict[str, str] = {}

    def keep(name: str, value: str) -> None:
        label = name if _SECRET_KEY.fullmatch(name) else hashlib.sha256(name.encode()).hexdigest()
        key = f"{int(step_id)}-{label}"[:MAX_SECRET_KEY]
        refs[name] = key
        data[key] = value

    for name in sorted(env):
        if any(secret in env[name] for secret in secrets):
            keep(name, env[name])
    # Longest first: a credential that contains another is replaced whole.
    found = sorted(
        {s for s in secrets if any(s in part for part in command)}, key=lambda s: (-len(s), s)
    )
    in_command: dict[str, str] = {}
    for n, secret in enumerate(found, start=1):
        in_command[secret] = f"{CREDENTIAL_ENV_PREFIX}{n}"
        keep(in_command[secret], secret)
    return SecretEnv(refs=refs, data=data, in_command=in_command)


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
    step: StepSpec,
    *,
    ids: PodIds,
    mounts: Sequence[Mount],
    settings: PodSettings,
    node: str | None = None,
    secret_env: Mapping[str, str] | None = None,
    secret_args: Mapping[str, str] | None = None,
) -> V1Pod:
    """The pod that runs one attempt of ``step``.

    ``node``: where the build's first pod ran, looked up by the caller; with
    ``settings.pin_to_node`` the pod must run there too (ignored otherwise).
    ``secret_env``: env name → key in the build's Secret (``secret_name``). Those
    variables reach the container through ``secretKeyRef``; a literal value the
    step has for the same name is left out of the pod. ``secret_args``: a
    credential in the command → the secret env var that holds it; the command
    says ``$(NAME)`` in its place. Raises ``ValueError`` for
    a key a Secret cannot hold.
    """
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
    env = _env(step.env, secret_env or {}, build_id=ids.build_id)
    container = V1Container(
        name=CONTAINER,
        image=image,
        command=[_literal(step.command[0], secret_args)] if step.command else None,
        args=[_literal(a, secret_args) for a in step.command[1:]] or None,
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
                # Without it the kubelet chowns the whole claim on every mount of a block
                # volume: minutes for a big store, on every step.
                fs_group_change_policy="OnRootMismatch",
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
            node_selector={
                **settings.node_selector,
                **tag_node_selector(step.tags, settings.tag_labels),
            }
            or None,
            tolerations=[_toleration(t) for t in settings.tolerations] or None,
            affinity=_pinning(ids.build_id, node) if settings.pin_to_node else None,
        ),
    )


def _forms(credentials: Iterable[str]) -> set[str]:
    """Each credential as written, and JSON-escaped: a resource request is JSON, and a
    credential with a newline or a quote (a private key) is in it escaped."""
    return {form for c in credentials if c for form in (c, json.dumps(c)[1:-1])}


def credentials_in(step: StepSpec, credentials: Iterable[str]) -> tuple[str, ...]:
    """The credentials among ``credentials`` that ``step``'s env or command holds."""
    texts = [*step.env.values(), *step.command]
    return tuple(
        sorted(
            c
            for c in set(credentials)
            if c and any(form in text for form in _forms([c]) for text in texts)
        )
    )


def credentialed_pod(
    step: StepSpec,
    *,
    ids: PodIds,
    mounts: Sequence[Mount],
    settings: PodSettings,
    credentials: Iterable[str],
    node: str | None = None,
) -> tuple[V1Pod, SecretEnv]:
    """``build_step_pod`` with every credential among ``credentials`` (the pipeline's
    variable values) moved into the build's Secret: the pod, and what the Secret must hold."""
    secrets = secret_env(step.env, credentials, step_id=ids.step_id, command=step.command)
    pod = build_step_pod(
        step,
        ids=ids,
        mounts=mounts,
        settings=settings,
        node=node,
        secret_env=secrets.refs,
        secret_args=secrets.in_command,
    )
    return pod, secrets


def _env(
    values: Mapping[str, str], secret_env: Mapping[str, str], *, build_id: int
) -> list[V1EnvVar]:
    """Plain values as literals, secret ones as references into the build's Secret."""
    env = []
    for name in sorted({*values, *secret_env}):
        key = secret_env.get(name)
        if key is None:
            env.append(V1EnvVar(name=name, value=_literal(values[name])))
            continue
        if not _SECRET_KEY.fullmatch(key):
            raise ValueError(
                f"secret env {name!r} names key {key!r} of Secret {secret_name(build_id)}; "
                "a Secret key holds only letters, digits, '-', '_' and '.'"
            )
        ref = V1SecretKeySelector(name=secret_name(build_id), key=key)
        env.append(V1EnvVar(name=name, value_from=V1EnvVarSource(secret_key_ref=ref)))
    return env


def _pinning(build_id: int, node: str | None) -> V1Affinity:
    """Keep a build's pods on one node (its ReadWriteOnce claim can be mounted on one only).

    Pod affinity to the build's other pods covers pods launched side by side before
    anyone knows a node (Kubernetes lets the first pod of a group whose selector it
    matches itself go anywhere); node affinity to ``node`` covers a pod launched
    after the others have ended, when there is no pod left to be near. ``matchFields``
    on ``metadata.name`` names the node itself, unlike a hostname label, which a
    provider may set to something else.
    """
    own_build = V1LabelSelector(match_labels={MANAGED_BY: "jetbridge", LABEL_BUILD: str(build_id)})
    near_build = V1PodAffinity(
        required_during_scheduling_ignored_during_execution=[
            V1PodAffinityTerm(label_selector=own_build, topology_key=HOSTNAME_TOPOLOGY)
        ]
    )
    on_node = None
    if node:
        on_node = V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=V1NodeSelector(
                node_selector_terms=[
                    V1NodeSelectorTerm(
                        match_fields=[
                            V1NodeSelectorRequirement(
                                key="metadata.name", operator="In", values=[node]
                            )
                        ]
                    )
                ]
            )
        )
    return V1Affinity(pod_affinity=near_build, node_affinity=on_node)


def _toleration(data: Mapping[str, Any]) -> V1Toleration:
    """A toleration as settings hold it (JSON's camelCase) as the client's model."""
    return V1Toleration(**{_TOLERATION_FIELDS[k]: v for k, v in data.items()})


def _literal(text: str, hidden: Mapping[str, str] | None = None) -> str:
    """Text Kubernetes passes through as written: it expands ``$(VAR)`` and reads ``$$`` as
    ``$``. Each ``hidden`` value (a credential) becomes ``$(NAME)`` of the var that holds it."""
    if not hidden:
        return text.replace("$", "$$")
    pattern = re.compile("|".join(re.escape(v) for v in sorted(hidden, key=lambda v: -len(v))))
    out, at = [], 0
    for match in pattern.finditer(text):
        out += [text[at : match.start()].replace("$", "$$"), f"$({hidden[match.group(0)]})"]
        at = match.end()
    return "".join([*out, text[at:].replace("$", "$$")])


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


#: The build id ``preview_pods`` gives pods of a build that does not exist.
PREVIEW_BUILD_ID = 0


def preview_pods(
    steps: Sequence[StepSpec],
    *,
    pipeline: str,
    job: str,
    settings: PodSettings,
    credentials: Iterable[str] = (),
) -> list[V1Pod]:
    """The pods a build of ``steps`` would create, before any build exists (``jetbridge render``).

    Stand-ins for what only a real build has: build id 0, step ids numbered in plan
    order from 1, and each artifact at ``artifacts/0/<name>`` (``<name>.<step key>``
    when the build makes that name more than once). A get whose version its check
    will find is shown without a version. ``credentials`` (the variables' values) are
    shown as the build would pass them: references into the build's Secret.
    """
    producers: dict[str, list[str]] = {}
    for spec in steps:
        for output in spec.outputs:
            producers.setdefault(output.name, []).append(spec.key)

    def subpath(name: str, producer: str) -> str:
        unique = len(producers.get(name, ())) <= 1
        return f"artifacts/{PREVIEW_BUILD_ID}/{name if unique else f'{name}.{producer}'}"

    pods = []
    for number, spec in enumerate(steps, start=1):
        mounts = [
            Mount(subpath=subpath(i.name, i.producer), mount=i.mount, read_only=True)
            for i in spec.inputs
        ]
        mounts += [
            Mount(subpath=subpath(o.name, spec.key), mount=o.mount, read_only=False)
            for o in spec.outputs
        ]
        ids = PodIds(
            pipeline=pipeline,
            job=job,
            build_id=PREVIEW_BUILD_ID,
            step_id=number,
            step_key=spec.key,
        )
        pod, _ = credentialed_pod(
            spec, ids=ids, mounts=mounts, settings=settings, credentials=credentials
        )
        pods.append(pod)
    return pods
