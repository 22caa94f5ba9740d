"""Overrides remembered per patient (override_store.py), on SQLite and on PostgreSQL (see conftest.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from cds_plugin.hooks.card import Card, Source
from cds_plugin.hooks.coding import Coding
from cds_plugin.hooks.feedback import FeedbackItem
from cds_plugin.hooks.response import CDSResponse
from cds_plugin.storage.database import Database, metadata
from cds_plugin.storage.feedback_store import FeedbackStore
from cds_plugin.storage.override_store import OverrideStore, topic_key
from cds_plugin.storage.pseudonym import Pseudonymizer

SNOMED = "http://snomed.info/sct"


def card(uuid: str, code: str | None) -> Card:
    topic = Coding(system=SNOMED, code=code, display="x") if code else None
    return Card(uuid=uuid, summary="s", indicator="info", source=Source(label="t", topic=topic))


def override(card_uuid: str) -> FeedbackItem:
    return FeedbackItem.model_validate(
        {
            "card": card_uuid,
            "outcome": "overridden",
            "overrideReason": {"userComment": "not now"},
            "outcomeTimestamp": "2026-11-29T10:00:00Z",
        }
    )


def test_an_override_holds_the_consideration_for_that_patient_only(db: Database) -> None:
    store, feedback = OverrideStore(db), FeedbackStore(db)
    keys = Pseudonymizer(b"0123456789abcdef-secret")
    alice, bob = keys.patient_key("https://ehr", "alice"), keys.patient_key("https://ehr", "bob")
    assert store.remember(alice, CDSResponse(cards=[card("a1", "44054006"), card("a2", "38341003")])) == 2
    assert store.remember(bob, CDSResponse(cards=[card("b1", "44054006"), card("b2", None)])) == 1
    assert store.overridden(alice, 90) == set()
    feedback.save("svc", [override("a1"), override("b-unknown")])
    assert store.overridden(alice, 90) == {topic_key(SNOMED, "44054006")}
    assert store.overridden(bob, 90) == set()
    assert store.overridden(alice, 0) == set()  # off
    later = datetime.now(UTC) + timedelta(days=91)
    assert store.overridden(alice, 90, now=later) == set()  # the snooze ended
    assert store.overridden(alice, 120, now=later) == {topic_key(SNOMED, "44054006")}
    assert store.topics(["a1", "a2", "b1"]) == {
        "a1": f"{SNOMED}|44054006",
        "a2": f"{SNOMED}|38341003",
        "b1": f"{SNOMED}|44054006",
    }


def test_the_same_card_twice_is_kept_once(db: Database) -> None:
    store = OverrideStore(db)
    response = CDSResponse(cards=[card("c1", "1")])
    assert store.remember("k" * 64, response) == 1
    assert store.remember("k" * 64, response) == 0


def test_pseudonyms():
    keys = Pseudonymizer(b"0123456789abcdef-secret")
    key = keys.patient_key("https://ehr", "alice")
    assert len(key) == 64 and "alice" not in key
    assert key == keys.patient_key("https://ehr", "Patient/alice")
    assert key != keys.patient_key("https://other-ehr", "alice")  # ids are unique per EHR only
    assert key != Pseudonymizer(b"another secret, 16+").patient_key("https://ehr", "alice")
    assert "secret" not in repr(keys)


def test_no_patient_id_is_stored(db: Database) -> None:
    store = OverrideStore(db)
    key = Pseudonymizer(b"0123456789abcdef-secret").patient_key("https://ehr", "patient-alice-42")
    store.remember(key, CDSResponse(cards=[card("c9", "123")]))
    with db.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                assert "patient-alice-42" not in repr(tuple(row)), table.name
