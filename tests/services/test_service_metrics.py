"""The clinical services' metrics with the tiny model: cards by model version, explanation completeness,
model info; and no patient data in the exposition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds_plugin import metrics
from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures" / "requests"


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def client(tiny_model, tmp_path_factory):
    settings = Settings.load(
        environ={},
        data_dir=str(tmp_path_factory.mktemp("metrics")),
        jwt_required=False,
        model_path=str(tiny_model),
        card_explanation_method="integrated_gradients",  # on the card: no background work to wait for
    )
    return create_app(settings).test_client()


def test_cards_and_completeness_are_recorded(client):
    body = json.loads((FIXTURES / "diabetes-adult-2025.patient-view.json").read_text())
    text = client.get("/metrics").text
    version = next(
        line.split('model_version="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("cds_plugin_model_info{")
    )
    issued = {"service": "diagnosis-considerations", "model_version": version}
    cards_before = {
        i: value("cds_plugin_cards_issued_total", **issued, indicator=i) for i in metrics.INDICATORS
    }
    ig = {"method": "integrated_gradients"}
    observed = value("cds_plugin_explanation_completeness_error_count", **ig)
    flagged = value("cds_plugin_explanation_completeness_flagged_total", **ig)
    resp = client.post("/cds-services/diagnosis-considerations", json=body)
    assert resp.status_code == 200
    cards = resp.get_json()["cards"]
    assert cards
    for indicator in metrics.INDICATORS:
        shown = sum(c["indicator"] == indicator for c in cards)
        assert value("cds_plugin_cards_issued_total", **issued, indicator=indicator) == (
            cards_before[indicator] + shown
        )
    assert value("cds_plugin_explanation_completeness_error_count", **ig) >= observed + len(cards)
    assert value("cds_plugin_explanations_total", **ig) >= len(cards)
    assert value("cds_plugin_explanation_completeness_flagged_total", **ig) >= flagged
    assert value("cds_plugin_model_info", model_version=version) == 1
    assert (
        value(
            "cds_plugin_hook_calls_total",
            service="diagnosis-considerations",
            hook="patient-view",
            status="200",
        )
        >= 1
    )

    text = client.get("/metrics").text
    patient = body["prefetch"]["patient"]
    secrets = {
        patient["id"],
        body["hookInstance"],
        patient["name"][0]["family"],
        *patient["name"][0]["given"],
    }
    secrets |= {c["uuid"] for c in cards}
    for secret in secrets:
        assert secret not in text
