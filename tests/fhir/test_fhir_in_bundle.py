"""Bundles of every type, single resources, every source form, and reference styles."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from cds_plugin.errors import CdsPluginError, FhirInputError, InputLimitError
from cds_plugin.fhir import PatientRecord, next_page_url, parse_reference, read_record, read_records
from tests.fhir.conftest import EDGE, PATIENTS, edge, input_names, patient_bundle

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-02-29"}


def condition(cid: str, subject: str = "Patient/p1", **extra: object) -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {
            "coding": [{"system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertension"}]
        },
        "subject": {"reference": subject},
        "onsetDateTime": "2010-01-01",
        **extra,
    }


def bundle(*resources: dict, btype: str = "collection", full_urls: list[str] | None = None) -> dict:
    entries = []
    for i, resource in enumerate(resources):
        entry: dict = {"resource": resource}
        if full_urls and full_urls[i]:
            entry["fullUrl"] = full_urls[i]
        entries.append(entry)
    return {"resourceType": "Bundle", "type": btype, "entry": entries}


def test_patient_fixture_reads_every_used_type(patient_name: str) -> None:
    data = patient_bundle(patient_name)
    record = read_record(data)
    assert isinstance(record, PatientRecord)
    assert record.patient.birth_date is not None and record.patient.sex in ("male", "female")
    assert record.conditions and record.observations and record.encounters
    assert record.issues == ()
    # Claim/EOB were dropped from the fixtures; Organization/Practitioner (2019) or CareTeam (2025) stay.
    assert "Claim" not in record.skipped
    names = input_names(data)
    assert record.references() <= names


def test_urn_uuid_references_name_resources_by_type_and_id() -> None:
    record = read_record(patient_bundle("hypertension-adult-2019"))
    assert record.patient.reference.startswith("Patient/")
    assert all(not f.reference.startswith("urn:") for f in record.facts())
    assert all(f.reference.split("/")[0] == f.resource_type for f in record.facts())


@pytest.mark.parametrize(
    "btype",
    [
        "transaction",
        "batch",
        "collection",
        "searchset",
        "history",
        "document",
        "message",
        "transaction-response",
    ],
)
def test_every_bundle_type(btype: str) -> None:
    record = read_record(bundle(PATIENT, condition("c1"), btype=btype))
    assert [c.reference for c in record.conditions] == ["Condition/c1"]


def test_batch_response_with_nested_searchsets() -> None:
    record = read_record(edge("batch-response-nested"))
    assert record.patient.reference == "Patient/batch-patient"
    assert [c.reference for c in record.conditions] == ["Condition/batch-pregnancy"]
    systolic, diastolic = sorted(record.observations, key=lambda o: o.path)
    assert (systolic.path, systolic.value, systolic.unit) == ("Observation.component[0]", 142.0, "mmHg")
    assert (diastolic.path, diastolic.value) == ("Observation.component[1]", 91.0)
    assert systolic.panel is not None and systolic.panel.codes() == ("85354-9",)


def test_document_bundle_with_absolute_full_urls() -> None:
    record = read_record(edge("document-bundle"))
    assert record.patient.reference == "Patient/doc-patient"
    assert record.patient.birth_date.isoformat() == "2012-09-01"  # partial date: first day
    assert record.skipped == {"Composition": 1}
    assert {f.resource_type for f in record.facts()} == {
        "Patient",
        "Condition",
        "AllergyIntolerance",
        "Immunization",
        "Procedure",
    }
    allergy = record.allergies[0]
    assert allergy.criticality == "high" and allergy.categories == ("food",)
    assert [r.display for r in allergy.reactions] == ["Hives"]


def test_single_resource_and_list_of_sources() -> None:
    assert read_record(PATIENT).patient.id == "p1"
    record = read_record([PATIENT, condition("c1"), bundle(condition("c2"))])
    assert [c.reference for c in record.conditions] == ["Condition/c1", "Condition/c2"]


def test_searchset_pages_read_together() -> None:
    first = edge("searchset-paging")
    second = json.loads((EDGE / "searchset-paging.page2.json").read_text())
    record = read_record([first, second])
    assert sorted(c.reference for c in record.conditions) == [
        "Condition/paging-c1",
        "Condition/paging-c2",
        "Condition/paging-c3",
    ]
    assert next_page_url(first["conditions"]).endswith("_getpagesoffset=2")
    assert next_page_url(second) is None


def test_reference_styles() -> None:
    data = edge("reference-styles")
    record = read_record(data)
    by_type = {f.resource_type: f for f in record.facts()}
    assert by_type["Condition"].reference == "Condition/refs-urn"  # subject urn:uuid
    assert by_type["Procedure"].reference == "Procedure/refs-absolute"  # subject absolute URL
    assert by_type["Immunization"].reference == "Immunization/refs-versioned"  # subject versioned
    # An Observation without id is named by its fullUrl.
    assert by_type["Observation"].reference == "urn:uuid:c3d4e5f6-a7b8-4c9d-0e1f-2a3b4c5d6e7f"
    # A conditional subject stays unresolved: noted, assigned to the only patient.
    assert by_type["Encounter"].reference == "Encounter/refs-conditional"
    assert any("conditional" in issue for issue in record.issues)
    # CarePlan.addresses given as urn:uuid is reported as the Condition's Type/id.
    assert record.care_plans[0].addresses == ("Condition/refs-urn",)
    assert record.skipped == {"Claim": 1}
    assert record.references() <= input_names(data)


@pytest.mark.parametrize(
    ("ref", "kind", "rtype", "rid", "version"),
    [
        ("Patient/123", "literal", "Patient", "123", None),
        ("Patient/123/_history/4", "literal", "Patient", "123", "4"),
        ("https://ehr.example.org/fhir/R4/Patient/a.b-c", "literal", "Patient", "a.b-c", None),
        (
            "urn:uuid:6b1c7d4e-2f3a-4b5c-8d9e-0a1b2c3d4e5f",
            "urn",
            None,
            "6b1c7d4e-2f3a-4b5c-8d9e-0a1b2c3d4e5f",
            None,
        ),
        ("urn:oid:1.2.840.113619", "urn", None, "1.2.840.113619", None),
        ("#med1", "contained", None, "med1", None),
        ("Patient?identifier=http://x|1", "conditional", "Patient", None, None),
        ("not a reference", "other", None, None, None),
    ],
)
def test_parse_reference(
    ref: str, kind: str, rtype: str | None, rid: str | None, version: str | None
) -> None:
    parsed = parse_reference(ref)
    assert (parsed.kind, parsed.type, parsed.id, parsed.version) == (kind, rtype, rid, version)


def test_medication_reference_every_style() -> None:
    data = edge("medication-reference")
    record = read_record(data)
    meds = {m.reference.split("/")[1]: m for m in record.medication_requests}
    metformin = "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"
    assert meds["mr-relative"].code.display == metformin
    assert meds["mr-relative"].medication == "Medication/med-metformin"
    assert meds["mr-relative"].path == "MedicationRequest.medicationReference"
    assert meds["mr-absolute"].code.display == metformin
    assert meds["mr-versioned"].code.display == metformin
    assert meds["mr-urn"].code.codes() == ("314076",)
    assert meds["mr-urn"].medication == "Medication/med-lisinopril"
    # Contained ids are local to their container: same "#m", different drugs.
    assert meds["mr-contained"].code.codes() == ("313782",)
    assert meds["mr-contained-2"].code.codes() == ("310965",)
    assert meds["mr-contained"].medication == "#m"
    assert meds["mr-contained"].path == "MedicationRequest.contained[0].code"
    # Conditional: unresolved, the reference's display kept; missing: no code. Both noted.
    assert meds["mr-conditional"].code.display == "Simvastatin 10 MG Oral Tablet"
    assert meds["mr-conditional"].code.codings == ()
    assert meds["mr-missing"].code is None
    assert any("mr-conditional: medicationReference: conditional" in i for i in record.issues)
    assert any("mr-missing: medicationReference: not found" in i for i in record.issues)
    assert meds["mr-urn"].end is not None and meds["mr-urn"].end.year == 2020
    assert record.references() <= input_names(data)


def test_medication_reference_in_synthea_2025() -> None:
    record = read_record(patient_bundle("diabetes-adult-2025"))
    via_reference = [m for m in record.medication_requests if m.medication]
    assert len(via_reference) == 3
    assert all(m.code is not None and m.code.codes() for m in via_reference)


def test_contained_resources_do_not_become_facts() -> None:
    record = read_record(edge("contained-resources"))
    assert [m.code.display for m in record.medication_requests] == ["Warfarin 5 mg"]
    assert record.observations == ()  # the Condition's contained Observation is evidence, not a fact
    assert record.patient.deceased is True and record.patient.deceased_at.year == 2024
    assert record.medication_requests[0].end.isoformat() == "2024-02-20T00:00:00+00:00"


def test_missing_dates_are_allowed() -> None:
    record = read_record(edge("missing-dates"))
    facts = [f for f in record.facts() if f.resource_type != "Patient"]
    assert len(facts) == 8
    assert all(f.date is None for f in facts)
    assert record.patient.birth_date is None and record.age is None
    assert record.data_until is None


def test_observation_values() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2020-01-01",
    }
    values = [
        ("o1", {"valueQuantity": {"value": 5, "unit": "mg", "comparator": "<"}}),
        ("o2", {"valueCodeableConcept": {"text": "Positive"}}),
        ("o3", {"valueBoolean": False}),
        ("o4", {"valueInteger": 3}),
        ("o5", {"valueString": "free text"}),
        ("o6", {"valueRange": {"low": {"value": 1}, "high": {"value": 2.5, "unit": "g"}}}),
        ("o7", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 4}}}),
        ("o8", {"dataAbsentReason": {"coding": [{"code": "asked-unknown"}]}}),
        ("o9", {}),
    ]
    record = read_record(bundle(PATIENT, *({**obs, "id": oid, **v} for oid, v in values)))
    got = {o.reference.split("/")[1]: o for o in record.observations}
    assert (got["o1"].value, got["o1"].unit, got["o1"].comparator) == (5.0, "mg", "<")
    assert got["o2"].value_concept.display == "Positive"
    assert got["o3"].value_text == "no"
    assert got["o4"].value == 3.0
    assert got["o5"].value_text == "free text"
    assert got["o6"].value_text == "1-2.5 g"
    assert got["o7"].value == 0.25
    assert got["o8"].absent_reason == "asked-unknown" and got["o8"].path == "Observation.dataAbsentReason"
    assert got["o9"].path == "Observation" and got["o9"].value is None


def test_reference_range_and_interpretation() -> None:
    record = read_record(edge("searchset-paging"))
    a1c = record.observations[0]
    assert (a1c.ref_low, a1c.ref_high, a1c.interpretation) == (4.0, 5.6, ("H",))


def test_several_patients() -> None:
    two = bundle(PATIENT, {**PATIENT, "id": "p2"}, condition("c1"), condition("c2", subject="Patient/p2"))
    with pytest.raises(FhirInputError, match="holds 2 patients"):
        read_record(two)
    records = list(read_records(two))
    assert [r.patient.id for r in records] == ["p1", "p2"]
    assert [[c.reference for c in r.conditions] for r in records] == [["Condition/c1"], ["Condition/c2"]]
    assert read_record(two, patient_id="p2").conditions[0].reference == "Condition/c2"
    assert read_record(two, patient_id="Patient/p1").patient.id == "p1"
    with pytest.raises(FhirInputError, match="no Patient with the requested id"):
        read_record(two, patient_id="p3")


def test_resource_of_another_patient_is_skipped() -> None:
    record = read_record(bundle(PATIENT, condition("c1", subject="Patient/someone-else")))
    assert record.conditions == ()
    assert record.issues == ("Condition/c1: subject: not a patient in the input; skipped",)


def test_duplicates_keep_the_first() -> None:
    newer = condition("c1", onsetDateTime="2020-01-01")
    older = condition("c1", onsetDateTime="2000-01-01")
    record = read_record(bundle(PATIENT, newer, older, btype="history"))
    assert [c.onset.year for c in record.conditions] == [2020]


def test_bytes_gzip_text_file_and_folder(tmp_path: Path) -> None:
    data = bundle(PATIENT, condition("c1"))
    raw = json.dumps(data).encode()
    assert read_record(raw).conditions[0].reference == "Condition/c1"
    assert read_record(gzip.compress(raw)).patient.id == "p1"
    assert read_record(raw.decode()).patient.id == "p1"
    (tmp_path / "a.json").write_bytes(raw)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json.gz").write_bytes(
        gzip.compress(json.dumps(bundle({**PATIENT, "id": "p2"})).encode())
    )
    assert read_record(tmp_path / "a.json").patient.id == "p1"
    assert read_record(str(tmp_path / "sub" / "b.json.gz")).patient.id == "p2"
    assert [r.patient.id for r in read_records(tmp_path)] == ["p1", "p2"]
    assert read_record(tmp_path, patient_id="p2").patient.id == "p2"


def test_fixture_files_read_by_path() -> None:
    assert read_record(PATIENTS / "child-toddler-2019.json").patient.sex == "male"


def test_strict_mode_turns_skips_into_errors() -> None:
    data = edge("malformed-context")
    lenient = read_record(data)
    assert [c.reference for c in lenient.conditions] == ["Condition/good-condition"]
    assert lenient.observations == () and lenient.encounters == ()
    assert lenient.issues == (
        "Bundle: entry[4].resource.resourceType: missing or not a string; skipped",
        "Observation/bad-value: valueQuantity.value: not a number; skipped",
        "Encounter/bad-period: period.start: not a FHIR dateTime; skipped",
    )
    assert lenient.skipped == {"Claim": 1}  # not validated: skipped cheaply
    with pytest.raises(FhirInputError) as info:
        read_record(data, strict=True)
    assert info.value.message == "Bundle: entry[4].resource.resourceType: missing or not a string"
    del data["entry"][4]
    with pytest.raises(FhirInputError) as info:
        read_record(data, strict=True)
    assert info.value.message == "Observation/bad-value: valueQuantity.value: not a number"
    assert info.value.expression == "Bundle.entry[2].resource.valueQuantity.value"
    assert info.value.status == 400 and info.value.code == "structure"


def test_full_validation_mode_uses_r4b_models() -> None:
    data = bundle(PATIENT, condition("c1", unknownElement=True))
    assert read_record(data).conditions  # fast mode reads only what it uses
    record = read_record(data, validation="full")
    assert record.conditions == ()
    assert record.issues == ("Condition/c1: unknownElement: not an element of this resource type; skipped",)
    assert read_record(patient_bundle("hypertension-adult-2019"), validation="full").issues == ()
    with pytest.raises(FhirInputError, match=r"^Patient/p1: birthDate: not a valid FHIR Date$"):
        read_record(bundle({**PATIENT, "birthDate": "1980-02-30x"}), validation="full")
    with pytest.raises(ValueError, match="validation"):
        read_record(data, validation="sometimes")


def test_limits() -> None:
    data = bundle(PATIENT, *(condition(f"c{i}") for i in range(10)))
    assert len(read_record(data, max_entries=11).conditions) == 10
    with pytest.raises(InputLimitError, match="more than 10 entries") as info:
        read_record(data, max_entries=10)
    assert info.value.status == 413
    raw = json.dumps(data).encode()
    with pytest.raises(InputLimitError, match="larger than 100 bytes"):
        read_record(raw, max_bytes=100)
    with pytest.raises(InputLimitError, match="larger than 100 bytes"):
        read_record(gzip.compress(raw), max_bytes=100)  # checked while decompressing
    nested = bundle(PATIENT)
    for _ in range(5):
        nested = {"resourceType": "Bundle", "type": "batch-response", "entry": [{"resource": nested}]}
    assert read_record(nested, max_depth=6).patient.id == "p1"
    with pytest.raises(InputLimitError, match="Bundles nested deeper than 5"):
        read_record(nested, max_depth=5)
    deep: dict = {"url": "x"}
    for _ in range(40):
        deep = {"url": "x", "extension": [deep]}
    deep_patient = {**PATIENT, "extension": [deep]}
    assert read_record(deep_patient).patient.id == "p1"  # fast reads never walk extensions
    with pytest.raises(InputLimitError, match="nested deeper than 32"):
        read_record(deep_patient, validation="full")
    with pytest.raises(InputLimitError):
        read_record(b"[" * 100_000 + b"]" * 100_000)
    deep_list: list = [PATIENT]
    for _ in range(5000):
        deep_list = [deep_list]
    with pytest.raises(InputLimitError, match="lists nested deeper than 32"):
        read_record(deep_list)
    with pytest.raises(InputLimitError, match="lists nested deeper than 32"):
        read_record(("[" * 500 + json.dumps(PATIENT) + "]" * 500).encode())


@pytest.mark.parametrize(
    ("patient", "message"),
    [
        ({"gender": "f"}, "Patient/p1: gender: not one of male, female, other, unknown"),
        ({"birthDate": 1980}, "Patient/p1: birthDate: not a FHIR date"),
        ({"birthDate": "1980-13-01"}, "Patient/p1: birthDate: not a valid date"),
        ({"deceasedBoolean": "yes"}, "Patient/p1: deceasedBoolean: not a boolean"),
        (
            {"deceasedBoolean": True, "deceasedDateTime": "2020"},
            "Patient/p1: deceased[x]: more than one type",
        ),
        ({"id": "bad id!"}, "Patient at Patient: id: not a valid FHIR id"),
    ],
)
def test_malformed_patient_is_an_error(patient: dict, message: str) -> None:
    with pytest.raises(FhirInputError) as info:
        read_record({**PATIENT, **patient})
    assert info.value.message.startswith(message)


def test_missing_patient_is_an_error() -> None:
    with pytest.raises(FhirInputError, match="no Patient resource") as info:
        read_record(bundle(condition("c1")))
    assert info.value.expression == "Patient"


@pytest.mark.parametrize(
    ("resource", "message", "expression"),
    [
        (
            {"valueQuantity": {"value": "abc"}},
            "Observation/o1: valueQuantity.value: not a number",
            "Bundle.entry[1].resource.valueQuantity.value",
        ),
        (
            {"valueQuantity": {"value": True}},
            "Observation/o1: valueQuantity.value: not a number",
            "Bundle.entry[1].resource.valueQuantity.value",
        ),
        ({"code": {"coding": {}}}, "Observation/o1: code.coding: not an array", None),
        ({"code": {"coding": [{"code": 7}]}}, "Observation/o1: code.coding[0].code: not a code", None),
        ({"effectiveDateTime": "2020-02-30"}, "Observation/o1: effectiveDateTime: not a valid date", None),
        ({"effectiveDateTime": "03/04/2020"}, "Observation/o1: effectiveDateTime: not a FHIR dateTime", None),
        (
            {"valueString": "a", "valueBoolean": True},
            "Observation/o1: value[x]: more than one type given",
            None,
        ),
        ({"valueFoo": 1}, "Observation/o1: valueFoo: not an Observation value[x] type", None),
        (
            {"component": [{"valueQuantity": {"value": []}}]},
            "Observation/o1: component[0].valueQuantity.value",
            None,
        ),
        ({"subject": "Patient/p1"}, "Observation/o1: subject: not a Reference", None),
        ({"referenceRange": [{"low": {"value": "1"}}]}, "Observation/o1: referenceRange[0].low.value", None),
    ],
)
def test_error_messages_name_resource_and_element(
    resource: dict, message: str, expression: str | None
) -> None:
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}
    obs.update({"subject": {"reference": "Patient/p1"}, **resource})
    with pytest.raises(FhirInputError) as info:
        read_record(bundle(PATIENT, obs), strict=True)
    assert info.value.message.startswith(message)
    if expression:
        assert info.value.expression == expression


@pytest.mark.parametrize(
    "source",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"resourceType": 5}',
        b"NaN",
        "",
        "   ",
        42,
        None,
        "/definitely/not/here.json",
        Path("/definitely/not/here"),
        "x" * 5000,
        Path("y" * 5000 + ".ndjson"),
        {"resourceType": "Bundle", "entry": {}},
        {"resourceType": "Bundle", "type": 3},
    ],
)
def test_unreadable_input_raises_project_errors(source: object) -> None:
    with pytest.raises(CdsPluginError):
        read_record(source)  # type: ignore[arg-type]
