"""The Kubernetes runtime: step pods created, read, listed, logged and deleted through the API.

The second implementation of the runtime port, over the real ``kubernetes``
client's ``CoreV1Api``. It is handed an ``ApiClient`` and a namespace (tests point
the client at a fake API server on loopback); ``from_settings`` builds one from
the pod's service account, or from ``KUBECONFIG`` outside a cluster.

Pods are read as raw JSON (``_preload_content=False``), the very shape
ApiServerSource puts in its events, so ``shared.podstatus`` reads one kind of
pod whichever way it came.

Every ``ApiException`` and connection error is mapped here into JetBridge's
hierarchy, so no service sees the client's exceptions:

==========================  ==============================================================
API answer                  becomes
==========================  ==============================================================
404                         ``read``: ``None``; ``delete``: nothing; ``logs``: ``NotFoundError``;
                            ``launch``: ``ConfigurationError`` (the namespace does not exist)
409 on create               launched: a pod of that name exists (the name is deterministic)
403, RBAC                   ``RuntimeForbidden`` naming the verb and resource the Role lacks
403, quota exceeded         ``RuntimeUnavailable``: it frees up as other pods end
403, Pod Security, 400/422  ``PodRejected`` naming the pod and the API's message
401, 429, 5xx, no answer    ``RuntimeUnavailable``: the event is delivered again
==========================  ==============================================================
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client import ApiClient, V1Pod
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from shared.errors import (
    ConfigurationError,
    NotFoundError,
    PodRejected,
    RuntimeForbidden,
    RuntimeUnavailable,
)
from shared.podspec import CONTAINER, MANAGED_BY
from shared.runtime import PodDict
from shared.settings import Settings

log = logging.getLogger(__name__)

#: Every (verb, resource) this runtime asks the API for: the Role of JetBridge's
#: service account must grant exactly these (the chart's test compares them).
RBAC_RULES: tuple[tuple[str, str], ...] = (
    ("create", "pods"),
    ("get", "pods"),
    ("list", "pods"),
    ("delete", "pods"),
    ("get", "pods/log"),
    ("create", "secrets"),
    ("patch", "secrets"),
    ("delete", "secrets"),
)
#: The selector of every pod JetBridge launches (``podspec`` labels them so).
SELECTOR = f"{MANAGED_BY}=jetbridge"
#: (connect, read) seconds for one API call. A handler must answer within Knative's
#: request timeout; a call slower than this is treated as the API being unavailable.
REQUEST_TIMEOUT = (5.0, 30.0)
#: How the client retries by itself: a refused or dropped connection, at once, a few times.
#: Never an answer (429, 503 with ``Retry-After``): the handler answers 503 at once and
#: Knative delivers the event again with its own back-off, instead of a handler sleeping.
RETRIES = urllib3.Retry(
    total=3, connect=3, read=0, redirect=0, status=0, respect_retry_after_header=False
)
#: Pods per page when listing: bounds one answer's size however many pods there are.
PAGE = 500
#: How much of the API's message an error quotes.
MESSAGE_LIMIT = 500


class KubernetesRuntime:
    """Runs step pods in one namespace of a cluster (see the module docstring)."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        grace_period_seconds: int = 30,
    ) -> None:
        """``grace_period_seconds``: what a deleted pod gets between SIGTERM and SIGKILL."""
        self._client = api_client
        self._api = k8s.CoreV1Api(api_client)
        self.namespace = namespace
        self.grace_period_seconds = grace_period_seconds

    @classmethod
    def from_settings(
        cls, settings: Settings, *, environ: Mapping[str, str] | None = None
    ) -> KubernetesRuntime:
        """A runtime for ``settings.namespace``: the pod's service account in a cluster,
        else the current context of ``KUBECONFIG`` (or ``~/.kube/config``)."""
        env = os.environ if environ is None else environ
        configuration = k8s.Configuration()
        configuration.retries = RETRIES
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as in_cluster:
            kubeconfig = env.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            try:
                k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, client_configuration=configuration
                )
            except (ConfigException, OSError) as e:
                raise ConfigurationError(
                    "JETBRIDGE_RUNTIME=kubernetes needs the Kubernetes API: not in a cluster "
                    f"({in_cluster}) and no usable kubeconfig at {kubeconfig} ({e})"
                ) from e
        return cls(
            ApiClient(configuration),
            namespace=settings.namespace,
            grace_period_seconds=settings.pod_grace_period_seconds,
        )

    def close(self) -> None:
        """Release the client's connections."""
        self._client.close()  # type: ignore[no-untyped-call]

    # -- the Runtime protocol ------------------------------------------------

    def launch(self, pod: V1Pod) -> None:
        """Create ``pod``; a pod of that name that exists already counts as launched."""
        metadata = pod.metadata
        if metadata is None or not metadata.name:
            raise ConfigurationError("a step pod needs metadata.name: pods are found by name")
        name = metadata.name
        namespace = metadata.namespace or self.namespace
        if namespace != self.namespace:
            raise ConfigurationError(
                f"pod {name} is meant for namespace {namespace!r}, "
                f"but this runtime runs pods in {self.namespace!r}"
            )
        try:
            self._api.create_namespaced_pod(
                self.namespace, pod, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as e:
            if e.status == 409:
                log.info("pod %s exists already: launched", name)
                return
            if e.status == 404:
                raise ConfigurationError(
                    f"cannot create pod {name}: namespace {self.namespace!r} does not exist "
                    f"({_message(e)})"
                ) from e
            raise self._error(e, "create", "pods", name) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._unreachable(e, "create", name) from e

    def read(self, name: str) -> PodDict | None:
        """The pod as the API serializes it, or ``None`` when it does not exist."""
        try:
            response = self._api.read_namespaced_pod(
                name, self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise self._error(e, "get", "pods", name) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._unreachable(e, "get", name) from e
        return _json(_body(response))

    def list(self) -> list[PodDict]:
        """Every pod labelled ``app.kubernetes.io/managed-by=jetbridge`` in the namespace."""
        pods: list[PodDict] = []
        token: str | None = None
        while True:
            options: dict[str, Any] = {"label_selector": SELECTOR, "limit": PAGE}
            if token:
                options["_continue"] = token
            try:
                response = self._api.list_namespaced_pod(
                    self.namespace,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                    **options,
                )
            except ApiException as e:
                raise self._error(e, "list", "pods", None) from e
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise self._unreachable(e, "list", None) from e
            page = _json(_body(response))
            pods.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return pods

    def logs(self, name: str) -> bytes:
        """What the pod's ``step`` container wrote so far; empty if it never started."""
        try:
            response = self._api.read_namespaced_pod_log(
                name,
                self.namespace,
                container=CONTAINER,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as e:
            if e.status == 404:
                raise NotFoundError(
                    f"pod {name} is not in namespace {self.namespace!r}: its log is gone"
                ) from e
            if e.status == 400:
                # "container "step" in pod "…" is waiting to start": it has no log.
                log.info("pod %s has no log: %s", name, _message(e))
                return b""
            raise self._error(e, "get", "pods/log", name) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._unreachable(e, "read the log of", name) from e
        return _body(response)

    def delete(self, name: str) -> None:
        """Delete the pod (background propagation); a pod that is gone is not an error."""
        options = k8s.V1DeleteOptions(
            propagation_policy="Background", grace_period_seconds=self.grace_period_seconds
        )
        try:
            self._api.delete_namespaced_pod(
                name,
                self.namespace,
                body=options,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as e:
            if e.status == 404:
                return
            raise self._error(e, "delete", "pods", name) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._unreachable(e, "delete", name) from e

    def put_secret(self, name: str, data: Mapping[str, str], *, labels: Mapping[str, str]) -> None:
        """Create the Secret ``name`` holding ``data``; if it exists, merge ``data`` into it.

        Values go as ``stringData``: the API encodes them, and a merge patch of
        ``stringData`` adds or replaces only the keys it names.
        """
        body = k8s.V1Secret(
            api_version="v1",
            kind="Secret",
            type="Opaque",
            metadata=k8s.V1ObjectMeta(name=name, namespace=self.namespace, labels=dict(labels)),
            string_data=dict(data),
        )
        try:
            try:
                self._api.create_namespaced_secret(
                    self.namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
                return
            except ApiException as e:
                if e.status != 409:
                    raise self._error(e, "create", "secrets", name) from e
            try:
                self._api.patch_namespaced_secret(
                    name,
                    self.namespace,
                    {"stringData": dict(data)},
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            except ApiException as e:
                raise self._error(e, "patch", "secrets", name) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._unreachable(e, "write", name, kind="Secret") from e

    def delete_secret(self, name: str) -> None:
        """Delete the Secret ``name``; one that is gone is not an error."""
        try:
            self._api.delete_namespaced_secret(
                name, self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as e:
            if e.status == 404:
                return
            raise self._error(e, "delete", "secrets", name) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._unreachable(e, "delete", name, kind="Secret") from e

    # -- errors ----------------------------------------------------------------

    def _error(self, e: ApiException, verb: str, resource: str, name: str | None) -> Exception:
        """The JetBridge error for an API answer that is not one of the expected ones."""
        status = e.status or 0
        message = _message(e)
        kind = "Secret" if resource == "secrets" else "pod"
        what = f"{kind} {name}" if name else f"the {resource}"
        if status == 403:
            if "exceeded quota" in message:
                return RuntimeUnavailable(
                    f"cannot {verb} {what}: a ResourceQuota of namespace {self.namespace!r} "
                    f"is used up; it frees up as other pods end ({message})"
                )
            if "PodSecurity" in message:
                return PodRejected(f"the cluster refused {what}: {message}")
            return RuntimeForbidden(
                f"the service account may not {verb} {resource} in namespace "
                f"{self.namespace}: RBAC needs verb {verb!r} on {resource!r} ({message})"
            )
        if status in (400, 422):
            return PodRejected(f"the Kubernetes API refused {what}: {message}")
        if status == 401:
            return RuntimeUnavailable(
                f"the Kubernetes API did not accept JetBridge's credentials ({message}); "
                "a rotated service-account token is read again on the next try"
            )
        if status == 429 or status >= 500 or status == 0:
            return RuntimeUnavailable(
                f"the Kubernetes API could not {verb} {what} now "
                f"({status or 'no answer'}: {message}); the event will be delivered again"
            )
        return RuntimeUnavailable(
            f"the Kubernetes API answered {status} to {verb} {what}: {message}"
        )

    def _unreachable(
        self, e: Exception, verb: str, name: str | None, *, kind: str = "pod"
    ) -> RuntimeUnavailable:
        host = self._client.configuration.host
        what = f"{kind} {name}" if name else "the pods"
        return RuntimeUnavailable(
            f"cannot {verb} {what}: the Kubernetes API at {host} cannot be reached ({e})"
        )


def _body(response: object) -> bytes:
    """The raw body of an answer read with ``_preload_content=False`` (a urllib3 response)."""
    data = getattr(response, "data", None)
    if not isinstance(data, bytes):
        raise RuntimeUnavailable(f"the Kubernetes API gave no body ({type(response).__name__})")
    return data


def _json(data: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except ValueError as e:
        raise RuntimeUnavailable(f"the Kubernetes API answered with something not JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise RuntimeUnavailable(f"the Kubernetes API answered with {type(parsed).__name__}")
    return parsed


def _message(e: ApiException) -> str:
    """The API's own message (a ``Status`` object's ``message``), else the HTTP reason."""
    body = e.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = ""
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            text = body.strip()
        else:
            if isinstance(parsed, dict):
                text = str(parsed.get("message") or "").strip()
    text = text or str(e.reason or "").strip() or f"HTTP {e.status}"
    return text[:MESSAGE_LIMIT]
