"""Events: the CloudEvents that move a build along, and the sinks that carry them.

Every handler gets the same CloudEvents whichever transport carried them: in the
cluster, Knative's Broker (a sink posts to ``K_SINK`` over HTTP, binary mode);
on one machine, the in-process bus in ``shared.bus``. One code path, two transports.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from shared.errors import EventError, TemporaryError

SOURCE = "//jetbridge.dev"

BUILD_REQUESTED = "dev.jetbridge.build.requested"
STEP_READY = "dev.jetbridge.step.ready"
STEP_FINISHED = "dev.jetbridge.step.finished"
BUILD_FINISHED = "dev.jetbridge.build.finished"
#: What Knative's ApiServerSource sends, in Resource mode, when a watched pod changes.
POD_UPDATE = "dev.knative.apiserver.resource.update"
POD_ADD = "dev.knative.apiserver.resource.add"
POD_DELETE = "dev.knative.apiserver.resource.delete"
POD_EVENTS = frozenset({POD_UPDATE, POD_ADD, POD_DELETE})
#: What Knative's PingSource sends on its schedule.
PING = "dev.knative.sources.ping"


def make_event(
    type_: str,
    data: Mapping[str, Any],
    *,
    source: str = SOURCE,
    id_: str | None = None,
    subject: str | None = None,
    time: datetime | None = None,
) -> CloudEvent:
    """A CloudEvent 1.0 with JSON data."""
    attributes: dict[str, Any] = {
        "type": type_,
        "source": source,
        "id": id_ or uuid.uuid4().hex,
        "datacontenttype": "application/json",
    }
    if subject:
        attributes["subject"] = subject
    if time is not None:
        attributes["time"] = time.isoformat()
    return CloudEvent(attributes, dict(data))


def event_data(event: CloudEvent) -> dict[str, Any]:
    """The event's data as a JSON object, or an ``EventError`` naming the event."""
    data = event.get_data()
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data or "null")
        except ValueError as e:
            raise EventError(f"event {event['id']} ({event['type']}): data is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise EventError(
            f"event {event['id']} ({event['type']}): data must be a JSON object, "
            f"found {type(data).__name__}"
        )
    return data


def require(data: Mapping[str, Any], key: str, kind: type, event: CloudEvent) -> Any:
    """``data[key]`` if it is a ``kind``; otherwise an ``EventError`` saying what was expected."""
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise EventError(
            f"event {event['id']} ({event['type']}): field {key!r} must be {kind.__name__}, "
            f"found {value!r}"
        )
    return value


class EventSink(Protocol):
    """Where a service sends the events it raises."""

    def emit(self, event: CloudEvent) -> None: ...


class HttpSink:
    """Posts events in binary mode to a URL: Knative's Broker, through ``K_SINK``."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout

    def emit(self, event: CloudEvent) -> None:
        headers, body = to_binary(event)
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise TemporaryError(f"could not send {event['type']} to {self.url}: {e}") from e


class RecordingSink:
    """Keeps what it is given; for tests and for callers that collect before sending."""

    def __init__(self, then: Callable[[CloudEvent], None] | None = None) -> None:
        self.events: list[CloudEvent] = []
        self.then = then

    def emit(self, event: CloudEvent) -> None:
        self.events.append(event)
        if self.then is not None:
            self.then(event)
