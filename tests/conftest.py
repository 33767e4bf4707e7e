"""Shared fixtures: every database test runs on SQLite and on the real Postgres server.

Postgres comes from ``JETBRIDGE_TEST_POSTGRES_URL`` (default: the server on
127.0.0.1:5432, database ``test``). Each test session gets a database of its
own, each test a fresh schema in it. When the server cannot be reached the
Postgres cases are skipped, saying so, unless ``JETBRIDGE_REQUIRE_POSTGRES=1``
(CI sets it), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from shared.db import make_engine, make_session_factory, upgrade
from tests.fakes import FakeClock
from tests.golden import UPDATE_OPTION

POSTGRES_URL = os.environ.get(
    "JETBRIDGE_TEST_POSTGRES_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("JETBRIDGE_REQUIRE_POSTGRES") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        UPDATE_OPTION,
        action="store_true",
        help="rewrite the golden files under tests/testdata from the code (`make golden`)",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when the run rewrites golden files instead of comparing (``make golden``)."""
    return bool(request.config.getoption(UPDATE_OPTION))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of this test session's own on the Postgres server; dropped at the end."""
    try:
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as e:  # any failure to connect means "no server"
        message = f"Postgres at {POSTGRES_URL} cannot be reached: {e}"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " (JETBRIDGE_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    name = f"jetbridge_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The session's Postgres database, with an empty schema."""
    reset = create_engine(postgres_database, isolation_level="AUTOCOMMIT")
    with reset.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    reset.dispose()
    return postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to an empty database: SQLite in a temp folder, or a fresh Postgres schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jetbridge.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine):  # type: ignore[no-untyped-def]
    return make_session_factory(engine)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
