"""The database: tables, engine, sessions and migrations (SQLAlchemy 2, Alembic).

Postgres in the cluster, SQLite as the embedded default; the same tables and the
same queries serve both. State changes are compare-and-set updates
(``UPDATE … WHERE status = :expected``) made by the services, so two copies of a
handler can never both win. Driver errors that mean "the database is not there"
are wrapped into ``DatabaseUnavailable`` here, at the edge.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    exc,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from shared.errors import DatabaseUnavailable

SessionFactory = Callable[[], Session]


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as naive UTC and read back as aware UTC, on SQLite and Postgres alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class PipelineRow(Base):
    """A pipeline as set by a user: its YAML, a hash to notice changes, and whether it is paused."""

    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    config: Mapped[str] = mapped_column(Text)
    """The pipeline YAML as the user wrote it."""
    variables: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The ``((var))`` values it was set with."""
    config_hash: Mapped[str] = mapped_column(String(64))
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class BuildRow(Base):
    """One run of one job. ``event_id`` makes a redelivered event start nothing new."""

    __tablename__ = "builds"
    __table_args__ = (
        UniqueConstraint("pipeline_id", "job_name", "number", name="uq_builds_number"),
        UniqueConstraint("pipeline_id", "job_name", "event_id", name="uq_builds_event"),
        Index("ix_builds_status", "status"),
        Index("ix_builds_has_secret", "has_secret"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    job_name: Mapped[str] = mapped_column(String(200))
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str | None] = mapped_column(String(200))
    versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Resource versions the build is pinned to, by ``get`` name."""
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    node: Mapped[str | None] = mapped_column(String(253))
    """The node the build's first pod was scheduled on: with a ReadWriteOnce store,
    where every later pod of the build must run."""
    has_secret: Mapped[bool] = mapped_column(default=False, server_default=false())
    """The build's Secret (``podspec.secret_name``) holds its steps' credentials; the
    reaper deletes it once the build has finished, and clears this."""


class DeliveryRow(Base):
    """A webhook delivery that started builds: its id is unique per pipeline, so a redelivery
    finds the builds it made before and starts nothing (one delivery may start several jobs)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("pipeline_id", "delivery_id", name="uq_deliveries_delivery"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    delivery_id: Mapped[str] = mapped_column(String(200))
    """The sender's id: ``X-GitHub-Delivery``, ``X-Gitlab-Event-UUID``, the CloudEvent's id."""
    provider: Mapped[str] = mapped_column(String(16))
    """``github``, ``gitlab`` or ``generic``."""
    event: Mapped[str] = mapped_column(String(32))
    """``push`` or ``pull_request``."""
    commit: Mapped[str] = mapped_column(String(64))
    build_ids: Mapped[list[Any]] = mapped_column(default=list)
    received_at: Mapped[datetime]


class StepRow(Base):
    """One step of a build: what to run (``spec``), where it stands, and how it ended."""

    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("build_id", "key", name="uq_steps_key"),
        Index("ix_steps_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(100))
    """Plan position, dotted: ``2`` is the third step, ``1.0`` the first branch of the second."""
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    depends_on: Mapped[list[Any]] = mapped_column(default=list)
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    pod_name: Mapped[str | None] = mapped_column(String(63))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """What a resource script answered (version, metadata)."""
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class ArtifactRow(Base):
    """A directory on the artifact store. Its row exists before the directory and outlives it."""

    __tablename__ = "artifacts"
    __table_args__ = (
        Index("ix_artifacts_state", "state"),
        Index("ix_artifacts_build", "build_id"),
        Index("ix_artifacts_step", "step_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    handle: Mapped[str] = mapped_column(String(64), unique=True)
    build_id: Mapped[int | None] = mapped_column(ForeignKey("builds.id", ondelete="SET NULL"))
    step_id: Mapped[int | None] = mapped_column(ForeignKey("steps.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(200))
    subpath: Mapped[str] = mapped_column(String(300), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    size: Mapped[int | None] = mapped_column(BigInteger)
    digest: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    ready_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    reaping_at: Mapped[datetime | None]
    """When a reaper tick claimed this ``reaping`` row; ``None`` once no tick holds it (the
    tick that claimed it could not delete it and let go, or died long enough ago)."""


class ResourceVersionRow(Base):
    """A version of a resource, as a check, a webhook, a get or a put reported it.

    Versions belong to the resource's configuration (``scope``: its type and source), as in
    Concourse: a resource whose source changes starts a fresh history. ``check_order`` says
    which is newer (higher); see ``shared.versions``.
    """

    __tablename__ = "resource_versions"
    __table_args__ = (
        UniqueConstraint(
            "pipeline_id", "resource", "scope", "version_key", name="uq_resource_versions_key"
        ),
        Index("ix_resource_versions_order", "pipeline_id", "resource", "scope", "check_order"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    resource: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the resource's type and source (``constraints.resource_scope``)."""
    version: Mapped[dict[str, Any]] = mapped_column()
    version_key: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the version's canonical JSON (``constraints.version_key``)."""
    meta: Mapped[list[Any] | None] = mapped_column("metadata", JSON(none_as_null=True))
    """The ``metadata`` a get or put answered with (``[{"name", "value"}]``), if any."""
    check_order: Mapped[int] = mapped_column(Integer)
    origin: Mapped[str] = mapped_column(String(16))
    """What reported it first: ``check``, ``webhook``, ``get`` or ``put``."""
    first_seen: Mapped[datetime]


class BuildVersionRow(Base):
    """A resource version a build used (a get's, ``input``) or made (a put's, ``output``)."""

    __tablename__ = "build_versions"
    __table_args__ = (
        UniqueConstraint(
            "build_id", "direction", "name", "version_id", name="uq_build_versions_use"
        ),
        Index("ix_build_versions_job", "pipeline_id", "job_name"),
        Index("ix_build_versions_version", "version_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"))
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    job_name: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    """The get's or put's name in the job."""
    resource: Mapped[str] = mapped_column(String(200))
    version_id: Mapped[int] = mapped_column(ForeignKey("resource_versions.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(8))
    """``input`` or ``output``."""


#: SQLite engines → the lock their transactions take turns on within this process.
_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL and a busy timeout so threads share it."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Autocommit off in the driver; SQLAlchemy issues BEGIN itself, as "IMMEDIATE"
            # below, so two writers queue on the lock instead of failing mid-transaction.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        # Every SQLite transaction writes-locks the file; the threads of this process take
        # turns on a lock of their own first. SQLite's busy handler would poll with sleeps
        # growing to 100 ms, and a thread unlucky in its polls waits far longer than its turn.
        _WRITE_LOCKS[engine] = threading.RLock()
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def transaction(sessions: SessionFactory) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error, and a lost database becomes temporary."""
    bind = getattr(sessions, "kw", {}).get("bind")
    turn = _WRITE_LOCKS.get(bind) if bind is not None else None
    try:
        with turn or contextlib.nullcontext(), sessions() as session, session.begin():
            yield session
    except (exc.OperationalError, exc.InterfaceError) as e:
        if _is_disconnect(e):
            raise DatabaseUnavailable(f"the database cannot be reached: {e.orig}") from e
        raise


def _is_disconnect(e: exc.DBAPIError) -> bool:
    text = str(e.orig).lower()
    if e.connection_invalidated:
        return True
    markers = (
        "connection",
        "could not connect",
        "server closed",
        "network",
        "timeout",
        "database is locked",
        "terminating",
        "shutting down",
        "broken pipe",
    )
    return any(m in text for m in markers)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (``jetbridge db upgrade``)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
