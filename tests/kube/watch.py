"""Watching pods over the API, and Knative's ApiServerSource built on that watch.

``PodWatch`` is what an informer does: one thread streams a namespace's pod events
(``watch=true``, resuming from the last ``resourceVersion``) to a callback. The
simulated kubelet reacts to pods with it; ``PodEventSource`` turns each event into
the CloudEvent ApiServerSource sends in Resource mode, for the fake API server and
for a live cluster alike.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from cloudevents.http import CloudEvent
from kubernetes import watch
from kubernetes.client import ApiClient, CoreV1Api

from shared import events
from shared.events import EventSink

log = logging.getLogger(__name__)

PodDict = dict[str, Any]
#: ApiServerSource's ``source``: the API server it watches.
SOURCE = "https://kubernetes.default.svc"
#: One watch request lasts this long before it is made again from where it stopped.
WATCH_SECONDS = 30
#: The CloudEvent type ApiServerSource gives each watch event type.
EVENT_TYPES = {
    "ADDED": events.POD_ADD,
    "MODIFIED": events.POD_UPDATE,
    "DELETED": events.POD_DELETE,
}


class PodWatch:
    """Streams every pod event of a namespace to ``on_event(type, pod)`` from one thread."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        on_event: Callable[[str, PodDict], None],
        label_selector: str | None = None,
        name: str = "pod-watch",
    ) -> None:
        self._api = CoreV1Api(api_client)
        self._namespace = namespace
        self._on_event = on_event
        self._selector = label_selector
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> PodWatch:
        """Start watching. Pods made before the first request are still seen: a watch
        without a resourceVersion begins with every current pod as ``ADDED``."""
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(10)

    def _run(self) -> None:
        version: str | None = None
        while not self._stopping.is_set():
            self._watch = watch.Watch()
            options: dict[str, Any] = {
                "timeout_seconds": WATCH_SECONDS,
                "deserialize": False,
                "_request_timeout": (5, WATCH_SECONDS + 5),
            }
            if version:
                options["resource_version"] = version
            if self._selector:
                options["label_selector"] = self._selector
            try:
                stream = self._watch.stream(
                    self._api.list_namespaced_pod, self._namespace, **options
                )
                for event in stream:
                    if self._stopping.is_set():
                        return
                    pod = event.get("object") or {}
                    if event.get("type") == "ERROR":  # 410 Gone: start again from now
                        version = None
                        break
                    version = pod.get("metadata", {}).get("resourceVersion") or version
                    try:
                        self._on_event(event["type"], pod)
                    except Exception:
                        log.exception("handling %s of a pod failed", event.get("type"))
            except Exception as e:
                if self._stopping.is_set():
                    return
                log.warning("pod watch interrupted, resuming: %s", e)
                self._stopping.wait(0.2)


class PodEventSource:
    """Knative's ApiServerSource (Resource mode) for pods: every change as a CloudEvent."""

    def __init__(self, api_client: ApiClient, *, namespace: str, sink: EventSink) -> None:
        self._sink = sink
        self._namespace = namespace
        self.sent: list[CloudEvent] = []
        self._lock = threading.Lock()
        self._watch = PodWatch(
            api_client, namespace=namespace, on_event=self._send, name="apiserversource"
        )

    def start(self) -> PodEventSource:
        self._watch.start()
        return self

    def stop(self) -> None:
        self._watch.stop()

    def _send(self, type_: str, pod: PodDict) -> None:
        event_type = EVENT_TYPES.get(type_)
        if event_type is None:
            return
        name = pod.get("metadata", {}).get("name", "")
        event = events.make_event(
            event_type,
            pod,
            source=SOURCE,
            id_=str(uuid.uuid4()),
            subject=f"/apis/v1/namespaces/{self._namespace}/pods/{name}",
        )
        with self._lock:
            self.sent.append(event)
        self._sink.emit(event)

    def events(self) -> list[CloudEvent]:
        with self._lock:
            return list(self.sent)
