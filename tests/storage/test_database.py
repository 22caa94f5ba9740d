"""Schema creation and migration (SQLite and PostgreSQL), SQLite durability settings."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from cds_plugin.storage.database import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Database,
    jwt_replay,
    metadata,
    schema_version,
)


def test_migrate_creates_schema_and_is_idempotent(database_url):
    db = Database(database_url)
    try:
        assert db.migrate() == SCHEMA_VERSION
        assert db.migrate() == SCHEMA_VERSION
        tables = set(sa.inspect(db.engine).get_table_names())
        assert {"issued_cards", "feedback", "jwt_replay", "explanations", "schema_version"} <= tables
        with db.engine.connect() as conn:
            assert conn.execute(sa.select(schema_version.c.version)).scalar_one() == SCHEMA_VERSION
    finally:
        db.dispose()


def test_migrate_creates_missing_directories(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/a/b.sqlite3")
    assert db.migrate() == SCHEMA_VERSION
    assert (tmp_path / "a" / "b.sqlite3").exists()
    db.dispose()


def test_migrate_upgrades_from_version_1(database_url):
    """A version-1 database (no explanations table) is brought to the current version, data kept."""
    db = Database(database_url)
    try:
        with db.engine.begin() as conn:
            metadata.create_all(conn, tables=[schema_version])
            MIGRATIONS[0](conn)
            conn.execute(schema_version.insert().values(id=1, version=1))
            conn.execute(jwt_replay.insert().values(key="k", expires_at=sa.func.now()))
        assert "explanations" not in sa.inspect(db.engine).get_table_names()
        assert db.migrate() == SCHEMA_VERSION
        assert "explanations" in sa.inspect(db.engine).get_table_names()
        with db.engine.connect() as conn:
            assert conn.execute(sa.select(schema_version.c.version)).scalar_one() == SCHEMA_VERSION
            assert conn.execute(sa.select(sa.func.count()).select_from(jwt_replay)).scalar_one() == 1
    finally:
        db.dispose()


def test_concurrent_migrations_of_an_empty_database(database_url):
    """Replicas (and gunicorn workers) starting at once all migrate the same empty database: none fails."""
    dbs = [Database(database_url) for _ in range(6)]
    barrier = threading.Barrier(len(dbs))
    errors: list[BaseException] = []

    def start(db: Database) -> None:
        barrier.wait()
        try:
            db.migrate()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(d,)) for d in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == []
        with dbs[0].engine.connect() as conn:
            assert conn.execute(sa.select(schema_version)).all() == [(1, SCHEMA_VERSION)]
    finally:
        for d in dbs:
            d.dispose()


def test_refuses_a_newer_schema(database_url):
    db = Database(database_url)
    try:
        db.migrate()
        with db.engine.begin() as conn:
            conn.execute(schema_version.update().values(version=SCHEMA_VERSION + 1))
        with pytest.raises(RuntimeError, match="newer"):
            db.migrate()
    finally:
        db.dispose()


def test_sqlite_is_wal_with_synchronous_commits(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/x.sqlite3")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_ping(database_url):
    db = Database(database_url)
    assert db.ping()
    db.dispose()


def test_ping_when_down(tmp_path):
    down = Database(f"sqlite:///{tmp_path}/y.sqlite3")
    down.engine = sa.create_engine(f"sqlite:///{tmp_path}/missing-dir/y.sqlite3")
    assert not down.ping()
    unreachable = Database("postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=2")
    assert not unreachable.ping()
