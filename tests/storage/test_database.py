"""Schema creation and migration, SQLite durability settings."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cds_plugin.storage.database import SCHEMA_VERSION, Database, schema_version


def test_migrate_creates_schema_and_is_idempotent(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/a/b.sqlite3")
    assert db.migrate() == SCHEMA_VERSION
    assert db.migrate() == SCHEMA_VERSION
    tables = set(sa.inspect(db.engine).get_table_names())
    assert {"issued_cards", "feedback", "jwt_replay", "schema_version"} <= tables
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(schema_version.c.version)).scalar_one() == SCHEMA_VERSION


def test_refuses_a_newer_schema(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/x.sqlite3")
    db.migrate()
    with db.engine.begin() as conn:
        conn.execute(schema_version.update().values(version=SCHEMA_VERSION + 1))
    with pytest.raises(RuntimeError, match="newer"):
        db.migrate()


def test_sqlite_is_wal_with_synchronous_commits(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/x.sqlite3")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_ping(tmp_path):
    assert Database(f"sqlite:///{tmp_path}/x.sqlite3").ping()
    down = Database(f"sqlite:///{tmp_path}/y.sqlite3")
    down.engine = sa.create_engine(f"sqlite:///{tmp_path}/missing-dir/y.sqlite3")
    assert not down.ping()
