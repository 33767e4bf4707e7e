"""Serving a functions-framework function over real HTTP on loopback, for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import functions_framework
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def serve_function(name: str, target: str = "handle") -> Iterator[str]:
    """Serve ``functions/<name>/main.py`` as Knative would; yields its base URL."""
    app = functions_framework.create_app(
        target=target,
        source=str(ROOT / "functions" / name / "main.py"),
        signature_type="cloudevent",
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join()
