"""Deliveries: a verified webhook (or a git source's CloudEvent) in, its builds out, exactly once.

``receive_webhook`` answers ``POST /webhooks/<pipeline>``: it finds the pipeline's
secret, lets ``shared.webhooks`` verify and read the delivery, and ``deliver``
records it. ``deliver`` writes in one transaction, under the pipeline's row lock:
the delivery's row (unique per pipeline and delivery id) and one build per job the
push starts, each pinned to the pushed commit. A redelivery finds that row and
answers with the same builds, starting nothing; anything refused writes nothing.
``deliver_to_all`` does the same for every pipeline tracking the repository, for
Knative's GitHubSource and GitLabSource, whose events name no pipeline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.builds import Started, announce, paused_message, record_build
from shared.db import BuildRow, DeliveryRow, PipelineRow, SessionFactory, transaction
from shared.errors import ConfigurationError, NotFoundError, PipelinePaused
from shared.events import EventSink
from shared.pipeline import Pipeline
from shared.pipelines import find_pipeline, load
from shared.settings import Settings, env_name
from shared.versions import WEBHOOK, save_versions, scope_of
from shared.webhooks import (
    PIPELINE_NAME,
    Delivery,
    Ignored,
    Push,
    match,
    no_match_reason,
    parse_webhook,
    pipeline_from_path,
    tracking_resources,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: Lengths of a full commit id: SHA-1 and SHA-256 object names, in hex.
FULL_COMMIT_LENGTHS = (40, 64)
#: A pipeline's webhook secret, or ``None`` when it has none.
SecretLookup = Callable[[str], str | None]


@dataclass(frozen=True, kw_only=True)
class BuildRef:
    """A build a delivery started, as the answer names it."""

    id: int
    job: str
    number: int
    status: str


@dataclass(frozen=True, kw_only=True)
class Received:
    """What became of a delivery for one pipeline: the answer to the sender."""

    pipeline: str
    delivery: str
    provider: str
    event: str
    builds: tuple[BuildRef, ...] = ()
    created: bool = False
    """``True`` when this call started the builds; ``False`` for a redelivery or nothing to do."""
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "delivery": self.delivery,
            "provider": self.provider,
            "event": self.event,
            "created": self.created,
            "builds": [vars(b) for b in self.builds],
            "message": self.message,
        }


def secrets_from(settings: Settings) -> SecretLookup:
    """Pipelines' webhook secrets: ``webhook_secrets`` (JSON) first, then ``webhook_secrets_dir``."""
    mapping = _secret_map(settings.webhook_secrets)
    directory = settings.webhook_secrets_dir

    def lookup(pipeline: str) -> str | None:
        if pipeline in mapping:
            return mapping[pipeline]
        if directory is None or not PIPELINE_NAME.fullmatch(pipeline):
            return None
        return _read_secret(directory / pipeline, pipeline)

    return lookup


def _secret_map(raw: str) -> Mapping[str, str]:
    if not raw.strip():
        return {}
    # Messages here never quote the value: it is made of secrets.
    try:
        value = json.loads(raw)
    except ValueError:
        raise ConfigurationError(
            f"{env_name('webhook_secrets')} must be a JSON object of pipeline name → secret "
            "(its value is not shown: it holds secrets)"
        ) from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
    ):
        raise ConfigurationError(
            f"{env_name('webhook_secrets')} must map each pipeline name to a non-empty string"
        )
    return value


def _read_secret(path: Path, pipeline: str) -> str | None:
    try:
        # A Secret's file often ends in the newline of the file it was made from.
        return path.read_text(encoding="utf-8").rstrip("\r\n") or None
    except (FileNotFoundError, IsADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigurationError(
            f"cannot read the webhook secret of pipeline {pipeline!r} from {path}: {reason}"
        ) from None


def receive_webhook(
    sessions: SessionFactory,
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: SecretLookup,
    sink: EventSink,
    clock: Clock,
) -> Received:
    """``POST /webhooks/<pipeline>``: verified, read, recorded once; the pipeline's builds started."""
    pipeline = pipeline_from_path(path)
    delivery = parse_webhook(method, headers, body, pipeline=pipeline, secret=secrets(pipeline))
    return deliver(sessions, pipeline=pipeline, delivery=delivery, sink=sink, clock=clock)


def deliver(
    sessions: SessionFactory, *, pipeline: str, delivery: Delivery, sink: EventSink, clock: Clock
) -> Received:
    """Start the builds ``delivery`` asks of ``pipeline``, once per delivery id.

    Raises ``NotFoundError`` for an unknown pipeline and ``PipelinePaused`` for a paused
    one (a redelivery of a delivery it took before it was paused still answers with
    its builds). Writes nothing unless builds start.
    """
    if isinstance(delivery, Ignored):
        with transaction(sessions) as session:
            find_pipeline(session, pipeline)
        return _answer(pipeline, delivery, message=delivery.reason)
    started: list[Started] = []
    try:
        with transaction(sessions) as session:
            received = _record(session, pipeline, delivery, clock, started)
    except IntegrityError:
        # A copy of this delivery committed between our look and our write.
        started = []
        with transaction(sessions) as session:
            row = find_pipeline(session, pipeline)
            again = _recorded(session, row, delivery)
        if again is None:
            raise
        return again
    announce(sessions, started, sink=sink, clock=clock)
    return received


def _record(
    session: Session, pipeline: str, push: Push, clock: Clock, started: list[Started]
) -> Received:
    row = find_pipeline(session, pipeline, lock=True)
    existing = _recorded(session, row, push)
    if existing is not None:
        return existing
    if row.paused:
        raise PipelinePaused(paused_message(pipeline))
    model = load(row)
    triggers = match(model, push)
    if not triggers:
        return _answer(pipeline, push, message=no_match_reason(pipeline, push))
    _record_version(session, row, model, push, clock)
    for trigger in triggers:
        started.append(
            record_build(
                session,
                row,
                model,
                trigger.job,
                clock=clock,
                event_id=push.delivery,
                versions=trigger.versions,
            )
        )
    # In the same transaction as the builds: a copy of this delivery racing past the
    # pipeline's lock would fail on the unique (pipeline, delivery id), builds and all.
    session.add(
        DeliveryRow(
            pipeline_id=row.id,
            delivery_id=push.delivery,
            provider=push.provider,
            event=push.event,
            commit=push.commit,
            build_ids=[s.build_id for s in started],
            received_at=clock(),
        )
    )
    builds = tuple(
        BuildRef(id=s.build_id, job=t.job, number=s.number, status=s.status)
        for s, t in zip(started, triggers, strict=True)
    )
    jobs = ", ".join(
        f"{b.job} #{b.number}" + (" (pending)" if b.status == "pending" else "") for b in builds
    )
    return _answer(
        pipeline,
        push,
        builds=builds,
        created=True,
        message=f"{push.commit[:12]} on {push.branch}: started {jobs}",
    )


def _record_version(
    session: Session, row: PipelineRow, model: Pipeline, push: Push, clock: Clock
) -> None:
    """The pushed commit is the newest version of every resource the push moved: no check
    needs to find it. Only a full commit id is kept (a check names commits in full, and an
    abbreviated one would be a second version of the same commit)."""
    if len(push.commit) not in FULL_COMMIT_LENGTHS:
        return
    for name in tracking_resources(model, push):
        save_versions(
            session,
            pipeline_id=row.id,
            resource=name,
            scope=scope_of(model.resource(name)),
            versions=[{"ref": push.commit}],
            origin=WEBHOOK,
            now=clock(),
        )


def _recorded(session: Session, row: PipelineRow, delivery: Delivery) -> Received | None:
    """The answer already given to this delivery, if it was taken before."""
    record = session.scalars(
        select(DeliveryRow).where(
            DeliveryRow.pipeline_id == row.id, DeliveryRow.delivery_id == delivery.delivery
        )
    ).one_or_none()
    if record is None:
        return None
    builds = session.scalars(
        select(BuildRow).where(BuildRow.id.in_(record.build_ids)).order_by(BuildRow.id)
    ).all()
    refs = tuple(
        BuildRef(id=b.id, job=b.job_name, number=b.number, status=b.status) for b in builds
    )
    return _answer(
        row.name,
        delivery,
        builds=refs,
        message=f"delivery {delivery.delivery} was received before: it started nothing new",
    )


def _answer(
    pipeline: str,
    delivery: Delivery,
    *,
    builds: tuple[BuildRef, ...] = (),
    created: bool = False,
    message: str,
) -> Received:
    return Received(
        pipeline=pipeline,
        delivery=delivery.delivery,
        provider=delivery.provider,
        event=delivery.event,
        builds=builds,
        created=created,
        message=message,
    )


def deliver_to_all(
    sessions: SessionFactory, *, delivery: Delivery, sink: EventSink, clock: Clock
) -> Sequence[Received]:
    """A source's delivery to every pipeline with a job it starts; paused pipelines are skipped.

    The choice is made without locks and made again, under each pipeline's lock, by ``deliver``.
    """
    if isinstance(delivery, Ignored):
        log.info("delivery %s ignored: %s", delivery.delivery, delivery.reason)
        return ()
    with transaction(sessions) as session:
        rows = session.scalars(select(PipelineRow).order_by(PipelineRow.name)).all()
        chosen = []
        for row in rows:
            try:
                matched = bool(match(load(row), delivery))
            except Exception:  # a pipeline that no longer loads must not stop the others
                log.exception(
                    "pipeline %s does not load; delivery %s skips it", row.name, delivery.delivery
                )
                continue
            if matched:
                chosen.append(row.name)
    received = []
    for name in chosen:
        try:
            received.append(
                deliver(sessions, pipeline=name, delivery=delivery, sink=sink, clock=clock)
            )
        except (PipelinePaused, NotFoundError) as e:  # paused, or destroyed since the look
            log.info("delivery %s skips pipeline %s: %s", delivery.delivery, name, e)
    return received
