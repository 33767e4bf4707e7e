"""What each function does with an event: parse it, call one service.

The three functions in ``functions/`` and the in-process bus both call these,
so the cluster and ``jetbridge run`` take one code path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cloudevents.http import CloudEvent

from shared import checks, deliveries, events, triggers, webhooks
from shared.app import Deps
from shared.builds import start_build
from shared.errors import EventError, JetBridgeError, NotFoundError
from shared.reaper import ReapReport, reap
from shared.steps import finish_step, launch_step

log = logging.getLogger(__name__)


def on_trigger_event(event: CloudEvent, deps: Deps) -> dict[str, Any]:
    """``dev.jetbridge.build.requested`` → a build (one per event id; of ``check:<resource>``,
    a check of that resource); a GitHubSource or GitLabSource push → builds of every pipeline
    tracking it (one set per delivery); ``build.finished`` → the builds it triggers."""
    if event["type"] == events.BUILD_FINISHED:
        data = events.event_data(event)
        triggered = triggers.after_build(
            deps.sessions,
            build_id=events.require(data, "build_id", int, event),
            sink=deps.sink,
            clock=deps.clock,
        )
        return {"triggered": [t.build_id for t in triggered]}
    if event["type"] != events.BUILD_REQUESTED:
        delivery = webhooks.parse_source_event(event["type"], event["id"], event.get_data())
        if delivery is None:
            raise EventError(
                f"the trigger does not handle events of type {event['type']!r}; expected "
                f"{events.BUILD_REQUESTED!r} or a git source's "
                f"({', '.join(webhooks.source_event_types())})"
            )
        received = deliveries.deliver_to_all(
            deps.sessions, delivery=delivery, sink=deps.sink, clock=deps.clock
        )
        return {"deliveries": [r.to_json() for r in received]}
    data = events.event_data(event)
    pipeline = events.require(data, "pipeline", str, event)
    job = events.require(data, "job", str, event)
    versions = data.get("versions") or {}
    if not isinstance(versions, dict) or not all(isinstance(v, dict) for v in versions.values()):
        raise EventError(
            f"event {event['id']} ({event['type']}): 'versions' must map get names to versions"
        )
    resource = checks.checked_resource(job)
    if resource is not None:
        started = checks.start_check(
            deps.sessions,
            pipeline=pipeline,
            resource=resource,
            sink=deps.sink,
            clock=deps.clock,
            event_id=event["id"],
        )
        return {"build_id": started.build_id, "number": started.number, "created": started.created}
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


def on_webhook(
    method: str, path: str, headers: Mapping[str, str], body: bytes, deps: Deps
) -> deliveries.Received:
    """``POST /webhooks/<pipeline>`` from GitHub, GitLab or a generic sender → that pipeline's builds."""
    return deliveries.receive_webhook(
        deps.sessions,
        method=method,
        path=path,
        headers=headers,
        body=body,
        secrets=deliveries.secrets_from(deps.settings),
        sink=deps.sink,
        clock=deps.clock,
    )


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
            # Retention 0: the pod goes once its log is kept. Otherwise it stays (for
            # `kubectl describe`) and the reaper deletes it when its retention is over.
            delete_pod=deps.settings.pod_retention_seconds == 0,
            patience=deps.patience,
            # ApiServerSource sends a deleted pod's last state: gone, whatever it says.
            deleted=type_ == events.POD_DELETE,
        )
    else:
        raise EventError(
            f"the step runner does not handle events of type {type_!r}; expected "
            f"{events.STEP_READY!r} or a pod event ({', '.join(sorted(events.POD_EVENTS))})"
        )


def on_reaper_event(
    event: CloudEvent, deps: Deps, *, dry_run: bool = False, scheduling: bool = True
) -> ReapReport:
    """A PingSource tick → one reaper pass; then (``scheduling``) the resources due a check
    are checked and the builds new versions call for are started, as the tick's other work."""
    if event["type"] != events.PING:
        raise EventError(
            f"the reaper does not handle events of type {event['type']!r}; expected {events.PING!r}"
        )
    report = reap(
        deps.sessions,
        store_root=deps.settings.effective_store_root,
        clock=deps.clock,
        settings=deps.settings,
        runtime=deps.runtime,
        logs=deps.logs,
        sink=deps.sink,
        dry_run=dry_run,
    )
    if scheduling and not dry_run:
        _check_and_schedule(deps)
    return report


def _check_and_schedule(deps: Deps) -> None:
    """The tick's scheduling work, on its own: a failure here never spoils the reaper's."""
    try:
        checked = checks.run_due_checks(deps.sessions, sink=deps.sink, clock=deps.clock)
        for error in checked.errors:
            log.warning("check not started: %s", error)
        triggered = triggers.schedule_all(deps.sessions, sink=deps.sink, clock=deps.clock)
    except JetBridgeError as e:
        log.warning("checks and triggers of this tick stopped: %s", e)
        return
    except Exception:  # the next tick tries again; the reaper's report stands
        log.exception("checks and triggers of this tick failed")
        return
    if checked.started or triggered:
        log.info("tick: %s; %d build(s) triggered", checked.summary(), len(triggered))
