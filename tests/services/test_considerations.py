"""The clinical services end to end through the app, with a tiny model: spec-valid cards with evidence."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cds_plugin import metrics
from cds_plugin.sandbox.validator import has_errors, validate_response
from cds_plugin.services import considerations
from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app
from tests.helpers.open_app import open_app

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures" / "requests"
#: The card model tests the cards' form: its thresholds are set by hand and its probabilities barely move
#: from an empty record's, so the odds-ratio rule (tested on its own below) is off for it.
FORM_ONLY = {"min_card_odds_ratio": 0.0}


@pytest.fixture(scope="module")
def client(card_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("svc")
    settings = Settings.load(
        environ={}, data_dir=str(data), jwt_required=False, model_path=str(card_model), **FORM_ONLY
    )
    app = create_app(settings)
    return app.test_client()


def request_of(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_discovery_lists_the_clinical_services(client):
    services = client.get("/cds-services").get_json()["services"]
    assert {(s["id"], s["hook"]) for s in services} == {
        ("diagnosis-considerations", "patient-view"),
        ("treatment-considerations", "patient-view"),
        ("order-select-review", "order-select"),
        ("order-sign-review", "order-sign"),
    }
    for s in services:
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"


def test_discovery_ids_are_unique_and_each_is_its_urls_last_segment(client):
    """A service's URL is `{base}/cds-services/{id}`: ids are unique, and a call to that URL with the
    service's hook is answered by that service (its OpenAPI path is the same URL)."""
    services = client.get("/cds-services").get_json()["services"]
    ids = [s["id"] for s in services]
    assert len(ids) == len(set(ids))
    paths = {p for p in client.get("/openapi.json").get_json()["paths"] if not p.endswith("/feedback")}
    assert paths >= {f"/cds-services/{i}" for i in ids}
    patient = request_of("hypertension-adult-2019.patient-view.json")
    for s in services:
        body = request_of(f"hypertension-adult-2019.{s['hook']}.json")
        url = f"http://localhost/cds-services/{s['id']}"
        assert urlsplit(url).path.rsplit("/", 1)[-1] == s["id"]
        assert client.post(urlsplit(url).path, json=body).status_code == 200, s["id"]
        if s["hook"] != "patient-view":
            assert client.post(urlsplit(url).path, json=patient).status_code == 400, s["id"]


def test_cards_say_is_recommended_and_autolaunchable_explicitly(client):
    """Both are optional in CDS Hooks 2.0 but some clients' models require them: always sent, false."""
    resp = client.post(
        "/cds-services/diagnosis-considerations", json=request_of("diabetes-adult-2025.patient-view.json")
    )
    cards = resp.get_json()["cards"]
    assert cards
    for card in cards:
        assert all(s["isRecommended"] is False for s in card["suggestions"])
        assert card["links"] and all(link["autolaunchable"] is False for link in card["links"])


@pytest.mark.parametrize("service", ["diagnosis-considerations", "treatment-considerations"])
def test_patient_view_cards_are_spec_valid_with_evidence(client, service):
    body = request_of("diabetes-adult-2025.patient-view.json")
    resp = client.post(f"/cds-services/{service}", json=body)
    assert resp.status_code == 200, resp.get_json()
    answer = resp.get_json()
    findings = validate_response(answer)
    assert not has_errors(findings), findings
    assert 1 <= len(answer["cards"]) <= 3
    for card in answer["cards"]:
        assert card["summary"].startswith("Consider ") and "(p 0." in card["summary"]
        assert "Suggested mainly because of" in card["detail"] or "no single fact" in card["detail"]
        assert "not for clinical use" in card["detail"]
        assert card["links"][0]["label"] == "Why this suggestion?"
        assert "/explanations/" in card["links"][0]["url"] and "token=" in card["links"][0]["url"]
        assert card["source"]["topic"]["code"]
        assert {r["code"] for r in card["overrideReasons"]} >= {"already-addressed", "patient-preference"}
        action = card["suggestions"][0]["actions"][0]
        expected = "Condition" if service.startswith("diagnosis") else "MedicationRequest"
        assert action["resource"]["resourceType"] == expected


def test_order_review_on_both_hooks(client):
    for hook in ("order-select", "order-sign"):
        body = request_of(f"hypertension-adult-2019.{hook}.json")
        resp = client.post(f"/cds-services/{hook}-review", json=body)
        assert resp.status_code == 200, resp.get_json()
        assert not has_errors(validate_response(resp.get_json()))
        drafted = {
            e["resource"]["medicationCodeableConcept"]["coding"][0].get("display", "")
            for e in body["context"]["draftOrders"].get("entry", [])
            if "medicationCodeableConcept" in e["resource"]
        }
        for card in resp.get_json()["cards"]:
            if card["summary"].startswith("Consider "):
                assert not any(d and d.split(" ")[0].lower() in card["summary"].lower() for d in drafted)


def test_malformed_prefetch_is_400(client):
    body = request_of("diabetes-adult-2025.patient-view.json")
    body["prefetch"]["patient"] = {
        "resourceType": "Patient",
        "id": body["context"]["patientId"],
        "birthDate": 5,
    }
    resp = client.post("/cds-services/diagnosis-considerations", json=body)
    assert resp.status_code == 400 and resp.get_json()["resourceType"] == "OperationOutcome"


def _page_explanations(app, card: dict, wanted: set[str], timeout: float = 60) -> dict:
    """The stored page's explanations once `wanted` are there (the after-response queue fills them)."""
    import time

    entry_id = card["links"][0]["url"].split("/explanations/")[1].split("?")[0]
    store = app.extensions["cds_plugin"].explanation_store
    deadline = time.monotonic() + timeout
    while True:
        explanations = store.get(entry_id)["payload"]["explanations"]
        if wanted <= set(explanations) or time.monotonic() > deadline:
            return explanations
        time.sleep(0.2)


def test_integrated_gradients_on_the_card_by_default(card_model, tmp_path):
    settings = Settings.load(
        environ={}, data_dir=str(tmp_path), jwt_required=False, model_path=str(card_model), **FORM_ONLY
    )
    assert settings.card_explanation_method == "integrated_gradients"
    app = create_app(settings)
    before = (
        metrics.REGISTRY.get_sample_value(
            "cds_plugin_card_explanation_fallbacks_total", {"service": "diagnosis-considerations"}
        )
        or 0.0
    )
    resp = app.test_client().post(
        "/cds-services/diagnosis-considerations", json=request_of("diabetes-adult-2025.patient-view.json")
    )
    cards = resp.get_json()["cards"]
    assert len(cards) > 1
    for card in cards:
        assert "Explained by integrated gradients (completeness error" in card["detail"]
        assert considerations.FALLBACK_NOTE not in card["detail"]
        assert set(_page_explanations(app, card, set(), 0)) == {"integrated_gradients"}
    after = (
        metrics.REGISTRY.get_sample_value(
            "cds_plugin_card_explanation_fallbacks_total", {"service": "diagnosis-considerations"}
        )
        or 0.0
    )
    assert after == before


def test_over_budget_the_cards_fall_back_to_attention_gradient_and_say_so(card_model, tmp_path):
    """A budget integrated gradients cannot meet: answered with attention x gradient, one line says so,
    the fallback is counted, and the page gets integrated gradients after the response."""
    settings = Settings.load(
        environ={},
        data_dir=str(tmp_path),
        jwt_required=False,
        model_path=str(card_model),
        **FORM_ONLY,
        card_explanation_budget_s=1e-6,
    )
    app = create_app(settings)
    assert considerations._background.wait_idle(120)  # earlier tests' jobs out of the way (bounded queue)

    def fallbacks() -> float:
        labels = {"service": "order-sign-review"}
        return metrics.REGISTRY.get_sample_value("cds_plugin_card_explanation_fallbacks_total", labels) or 0.0

    before = fallbacks()
    resp = app.test_client().post(
        "/cds-services/order-sign-review", json=request_of("diabetes-adult-2025.order-sign.json")
    )
    assert resp.status_code == 200
    cards = resp.get_json()["cards"]
    assert cards
    for card in cards:
        assert "Explained by attention x gradient rollout." in card["detail"]
        assert considerations.FALLBACK_NOTE.split(":")[0] in card["detail"]
    assert 1 <= fallbacks() - before <= 2  # one per explanation pass of the call (order review has two)
    explanations = _page_explanations(app, cards[0], {"attention_gradient", "integrated_gradients"})
    assert set(explanations) == {"attention_gradient", "integrated_gradients"}
    assert explanations["integrated_gradients"]["completeness_error"] is not None


def test_integrated_gradients_skipped_under_load_are_computed_when_the_page_opens(card_model, tmp_path):
    """With the after-response queue off (as when it is full), opening the page computes them and keeps
    them with the page."""
    settings = Settings.load(
        environ={},
        data_dir=str(tmp_path),
        jwt_required=False,
        model_path=str(card_model),
        **FORM_ONLY,
        background_max_pending=0,
        card_explanation_method="attention_gradient",  # a cheaper method on the card: IG after the call
    )
    app = create_app(settings)
    client = app.test_client()

    def count(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    assert considerations._background.wait_idle(120)  # earlier tests' jobs would count meanwhile
    skipped = count("cds_plugin_background_explanations_total", outcome="skipped")
    computed = count("cds_plugin_explanations_total", method="integrated_gradients")
    resp = client.post(
        "/cds-services/diagnosis-considerations", json=request_of("diabetes-adult-2025.patient-view.json")
    )
    cards = resp.get_json()["cards"]
    assert count("cds_plugin_background_explanations_total", outcome="skipped") == skipped + len(cards)
    url = cards[0]["links"][0]["url"]
    entry_id = url.split("/explanations/")[1].split("?")[0]
    store = app.extensions["cds_plugin"].explanation_store
    assert set(store.get(entry_id)["payload"]["explanations"]) == {"attention_gradient"}
    parts = urlsplit(url)
    page = client.get(f"{parts.path}?{parts.query}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Integrated gradients could not be computed" not in html
    explanations = store.get(entry_id)["payload"]["explanations"]
    assert set(explanations) == {"attention_gradient", "integrated_gradients"}
    assert explanations["integrated_gradients"]["completeness_error"] is not None
    assert count("cds_plugin_explanations_total", method="integrated_gradients") == computed + 1


def test_no_card_for_what_the_record_does_not_support(card_model, tmp_path):
    """A consideration gets a card only when the patient's record multiplies the odds an empty record
    gets by at least `min_card_odds_ratio`: with the ratio set between the suggested considerations'
    own odds ratios, exactly those at or above it are carded."""
    from cds_plugin.model.engine import Engine

    body = request_of("diabetes-adult-2025.patient-view.json")
    suggested = [c for c in Engine.load(card_model).assess(body["prefetch"]).diagnoses if c.suggested]
    ratios = sorted({c.odds_ratio for c in suggested})
    assert len(ratios) >= 2, "the fixture needs considerations with different odds ratios"
    cut = (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
    expected = {c.display for c in suggested if c.odds_ratio >= cut}
    assert 0 < len(expected) < len(suggested)
    app = open_app(
        card_model,
        tmp_path,
        min_card_odds_ratio=cut,
        max_cards=len(suggested),
        card_explanation_method="attention_gradient",
    )
    cards = app.test_client().post("/cds-services/diagnosis-considerations", json=body)
    summaries = [card["summary"] for card in cards.get_json()["cards"]]
    assert len(summaries) == len(expected)
    assert all(any(display in s for s in summaries) for display in expected), (summaries, expected)
