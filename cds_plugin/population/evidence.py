"""What, value and date of one evidence resource, read from the patient's record for a worklist row.

An explanation names each resource by its reference and one composed display; a worklist reviewer
filters and sorts by what the resource is, its value and its date separately. These come from the
record's facts for that reference (every fact keeps its reference, see cds_plugin.fhir.record), so
they are the patient's data as read, never text synthesized from the model. The value is the measured
value for an Observation (components joined, at most three), age and sex for the Patient, and the
status for anything else; the date is the fact's date (the first dated fact of the resource).
"""

from __future__ import annotations

from cds_plugin.fhir.linearize import observation_value
from cds_plugin.fhir.record import (
    Allergy,
    CarePlan,
    Concept,
    Condition,
    Encounter,
    Fact,
    MedicationRequest,
    Observation,
    Patient,
    PatientRecord,
)

MAX_PARTS = 3


def _concept(concept: Concept | None) -> str:
    return (concept.display or "") if concept is not None else ""


def _what(fact: Fact) -> str:
    if isinstance(fact, Patient):
        return "Patient"
    if isinstance(fact, Observation):
        return _concept(fact.panel) or _concept(fact.code)
    if isinstance(fact, Encounter):
        return next((t.display for t in fact.types if t.display), None) or (fact.class_code or "Encounter")
    if isinstance(fact, CarePlan):
        concepts = (*fact.categories, *fact.activities)
        return next((c.display for c in concepts if c.display), None) or "CarePlan"
    return _concept(getattr(fact, "code", None))


def _value(fact: Fact, record: PatientRecord) -> str:
    if isinstance(fact, Patient):
        age = record.age
        parts = [p for p in (fact.sex, f"{age:.0f} years" if age is not None else None) if p]
        return ", ".join(parts)
    if isinstance(fact, Observation):
        value = observation_value(fact, record.age)
        if fact.panel is not None and value:
            return f"{_concept(fact.code)} {value}".strip()
        return value
    if isinstance(fact, Condition | Allergy):
        return fact.clinical_status or ""
    return getattr(fact, "status", None) or ""


def describe(record: PatientRecord, reference: str, fallback: str = "") -> tuple[str, str, str]:
    """(what, value, date as YYYY-MM-DD) of the resource `reference` in `record`; `fallback` as the what
    when the record has no fact from it."""
    facts: list[Fact] = [f for f in record.facts() if f.reference == reference]
    if not facts:  # a Medication is read through the MedicationRequests that reference it
        facts = [
            m
            for m in record.medication_requests
            if isinstance(m, MedicationRequest) and m.medication == reference
        ]
    if not facts:
        return fallback, "", ""
    what = _what(facts[0]) or fallback
    values: list[str] = []
    for fact in facts:
        value = _value(fact, record)
        if value and value not in values:
            values.append(value)
    value = "; ".join(values[:MAX_PARTS]) + (" …" if len(values) > MAX_PARTS else "")
    dated = next((f.date for f in facts if f.date is not None), None)
    if isinstance(facts[0], Patient):
        dated = None  # the Patient's fact date is the birth date, which "value" already turns into an age
    return what, value, dated.date().isoformat() if dated is not None else ""
