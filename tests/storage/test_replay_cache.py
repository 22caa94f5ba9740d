"""The JWT replay cache in the database: a `jti` is accepted once per issuer, by every worker sharing it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cds_plugin.storage.database import Database
from cds_plugin.storage.replay_cache import DatabaseReplayCache

ISS = "https://ehr.example.org"


def _db(path: Path) -> Database:
    db = Database(f"sqlite:///{path}")
    db.migrate()
    return db


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "replay.sqlite3"


@pytest.fixture
def cache(db_path: Path):
    db = _db(db_path)
    yield DatabaseReplayCache(db)
    db.dispose()


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


def test_shared_between_two_workers_on_one_database(db_path: Path) -> None:
    """Covers req 192: two workers (two engines on one database file) refuse each other's jti."""
    db_a, db_b = _db(db_path), _db(db_path)
    try:
        worker_a, worker_b = DatabaseReplayCache(db_a), DatabaseReplayCache(db_b)
        assert worker_a.claim(ISS, "jti-x", _later()) is True
        assert worker_b.claim(ISS, "jti-x", _later()) is False
        assert worker_b.claim(ISS, "jti-y", _later()) is True
        assert worker_a.claim(ISS, "jti-y", _later()) is False
    finally:
        db_a.dispose()
        db_b.dispose()


def test_survives_restart(db_path: Path) -> None:
    """Covers req 192: a restart does not reopen the replay window."""
    db = _db(db_path)
    assert DatabaseReplayCache(db).claim(ISS, "persisted", _later()) is True
    db.dispose()
    db = _db(db_path)
    try:
        assert DatabaseReplayCache(db).claim(ISS, "persisted", _later()) is False
    finally:
        db.dispose()


def test_concurrent_claims_exactly_one_wins(db_path: Path) -> None:
    """Covers req 192: of many simultaneous claims of one jti over two engines, exactly one succeeds."""
    dbs = [_db(db_path), _db(db_path)]
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
