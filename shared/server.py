"""``jetbridge serve``: the three functions on one port, webhook-driven CI on one machine.

Each function is served by the real functions-framework, from its own ``main.py``,
exactly as Knative serves it, and mounted under one WSGI dispatcher:

=====================  =============================  ===============================
path                   function                       takes
=====================  =============================  ===============================
``/webhooks/<name>``   ``functions/trigger`` webhook  GitHub, GitLab, generic webhooks
``/trigger``           ``functions/trigger``          CloudEvents: build.requested, git sources
``/step-runner``       ``functions/step_runner``      CloudEvents: step.ready, pod updates
``/reaper``            ``functions/reaper``           CloudEvents: ping
``/healthz``           —                              ``ok``
=====================  =============================  ===============================

Behind them is ``LocalCI``: SQLite (or the configured database), the local runtime,
and the in-process bus, which a thread of its own dispatches; another thread sends
the reaper a ping every ``reaper_interval_seconds``, as a PingSource would.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from shared import app, events
from shared.app import utcnow
from shared.local import LocalCI
from shared.settings import Settings

log = logging.getLogger(__name__)

#: Mount point → (function folder, target, signature type).
ROUTES: dict[str, tuple[str, str, str]] = {
    "/webhooks": ("trigger", "webhook", "http"),
    "/trigger": ("trigger", "handle", "cloudevent"),
    "/step-runner": ("step_runner", "handle", "cloudevent"),
    "/reaper": ("reaper", "handle", "cloudevent"),
}

#: Seconds between the HTTP loop's looks for a shutdown: ``stop`` takes at most this long.
SHUTDOWN_POLL = 0.05

#: The event ``stop`` puts on the bus to wake its thread.
STOPPING = "dev.jetbridge.serve.stopping"

#: Where the pings of ``serve``'s reaper schedule say they come from.
PING_SOURCE = "//jetbridge.dev/serve"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def function_source(folder: str) -> Path:
    """``functions/<folder>/main.py``, wherever JetBridge is installed."""
    spec = importlib.util.find_spec(f"functions.{folder}.main")
    if spec is None or spec.origin is None:
        raise RuntimeError(f"functions/{folder}/main.py is not installed with JetBridge")
    return Path(spec.origin)


@contextmanager
def _functions_framework_env() -> Iterator[None]:
    # create_app records the target and signature type in the process environment;
    # keep them from leaking into whatever this process does next.
    saved = {k: os.environ.get(k) for k in ("FUNCTION_TARGET", "FUNCTION_SIGNATURE_TYPE")}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_app() -> WSGIApp:
    """One WSGI app serving every function at its path (``ROUTES``)."""
    import functions_framework

    mounts: dict[str, WSGIApp] = {}
    with _functions_framework_env():
        for path, (folder, target, signature) in ROUTES.items():
            function = functions_framework.create_app(  # type: ignore[no-untyped-call]
                target=target, source=str(function_source(folder)), signature_type=signature
            )
            mounts[path] = _at_root(function)
    dispatcher: WSGIApp = DispatcherMiddleware(_index, mounts)
    return dispatcher


def _at_root(function: WSGIApp) -> WSGIApp:
    """``POST /trigger`` reaches the function as ``/``, as Knative's URL does, not a redirect."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("PATH_INFO"):
            environ["PATH_INFO"] = "/"
        return function(environ, start_response)

    return app


@Request.application
def _index(request: Request) -> Response:
    if request.path == "/healthz":
        return Response("ok\n", mimetype="text/plain")
    routes = {path: f"functions/{folder} {target}" for path, (folder, target, _) in ROUTES.items()}
    body = {"error": f"nothing at {request.path[:200]!r}", "routes": routes}
    return Response(json.dumps(body, indent=2) + "\n", status=404, mimetype="application/json")


class Server:
    """JetBridge on one port. ``start`` returns at once; ``stop`` ends every thread and pod."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        reaper_interval: float | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.ci = LocalCI(settings, clock=clock, scheduling=True)
        self.reaper_interval = (
            reaper_interval if reaper_interval is not None else settings.reaper_interval_seconds
        )
        try:
            self._http = make_server(host, port, make_app(), threaded=True)
        except Exception:
            self.ci.close()
            raise
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host = f"[{self._http.host}]" if ":" in self._http.host else self._http.host
        return f"http://{host}:{self._http.port}"

    def start(self) -> None:
        """Serve HTTP, dispatch the bus and tick the reaper, each in a thread of its own."""
        app.install(self.ci.deps)
        for name, target in (
            ("http", lambda: self._http.serve_forever(poll_interval=SHUTDOWN_POLL)),
            ("bus", self._dispatch),
            ("reaper-schedule", self._schedule),
        ):
            thread = threading.Thread(target=target, name=f"jetbridge-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _dispatch(self) -> None:
        self.ci.bus.run_until(self._stopping.is_set, timeout=float("inf"))

    def _schedule(self) -> None:
        if self.reaper_interval <= 0:
            return
        while not self._stopping.wait(self.reaper_interval):
            self.ci.bus.emit(events.make_event(events.PING, {}, source=PING_SOURCE))

    def stop(self) -> None:
        """Stop taking requests, stop the bus and the schedule, stop every pod."""
        self._stopping.set()
        # Wakes the bus thread at once; no handler takes this type.
        self.ci.bus.emit(events.make_event(STOPPING, {}, source=PING_SOURCE))
        self._http.shutdown()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self._http.server_close()
        app.install(None)
        self.ci.close()

    def serve_forever(self) -> None:
        """``start``, then wait for Ctrl-C (or ``stop`` from another thread)."""
        self.start()
        try:
            self._stopping.wait()
        except KeyboardInterrupt:
            pass
        finally:
            if self._threads:
                self.stop()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
