"""A checker for the Pod Security Standard "restricted" profile, on API-shaped pod specs.

``violations(pod_spec)`` takes a PodSpec as the API serializes it (camelCase keys:
a Pod's ``spec``, a Deployment's ``spec.template.spec``; ``pod_spec_of`` finds it in
any of them) and returns one sentence per violation, empty when the spec would be
admitted to a namespace labelled ``pod-security.kubernetes.io/enforce: restricted``.

It follows the controls of the latest profile as Kubernetes' Pod Security Admission
checks them: every baseline control (host namespaces, privileged, capabilities,
hostPath, host ports, AppArmor, SELinux, ``/proc`` mount, seccomp, sysctls, Windows
HostProcess) and the restricted ones (volume types, privilege escalation, non-root,
non-zero user, seccomp required, capabilities dropped). Not modelled: the exemptions
for Windows pods (``spec.os.name: windows``), the optional "non-root groups" control,
and the pod-level AppArmor annotations (``metadata`` is not part of a pod spec).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

#: Volume types the restricted profile allows (everything else, hostPath included, is refused).
ALLOWED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
#: The only capability a restricted container may add.
ALLOWED_ADD = frozenset({"NET_BIND_SERVICE"})
#: Seccomp profile types the restricted profile accepts.
ALLOWED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})
#: AppArmor profile types the baseline accepts.
ALLOWED_APPARMOR = frozenset({"RuntimeDefault", "Localhost"})
#: SELinux types the baseline accepts ("" is unset).
ALLOWED_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
#: Namespaced sysctls the baseline calls safe.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
    }
)
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def violations(pod_spec: Mapping[str, Any]) -> list[str]:
    """Every way ``pod_spec`` breaks the restricted profile; ``[]`` when it keeps it."""
    found: list[str] = []
    pod_sc: Mapping[str, Any] = pod_spec.get("securityContext") or {}

    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            found.append(f"spec.{field} is true; host namespaces are not allowed")
    for volume in pod_spec.get("volumes") or ():
        kinds = sorted(set(volume) - {"name"} - ALLOWED_VOLUMES)
        for kind in kinds:
            found.append(
                f"spec.volumes[{volume.get('name')}] is a {kind} volume; allowed: "
                + ", ".join(sorted(ALLOWED_VOLUMES))
            )
    found += _context_violations("spec.securityContext", pod_sc)
    for sysctl in pod_sc.get("sysctls") or ():
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"spec.securityContext.sysctls sets unsafe sysctl {sysctl.get('name')!r}")
    if pod_sc.get("runAsUser") == 0:
        found.append("spec.securityContext.runAsUser is 0 (root)")

    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP:
        found.append(f"spec.securityContext.seccompProfile.type is {pod_seccomp!r}")

    for where, container in _containers(pod_spec):
        sc: Mapping[str, Any] = container.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"{where}.securityContext.privileged is true")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}.securityContext.allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot") is False or not (pod_non_root or sc.get("runAsNonRoot")):
            found.append(
                f"{where} may run as root: runAsNonRoot must be true in it or in the pod, "
                "and not false in it"
            )
        if sc.get("runAsUser") == 0:
            found.append(f"{where}.securityContext.runAsUser is 0 (root)")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in ALLOWED_SECCOMP:
            found.append(f"{where}.securityContext.seccompProfile.type is {seccomp!r}")
        elif seccomp is None and pod_seccomp is None:
            found.append(
                f"{where} has no seccomp profile: set RuntimeDefault or Localhost "
                "in it or in the pod"
            )
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or ()):
            found.append(f"{where}.securityContext.capabilities.drop must include ALL")
        added = sorted(set(capabilities.get("add") or ()) - ALLOWED_ADD)
        if added:
            found.append(
                f"{where}.securityContext.capabilities.add has {', '.join(added)}; "
                "only NET_BIND_SERVICE may be added"
            )
        if sc.get("procMount") not in (None, "Default"):
            found.append(f"{where}.securityContext.procMount is {sc['procMount']!r}")
        found += _context_violations(f"{where}.securityContext", sc)
        for i, port in enumerate(container.get("ports") or ()):
            if port.get("hostPort"):
                found.append(f"{where}.ports[{i}].hostPort is {port['hostPort']}")
    return found


def pod_spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec inside a Pod, a workload (Deployment, Job, …) or a CronJob; else ``None``."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        return spec
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template")
    if isinstance(template, Mapping):
        inner = template.get("spec")
        return inner if isinstance(inner, Mapping) else None
    return None


def _containers(pod_spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for kind in _CONTAINER_LISTS:
        for container in pod_spec.get(kind) or ():
            yield f"spec.{kind}[{container.get('name')}]", container


def _context_violations(where: str, sc: Mapping[str, Any]) -> list[str]:
    """Controls a pod's and a container's security contexts share."""
    found = []
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append(f"{where}.windowsOptions.hostProcess is true")
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in ALLOWED_SELINUX_TYPES:
        found.append(f"{where}.seLinuxOptions.type is {selinux['type']!r}")
    for field in ("user", "role"):
        if selinux.get(field):
            found.append(f"{where}.seLinuxOptions.{field} is set")
    apparmor = (sc.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in ALLOWED_APPARMOR:
        found.append(f"{where}.appArmorProfile.type is {apparmor!r}")
    return found
