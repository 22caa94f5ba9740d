"""No considerations for a deceased patient, from any service: `deceasedBoolean` true, or
`deceasedDateTime` at or before the reference time."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from cds_plugin import metrics
from cds_plugin.fhir import read_record
from tests.helpers.open_app import open_app

REQUESTS = Path(__file__).resolve().parents[2] / "fhir_fixtures" / "requests"
SERVICES = {
    "diagnosis-considerations": "patient-view",
    "treatment-considerations": "patient-view",
    "order-select-review": "order-select",
    "order-sign-review": "order-sign",
}


@pytest.fixture(scope="module")
def client(card_model, tmp_path_factory):
    # no probability floor, so a living patient surely gets cards
    return open_app(card_model, tmp_path_factory.mktemp("deceased")).test_client()


def request_with(hook: str, **deceased) -> dict:  # type: ignore[no-untyped-def]
    body = json.loads((REQUESTS / f"heart-failure-elderly-2019.{hook}.json").read_text())
    body = copy.deepcopy(body)
    patient = body["prefetch"]["patient"]
    patient.pop("deceasedBoolean", None)
    patient.pop("deceasedDateTime", None)
    patient.update(deceased)
    return body


def count(service: str) -> float:
    labels = {"service": service, "reason": "deceased"}
    return metrics.REGISTRY.get_sample_value("cds_plugin_calls_without_considerations_total", labels) or 0.0


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    "deceased", [{"deceasedBoolean": True}, {"deceasedDateTime": "2021-01-05T10:00:00+01:00"}], ids=str
)
def test_no_service_offers_considerations_for_a_deceased_patient(client, service, deceased):
    before = count(service)
    resp = client.post(f"/cds-services/{service}", json=request_with(SERVICES[service], **deceased))
    assert resp.status_code == 200
    assert resp.get_json() == {"cards": []}
    assert count(service) == before + 1


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    "alive", [{}, {"deceasedBoolean": False}, {"deceasedDateTime": "2999-01-01"}], ids=str
)
def test_a_living_patient_gets_cards(client, service, alive):
    """A death dated after the reference time (now) has not happened at T: the patient is alive then."""
    resp = client.post(f"/cds-services/{service}", json=request_with(SERVICES[service], **alive))
    assert resp.status_code == 200 and resp.get_json()["cards"]


def test_the_rule_on_the_record():
    patient = {"resourceType": "Patient", "id": "p"}
    assert read_record({**patient, "deceasedBoolean": True}).deceased
    assert not read_record({**patient, "deceasedBoolean": False}).deceased
    assert not read_record(patient).deceased
    died = {**patient, "deceasedDateTime": "2020-06-01T12:00:00Z"}
    assert read_record(died).deceased
    assert read_record(died, as_of=datetime(2020, 6, 1, 12, tzinfo=UTC)).deceased  # at T: deceased
    assert not read_record(died, as_of=date(2020, 5, 31)).deceased  # before: alive then
    assert not read_record({**patient, "deceasedDateTime": "2999-01-01"}).deceased
    # deceased true without a date, cut where later data exists: unknown, so not withheld
    later = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {**patient, "deceasedBoolean": True}},
            {
                "resource": {
                    "resourceType": "Encounter",
                    "id": "e",
                    "subject": {"reference": "Patient/p"},
                    "period": {"start": "2022-01-01"},
                }
            },
        ],
    }
    cut = read_record(later, as_of=date(2021, 1, 1))
    assert cut.patient.deceased is None and not cut.deceased
