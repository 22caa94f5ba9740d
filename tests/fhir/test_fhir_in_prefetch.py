"""CDS Hooks prefetch objects and the request fixtures built from the patients."""

from __future__ import annotations

import pytest

from cds_plugin.errors import FhirInputError
from cds_plugin.fhir import read_prefetch, read_record
from tests.fhir.conftest import HOOKS, edge, input_names, patient_bundle, request_body


@pytest.mark.parametrize("hook", HOOKS)
def test_request_fixtures(patient_name: str, hook: str) -> None:
    body = request_body(patient_name, hook)
    assert body["hook"] == hook and body["fhirServer"] == "http://localhost/fhir"
    context = body["context"]
    assert context["userId"] == "Practitioner/example"
    record = read_prefetch(
        body["prefetch"], patient_id=context["patientId"], draft_orders=context.get("draftOrders")
    )
    assert record.patient.id == context["patientId"]
    assert record.issues == ()
    from_bundle = read_record(patient_bundle(patient_name))
    # Same data as the patient bundle, now with relative references and absolute fullUrls.
    assert {c.reference for c in record.conditions} == {c.reference for c in from_bundle.conditions}
    assert {o.reference for o in record.observations} == {o.reference for o in from_bundle.observations}
    drafts = [m for m in record.medication_requests if m.status == "draft"]
    if hook == "patient-view":
        assert drafts == []
    else:
        assert [d.reference for d in drafts] == ["MedicationRequest/draft-1"]
        if hook == "order-select":
            assert context["selections"] == ["MedicationRequest/draft-1"]
    assert record.references() <= input_names(body)


def test_prefetch_medication_include_resolves_medication_reference() -> None:
    body = request_body("diabetes-adult-2025", "patient-view")
    record = read_prefetch(body["prefetch"])
    assert sum(1 for m in record.medication_requests if m.medication and m.code is not None) == 3


def test_null_key_paging_and_outcome_are_noted() -> None:
    record = read_prefetch(edge("searchset-paging"))
    assert record.issues == (
        "prefetch.conditions: searchset has a next page that was not included; results may be incomplete",
        "prefetch.medications: null (not prefetched)",
    )
    assert len(record.conditions) == 2 and len(record.observations) == 1
    assert record.allergies == ()


def test_prefetch_read_by_read_record_too() -> None:
    assert read_record(edge("searchset-paging")).patient.id == "paging-patient"


def test_operation_outcome_instead_of_data() -> None:
    prefetch = {
        "patient": {"resourceType": "Patient", "id": "p"},
        "conditions": {"resourceType": "OperationOutcome", "issue": []},
    }
    record = read_prefetch(prefetch)
    assert record.issues == (
        "prefetch.conditions: OperationOutcome instead of data (the client could not prefetch)",
    )


def test_patient_id_must_match() -> None:
    prefetch = {"patient": {"resourceType": "Patient", "id": "p"}}
    with pytest.raises(FhirInputError, match="no Patient with the requested id"):
        read_prefetch(prefetch, patient_id="q")


def test_missing_patient() -> None:
    with pytest.raises(FhirInputError, match="no Patient resource"):
        read_prefetch({"patient": None, "conditions": {"resourceType": "Bundle", "type": "searchset"}})


@pytest.mark.parametrize("value", ["Patient/p", 3, [], {"id": "no type"}])
def test_value_that_is_not_a_resource(value: object) -> None:
    prefetch = {"patient": {"resourceType": "Patient", "id": "p"}, "odd": value}
    assert read_prefetch(prefetch).issues == ("prefetch.odd: not a FHIR resource or Bundle; skipped",)
    with pytest.raises(FhirInputError, match=r"^prefetch.odd: not a FHIR resource or Bundle$"):
        read_prefetch(prefetch, strict=True)


@pytest.mark.parametrize("prefetch", [None, [], {"resourceType": "Patient", "id": "p"}])
def test_not_a_prefetch_object(prefetch: object) -> None:
    with pytest.raises(FhirInputError, match="not a prefetch object"):
        read_prefetch(prefetch)  # type: ignore[arg-type]


def test_draft_orders_must_be_a_bundle() -> None:
    prefetch = {"patient": {"resourceType": "Patient", "id": "p"}}
    with pytest.raises(FhirInputError, match="context.draftOrders: not a Bundle") as info:
        read_prefetch(prefetch, draft_orders={"resourceType": "MedicationRequest"})
    assert info.value.expression == "context.draftOrders"


def test_draft_order_errors_name_the_context() -> None:
    prefetch = {"patient": {"resourceType": "Patient", "id": "p"}}
    draft = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "MedicationRequest", "id": "d", "authoredOn": "today"}}],
    }
    with pytest.raises(FhirInputError) as info:
        read_prefetch(prefetch, draft_orders=draft, strict=True)
    assert info.value.message == "MedicationRequest/d: authoredOn: not a FHIR dateTime"
    assert info.value.expression == "context.draftOrders.entry[0].resource.authoredOn"
