"""The artifact store's volume fills up while a step writes.

A 2 MiB tmpfs is mounted as the store (the claim) for the test, on the cluster path. A
task writes 4 MiB into its output: its write fails with ENOSPC, the task fails, and the
step's error says that the artifact store is full, naming the output. The half-written
output stays registered (``creating``) until the reaper's next tick removes it, which
gives the volume its space back, and the next build that writes to the store succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from shared import status as st
from shared.conditions import explain_failure
from shared.db import ArtifactRow, transaction
from shared.plan import OutputBinding, StepSpec
from tests.fakes import FakeClock
from tests.faults.cluster import FaultCluster, assert_settled, workspace
from tests.faults.tmpfs import mounted_tmpfs, used_bytes

pytestmark = pytest.mark.timeout(120)

SIZE = 2 * 1024 * 1024

PIPELINE = """
jobs:
- name: fill
  plan:
  - task: fill
    config:
      platform: linux
      outputs: [{name: blob}]
      run: {path: sh, args: [-c, "echo filling; dd if=/dev/zero of=blob/data bs=64k count=64"]}
  - task: after
    config:
      platform: linux
      inputs: [{name: blob}]
      run: {path: "true"}
- name: fits
  plan:
  - task: small
    config:
      platform: linux
      outputs: [{name: note}]
      run: {path: sh, args: [-c, "echo fits > note/file"]}
"""


@pytest.fixture
def store() -> Iterator[tuple[Path, Path]]:
    """A workspace, and a 2 MiB tmpfs mounted in it as the store."""
    with workspace() as folder, mounted_tmpfs(folder / "store", size=f"{SIZE}") as store:
        yield folder, store


def test_a_full_store_fails_the_step_saying_so_and_the_partial_output_is_reaped(
    store: tuple[Path, Path], database_url: str, clock: FakeClock
) -> None:
    folder, root = store
    cluster = FaultCluster(folder, database_url, clock=clock, store=root)
    try:
        cluster.ci.set_pipeline("faults", PIPELINE)
        empty = used_bytes(root)
        event_id = cluster.request("fill")
        cluster.run_builds([event_id])
        steps = cluster.steps(event_id)
        fill = steps["fill"]
        assert (fill.status, fill.exit_code, steps["after"].status) == (st.FAILED, 1, st.SKIPPED)
        assert fill.error is not None
        assert fill.error.startswith(
            "task 'fill' exited with code 1: the artifact store is full "
            "(No space left on device writing its output 'blob')"
        ), fill.error
        build = cluster.build(event_id)
        assert build is not None and (build.status, build.error) == (st.FAILED, fill.error)
        # The half-written output is registered, never ready, and fills the volume.
        with transaction(cluster.deps.sessions) as session:
            blob = session.scalars(select(ArtifactRow).where(ArtifactRow.step_id == fill.id)).one()
        assert blob.state == "creating"
        assert (root / blob.subpath / "data").stat().st_size > 0
        assert used_bytes(root) >= SIZE - 64 * 1024
        assert_settled(cluster, {event_id: st.FAILED})

        report = cluster.tick()
        assert report.errors == []
        assert report.tallies["artifacts"].done == 1
        assert_settled(cluster, {event_id: st.FAILED}, reaped=True)
        assert used_bytes(root) == empty  # the space is back

        fits = cluster.request("fits")
        cluster.run_builds([fits])
        assert_settled(cluster, {event_id: st.FAILED, fits: st.SUCCEEDED})
    finally:
        cluster.close()


FILL = StepSpec(
    key="0", name="fill", kind="task", outputs=(OutputBinding(name="blob", mount="blob"),)
)


@pytest.mark.parametrize(
    ("spec", "log", "says"),
    [
        (
            FILL,
            b"dd: error writing 'blob/data': No space left on device\n",
            "the artifact store is full (No space left on device writing its output 'blob')",
        ),
        (
            FILL,
            b"head: error writing 'standard output': No space left on device\n",
            "it ran out of disk space (No space left on device): the artifact store, where "
            "its output 'blob' is written, or the pod's own disk is full",
        ),
        (
            replace(FILL, outputs=()),
            b"cp: error writing '/tmp/x': No space left on device\n",
            "it ran out of disk space (No space left on device) on the pod's own disk",
        ),
    ],
    ids=["names-an-output", "names-no-path", "has-no-outputs"],
)
def test_a_step_out_of_space_is_told_which_volume_is_full(
    spec: StepSpec, log: bytes, says: str
) -> None:
    status, message = explain_failure(
        spec, status=st.FAILED, reason="Error", message="task 'fill' exited with code 1", log=log
    )
    assert status == st.FAILED
    assert message is not None and message.startswith(f"task 'fill' exited with code 1: {says}")
