"""Feedback store, card log and explanation store, each on SQLite and on PostgreSQL (see conftest.py).

Both backends must take the same well-formed input: PostgreSQL enforces column lengths and refuses NUL
characters in text, where SQLite does neither.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from cds_plugin.hooks.card import Card, Source, Suggestion
from cds_plugin.hooks.feedback import FeedbackItem
from cds_plugin.hooks.response import CDSResponse
from cds_plugin.storage.card_log import CardLog
from cds_plugin.storage.database import Database, explanations
from cds_plugin.storage.explanation_store import ExplanationStore
from cds_plugin.storage.feedback_store import FeedbackStore

TS = "2026-11-29T10:00:00+02:00"


def accepted(card: str = "c1", suggestion: str = "s1", ts: str = TS) -> FeedbackItem:
    return FeedbackItem.model_validate(
        {
            "card": card,
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": suggestion}],
            "outcomeTimestamp": ts,
        }
    )


def overridden(card: str = "c1", **reason) -> FeedbackItem:
    return FeedbackItem.model_validate(
        {"card": card, "outcome": "overridden", "overrideReason": reason, "outcomeTimestamp": TS}
    )


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored in UTC), PostgreSQL aware ones."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_feedback_round_trip(db: Database) -> None:
    store = FeedbackStore(db)
    reason = {"reason": {"system": "http://example.org/r", "code": "na"}, "userComment": "seen – ok ✓"}
    assert store.save("svc", [accepted("c1", "s1"), overridden("c1", **reason)]) == 2
    first, second = store.for_card("c1")
    assert first["outcome"] == "accepted" and first["accepted_suggestions"] == ["s1"]
    assert utc(first["outcome_timestamp"]) == datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    assert second["override_reason_system"] == "http://example.org/r"
    assert second["override_reason_code"] == "na" and second["override_user_comment"] == "seen – ok ✓"
    assert second["accepted_suggestions"] == []
    assert store.count() == 2


def test_feedback_duplicates_stored_once_and_counted_as_not_new(db: Database) -> None:
    store = FeedbackStore(db)
    assert store.save("svc", [accepted(), accepted(), accepted("c2")]) == 2
    assert store.save("svc", [accepted(), accepted("c3")]) == 1
    assert store.save("svc", [accepted()]) == 0
    assert store.save("other-svc", [accepted()]) == 1  # the service is part of what was said
    assert store.count() == 4


def test_feedback_a_thousand_items_in_one_request(db: Database) -> None:
    store = FeedbackStore(db)
    items = [accepted(f"card-{i}") for i in range(1000)]
    assert store.save("svc", items) == 1000
    assert store.save("svc", items) == 0
    assert store.count() == 1000


def test_feedback_concurrent_duplicate_saves_store_each_item_once(database_url: str) -> None:
    """Eight writers (two engines, as two workers) send overlapping batches at once."""
    dbs = [Database(database_url) for _ in range(2)]
    dbs[0].migrate()
    stores = [FeedbackStore(d) for d in dbs]
    batches = [[accepted(f"card-{(w + j) % 12}") for j in range(6)] for w in range(8)]
    new: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(batches))

    def write(w: int) -> None:
        barrier.wait()
        for _ in range(3):
            added = stores[w % 2].save("svc", batches[w])
            with lock:
                new.append(added)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert len(new) == 24
        assert sum(new) == 12  # every distinct item counted new exactly once
        with dbs[0].engine.connect() as conn:
            per_card = dict(
                conn.execute(sa.text("SELECT card_uuid, count(*) FROM feedback GROUP BY card_uuid")).all()
            )
        assert per_card == {f"card-{i}": 1 for i in range(12)}
    finally:
        for d in dbs:
            d.dispose()


def test_feedback_with_over_long_codes_and_nul_characters_is_stored_on_every_backend(db: Database) -> None:
    """Valid on the wire, so stored (not a 503 that retries cannot cure): NUL replaced, codes cut to size."""
    store = FeedbackStore(db)
    long_system = "http://example.org/" + "s" * 600
    items = [
        overridden("c1", reason={"system": long_system, "code": "c" * 300}),
        overridden("c2", userComment="before\x00after"),
        accepted("c\x003", "s\x00"),
    ]
    assert store.save("svc", items) == 3
    row = store.for_card("c1")[0]
    assert row["override_reason_system"] == long_system[:500] and row["override_reason_code"] == "c" * 200
    assert store.for_card("c2")[0]["override_user_comment"] == "before\ufffdafter"
    assert store.for_card("c\ufffd3")[0]["accepted_suggestions"] == ["s\x00"]
    assert store.save("svc", items) == 0  # de-duplicated on what was sent, not on what was stored


def _response(*uuids: str) -> CDSResponse:
    cards = [
        Card(
            uuid=u,
            summary="Consider it",
            indicator="info",
            source=Source(label="Test"),
            selectionBehavior="any",
            suggestions=[Suggestion(label="Do", uuid=f"{u}-s1"), Suggestion(label="Or", uuid=f"{u}-s2")],
        )
        for u in uuids
    ]
    return CDSResponse(cards=cards)


def test_card_log_records_and_ignores_a_repeat(db: Database) -> None:
    log = CardLog(db)
    assert log.record("svc", "patient-view", "hi-1", _response("a", "b"), "m-1") == 2
    assert log.record("svc", "patient-view", "hi-1", _response("a"), "m-1") == 0
    row = log.get("a")
    assert row["service_id"] == "svc" and row["hook"] == "patient-view" and row["hook_instance"] == "hi-1"
    assert row["suggestion_uuids"] == ["a-s1", "a-s2"] and row["model_version"] == "m-1"
    assert utc(row["issued_at"]) <= datetime.now(UTC)
    assert log.get("missing") is None


def test_card_log_takes_any_hook_instance(db: Database) -> None:
    log = CardLog(db)
    assert log.record("svc", "patient-view", "h" * 300 + "\x00", _response("a"), None) == 1
    assert log.get("a")["hook_instance"] == "h" * 200


def test_explanation_store_round_trip_update_expiry_and_purge(db: Database) -> None:
    store = ExplanationStore(db, ttl_s=3600)
    payload = {"consideration": "Hypertension", "facts": [{"text": "BP 150/95 – high ✓"}], "p": 0.42}
    entry = store.new_id()
    expires = store.put(entry, "card-1", "svc", "hi-1", payload)
    assert expires > datetime.now(UTC) + timedelta(minutes=59)
    row = store.get(entry)
    assert row["payload"] == payload and row["card_uuid"] == "card-1" and row["hook_instance"] == "hi-1"
    store.update_payload(entry, {**payload, "ig": [1, 2]})
    assert store.get(entry)["payload"]["ig"] == [1, 2]

    old = store.new_id()
    store.put(old, "card-2", "svc", "h" * 300, payload)
    with db.engine.begin() as conn:
        conn.execute(
            explanations.update()
            .where(explanations.c.id == old)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert store.get(old) is None
    assert store.purge() == 1
    assert store.get(entry) is not None
    assert store.get("missing") is None
