"""The reaper function: a PingSource tick in, orphans and stuck work reconciled."""

import functions_framework
from cloudevents.http import CloudEvent

from shared import app, handlers, serving, telemetry

serving.setup_function()  # JSON logs, and GET /metrics beside the events


@functions_framework.cloud_event
def handle(event: CloudEvent) -> None:
    with serving.http_errors("reaper"):
        telemetry.observed(handlers.on_reaper_event, event, app.current())
