"""How a function answers over HTTP: JetBridge's errors become statuses Knative understands.

A permanent error (bad event) is answered 4xx so the Broker does not retry it;
a temporary one (database down) 503, so the Broker delivers the event again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from shared.errors import JetBridgeError, PermanentError

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
