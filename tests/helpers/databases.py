"""Database URLs for tests, over both supported backends: a SQLite file and a PostgreSQL server.

`database_url` is parametrized: `sqlite` (a file in the test's tmp_path) and `postgresql` (a fresh,
empty schema created for the test on the session's server, dropped after it; marked `postgres`). The
server is the one CDS_PLUGIN_TEST_POSTGRES_URL names, else a throwaway cluster the session starts when
PostgreSQL is installed (tests.helpers.postgres_cluster). Without either the postgresql cases skip,
unless CDS_PLUGIN_REQUIRE_POSTGRES=1 (CI, see .ci/run): then a missing or unreachable server fails
them. Use it from a conftest or a test module:

    from tests.helpers.databases import database_url  # noqa: F401  (a fixture)
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.helpers.postgres_cluster import POSTGRES_URL_ENV, session_postgres_url

REQUIRE_POSTGRES_ENV = "CDS_PLUGIN_REQUIRE_POSTGRES"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def _postgres_required() -> bool:
    return os.environ.get(REQUIRE_POSTGRES_ENV, "").strip().lower() in ("1", "true", "yes")


@functools.cache
def _server_problem(url: str) -> str | None:
    """Why the server cannot be used (None when it answers); checked once per session."""
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return f"PostgreSQL at {sa.make_url(url).render_as_string()} unreachable: {type(exc).__name__}"
    finally:
        engine.dispose()
    return None


def postgres_server_url() -> str:
    """The test server's URL; skips the test when there is none (fails when one is required)."""
    unusable = pytest.fail if _postgres_required() else pytest.skip
    url, problem = session_postgres_url()
    if not url:
        unusable(problem or f"no PostgreSQL for the postgres tests: {POSTGRES_URL_ENV} is not set")
    problem = _server_problem(url)
    if problem:
        unusable(problem)
    return url


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """The URL of a new, empty schema on the server (first in the search_path of every connection made
    with it: the service's tables land there); dropped with everything in it afterwards.

    A schema rather than a database per test: CREATE DATABASE costs about half a second.
    """
    name = f"cds_test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        try:
            url = sa.make_url(server_url)
            yield url.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(
                hide_password=False
            )
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql("SET lock_timeout = '20s'")
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        admin.dispose()


@contextmanager
def backend_url(backend: str, directory: Path) -> Iterator[str]:
    """A URL of an empty database of `backend` ("sqlite": a file in `directory`; "postgresql")."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'cds_plugin.sqlite3'}"
    elif backend == "postgresql":
        with fresh_postgres_database(postgres_server_url()) as url:
            yield url
    else:
        raise ValueError(backend)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once per backend."""
    with backend_url(request.param, tmp_path) as url:
        yield url
