"""One reference-time rule (cds_plugin.fhir.reference_time): `cds-plugin assess`, the Engine and the hooks
take the same T for the same input, so they give the same probabilities."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from cds_plugin.cli import main
from cds_plugin.fhir import read_prefetch, read_record, read_records
from cds_plugin.fhir.reference_time import reference_time
from tests.helpers.open_app import open_app

REQUESTS = Path(__file__).resolve().parents[2] / "fhir_fixtures" / "requests"
FIXED = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)


@pytest.fixture
def fixed_now(monkeypatch):
    """The clock of the one rule, stopped: every path that took T elsewhere would show another time."""
    monkeypatch.setattr("cds_plugin.fhir.reference_time.utc_now", lambda: FIXED)
    return FIXED


def test_the_rule():
    assert reference_time(datetime(2020, 5, 1, 8, tzinfo=UTC)) == datetime(2020, 5, 1, 8, tzinfo=UTC)
    assert reference_time(date(2020, 5, 1)) == datetime(2020, 5, 1, 23, 59, 59, 999999, tzinfo=UTC)
    before = datetime.now(UTC)
    assert before <= reference_time() <= datetime.now(UTC)


def test_every_reader_takes_t_from_the_rule(fixed_now):
    body = json.loads((REQUESTS / "hypertension-adult-2019.patient-view.json").read_text())
    prefetch = body["prefetch"]
    assert read_prefetch(prefetch, patient_id=body["context"]["patientId"]).reference_time == FIXED
    assert read_record(prefetch).reference_time == FIXED
    assert {r.reference_time for r in read_records([prefetch, prefetch])} == {FIXED}
    assert read_record(prefetch).as_of_time is None  # no as_of: T is now and nothing is cut
    cut = read_record(prefetch, as_of=date(2018, 1, 1))
    assert cut.reference_time == cut.as_of_time == reference_time(date(2018, 1, 1))


@pytest.mark.parametrize("name", ["diabetes-adult-2025", "heart-failure-elderly-2019"])
def test_cli_assess_engine_and_the_patient_view_hook_agree(
    card_model, engine, tmp_path, capsys, fixed_now, name
):
    body = json.loads((REQUESTS / f"{name}.patient-view.json").read_text())
    file = tmp_path / "prefetch.json"
    file.write_text(json.dumps(body["prefetch"]))
    assert main(["assess", str(file), "--model", str(card_model), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["reference_time"] == FIXED.isoformat()
    by_code = {(c["kind"], c["code"]): c["probability"] for c in cli["diagnoses"] + cli["treatments"]}
    direct = engine.assess(body["prefetch"])
    assert direct.reference_time == FIXED
    assert {(c.kind, c.code): round(c.probability, 4) for c in direct.considerations} == by_code

    app = open_app(card_model, tmp_path / "svc", max_cards=20)
    client = app.test_client()
    store = app.extensions["cds_plugin"].explanation_store
    compared = 0
    for service in ("diagnosis-considerations", "treatment-considerations"):
        resp = client.post(f"/cds-services/{service}", json=body)
        assert resp.status_code == 200, resp.get_json()
        for card in resp.get_json()["cards"]:
            entry_id = card["links"][0]["url"].split("/explanations/")[1].split("?")[0]
            payload = store.get(entry_id)["payload"]
            assert payload["reference_time"] == FIXED.isoformat()
            shown = payload["consideration"]
            assert shown["probability"] == by_code[(shown["kind"], shown["code"])]
            assert f"(p {shown['probability']:.2f})" in card["summary"]
            compared += 1
    assert compared > 0


def test_cli_says_which_time_it_assessed_at(card_model, capsys, fixed_now):
    path = REQUESTS.parent / "patients" / "hypertension-adult-2019.json"
    assert main(["assess", str(path), "--model", str(card_model), "--top", "1"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "as of 2025-03-01 12:30 UTC (now, as a hook would be" in first and "the data ends 2018-08" in first
    assert main(["assess", str(path), "--model", str(card_model), "--top", "1", "--as-of", "2018-01-01"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "as of 2018-01-01 23:59 UTC; the data ends" in first
