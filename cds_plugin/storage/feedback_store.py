"""Persisting CDS Hooks feedback: one row per feedback item, the same item sent twice stored once."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import sqlalchemy as sa

from cds_plugin.hooks.feedback import FeedbackItem
from cds_plugin.storage.database import Database, feedback, fit


def fingerprint(service_id: str, item: FeedbackItem) -> str:
    """Stable hash of what the item says (not when it arrived), for de-duplication."""
    canonical = json.dumps({"service": service_id, **item.to_json()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class FeedbackStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, service_id: str, items: list[FeedbackItem]) -> int:
        """Store the items in one transaction; returns how many were new. Returns only after the commit."""
        now = datetime.now(UTC)
        rows = []
        seen: set[str] = set()
        c = feedback.c
        for item in items:
            fp = fingerprint(service_id, item)
            if fp in seen:
                continue
            seen.add(fp)
            reason = item.overrideReason
            coding = reason.reason if reason else None
            rows.append(
                {
                    "fingerprint": fp,
                    "service_id": service_id,
                    "card_uuid": fit(c.card_uuid, item.card),
                    "outcome": item.outcome,
                    "accepted_suggestions": [s.id for s in item.acceptedSuggestions or []],
                    "override_reason_system": fit(
                        c.override_reason_system, coding.system if coding else None
                    ),
                    "override_reason_code": fit(c.override_reason_code, coding.code if coding else None),
                    "override_user_comment": fit(
                        c.override_user_comment, reason.userComment if reason else None
                    ),
                    "outcome_timestamp": item.timestamp.astimezone(UTC),
                    "received_at": now,
                }
            )
        with self.db.engine.begin() as conn:
            return self.db.insert_ignoring_duplicates(conn, feedback, rows)

    def for_card(self, card_uuid: str) -> list[dict]:
        with self.db.engine.connect() as conn:
            result = conn.execute(
                sa.select(feedback).where(feedback.c.card_uuid == card_uuid).order_by(feedback.c.id)
            )
            return [dict(r._mapping) for r in result]

    def count(self) -> int:
        with self.db.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one()
