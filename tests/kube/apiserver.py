"""A small stateful fake of the Kubernetes API's pod endpoints, over real HTTP on loopback.

The real ``kubernetes`` client talks to it as to a cluster (``Configuration(host=
server.url)``). What it serves, as the API server does (status codes, ``Status``
bodies, defaults):

* ``POST   /api/v1/namespaces/{ns}/pods``: create (201; 409 AlreadyExists; 404 for an
  unknown namespace; 422 for a pod without name, containers or images; 400 when the
  body names another namespace). The pod gets a uid, a resourceVersion, a
  ``creationTimestamp`` from the injected clock and ``status.phase: Pending``.
* ``GET    …/pods`` with ``labelSelector`` (``=``, ``==``, ``!=``, ``in``, ``notin``,
  exists, ``!``), ``limit`` and ``continue``; with ``watch=true`` a chunked stream of
  ``ADDED``/``MODIFIED``/``DELETED`` events from ``resourceVersion`` (all current pods
  as ``ADDED`` without one) until ``timeoutSeconds`` or the server stops.
* ``GET/DELETE …/pods/{name}``: a delete with a grace period (the body's, else the
  pod's ``terminationGracePeriodSeconds``) of a pod bound to a node that has not
  finished only sets ``deletionTimestamp``; the kubelet removes it (grace 0).
  Otherwise the pod is gone at once; the ``DELETED`` event carries its last state.
* ``PUT/PATCH …/pods/{name}/status`` (PATCH as a JSON merge patch, lists replaced),
  ``POST …/pods/{name}/binding``, ``GET …/pods/{name}/log?container=`` (bytes from
  ``log_source``; 400 "waiting to start" while it has none).
* ``POST …/secrets``, ``GET/PATCH/DELETE …/secrets/{name}``: Secrets kept as the API
  keeps them (``stringData`` folded into base64 ``data``; a PATCH is a merge patch and
  must say so: a JSON-patch content type with an object body is a 400, as for real).

Faults: ``fail(verb, resource, status=…)`` makes the next matching call (or the next
``times``) answer that status with a ``Status`` body like the real one (an RBAC
sentence for 403). Every call is kept in ``calls`` with its query and body.
"""

from __future__ import annotations

import base64
import bisect
import copy
import itertools
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PodDict = dict[str, Any]
#: ``(namespace, pod, container) -> log bytes``, or ``None`` while the container has not started.
LogSource = Callable[[str, str, str], "bytes | None"]

#: The user an injected 403 names, as a pod's service account shows in RBAC denials.
USER = "system:serviceaccount:jetbridge:jetbridge"
#: A watch without ``timeoutSeconds`` ends after this long (the real server picks 30-60 min).
DEFAULT_WATCH_SECONDS = 60
#: How often a waiting watch wakes to see whether the server is stopping.
WATCH_POLL_SECONDS = 0.1
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PATH = re.compile(
    r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
_SECRETS_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/]+))?$")
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "AlreadyExists",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


@dataclass(frozen=True, kw_only=True)
class Call:
    """One request as the API server's RequestInfo sees it."""

    verb: str
    """``create``, ``get``, ``list``, ``watch``, ``update``, ``patch`` or ``delete``."""
    resource: str
    """``pods``, ``pods/status``, ``pods/log``, ``pods/binding`` or ``secrets``."""
    namespace: str
    name: str | None
    query: Mapping[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)
    """When it arrived (monotonic seconds): the benchmarks time transitions by it."""


@dataclass(kw_only=True)
class _Fault:
    verb: str
    resource: str
    status: int
    times: int | None
    message: str | None
    name: str | None
    headers: Mapping[str, str] = field(default_factory=dict)

    def matches(self, call: Call) -> bool:
        return (
            self.verb == call.verb
            and self.resource == call.resource
            and (self.name is None or self.name == call.name)
            and (self.times is None or self.times > 0)
        )


class ApiError(Exception):
    """An answer other than success: becomes a ``Status`` body."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.name = name
        self.headers = dict(headers or {})

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.name is not None:
            body["details"] = {"name": self.name, "kind": "pods"}
        return body


def _utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeApiServer:
    """Pods in memory behind the API's HTTP endpoints (see the module docstring)."""

    def __init__(
        self,
        *,
        namespaces: tuple[str, ...] = ("default",),
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.namespaces = set(namespaces)
        self.clock = clock
        self.log_source: LogSource | None = None
        self.calls: list[Call] = []
        self._pods: dict[tuple[str, str], PodDict] = {}
        self._secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self._history: list[tuple[int, str, PodDict]] = []
        self._faults: list[_Fault] = []
        self._rv = itertools.count(1)
        self._last_rv = 0
        self._changed = threading.Condition()
        self._stopping = False
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> FakeApiServer:
        server = self

        class Handler(_Handler):
            api = server

        self._http = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": WATCH_POLL_SECONDS},  # how soon ``stop`` returns
            name="fake-apiserver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._http is not None, "start the server first"
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    # -- what tests use directly -----------------------------------------------

    def fail(
        self,
        verb: str,
        resource: str = "pods",
        *,
        status: int,
        times: int | None = 1,
        message: str | None = None,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` (``None``: every) matching call with ``status``."""
        with self._changed:
            self._faults.append(
                _Fault(
                    verb=verb,
                    resource=resource,
                    status=status,
                    times=times,
                    message=message,
                    name=name,
                    headers=dict(headers or {}),
                )
            )

    def pod(self, name: str, namespace: str = "default") -> PodDict | None:
        """The stored pod, as a GET would return it."""
        with self._changed:
            pod = self._pods.get((namespace, name))
            return copy.deepcopy(pod) if pod is not None else None

    def pods(self, namespace: str = "default") -> list[PodDict]:
        with self._changed:
            return [
                copy.deepcopy(p) for (ns, _), p in sorted(self._pods.items()) if ns == namespace
            ]

    def secret(self, name: str, namespace: str = "default") -> dict[str, str] | None:
        """The stored Secret's data, decoded, or ``None`` when there is no such Secret."""
        with self._changed:
            secret = self._secrets.get((namespace, name))
            if secret is None:
                return None
            return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}

    def secret_names(self, namespace: str = "default") -> list[str]:
        with self._changed:
            return sorted(name for ns, name in self._secrets if ns == namespace)

    def calls_of(self, verb: str, resource: str = "pods") -> list[Call]:
        with self._changed:
            return [c for c in self.calls if c.verb == verb and c.resource == resource]

    def history(self) -> list[tuple[str, PodDict]]:
        """Every change so far, as a watch from the beginning would show it."""
        with self._changed:
            return [(type_, copy.deepcopy(pod)) for _, type_, pod in self._history]

    # -- request handling (called from the HTTP handler) -------------------------

    def admit(self, method: str, path: str, query: dict[str, str], body: Any) -> Call:
        """Classify a request as RequestInfo does, record it, and apply any fault to it."""
        match = _PATH.match(path)
        if match is not None:
            ns, name, sub = match.group("ns"), match.group("name"), match.group("sub")
            resource = f"pods/{sub}" if sub else "pods"
        elif (secrets := _SECRETS_PATH.match(path)) is not None:
            ns, name, resource = secrets.group("ns"), secrets.group("name"), "secrets"
        else:
            raise ApiError(404, f"the server could not find the requested resource ({path})")
        verb = _verb(method, name, query)
        call = Call(verb=verb, resource=resource, namespace=ns, name=name, query=query, body=body)
        with self._changed:
            self.calls.append(call)
            fault = next((f for f in self._faults if f.matches(call)), None)
            if fault is not None and fault.times is not None:
                fault.times -= 1
        if fault is not None:
            raise _injected(fault, call)
        if ns not in self.namespaces:
            raise ApiError(404, f'namespaces "{ns}" not found', name=ns)
        return call

    def execute(self, call: Call) -> tuple[int, Any, dict[str, str]]:
        """``(status, JSON or bytes, headers)`` for an admitted call, or raises ``ApiError``."""
        ns, name, verb, resource = call.namespace, call.name, call.verb, call.resource
        with self._changed:
            if resource == "secrets":
                return self._secret_call(call)
            if verb == "create" and resource == "pods":
                return 201, self._create(ns, call.body), {}
            if verb == "list" and resource == "pods":
                return 200, self._list(ns, call.query), {}
            pod = self._pods.get((ns, name)) if name is not None else None
            if pod is None:
                raise ApiError(404, f'pods "{name}" not found', name=name)
            if resource == "pods" and verb == "get":
                return 200, copy.deepcopy(pod), {}
            if resource == "pods" and verb == "delete":
                return 200, self._delete(ns, pod, call.query, call.body), {}
            if resource == "pods/status" and verb in ("update", "patch"):
                return 200, self._status(ns, pod, call.body, patch=verb == "patch"), {}
            if resource == "pods/binding" and verb == "create":
                return 201, self._bind(ns, pod, call.body), {}
            if resource == "pods/log" and verb == "get":
                pod = copy.deepcopy(pod)
            else:
                raise ApiError(
                    405, f"{verb} is not supported on {resource}", reason="MethodNotAllowed"
                )
        # Outside the lock: the kubelet answers for the log, and may be writing to us.
        return 200, self._log(ns, pod, call.query), {"Content-Type": "text/plain"}

    def _secret_call(self, call: Call) -> tuple[int, Any, dict[str, str]]:
        ns, name, body = call.namespace, call.name, call.body
        if call.verb == "create":
            if not isinstance(body, dict) or not (body.get("metadata") or {}).get("name"):
                raise ApiError(422, "Secret is invalid: metadata.name: Required value")
            name = body["metadata"]["name"]
            if (ns, name) in self._secrets:
                raise ApiError(409, f'secrets "{name}" already exists', name=name)
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": body.get("type") or "Opaque",
                "metadata": {
                    **copy.deepcopy(body["metadata"]),
                    "namespace": ns,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": rfc3339(self.clock()),
                },
                "data": {},
            }
            self._fold(secret, body)
            self._secrets[(ns, name)] = secret
            return 201, copy.deepcopy(secret), {}
        secret = self._secrets.get((ns, name or ""))
        if secret is None:
            raise ApiError(404, f'secrets "{name}" not found', name=name)
        if call.verb == "get":
            return 200, copy.deepcopy(secret), {}
        if call.verb == "patch":
            if not isinstance(body, dict):
                raise ApiError(400, "json: cannot unmarshal array into Go value of type map")
            self._fold(secret, body)
            return 200, copy.deepcopy(secret), {}
        if call.verb == "delete":
            del self._secrets[(ns, name or "")]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, {}
        raise ApiError(405, f"{call.verb} is not supported on secrets", reason="MethodNotAllowed")

    @staticmethod
    def _fold(secret: dict[str, Any], body: Mapping[str, Any]) -> None:
        """``data`` (base64) and ``stringData`` (plain, wins) of ``body`` into ``secret``."""
        data = secret.setdefault("data", {})
        for key, value in (body.get("data") or {}).items():
            data[key] = value
        for key, value in (body.get("stringData") or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()

    def _create(self, ns: str, body: Any) -> PodDict:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was not a Pod")
        pod = copy.deepcopy(body)
        metadata = pod.setdefault("metadata", {})
        name = metadata.get("name")
        if metadata.get("namespace") not in (None, ns):
            raise ApiError(
                400,
                "the namespace of the provided object does not match the namespace "
                "sent on the request",
            )
        problems = []
        if not name:
            problems.append("metadata.name: Required value: name or generateName is required")
        elif len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
            problems.append(
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain '
                "must consist of lower case alphanumeric characters, '-' or '.'"
            )
        spec = pod.setdefault("spec", {})
        containers = spec.get("containers") or []
        if not containers:
            problems.append("spec.containers: Required value")
        for i, container in enumerate(containers):
            if not container.get("name"):
                problems.append(f"spec.containers[{i}].name: Required value")
            if not container.get("image"):
                problems.append(f"spec.containers[{i}].image: Required value")
        if problems:
            raise ApiError(422, f'Pod "{name}" is invalid: ' + ", ".join(problems), name=name)
        if (ns, name) in self._pods:
            raise ApiError(409, f'pods "{name}" already exists', name=name)
        pod["apiVersion"], pod["kind"] = "v1", "Pod"
        metadata.update(
            namespace=ns,
            uid=str(uuid.uuid4()),
            creationTimestamp=rfc3339(self.clock()),
        )
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        for container in containers:
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            image = str(container["image"])
            latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
            container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        pod["status"] = {"phase": "Pending", "qosClass": _qos(containers)}
        self._pods[(ns, name)] = pod
        self._record("ADDED", pod)
        return copy.deepcopy(pod)

    def _list(self, ns: str, query: Mapping[str, str]) -> dict[str, Any]:
        selector = _parse_selector(query.get("labelSelector", ""))
        items = [
            p
            for (pns, pname), p in sorted(self._pods.items())
            if pns == ns and selector((p.get("metadata") or {}).get("labels") or {})
        ]
        start = query.get("continue")
        if start:
            items = [p for p in items if p["metadata"]["name"] > start]
        metadata: dict[str, Any] = {"resourceVersion": str(self._last_rv)}
        limit = int(query.get("limit") or 0)
        if limit and len(items) > limit:
            items = items[:limit]
            metadata["continue"] = items[-1]["metadata"]["name"]
            metadata["remainingItemCount"] = 0  # not counted here
        return {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": metadata,
            "items": [copy.deepcopy(p) for p in items],
        }

    def _delete(self, ns: str, pod: PodDict, query: Mapping[str, str], body: Any) -> PodDict:
        options = body if isinstance(body, dict) else {}
        grace = options.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        grace = int(grace)
        metadata = pod["metadata"]
        finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        if grace > 0 and not finished and pod["spec"].get("nodeName"):
            if not metadata.get("deletionTimestamp"):
                metadata["deletionTimestamp"] = rfc3339(self.clock() + timedelta(seconds=grace))
                metadata["deletionGracePeriodSeconds"] = grace
                self._record("MODIFIED", pod)
            return copy.deepcopy(pod)
        metadata.setdefault("deletionTimestamp", rfc3339(self.clock()))
        metadata["deletionGracePeriodSeconds"] = 0
        del self._pods[(ns, metadata["name"])]
        self._record("DELETED", pod)
        return copy.deepcopy(pod)

    def _status(self, ns: str, pod: PodDict, body: Any, *, patch: bool) -> PodDict:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was not a Pod")
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if not patch and wanted and wanted != pod["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on pods "{pod["metadata"]["name"]}": the object '
                "has been modified; please apply your changes to the latest version and try again",
                reason="Conflict",
                name=pod["metadata"]["name"],
            )
        new = body.get("status") or {}
        status = _merge(pod.get("status") or {}, new) if patch else copy.deepcopy(new)
        if status != pod.get("status"):
            pod["status"] = status
            self._record("MODIFIED", pod)
        return copy.deepcopy(pod)

    def _bind(self, ns: str, pod: PodDict, body: Any) -> dict[str, Any]:
        node = ((body or {}).get("target") or {}).get("name")
        name = pod["metadata"]["name"]
        if not node:
            raise ApiError(422, f'Binding "{name}" is invalid: target.name: Required value')
        if pod["spec"].get("nodeName"):
            raise ApiError(
                409,
                f'pod {name} is already assigned to node "{pod["spec"]["nodeName"]}"',
                reason="Conflict",
                name=name,
            )
        pod["spec"]["nodeName"] = node
        conditions = [
            c for c in pod["status"].get("conditions") or [] if c.get("type") != "PodScheduled"
        ]
        conditions.append(
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(self.clock())}
        )
        pod["status"]["conditions"] = conditions
        self._record("MODIFIED", pod)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }

    def _log(self, ns: str, pod: PodDict, query: Mapping[str, str]) -> bytes:
        name = pod["metadata"]["name"]
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container") or containers[0]
        if container not in containers:
            raise ApiError(400, f"container {container} is not valid for pod {name}")
        data = self.log_source(ns, name, container) if self.log_source is not None else None
        if data is None:
            waiting = "ContainerCreating"
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                reason = ((status.get("state") or {}).get("waiting") or {}).get("reason")
                if status.get("name") == container and reason:
                    waiting = reason
            raise ApiError(
                400, f'container "{container}" in pod "{name}" is waiting to start: {waiting}'
            )
        return data

    def _record(self, type_: str, pod: PodDict) -> None:
        """Give the change a resourceVersion and wake the watches; call with the lock held."""
        rv = next(self._rv)
        self._last_rv = rv
        pod["metadata"]["resourceVersion"] = str(rv)
        self._history.append((rv, type_, copy.deepcopy(pod)))
        self._changed.notify_all()

    def watch_events(self, ns: str, query: Mapping[str, str]) -> Iterator[tuple[str, PodDict]]:
        """The events a watch request streams, as they happen, until it times out or we stop."""
        selector = _parse_selector(query.get("labelSelector", ""))
        timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        with self._changed:
            since = query.get("resourceVersion") or "0"
            if since == "0":
                start = self._last_rv
                initial = [
                    copy.deepcopy(p)
                    for (pns, _), p in sorted(self._pods.items())
                    if pns == ns and selector(p["metadata"].get("labels") or {})
                ]
            else:
                start, initial = int(since), []
        yield from (("ADDED", p) for p in initial)
        deadline = time.monotonic() + timeout
        position = start
        while True:
            with self._changed:
                while not self._stopping:
                    # Only the changes after ``position``: the history is in resourceVersion
                    # order, so they are found by bisection, not by reading it all on every
                    # wake (which made a long run quadratic).
                    newer = self._history[
                        bisect.bisect_right(self._history, position, key=_history_rv) :
                    ]
                    if newer:
                        position = newer[-1][0]
                    fresh = [(t, p) for _, t, p in newer if p["metadata"]["namespace"] == ns]
                    if fresh or time.monotonic() >= deadline:
                        break
                    self._changed.wait(WATCH_POLL_SECONDS)
                if self._stopping:
                    return
                if not fresh:
                    return  # timed out
            # The history's pods are snapshots ``_record`` copied and nothing changes: they
            # are only serialized from here, so each watch need not copy them again.
            for type_, pod in fresh:
                if selector(pod["metadata"].get("labels") or {}):
                    yield type_, pod


def _history_rv(entry: tuple[int, str, PodDict]) -> int:
    return entry[0]


def _verb(method: str, name: str | None, query: Mapping[str, str]) -> str:
    if method == "GET":
        if name is None:
            return "watch" if query.get("watch") in ("true", "1") else "list"
        return "get"
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    return verbs.get(method, method.lower())


def _injected(fault: _Fault, call: Call) -> ApiError:
    """The error a real API server would give for an injected status."""
    code = fault.status
    kind = call.resource.split("/")[0]
    what = f'{kind} "{call.name}"' if call.name else kind
    default = {
        401: "Unauthorized",
        403: (
            f'{call.resource} is forbidden: User "{USER}" cannot {call.verb} resource '
            f'"{call.resource.split("/")[0]}"'
            + (f' in API group "" in the namespace "{call.namespace}"')
        ),
        404: f"{what} not found",
        409: f"{what} already exists",
        422: f"{what} is invalid",
        429: "Too many requests, please try again later.",
        500: "Internal error occurred: etcdserver: request timed out",
        503: "the server is currently unable to handle the request",
    }.get(code, f"injected failure {code}")
    if code == 403 and "/" in call.resource:
        resource, sub = call.resource.split("/")
        default = (
            f'{what} is forbidden: User "{USER}" cannot {call.verb} resource "{resource}/{sub}" '
            f'in API group "" in the namespace "{call.namespace}"'
        )
    headers = dict(fault.headers)
    if code == 429:
        headers.setdefault("Retry-After", "1")
    return ApiError(code, fault.message or default, name=call.name, headers=headers)


def _qos(containers: list[dict[str, Any]]) -> str:
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        r.get("limits")
        and set(r["limits"]) >= {"cpu", "memory"}
        and all(r.get("requests", {}).get(k, v) == v for k, v in r["limits"].items())
        for r in resources
    )
    return "Guaranteed" if guaranteed else "Burstable"


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merged, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


_REQUIREMENT = re.compile(
    r"\s*(?P<not>!)?\s*(?P<key>[A-Za-z0-9./_-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)"
    r"|\s(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def _parse_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """A label selector as the API reads it; 400 for one it cannot parse."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for part in _split_selector(text):
        m = _REQUIREMENT.match(part)
        if m is None or (m.group("not") and (m.group("op") or m.group("setop"))):
            raise ApiError(400, f"unable to parse requirement: found '{part}', expected: key")
        key, op = m.group("key"), m.group("op") or m.group("setop")
        if op in ("=", "=="):
            value = m.group("value")
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            value = m.group("value")
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif op in ("in", "notin"):
            values = {v.strip() for v in m.group("values").split(",")}
            if op == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif m.group("not"):
            checks.append(lambda labels, k=key: k not in labels)
        else:
            checks.append(lambda labels, k=key: k in labels)
    return lambda labels: all(check(labels) for check in checks)


def _split_selector(text: str) -> list[str]:
    """Requirements split on the commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    if current.strip():
        parts.append(current)
    return [p for p in parts if p.strip()]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a closed connection pool) is not an error here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as the client's connection pool expects."""

    api: FakeApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``calls`` instead."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                raise ApiError(400, "the body of the request is not JSON") from None
            kind = self.headers.get("Content-Type") or ""
            if method == "PATCH" and "json-patch" in kind and not isinstance(body, list):
                raise ApiError(
                    400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
                )
            call = self.api.admit(method, url.path, query, body)
            if call.verb == "watch":
                _parse_selector(query.get("labelSelector", ""))  # a bad one is a 400, not a stream
                self._stream(call.namespace, query)
                return
            code, payload, headers = self.api.execute(call)
        except ApiError as e:
            self._answer(e.code, e.status(), e.headers)
            return
        self._answer(code, payload, headers)

    def _answer(self, code: int, payload: Any, headers: Mapping[str, str]) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", headers.get("Content-Type", "application/json"))
        for key, value in headers.items():
            if key != "Content-Type":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, ns: str, query: Mapping[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for type_, pod in self.api.watch_events(ns, query):
                line = json.dumps({"type": type_, "object": pod}).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        # A stream that ended properly leaves the connection usable, as the real server
        # does: closing it here raced the client, which could reuse the socket for its
        # next request and meet "Remote end closed connection without response".
