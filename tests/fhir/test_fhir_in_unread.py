"""Nothing dropped silently: every input resource is read into facts or counted as unread with a reason."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest

from cds_plugin.fhir import read_prefetch, read_record, read_records
from cds_plugin.fhir.as_of import as_of
from cds_plugin.fhir.unread import (
    AFTER_CUT,
    ANOTHER_PATIENT,
    DUPLICATE,
    NO_ID,
    NOT_CLINICAL,
    REASONS,
    UNPARSEABLE,
    UNSUPPORTED,
    could_not_read,
    could_not_read_sentence,
    readable,
    summary,
)
from tests.fhir.conftest import EDGE, HOOKS, PATIENT_NAMES, TRAIN, edge, patient_bundle, request_body

SINGLE_PATIENT_EDGES = sorted(
    p.stem for p in EDGE.glob("*.json") if p.stem not in ("searchset-paging.page2",)
)


def count_resources(data: Any) -> int:
    """Resources in a JSON input, counted without the reader: entries, prefetch values, list items
    (Bundles are containers; entries without a resource, e.g. a DELETE, are none)."""
    if isinstance(data, list):
        return sum(count_resources(item) for item in data)
    if not isinstance(data, dict):
        return 1  # something in the place of a resource
    if "resourceType" not in data:  # a prefetch object
        return sum(count_resources(v) for v in data.values() if v is not None)
    if data["resourceType"] != "Bundle":
        return 1
    total = 0
    for entry in data.get("entry") or []:
        if not isinstance(entry, dict):
            total += 1
        elif isinstance(entry.get("resource"), dict) and entry["resource"].get("resourceType") == "Bundle":
            total += count_resources(entry["resource"])
        elif entry.get("resource") is not None:
            total += 1
    return total


def medications_in(data: Any) -> int:
    names = set()

    def walk(value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            if value.get("resourceType") == "Medication":
                names.add(value.get("id"))
            for key, item in value.items():
                if key != "contained":
                    walk(item)

    walk(data)
    return len(names)


def assert_accounted(record, data: Any) -> None:
    assert record.resources == count_resources(data)
    fact_resources = {f.reference for f in record.facts() if f.resource_type != "Patient"}
    read = record.resources - sum(record.unread.values())
    assert read == len(fact_resources) + 1 + medications_in(data)
    assert set(record.unread) <= set(REASONS) and all(n > 0 for n in record.unread.values())
    assert summary(record)["read"] == read


@pytest.mark.parametrize("name", PATIENT_NAMES)
def test_every_resource_of_a_patient_bundle_is_accounted_for(name):
    data = patient_bundle(name)
    record = read_record(data)
    assert_accounted(record, data)
    # a normal Synthea bundle loses nothing: Organizations, Practitioners, DiagnosticReports are not facts
    assert could_not_read(record) == 0 and could_not_read_sentence(record) is None
    assert record.unread.get(NOT_CLINICAL, 0) >= 1


@pytest.mark.parametrize("name", PATIENT_NAMES)
@pytest.mark.parametrize("hook", HOOKS)
def test_every_resource_of_a_hook_request_is_accounted_for(name, hook):
    body = request_body(name, hook)
    draft = body["context"].get("draftOrders")
    record = read_prefetch(body["prefetch"], patient_id=body["context"]["patientId"], draft_orders=draft)
    assert_accounted(record, [body["prefetch"], draft] if draft else body["prefetch"])
    assert could_not_read(record) == 0


@pytest.mark.parametrize("name", SINGLE_PATIENT_EDGES)
def test_every_resource_of_an_edge_case_is_accounted_for(name):
    data = edge(name)
    assert_accounted(read_record(data), data)


def test_malformed_resources_are_counted_as_could_not_be_read():
    record = read_record(edge("malformed-context"))
    assert record.unread == {UNPARSEABLE: 3, NOT_CLINICAL: 1}
    assert readable(record) == 5
    assert could_not_read_sentence(record) == "3 of 5 resources could not be read (malformed: 3)"


def _patient_with(*resources: dict) -> dict:
    entries = [{"resource": {"resourceType": "Patient", "id": "p1"}}]
    entries += [{"resource": r} for r in resources]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def test_each_reason():
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}
    data = _patient_with(
        condition,
        copy.deepcopy(condition),  # the same resource again
        {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/somebody-else"}},
        {"resourceType": "Condition", "subject": {"reference": "Patient/p1"}},  # no id, no fullUrl
        {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}, "status": 7},
        {"resourceType": "Claim", "id": "cl1"},
        {"resourceType": "DocumentReference", "id": "d1"},
        {
            "resourceType": "Condition",
            "id": "c3",
            "subject": {"reference": "urn:uuid:p1"},
            "onsetDateTime": "2030-01-01",
        },
    )
    record = read_record(data)
    assert record.resources == 9
    assert record.unread == {
        ANOTHER_PATIENT: 1,
        UNPARSEABLE: 1,
        NO_ID: 1,
        UNSUPPORTED: 1,
        NOT_CLINICAL: 1,
        DUPLICATE: 1,
    }
    assert could_not_read_sentence(record) == (
        "3 of 6 resources could not be read "
        "(names a patient not in the input: 1; malformed: 1; no id or fullUrl: 1)"
    )
    cut = as_of(record, date(2025, 1, 1))
    assert cut.unread[AFTER_CUT] == 1 and cut.resources == record.resources
    assert as_of(cut, date(2024, 1, 1)).unread[AFTER_CUT] == 1  # counted once, not again
    assert could_not_read(cut) == 3  # a fact not known yet at T is not a reading problem


def test_the_unresolved_patient_of_the_issue_is_reported_not_silent():
    """Before references of the form `urn:uuid:<id>` resolved, 67 resources became 0 facts silently."""
    body = request_body("diabetes-adult-2025", "patient-view")
    prefetch = copy.deepcopy(body["prefetch"])
    for key, value in prefetch.items():
        if key != "patient":
            for entry in value["entry"]:
                for element in ("subject", "patient"):
                    if element in entry["resource"]:
                        entry["resource"][element] = {"reference": "Patient/not-the-one"}
    record = read_prefetch(prefetch, patient_id=body["context"]["patientId"])
    n = record.unread[ANOTHER_PATIENT]
    assert n > 50 and not record.conditions
    m = n + 1 + medications_in(prefetch)  # the Patient and the Medications are read
    assert could_not_read_sentence(record).startswith(f"{n} of {m} resources could not be read")


def test_prefetch_values_that_are_no_data_are_counted():
    prefetch = {
        "patient": {"resourceType": "Patient", "id": "p1"},
        "conditions": {"resourceType": "OperationOutcome", "issue": []},
        "observations": ["not", "a", "resource"],
        "allergies": None,
    }
    record = read_prefetch(prefetch, patient_id="p1")
    assert record.resources == 3 and record.unread == {UNPARSEABLE: 1, NOT_CLINICAL: 1}


def test_several_patients_each_count_their_own():
    data = _patient_with(
        {"resourceType": "Patient", "id": "p2"},
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p2"}},
        {"resourceType": "Condition", "id": "c3", "subject": {"reference": "Patient/p2"}},
        {"resourceType": "Claim", "id": "x"},
    )
    records = {r.patient.id: r for r in read_records(data)}
    assert records["p1"].resources == 3 and records["p2"].resources == 4  # its own plus the shared Claim


@pytest.mark.skipif(not TRAIN.exists(), reason="training data not available")
def test_synthea_training_bundles_lose_nothing():
    """Whole Synthea bundles (Claims, EOBs, DiagnosticReports...) are read without a data-loss count."""
    files = sorted(TRAIN.rglob("*.json.gz"))[:6]
    for path in files:
        record = read_record(path)
        assert could_not_read(record) == 0, path.name
        assert record.unread.get(NOT_CLINICAL, 0) > 0
