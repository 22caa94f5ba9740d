"""Feedback endpoint (req 148; invariants cds-fb-1..3): validated, stored once, 200 after the commit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cds_plugin.settings import Settings
from cds_plugin.storage.database import feedback, issued_cards
from tests.helpers.databases import database_url  # noqa: F401  (a fixture)
from tests.web.conftest import pv_request

TS = "2026-11-29T10:00:00Z"


@pytest.fixture
def settings(tmp_path, database_url):  # noqa: F811
    """Every test here runs with the feedback in SQLite and in PostgreSQL (tests/helpers/databases.py)."""
    return Settings.load(environ={}, data_dir=str(tmp_path), database_url=database_url, jwt_required=False)


def item(**overrides):
    body = {
        "card": "c1",
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "s1"}],
        "outcomeTimestamp": TS,
    }
    body.update(overrides)
    return body


def rows(app):
    db = app.extensions["cds_plugin"].db
    with db.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(feedback).order_by(feedback.c.id))]


def test_feedback_joins_the_issued_card(app, client):
    call = client.post("/cds-services/echo-patient", json=pv_request()).get_json()
    card = call["cards"][0]
    suggestion = card["suggestions"][0]["uuid"]
    resp = client.post(
        "/cds-services/echo-patient/feedback",
        json={"feedback": [item(card=card["uuid"], acceptedSuggestions=[{"id": suggestion}])]},
    )
    assert resp.status_code == 200
    assert resp.get_data() == b"" and "Content-Type" not in resp.headers
    stored = rows(app)
    assert len(stored) == 1
    assert stored[0]["card_uuid"] == card["uuid"] and stored[0]["accepted_suggestions"] == [suggestion]
    with app.extensions["cds_plugin"].db.engine.connect() as conn:
        issued = conn.execute(sa.select(issued_cards)).first()._mapping
    assert issued["card_uuid"] == card["uuid"] and issued["suggestion_uuids"] == [suggestion]
    assert issued["hook_instance"] == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    assert issued["model_version"] == "test-1"


def test_same_feedback_twice_is_stored_once(app, client):
    body = {"feedback": [item(), item()]}
    assert client.post("/cds-services/echo-patient/feedback", json=body).status_code == 200
    assert client.post("/cds-services/echo-patient/feedback", json=body).status_code == 200
    assert len(rows(app)) == 1


def test_override_with_reason_and_comment(app, client):
    reason = {
        "reason": {"system": "http://example.org/r", "code": "na", "display": "Not applicable"},
        "userComment": "seen by cardiology",
    }
    body = {"feedback": [item(outcome="overridden", acceptedSuggestions=None, overrideReason=reason)]}
    del body["feedback"][0]["acceptedSuggestions"]
    assert client.post("/cds-services/echo-patient/feedback", json=body).status_code == 200
    stored = rows(app)[0]
    assert stored["outcome"] == "overridden" and stored["override_reason_code"] == "na"
    assert stored["override_user_comment"] == "seen by cardiology"


@pytest.mark.parametrize(
    ("fb", "expression"),
    [
        (item(outcome="maybe"), "feedback.0.outcome"),  # cds-fb-1
        ({"card": "c1", "outcome": "accepted", "outcomeTimestamp": TS}, "feedback.0"),  # cds-fb-2
        (item(outcome="overridden", overrideReason={}), "feedback.0.overrideReason"),  # cds-fb-3
        (item(outcomeTimestamp="2026-11-29 10:00"), "feedback.0.outcomeTimestamp"),
        (item(outcomeTimestamp="2026-11-29T10:00:00"), "feedback.0.outcomeTimestamp"),  # no offset
        (item(outcomeTimestamp="2026-13-45T10:00:00Z"), "feedback.0.outcomeTimestamp"),
        (item(outcomeTimestamp="9999-12-31T23:59:59-05:00"), "feedback.0.outcomeTimestamp"),  # no UTC
        (item(outcomeTimestamp="0001-01-01T00:00:00+05:00"), "feedback.0.outcomeTimestamp"),
        (
            {"outcome": "accepted", "acceptedSuggestions": [{"id": "s"}], "outcomeTimestamp": TS},
            "feedback.0.card",
        ),
    ],
)
def test_invalid_feedback_is_400_naming_the_field(app, client, fb, expression):
    resp = client.post("/cds-services/echo-patient/feedback", json={"feedback": [fb]})
    assert resp.status_code == 400
    assert resp.get_json()["issue"][0]["expression"] == [expression]
    assert rows(app) == []


def test_empty_feedback_list_is_400(client):
    assert client.post("/cds-services/echo-patient/feedback", json={"feedback": []}).status_code == 400


def test_feedback_for_unknown_service_is_404(client):
    assert client.post("/cds-services/nope/feedback", json={"feedback": [item()]}).status_code == 404


def test_database_down_gives_503_and_never_claims_success(app, client, tmp_path):
    db = app.extensions["cds_plugin"].db
    db.engine.dispose()
    db.engine = sa.create_engine(f"sqlite:///{tmp_path}/missing-dir/x.sqlite3")
    resp = client.post("/cds-services/echo-patient/feedback", json={"feedback": [item()]})
    assert resp.status_code == 503
    assert resp.get_json()["resourceType"] == "OperationOutcome"
    # hook calls still answer when the database is down
    assert client.post("/cds-services/echo-patient", json=pv_request()).status_code == 200
