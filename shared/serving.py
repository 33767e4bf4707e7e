"""How a function answers over HTTP: JetBridge's errors become statuses Knative understands.

A permanent error (bad event) is answered 4xx so the Broker does not retry it;
a temporary one (database down) 503, so the Broker delivers the event again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shared import logs
from shared.errors import JetBridgeError, PayloadTooLarge, PermanentError

if TYPE_CHECKING:
    import flask

log = logging.getLogger(__name__)


@contextlib.contextmanager
def http_errors(what: str) -> Iterator[None]:
    """Turn a ``JetBridgeError`` raised inside into an HTTP error response."""
    import flask

    try:
        yield
    except JetBridgeError as e:
        status = e.status if isinstance(e, PermanentError) else 503
        log.warning("%s answered %d: %s", what, status, e)
        body = {"error": str(e), "kind": type(e).__name__}
        flask.abort(flask.make_response(flask.jsonify(body), status))


def read_body(request: flask.Request, *, limit: int) -> bytes:
    """The request's body, or ``PayloadTooLarge`` (413) once it passes ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a
    body without one is read no further than one byte past the limit.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; at most {limit} are taken")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is over {limit} bytes; at most {limit} are taken")
    return body


def json_answer(body: Any, status: int = 200) -> flask.Response:
    """A JSON response, as a function returns it."""
    import flask

    response = flask.jsonify(body)
    response.status_code = status
    return response


# -- what every function's module sets up: its log format and GET /metrics ----------------

#: Where every function serves its metrics: on the port it takes events on (8080, the
#: Knative container's ``user-port``), so no second port and no second server.
METRICS_PATH = "/metrics"
METRICS_ENDPOINT = "jetbridge_metrics"


def setup_function() -> None:
    """Called by each ``functions/*/main.py`` as functions-framework loads it.

    * Logs: in the cluster (``JETBRIDGE_RUNTIME=kubernetes``) JSON lines unless
      ``JETBRIDGE_LOG_FORMAT=text``, from ``JETBRIDGE_LOG_LEVEL`` up, with the secrets the
      settings hold masked. Under ``jetbridge serve`` the command has set up its own
      text log and keeps it, unless ``JETBRIDGE_LOG_FORMAT`` asks for one.
    * ``GET /metrics``: Prometheus' text format, from this process' registry.

    Why a route on functions-framework's own app: ``functions-framework`` (the
    container's command) builds a Flask app and loads the function's module inside
    that app's context (``functions_framework.create_app``), so the module can
    register one more URL rule on ``flask.current_app``, as it registers error
    handlers with ``@functions_framework.errorhandler``. A CloudEvent function's
    own rules take only ``POST``, and an HTTP function's catch-all (``/<path>``) is
    less specific than ``/metrics``, so the route never shadows an event or a
    webhook. The alternatives were worse: a second server on its own port
    (``prometheus_client.start_http_server``) would run in gunicorn's master, not
    in the worker that counts, and Knative allows one port per container; an
    entry point of our own around ``create_app`` would replace the image's
    ``functions-framework`` command and its gunicorn settings. ``tests/test_metrics_http.py``
    serves each function through ``create_app``, as the command does, and scrapes it,
    so a functions-framework that stopped loading modules this way fails the suite.

    gunicorn must keep one worker (``WORKERS=1``, functions-framework's default):
    each worker would have a registry of its own and a scrape would see one of them.
    """
    import flask

    from shared.settings import load_settings

    try:
        settings = load_settings()
    except JetBridgeError as e:
        logs.setup("json")
        # The first event meets the same error (app.current()) and answers with it.
        log.error("settings: %s", e)
    else:
        logs.redact_settings(settings)
        chosen = settings.log_format or ("json" if settings.runtime == "kubernetes" else "")
        if chosen:
            logs.setup(chosen, level=settings.log_level)
    if flask.has_app_context():
        served = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        if METRICS_ENDPOINT not in served.view_functions:
            served.add_url_rule(
                METRICS_PATH, endpoint=METRICS_ENDPOINT, view_func=metrics_view, methods=["GET"]
            )


def metrics_view() -> flask.Response:
    """This process' metrics, in the format the scraper asks for (Prometheus text or OpenMetrics)."""
    import flask
    from prometheus_client.exposition import choose_encoder

    from shared import app

    try:
        deps = app.current()
    except JetBridgeError as e:
        return flask.Response(f"metrics unavailable: {e}\n", status=503, mimetype="text/plain")
    encoder, content_type = choose_encoder(flask.request.headers.get("Accept", ""))
    return flask.Response(encoder(deps.metrics.registry), content_type=content_type)
