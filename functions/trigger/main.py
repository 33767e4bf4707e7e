"""The trigger function: a build request in, a build recorded, its first steps announced.

Two targets, one per Knative Service: ``handle`` takes CloudEvents from the Broker
(``build.requested``, GitHubSource and GitLabSource pushes, and ``build.finished``, which
may trigger the jobs after the build); ``webhook`` takes git
hosts' webhooks over plain HTTP at ``POST /webhooks/<pipeline>``.
"""

import flask
import functions_framework
from cloudevents.http import CloudEvent

from shared import app, handlers, serving, telemetry

serving.setup_function()  # JSON logs, and GET /metrics beside the events


@functions_framework.cloud_event
def handle(event: CloudEvent) -> None:
    with serving.http_errors("trigger"):
        telemetry.observed(handlers.on_trigger_event, event, app.current())


@functions_framework.http
def webhook(request: flask.Request) -> flask.Response:
    with serving.http_errors("webhook"):
        deps = app.current()
        body = serving.read_body(request, limit=deps.settings.webhook_max_bytes)
        headers = dict(request.headers)
        received = telemetry.observed_webhook(
            lambda: handlers.on_webhook(request.method, request.path, headers, body, deps),
            deps,
            path=request.path,
        )
    return serving.json_answer(received.to_json(), 201 if received.created else 200)
