"""Linearization: one segment per fact with provenance, most recent first, the cap, value rendering."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest

from cds_plugin.fhir import Linearization, Segment, linearize, read_prefetch, read_record
from cds_plugin.fhir.values import age_band, format_number, relative_time
from tests.fhir.conftest import edge, patient_bundle, request_body

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_demographic_segments_come_first() -> None:
    lin = linearize(read_record(edge("document-bundle"), as_of=date(2024, 6, 1)))
    first = lin.segments[0]
    assert first == Segment(
        "age 10-14", "Patient/doc-patient", "Patient", "Patient.birthDate", None, "age", value=first.value
    )
    assert 10 <= first.value < 15  # the model reads the age itself, not the band
    assert lin.segments[1].text == "sex male" and lin.segments[1].path == "Patient.gender"
    assert lin.segments[1].value_code == "male"


def test_segments_carry_provenance() -> None:
    record = read_record(patient_bundle("heart-failure-elderly-2019"))
    lin = linearize(record)
    facts = {(f.reference, f.path) for f in record.facts()}
    for segment in lin.segments:
        assert segment.resource_type == segment.path.split(".")[0]
        if segment.resource_type != "Patient":
            assert (segment.reference, segment.path) in facts
    assert set(lin.references()) <= record.references()


def test_a_care_plan_can_give_each_coded_activity_a_segment_after_it() -> None:
    record = read_record(patient_bundle("heart-failure-elderly-2019"))
    plain = linearize(record)
    lin = linearize(record, activities=True)
    plans = [p for p in record.care_plans if any(a.primary is not None for a in p.activities)]
    assert plans
    facts = {(f.reference, f.path) for f in record.facts()}
    for plan in plans:
        rows = [s for s in lin.segments if s.reference == plan.reference]
        coded = [a for a in plan.activities if a.primary is not None]
        assert rows[0].path == plan.path and len(rows) == 1 + len(coded)
        assert [s.code for s in rows[1:]] == [a.primary.token for a in coded]
        assert [s.path for s in rows[1:]] == [
            f"{plan.path}.activity[{plan.activities.index(a)}]" for a in coded
        ]
        assert all(s.text.startswith("care plan activity: ") and s.date == plan.date for s in rows[1:])
        assert all((s.reference, s.path.split(".activity[")[0]) in facts for s in rows)
        start = lin.segments.index(rows[0])
        assert lin.segments[start : start + len(rows)] == tuple(rows)  # together, the plan first
        (alone,) = [s for s in plain.segments if s.reference == plan.reference]  # off: one segment
        assert all(a.display in alone.text for a in coded[:4])
        assert not any(a.display in rows[0].text for a in coded)  # on: the words are not repeated
    attribution = lin.attribute([1.0] * len(lin.segments))
    assert attribution[plans[0].reference] == 1 + sum(a.primary is not None for a in plans[0].activities)
    assert [(s.reference, s.path) for s in lin.segments if ".activity[" not in s.path] == [
        (s.reference, s.path) for s in plain.segments
    ]  # the same facts, in the same order


def test_activities_count_against_the_cap_and_omitted_counts_facts() -> None:
    record = read_record(patient_bundle("heart-failure-elderly-2019"))
    whole = linearize(record, activities=True)
    for cap in (5, 40, 150):
        capped = linearize(record, max_facts=cap, activities=True)
        assert capped.segments == whole.segments[: cap + 2]
        kept = {(s.reference, s.path) for s in capped.segments[2:] if ".activity[" not in s.path}
        facts = [f for f in record.facts() if f.resource_type != "Patient"]
        assert sum(capped.omitted.values()) == len(facts) - len(kept)


@pytest.mark.parametrize("fixture", ["heart-failure-elderly-2019", "pregnancy-young-adult-2025"])
def test_encounters_and_procedures_can_give_each_coded_reason_a_segment_after_them(fixture: str) -> None:
    record = read_record(patient_bundle(fixture))
    plain = linearize(record)
    lin = linearize(record, reasons=True)
    reasoned = [f for f in (*record.encounters, *record.procedures) if any(r.primary for r in f.reasons)]
    assert any(f.resource_type == "Encounter" for f in reasoned)
    assert (fixture == "pregnancy-young-adult-2025") == any(f.resource_type == "Procedure" for f in reasoned)
    for fact in reasoned:
        rows = [s for s in lin.segments if s.reference == fact.reference]
        coded = [(i, r) for i, r in enumerate(fact.reasons) if r.primary is not None]
        assert rows[0].path == fact.path and len(rows) == 1 + len(coded)
        assert [s.code for s in rows[1:]] == [r.primary.token for _, r in coded]
        assert [s.path for s in rows[1:]] == [f"{fact.resource_type}.reasonCode[{i}]" for i, _ in coded]
        assert all(s.date == fact.date and s.resource_type == fact.resource_type for s in rows[1:])
        what = "encounter" if fact.resource_type == "Encounter" else "procedure"
        assert all(s.text.startswith(f"reason for {what}: ") for s in rows[1:])
        start = lin.segments.index(rows[0])
        assert lin.segments[start : start + len(rows)] == tuple(rows)  # together, the fact first
        if fact.resource_type == "Encounter":  # the reason is no longer words of the encounter's text
            (alone,) = [s for s in plain.segments if s.reference == fact.reference]
            assert "; reason " in alone.text and "; reason " not in rows[0].text
    assert [(s.reference, s.path) for s in lin.segments if ".reasonCode[" not in s.path] == [
        (s.reference, s.path) for s in plain.segments
    ]  # the same facts, in the same order
    capped = linearize(record, max_facts=30, reasons=True)
    assert capped.segments == lin.segments[:32]


def test_a_medication_requests_reasons_stay_words_of_its_text() -> None:
    """One input states one consideration at most: a request can state its drug, its reason a diagnosis."""
    bundle = patient_bundle("hypertension-adult-2019")
    request = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )
    request["reasonCode"] = [{"coding": [{"system": "http://snomed.info/sct", "code": "59621000"}]}]
    record = read_record(bundle)
    assert any(m.reasons for m in record.medication_requests)
    assert linearize(record, reasons=True).segments == linearize(record).segments


def test_offsets_segment_at_and_attribution() -> None:
    lin = linearize(read_record(edge("reference-styles"), as_of=NOW))
    text = lin.text
    offsets = lin.offsets()
    assert len(offsets) == len(lin.segments)
    for (start, end), segment in zip(offsets, lin.segments, strict=True):
        assert text[start:end] == segment.text
        assert lin.segment_at(start) == lin.segments.index(segment)
        assert lin.segment_at(end - 1) == lin.segments.index(segment)
    assert lin.segment_at(offsets[0][1]) is None  # the separator
    assert lin.segment_at(len(text) + 5) is None
    scores = [1.0] * len(lin.segments)
    attribution = lin.attribute(scores)
    assert sum(attribution.values()) == pytest.approx(len(lin.segments))
    assert attribution["Patient/refs-patient"] == 2.0
    with pytest.raises(ValueError, match="one score per segment"):
        lin.attribute([1.0])


def test_custom_separator() -> None:
    lin = linearize(read_record(edge("reference-styles"), as_of=NOW), separator=" | ")
    start, end = lin.offsets()[2]
    assert lin.text[start:end] == lin.segments[2].text
    assert lin.text.count(" | ") == len(lin.segments) - 1


def test_deterministic(patient_name: str) -> None:
    record = read_record(patient_bundle(patient_name), as_of=NOW)
    assert linearize(record) == linearize(record)
    assert linearize(read_record(patient_bundle(patient_name), as_of=NOW)).text == linearize(record).text


def test_no_system_urls_narrative_or_meta(patient_name: str) -> None:
    text = linearize(read_record(patient_bundle(patient_name), as_of=NOW)).text
    assert "http" not in text and "urn:" not in text
    assert "<div" not in text and "Generated by" not in text
    assert "\u200b" not in text


def test_every_fact_most_recent_first() -> None:
    record = read_record(edge("timezones-as-of"), as_of=date(2030, 1, 1))
    lin = linearize(record)
    facts = lin.segments[2:]
    assert len(facts) == sum(1 for f in record.facts() if f.resource_type != "Patient")
    dated = [s.date for s in facts if s.date is not None]
    assert dated == sorted(dated, reverse=True)
    undated = [i for i, s in enumerate(facts) if s.date is None]
    assert undated == list(range(len(undated)))  # undated facts count as current


def test_the_cap_keeps_the_most_recent_and_counts_the_rest() -> None:
    record = read_record(patient_bundle("heart-failure-elderly-2019"))
    whole = linearize(record)
    capped = linearize(record, max_facts=10)
    assert capped.segments[:12] == whole.segments[:12] and len(capped.segments) == 12  # age, sex + 10
    assert sum(capped.omitted.values()) == len(whole.segments) - 12 + sum(whole.omitted.values())


def test_segments_carry_what_the_model_encodes() -> None:
    record = read_record(patient_bundle("heart-failure-elderly-2019"))
    lin = linearize(record)
    by_ref = {o.reference: o for o in record.observations}
    numeric = [s for s in lin.segments if s.resource_type == "Observation" and s.value is not None]
    assert numeric
    for s in numeric:
        assert s.value == by_ref[s.reference].value or s.path != "Observation"
    assert all(s.status for s in lin.segments if s.resource_type == "Condition")


def test_entered_in_error_is_left_out() -> None:
    data = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p"}},
            {
                "resource": {
                    "resourceType": "Condition",
                    "id": "c",
                    "verificationStatus": {"coding": [{"code": "entered-in-error"}]},
                    "code": {"text": "Wrong chart"},
                }
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "o",
                    "status": "cancelled",
                    "code": {"text": "x"},
                }
            },
        ],
    }
    lin = linearize(read_record(data, as_of=NOW))
    assert [s.resource_type for s in lin.segments] == ["Patient", "Patient"]
    assert lin.omitted == {"Condition": 1, "Observation": 1}


def test_observation_text_with_flags() -> None:
    record = read_record(edge("searchset-paging"), as_of=date(2024, 11, 30))
    lin = linearize(record)
    (a1c,) = [s for s in lin.segments if s.resource_type == "Observation"]
    assert a1c.text == "lab: Hemoglobin A1c/Hemoglobin.total in Blood 7.9 % high; 4w ago"
    assert a1c.display == "Hemoglobin A1c/Hemoglobin.total in Blood"
    assert a1c.code == "http://loinc.org|4548-4"


def test_adult_reference_table_only_for_adults_and_matching_units() -> None:
    bp = linearize(read_record(edge("batch-response-nested"), as_of=NOW))
    texts = [s.text for s in bp.segments if s.resource_type == "Observation"]
    assert texts == [
        "vital: Systolic blood pressure 142 mmHg high; 4w ago",
        "vital: Diastolic blood pressure 91 mmHg high; 4w ago",
    ]
    child = linearize(read_record(patient_bundle("child-toddler-2019"), as_of=date(2020, 1, 1)))
    vitals = [s.text for s in child.segments if s.text.startswith("vital: ")]
    assert vitals and not any(t.endswith(("high", "low", "normal")) or " high;" in t for t in vitals)


def test_rendering_of_every_type() -> None:
    texts = {
        s.resource_type: s.text for s in linearize(read_record(edge("reference-styles"), as_of=NOW)).segments
    }
    assert texts["Condition"] == "condition: Acute viral pharyngitis (disorder); active; onset 11mo ago"
    assert texts["Observation"] == "observation: Body temperature 38.4 Cel; 11mo ago"
    assert texts["Procedure"] == "procedure: Throat culture (procedure); 11mo ago"
    assert texts["Immunization"] == "vaccine: Influenza, seasonal, injectable, preservative free; 15mo ago"
    assert (
        texts["Encounter"]
        == "encounter: emergency, Emergency room admission; reason Fever (finding); 11mo ago"
    )
    assert (
        texts["CarePlan"]
        == "care plan: Self-care interventions (procedure); active; Rest and fluids; 11mo ago"
    )
    doc = {
        s.resource_type: s.text for s in linearize(read_record(edge("document-bundle"), as_of=NOW)).segments
    }
    assert doc["AllergyIntolerance"] == (
        "allergy (food): Allergy to peanuts; active; high criticality; reaction Hives; 9y ago"
    )
    meds = [s.text for s in linearize(read_record(edge("medication-reference"), as_of=NOW)).segments]
    assert (
        "medication: 24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet; active; plan; "
        "ordered 2y ago" in meds
    )


def test_order_select_request_shows_the_draft() -> None:
    body = request_body("diabetes-adult-2025", "order-select")
    record = read_prefetch(body["prefetch"], draft_orders=body["context"]["draftOrders"])
    lin = linearize(record)
    draft = [s for s in lin.segments if s.reference == "MedicationRequest/draft-1"]
    assert len(draft) == 1 and "; draft;" in draft[0].text
    first_med = next(s for s in lin.segments if s.resource_type == "MedicationRequest")
    assert first_med.reference == "MedicationRequest/draft-1"  # the draft is the most recent order


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (129.7398, "130"),
        (6.1, "6.1"),
        (6.05, "6.05"),
        (0.01234, "0.0123"),
        (12345, "12300"),
        (99.96, "100"),
        (-3.14159, "-3.14"),
        (0, "0"),
        (5.0, "5"),
    ],
)
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


@pytest.mark.parametrize(
    ("days", "text"),
    [(0.5, "today"), (3, "3d ago"), (20, "2w ago"), (100, "3mo ago"), (800, "2y ago"), (-3, "in 3d")],
)
def test_relative_time(days: float, text: str) -> None:
    from datetime import timedelta

    assert relative_time(NOW - timedelta(days=days), NOW) == text


@pytest.mark.parametrize(
    ("years", "band"),
    [(None, "unknown"), (0.4, "under 1"), (3, "1-4"), (5, "5-9"), (57.9, "55-59"), (93, "90+")],
)
def test_age_band(years: float | None, band: str) -> None:
    assert age_band(years) == band


def test_linearization_type() -> None:
    lin = linearize(read_record(patient_bundle("child-toddler-2019")))
    assert isinstance(lin, Linearization)
    assert lin.segments[0].text == "age 5-9" or re.fullmatch(r"age \d+-\d+", lin.segments[0].text)
