"""The local runtime: runs a step's ``V1Pod`` on this machine, no cluster needed.

``jetbridge run`` and ``jetbridge serve`` embed it, and tests use it as a
simulated kubelet. It consumes the very pod the Kubernetes runtime would create,
so there is one description of a step, not two: the pod's command, env, working
directory, mounts, termination message and deadline mean here what they mean on
a node. The host's filesystem stands in for the image (``image_binds`` adds the
files an image has and the host lacks, such as a resource type's
``/opt/resource``).

Two sandboxes:

* **bwrap** (bubblewrap): the host's root read-only, a private ``/dev``, ``/proc``
  and ``/tmp``, each volume mount bound at its ``mountPath`` (read-only where the
  pod says so), the termination-message file bound at its path, in a new PID
  namespace and session, with every capability dropped (so a step run as root
  cannot remount a read-only input). A mount point the host lacks
  (``/opt/resource``, ``/workspace``) is made by rebuilding the host directories
  above it from their entries in bubblewrap's own root, never by writing to the
  host; what is made there is read-only like the rest of the "image". Without a
  ``tmp`` emptyDir at ``/tmp``, a directory in the pod's scratch is bound there.
* **links** (no usable bubblewrap): the process runs on the host. A directory in
  the pod's scratch stands in for the working directory and each mount under it
  is a symlink to its host directory; an argv element or env value (each
  ``:``-separated part of it) that starts with a mount path, an image-bind path,
  the working directory or the termination-message path is rewritten to the host
  path. Paths inside longer strings (a shell script) are not. ``TMPDIR`` points
  at the pod's ``/tmp`` in its scratch (``HOME=/tmp`` is rewritten there too).
  Read-only mounts are not enforced; a warning says so once per process.

In both, the environment is the pod's env over ``PATH``/``HOME=/tmp``/``LANG``
defaults, never this process's; stdout and stderr go, interleaved, to the pod's
log file.

What a pod may hold: one container with ``command`` (the host has no image
entrypoint), ``args``, ``env`` with plain values (``$(VAR)`` references are
expanded as Kubernetes does), ``workingDir`` (default ``/``), ``volumeMounts``
(``subPath``, ``readOnly``), ``terminationMessagePath`` and ``Policy``;
``persistentVolumeClaim`` volumes (a claim name in ``claims``) and ``emptyDir``
volumes (a directory in the pod's scratch; ``medium``/``sizeLimit`` ignored);
``activeDeadlineSeconds``; ``restartPolicy: Never``. Accepted and ignored, as
they only matter to a scheduler or a container runtime: resources, security
contexts (the process runs as this user), node selector, tolerations, affinity,
image pull settings, service-account settings, priorities. Anything else that
is set (init containers, probes, ``envFrom``, a ``valueFrom`` other than
``secretKeyRef``, other volume types, ``subPathExpr`` …) is refused with a
``ConfigurationError`` naming the field. A ``secretKeyRef`` is read from the
Secrets given to ``put_secret`` (kept in memory, as a kubelet reads them from the
API); one that is not there refuses the pod (``PodRejected``) unless ``optional``.

Where this differs from a kubelet, on purpose:

* A pod killed by ``delete`` (or ``close``) reports nothing: ``on_finish`` is only
  called for a pod that ended by itself or by its deadline. Once ``delete``
  returns, nothing more is reported for that pod.
* The deadline is counted on the monotonic clock from the process's start (the
  injected clock only stamps times), and the pod's processes are killed with
  SIGKILL, with no grace period. The pod fails with ``reason: DeadlineExceeded``
  and its container with exit code 137 and the same reason.
* A command that cannot start fails the pod with exit code 127 (126 when the file
  is not executable) and ``reason: ContainerCannotRun``, as Docker reports it.
* ``logs`` of a pod this runtime does not know raises ``NotFoundError``, as the
  API answers 404.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import errno
import functools
import json
import logging
import os
import posixpath
import re
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from kubernetes.client import ApiClient, V1Pod

from shared.errors import ConfigurationError, NotFoundError, PodRejected
from shared.runtime import PodDict

log = logging.getLogger(__name__)

Sandbox = Literal["auto", "bwrap", "links"]

#: The namespace every local pod reports; there is only one "node" and one namespace here.
NAMESPACE = "local"
#: Docker's PATH for an image that sets none; the pod's own PATH wins.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Defaults a container would get from its image; ``HOME=/tmp`` because the root is read-only.
DEFAULT_ENV = {"PATH": DEFAULT_PATH, "HOME": "/tmp", "LANG": "C.UTF-8"}
#: Kubernetes' default for ``terminationMessagePath``.
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
#: The kubelet keeps at most this much of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096
#: With ``FallbackToLogsOnError`` the kubelet takes the log's last 80 lines, at most 2048 bytes.
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
#: How long ``delete`` and ``close`` wait for a SIGKILLed pod's watcher; a kill takes
#: milliseconds, so this only bounds a wedged process in uninterruptible sleep.
KILL_WAIT_SECONDS = 10.0
#: How long the bubblewrap probe may take; it runs ``true``, so anything longer is broken.
PROBE_TIMEOUT_SECONDS = 10.0
#: Status texts as the kubelet writes them.
DEADLINE_REASON = "DeadlineExceeded"
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
CANNOT_RUN_REASON = "ContainerCannotRun"
#: Exit codes of a command that cannot start, as shells and Docker report them.
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126

LINKS_WARNING = (
    "bubblewrap not found: steps run with a working directory of links; "
    "read-only inputs are not enforced"
)

#: A DNS-1123 subdomain, what Kubernetes accepts as a pod name; it is also a safe file name.
_POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
#: ``$$`` or ``$(NAME)``, the references Kubernetes expands in command, args and env.
_REFERENCE = re.compile(r"\$(?:\$|\(([^)]*)\))")
#: Where bubblewrap mounts its own file systems; the host's are never shown there.
_SANDBOX_OWN = frozenset({"/dev", "/proc", "/tmp"})

# Fields the local runtime honours or knowingly ignores; any other field that is
# set makes ``launch`` refuse the pod. Ignored ones only matter to a scheduler or a
# container runtime (resources, security, placement, image pulling).
_POD_SPEC_FIELDS = frozenset(
    {
        "containers",
        "volumes",
        "active_deadline_seconds",
        "restart_policy",
        "affinity",
        "automount_service_account_token",
        "dns_policy",
        "enable_service_links",
        "host_users",
        "image_pull_secrets",
        "node_name",
        "node_selector",
        "overhead",
        "preemption_policy",
        "priority",
        "priority_class_name",
        "resources",
        "runtime_class_name",
        "scheduler_name",
        "security_context",
        "service_account",
        "service_account_name",
        "termination_grace_period_seconds",
        "tolerations",
        "topology_spread_constraints",
    }
)
_CONTAINER_FIELDS = frozenset(
    {
        "name",
        "image",
        "command",
        "args",
        "env",
        "working_dir",
        "volume_mounts",
        "termination_message_path",
        "termination_message_policy",
        "image_pull_policy",
        "ports",
        "resize_policy",
        "resources",
        "security_context",
    }
)
_MOUNT_FIELDS = frozenset(
    {
        "name",
        "mount_path",
        "sub_path",
        "read_only",
        "mount_propagation",
        "recursive_read_only",
    }
)
_VOLUME_FIELDS = frozenset({"name", "persistent_volume_claim", "empty_dir"})

_links_warned = False
_links_warned_lock = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class _Mount:
    """Something shown at ``path`` inside the pod, backed by ``host`` on this machine."""

    path: str
    host: Path
    read_only: bool
    scratch: bool = False
    """Backed by the pod's scratch (an emptyDir, the stand-in ``/tmp``): ours to add links to."""
    is_file: bool = False


@dataclass(frozen=True, kw_only=True)
class _Step:
    """The parts of a pod the local runtime acts on, checked and resolved to host paths."""

    command: tuple[str, ...]
    """``command`` + ``args``, with ``$(VAR)`` expanded."""
    env: dict[str, str]
    """The container's environment: defaults, then the pod's env in order."""
    working_dir: str
    mounts: tuple[_Mount, ...]
    """Volume mounts, image binds, ``/tmp`` and the termination-message file, parents first."""
    termination_file: Path
    fallback_to_logs: bool
    deadline: int | None


@dataclass(frozen=True, kw_only=True)
class _Start:
    """How to start one pod's process, worked out (and checked) before it starts."""

    argv: tuple[str, ...]
    executable: str | None
    env: dict[str, str]
    cwd: Path
    cannot_run: tuple[int, str] | None
    """Exit code and message when the command cannot start at all."""
    sandboxed: bool = False
    """``argv`` runs bubblewrap, which reports its PID 1 through ``--info-fd``."""


@dataclass(eq=False, kw_only=True)
class _Pod:
    """One launched pod; every field after ``scratch`` is guarded by the runtime's lock."""

    name: str
    uid: str
    manifest: PodDict
    container: str
    image: str
    created: datetime
    scratch: Path
    start_time: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str = ""
    deadline_exceeded: bool = False
    deleted: bool = False
    exited: bool = False
    """The process has exited but may not be reaped: its pid (and group) is still ours."""
    process: subprocess.Popen[bytes] | None = None
    sandbox_pidfd: int | None = None
    """A pidfd of bubblewrap's PID 1 in the pod's namespace: killing it ends every process
    there before bubblewrap itself exits, so the pod is gone when it is reported."""
    thread: threading.Thread | None = None
    timer: threading.Timer | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.scratch / "log"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LocalRuntime:
    """Runs step pods as processes on this machine (see the module docstring)."""

    #: This machine's file system stands in for every pod's image: a task's ``image:``
    #: artifact needs no registry reference here (``shared.launching``).
    images_are_host = True
    #: No image is ever pulled here, so a custom resource type's scripts (inside its
    #: image) cannot run: the step runner refuses such steps with a message saying so.
    runs_images = False

    def __init__(
        self,
        *,
        claims: Mapping[str, Path],
        work_root: Path,
        on_finish: Callable[[PodDict], None],
        image_binds: Mapping[str, Mapping[str, Path]] | None = None,
        sandbox: Sandbox = "auto",
        clock: Callable[[], datetime] = _utcnow,
        shared_paths: Iterable[Path] = (),
    ) -> None:
        """Set up a runtime; ``sandbox="bwrap"`` without a working bubblewrap is refused.

        ``claims`` maps a PersistentVolumeClaim's name to the directory standing in
        for it; ``work_root`` holds each pod's scratch (log, termination message,
        emptyDirs, links); ``on_finish`` gets each pod that ends by itself or by its
        deadline, once, from a watcher thread; ``image_binds`` maps an image name
        (tag included) to ``{path in the container: host directory}``;
        ``shared_paths`` are host directories every pod sees read-write at the same
        path: what stands in for the network here (a repository a git resource
        names by its path, which a cluster pod would reach over the wire).
        """
        self._claims = {name: Path(path) for name, path in claims.items()}
        self._work_root = Path(work_root)
        self._on_finish = on_finish
        self._image_binds = {
            image: {_clean_path(p, f"image_binds[{image!r}]"): Path(h) for p, h in binds.items()}
            for image, binds in (image_binds or {}).items()
        }
        self._clock = clock
        self._shared_paths: set[Path] = {Path(p).resolve() for p in shared_paths}
        self._bwrap = _choose_sandbox(sandbox)
        self._lock = threading.Lock()
        self._pods: dict[str, _Pod] = {}
        self._secrets: dict[str, dict[str, str]] = {}
        self._closed = False
        self._serializer = ApiClient()
        self._work_root.mkdir(parents=True, exist_ok=True)

    def share(self, path: Path) -> None:
        """Let every pod launched from now on see host directory ``path`` read-write."""
        with self._lock:
            self._shared_paths.add(Path(path).resolve())

    def _to_json(self, pod: V1Pod) -> PodDict:
        """The pod as the API serializes it (camelCase, no nulls)."""
        data = self._serializer.sanitize_for_serialization(pod)  # type: ignore[no-untyped-call]
        return dict(data)

    @property
    def sandbox(self) -> Literal["bwrap", "links"]:
        """The sandbox in use: ``"auto"`` has been decided by now."""
        return "bwrap" if self._bwrap is not None else "links"

    # -- the Runtime protocol ------------------------------------------------

    def launch(self, pod: V1Pod) -> None:
        """Start ``pod`` in the background and return at once.

        A pod of the same name that is running or finished (and not deleted) counts
        as launched: nothing happens. A pod this runtime cannot honour raises
        ``ConfigurationError`` naming the field; a command that cannot start is not
        an error here, the pod finishes Failed (exit code 127, ``ContainerCannotRun``).
        """
        name = _pod_name(pod)
        with self._lock:
            if self._closed:
                raise RuntimeError("LocalRuntime is closed: no pod can be launched")
            if name in self._pods:
                return
            containers = pod.spec.containers if pod.spec is not None else None
            container = containers[0] if containers else None
            uid = str(uuid.uuid4())
            record = _Pod(
                name=name,
                uid=uid,
                manifest=self._to_json(pod),
                container=getattr(container, "name", None) or "",
                image=getattr(container, "image", None) or "",
                created=self._clock(),
                # One directory per launch: a delete still cleaning up never meets a relaunch.
                scratch=self._work_root / f"{name}.{uid[:8]}",
            )
            # Claimed before the slow part, so a concurrent launch of this name returns.
            self._pods[name] = record
        try:
            record.scratch.mkdir(parents=True)
            with self._lock:
                shared = sorted(self._shared_paths)
                secrets = {n: dict(d) for n, d in self._secrets.items()}
            step = _parse_pod(
                pod,
                secrets=secrets,
                claims=self._claims,
                image_binds=self._image_binds,
                scratch=record.scratch,
                shared_paths=shared,
            )
            start = self._prepare(step, record.scratch)
            record.log_path.touch()
        except BaseException as e:
            with self._lock:
                if self._pods.get(name) is record:
                    del self._pods[name]
            shutil.rmtree(record.scratch, ignore_errors=True)
            if isinstance(e, OSError):
                raise ConfigurationError(
                    f"pod {name}: cannot prepare its scratch in {record.scratch}: {e}"
                ) from e
            raise
        thread = threading.Thread(
            target=self._watch, args=(record, start, step), name=f"local-pod-{name}", daemon=True
        )
        with self._lock:
            if record.deleted:
                shutil.rmtree(record.scratch, ignore_errors=True)
                return
            record.thread = thread
            thread.start()  # under the lock, so a delete never joins an unstarted thread

    def list(self) -> list[PodDict]:
        """Every pod this runtime knows (all are JetBridge's), as ``read`` shows each."""
        with self._lock:
            names = sorted(self._pods)
        return [pod for pod in (self.read(n) for n in names) if pod is not None]

    def read(self, name: str) -> PodDict | None:
        """The pod as the Kubernetes API would show it now; ``None`` if unknown or deleted."""
        with self._lock:
            record = self._pods.get(name)
            return None if record is None else self._snapshot(record)

    def logs(self, name: str) -> bytes:
        """Everything the pod's process wrote to stdout and stderr so far, interleaved.

        Works while the pod runs and after it finished; raises ``NotFoundError`` for a
        pod this runtime does not know (never launched, or deleted), as the API's 404.
        """
        with self._lock:
            record = self._pods.get(name)
        if record is not None:
            try:
                return record.log_path.read_bytes()
            except FileNotFoundError:
                pass  # deleted meanwhile
        raise NotFoundError(f"no local pod named {name!r}: never launched, or deleted")

    def delete(self, name: str) -> None:
        """Kill the pod's processes if it runs, remove its scratch and forget it.

        A pod deleted before it finished never reaches ``on_finish``. Deleting an
        unknown pod is not an error. Returns once the process is gone.
        """
        with self._lock:
            record = self._pods.pop(name, None)
            if record is None:
                return
            record.deleted = True
            if record.process is not None and not record.exited:
                _kill(record)
            thread = record.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(KILL_WAIT_SECONDS)
        shutil.rmtree(record.scratch, ignore_errors=True)

    def put_secret(self, name: str, data: Mapping[str, str], *, labels: Mapping[str, str]) -> None:
        """Keep ``data`` in the Secret ``name`` (in memory) for pods launched from now on."""
        with self._lock:
            self._secrets.setdefault(name, {}).update(data)

    def delete_secret(self, name: str) -> None:
        """Forget the Secret ``name``; forgetting one that is gone is not an error."""
        with self._lock:
            self._secrets.pop(name, None)

    def secret_names(self) -> builtins.list[str]:
        """The Secrets this runtime holds."""
        with self._lock:
            return sorted(self._secrets)

    def close(self) -> None:
        """Delete every pod still running (they report nothing); finished pods stay readable."""
        with self._lock:
            self._closed = True
            running = [p.name for p in self._pods.values() if p.finished_at is None]
        for name in running:
            self.delete(name)

    def __enter__(self) -> LocalRuntime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- starting ------------------------------------------------------------

    def _prepare(self, step: _Step, scratch: Path) -> _Start:
        """Make the host directories and links the pod needs; work out its argv."""
        for mount in step.mounts:
            if mount.is_file:
                mount.host.touch()
            else:
                mount.host.mkdir(parents=True, exist_ok=True)
        if self._bwrap is not None:
            return _bwrap_start(self._bwrap, step)
        return _links_start(step, scratch / "workdir")

    def _watch(self, record: _Pod, start: _Start, step: _Step) -> None:
        """The watcher thread: start the process, wait for it (or its deadline), report.

        The process is started here, not in ``launch``: bubblewrap's
        ``--die-with-parent`` follows the *thread* that forked it, and this thread
        lives exactly as long as the process.
        """
        with self._lock:
            if record.deleted:
                return
            record.start_time = self._clock()
        if start.cannot_run is not None:
            code, message = start.cannot_run
            self._finish(record, exit_code=code, reason=CANNOT_RUN_REASON, message=message)
            return
        with self._lock:
            # Running from before the exec: whatever the process writes, it is running.
            record.started_at = self._clock()
        info_read, info_write = os.pipe() if start.sandboxed else (-1, -1)
        argv = start.argv
        if start.sandboxed:
            argv = (argv[0], "--info-fd", str(info_write), *argv[1:])
        try:
            with record.log_path.open("ab") as log_file:
                process = subprocess.Popen(
                    argv,
                    executable=start.executable,
                    env=start.env,
                    cwd=start.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=(info_write,) if start.sandboxed else (),
                )
        except OSError as e:
            if start.sandboxed:
                os.close(info_read)
            code = EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
            message = f'exec: "{step.command[0]}": {e.strerror or e}'
            self._finish(record, exit_code=code, reason=CANNOT_RUN_REASON, message=message)
            return
        finally:
            if start.sandboxed:
                os.close(info_write)
        pidfd = _sandbox_pidfd(info_read) if start.sandboxed else None
        with self._lock:
            record.process = process
            record.sandbox_pidfd = pidfd
            if record.deleted:
                _kill(record)
            elif step.deadline is not None:
                record.timer = threading.Timer(step.deadline, self._deadline, args=(record,))
                record.timer.daemon = True
                record.timer.start()
        _wait_exited(process.pid)
        with self._lock:
            record.exited = True
            if record.timer is not None:
                record.timer.cancel()
            if record.sandbox_pidfd is not None:
                os.close(record.sandbox_pidfd)
                record.sandbox_pidfd = None
        # A container ends with its main process; so do its stragglers. The pid is
        # not reaped yet, so the group cannot be someone else's.
        _kill_group(process.pid)
        returncode = process.wait()
        exit_code = 128 - returncode if returncode < 0 else returncode
        message = _termination_message(
            step.termination_file,
            record.log_path,
            fallback=step.fallback_to_logs and exit_code != 0,
        )
        with self._lock:
            deadline = record.deadline_exceeded
        reason = DEADLINE_REASON if deadline else "Completed" if exit_code == 0 else "Error"
        self._finish(record, exit_code=exit_code, reason=reason, message=message)

    def _deadline(self, record: _Pod) -> None:
        """Timer thread: the pod outlived ``activeDeadlineSeconds``; kill its process group."""
        with self._lock:
            if record.exited or record.deleted or record.process is None:
                return
            record.deadline_exceeded = True
            _kill(record)

    def _finish(self, record: _Pod, *, exit_code: int, reason: str, message: str) -> None:
        """Record the end of the pod and report it, unless it was deleted."""
        with self._lock:
            record.finished_at = self._clock()
            if record.started_at is None:
                record.started_at = record.finished_at
            record.exit_code, record.reason, record.message = exit_code, reason, message
            snapshot = None if record.deleted else self._snapshot(record)
        if snapshot is None:
            return
        try:
            self._on_finish(snapshot)
        except Exception:
            log.exception("on_finish failed for local pod %s", record.name)

    # -- reading -------------------------------------------------------------

    def _snapshot(self, record: _Pod) -> PodDict:
        """The pod as API JSON with its status; call with the lock held."""
        pod = copy.deepcopy(record.manifest)
        metadata = pod.setdefault("metadata", {})
        metadata["namespace"] = NAMESPACE
        metadata["uid"] = record.uid
        metadata["creationTimestamp"] = _rfc3339(record.created)
        container: dict[str, Any] = {
            "name": record.container,
            "image": record.image,
            "imageID": "",
            "restartCount": 0,
            "ready": False,
            "started": False,
        }
        status: dict[str, Any] = {"containerStatuses": [container]}
        if record.start_time is not None:
            status["startTime"] = _rfc3339(record.start_time)
        if record.finished_at is not None:
            assert record.started_at is not None and record.exit_code is not None
            terminated: dict[str, Any] = {
                "exitCode": record.exit_code,
                "reason": record.reason,
                "startedAt": _rfc3339(record.started_at),
                "finishedAt": _rfc3339(record.finished_at),
            }
            if record.message:  # omitted when empty, as the API does
                terminated["message"] = record.message
            container["state"] = {"terminated": terminated}
            status["phase"] = "Succeeded" if record.exit_code == 0 else "Failed"
            if record.deadline_exceeded:
                status["reason"] = DEADLINE_REASON
                status["message"] = DEADLINE_MESSAGE
        elif record.started_at is not None:
            container["state"] = {"running": {"startedAt": _rfc3339(record.started_at)}}
            container["ready"] = container["started"] = True
            status["phase"] = "Running"
        else:
            container["state"] = {"waiting": {"reason": "ContainerCreating"}}
            status["phase"] = "Pending"
        pod["status"] = status
        return pod


# -- choosing the sandbox -----------------------------------------------------


def _choose_sandbox(sandbox: str) -> str | None:
    """The bwrap executable to use, or ``None`` for links (warning once per process)."""
    if sandbox not in ("auto", "bwrap", "links"):
        raise ConfigurationError(f"sandbox must be 'auto', 'bwrap' or 'links'; found {sandbox!r}")
    problem = None
    if sandbox != "links":
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            problem = "not found"
        else:
            problem = _probe_bwrap(bwrap)
            if problem is None:
                return bwrap
        if sandbox == "bwrap":
            raise ConfigurationError(
                f"sandbox='bwrap' but bubblewrap {problem}; install the Debian package "
                "'bubblewrap' or use sandbox='links'"
            )
    global _links_warned
    with _links_warned_lock:
        if not _links_warned:
            _links_warned = True
            if problem is None or problem == "not found":
                log.warning(LINKS_WARNING)
            else:
                log.warning("%s (bubblewrap %s)", LINKS_WARNING, problem)
    return None


@functools.cache
def _probe_bwrap(bwrap: str) -> str | None:
    """Why ``bwrap`` cannot sandbox a step here (no user namespaces, say), or ``None``.

    Run once per process: the answer does not change while it runs.
    """
    argv = [
        bwrap,
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--unshare-pid",
        "--die-with-parent",
        "--new-session",
        "true",
    ]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"does not work here: {e}"
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip() or f"exit {done.returncode}"
        return f"does not work here: {detail}"
    return None


# -- reading the pod ----------------------------------------------------------


def _pod_name(pod: V1Pod) -> str:
    name = pod.metadata.name if pod.metadata is not None else None
    if not name:
        raise ConfigurationError("metadata.name is required: the local runtime names pods by it")
    if len(name) > 253 or not _POD_NAME.fullmatch(name):
        raise ConfigurationError(
            f"metadata.name {name!r} is not a valid pod name (a DNS-1123 subdomain)"
        )
    return str(name)


def _refuse_unknown(obj: Any, where: str, allowed: frozenset[str]) -> None:
    """Refuse a set field of a kubernetes model that is neither honoured nor ignored."""
    for attr, json_name in obj.attribute_map.items():
        value = getattr(obj, attr)
        if attr in allowed or value is None or value is False or value == [] or value == {}:
            continue
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ConfigurationError(
            f"{where}.{json_name} is not supported by the local runtime (found {shown})"
        )


def _clean_path(path: Any, where: str) -> str:
    """An absolute, normalized container path other than ``/``."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigurationError(f"{where} must be an absolute path; found {path!r}")
    if ".." in path.split("/"):
        raise ConfigurationError(f"{where} must not contain '..'; found {path!r}")
    clean = posixpath.normpath(path)
    clean = "/" + clean.lstrip("/")  # normpath keeps a leading '//'
    if clean == "/":
        raise ConfigurationError(f"{where} cannot be '/'")
    return clean


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` is ``$``, an unknown reference stays as is."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(one, text)


def _parse_pod(
    pod: V1Pod,
    *,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    claims: Mapping[str, Path],
    image_binds: Mapping[str, Mapping[str, Path]],
    scratch: Path,
    shared_paths: Sequence[Path] = (),
) -> _Step:
    """Check ``pod`` against what the local runtime honours and resolve it to host paths."""
    spec = pod.spec
    if spec is None:
        raise ConfigurationError("spec is required")
    _refuse_unknown(spec, "spec", _POD_SPEC_FIELDS)
    if spec.restart_policy not in (None, "Never"):
        raise ConfigurationError(
            f"spec.restartPolicy must be 'Never' locally (steps are not restarted); "
            f"found {spec.restart_policy!r}"
        )
    if len(spec.containers or []) != 1:
        raise ConfigurationError(
            f"spec.containers must hold exactly one container; found {len(spec.containers or [])}"
        )
    container = spec.containers[0]
    where = "spec.containers[0]"
    _refuse_unknown(container, where, _CONTAINER_FIELDS)
    if not container.command:
        raise ConfigurationError(
            f"{where}.command is required locally: the host has no image entrypoint"
        )

    env: dict[str, str] = {}
    for i, var in enumerate(container.env or []):
        if var.value_from is not None:
            value = _from_secret(var, f"{where}.env[{i}]", secrets or {}, _pod_name(pod))
            if value is not None:
                env[var.name] = value
            continue
        env[var.name] = _expand(var.value or "", env)
    command = tuple(_expand(str(a), env) for a in [*container.command, *(container.args or [])])
    working_dir = (
        _clean_path(container.working_dir, f"{where}.workingDir")
        if container.working_dir not in (None, "", "/")
        else "/"
    )
    termination_path = _clean_path(
        container.termination_message_path or DEFAULT_TERMINATION_PATH,
        f"{where}.terminationMessagePath",
    )
    policy = container.termination_message_policy or "File"
    if policy not in ("File", "FallbackToLogsOnError"):
        raise ConfigurationError(
            f"{where}.terminationMessagePolicy must be 'File' or 'FallbackToLogsOnError'; "
            f"found {policy!r}"
        )

    volumes = _parse_volumes(spec.volumes or [], claims=claims, scratch=scratch)
    mounts: list[_Mount] = []
    for i, vm in enumerate(container.volume_mounts or []):
        at = f"{where}.volumeMounts[{i}]"
        _refuse_unknown(vm, at, _MOUNT_FIELDS)
        if vm.name not in volumes:
            raise ConfigurationError(
                f"{at}.name {vm.name!r} names no volume in spec.volumes "
                f"(volumes: {', '.join(sorted(volumes)) or 'none'})"
            )
        root, read_only, is_scratch, what = volumes[vm.name]
        host = _inside(root, vm.sub_path, f"{at}.subPath", what) if vm.sub_path else root
        mounts.append(
            _Mount(
                path=_clean_path(vm.mount_path, f"{at}.mountPath"),
                host=host,
                read_only=bool(vm.read_only) or read_only,
                scratch=is_scratch,
            )
        )
    for path, host in image_binds.get(container.image or "", {}).items():
        if not host.is_dir():
            raise ConfigurationError(
                f"image_binds[{container.image!r}][{path!r}] = {host} is not a directory"
            )
        mounts.append(_Mount(path=path, host=host, read_only=True))
    for host in shared_paths:
        if host.is_dir() and not any(m.path == str(host) for m in mounts):
            mounts.append(_Mount(path=str(host), host=host, read_only=False))
    if not any(m.path == "/tmp" for m in mounts):
        mounts.append(_Mount(path="/tmp", host=scratch / "tmp", read_only=False, scratch=True))
    termination_file = scratch / "termination-log"
    mounts.append(
        _Mount(path=termination_path, host=termination_file, read_only=False, is_file=True)
    )
    seen: set[str] = set()
    for m in mounts:
        if m.path in seen:
            raise ConfigurationError(
                f"{m.path} is mounted twice (volume mounts, image binds "
                f"and the terminationMessagePath must not collide)"
            )
        seen.add(m.path)

    deadline = spec.active_deadline_seconds
    if deadline is not None and deadline <= 0:
        raise ConfigurationError(f"spec.activeDeadlineSeconds must be positive; found {deadline!r}")
    return _Step(
        command=command,
        # HOSTNAME is the pod's name, as the kubelet sets it in every container.
        env=DEFAULT_ENV | {"HOSTNAME": _pod_name(pod)} | env,
        working_dir=working_dir,
        mounts=tuple(sorted(mounts, key=lambda m: (_depth(m.path), m.path))),
        termination_file=termination_file,
        fallback_to_logs=policy == "FallbackToLogsOnError",
        deadline=deadline,
    )


def _from_secret(
    var: Any, where: str, secrets: Mapping[str, Mapping[str, str]], pod: str
) -> str | None:
    """The value of an env var taken from a Secret (``None``: optional and not there)."""
    ref = var.value_from.secret_key_ref
    others = [
        attr
        for attr in var.value_from.attribute_map
        if attr != "secret_key_ref" and getattr(var.value_from, attr) is not None
    ]
    if ref is None or others:
        raise ConfigurationError(
            f"{where}.valueFrom ({var.name}) is not supported by the local runtime; "
            "give a plain value or a secretKeyRef"
        )
    value = (secrets.get(ref.name) or {}).get(ref.key)
    if value is None and not ref.optional:
        what = "has no key" if ref.name in secrets else "does not exist, so has no key"
        raise PodRejected(
            f"pod {pod}: env {var.name} comes from Secret {ref.name!r}, which {what} {ref.key!r}"
        )
    return value


def _parse_volumes(
    volumes: Sequence[Any], *, claims: Mapping[str, Path], scratch: Path
) -> dict[str, tuple[Path, bool, bool, str]]:
    """Volume name → (host directory, read-only, in scratch, description for messages)."""
    found: dict[str, tuple[Path, bool, bool, str]] = {}
    for i, volume in enumerate(volumes):
        at = f"spec.volumes[{i}]"
        _refuse_unknown(volume, at, _VOLUME_FIELDS)
        if not volume.name or "/" in volume.name or volume.name in (".", ".."):
            raise ConfigurationError(f"{at}.name must be a plain name; found {volume.name!r}")
        pvc, empty = volume.persistent_volume_claim, volume.empty_dir
        if pvc is not None and empty is not None:
            raise ConfigurationError(f"{at} has both persistentVolumeClaim and emptyDir")
        if pvc is not None:
            root = claims.get(pvc.claim_name)
            if root is None:
                raise ConfigurationError(
                    f"{at}.persistentVolumeClaim.claimName {pvc.claim_name!r} has no local "
                    f"directory (claims: {', '.join(sorted(claims)) or 'none'})"
                )
            if not root.is_dir():
                raise ConfigurationError(
                    f"claim {pvc.claim_name!r} stands for {root}, which is not a directory"
                )
            found[volume.name] = (root, bool(pvc.read_only), False, f"claim {pvc.claim_name!r}")
        elif empty is not None:
            # medium and sizeLimit are ignored: an emptyDir is a directory in the scratch.
            found[volume.name] = (
                scratch / "volumes" / volume.name,
                False,
                True,
                f"emptyDir {volume.name!r}",
            )
        else:
            raise ConfigurationError(
                f"{at} ({volume.name}) must be a persistentVolumeClaim or an emptyDir locally"
            )
    return found


def _inside(root: Path, sub_path: str, where: str, what: str) -> Path:
    """``root/sub_path``, refused unless it resolves (symlinks followed) inside ``root``."""
    try:
        base = root.resolve()
        target = (base / sub_path).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise ConfigurationError(f"{where} {sub_path!r} cannot be resolved in {what}: {e}") from e
    if sub_path.startswith("/") or not target.is_relative_to(base):
        raise ConfigurationError(
            f"{where} {sub_path!r} resolves to {target}, outside {what} ({base})"
        )
    return target


# -- bubblewrap ---------------------------------------------------------------


def _bwrap_start(bwrap: str, step: _Step) -> _Start:
    """The bubblewrap command line that shows ``step`` its mounts at their paths."""
    mount_paths = {m.path for m in step.mounts}
    needed = [*mount_paths, step.working_dir]
    on_root = []
    for path in needed:
        outer = _enclosing(path, step.mounts)
        if outer is not None:
            if outer.read_only and not os.path.lexists(_host_in(outer, path)):
                raise ConfigurationError(
                    f"{path} cannot be made inside the read-only mount {outer.path}"
                )
        elif _under(path, "/proc"):
            raise ConfigurationError(f"{path}: nothing can be mounted under /proc")
        elif not _under_any(path, _SANDBOX_OWN):
            on_root.append(path)
    root, spliced = _root_view(on_root)
    argv = [bwrap, *root, "--dev", "/dev", "--proc", "/proc"]
    for m in step.mounts:  # parents first, so a child lands inside its parent
        argv += ["--ro-bind" if m.read_only else "--bind", str(m.host), m.path]
    if step.working_dir not in mount_paths and step.working_dir != "/":
        argv += ["--dir", step.working_dir]
    if spliced:  # the rebuilt directories are as read-only as the host's root
        argv += ["--remount-ro", "/"]
    # --cap-drop ALL: run as root, a step could otherwise remount a read-only input.
    argv += [
        "--chdir",
        step.working_dir,
        "--unshare-pid",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--",
        *step.command,
    ]

    def to_host(path: str) -> str:
        outer = _enclosing(path, step.mounts, inclusive=True)
        return path if outer is None else _host_in(outer, path)

    cannot_run = _check_command(step, to_host)
    return _Start(
        argv=tuple(argv),
        executable=None,
        env=dict(step.env),
        cwd=Path("/"),
        cannot_run=cannot_run,
        sandboxed=True,
    )


def _root_view(paths: Iterable[str]) -> tuple[list[str], bool]:
    """bwrap arguments showing the host's root read-only with room for ``paths``.

    ``--ro-bind / /`` when every path exists on the host. Otherwise bubblewrap could
    not make the missing mount points (the host's root is read-only there), so the
    host directories above each one are rebuilt in bubblewrap's own root: ``--dir``
    for the directory, and each of its entries bound (or linked) one by one.
    Returns the arguments and whether anything was rebuilt.
    """
    missing = sorted(p for p in paths if not os.path.lexists(p))
    if not missing:
        return ["--ro-bind", "/", "/"], False
    rebuilt: set[str] = set()
    for path in missing:
        for above in _ancestors(path):
            if not os.path.lexists(above):
                break
            if os.path.islink(above) or not os.path.isdir(above):
                raise ConfigurationError(
                    f"cannot make the mount point {path}: {above} is not a directory on this host"
                )
            rebuilt.add(above)
    args: list[str] = []
    _rebuild("/", rebuilt, args)
    return args, True


def _rebuild(directory: str, rebuilt: set[str], args: list[str]) -> None:
    """Append the arguments that rebuild host ``directory`` and, below it, those in ``rebuilt``."""
    try:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as e:
        raise ConfigurationError(
            f"cannot list {directory} to rebuild it in the sandbox: {e}"
        ) from e
    for entry in entries:
        path = entry.path
        if path in _SANDBOX_OWN:
            continue
        if path in rebuilt:
            args += ["--dir", path]
            _rebuild(path, rebuilt, args)
        elif entry.is_symlink():
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]


# -- links --------------------------------------------------------------------


def _links_start(step: _Step, workdir: Path) -> _Start:
    """Links, cwd, and rewritten argv and env for running ``step`` without a sandbox."""
    mounts = list(step.mounts)
    work_is_mount = any(m.path == step.working_dir for m in mounts)
    stand_in = None
    if (
        step.working_dir != "/"
        and _enclosing(step.working_dir, mounts) is None
        and not work_is_mount
    ):
        stand_in = _Mount(path=step.working_dir, host=workdir, read_only=False, scratch=True)
    elif step.working_dir == "/":
        stand_in = _Mount(path="/", host=workdir, read_only=False, scratch=True)
    workdir.mkdir(parents=True, exist_ok=True)
    places = [*mounts, stand_in] if stand_in is not None else mounts
    for m in mounts:
        outer = _enclosing(m.path, places)
        if outer is None:
            continue  # reached only through rewritten paths
        if not outer.scratch:
            raise ConfigurationError(
                f"{m.path} is mounted inside {outer.path}; without bubblewrap a mount can only "
                "be placed in the working directory or an emptyDir"
            )
        link = Path(_host_in(outer, m.path))
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(m.host, target_is_directory=not m.is_file)
    table = [m for m in places if m.path != "/"]

    def to_host(path: str) -> str:
        outer = _enclosing(path, table, inclusive=True)
        return path if outer is None else _host_in(outer, path)

    cwd = Path(to_host(step.working_dir)) if step.working_dir != "/" else workdir
    cwd.mkdir(parents=True, exist_ok=True)
    argv = tuple(to_host(a) if a.startswith("/") else a for a in step.command)
    env = {
        k: ":".join(to_host(p) if p.startswith("/") else p for p in v.split(":"))
        for k, v in step.env.items()
    }
    env.setdefault("TMPDIR", to_host("/tmp"))
    cannot_run = _check_command(step, to_host)
    executable = None
    if cannot_run is None:
        executable = _find_command(step, to_host)[0]
    return _Start(argv=argv, executable=executable, env=env, cwd=cwd, cannot_run=cannot_run)


# -- paths --------------------------------------------------------------------


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def _under(path: str, parent: str) -> bool:
    """``path`` is ``parent`` or lies below it."""
    return parent == "/" or path == parent or path.startswith(parent + "/")


def _under_any(path: str, parents: Iterable[str]) -> bool:
    return any(_under(path, p) for p in parents)


def _ancestors(path: str) -> list[str]:
    """``/``, ``/a``, ``/a/b`` for ``/a/b/c``: the directories above ``path``, top first."""
    parts = path.strip("/").split("/")[:-1]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _enclosing(path: str, mounts: Iterable[_Mount], *, inclusive: bool = False) -> _Mount | None:
    """The deepest mount that ``path`` lies below (or is, when ``inclusive``)."""
    best = None
    for m in mounts:
        if path == m.path:
            if not inclusive:
                continue
        elif m.is_file or not _under(path, m.path):
            continue
        if best is None or _depth(m.path) > _depth(best.path):
            best = m
    return best


def _host_in(mount: _Mount, path: str) -> str:
    """Where ``path`` (at or below ``mount.path``) is on the host."""
    if path == mount.path:
        return str(mount.host)
    rest = path[len(mount.path) :].lstrip("/")
    return str(mount.host / rest)


# -- the command --------------------------------------------------------------


def _find_command(step: _Step, to_host: Callable[[str], str]) -> tuple[str | None, bool]:
    """The host path of the command's executable, and whether a non-executable file was seen.

    Looks where the container would: a path with a ``/`` from the working directory,
    a bare name along the container's ``PATH``.
    """
    command = step.command[0]
    if "/" in command:
        candidates = [posixpath.join(step.working_dir, command)]
    else:
        candidates = [
            posixpath.join(step.working_dir, d, command)
            for d in step.env.get("PATH", DEFAULT_PATH).split(":")
        ]
    not_executable = False
    for candidate in candidates:
        host = to_host(posixpath.normpath(candidate))
        if os.path.isfile(host):
            if os.access(host, os.X_OK):
                return host, False
            not_executable = True
    return None, not_executable


def _check_command(step: _Step, to_host: Callable[[str], str]) -> tuple[int, str] | None:
    """Exit code and message, as a container runtime gives them, when the command cannot start."""
    found, not_executable = _find_command(step, to_host)
    if found is not None:
        return None
    command = step.command[0]
    if not_executable:
        return EXIT_NOT_EXECUTABLE, f'exec: "{command}": permission denied'
    if "/" in command:
        return EXIT_NOT_FOUND, f'exec: "{command}": stat {command}: no such file or directory'
    return EXIT_NOT_FOUND, f'exec: "{command}": executable file not found in $PATH'


# -- processes ----------------------------------------------------------------


def _kill(record: _Pod) -> None:
    """Kill a running pod's processes; call with the runtime's lock held."""
    if record.sandbox_pidfd is not None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(record.sandbox_pidfd, signal.SIGKILL)
    elif record.process is not None:
        _kill_group(record.process.pid)


def _sandbox_pidfd(info: int) -> int | None:
    """A pidfd of the sandbox's PID 1, read from bubblewrap's ``--info-fd`` JSON, then closed.

    ``None`` when bubblewrap failed before starting it (or it is gone already).
    """
    data = b""
    try:
        while b"}" not in data:
            chunk = os.read(info, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(info)
    try:
        pid = int(json.loads(data)["child-pid"])
        return os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError):
        return None


def _kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (bwrap's death takes its namespace along)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _wait_exited(pid: int) -> None:
    """Block until ``pid`` exits, leaving it unreaped so its pid cannot be reused yet."""
    with contextlib.suppress(ChildProcessError):  # already reaped
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def _termination_message(path: Path, log_path: Path, *, fallback: bool) -> str:
    """The termination message as the kubelet reads it (at most 4096 bytes)."""
    try:
        with path.open("rb") as f:
            data = f.read(TERMINATION_MESSAGE_LIMIT)
    except OSError:
        data = b""
    if not data and fallback:
        try:
            tail = log_path.read_bytes()[-FALLBACK_LOG_BYTES:]
        except OSError:
            tail = b""
        data = b"\n".join(tail.split(b"\n")[-FALLBACK_LOG_LINES:])
    return data.decode("utf-8", "replace")


def _rfc3339(moment: datetime) -> str:
    """``2024-01-02T03:04:05Z``: seconds, UTC, as the API writes timestamps."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
