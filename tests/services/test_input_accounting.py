"""Nothing dropped silently, through the services: cards say how many resources could not be read, the
explanation page lists them by reason, a metric counts them, the call's log line counts them, and a
record without clinical facts gets no consideration, with a note saying why."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cds_plugin import metrics
from cds_plugin.cli import main
from tests.helpers.open_app import open_app

REQUESTS = Path(__file__).resolve().parents[2] / "fhir_fixtures" / "requests"


@pytest.fixture(scope="module")
def client(tiny_model, tmp_path_factory):
    return open_app(tiny_model, tmp_path_factory.mktemp("accounting")).test_client()


def request_of(name: str) -> dict:
    return json.loads((REQUESTS / name).read_text())


def count(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def call_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "cds_plugin.calls"]


def damaged_request() -> dict:
    """The diabetes patient with one Condition malformed and one Observation naming another patient."""
    body = copy.deepcopy(request_of("diabetes-adult-2025.patient-view.json"))
    body["prefetch"]["conditions"]["entry"][0]["resource"]["onsetDateTime"] = "not a date"
    body["prefetch"]["observations"]["entry"][0]["resource"]["subject"] = {"reference": "Patient/someone"}
    return body


def test_cards_and_page_say_what_could_not_be_read(client, caplog):
    caplog.set_level(logging.INFO, logger="cds_plugin")
    before = {r: count("cds_plugin_unread_resources_total", service="diagnosis-considerations", reason=r)
              for r in ("unparseable", "another-patient")}  # fmt: skip
    resp = client.post("/cds-services/diagnosis-considerations", json=damaged_request())
    assert resp.status_code == 200
    cards = resp.get_json()["cards"]
    assert cards
    sentence = "2 of 64 resources could not be read (names a patient not in the input: 1; malformed: 1)"
    for card in cards:
        assert sentence in card["detail"]
    for reason in before:
        after = count("cds_plugin_unread_resources_total", service="diagnosis-considerations", reason=reason)
        assert after == before[reason] + 1
    (line,) = [x for x in call_lines(caplog) if x.get("event") == "hook_call"][-1:]
    assert line["could_not_read"] == 2 and line["resources"] == 64
    assert line["unread"] == {"another-patient": 1, "unparseable": 1}
    assert "someone" not in json.dumps(line)  # counts and reasons, never the resources themselves
    url = urlsplit(cards[0]["links"][0]["url"])
    page = client.get(f"{url.path}?{url.query}").get_data(as_text=True)
    assert "2 of 64 resources could not be read" in page
    assert "names a patient not in the input: 1" in page and "malformed: 1" in page
    assert "62 of the 64 resources sent with the call were read" in page


def test_a_normal_request_does_not_cry_wolf(client):
    resp = client.post(
        "/cds-services/diagnosis-considerations", json=request_of("diabetes-adult-2025.patient-view.json")
    )
    cards = resp.get_json()["cards"]
    assert cards and not any("could not be read" in c["detail"] for c in cards)
    url = urlsplit(cards[0]["links"][0]["url"])
    page = client.get(f"{url.path}?{url.query}").get_data(as_text=True)
    assert "could not be read" not in page and "were read into the patient" in page


@pytest.mark.parametrize("service", ["diagnosis-considerations", "treatment-considerations"])
def test_no_clinical_facts_no_considerations_and_a_note_why(client, caplog, service):
    caplog.set_level(logging.INFO, logger="cds_plugin")
    body = copy.deepcopy(request_of("diabetes-adult-2025.patient-view.json"))
    for key, value in body["prefetch"].items():
        if key != "patient":
            for entry in value["entry"]:
                for element in ("subject", "patient"):
                    if element in entry["resource"]:
                        entry["resource"][element] = {"reference": "Patient/someone-else"}
    before = count(
        "cds_plugin_calls_without_considerations_total", service=service, reason="no-clinical-facts"
    )
    resp = client.post(f"/cds-services/{service}", json=body)
    assert resp.status_code == 200
    (card,) = resp.get_json()["cards"]
    assert card["indicator"] == "info" and "suggestions" not in card and "links" not in card
    assert card["summary"] == "No considerations: none of this patient's clinical data could be read"
    assert "0 clinical facts" in card["detail"] and "60 of 64 resources could not be read" in card["detail"]
    after = count(
        "cds_plugin_calls_without_considerations_total", service=service, reason="no-clinical-facts"
    )
    assert after == before + 1
    assert any("0 clinical facts read" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    line = [x for x in call_lines(caplog) if x.get("event") == "hook_call"][-1]
    assert line["withheld"] == "no-clinical-facts" and line["clinical_facts"] == 0 and line["cards"] == 1


def test_only_a_patient_gets_a_note_that_no_clinical_data_came(client):
    body = copy.deepcopy(request_of("hypertension-adult-2019.patient-view.json"))
    body["prefetch"] = {"patient": body["prefetch"]["patient"]}
    (card,) = client.post("/cds-services/diagnosis-considerations", json=body).get_json()["cards"]
    assert card["summary"] == "No considerations: no clinical data about this patient was received"
    assert "the Patient resource only" in card["detail"]


def test_cli_assess_notes_what_the_services_would_withhold(tiny_model, tmp_path, capsys):
    body = damaged_request()
    for key in ("conditions", "observations", "medications"):
        body["prefetch"].pop(key)
    file = tmp_path / "prefetch.json"
    file.write_text(json.dumps(body["prefetch"]))
    assert main(["assess", str(file), "--model", str(tiny_model), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "note: 0 clinical facts read from 1 resources: the services offer no considerations" in out
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(damaged_request()["prefetch"]))
    assert main(["assess", str(damaged), "--model", str(tiny_model), "--top", "1"]) == 0
    assert "note: 2 of 64 resources could not be read" in capsys.readouterr().out
