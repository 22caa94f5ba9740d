"""The model failing inside a call: 500 with an OperationOutcome, no cards at all (never some of them),
nothing recorded as issued, and no patient data in the answer or the log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from cds_plugin.services import considerations
from cds_plugin.settings import Settings
from cds_plugin.storage.database import issued_cards
from cds_plugin.web.app import create_app

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures" / "requests"
SECRET = "Patient Jane Q. Example born 1961-04-02"


@pytest.fixture(scope="module")
def app(card_model, tmp_path_factory):
    settings = Settings.load(
        environ={},
        data_dir=str(tmp_path_factory.mktemp("fail")),
        jwt_required=False,
        model_path=str(card_model),
        min_card_probability=0.0,  # three cards when nothing fails
        min_card_odds_ratio=0.0,
    )
    return create_app(settings)


def _issued(app) -> int:
    with app.extensions["cds_plugin"].db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(issued_cards)).scalar_one()


def _fail(*_args, **_kwargs):
    raise RuntimeError(SECRET)


def _call(app, service="diagnosis-considerations", name="diabetes-adult-2025.patient-view.json"):
    body = json.loads((FIXTURES / name).read_text())
    return app.test_client().post(f"/cds-services/{service}", json=body)


@pytest.mark.parametrize("where", ["assess", "explain"])
def test_model_failure_is_a_500_outcome_without_cards(app, monkeypatch, caplog, where):
    engine = considerations.load_engine()
    assert len(_call(app).get_json()["cards"]) == 3  # the same call works without the fault
    before = _issued(app)
    monkeypatch.setattr(engine, where, _fail)
    with caplog.at_level(logging.DEBUG):
        resp = _call(app)
    assert resp.status_code == 500
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome" and "cards" not in body
    assert body["issue"][0]["code"] == "exception"
    text = resp.get_data(as_text=True) + caplog.text
    assert SECRET not in text and "Traceback" not in resp.get_data(as_text=True)
    assert "RuntimeError" in caplog.text  # the log says what failed, without the message
    assert _issued(app) == before


def test_explanation_failing_for_the_second_card_still_gives_no_cards(app, monkeypatch):
    """All explanations are computed before any card is built: a failure part-way leaves nothing."""
    engine = considerations.load_engine()
    real = engine.explain
    calls = []

    def explain_then_fail(assessment, targets, **kwargs):
        calls.append(targets)
        result = real(assessment, targets, **kwargs)
        if isinstance(result, list) and len(result) > 1:
            raise RuntimeError(SECRET)
        return result

    monkeypatch.setattr(engine, "explain", explain_then_fail)
    resp = _call(app)
    assert calls and resp.status_code == 500 and "cards" not in resp.get_json()


def test_order_review_failing_on_the_draft_baseline_gives_no_cards(app, monkeypatch):
    """Order review assesses twice (with and without the draft): the second failing drops all cards."""
    engine = considerations.load_engine()
    real = engine.assess
    seen = []

    def second_fails(record, *args, **kwargs):
        seen.append(1)
        if len(seen) == 2:
            raise RuntimeError(SECRET)
        return real(record, *args, **kwargs)

    monkeypatch.setattr(engine, "assess", second_fails)
    resp = _call(app, "order-sign-review", "hypertension-adult-2019.order-sign.json")
    assert len(seen) == 2 and resp.status_code == 500 and "cards" not in resp.get_json()
