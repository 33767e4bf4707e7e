"""The state machines of builds and steps, in one place.

::

    build:  pending ──► started ──► succeeded | failed | errored | aborted

    step:   pending ──► scheduled ──► running ──► succeeded | failed | errored
               │            │            └──────► aborted
               └────────────┴──► skipped   (something it waits for did not succeed)
                                  aborted  (the build was aborted first)

Every arrow is one compare-and-set (``UPDATE … WHERE status = :from``): whoever
moves a row first wins, a second copy of the same handler changes nothing.

``failed`` means the step's own command said no (a non-zero exit); ``errored``
means JetBridge or the cluster could not run it (an input missing, a pod that
could not start, a deadline, an eviction), as Concourse distinguishes them.
"""

from __future__ import annotations

PENDING = "pending"
STARTED = "started"
SCHEDULED = "scheduled"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
ERRORED = "errored"
ABORTED = "aborted"
SKIPPED = "skipped"

BUILD_TERMINAL = frozenset({SUCCEEDED, FAILED, ERRORED, ABORTED})
STEP_TERMINAL = frozenset({SUCCEEDED, FAILED, ERRORED, ABORTED, SKIPPED})
#: A step in one of these did not succeed: whatever waits on it is skipped.
STEP_UNSUCCESSFUL = frozenset({FAILED, ERRORED, ABORTED, SKIPPED})


def build_outcome(step_statuses: list[str]) -> str:
    """A finished build's status from its steps': the worst of them, as Concourse reports it."""
    for status in (ERRORED, FAILED, ABORTED):
        if status in step_statuses:
            return status
    return SUCCEEDED
