"""The trigger function: a build request in, a build recorded, its first steps announced."""

import functions_framework
from cloudevents.http import CloudEvent

from shared import app, handlers, serving


@functions_framework.cloud_event
def handle(event: CloudEvent) -> None:
    with serving.http_errors("trigger"):
        handlers.on_trigger_event(event, app.current())
