"""The reaper: a scheduled tick that makes the store, the database and the runtime agree.

Events are delivered at least once, but "at least once" can still be never: a
Broker that gave up, a function killed between two writes, a node that vanished
with its pod. Every handler is written so that doing its work again is harmless;
the reaper is what does it again. It is level-triggered, like a controller's
resync: each tick looks at how things *are* and puts right what no event will.

One tick (:func:`reap`) runs these passes, each on its own, so a failure in one
never stops the others:

1. :func:`abort_timed_out_builds`: a build running past ``build_timeout_seconds``
   is aborted (``builds.abort_build``): its steps, its pods, the build.
2. :func:`resync_steps`: a ``running`` step whose pod is gone is errored, saying
   so; one whose pod ended without its event reaching us is finished from the
   pod (``steps.finish_step``, exactly as the event would have); a ``scheduled``
   step whose ``step.ready`` was lost is announced again.
3. :func:`settle_builds`: a build a crash left unadvanced is advanced.
4. :func:`reap_pods`: pods JetBridge owns that no running step knows are
   deleted; ended pods past ``pod_retention_seconds`` are deleted once their log
   is in the log store. :func:`reap_secrets`: the Secret of a finished build that
   had one (``builds.has_secret``) is deleted.
5. :func:`reap_artifacts`: artifact rows no build needs are reclaimed.
6. :func:`reap_orphan_directories`: directories on the store with no row
   (and uploads cut short, ``archive.STAGING_PREFIX``) are removed.
7. :func:`relieve_pressure`: while the store is short of free space, the oldest
   artifacts no running build needs go first.

Deleting an artifact is crash-safe and exclusive. Its row is claimed by a
compare-and-set to ``reaping`` stamped with the claim's time (``reaping_at``),
committed; then the directory is deleted; then the row, if the claim is still
ours. On Postgres the rows are picked with ``SELECT … FOR UPDATE SKIP LOCKED``,
so two reapers take different rows instead of queueing; on SQLite every write
transaction holds the one writer lock (``BEGIN IMMEDIATE``), so the
compare-and-set alone is the claim. A directory with no row is claimed by
renaming it to ``.jetbridge-reaping-<claim time>-<name>``: a rename succeeds
once. A tick killed anywhere leaves a claim behind; once it is older than
``reaper_lease_seconds`` a later tick takes it over and finishes the work.
A deletion that fails is recorded in the report, its claim let go so the next
tick retries it, and the tick goes on.

Memory stays flat whatever the size of the tables and the store: rows are read
in keyset batches of ``reaper_batch_size``, the store is walked with
``os.scandir`` one directory at a time, and the report keeps counts plus a few
examples, never a list of everything.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import ARRAY, Row, and_, any_, bindparam, delete, exists, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from shared import artifacts, podstatus
from shared import status as st
from shared.archive import STAGING_PREFIX
from shared.builds import abort_build, advance_build, step_finished_event, step_ready_event
from shared.conditions import StepState, decide, may_still_run
from shared.db import ArtifactRow, BuildRow, SessionFactory, StepRow, transaction
from shared.events import EventSink
from shared.logstore import LogStore
from shared.plan import StepSpec
from shared.podspec import secret_name
from shared.runtime import PodDict, Runtime
from shared.settings import Settings
from shared.steps import finish_step

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: A result row of any columns, read by name.
AnyRow = Row[*tuple[Any, ...]]
#: Deletes an artifact's directory (root, subpath) and returns the bytes it freed.
Remover = Callable[[Path, str], int]

#: A directory the reaper is deleting: ``<prefix><claim time, unix seconds>-<old name>``.
REAPING_PREFIX = ".jetbridge-reaping-"
#: Where uploads with no build keep their artifacts (``artifacts.register``).
ADHOC_DIR = "adhoc"
ARTIFACTS_DIR = "artifacts"
#: Directories deleted at once: deleting is waiting on the volume; on a local ext4 disk four
#: threads delete small directories 2.6 times as fast as one, and more do not help there.
DELETE_WORKERS = 4
#: Errors a report keeps word for word; past this it only counts them (a store that
#: refuses every deletion must not make the report as big as the store).
MAX_ERRORS = 100
#: Examples a report keeps per category, enough to see what the counts are made of.
MAX_EXAMPLES = 5
#: A directory name stays under NAME_MAX (255) once the claim's prefix is put before it.
_MAX_CLAIMED_NAME = 200


def remove_directory(root: Path, subpath: str) -> int:
    """The reaper's remover: ``artifacts.remove_directory``, quick when there is nothing to remove.

    One ``lstat`` says a directory is not there (the row of an artifact whose
    directory a killed tick had already deleted, or never made); whatever is there
    goes through the store's own checks, which resolve the path component by component.
    """
    try:
        os.lstat(os.path.join(root, subpath))
    except FileNotFoundError:
        return 0
    return artifacts.remove_directory(root, subpath)


class DiskUsage(Protocol):
    """What ``shutil.disk_usage`` answers, as far as the reaper reads it."""

    @property
    def total(self) -> int: ...

    @property
    def free(self) -> int: ...


#: Every category a report counts, in the order it prints them.
CATEGORIES: Mapping[str, str] = {
    "timed_out_builds": "build(s) past their timeout, aborted",
    "lost_pods": "running step(s) whose pod vanished, errored",
    "lost_events": "ended pod(s) whose event was lost, recorded",
    "stalled_builds": "build(s) left unadvanced, advanced",
    "lost_announcements": "scheduled step(s) whose step.ready was lost, announced again",
    "stray_pods": "pod(s) no running step knows, deleted",
    "finished_pods": "ended pod(s) past their retention, deleted",
    "secrets": "Secret(s) of finished builds, deleted",
    "artifacts": "artifact(s) no build needs, reclaimed",
    "directories": "director(ies) with no row, removed",
    "staging": "upload(s) cut short, removed",
    "build_folders": "empty build folder(s), removed",
    "pressure": "artifact(s) reclaimed for free space",
    "tick": "pass(es) that could not finish",
}
#: Categories whose bytes are what the store got back.
_STORE_CATEGORIES = ("artifacts", "directories", "staging", "pressure")


@dataclass(kw_only=True)
class Tally:
    """One category of a report."""

    found: int = 0
    """Things that needed the reaper (in a dry run: what it would act on)."""
    done: int = 0
    """Put right by this tick."""
    bytes: int = 0
    """Bytes freed; in a dry run, what the rows say would be (sizes of ready artifacts)."""
    failed: int = 0
    """Attempts that failed; each is retried on the next tick."""
    examples: list[str] = field(default_factory=list)
    """The first few things found, as a person would name them."""


@dataclass(kw_only=True)
class ReapReport:
    """What one tick found and did, per category (see ``CATEGORIES``)."""

    dry_run: bool = False
    tallies: dict[str, Tally] = field(default_factory=lambda: {k: Tally() for k in CATEGORIES})
    errors: list[str] = field(default_factory=list)
    """What failed and why, the first ``MAX_ERRORS`` of them."""
    errors_dropped: int = 0
    notes: list[str] = field(default_factory=list)
    """What the tick could not look at, and why (no runtime, no store yet…)."""
    free_bytes: int | None = None
    """Free space on the store when the tick looked (``None``: not looked at)."""
    wanted_free_bytes: int | None = None
    """Free space the store should have (``store_min_free_bytes``/``_percent``)."""

    def found(self, category: str, example: str, *, size: int = 0) -> None:
        tally = self.tallies[category]
        tally.found += 1
        if self.dry_run:
            tally.bytes += size
        if len(tally.examples) < MAX_EXAMPLES:
            tally.examples.append(example)

    def done(self, category: str, *, count: int = 1, size: int = 0) -> None:
        tally = self.tallies[category]
        tally.done += count
        tally.bytes += size

    def error(self, category: str, what: str, error: BaseException) -> None:
        """Record (and log) a failure; the tick goes on and the next one retries."""
        self.tallies[category].failed += 1
        message = f"{what}: {error}" if str(error) else f"{what}: {type(error).__name__}"
        log.warning("reaper: %s", message)
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)
        else:
            self.errors_dropped += 1

    def note(self, text: str) -> None:
        log.info("reaper: %s", text)
        self.notes.append(text)

    @property
    def artifacts_found(self) -> int:
        return sum(self.tallies[c].found for c in ("artifacts", "pressure"))

    @property
    def artifacts_reaped(self) -> int:
        return sum(self.tallies[c].done for c in ("artifacts", "pressure"))

    @property
    def bytes_freed(self) -> int:
        return 0 if self.dry_run else sum(self.tallies[c].bytes for c in _STORE_CATEGORIES)

    @property
    def error_count(self) -> int:
        return len(self.errors) + self.errors_dropped

    def summary(self) -> str:
        """One line: what the tick did (or would do), the bytes, the errors."""
        parts = []
        for category, label in CATEGORIES.items():
            tally = self.tallies[category]
            count = tally.found if self.dry_run else tally.done
            if count and category != "tick":
                parts.append(f"{count} {label.split(',')[0]}")
        verb = "would put right" if self.dry_run else "put right"
        text = f"{verb}: {', '.join(parts)}" if parts else "nothing to reap"
        freed = sum(self.tallies[c].bytes for c in _STORE_CATEGORIES)
        if freed:
            text += f"; {_size(freed)} {'would be ' if self.dry_run else ''}freed"
        if self.error_count:
            text += f"; {self.error_count} error(s)"
        return text

    def lines(self) -> list[str]:
        """The report in full, a line per category that saw anything, then notes and space."""
        out = []
        for category, label in CATEGORIES.items():
            t = self.tallies[category]
            if not (t.found or t.done or t.failed):
                continue
            text = f"{category}: {label}: found {t.found}"
            if not self.dry_run:
                text += f", done {t.done}"
            if t.bytes:
                text += f", {_size(t.bytes)}"
            if t.failed:
                text += f", {t.failed} failed"
            out.append(text)
            out.extend(f"  {example}" for example in t.examples)
        if self.free_bytes is not None and self.wanted_free_bytes:
            out.append(
                f"store: {_size(self.free_bytes)} free, {_size(self.wanted_free_bytes)} wanted"
            )
        out.extend(f"note: {n}" for n in self.notes)
        return out

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (what the reaper function answers)."""
        return {
            "dry_run": self.dry_run,
            "categories": {
                k: {"found": t.found, "done": t.done, "bytes": t.bytes, "failed": t.failed}
                for k, t in self.tallies.items()
            },
            "errors": list(self.errors),
            "errors_dropped": self.errors_dropped,
            "notes": list(self.notes),
            "free_bytes": self.free_bytes,
            "wanted_free_bytes": self.wanted_free_bytes,
        }


def reap(
    sessions: SessionFactory,
    *,
    store_root: Path | None,
    clock: Clock,
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    logs: LogStore | None = None,
    sink: EventSink | None = None,
    remove: Remover = remove_directory,
    disk_usage: Callable[[Path], DiskUsage] = shutil.disk_usage,
    dry_run: bool = False,
) -> ReapReport:
    """One tick: every pass in turn (see the module docstring); returns what it found and did.

    Without ``runtime`` (and ``logs``) nothing that reads pods runs; without ``sink``
    nothing that announces. ``remove`` and ``disk_usage`` are the store's edges,
    replaceable in tests. ``dry_run`` changes nothing anywhere: no row, no
    directory, no pod, no event.
    """
    settings = settings or Settings()
    root = artifacts.require_root(store_root)
    report = ReapReport(dry_run=dry_run)
    knobs: dict[str, Any] = {
        "clock": clock,
        "settings": settings,
        "report": report,
        "dry_run": dry_run,
    }
    if sink is None:
        report.note("no event sink here: builds and steps were not resynced")
    else:
        with _pass(report, "build timeout"):
            abort_timed_out_builds(sessions, runtime=runtime, logs=logs, sink=sink, **knobs)
        if runtime is not None and logs is not None:
            with _pass(report, "step resync"):
                resync_steps(sessions, runtime=runtime, logs=logs, sink=sink, root=root, **knobs)
        with _pass(report, "build resync"):
            settle_builds(sessions, sink=sink, **knobs)
    if runtime is None or logs is None:
        report.note("no runtime here: pods were not looked at")
    else:
        with _pass(report, "pods"):
            reap_pods(sessions, runtime=runtime, logs=logs, **knobs)
        with _pass(report, "secrets"):
            reap_secrets(sessions, runtime=runtime, **knobs)
    with _pass(report, "artifacts"):
        reap_artifacts(sessions, root=root, remove=remove, **knobs)
    if not root.exists():
        report.note(f"the store {root} does not exist yet: nothing on it to scan")
    else:
        with _pass(report, "store scan"):
            reap_orphan_directories(sessions, root=root, remove=remove, **knobs)
        with _pass(report, "free space"):
            relieve_pressure(sessions, root=root, remove=remove, disk_usage=disk_usage, **knobs)
    log.info("reaper tick: %s", report.summary())
    return report


@contextlib.contextmanager
def _pass(report: ReapReport, name: str) -> Iterator[None]:
    """Run one pass of a tick: if it fails as a whole (the database gone, say), the rest still run."""
    try:
        yield
    except Exception as e:
        report.error("tick", f"the {name} pass stopped", e)


# --- stuck work ------------------------------------------------------------------------


def abort_timed_out_builds(
    sessions: SessionFactory,
    *,
    runtime: Runtime | None,
    logs: LogStore | None,
    sink: EventSink,
    clock: Clock,
    settings: Settings,
    report: ReapReport,
    dry_run: bool = False,
) -> None:
    """Abort every build still running ``build_timeout_seconds`` after it started."""
    timeout = settings.build_timeout_seconds
    if timeout <= 0:
        return
    now = clock()
    cut = now - timedelta(seconds=timeout)
    reason = f"it ran longer than the build timeout of {timeout}s (JETBRIDGE_BUILD_TIMEOUT_SECONDS)"
    # Aborted already, and running its ensure/on_abort hooks: those have their own deadlines.
    aborting = exists().where(StepRow.build_id == BuildRow.id, StepRow.status == st.ABORTED)
    for batch in _keyset(
        sessions,
        lambda last: (
            select(BuildRow.id, BuildRow.started_at)
            .where(
                BuildRow.status == st.STARTED,
                BuildRow.started_at < cut,
                ~aborting,
                BuildRow.id > last,
            )
            .order_by(BuildRow.id)
        ),
        settings.reaper_batch_size,
    ):
        for row in batch:
            report.found("timed_out_builds", f"build {row.id}, started {row.started_at:%F %T}")
            if dry_run:
                continue
            try:
                done = abort_build(
                    sessions,
                    build_id=row.id,
                    runtime=runtime,
                    logs=logs,
                    sink=sink,
                    clock=clock,
                    reason=reason,
                )
            except Exception as e:
                report.error("timed_out_builds", f"build {row.id} could not be aborted", e)
                continue
            if done.aborted:
                report.done("timed_out_builds")


def resync_steps(
    sessions: SessionFactory,
    *,
    runtime: Runtime,
    logs: LogStore,
    sink: EventSink,
    root: Path,
    clock: Clock,
    settings: Settings,
    report: ReapReport,
    dry_run: bool = False,
) -> None:
    """Put right the steps an event was lost for: running ones, then scheduled ones.

    A ``running`` step's pod is read from the runtime. Gone (and the step started
    more than ``reaper_grace_seconds`` ago, past any redelivery of its
    ``step.ready``): the step is errored, saying so. Ended (or doomed): the step is
    finished from the pod by ``finish_step``, as the lost event would have.
    A ``scheduled`` step whose pod has not been launched ``step_ready_resend_seconds``
    after it became ready is announced again, with the same event id.
    """
    now = clock()
    grace_cut = now - timedelta(seconds=settings.reaper_grace_seconds)
    patience = podstatus.Patience(
        image_pull_seconds=settings.image_pull_timeout_seconds,
        unschedulable_seconds=settings.unschedulable_timeout_seconds,
    )
    running = _keyset(
        sessions,
        lambda last: (
            select(
                StepRow.id,
                StepRow.build_id,
                StepRow.key,
                StepRow.name,
                StepRow.kind,
                StepRow.pod_name,
                StepRow.started_at,
            )
            .where(StepRow.status == st.RUNNING, StepRow.id > last)
            .order_by(StepRow.id)
        ),
        settings.reaper_batch_size,
    )
    for batch in running:
        for step in batch:
            what = f"{step.kind} {step.name!r} (step {step.id} of build {step.build_id})"
            category = "lost_pods"
            try:
                pod = runtime.read(step.pod_name) if step.pod_name else None
                if pod is None:
                    if step.started_at is not None and step.started_at > grace_cut:
                        continue  # its pod may still be on its way (a redelivered step.ready)
                    report.found("lost_pods", f"{what}: pod {step.pod_name} is gone")
                    if not dry_run and _error_lost_step(sessions, step, sink=sink, clock=clock):
                        report.done("lost_pods")
                    continue
                outcome = podstatus.outcome(
                    pod, kind=step.kind, name=step.name, now=now, patience=patience
                )
                if outcome is None:
                    continue  # still pending or running: its own event will come
                category = "lost_events"
                report.found("lost_events", f"{what}: pod {step.pod_name} {outcome.status}")
                if dry_run:
                    continue
                finish_step(
                    sessions,
                    pod=pod,
                    runtime=runtime,
                    logs=logs,
                    store_root=root,
                    sink=sink,
                    clock=clock,
                    delete_pod=settings.pod_retention_seconds == 0,
                    patience=patience,
                )
                report.done("lost_events")
            except Exception as e:
                report.error(category, f"{what} could not be resynced", e)
    _announce_again(
        sessions, sink=sink, clock=clock, settings=settings, report=report, dry_run=dry_run
    )


def _error_lost_step(
    sessions: SessionFactory, step: AnyRow, *, sink: EventSink, clock: Clock
) -> bool:
    """Move a running step whose pod vanished to ``errored``; ``False`` if it moved meanwhile."""
    message = (
        f"{step.kind} {step.name!r}: pod {step.pod_name} disappeared without reporting; "
        "the step is failed by the reaper"
    )
    with transaction(sessions) as session:
        moved = session.execute(
            update(StepRow)
            .where(
                StepRow.id == step.id,
                StepRow.status == st.RUNNING,
                _same(StepRow.pod_name, step.pod_name),
            )
            .values(status=st.ERRORED, error=message, finished_at=clock())
            .execution_options(synchronize_session=False)
        )
        if not moved.rowcount:  # type: ignore[attr-defined]
            return False
        row = session.get(StepRow, step.id)
        assert row is not None
        event = step_finished_event(step.build_id, row)
    sink.emit(event)
    advance_build(sessions, build_id=step.build_id, sink=sink, clock=clock)
    return True


def _announce_again(
    sessions: SessionFactory,
    *,
    sink: EventSink,
    clock: Clock,
    settings: Settings,
    report: ReapReport,
    dry_run: bool,
) -> None:
    """Announce again each step ``scheduled`` for longer than ``step_ready_resend_seconds``.

    A step becomes scheduled when the last step it waits for ends (or, with none,
    when its build starts); nothing records the moment itself, so it is read from those.
    """
    cut = clock() - timedelta(seconds=settings.step_ready_resend_seconds)
    for batch in _keyset(
        sessions,
        lambda last: (
            select(StepRow)
            .where(StepRow.status == st.SCHEDULED, StepRow.id > last)
            .order_by(StepRow.id)
        ),
        settings.reaper_batch_size,
        scalars=True,
    ):
        steps: Sequence[StepRow] = batch
        build_ids = {s.build_id for s in steps}
        with transaction(sessions) as session:
            started = {
                r.id: r.started_at
                for r in session.execute(
                    select(BuildRow.id, BuildRow.started_at).where(
                        _among(session, BuildRow.id, build_ids)
                    )
                )
            }
            ended = {
                (r.build_id, r.key): r.finished_at
                for r in session.execute(
                    select(StepRow.build_id, StepRow.key, StepRow.finished_at).where(
                        _among(session, StepRow.build_id, build_ids),
                        StepRow.status.in_(st.STEP_TERMINAL),
                    )
                )
            }
        for step in steps:
            times = [ended.get((step.build_id, k)) for k in step.depends_on]
            since = max((t for t in times if t is not None), default=started.get(step.build_id))
            if since is None or since > cut:
                continue
            report.found(
                "lost_announcements",
                f"{step.kind} {step.name!r} (step {step.id} of build {step.build_id}), "
                f"ready since {since:%F %T}",
            )
            if dry_run:
                continue
            try:
                sink.emit(step_ready_event(step.build_id, step))
            except Exception as e:
                report.error("lost_announcements", f"step {step.id} could not be announced", e)
                continue
            report.done("lost_announcements")


def settle_builds(
    sessions: SessionFactory,
    *,
    sink: EventSink,
    clock: Clock,
    settings: Settings,
    report: ReapReport,
    dry_run: bool = False,
) -> None:
    """Advance started builds with nothing in flight that ``advance_build`` would move.

    That is a build a crash stopped between recording a step and advancing the
    build: every step has ended but the build has not, or a step waits ``pending``
    though all it waits for has ended. ``advance_build`` is idempotent, so a
    build advanced meanwhile by its own event is left as it is.
    """
    in_flight = exists().where(
        StepRow.build_id == BuildRow.id, StepRow.status.in_((st.RUNNING, st.SCHEDULED))
    )
    for batch in _keyset(
        sessions,
        lambda last: (
            select(BuildRow.id)
            .where(BuildRow.status == st.STARTED, ~in_flight, BuildRow.id > last)
            .order_by(BuildRow.id)
        ),
        settings.reaper_batch_size,
    ):
        ids = [r.id for r in batch]
        with transaction(sessions) as session:
            steps: dict[int, list[StepState]] = {i: [] for i in ids}
            for s in session.execute(
                select(StepRow.build_id, StepRow.key, StepRow.status, StepRow.attempt, StepRow.spec)
                .where(_among(session, StepRow.build_id, ids))
                .order_by(StepRow.id)
            ):
                spec = StepSpec.from_json(s.spec)
                state = StepState(key=s.key, status=s.status, attempt=s.attempt, spec=spec)
                steps[s.build_id].append(state)
        for build_id in ids:
            if not _would_advance(steps[build_id]):
                continue
            report.found("stalled_builds", f"build {build_id}")
            if dry_run:
                continue
            try:
                advance_build(sessions, build_id=build_id, sink=sink, clock=clock)
            except Exception as e:
                report.error("stalled_builds", f"build {build_id} could not be advanced", e)
                continue
            report.done("stalled_builds")


def _would_advance(steps: Sequence[StepState]) -> bool:
    """Whether ``advance_build`` would move a build whose steps are ``steps`` (in plan order).

    A build with no steps at all is not one ``advance_build`` can judge; its timeout ends it.
    """
    if not steps:
        return False
    decision = decide(steps)
    return bool(decision.schedule or decision.skip or decision.retry or decision.outcome)


def reap_pods(
    sessions: SessionFactory,
    *,
    runtime: Runtime,
    logs: LogStore,
    clock: Clock,
    settings: Settings,
    report: ReapReport,
    dry_run: bool = False,
) -> None:
    """Delete the pods JetBridge owns that no running step needs.

    A pod whose step does not exist, is another attempt, or never had this pod
    (a launch that lost the race with an abort) goes at once. A pod of an ended
    step that still runs (an aborted step's) goes once its log is kept. An ended
    pod of an ended step goes ``pod_retention_seconds`` after it ended, once its
    log is kept. Pods of running steps are ``resync_steps``' business; pods
    without JetBridge's step labels are left alone.
    """
    now = clock()
    retention = timedelta(seconds=settings.pod_retention_seconds)
    pods = runtime.list()
    size = settings.reaper_batch_size
    for start in range(0, len(pods), size):
        chunk = [(pod, podstatus.pod_ref(pod)) for pod in pods[start : start + size]]
        ids = {ref.step_id for _, ref in chunk if ref is not None}
        with transaction(sessions) as session:
            steps = {
                s.id: s
                for s in session.execute(
                    select(
                        StepRow.id,
                        StepRow.build_id,
                        StepRow.key,
                        StepRow.name,
                        StepRow.kind,
                        StepRow.status,
                        StepRow.pod_name,
                        StepRow.attempt,
                        StepRow.finished_at,
                    ).where(_among(session, StepRow.id, ids))
                )
            }
        for pod, ref in chunk:
            if ref is None:
                continue
            step = steps.get(ref.step_id)
            current = (
                step is not None
                and step.build_id == ref.build_id
                and step.pod_name == ref.name
                and step.attempt == ref.attempt
            )
            if step is not None and current and step.status not in st.STEP_TERMINAL:
                continue
            if step is None or not current:
                category, why = "stray_pods", "no step knows it"
            elif not _ended(pod):
                category, why = "stray_pods", f"its step is {step.status}"
            else:
                ended_at = _ended_at(pod) or step.finished_at
                if ended_at is not None and now - ended_at < retention:
                    continue
                category, why = "finished_pods", f"ended {ended_at:%F %T}" if ended_at else "ended"
            report.found(category, f"pod {ref.name}: {why}")
            if dry_run:
                continue
            try:
                if step is not None and current:
                    _keep_log(runtime, logs, build_id=step.build_id, key=step.key, pod=ref.name)
                runtime.delete(ref.name)
            except Exception as e:
                report.error(category, f"pod {ref.name} could not be deleted", e)
                continue
            report.done(category)


def reap_secrets(
    sessions: SessionFactory,
    *,
    runtime: Runtime,
    clock: Clock,
    settings: Settings,
    report: ReapReport,
    dry_run: bool = False,
) -> None:
    """Delete the Secret of every finished build that has one, then clear its ``has_secret``.

    A build's Secret holds its steps' credentials (``steps.launch_step`` writes it,
    having set ``has_secret`` first, so no Secret exists that a row does not name).
    A finished build launches nothing more; a pod of it kept for its retention has
    had its env since it started, so the Secret can go at once.
    """
    after = 0
    while True:
        with transaction(sessions) as session:
            ids = list(
                session.scalars(
                    select(BuildRow.id)
                    .where(
                        BuildRow.has_secret.is_(True),
                        BuildRow.status.in_(st.BUILD_TERMINAL),
                        BuildRow.id > after,
                    )
                    .order_by(BuildRow.id)
                    .limit(settings.reaper_batch_size)
                )
            )
        if not ids:
            return
        after = ids[-1]
        for build_id in ids:
            name = secret_name(build_id)
            report.found("secrets", f"Secret {name}: build {build_id} has finished")
            if dry_run:
                continue
            try:
                runtime.delete_secret(name)
            except Exception as e:
                report.error("secrets", f"Secret {name} could not be deleted", e)
                continue
            with transaction(sessions) as session:
                session.execute(
                    update(BuildRow).where(BuildRow.id == build_id).values(has_secret=False)
                )
            report.done("secrets")


def _ended(pod: PodDict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _ended_at(pod: PodDict) -> datetime | None:
    """When the pod's step container ended, from its status (RFC 3339), if it says."""
    for container in (pod.get("status") or {}).get("containerStatuses") or ():
        finished = ((container.get("state") or {}).get("terminated") or {}).get("finishedAt")
        if isinstance(finished, str):
            try:
                moment = datetime.fromisoformat(finished)
            except ValueError:
                return None
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def _keep_log(runtime: Runtime, logs: LogStore, *, build_id: int, key: str, pod: str) -> None:
    """Make sure the step's log is in the log store before its pod may go; raises if it cannot."""
    if logs.read(build_id, key) is None:
        logs.write(build_id, key, runtime.logs(pod))


# --- artifacts -------------------------------------------------------------------------


def reap_artifacts(
    sessions: SessionFactory,
    *,
    root: Path,
    clock: Clock,
    settings: Settings,
    report: ReapReport,
    remove: Remover = remove_directory,
    dry_run: bool = False,
) -> None:
    """Reclaim every artifact row no build needs, and its directory.

    An artifact is not needed when its build has ended (and
    ``artifact_retention_seconds`` have passed since); when its build is gone (the
    pipeline was destroyed, leaving ``build_id`` NULL); when it is an upload with
    no build older than ``adhoc_retention_seconds``; when its ``expires_at`` has
    passed and no running build owns it; when it stayed ``creating`` although its
    step has ended (a failed step's outputs), or for ``reaper_grace_seconds`` with
    no step (an upload cut short); when a tick that claimed it died
    (``reaping`` for longer than ``reaper_lease_seconds``). With no retention, an
    artifact of a running build goes as soon as every step that reads it has ended.
    """
    now = clock()
    size = settings.reaper_batch_size
    expendable = _expendable(now, settings)
    last = 0
    while True:
        query = (
            select(*_CANDIDATE)
            .select_from(ArtifactRow)
            .outerjoin(BuildRow, BuildRow.id == ArtifactRow.build_id)
            .outerjoin(StepRow, StepRow.id == ArtifactRow.step_id)
            .where(ArtifactRow.id > last, expendable)
            .order_by(ArtifactRow.id)
            .limit(size)
        )
        picked = _claim_batch(
            sessions,
            query,
            category="artifacts",
            now=now,
            settings=settings,
            report=report,
            dry_run=dry_run,
            why=lambda row: _why(row, now),
        )
        if picked is None:
            break
        last, claimed = picked
        _delete_claimed(
            sessions,
            claimed,
            claimed_at=now,
            root=root,
            remove=remove,
            report=report,
            category="artifacts",
        )
    if settings.artifact_retention_seconds == 0:
        _reap_consumed(
            sessions,
            root=root,
            now=now,
            settings=settings,
            report=report,
            remove=remove,
            dry_run=dry_run,
        )


def _expendable(now: datetime, settings: Settings) -> ColumnElement[bool]:
    """The rows ``reap_artifacts`` takes, as one condition over artifacts, builds and steps."""
    a, b, s = ArtifactRow, BuildRow, StepRow
    grace_cut = now - timedelta(seconds=settings.reaper_grace_seconds)
    retention_cut = now - timedelta(seconds=settings.artifact_retention_seconds)
    adhoc_cut = now - timedelta(seconds=settings.adhoc_retention_seconds)
    adhoc = a.subpath.startswith(f"{ARTIFACTS_DIR}/{ADHOC_DIR}/")
    live = a.state != artifacts.REAPING
    build_over = b.status.in_(st.BUILD_TERMINAL)
    return or_(
        _abandoned_claim(now, settings),
        and_(live, a.build_id.is_(None), ~adhoc),
        and_(live, a.build_id.is_(None), adhoc, a.created_at < adhoc_cut),
        and_(live, build_over, or_(b.finished_at.is_(None), b.finished_at <= retention_cut)),
        and_(
            live,
            a.state == artifacts.CREATING,
            or_(
                s.status.in_(st.STEP_TERMINAL), and_(a.step_id.is_(None), a.created_at < grace_cut)
            ),
        ),
        and_(live, a.expires_at <= now, or_(a.build_id.is_(None), build_over)),
    )


def _abandoned_claim(now: datetime, settings: Settings) -> ColumnElement[bool]:
    """``reaping`` rows no live tick holds: let go, or claimed longer than the lease ago."""
    lease_cut = now - timedelta(seconds=settings.reaper_lease_seconds)
    return and_(
        ArtifactRow.state == artifacts.REAPING,
        or_(ArtifactRow.reaping_at.is_(None), ArtifactRow.reaping_at < lease_cut),
    )


#: What ``reap_artifacts`` reads of a candidate (``_why`` phrases it).
_CANDIDATE = (
    ArtifactRow.id,
    ArtifactRow.subpath,
    ArtifactRow.state,
    ArtifactRow.size,
    ArtifactRow.build_id,
    ArtifactRow.expires_at,
    BuildRow.status.label("build_status"),
    StepRow.status.label("step_status"),
)


def _why(row: AnyRow, now: datetime) -> str:
    """Why a row is reaped, for the report's examples."""
    if row.state == artifacts.REAPING:
        reason = "left half-reaped by an earlier tick"
    elif row.build_id is None and not row.subpath.startswith(f"{ARTIFACTS_DIR}/{ADHOC_DIR}/"):
        reason = "its build was deleted"
    elif row.build_status in st.BUILD_TERMINAL:
        reason = f"build {row.build_id} {row.build_status}"
    elif row.state == artifacts.CREATING:
        step = f"its step {row.step_status}" if row.step_status else "no step"
        reason = f"never completed ({step})"
    elif row.expires_at is not None and row.expires_at <= now:
        reason = f"expired {row.expires_at:%F %T}"
    elif row.build_id is None:
        reason = "an upload past its retention"
    else:
        reason = "every step that reads it has ended"
    return f"{row.subpath} ({row.state}): {reason}"


def _reap_consumed(
    sessions: SessionFactory,
    *,
    root: Path,
    now: datetime,
    settings: Settings,
    report: ReapReport,
    remove: Remover,
    dry_run: bool,
) -> None:
    """In running builds, reclaim the ready artifacts every reader of which has ended.

    Which steps read an artifact is in their stored specs (``InputBinding``: the
    producer's key and the artifact's name); steps that may still run (pending,
    scheduled, running) keep what they read.
    """
    for batch in _keyset(
        sessions,
        lambda last: (
            select(BuildRow.id)
            .where(BuildRow.status == st.STARTED, BuildRow.id > last)
            .order_by(BuildRow.id)
        ),
        settings.reaper_batch_size,
    ):
        for build in batch:
            with transaction(sessions) as session:
                ids = _consumed(session, build.id)
            if not ids:
                continue
            query = (
                select(*_CANDIDATE)
                .select_from(ArtifactRow)
                .join(BuildRow, BuildRow.id == ArtifactRow.build_id)
                .outerjoin(StepRow, StepRow.id == ArtifactRow.step_id)
                .where(ArtifactRow.id.in_(ids), ArtifactRow.state == artifacts.READY)
                .order_by(ArtifactRow.id)
            )
            picked = _claim_batch(
                sessions,
                query,
                category="artifacts",
                now=now,
                settings=settings,
                report=report,
                dry_run=dry_run,
                why=lambda row: _why(row, now),
            )
            if picked is not None:
                _delete_claimed(
                    sessions,
                    picked[1],
                    claimed_at=now,
                    root=root,
                    remove=remove,
                    report=report,
                    category="artifacts",
                )


def _consumed(session: Session, build_id: int) -> list[int]:
    """Ready artifacts of a running build that no step which may still run reads."""
    steps = session.execute(
        select(StepRow.id, StepRow.key, StepRow.status, StepRow.attempt, StepRow.spec).where(
            StepRow.build_id == build_id
        )
    ).all()
    key_of = {s.id: s.key for s in steps}
    needed: set[tuple[str, str]] = set()
    for s in steps:
        spec = StepSpec.from_json(s.spec)
        if may_still_run(s.status, s.attempt, spec):  # a failed step may get another attempt
            needed.update((binding.producer, binding.name) for binding in spec.inputs)
    rows = session.execute(
        select(ArtifactRow.id, ArtifactRow.step_id, ArtifactRow.name).where(
            ArtifactRow.build_id == build_id, ArtifactRow.state == artifacts.READY
        )
    ).all()
    return [r.id for r in rows if r.step_id in key_of and (key_of[r.step_id], r.name) not in needed]


def _claim_batch(
    sessions: SessionFactory,
    query: Any,
    *,
    category: str,
    now: datetime,
    settings: Settings,
    report: ReapReport,
    dry_run: bool,
    why: Callable[[AnyRow], str],
) -> tuple[int, list[AnyRow]] | None:
    """Pick one batch of candidates and claim them; ``None`` when there are none left.

    Returns the last id seen (the keyset cursor) and the rows this tick now holds.
    Postgres skips rows another reaper has locked; the claim itself is a
    compare-and-set, so whatever changed state since it was picked is left alone.
    """
    with transaction(sessions) as session:
        if not dry_run:
            query = query.with_for_update(skip_locked=True, of=ArtifactRow)
        rows = session.execute(query).all()
        if not rows:
            return None
        for row in rows:
            report.found(category, why(row), size=row.size or 0)
        if dry_run:
            return rows[-1].id, []
        claimed = session.execute(
            update(ArtifactRow)
            .where(
                _among(session, ArtifactRow.id, [r.id for r in rows]),
                or_(
                    ArtifactRow.state.in_((artifacts.CREATING, artifacts.READY)),
                    _abandoned_claim(now, settings),
                ),
            )
            .values(state=artifacts.REAPING, reaping_at=now)
            .returning(ArtifactRow.id, ArtifactRow.subpath)
            .execution_options(synchronize_session=False)
        ).all()
    return rows[-1].id, list(claimed)


def _delete_claimed(
    sessions: SessionFactory,
    claimed: Sequence[AnyRow],
    *,
    claimed_at: datetime,
    root: Path,
    remove: Remover,
    report: ReapReport,
    category: str,
) -> None:
    """Delete claimed artifacts' directories, then the rows still ours; let go of the rest."""
    gone: list[int] = []
    kept: list[int] = []
    freed = 0
    results = _remove_all(remove, root, [row.subpath for row in claimed])
    for row, outcome in zip(claimed, results, strict=True):
        if isinstance(outcome, Exception):
            report.error(category, f"artifact {row.subpath} could not be removed", outcome)
            kept.append(row.id)
        else:
            freed += outcome
            gone.append(row.id)
    mine = and_(ArtifactRow.state == artifacts.REAPING, ArtifactRow.reaping_at == claimed_at)
    with transaction(sessions) as session:
        deleted = 0
        if gone:
            result = session.execute(
                delete(ArtifactRow)
                .where(_among(session, ArtifactRow.id, gone), mine)
                .execution_options(synchronize_session=False)
            )
            deleted = result.rowcount  # type: ignore[attr-defined]
        if kept:  # let go: the next tick retries at once, not a lease later
            session.execute(
                update(ArtifactRow)
                .where(_among(session, ArtifactRow.id, kept), mine)
                .values(reaping_at=None)
                .execution_options(synchronize_session=False)
            )
    report.done(category, count=deleted, size=freed)


# --- the store -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Entry:
    """One directory found at ``artifacts/<folder>/<name>``."""

    folder: str
    name: str
    mtime: float

    @property
    def subpath(self) -> str:
        return f"{ARTIFACTS_DIR}/{self.folder}/{self.name}"


def reap_orphan_directories(
    sessions: SessionFactory,
    *,
    root: Path,
    clock: Clock,
    settings: Settings,
    report: ReapReport,
    remove: Remover = remove_directory,
    dry_run: bool = False,
) -> None:
    """Remove what is on the store with no row: ``artifacts/<build or adhoc>/<name>``.

    A directory no row names, untouched for ``reaper_grace_seconds``, is a crash's
    leftover, a restored backup or a manual copy. An upload's staging directory
    (``archive.STAGING_PREFIX``) goes once it is that old too, unless its artifact
    is still ``creating`` (the upload may still be running). A folder
    ``artifacts/<build>`` left empty goes when that build has ended or is gone.
    Nothing else on the store is touched (``lost+found``, files, links).
    """
    now = clock()
    grace_cut = (now - timedelta(seconds=settings.reaper_grace_seconds)).timestamp()
    lease_cut = (now - timedelta(seconds=settings.reaper_lease_seconds)).timestamp()
    base = root / ARTIFACTS_DIR
    batch: list[_Entry] = []

    def judge() -> None:
        _judge_entries(
            sessions,
            batch,
            root=root,
            now=now,
            grace_cut=grace_cut,
            lease_cut=lease_cut,
            report=report,
            remove=remove,
            dry_run=dry_run,
        )
        batch.clear()

    for folder in _directories(base, report):
        if not _is_build_folder(folder.name):
            continue
        for entry in _directories(Path(folder.path), report):
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue  # gone meanwhile (another reaper)
            batch.append(_Entry(folder=folder.name, name=entry.name, mtime=mtime))
            if len(batch) >= settings.reaper_batch_size:
                judge()
    judge()
    _remove_empty_build_folders(sessions, base, settings=settings, report=report, dry_run=dry_run)


def _is_build_folder(name: str) -> bool:
    return name == ADHOC_DIR or (name.isascii() and name.isdigit())


def _directories(path: Path, report: ReapReport) -> Iterator[os.DirEntry[str]]:
    """The directories in ``path`` (not links), read lazily; a folder that went is empty."""
    try:
        with os.scandir(path) as it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        yield entry
                except OSError:
                    continue
    except FileNotFoundError:
        return
    except OSError as e:
        report.error("directories", f"{path} could not be read", e)


def _judge_entries(
    sessions: SessionFactory,
    entries: Sequence[_Entry],
    *,
    root: Path,
    now: datetime,
    grace_cut: float,
    lease_cut: float,
    report: ReapReport,
    remove: Remover,
    dry_run: bool,
) -> None:
    """Decide a batch of store entries with one lookup, and remove those no row names."""
    if not entries:
        return
    wanted = set()
    for e in entries:
        if e.name.startswith(STAGING_PREFIX):
            handle = e.name[len(STAGING_PREFIX) :].split(".", 1)[0]
            wanted.add(f"{ARTIFACTS_DIR}/{e.folder}/{handle}")
        elif not e.name.startswith(REAPING_PREFIX):
            wanted.add(e.subpath)
    with transaction(sessions) as session:
        states = {
            r.subpath: r.state
            for r in session.execute(
                select(ArtifactRow.subpath, ArtifactRow.state).where(
                    _among(session, ArtifactRow.subpath, wanted)
                )
            )
        }
    doomed: list[tuple[_Entry, str]] = []
    for e in entries:
        if e.name.startswith(REAPING_PREFIX):
            claimed = _claim_time(e.name)
            if claimed is None or claimed >= lease_cut:
                continue  # another tick is deleting it
            category = "staging" if STAGING_PREFIX in e.name else "directories"
            what = f"{e.subpath}: left half-removed by an earlier tick"
        elif e.name.startswith(STAGING_PREFIX):
            handle = e.name[len(STAGING_PREFIX) :].split(".", 1)[0]
            if e.mtime >= grace_cut:
                continue
            if states.get(f"{ARTIFACTS_DIR}/{e.folder}/{handle}") == artifacts.CREATING:
                continue  # the upload may still be running: its row decides
            category, what = "staging", f"{e.subpath}: an upload cut short"
        else:
            if e.subpath in states or e.mtime >= grace_cut:
                continue
            category, what = "directories", f"{e.subpath}: no row names it"
        report.found(category, what)
        if not dry_run:
            doomed.append((e, category))
    _remove_entries(doomed, root=root, now=now, report=report, remove=remove)


def _claim_time(name: str) -> float | None:
    """The claim time in a ``.jetbridge-reaping-<time>-<name>`` directory's name."""
    stamp = name[len(REAPING_PREFIX) :].split("-", 1)[0]
    return float(stamp) if stamp.isdigit() else None


def _remove_entries(
    entries: Sequence[tuple[_Entry, str]],
    *,
    root: Path,
    now: datetime,
    report: ReapReport,
    remove: Remover,
) -> None:
    """Claim each directory by renaming it (a rename succeeds once), then delete the claimed."""
    claimed: list[tuple[_Entry, str, str]] = []
    for entry, category in entries:
        folder = root / ARTIFACTS_DIR / entry.folder
        name = f"{REAPING_PREFIX}{int(now.timestamp())}-{_unclaimed(entry.name)}"
        try:
            os.rename(folder / entry.name, folder / name)
        except FileNotFoundError:
            continue  # another reaper claimed it first
        except OSError as e:
            report.error(category, f"{entry.subpath} could not be claimed", e)
            continue
        claimed.append((entry, category, name))
    subpaths = [f"{ARTIFACTS_DIR}/{e.folder}/{name}" for e, _, name in claimed]
    for (entry, category, name), result in zip(
        claimed, _remove_all(remove, root, subpaths), strict=True
    ):
        if not isinstance(result, Exception):
            report.done(category, size=result)
            continue
        report.error(category, f"{entry.subpath} could not be removed", result)
        # Let go, stamped with time 0: the next tick retries at once, not a lease later.
        folder = root / ARTIFACTS_DIR / entry.folder
        released = f"{REAPING_PREFIX}0-{_unclaimed(entry.name)}"
        with contextlib.suppress(OSError):  # if not, it stays claimed: taken a lease from now
            os.rename(folder / name, folder / released)


def _unclaimed(name: str) -> str:
    """A directory's name without a claim's prefix, short enough to take one again."""
    if name.startswith(REAPING_PREFIX):
        name = name[len(REAPING_PREFIX) :].split("-", 1)[-1]
    return name[:_MAX_CLAIMED_NAME]


def _remove_all(remove: Remover, root: Path, subpaths: Sequence[str]) -> list[int | Exception]:
    """Remove directories a few at a time: the bytes each freed, or why it could not be.

    Deleting is waiting on the volume (more so on NFS or Filestore than on a local
    disk), so a few threads go faster than one. A kill (``BaseException``) is raised
    once the others have stopped, so nothing is half-started behind it.
    """
    if len(subpaths) < 2:
        return [_try(remove, root, s) for s in subpaths]
    with ThreadPoolExecutor(max_workers=DELETE_WORKERS) as pool:
        futures = [pool.submit(_try, remove, root, s) for s in subpaths]
    return [f.result() for f in futures]


def _try(remove: Remover, root: Path, subpath: str) -> int | Exception:
    try:
        return remove(root, subpath)
    except Exception as e:
        return e


def _remove_empty_build_folders(
    sessions: SessionFactory, base: Path, *, settings: Settings, report: ReapReport, dry_run: bool
) -> None:
    """Remove ``artifacts/<build>`` folders left empty, of builds that ended or are gone.

    No grace needed: a folder is made only for a build whose row exists and that
    is running, and ``rmdir`` refuses a folder that is not empty.
    """
    batch: list[os.DirEntry[str]] = []

    def judge() -> None:
        ids = [int(e.name) for e in batch]
        with transaction(sessions) as session:
            status = {
                r.id: r.status
                for r in session.execute(
                    select(BuildRow.id, BuildRow.status).where(_among(session, BuildRow.id, ids))
                )
            }
        for entry in batch:
            if status.get(int(entry.name), st.ABORTED) not in st.BUILD_TERMINAL:
                continue
            if dry_run:
                if _empty(entry.path):
                    report.found("build_folders", f"{ARTIFACTS_DIR}/{entry.name}")
                continue
            try:
                os.rmdir(entry.path)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    report.error("build_folders", f"{ARTIFACTS_DIR}/{entry.name}", e)
                continue
            report.found("build_folders", f"{ARTIFACTS_DIR}/{entry.name}")
            report.done("build_folders")
        batch.clear()

    for entry in _directories(base, report):
        if entry.name.isascii() and entry.name.isdigit():
            batch.append(entry)
            if len(batch) >= settings.reaper_batch_size:
                judge()
    if batch:
        judge()


def _empty(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False


# --- volume pressure -------------------------------------------------------------------


def relieve_pressure(
    sessions: SessionFactory,
    *,
    root: Path,
    clock: Clock,
    settings: Settings,
    report: ReapReport,
    remove: Remover = remove_directory,
    disk_usage: Callable[[Path], DiskUsage] = shutil.disk_usage,
    dry_run: bool = False,
) -> None:
    """While the store has less free space than it should, reclaim what retention keeps.

    What is wanted free is the larger of ``store_min_free_bytes`` and
    ``store_min_free_percent`` of the store. Only artifacts no running build needs
    are taken, oldest first: ready artifacts of ended builds (kept by
    ``artifact_retention_seconds``), then uploads with no build. Free space is
    read again after every batch, so no more is taken than needed.
    """
    usage = disk_usage(root)
    wanted = max(
        settings.store_min_free_bytes, usage.total * settings.store_min_free_percent // 100
    )
    report.free_bytes, report.wanted_free_bytes = usage.free, wanted
    if wanted <= 0 or usage.free >= wanted:
        return
    now = clock()
    need = wanted - usage.free
    groups = (
        BuildRow.status.in_(st.BUILD_TERMINAL),
        and_(
            ArtifactRow.build_id.is_(None),
            ArtifactRow.subpath.startswith(f"{ARTIFACTS_DIR}/{ADHOC_DIR}/"),
        ),
    )
    for group in groups:
        cursor: tuple[datetime, int] | None = None
        while need > 0:
            query = (
                select(
                    ArtifactRow.id,
                    ArtifactRow.subpath,
                    ArtifactRow.state,
                    ArtifactRow.size,
                    ArtifactRow.build_id,
                    ArtifactRow.created_at,
                )
                .select_from(ArtifactRow)
                .outerjoin(BuildRow, BuildRow.id == ArtifactRow.build_id)
                .where(ArtifactRow.state == artifacts.READY, group)
                .order_by(ArtifactRow.created_at, ArtifactRow.id)
                .limit(settings.reaper_batch_size)
            )
            if cursor is not None:
                created, last = cursor
                query = query.where(
                    or_(
                        ArtifactRow.created_at > created,
                        and_(ArtifactRow.created_at == created, ArtifactRow.id > last),
                    )
                )
            with transaction(sessions) as session:
                rows = session.execute(query).all()
            if not rows:
                break
            chosen = _enough(rows, need)
            cursor = (chosen[-1].created_at, chosen[-1].id)
            if dry_run:
                for row in chosen:
                    report.found(
                        "pressure", f"{row.subpath}: {_size(row.size or 0)}", size=row.size or 0
                    )
                need -= sum(r.size or 0 for r in chosen)
                continue
            picked = _claim_batch(
                sessions,
                select(ArtifactRow.id, ArtifactRow.subpath, ArtifactRow.size)
                .where(
                    ArtifactRow.id.in_([r.id for r in chosen]),
                    ArtifactRow.state == artifacts.READY,
                )
                .order_by(ArtifactRow.id),
                category="pressure",
                now=now,
                settings=settings,
                report=report,
                dry_run=False,
                why=lambda r: f"{r.subpath}: {_size(r.size or 0)}",
            )
            if picked is not None:
                _delete_claimed(
                    sessions,
                    picked[1],
                    claimed_at=now,
                    root=root,
                    remove=remove,
                    report=report,
                    category="pressure",
                )
            usage = disk_usage(root)
            report.free_bytes = usage.free
            need = wanted - usage.free
    if need > 0:
        report.note(
            f"the store is still short of free space ({_size(report.free_bytes or 0)} free, "
            f"{_size(wanted)} wanted): nothing else can go (artifacts of running builds never do)"
        )


def _enough(rows: Sequence[AnyRow], need: int) -> list[AnyRow]:
    """The first rows whose sizes add up to ``need`` (at least one)."""
    chosen: list[AnyRow] = []
    total = 0
    for row in rows:
        chosen.append(row)
        total += row.size or 0
        if total >= need:
            break
    return chosen


# --- helpers ---------------------------------------------------------------------------


def _keyset(
    sessions: SessionFactory,
    query: Callable[[int], Any],
    size: int,
    *,
    scalars: bool = False,
) -> Iterator[Sequence[Any]]:
    """Batches of ``query(last_id)`` rows, each read in its own short transaction.

    The query orders by id and filters ``id > last_id``; the cursor moves past each
    batch, so rows changed by handling them (or by another reaper) are not read twice.
    """
    last = 0
    while True:
        with transaction(sessions) as session:
            statement = query(last).limit(size)
            rows: Sequence[Any] = (
                session.scalars(statement).all() if scalars else session.execute(statement).all()
            )
        if not rows:
            return
        yield rows
        last = rows[-1].id


def _among(session: Session, column: Any, values: Collection[Any]) -> ColumnElement[bool]:
    """``column IN values``; on Postgres as one array parameter (``= ANY(…)``).

    A batch's thousand ids as a thousand parameters cost pg8000 about 70 ms a statement
    to send, far more than Postgres takes to run it; one array costs next to nothing.
    """
    if session.get_bind().dialect.name == "postgresql":
        array = bindparam(None, list(values), type_=ARRAY(column.type))
        return column == any_(array)  # type: ignore[no-any-return]
    return column.in_(values)  # type: ignore[no-any-return]


def _same(column: Any, value: Any) -> ColumnElement[bool]:
    return column.is_(None) if value is None else column == value  # type: ignore[no-any-return]


def _size(n: int) -> str:
    """``512 B``, ``1.5 KiB``, ``3.0 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
