"""The step runner: ``step.ready`` in, pod launched; a finished pod in, step recorded, next announced."""

import functions_framework
from cloudevents.http import CloudEvent

from shared import app, handlers, serving, telemetry

serving.setup_function()  # JSON logs, and GET /metrics beside the events


@functions_framework.cloud_event
def handle(event: CloudEvent) -> None:
    with serving.http_errors("step_runner"):
        telemetry.observed(handlers.on_step_event, event, app.current())
