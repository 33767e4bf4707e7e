"""Telemetry: the one wrapper every event goes through on its way to a handler.

``observed(handler, event, deps)`` is how the functions (``functions/*/main.py``)
and the in-process bus (``shared.local``) call the handlers of
``shared.handlers``. Around the call it

* binds the event's ids (event, pipeline, job, build, step, pod) to every log
  line the handler writes (``shared.logs.bound``);
* times the handling and counts its errors by event type (``Metrics.handling``);
* turns what a handler answered into the metrics only the answer knows: a
  build created by a request, a reaper tick's report, and, for the pod event
  that recorded a step, how long that pod took to start.

The handlers and the services stay free of logging context and metrics code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from cloudevents.http import CloudEvent

from shared import events, logs
from shared.app import Deps
from shared.errors import EventError, JetBridgeError
from shared.metrics import WEBHOOK, Handling
from shared.podspec import LABEL_BUILD, LABEL_JOB, LABEL_PIPELINE, LABEL_STEP
from shared.reaper import ReapReport

log = logging.getLogger(__name__)

R = TypeVar("R")


def observed(handler: Callable[[CloudEvent, Deps], R], event: CloudEvent, deps: Deps) -> R:
    """Call ``handler(event, deps)`` with the event's log context and metrics around it."""
    return _observe(event["type"], event_ids(event), deps, lambda: handler(event, deps), event)


def observed_webhook(call: Callable[[], R], deps: Deps, *, path: str) -> R:
    """The same for a webhook delivery (``POST /webhooks/<pipeline>``), counted as ``webhook``."""
    ids: dict[str, Any] = {"event_type": WEBHOOK}
    if path.startswith("/webhooks/"):
        ids["pipeline"] = path.removeprefix("/webhooks/").strip("/") or None
    return _observe(WEBHOOK, ids, deps, call, None)


def _observe(
    type_: str,
    ids: Mapping[str, Any],
    deps: Deps,
    call: Callable[[], R],
    event: CloudEvent | None,
) -> R:
    metrics = deps.metrics
    with logs.bound(**ids):
        handling = Handling(type=type_)
        try:
            with metrics.handling(type_) as handling:
                answer = call()
        except Exception as e:
            if type_ == events.PING:
                metrics.reaper_tick(None, seconds=handling.seconds, now=deps.clock())
            # Here, where the event's ids are bound; the caller answers (HTTP status, retry).
            if isinstance(e, JetBridgeError):
                log.warning("%s failed after %.3fs: %s", type_, handling.seconds, e)
            else:
                log.exception("%s failed after %.3fs", type_, handling.seconds)
            raise
        metrics.build_requested(answer)  # requests, webhooks and git sources' pushes
        build_id = _build_id(answer)
        if type_ == events.PING and isinstance(answer, ReapReport):
            metrics.reaper_tick(answer, seconds=handling.seconds, now=deps.clock())
        elif (
            event is not None
            and type_ in events.POD_EVENTS
            and events.STEP_FINISHED in handling.emitted
        ):
            # This event recorded its step: count the pod's start once per attempt.
            metrics.pod_finished(_data(event))
        with logs.bound(build_id=build_id):
            log.info("%s handled in %.3fs", type_, handling.seconds)
    return answer


def event_ids(event: CloudEvent) -> dict[str, Any]:
    """What an event is about, as log context: ids from its attributes and its data."""
    ids: dict[str, Any] = {"event_id": event["id"], "event_type": event["type"]}
    data = _data(event)
    if event["type"] in events.POD_EVENTS:
        metadata = _mapping(data.get("metadata"))
        labels = _mapping(metadata.get("labels"))
        ids.update(
            pod=metadata.get("name"),
            pipeline=labels.get(LABEL_PIPELINE),
            job=labels.get(LABEL_JOB),
            build_id=_int(labels.get(LABEL_BUILD)),
            step_id=_int(labels.get(LABEL_STEP)),
        )
    else:
        for name in ("pipeline", "job", "build_id", "step_id"):
            value = data.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                ids[name] = value
    return {k: v for k, v in ids.items() if v is not None}


def _data(event: CloudEvent) -> dict[str, Any]:
    try:
        return events.event_data(event)
    except EventError:
        return {}  # the handler says what is wrong with it


def _build_id(answer: Any) -> int | None:
    """The build a request or a webhook delivery made (a delivery's only build)."""
    if isinstance(answer, Mapping):
        return _int(answer.get("build_id"))
    builds: Sequence[Any] = getattr(answer, "builds", None) or ()
    return _int(getattr(builds[0], "id", None)) if len(builds) == 1 else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
