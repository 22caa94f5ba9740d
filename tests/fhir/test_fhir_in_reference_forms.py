"""Every reference form resolves: the same record written with relative, absolute (any base), versioned,
`urn:uuid:` fullUrl, `urn:uuid:<id>` and contained references gives the same facts; with the tiny model
the same probabilities, and through the service the same cards."""

from __future__ import annotations

import copy
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_plugin.fhir import read_prefetch, read_record
from cds_plugin.fhir.references import ResourceIndex, parse_reference
from tests.fhir.conftest import PATIENT_NAMES, patient_bundle, request_body
from tests.fhir.reference_forms import CONTAINERS, canonical, comparable, write
from tests.helpers.open_app import open_app

SETTINGS = settings(
    max_examples=int(os.environ.get("CDS_PLUGIN_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CANONICAL = {name: canonical(patient_bundle(name)) for name in PATIENT_NAMES}
EXPECTED = {name: comparable(read_record(patient_bundle(name))) for name in PATIENT_NAMES}


def test_the_canonical_form_reads_like_the_fixture():
    for name in PATIENT_NAMES:
        assert comparable(read_record(CANONICAL[name])) == EXPECTED[name], name


@SETTINGS
@given(name=st.sampled_from(PATIENT_NAMES), rng=st.randoms(use_true_random=False))
def test_every_reference_form_gives_the_same_facts(name, rng):
    source, patient_id = write(CANONICAL[name], rng)
    record = read_record(source, patient_id=patient_id)
    assert comparable(record) == EXPECTED[name]
    assert not [i for i in record.issues if "not a patient in the input" in i or "not found" in i]


@pytest.mark.parametrize("container", CONTAINERS)
def test_each_container_with_mixed_forms(container):
    rng = random.Random(container)
    for name in PATIENT_NAMES:
        source, patient_id = write(CANONICAL[name], rng, container)
        assert comparable(read_record(source, patient_id=patient_id)) == EXPECTED[name], name


def test_the_reported_prefetch_urn_uuid_patient_id():
    """The issue's case: prefetch searchsets whose resources name the patient `urn:uuid:<patient id>`
    (as transaction Bundles do) while the Patient itself is a bare resource without a fullUrl."""
    body = request_body("diabetes-adult-2025", "patient-view")
    prefetch = copy.deepcopy(body["prefetch"])
    pid = body["context"]["patientId"]
    for key, value in prefetch.items():
        if key == "patient":
            continue
        for entry in value["entry"]:
            entry.pop("fullUrl", None)
            for element in ("subject", "patient"):
                if element in entry["resource"]:
                    entry["resource"][element] = {"reference": f"urn:uuid:{pid}"}
    expected = read_prefetch(body["prefetch"], patient_id=pid)
    record = read_prefetch(prefetch, patient_id=pid)
    assert len(record.conditions) == len(expected.conditions) > 0
    assert comparable(record) == comparable(expected)


def test_urn_uuid_naming_an_id_is_picked_by_the_wanted_type():
    index = ResourceIndex()
    index.add({"resourceType": "Patient", "id": "x1"}, None, "Patient/x1")
    index.add({"resourceType": "Encounter", "id": "x1"}, None, "Encounter/x1")
    assert index.resolve("urn:uuid:x1", want="Patient")[2] == "Patient/x1"
    assert index.resolve("urn:uuid:x1")[1] is None  # two types share the id: ambiguous without a type
    assert index.resolve("urn:uuid:x2", want="Patient")[1] is None
    only = ResourceIndex()
    only.add({"resourceType": "Patient"}, "urn:uuid:p9", None)  # named by its fullUrl only
    assert only.resolve("Patient/p9")[2] == "urn:uuid:p9"
    assert only.resolve("https://other.example/fhir/Patient/p9")[2] == "urn:uuid:p9"
    assert parse_reference("urn:uuid:p9").id == "p9" and parse_reference("urn:oid:1.2.3").id == "1.2.3"


def test_bulk_data_groups_by_every_subject_form(tmp_path):
    import json

    from cds_plugin.fhir import read_ndjson

    (tmp_path / "Patient.ndjson").write_text(json.dumps({"resourceType": "Patient", "id": "p1"}) + "\n")
    subjects = ["Patient/p1", "urn:uuid:p1", "https://any.server/fhir/Patient/p1", "Patient/p1/_history/2"]
    lines = [
        {"resourceType": "Condition", "id": f"c{i}", "subject": {"reference": ref}, "code": {"text": "x"}}
        for i, ref in enumerate(subjects)
    ]
    (tmp_path / "Condition.ndjson").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (record,) = read_ndjson(tmp_path)
    assert [c.reference for c in record.conditions] == [f"Condition/c{i}" for i in range(4)]


# --- with the tiny model ----------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(PATIENT_NAMES), rng=st.randoms(use_true_random=False))
def test_every_reference_form_gives_the_same_probabilities(engine, name, rng):
    base = read_record(patient_bundle(name))
    when = base.data_until
    expected = {c.code: c.probability for c in engine.assess(base, as_of=when).considerations}
    source, patient_id = write(CANONICAL[name], rng)
    got = engine.assess(read_record(source, patient_id=patient_id), as_of=when)
    assert max(abs(c.probability - expected[c.code]) for c in got.considerations) < 1e-6


def _card_content(card: dict) -> dict:
    """What the clinician sees, without the per-call uuids and signed links."""
    card = copy.deepcopy(card)
    card.pop("uuid", None)
    for suggestion in card.get("suggestions", []):
        suggestion.pop("uuid", None)
    for link in card.get("links", []):
        link.pop("url", None)
    return card


@pytest.fixture(scope="module")
def service_client(card_model, tmp_path_factory):
    return open_app(card_model, tmp_path_factory.mktemp("forms")).test_client()


@pytest.mark.parametrize("name", ["diabetes-adult-2025", "heart-failure-elderly-2019"])
@pytest.mark.parametrize("service", ["diagnosis-considerations", "treatment-considerations"])
def test_every_reference_form_gives_the_same_cards(service_client, name, service):
    body = request_body(name, "patient-view")
    resources = canonical(body["prefetch"])

    def cards(prefetch: dict) -> list[dict]:
        resp = service_client.post(f"/cds-services/{service}", json={**body, "prefetch": prefetch})
        assert resp.status_code == 200, resp.get_json()
        return [_card_content(c) for c in resp.get_json()["cards"]]

    expected = cards(body["prefetch"])
    # the cards carry evidence tables, so each reference form must resolve to the same resources
    assert expected and all("Explained by integrated gradients" in c["detail"] for c in expected)
    assert any("Suggested mainly because of" in c["detail"] for c in expected)
    for seed in range(4):
        prefetch, _ = write(resources, random.Random(seed), "prefetch")
        assert cards(prefetch) == expected, seed
