"""Webhooks per second, and the latency from a webhook in to its build's first ``step.ready``.

Signed GitHub pushes are posted over HTTP to ``jetbridge serve``'s WSGI app (the real
functions-framework, one thread per connection, as werkzeug serves it), each with a
delivery id of its own. Each is verified, matched to the pipeline's job, recorded
(delivery and build in one transaction) and its first step announced. The latency
of a delivery runs from just before its request is sent to the moment the trigger
hands that build's first ``step.ready`` to the event sink: webhook in → build
committed → first step.ready. No step runs: only the trigger is measured.
``make bench`` runs it; the numbers are printed at the end.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from werkzeug.serving import make_server

from benchmarks.conftest import Recorder
from shared import app, events
from shared.app import Deps, build_deps
from shared.db import transaction, upgrade
from shared.pipelines import save_pipeline
from shared.server import make_app
from shared.settings import Settings
from tests.fakes import FakeRuntime
from tests.hooks import SECRET, body_of, github_headers, payload, post

PIPELINE = """
resources:
- {name: app, type: git, source: {uri: "git@github.com:octo-org/hello-world.git", branch: main}}
jobs:
- name: unit
  plan:
  - get: app
    trigger: true
  - task: test
    config: {platform: linux, inputs: [{name: app}], run: {path: make, args: [test]}}
"""

WARMUP = 20
DELIVERIES = 300


class TimedSink:
    """Notes when each build's first ``step.ready`` is handed over."""

    def __init__(self) -> None:
        self.ready: dict[int, float] = {}
        self._lock = threading.Lock()

    def emit(self, event: CloudEvent) -> None:
        if event["type"] == events.STEP_READY:
            now = time.perf_counter()
            build_id = events.event_data(event)["build_id"]
            with self._lock:
                self.ready.setdefault(build_id, now)


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Deps]]:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, webhook_secrets=json.dumps({"bench": SECRET})
    )
    deps = build_deps(settings, sink=TimedSink(), runtime=FakeRuntime())
    upgrade(deps.engine)
    with transaction(deps.sessions) as session:
        save_pipeline(session, name="bench", config=PIPELINE, clock=deps.clock)
    app.install(deps)
    server = make_server("127.0.0.1", 0, make_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/webhooks/bench", deps
    server.shutdown()
    thread.join()
    app.install(None)
    deps.engine.dispose()


def _send(url: str, body: bytes) -> tuple[float, int]:
    headers = github_headers(body, delivery=str(uuid.uuid4()))
    sent = time.perf_counter()
    status, answer = post(url, body, headers)
    assert status == 201, answer
    return sent, answer["builds"][0]["id"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@pytest.mark.bench
@pytest.mark.parametrize("clients", [1, 8], ids=["1-client", "8-clients"])
def test_webhooks_per_second_and_latency_to_the_first_step(
    benchmark: Any, served: tuple[str, Deps], database_url: str, clients: int, results: Recorder
) -> None:
    url, deps = served
    sink: TimedSink = deps.sink  # type: ignore[assignment]
    body = body_of(payload("github-push"))
    for _ in range(WARMUP):
        _send(url, body)
    sent: list[tuple[float, int]] = []

    def run() -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            sent.extend(pool.map(lambda _: _send(url, body), range(DELIVERIES)))
        return time.perf_counter() - start

    elapsed = benchmark.pedantic(run, rounds=1, iterations=1)
    latencies = [(sink.ready[build_id] - at) * 1000 for at, build_id in sent]
    assert len(latencies) == DELIVERIES
    rate = DELIVERIES / elapsed
    p50, p99 = statistics.median(latencies), _percentile(latencies, 0.99)
    database = "postgres" if database_url.startswith("postgresql") else "sqlite"
    benchmark.extra_info.update(
        {"webhooks_per_second": rate, "p50_ms": p50, "p99_ms": p99, "database": database}
    )
    group = "webhooks over HTTP"
    where = {"database": database, "clients": clients}
    results.record(group, "webhooks per second", rate, "/s", **where, deliveries=DELIVERIES)
    results.record(group, "webhook in → first step.ready p50", p50, "ms", **where)
    results.record(group, "webhook in → first step.ready p99", p99, "ms", **where)
    results.note(
        group,
        "signed GitHub pushes posted to `jetbridge serve`'s WSGI app (functions-framework, "
        "a thread per connection) on loopback: verified, matched, build recorded, first "
        "step announced; no step runs.",
    )
