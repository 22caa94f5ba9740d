"""The cards each call returned (uuids, service, hookInstance, time, model version; no patient data),
so that feedback can be joined to what the clinician was shown."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from cds_plugin.hooks.response import CDSResponse
from cds_plugin.storage.database import Database, fit, issued_cards


class CardLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self, service_id: str, hook: str, hook_instance: str, response: CDSResponse, model_version: str | None
    ) -> int:
        now = datetime.now(UTC)
        rows = [
            {
                "card_uuid": card.uuid,
                "service_id": service_id,
                "hook": hook,
                "hook_instance": fit(issued_cards.c.hook_instance, hook_instance),
                "issued_at": now,
                "model_version": model_version,
                "suggestion_uuids": [s.uuid for s in card.suggestions or [] if s.uuid],
            }
            for card in response.cards
            if card.uuid
        ]
        with self.db.engine.begin() as conn:
            return self.db.insert_ignoring_duplicates(conn, issued_cards, rows)

    def get(self, card_uuid: str) -> dict | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(issued_cards).where(issued_cards.c.card_uuid == card_uuid)).first()
            return dict(row._mapping) if row else None

    def model_versions(self, card_uuids: list[str], chunk: int = 500) -> dict[str, str | None]:
        """The model version each known card was issued with, in a few queries (unknown cards absent)."""
        wanted = sorted(set(card_uuids))
        found: dict[str, str | None] = {}
        with self.db.engine.connect() as conn:
            for start in range(0, len(wanted), chunk):
                part = wanted[start : start + chunk]
                rows = conn.execute(
                    sa.select(issued_cards.c.card_uuid, issued_cards.c.model_version).where(
                        issued_cards.c.card_uuid.in_(part)
                    )
                )
                found.update({r.card_uuid: r.model_version for r in rows})
        return found
