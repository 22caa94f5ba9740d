"""JWT replay cache in the database, so every worker and replica refuses a `jti` seen once before."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import sqlalchemy as sa

from cds_plugin.storage.database import Database, jwt_replay


class DatabaseReplayCache:
    """`claim()` is atomic: of two concurrent calls with the same (iss, jti), exactly one gets True."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._claims = 0

    def claim(self, iss: str, jti: str, expires_at: datetime) -> bool:
        """Record (iss, jti) until `expires_at`; False when it was already recorded and not expired."""
        key = hashlib.sha256(f"{iss}\n{jti}".encode()).hexdigest()
        now = datetime.now(UTC)
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
