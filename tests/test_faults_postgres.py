"""Postgres goes away in the middle of a load run, and comes back.

The database is reached through a loopback TCP proxy (``tests/faults/proxy.py``) that
the test cuts (every connection severed, the port refusing new ones, as when Postgres
restarts) and restores. Events travel as Knative carries them: the Broker posts each
one to the real functions-framework app of the function it is for, and delivers it
again after a 5xx. While the database is down every function must answer 503
(``DatabaseUnavailable``, a temporary error), never a 4xx that would drop the event
and never a crash; once it is back, the redelivered events finish every build.
"""

from __future__ import annotations

import gc
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from shared import app
from shared import status as st
from shared.events import POD_ADD, POD_UPDATE
from shared.server import make_app
from tests.fakes import FakeClock
from tests.faults.broker import RETRY, UNROUTED, Broker, HttpTransport, routes_by_type
from tests.faults.cluster import NAMESPACE, PIPELINE, FaultCluster, assert_settled, one_pod_per_step
from tests.faults.cluster import workspace as make_workspace
from tests.faults.proxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

#: Builds in flight when the database goes: 3 steps each.
BUILDS = 6
#: The middle step runs for a moment, so that pods are running when the database goes.
SLOW_CHECK = PIPELINE.replace('"cat out/file > report/r"', '"sleep 0.5; cat out/file > report/r"')
FINAL = ("Succeeded", "Failed")


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    port = urlsplit(postgres_url).port or 5432
    proxy = TcpProxy(port).start()
    yield proxy
    proxy.close()


def through(url: str, proxy: TcpProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def folder() -> Iterator[Path]:
    with make_workspace() as path:
        yield path


def test_postgres_restarting_under_load_is_answered_503_and_redelivery_finishes_everything(
    folder: Path, postgres_url: str, proxy: TcpProxy, clock: FakeClock
) -> None:
    assert SLOW_CHECK != PIPELINE
    broker = Broker(transport=HttpTransport(make_app(), routes_by_type()))
    cluster = FaultCluster(folder, through(postgres_url, proxy), clock=clock, broker=broker)
    app.install(cluster.deps)  # what the functions' handlers use in this process
    try:
        cluster.ci.set_pipeline("faults", SLOW_CHECK)
        good = [cluster.request("build") for _ in range(BUILDS - 2)]
        bad = [cluster.request("broken") for _ in range(2)]

        # Under way: steps recorded, pods running, events on their way.
        def under_way() -> bool:
            phases = [p.get("status", {}).get("phase") for p in cluster.server.pods(NAMESPACE)]
            created = len(cluster.server.calls_of("create"))
            return created >= BUILDS and "Running" in phases and broker.pending() > 0

        cluster.run_until(under_way)
        before = len(broker.deliveries)
        proxy.cut()
        assert proxy.severed > 0  # the pool's connections were open, and are now dead

        # Down: the running pods end, and every event about them is refused with a 503.
        def ended_and_refused() -> bool:
            pods = cluster.server.pods(NAMESPACE)
            ended = all(p.get("status", {}).get("phase") in FINAL for p in pods)
            refused = [
                d for d in broker.deliveries[before:] if d.answer == RETRY and d.type == POD_UPDATE
            ]
            return ended and len(refused) >= len(pods) > 0

        cluster.run_until(ended_and_refused)
        # A pod that has not ended holds nothing the step runner records: its event is
        # answered from the pod alone, with no database (``steps.finish_step``).
        during = [
            d
            for d in broker.deliveries[before:]
            if d.answer != UNROUTED
            and (d.type not in (POD_ADD, POD_UPDATE) or d.pod_phase in FINAL)
        ]
        assert Counter(d.status for d in during) == Counter({503: len(during)}), Counter(
            (d.status, d.error[:80]) for d in during
        )
        assert all("DatabaseUnavailable" in d.error for d in during), during[0].error
        proxy.restore()
        cluster.run_builds(good + bad)
        answers = Counter(d.status for d in broker.deliveries if d.answer != UNROUTED)
        assert set(answers) <= {200, 204, 503}, answers  # nothing dropped with a 4xx, no 500
        one_pod_per_step(cluster)
        expected = {e: st.SUCCEEDED for e in good} | {e: st.FAILED for e in bad}
        assert_settled(cluster, expected)
        report = cluster.tick()
        assert report.errors == []
        assert_settled(cluster, expected, reaped=True)
    finally:
        app.install(None)
        cluster.close()
        # pg8000 leaves the socket of a connection that died under it for the garbage
        # collector; collect it here, where its ResourceWarning is expected, not later.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
