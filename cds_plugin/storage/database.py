"""The service's database: one SQLAlchemy engine shared by feedback, issued cards (and the patient
pseudonym and consideration of each), explanation pages and the JWT replay cache.

A SQLite file by default (WAL journal, synchronous commits, so an acknowledged write survives a crash);
any SQLAlchemy URL (PostgreSQL when several replicas share state) by setting. The schema is created or
migrated when the service starts, under a version number kept in the database itself.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

#: Cards we returned, so feedback joins to what was shown. No patient data here.
issued_cards = sa.Table(
    "issued_cards",
    metadata,
    sa.Column("card_uuid", sa.String(64), primary_key=True),
    sa.Column("service_id", sa.String(200), nullable=False, index=True),
    sa.Column("hook", sa.String(100), nullable=False),
    sa.Column("hook_instance", sa.String(200), nullable=False, index=True),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_version", sa.String(100)),
    sa.Column("suggestion_uuids", sa.JSON, nullable=False),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # sha256 of the canonical feedback item: the same feedback sent twice is stored once
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
    sa.Column("service_id", sa.String(200), nullable=False, index=True),
    sa.Column("card_uuid", sa.String(64), nullable=False, index=True),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("accepted_suggestions", sa.JSON, nullable=False),
    sa.Column("override_reason_system", sa.String(500)),
    sa.Column("override_reason_code", sa.String(200)),
    sa.Column("override_user_comment", sa.Text),
    sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)

#: JWT ids already accepted, shared by all workers and replicas through the database.
jwt_replay = sa.Table(
    "jwt_replay",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),  # sha256(iss + "\n" + jti)
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
)

#: What the explanation view shows for one card: the consideration, its explanations and the patient's
#: facts. This holds patient data, so it is reachable only with a signed link and expires.
explanations = sa.Table(
    "explanations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # unguessable (secrets.token_urlsafe)
    sa.Column("card_uuid", sa.String(64), nullable=False, index=True),
    sa.Column("service_id", sa.String(200), nullable=False),
    sa.Column("hook_instance", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("payload", sa.JSON, nullable=False),
)

#: Which patient and consideration each card was about, so an override keeps that consideration from the
#: patient for a while (override_store.py). The patient is an HMAC pseudonym, never an id.
card_topics = sa.Table(
    "card_topics",
    metadata,
    sa.Column("card_uuid", sa.String(64), primary_key=True),
    sa.Column("patient_key", sa.String(64), nullable=False, index=True),  # hex HMAC-SHA256
    sa.Column("topic", sa.String(600), nullable=False),  # the card's source.topic as `system|code`
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
)

#: Ordered migrations: index i upgrades from version i to i + 1.
MIGRATIONS: list[Callable[[Connection], None]] = [
    lambda conn: metadata.create_all(conn, tables=[issued_cards, feedback, jwt_replay]),
    lambda conn: metadata.create_all(conn, tables=[explanations]),
    lambda conn: metadata.create_all(conn, tables=[card_topics]),
]
SCHEMA_VERSION = len(MIGRATIONS)


def fit(column: sa.Column, value: str | None) -> str | None:
    """A client-supplied string as both backends can store it: NUL characters (which PostgreSQL refuses in
    text) replaced by U+FFFD, cut to the column's length (which PostgreSQL enforces and SQLite does not).

    Without this a well-formed request would be stored on SQLite but fail on PostgreSQL with a 503 that
    no retry can cure.
    """
    if value is None:
        return None
    value = value.replace("\x00", "\ufffd")
    length = getattr(column.type, "length", None)
    return value[:length] if length else value


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # Switching a new file to WAL needs an exclusive lock and SQLite answers "locked" at once, without
    # waiting, while another connection (a worker starting at the same time) does the same: retry.
    for attempt in range(100):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    """Owns the engine; `migrate()` brings the schema to the current version (safe to call concurrently)."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict = {"future": True, "pool_pre_ping": True}
        if url.startswith("sqlite"):
            path = url.split("sqlite:///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        self.engine: Engine = sa.create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> int:
        """Create or upgrade the schema; returns the version now in force."""
        with self.engine.begin() as conn:
            # serialize concurrent migrations (workers and replicas starting at once) before the first
            # look at the schema: otherwise two of them both create the version table and one fails
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
            elif self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, held until the commit
            metadata.create_all(conn, tables=[schema_version])
            row = conn.execute(sa.select(schema_version.c.version).where(schema_version.c.id == 1)).first()
            current = row[0] if row else 0
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"database schema version {current} is newer than this release supports "
                    f"({SCHEMA_VERSION}); upgrade cds-plugin"
                )
            for version in range(current, SCHEMA_VERSION):
                log.info("migrating database schema %d -> %d", version, version + 1)
                MIGRATIONS[version](conn)
            if row is None:
                conn.execute(schema_version.insert().values(id=1, version=SCHEMA_VERSION))
            elif current != SCHEMA_VERSION:
                conn.execute(
                    schema_version.update().where(schema_version.c.id == 1).values(version=SCHEMA_VERSION)
                )
        return SCHEMA_VERSION

    def ping(self) -> bool:
        """True when the database answers a trivial query (readiness)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False

    def insert_ignoring_duplicates(self, conn: Connection, table: sa.Table, rows: list[dict]) -> int:
        """Insert rows, skipping those whose unique key already exists; returns how many were new."""
        if not rows:
            return 0
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:  # portable, slower: one savepoint per row
            added = 0
            for row in rows:
                try:
                    with conn.begin_nested():
                        conn.execute(table.insert().values(**row))
                    added += 1
                except sa.exc.IntegrityError:
                    pass
            return added
        # preserve_rowcount: without it psycopg reports -1 for an INSERT (SQLAlchemy only keeps the count
        # of UPDATE and DELETE), and every row would look like a duplicate
        stmt = insert(table).values(rows).on_conflict_do_nothing().execution_options(preserve_rowcount=True)
        return max(conn.execute(stmt).rowcount, 0)

    def dispose(self) -> None:
        self.engine.dispose()
