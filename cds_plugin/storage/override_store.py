"""Overrides remembered per patient, so an overridden consideration is not shown again for a while.

When cards are issued, each card with a `source.topic` (the consideration, `system|code`) is recorded
with the patient's pseudonym (pseudonym.py; no patient id is stored). A card overridden through CDS
Hooks feedback (`outcome: overridden`, stored by the feedback store) then keeps that consideration from
that patient, for every service, until `override_snooze_days` after the feedback arrived. Both halves
live in the database, so this survives restarts and is shared by replicas; changing the setting applies
to past overrides too.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from cds_plugin.hooks.response import CDSResponse
from cds_plugin.storage.database import Database, card_topics, feedback, fit


def topic_key(system: str | None, code: str | None) -> str:
    """How a consideration is named here: `system|code`."""
    return f"{system or ''}|{code or ''}"


class OverrideStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def remember(self, patient_key: str, response: CDSResponse, now: datetime | None = None) -> int:
        """Record which patient and consideration each issued card with a topic is about."""
        issued_at = now or datetime.now(UTC)
        rows = [
            {
                "card_uuid": card.uuid,
                "patient_key": patient_key,
                "topic": fit(
                    card_topics.c.topic, topic_key(card.source.topic.system, card.source.topic.code)
                ),
                "issued_at": issued_at,
            }
            for card in response.cards
            if card.uuid and card.source.topic is not None and card.source.topic.code
        ]
        with self.db.engine.begin() as conn:
            return self.db.insert_ignoring_duplicates(conn, card_topics, rows)

    def overridden(self, patient_key: str, days: int, now: datetime | None = None) -> set[str]:
        """Topics of this patient's cards overridden in the last `days` days (by feedback arrival)."""
        if days <= 0:
            return set()
        since = (now or datetime.now(UTC)) - timedelta(days=days)
        query = (
            sa.select(card_topics.c.topic)
            .distinct()
            .join(feedback, feedback.c.card_uuid == card_topics.c.card_uuid)
            .where(
                card_topics.c.patient_key == patient_key,
                feedback.c.outcome == "overridden",
                feedback.c.received_at >= since,
            )
        )
        with self.db.engine.connect() as conn:
            return {row.topic for row in conn.execute(query)}

    def topics(self, card_uuids: Iterable[str]) -> dict[str, str]:
        """The topic recorded for each of these cards (tests, support)."""
        wanted = list(card_uuids)
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(card_topics.c.card_uuid, card_topics.c.topic).where(
                    card_topics.c.card_uuid.in_(wanted)
                )
            )
            return {r.card_uuid: r.topic for r in rows}
