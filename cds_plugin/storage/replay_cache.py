"""JWT replay cache in the database, so every worker and replica refuses a `jti` seen once before.

While the database cannot be reached, claims fall back to this process's memory: hook calls keep being
answered (a CDS service that stops when its database does would take every card away) and a token
replayed to the same worker is still refused; only a replay to another worker or replica during the
outage could pass. The fallback is logged when it starts and ends; tokens live minutes, so its entries
are kept only until their tokens expire.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import UTC, datetime

import sqlalchemy as sa

from cds_plugin.storage.database import Database, jwt_replay

log = logging.getLogger(__name__)


class DatabaseReplayCache:
    """`claim()` is atomic: of two concurrent calls with the same (iss, jti), exactly one gets True."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._claims = 0
        self._local: dict[str, datetime] = {}  # key -> expiry, claims made while the database was down
        self._lock = threading.Lock()
        self.degraded = False

    def claim(self, iss: str, jti: str, expires_at: datetime) -> bool:
        """Record (iss, jti) until `expires_at`; False when it was already recorded and not expired."""
        key = hashlib.sha256(f"{iss}\n{jti}".encode()).hexdigest()
        now = datetime.now(UTC)
        if self._local and self._seen_locally(key, now):
            return False
        try:
            added = self._claim_in_database(key, now, expires_at)
        except sa.exc.SQLAlchemyError as exc:
            return self._claim_locally(key, now, expires_at, exc)
        if self.degraded:
            self.degraded = False
            log.warning("JWT replay cache: database reachable again; claims are shared again")
        return added

    def _seen_locally(self, key: str, now: datetime) -> bool:
        with self._lock:
            for stale in [k for k, exp in self._local.items() if exp < now]:
                del self._local[stale]
            return key in self._local

    def _claim_locally(self, key: str, now: datetime, expires_at: datetime, exc: Exception) -> bool:
        with self._lock:
            if not self.degraded:
                self.degraded = True
                log.error(
                    "JWT replay cache: database unavailable (%s); claims kept in this process until it "
                    "is back (a replay to another worker or replica is not detected meanwhile)",
                    type(exc).__name__,
                )
            if key in self._local and self._local[key] >= now:
                return False
            self._local[key] = expires_at
            return True

    def _claim_in_database(self, key: str, now: datetime, expires_at: datetime) -> bool:
        with self.db.engine.begin() as conn:
            # an expired entry of the same key no longer blocks (the token it guarded is dead anyway)
            conn.execute(sa.delete(jwt_replay).where(jwt_replay.c.key == key, jwt_replay.c.expires_at < now))
            added = self.db.insert_ignoring_duplicates(
                conn, jwt_replay, [{"key": key, "expires_at": expires_at}]
            )
        self._claims += 1
        if self._claims % 500 == 0:
            self.purge()
        return added == 1

    def purge(self) -> int:
        """Drop expired entries; returns how many."""
        with self.db.engine.begin() as conn:
            result = conn.execute(sa.delete(jwt_replay).where(jwt_replay.c.expires_at < datetime.now(UTC)))
        return result.rowcount or 0
