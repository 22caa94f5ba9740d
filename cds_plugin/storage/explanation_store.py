"""Explanation pages' data: stored when a card is issued, read by the view, gone after a set time."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cds_plugin.storage.database import Database, explanations, fit


class ExplanationStore:
    def __init__(self, db: Database, ttl_s: int) -> None:
        self.db = db
        self.ttl = timedelta(seconds=ttl_s)

    @staticmethod
    def new_id() -> str:
        """An unguessable id (the link also needs a signed token)."""
        return secrets.token_urlsafe(24)

    def put(
        self, entry_id: str, card_uuid: str, service_id: str, hook_instance: str, payload: dict
    ) -> datetime:
        now = datetime.now(UTC)
        expires = now + self.ttl
        with self.db.engine.begin() as conn:
            conn.execute(
                explanations.insert().values(
                    id=entry_id,
                    card_uuid=card_uuid,
                    service_id=service_id,
                    hook_instance=fit(explanations.c.hook_instance, hook_instance),
                    created_at=now,
                    expires_at=expires,
                    payload=payload,
                )
            )
        return expires

    def get(self, entry_id: str) -> dict[str, Any] | None:
        """The entry, or None when absent or expired."""
        with self.db.engine.connect() as conn:
            row = conn.execute(
                sa.select(explanations).where(
                    explanations.c.id == entry_id, explanations.c.expires_at > datetime.now(UTC)
                )
            ).first()
        return dict(row._mapping) if row else None

    def update_payload(self, entry_id: str, payload: dict) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(explanations.update().where(explanations.c.id == entry_id).values(payload=payload))

    def purge(self) -> int:
        with self.db.engine.begin() as conn:
            result = conn.execute(
                sa.delete(explanations).where(explanations.c.expires_at <= datetime.now(UTC))
            )
        return result.rowcount or 0
