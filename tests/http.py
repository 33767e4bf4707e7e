"""Serving a functions-framework function over real HTTP on loopback, for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import functions_framework
from werkzeug.serving import make_server

from shared import app, logs
from shared.app import Deps, build_deps
from shared.db import transaction, upgrade
from shared.events import RecordingSink
from shared.pipelines import save_pipeline
from shared.settings import Settings
from tests.fakes import FakeClock, FakeRuntime

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def installed_deps(settings: Settings, pipelines: Mapping[str, str]) -> Iterator[Deps]:
    """JetBridge over the fakes (a recording sink, the fake runtime and clock), its schema
    made and ``pipelines`` (name → YAML) saved, installed as what served functions use."""
    deps = build_deps(settings, sink=RecordingSink(), runtime=FakeRuntime(), clock=FakeClock())
    upgrade(deps.engine)
    with transaction(deps.sessions) as session:
        for name, config in pipelines.items():
            save_pipeline(session, name=name, config=config, clock=deps.clock)
    app.install(deps)
    try:
        yield deps
    finally:
        app.install(None)
        deps.engine.dispose()


@contextmanager
def serve_function(
    name: str, target: str = "handle", signature_type: str = "cloudevent"
) -> Iterator[str]:
    """Serve ``functions/<name>/main.py`` as Knative would; yields its base URL."""
    app = functions_framework.create_app(
        target=target,
        source=str(ROOT / "functions" / name / "main.py"),
        signature_type=signature_type,
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    # A short poll: shutdown() waits for the loop to look, 0.5 s by default.
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join()
        logs.reset()  # the function's module set up JSON logs for this whole process
