"""Faults of delivery and of crashes: every event three times and shuffled; a handler killed
at each commit point. Each test ends by checking what a user would: every build ended
with the right status, every artifact registered and present or gone, no pod left.

Builds run on the cluster path (Kubernetes runtime over HTTP, simulated kubelet running
the pods, ApiServerSource stand-in), on SQLite and Postgres. Faults come in through the
ports (``tests/faults``): a Broker that duplicates, shuffles and redelivers; a runtime
and a sink that kill the handler at one call; the reaper's directory remover killed
between its claim and its delete.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cloudevents.http import CloudEvent

from shared import events
from shared import status as st
from shared.app import Deps
from shared.events import event_data
from tests.fakes import FakeClock
from tests.faults.broker import CRASHED, Broker
from tests.faults.cluster import (
    PIPELINE,
    FaultCluster,
    assert_settled,
    one_pod_per_step,
    workspace,
)
from tests.faults.ports import CrashingRuntime, CrashingSink
from tests.kube.kubelet import step_pods
from tests.reaping import Killed, Remover

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def folder() -> Iterator[Path]:
    with workspace() as path:
        yield path


def open_cluster(
    folder: Path, database_url: str, clock: FakeClock, **kwargs: object
) -> FaultCluster:
    cluster = FaultCluster(folder, database_url, clock=clock, **kwargs)  # type: ignore[arg-type]
    cluster.ci.set_pipeline("faults", PIPELINE)
    return cluster


# -- every event three times, in a shuffled order ------------------------------------


def test_every_event_delivered_three_times_in_a_shuffled_order_changes_no_outcome(
    folder: Path, database_url: str, clock: FakeClock
) -> None:
    broker = Broker(copies=3, seed=8)
    cluster = open_cluster(folder, database_url, clock, broker=broker)
    try:
        good = [cluster.request("build") for _ in range(3)]
        bad = [cluster.request("broken") for _ in range(2)]
        cluster.run_builds(good + bad)
        # Every step's pod ran once; every transition was announced once.
        one_pod_per_step(cluster)
        for type_ in (events.STEP_READY, events.STEP_FINISHED, events.BUILD_FINISHED):
            ids = Counter(e["id"] for e in broker.emitted_of(type_))
            assert [i for i, n in ids.items() if n > 1] == [], f"{type_} emitted twice"
        assert len(broker.emitted_of(events.BUILD_FINISHED)) == 5
        assert broker.out_of_order() > 0  # the order really was shuffled
        assert broker.answers() == Counter({"2xx": len(broker.deliveries)})
        for event_id in good:
            steps = cluster.steps(event_id)
            assert {n: s.status for n, s in steps.items()} == dict.fromkeys(
                ("make", "check", "ship"), st.SUCCEEDED
            )
        for event_id in bad:
            steps = cluster.steps(event_id)
            assert (steps["make"].status, steps["never"].status) == (st.FAILED, st.SKIPPED)
        expected = {e: st.SUCCEEDED for e in good} | {e: st.FAILED for e in bad}
        # Before the reaper: the ended builds' artifacts are registered and whole.
        assert_settled(cluster, expected)
        report = cluster.tick()
        assert report.errors == []
        assert_settled(cluster, expected, reaped=True)
    finally:
        cluster.close()


# -- a handler killed at each commit point --------------------------------------------


def _of(type_: str, step: str) -> Callable[[CloudEvent], bool]:
    """Events of ``type_`` about the step called ``step`` (``step.ready`` carries its id only)."""

    def matches(event: CloudEvent) -> bool:
        if event["type"] != type_:
            return False
        data = event_data(event)
        return data.get("name") == step or event.get("subject", "").endswith(f"/{step}")

    return matches


@dataclass(frozen=True, kw_only=True)
class Kill:
    desc: str
    arm: Callable[[CrashingRuntime, CrashingSink], None]
    heals_by: str
    """``redelivery`` (the Broker delivering the event again) or ``reaper`` (a tick)."""


#: Steps are keyed by plan position in their events' subject: make 0, check 1, ship 2.
KILLS = [
    Kill(
        desc="launch: rows committed, pod not created",
        arm=lambda rt, sink: rt.crash("launch", when="before", pod=step_pods("check")),
        heals_by="redelivery",
    ),
    Kill(
        desc="launch: pod created, answer lost",
        arm=lambda rt, sink: rt.crash("launch", when="after", pod=step_pods("check")),
        heals_by="redelivery",
    ),
    Kill(
        desc="finish: log being read, nothing recorded",
        arm=lambda rt, sink: rt.crash("logs", pod=step_pods("check")),
        heals_by="redelivery",
    ),
    Kill(
        desc="finish: step recorded, step.finished not sent",
        arm=lambda rt, sink: sink.crash(_of(events.STEP_FINISHED, "check")),
        heals_by="redelivery",
    ),
    Kill(
        desc="finish: step.finished sent, pod not deleted, build not advanced",
        arm=lambda rt, sink: rt.crash("delete", pod=step_pods("check")),
        heals_by="redelivery",
    ),
    Kill(
        desc="finish: next step scheduled, its step.ready not sent",
        arm=lambda rt, sink: sink.crash(_of(events.STEP_READY, "2")),
        heals_by="reaper",
    ),
    Kill(
        desc="trigger: build recorded, first step.ready not sent",
        arm=lambda rt, sink: sink.crash(_of(events.STEP_READY, "0")),
        heals_by="reaper",
    ),
    Kill(
        desc="finish: last step recorded, build.finished not sent",
        arm=lambda rt, sink: sink.crash(lambda e: e["type"] == events.BUILD_FINISHED),
        heals_by="redelivery",
    ),
]


@pytest.mark.parametrize("kill", KILLS, ids=[k.desc for k in KILLS])
def test_a_handler_killed_at_a_commit_point_is_healed(
    folder: Path, database_url: str, clock: FakeClock, kill: Kill
) -> None:
    ports: dict[str, object] = {}

    def wrap(deps: Deps) -> Deps:
        ports["runtime"] = CrashingRuntime(deps.runtime)
        ports["sink"] = CrashingSink(deps.sink)
        return replace(deps, runtime=ports["runtime"], sink=ports["sink"])  # type: ignore[arg-type]

    cluster = open_cluster(folder, database_url, clock, wrap=wrap)
    runtime, sink = ports["runtime"], ports["sink"]
    assert isinstance(runtime, CrashingRuntime) and isinstance(sink, CrashingSink)
    try:
        kill.arm(runtime, sink)
        event_id = cluster.request("build")
        if kill.heals_by == "redelivery":
            cluster.run_builds([event_id])
        else:
            # Redelivery cannot help: the step waits scheduled, announced to no one.
            def stuck() -> bool:
                steps = cluster.steps(event_id) if cluster.build(event_id) else {}
                waiting = [s for s in steps.values() if s.status == st.SCHEDULED]
                return bool(waiting) and bool(sink.fired) and cluster.broker.pending() == 0

            cluster.run_until(stuck)
            assert not cluster.ended([event_id])
            # The reaper announces a step scheduled longer than step_ready_resend_seconds again.
            clock.advance(cluster.settings.step_ready_resend_seconds + 1)
            report = cluster.tick()
            assert report.tallies["lost_announcements"].done == 1, report.summary()
            cluster.run_builds([event_id])
        assert runtime.fired or sink.fired, "the fault never fired"
        assert cluster.broker.answers()[CRASHED] == 1  # the handler died once, and only once
        one_pod_per_step(cluster)
        assert {n: s.status for n, s in cluster.steps(event_id).items()} == dict.fromkeys(
            ("make", "check", "ship"), st.SUCCEEDED
        )
        assert_settled(cluster, {event_id: st.SUCCEEDED})
        cluster.tick()
        assert_settled(cluster, {event_id: st.SUCCEEDED}, reaped=True)
    finally:
        cluster.close()


@pytest.mark.parametrize("when", ["before", "after"], ids=["before-delete", "after-delete"])
def test_the_reaper_killed_between_its_claim_and_its_delete_finishes_next_time(
    folder: Path, database_url: str, clock: FakeClock, when: str
) -> None:
    cluster = open_cluster(folder, database_url, clock)
    try:
        done = [cluster.request("build"), cluster.request("broken")]
        cluster.run_builds(done)
        expected = {done[0]: st.SUCCEEDED, done[1]: st.FAILED}
        assert_settled(cluster, expected)
        remover = Remover(crash=when)
        with pytest.raises(Killed):
            cluster.tick(remover)
        # The kill left claims behind: rows marked reaping whose directories may be gone.
        assert "reaping" in cluster.artifact_states()
        # The claim stays until its lease runs out; then a later tick takes it over.
        clock.advance(cluster.settings.reaper_lease_seconds + 1)
        report = cluster.tick(remover)
        assert report.errors == []
        assert report.tallies["artifacts"].done == 3  # out and report of one, out of the other
        assert_settled(cluster, expected, reaped=True)
    finally:
        cluster.close()
