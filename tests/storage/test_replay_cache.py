"""The JWT replay cache in the database: a `jti` is accepted once per issuer, by every worker sharing it.

Every test runs on SQLite and on PostgreSQL (tests/storage/conftest.py)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cds_plugin.settings import Settings
from cds_plugin.storage.database import Database
from cds_plugin.storage.replay_cache import DatabaseReplayCache
from cds_plugin.web.app import create_app
from tests.helpers.jwt_tokens import KeyPair, bearer, client_claims
from tests.web.conftest import make_registry, pv_request

ISS = "https://ehr.example.org"


def _db(url: str) -> Database:
    db = Database(url)
    db.migrate()
    return db


@pytest.fixture
def cache(db: Database) -> DatabaseReplayCache:
    return DatabaseReplayCache(db)


def _later(seconds: float = 300) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def test_first_claim_wins_second_is_refused(cache: DatabaseReplayCache) -> None:
    """Covers req 192 (jti protects against replay)."""
    assert cache.claim(ISS, "jti-1", _later()) is True
    assert cache.claim(ISS, "jti-1", _later()) is False
    assert cache.claim(ISS, "jti-2", _later()) is True


def test_same_jti_from_another_issuer_is_independent(cache: DatabaseReplayCache) -> None:
    """Covers req 192: a jti is unique per issuer, not across issuers."""
    assert cache.claim(ISS, "shared", _later()) is True
    assert cache.claim("https://other-ehr.example.org", "shared", _later()) is True
    assert cache.claim(ISS, "shared", _later()) is False


def test_expired_entry_no_longer_blocks(cache: DatabaseReplayCache) -> None:
    """Covers req 192: the cache only needs to hold a jti for its token's lifetime."""
    assert cache.claim(ISS, "old", datetime.now(UTC) - timedelta(seconds=1)) is True
    assert cache.claim(ISS, "old", _later()) is True
    assert cache.claim(ISS, "old", _later()) is False


def test_purge_drops_only_expired_entries(cache: DatabaseReplayCache) -> None:
    """Covers req 192: housekeeping never forgets a live jti."""
    cache.claim(ISS, "dead-1", datetime.now(UTC) - timedelta(seconds=5))
    cache.claim(ISS, "dead-2", datetime.now(UTC) - timedelta(seconds=5))
    cache.claim(ISS, "alive", _later())
    assert cache.purge() == 2
    assert cache.claim(ISS, "alive", _later()) is False


def test_shared_between_two_workers_on_one_database(database_url: str) -> None:
    """Covers req 192: two workers (two engines on one database file) refuse each other's jti."""
    db_a, db_b = _db(database_url), _db(database_url)
    try:
        worker_a, worker_b = DatabaseReplayCache(db_a), DatabaseReplayCache(db_b)
        assert worker_a.claim(ISS, "jti-x", _later()) is True
        assert worker_b.claim(ISS, "jti-x", _later()) is False
        assert worker_b.claim(ISS, "jti-y", _later()) is True
        assert worker_a.claim(ISS, "jti-y", _later()) is False
    finally:
        db_a.dispose()
        db_b.dispose()


def test_survives_restart(database_url: str) -> None:
    """Covers req 192: a restart does not reopen the replay window."""
    db = _db(database_url)
    assert DatabaseReplayCache(db).claim(ISS, "persisted", _later()) is True
    db.dispose()
    db = _db(database_url)
    try:
        assert DatabaseReplayCache(db).claim(ISS, "persisted", _later()) is False
    finally:
        db.dispose()


def test_concurrent_claims_exactly_one_wins(database_url: str) -> None:
    """Covers req 192: of many simultaneous claims of one jti over two engines, exactly one succeeds."""
    dbs = [_db(database_url), _db(database_url)]
    caches = [DatabaseReplayCache(d) for d in dbs]
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def claim(i: int) -> None:
        barrier.wait()
        ok = caches[i % 2].claim(ISS, "race", _later())
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for d in dbs:
        d.dispose()
    assert len(results) == 16
    assert results.count(True) == 1


def test_shared_between_two_replicas(database_url: str, tmp_path: Path) -> None:
    """Covers req 192: two app instances (replicas, each with its own data dir) on one database: a token
    accepted by one is refused by the other."""
    keys = KeyPair.generate("ES384", kid="k1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    replicas = []
    for name in ("a", "b"):
        settings = Settings.load(
            environ={},
            data_dir=str(tmp_path / name),
            database_url=database_url,
            trusted_issuers=[{"iss": ISS, "jwks_file": str(jwks)}],
        )
        replicas.append(create_app(settings, make_registry()))
    a, b = (app.test_client() for app in replicas)
    try:
        url = "http://localhost/cds-services/echo-patient"
        first = {"Authorization": bearer(keys.sign(client_claims(ISS, url)))}
        second = {"Authorization": bearer(keys.sign(client_claims(ISS, url)))}
        assert a.post("/cds-services/echo-patient", json=pv_request(), headers=first).status_code == 200
        assert b.post("/cds-services/echo-patient", json=pv_request(), headers=first).status_code == 401
        assert b.post("/cds-services/echo-patient", json=pv_request(), headers=second).status_code == 200
        assert a.post("/cds-services/echo-patient", json=pv_request(), headers=second).status_code == 401
    finally:
        for app in replicas:
            app.extensions["cds_plugin"].db.dispose()


def _break(db: Database, tmp_path: Path) -> None:
    """The database goes away: every statement now fails with an SQLAlchemy OperationalError."""
    import sqlalchemy as sa

    db.engine.dispose()
    db.engine = sa.create_engine(f"sqlite:///{tmp_path}/missing-dir/x.sqlite3")


def test_database_down_falls_back_to_this_process(tmp_path: Path, caplog) -> None:
    """Hook calls keep being answered while the database is down; a replay to the same worker is still
    refused, and the database is used again once it is back."""
    db = _db(f"sqlite:///{tmp_path}/replay.sqlite3")
    cache = DatabaseReplayCache(db)
    working = db.engine
    _break(db, tmp_path)
    assert cache.claim(ISS, "during", _later()) is True
    assert cache.degraded and "database unavailable" in caplog.text
    assert cache.claim(ISS, "during", _later()) is False
    db.engine = working  # back
    assert cache.claim(ISS, "after", _later()) is True and not cache.degraded
    assert cache.claim(ISS, "after", _later()) is False
    assert cache.claim(ISS, "during", _later()) is False  # still remembered here until it expires
    db.dispose()


def test_hook_calls_answer_with_jwt_while_the_database_is_down(tmp_path: Path) -> None:
    keys = KeyPair.generate("ES384", kid="k1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    settings = Settings.load(
        environ={}, data_dir=str(tmp_path / "d"), trusted_issuers=[{"iss": ISS, "jwks_file": str(jwks)}]
    )
    app = create_app(settings, make_registry())
    _break(app.extensions["cds_plugin"].db, tmp_path)
    client = app.test_client()
    url = "http://localhost/cds-services/echo-patient"
    token = {"Authorization": bearer(keys.sign(client_claims(ISS, url)))}
    assert client.post("/cds-services/echo-patient", json=pv_request(), headers=token).status_code == 200
    replayed = client.post("/cds-services/echo-patient", json=pv_request(), headers=token)
    assert replayed.status_code == 401 and replayed.get_data() == b""
