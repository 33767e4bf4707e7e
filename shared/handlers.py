"""What each function does with an event: parse it, call one service.

The three functions in ``functions/`` and the in-process bus both call these,
so the cluster and ``jetbridge run`` take one code path.
"""

from __future__ import annotations

import logging
from typing import Any

from cloudevents.http import CloudEvent

from shared import events
from shared.app import Deps
from shared.builds import start_build
from shared.errors import EventError, NotFoundError
from shared.reaper import ReapReport, reap
from shared.steps import finish_step, launch_step

log = logging.getLogger(__name__)


def on_trigger_event(event: CloudEvent, deps: Deps) -> dict[str, Any]:
    """``dev.jetbridge.build.requested`` → a build (one per event id)."""
    if event["type"] != events.BUILD_REQUESTED:
        raise EventError(
            f"the trigger does not handle events of type {event['type']!r}; "
            f"expected {events.BUILD_REQUESTED!r}"
        )
    data = events.event_data(event)
    pipeline = events.require(data, "pipeline", str, event)
    job = events.require(data, "job", str, event)
    versions = data.get("versions") or {}
    if not isinstance(versions, dict) or not all(isinstance(v, dict) for v in versions.values()):
        raise EventError(
            f"event {event['id']} ({event['type']}): 'versions' must map get names to versions"
        )
    started = start_build(
        deps.sessions,
        pipeline=pipeline,
        job=job,
        sink=deps.sink,
        clock=deps.clock,
        event_id=event["id"],
        versions=versions,
    )
    return {"build_id": started.build_id, "number": started.number, "created": started.created}


def on_step_event(event: CloudEvent, deps: Deps) -> None:
    """``step.ready`` → launch its pod; a pod update from the runtime → record the step."""
    type_ = event["type"]
    data = events.event_data(event)
    if type_ == events.STEP_READY:
        try:
            launch_step(
                deps.sessions,
                build_id=events.require(data, "build_id", int, event),
                step_id=events.require(data, "step_id", int, event),
                runtime=deps.runtime,
                store_root=deps.settings.effective_store_root,
                pod_settings=deps.pod_settings,
                sink=deps.sink,
                clock=deps.clock,
                handles=deps.handles,
            )
        except NotFoundError as e:
            log.info("ignoring %s: %s", event["id"], e)
    elif type_ in events.POD_EVENTS:
        finish_step(
            deps.sessions,
            pod=data,
            runtime=deps.runtime,
            logs=deps.logs,
            store_root=deps.settings.effective_store_root,
            sink=deps.sink,
            clock=deps.clock,
        )
    else:
        raise EventError(
            f"the step runner does not handle events of type {type_!r}; expected "
            f"{events.STEP_READY!r} or a pod event ({', '.join(sorted(events.POD_EVENTS))})"
        )


def on_reaper_event(event: CloudEvent, deps: Deps, *, dry_run: bool = False) -> ReapReport:
    """A PingSource tick → one reaper pass."""
    if event["type"] != events.PING:
        raise EventError(
            f"the reaper does not handle events of type {event['type']!r}; expected {events.PING!r}"
        )
    return reap(
        deps.sessions,
        store_root=deps.settings.effective_store_root,
        clock=deps.clock,
        dry_run=dry_run,
    )
