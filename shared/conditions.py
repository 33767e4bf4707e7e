"""Step conditions: from a build's steps and their statuses, what happens next. Pure.

The plan (``shared.plan``) puts Concourse's step tree on each step as data:
``depends_on`` and ``when`` (the outcome it runs on), ``try_scopes``, ``slots`` (its
branch of each ``in_parallel``/``across``), ``survives_abort`` and ``attempts``.
``decide`` reads them with every step's status and answers, in one pass:

- which pending steps run now (``schedule``) and which never will (``skip``);
- which failed steps get another attempt (``retry``: back to ``scheduled``, attempt + 1);
- once every step is final, the build's ``outcome`` and the step whose status it is.

The rules, Concourse's:

- The outcome of a set of steps is the worst of theirs: ``aborted`` over ``errored``
  over ``failed`` over ``succeeded``. A skipped step counts for nothing (whatever made
  it skip is in the set too, or the set never ran at all: then it is ``skipped``).
- Seen from outside a ``try``, a failure or error inside it is a success (an abort is not).
- A step runs when every step it depends on is final and their outcome is what its
  ``when`` asks for; otherwise it is skipped. An ``on_failure`` hook runs, and the build
  still fails; a failing ``ensure`` fails the build; skipped steps fail nothing.
- A failed or errored step with attempts left is retried before anything sees it fail.
- ``in_parallel``'s ``limit`` (``across``' ``max_in_flight``) counts branches under way;
  with ``fail_fast``, once a branch failed no other branch starts. Branches already
  running finish (JetBridge does not stop their pods).
- Once a step is ``aborted`` (the build is being aborted), no retry happens and only steps
  inside ``ensure``/``on_abort`` hooks may still start.

``explain_failure`` turns a finished pod's outcome into the step's verdict where the
plan knows more than the pod: a step's own ``timeout`` fails it (Concourse), and a
task that wrote into a read-only input is told which input and what to do instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from shared import status as st
from shared.plan import StepSpec

#: Worst first: the outcome of a set of steps is the first of these any of them has.
SEVERITY = (st.ABORTED, st.ERRORED, st.FAILED, st.SUCCEEDED)
#: The set of steps never ran: everything in it was skipped.
NEVER_RAN = "skipped"

_WHEN_OUTCOME = {
    "success": st.SUCCEEDED,
    "failure": st.FAILED,
    "error": st.ERRORED,
    "abort": st.ABORTED,
}

#: What a process says when it writes to a read-only mount (EROFS).
READ_ONLY_TEXT = "Read-only file system"
#: What a process says when it writes to a full file system (ENOSPC): the store's volume,
#: which every step's outputs are on, or the pod's own disk.
NO_SPACE_TEXT = "No space left on device"


@dataclass(frozen=True, kw_only=True)
class StepState:
    """What ``decide`` needs of a step row."""

    key: str
    status: str
    attempt: int
    spec: StepSpec


@dataclass(frozen=True, kw_only=True)
class Decision:
    schedule: tuple[str, ...] = ()
    """Pending steps to move to ``scheduled`` (and announce), in plan order."""
    skip: tuple[str, ...] = ()
    """Pending steps that will never run."""
    retry: tuple[str, ...] = ()
    """Failed or errored steps to run again: ``scheduled``, with the next attempt."""
    outcome: str | None = None
    """The build's status once every step is final; ``None`` while something may still run."""
    culprit: str | None = None
    """The step whose status the outcome is (its error is the build's), if it did not succeed."""


def may_still_run(status: str, attempt: int, spec: StepSpec) -> bool:
    """Whether a step may run (again): not final yet, or failed with attempts left."""
    if status not in st.STEP_TERMINAL:
        return True
    return status in (st.FAILED, st.ERRORED) and attempt < spec.attempts


def decide(steps: Sequence[StepState]) -> Decision:
    """What moves next in a build whose steps (in plan order) are ``steps``."""
    return _Decider(steps).run()


class _Decider:
    def __init__(self, steps: Sequence[StepState]) -> None:
        self.order = [s.key for s in steps]
        self.specs = {s.key: s.spec for s in steps}
        self.status = {s.key: s.status for s in steps}
        self.aborting = any(s.status == st.ABORTED for s in steps)
        self.retry = [
            s.key
            for s in steps
            if not self.aborting
            and s.status in (st.FAILED, st.ERRORED)
            and s.attempt < s.spec.attempts
        ]
        for key in self.retry:  # under way again: nothing may see it fail
            self.status[key] = st.SCHEDULED
        # Group → branch index → its steps, for in_parallel limits and fail_fast.
        self.branches: dict[str, dict[int, list[str]]] = {}
        for s in steps:
            for slot in s.spec.slots:
                self.branches.setdefault(slot.group, {}).setdefault(slot.index, []).append(s.key)

    def run(self) -> Decision:
        schedule: list[str] = []
        skip: list[str] = []
        changed = True
        while changed:  # a skip or a start can settle steps already looked at
            changed = False
            for key in self.order:
                if self.status[key] != st.PENDING:
                    continue
                verdict = self._gate(key)
                if verdict == "skip":
                    self.status[key] = st.SKIPPED
                    skip.append(key)
                    changed = True
                elif verdict == "run":
                    self.status[key] = st.SCHEDULED
                    schedule.append(key)
                    changed = True
        outcome = culprit = None
        if all(s in st.STEP_TERMINAL for s in self.status.values()):
            outcome = self._outcome(self.order, observer=())
            if outcome == NEVER_RAN:
                outcome = st.SUCCEEDED
            culprit = next(
                (k for k in self.order if self._effective(k, ()) == outcome),
                None,
            )
            if outcome == st.SUCCEEDED:
                culprit = None
        return Decision(
            schedule=tuple(schedule),
            skip=tuple(skip),
            retry=tuple(self.retry),
            outcome=outcome,
            culprit=culprit,
        )

    def _gate(self, key: str) -> str:
        """``run``, ``skip`` or ``wait`` for a pending step."""
        spec = self.specs[key]
        if self.aborting and not spec.survives_abort:
            return "skip"
        watched = [d for d in spec.depends_on if d in self.status]
        if any(self.status[d] not in st.STEP_TERMINAL for d in watched):
            return "wait"
        outcome = self._outcome(watched, observer=spec.try_scopes) if watched else st.SUCCEEDED
        if outcome == NEVER_RAN:
            return "skip"
        if spec.when != "always" and _WHEN_OUTCOME.get(spec.when) != outcome:
            return "skip"
        verdict = "run"
        for slot in spec.slots:
            branches = self.branches[slot.group]
            if self._started(branches[slot.index]):
                continue  # its branch is under way: no group rule holds it back
            others = [keys for index, keys in branches.items() if index != slot.index]
            if slot.fail_fast and any(self._failed(keys, spec.try_scopes) for keys in others):
                return "skip"
            running = sum(1 for keys in others if self._started(keys) and not self._done(keys))
            if slot.limit is not None and running >= slot.limit:
                verdict = "wait"
        return verdict

    def _started(self, keys: Sequence[str]) -> bool:
        return any(self.status[k] not in (st.PENDING, st.SKIPPED) for k in keys)

    def _done(self, keys: Sequence[str]) -> bool:
        return all(self.status[k] in st.STEP_TERMINAL for k in keys)

    def _failed(self, keys: Sequence[str], observer: Sequence[str]) -> bool:
        return any(
            self._effective(k, observer) in (st.FAILED, st.ERRORED, st.ABORTED)
            for k in keys
            if self.status[k] in st.STEP_TERMINAL
        )

    def _effective(self, key: str, observer: Sequence[str]) -> str:
        """A step's status as a step inside the ``try`` scopes ``observer`` sees it."""
        status = self.status[key]
        if status in (st.FAILED, st.ERRORED) and any(
            scope not in observer for scope in self.specs[key].try_scopes
        ):
            return st.SUCCEEDED  # swallowed by a try the observer is outside of
        return status

    def _outcome(self, keys: Sequence[str], *, observer: Sequence[str]) -> str:
        seen = {self._effective(k, observer) for k in keys if self.status[k] != st.SKIPPED}
        if not seen:
            return NEVER_RAN
        return next(status for status in SEVERITY if status in seen)


# ---------------------------------------------------------------- a finished step's verdict


def explain_failure(
    spec: StepSpec, *, status: str, reason: str | None, message: str | None, log: bytes
) -> tuple[str, str | None]:
    """The step's status and message, from its pod's, where the plan knows better.

    - A step that ran past its own ``timeout`` failed (Concourse fails, not errors, a
      timed-out step); the default deadline from settings still errors it.
    - A task that failed writing into a read-only input is told which input, and the two
      ways to write into an input.
    - A step that failed with no space left on its device is told that the artifact
      store is full when it was writing one of its outputs (they are on the store).
    """
    what = f"{spec.kind} {spec.name!r}"
    if reason == "DeadlineExceeded" and spec.timeout_seconds is not None:
        return st.FAILED, (
            f"{what} timed out: it ran longer than its timeout "
            f"({_duration(spec.timeout_seconds)}) and was stopped"
        )
    if spec.kind == "task" and status == st.FAILED and READ_ONLY_TEXT.encode() in log:
        blamed = _read_only_input(spec, log.decode("utf-8", "replace"))
        if blamed is not None:
            return status, f"{message or what + ' failed'}: {blamed}"
    if status != st.SUCCEEDED and NO_SPACE_TEXT.encode() in log:
        full = _full_volume(spec, log.decode("utf-8", "replace"))
        return status, f"{message or what + ' failed'}: {full}"
    return status, message


def _full_volume(spec: StepSpec, log: str) -> str:
    """Which volume a step that ran out of space filled, as a sentence."""
    lines = [line for line in log.splitlines() if NO_SPACE_TEXT in line]
    named = [o for o in spec.outputs if any(_mentions(line, o.mount) for line in lines)]
    remedy = (
        "the reaper frees what no build needs on its next tick; if the store stays full, "
        "give its volume (the artifact-store claim) more space"
    )
    if named:
        outputs = ", ".join(repr(o.name) for o in named)
        return (
            f"the artifact store is full ({NO_SPACE_TEXT} writing its output {outputs}); {remedy}"
        )
    if spec.outputs:
        outputs = ", ".join(repr(o.name) for o in spec.outputs)
        return (
            f"it ran out of disk space ({NO_SPACE_TEXT}): the artifact store, where its "
            f"output {outputs} is written, or the pod's own disk is full; {remedy}"
        )
    return f"it ran out of disk space ({NO_SPACE_TEXT}) on the pod's own disk"


def _read_only_input(spec: StepSpec, log: str) -> str | None:
    """Which read-only input the task wrote into, and the remedies, as a sentence."""
    copied = {o.mount for o in spec.outputs if o.from_input}
    inputs = [i for i in spec.inputs if i.mount not in copied]
    if not inputs:
        return None
    lines = [line for line in log.splitlines() if READ_ONLY_TEXT in line]
    named = [i for i in inputs if any(_mentions(line, i.mount) for line in lines)]
    if not named and spec.dir:  # a task that works inside an input writes relative paths
        named = [i for i in inputs if _under(spec.dir, i.mount)]
    if not named and len(inputs) == 1:
        named = inputs
    if len(named) == 1:
        name = named[0].name
        return (
            f"it wrote into its input {name!r}, which is read-only ({READ_ONLY_TEXT}). "
            f"JetBridge mounts inputs read-only, uncopied; to write into {name!r}, declare "
            f"an output named {name!r} (a writable copy of the input that becomes that "
            "output), or set `writable_inputs: true` on the task step (private writable "
            "copies of all its inputs)"
        )
    listing = ", ".join(repr(i.name) for i in (named or inputs))
    return (
        f"it wrote into one of its inputs ({listing}), which are read-only "
        f"({READ_ONLY_TEXT}). JetBridge mounts inputs read-only, uncopied; to write into "
        "an input, declare an output with the input's name (a writable copy that becomes "
        "that output), or set `writable_inputs: true` on the task step (private writable "
        "copies of all its inputs)"
    )


def _mentions(line: str, mount: str) -> bool:
    """Whether a log line names a path inside the mount (``repo/x``, ``'repo'``, …/repo/x)."""
    pattern = r"(?:^|[\s'\"`(/=:])" + re.escape(mount.strip("/")) + r"(?:/|['\"`:)\s]|$)"
    return re.search(pattern, line) is not None


def _under(path: str, mount: str) -> bool:
    path, mount = path.strip("/"), mount.strip("/")
    return path == mount or path.startswith(mount + "/")


def _duration(seconds: int) -> str:
    """``90`` → ``1m30s``, as Go writes durations (the pipeline wrote one)."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"
