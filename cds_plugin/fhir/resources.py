"""Readers from one FHIR R4 resource (a JSON dict) to the record's facts.

Each reader checks the shape of exactly the elements it reads (see elements.py) and raises
ElementError for a wrong one. They never look at narrative, meta or extensions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from cds_plugin.fhir import elements as el
from cds_plugin.fhir.elements import ElementError
from cds_plugin.fhir.record import (
    Allergy,
    CarePlan,
    Concept,
    Condition,
    Encounter,
    Fact,
    Immunization,
    MedicationRequest,
    Observation,
    Patient,
    Procedure,
)
from cds_plugin.fhir.references import ResourceIndex, contained_index

#: Types the record is built from. Medication is read only through medicationReference.
USED_TYPES = frozenset(
    {
        "Patient",
        "Condition",
        "Observation",
        "MedicationRequest",
        "Medication",
        "AllergyIntolerance",
        "Procedure",
        "Immunization",
        "Encounter",
        "CarePlan",
    }
)

#: The element naming the patient, per type.
SUBJECT_ELEMENT = {
    "Condition": "subject",
    "Observation": "subject",
    "MedicationRequest": "subject",
    "AllergyIntolerance": "patient",
    "Procedure": "subject",
    "Immunization": "patient",
    "Encounter": "subject",
    "CarePlan": "subject",
}

_GENDERS = frozenset({"male", "female", "other", "unknown"})


class Context:
    """What a reader needs beyond the resource: the input's index and a place for notes."""

    __slots__ = ("index", "notes")

    def __init__(self, index: ResourceIndex, notes: list[str]) -> None:
        self.index = index
        self.notes = notes


def _choice(resource: dict, prefix: str, allowed: tuple[str, ...]) -> tuple[str | None, Any]:
    """The one present `prefix[x]` element among `allowed` suffixes: (element name, value)."""
    found: tuple[str | None, Any] = (None, None)
    for suffix in allowed:
        name = prefix + suffix
        value = resource.get(name)
        if value is not None:
            if found[0] is not None:
                raise ElementError(f"{prefix}[x]", "more than one type given")
            found = (name, value)
    return found


def _date_of(name: str | None, value: Any, *, period_end: bool = False) -> datetime | None:
    """A dateTime/instant/Period choice value as one time (the Period's start, or its end if asked)."""
    if name is None:
        return None
    if name.endswith("Period"):
        start, end = el.period(value, name)
        return (end or start) if period_end else (start or end)
    if name.endswith(("DateTime", "Instant")):
        return el.date_time(value, name)
    return None


# --- Patient -----------------------------------------------------------------------------------------


def read_patient(resource: dict, ref: str) -> Patient:
    get = resource.get
    gender = el.code(get("gender"), "gender")
    if gender is not None and gender not in _GENDERS:
        raise ElementError("gender", "not one of male, female, other, unknown")
    birth = el.date_only(get("birthDate"), "birthDate")
    name, value = _choice(resource, "deceased", ("Boolean", "DateTime"))
    deceased: bool | None = False
    deceased_at = None
    if name == "deceasedBoolean":
        deceased = el.boolean(value, name)
    elif name == "deceasedDateTime":
        deceased_at = el.date_time(value, name)
        deceased = True
    rid = get("id")
    return Patient(
        reference=ref,
        path="Patient",
        date=None,
        id=rid if type(rid) is str else None,
        birth_date=birth,
        sex=gender,
        deceased=deceased,
        deceased_at=deceased_at,
        race=us_core_race(get("extension")),
    )


US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
_OMB_RACE = {
    "1002-5": "American Indian or Alaska Native",
    "2028-9": "Asian",
    "2054-5": "Black or African American",
    "2076-8": "Native Hawaiian or Other Pacific Islander",
    "2106-3": "White",
    "UNK": "Unknown",
    "ASKU": "Asked but no answer",
}


def us_core_race(extensions: object) -> str | None:
    """The patient's race as US Core states it: the first OMB category, else the text; None when absent.

    Read for fairness reporting by subgroup (docs/model-card.md), never as a model input. A malformed
    extension is ignored rather than failing the record.
    """
    if not isinstance(extensions, list):
        return None
    for ext in extensions:
        if not isinstance(ext, dict) or ext.get("url") != US_CORE_RACE:
            continue
        parts = [p for p in ext.get("extension") or [] if isinstance(p, dict)]
        for part in parts:
            coding = part.get("valueCoding")
            if part.get("url") == "ombCategory" and isinstance(coding, dict):
                code = coding.get("code")
                if isinstance(code, str) and code in _OMB_RACE:
                    return _OMB_RACE[code]
                if isinstance(coding.get("display"), str):
                    return coding["display"]
        for part in parts:
            if part.get("url") == "text" and isinstance(part.get("valueString"), str):
                return part["valueString"]
    return None


# --- Condition ---------------------------------------------------------------------------------------


def read_condition(resource: dict, ref: str, ctx: Context) -> list[Fact]:
    get = resource.get
    onset_name, onset_value = _choice(resource, "onset", ("DateTime", "Age", "Period", "Range", "String"))
    onset = _date_of(onset_name, onset_value)
    ab_name, ab_value = _choice(
        resource, "abatement", ("DateTime", "Age", "Period", "Range", "String", "Boolean")
    )
    abatement = _date_of(ab_name, ab_value, period_end=True)
    abated = ab_name is not None and (ab_name != "abatementBoolean" or el.boolean(ab_value, ab_name) is True)
    recorded = el.date_time(get("recordedDate"), "recordedDate")
    return [
        Condition(
            reference=ref,
            path="Condition.code",
            date=onset or recorded,
            code=el.concept(get("code"), "code"),
            clinical_status=el.status_code(get("clinicalStatus"), "clinicalStatus"),
            verification_status=el.status_code(get("verificationStatus"), "verificationStatus"),
            categories=el.concept_codes(get("category"), "category"),
            onset=onset,
            abatement=abatement,
            abated=abated,
            recorded=recorded,
        )
    ]


# --- Observation -------------------------------------------------------------------------------------

_VALUE_TYPES = (
    "Quantity",
    "CodeableConcept",
    "String",
    "Boolean",
    "Integer",
    "Range",
    "Ratio",
    "SampledData",
    "Time",
    "DateTime",
    "Period",
)
_VALUE_NAMES = frozenset("value" + t for t in _VALUE_TYPES)


def _observation_value(item: dict, prefix: str) -> dict[str, Any]:
    """value[x] of an Observation or component -> Observation fields (plus `_element`)."""
    names = [k for k, v in item.items() if v is not None and type(k) is str and k.startswith("value")]
    if not names:
        absent = el.concept(item.get("dataAbsentReason"), prefix + "dataAbsentReason")
        if absent is not None:
            primary = absent.primary
            reason = primary.code if primary is not None else absent.text
            return {"absent_reason": reason, "_element": "dataAbsentReason"}
        return {"_element": None}
    if len(names) > 1:
        raise ElementError(prefix + "value[x]", "more than one type given")
    name = names[0]
    if name not in _VALUE_NAMES:
        raise ElementError(prefix + name, "not an Observation value[x] type")
    value = item[name]
    path = prefix + name
    out: dict[str, Any] = {"_element": name}
    if name == "valueQuantity":
        out["value"], out["unit"], out["comparator"] = el.quantity(value, path)
    elif name == "valueCodeableConcept":
        out["value_concept"] = el.concept(value, path)
    elif name == "valueInteger":
        if type(value) is not int:
            raise ElementError(path, "not an integer")
        out["value"] = el.number(value, path)
    elif name == "valueBoolean":
        out["value_text"] = "yes" if el.boolean(value, path) else "no"
    elif name in ("valueString", "valueTime"):
        out["value_text"] = el.string(value, path)
    elif name == "valueDateTime":
        el.date_time(value, path)
        out["value_text"] = value
    elif name == "valueRange":
        found = el.obj(value, path, "a Range") or {}
        low, unit_low, _ = el.quantity(found.get("low"), path + ".low")
        high, unit_high, _ = el.quantity(found.get("high"), path + ".high")
        unit = unit_low or unit_high
        out["value_text"] = f"{_num(low)}-{_num(high)}" + (f" {unit}" if unit else "")
    elif name == "valueRatio":
        found = el.obj(value, path, "a Ratio") or {}
        num, unit_num, _ = el.quantity(found.get("numerator"), path + ".numerator")
        den, unit_den, _ = el.quantity(found.get("denominator"), path + ".denominator")
        if num is not None and den:
            out["value"] = num / den
            if unit_num or unit_den:
                out["unit"] = f"{unit_num or '1'}/{unit_den or '1'}"
    elif name == "valuePeriod":
        el.period(value, path)
        out["value_text"] = "period"
    else:  # valueSampledData: a waveform, not a value a model reads
        el.obj(value, path, "a SampledData")
        out["value_text"] = "sampled data"
    return out


def _num(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if value == int(value) else repr(value)


def _reference_range(item: dict, prefix: str) -> tuple[float | None, float | None]:
    ranges = el.array(item.get("referenceRange"), prefix + "referenceRange")
    chosen: tuple[float | None, float | None] = (None, None)
    for i, rng in enumerate(ranges):
        path = f"{prefix}referenceRange[{i}]"
        found = el.item(rng, path, "a referenceRange")
        low = el.quantity(found.get("low"), path + ".low")[0]
        high = el.quantity(found.get("high"), path + ".high")[0]
        if (low is not None or high is not None) and chosen == (None, None):
            chosen = (low, high)  # the first range with bounds; normal ranges come first in practice
    return chosen


def read_observation(resource: dict, ref: str, ctx: Context) -> list[Fact]:
    get = resource.get
    status = el.code(get("status"), "status")
    code = el.concept(get("code"), "code")
    categories = el.concept_codes(get("category"), "category")
    eff_name, eff_value = _choice(resource, "effective", ("DateTime", "Period", "Timing", "Instant"))
    effective = _date_of(eff_name, eff_value)
    issued = el.date_time(get("issued"), "issued")
    when = effective or issued
    facts: list[Fact] = []
    value = _observation_value(resource, "")
    low, high = _reference_range(resource, "")
    components = el.array(get("component"), "component")
    if value.get("_element") is not None or not components:
        element = value.pop("_element")
        facts.append(
            Observation(
                reference=ref,
                path=f"Observation.{element}" if element else "Observation",
                date=when,
                code=code,
                status=status,
                categories=categories,
                interpretation=el.concept_codes(get("interpretation"), "interpretation"),
                ref_low=low,
                ref_high=high,
                issued=issued,
                **value,
            )
        )
    for i, comp in enumerate(components):
        prefix = f"component[{i}]."
        item = el.item(comp, f"component[{i}]", "a component")
        cvalue = _observation_value(item, prefix)
        cvalue.pop("_element")
        low, high = _reference_range(item, prefix)
        facts.append(
            Observation(
                reference=ref,
                path=f"Observation.component[{i}]",
                date=when,
                code=el.concept(item.get("code"), prefix + "code"),
                status=status,
                categories=categories,
                interpretation=el.concept_codes(item.get("interpretation"), prefix + "interpretation"),
                ref_low=low,
                ref_high=high,
                panel=code,
                issued=issued,
                **cvalue,
            )
        )
    return facts


# --- MedicationRequest -------------------------------------------------------------------------------


def _medication(resource: dict, ref: str, ctx: Context) -> tuple[Concept | None, str | None, str]:
    """(code, medication name, path) from medicationCodeableConcept or a resolved medicationReference."""
    name, value = _choice(resource, "medication", ("CodeableConcept", "Reference"))
    if name is None:
        ctx.notes.append(f"{ref}: medication[x]: missing")
        return None, None, "MedicationRequest"
    if name == "medicationCodeableConcept":
        return el.concept(value, name), None, "MedicationRequest.medicationCodeableConcept"
    target_ref = el.reference(value, name)
    display = el.reference_display(value, name)
    fallback = Concept((), display) if display else None
    if target_ref is None:
        ctx.notes.append(f"{ref}: medicationReference: no reference, display only")
        return fallback, None, "MedicationRequest.medicationReference"
    kind, target, target_name = ctx.index.resolve(target_ref, resource, want="Medication")
    if target is None or target.get("resourceType") != "Medication":
        what = "conditional reference kept unresolved" if kind == "conditional" else "not found in the input"
        ctx.notes.append(f"{ref}: medicationReference: {what}")
        return fallback, None, "MedicationRequest.medicationReference"
    if kind == "contained":
        position = contained_index(resource, target_ref[1:])
        prefix = f"contained[{position}].code"
        path = f"MedicationRequest.{prefix}"
    else:
        prefix = "medicationReference->Medication.code"
        path = "MedicationRequest.medicationReference"
    try:
        code = el.concept(target.get("code"), "code")
    except ElementError as exc:
        raise ElementError(prefix + exc.path[len("code") :], exc.problem) from None
    return code or fallback, target_name, path


def _dosage_end(resource: dict) -> datetime | None:
    ends = []
    for i, dosage in enumerate(el.array(resource.get("dosageInstruction"), "dosageInstruction")):
        path = f"dosageInstruction[{i}]"
        timing = el.obj(el.item(dosage, path, "a Dosage").get("timing"), path + ".timing", "a Timing")
        if timing is None:
            continue
        repeat = el.obj(timing.get("repeat"), path + ".timing.repeat", "a Timing.repeat")
        if repeat is None:
            continue
        end = el.period(repeat.get("boundsPeriod"), path + ".timing.repeat.boundsPeriod")[1]
        if end is not None:
            ends.append(end)
    dispense = el.obj(resource.get("dispenseRequest"), "dispenseRequest")
    if dispense is not None:
        end = el.period(dispense.get("validityPeriod"), "dispenseRequest.validityPeriod")[1]
        if end is not None:
            ends.append(end)
    return max(ends) if ends else None


def read_medication_request(resource: dict, ref: str, ctx: Context) -> list[Fact]:
    get = resource.get
    code, medication, path = _medication(resource, ref, ctx)
    return [
        MedicationRequest(
            reference=ref,
            path=path,
            date=el.date_time(get("authoredOn"), "authoredOn"),
            code=code,
            medication=medication,
            status=el.code(get("status"), "status"),
            intent=el.code(get("intent"), "intent"),
            end=_dosage_end(resource),
            reasons=el.concepts(get("reasonCode"), "reasonCode"),
        )
    ]


# --- AllergyIntolerance ------------------------------------------------------------------------------


def read_allergy(resource: dict, ref: str, ctx: Context) -> list[Fact]:
    get = resource.get
    onset_name, onset_value = _choice(resource, "onset", ("DateTime", "Age", "Period", "Range", "String"))
    onset = _date_of(onset_name, onset_value)
    recorded = el.date_time(get("recordedDate"), "recordedDate")
    categories = el.array(get("category"), "category")
    reactions = []
    for i, reaction in enumerate(el.array(get("reaction"), "reaction")):
        found = el.item(reaction, f"reaction[{i}]", "a reaction")
        reactions.extend(el.concepts(found.get("manifestation"), f"reaction[{i}].manifestation"))
    return [
        Allergy(
            reference=ref,
            path="AllergyIntolerance.code",
            date=onset or recorded,
            code=el.concept(get("code"), "code"),
            clinical_status=el.status_code(get("clinicalStatus"), "clinicalStatus"),
            verification_status=el.status_code(get("verificationStatus"), "verificationStatus"),
            type=el.code(get("type"), "type"),
            categories=tuple(el.code(c, f"category[{i}]") or "" for i, c in enumerate(categories)),
            criticality=el.code(get("criticality"), "criticality"),
            reactions=tuple(reactions),
            recorded=recorded,
        )
    ]


# --- Procedure, Immunization, Encounter, CarePlan ---------------------------------------------------


def read_procedure(resource: dict, ref: str, ctx: Context) -> list[Fact]:
    get = resource.get
    name, value = _choice(resource, "performed", ("DateTime", "Period", "String", "Age", "Range"))
    start = end = None
    if name == "performedDateTime":
        start = el.date_time(value, name)
    elif name == "performedPeriod":
        start, end = el.period(value, name)
    return [
        Procedure(
            reference=ref,
            path="Procedure.code",
            date=start or end,
            code=el.concept(get("code"), "code"),
            status=el.code(get("status"), "status"),
            end=end,
            reasons=el.concepts(get("reasonCode"), "reasonCode"),
        )
    ]


def read_immunization(resource: dict, ref: str, ctx: Context) -> list[Fact]:
    get = resource.get
    name, value = _choice(resource, "occurrence", ("DateTime", "String"))
    when = el.date_time(value, name) if name == "occurrenceDateTime" else None
    return [
        Immunization(
            reference=ref,
            path="Immunization.vaccineCode",
            date=when,
            code=el.concept(get("vaccineCode"), "vaccineCode"),
            status=el.code(get("status"), "status"),
        )
    ]


def read_encounter(resource: dict, ref: str, ctx: Context) -> list[Fact]:
    get = resource.get
    klass = get("class")
    class_code = el.coding(klass, "class").code if klass is not None else None
    start, end = el.period(get("period"), "period")
    return [
        Encounter(
            reference=ref,
            path="Encounter",
            date=start or end,
            class_code=class_code,
            types=el.concepts(get("type"), "type"),
            status=el.code(get("status"), "status"),
            end=end,
            reasons=el.concepts(get("reasonCode"), "reasonCode"),
        )
    ]


def read_care_plan(resource: dict, ref: str, ctx: Context) -> list[Fact]:
    get = resource.get
    start, end = el.period(get("period"), "period")
    created = el.date_time(get("created"), "created")
    activities = []
    for i, activity in enumerate(el.array(get("activity"), "activity")):
        found = el.item(activity, f"activity[{i}]", "an activity")
        detail = el.obj(found.get("detail"), f"activity[{i}].detail", "an activity detail")
        if detail is not None:
            concept = el.concept(detail.get("code"), f"activity[{i}].detail.code")
            if concept is not None:
                activities.append(concept)
    addresses = []
    for i, item in enumerate(el.array(get("addresses"), "addresses")):
        target = el.reference(item, f"addresses[{i}]")
        if target is not None:
            _, found_resource, name = ctx.index.resolve(target, resource)
            addresses.append(name if found_resource is not None and name else target)
    return [
        CarePlan(
            reference=ref,
            path="CarePlan",
            date=start or created,
            categories=el.concepts(get("category"), "category"),
            status=el.code(get("status"), "status"),
            intent=el.code(get("intent"), "intent"),
            end=end,
            activities=tuple(activities),
            addresses=tuple(addresses),
        )
    ]


READERS: dict[str, Callable[[dict, str, Context], list[Fact]]] = {
    "Condition": read_condition,
    "Observation": read_observation,
    "MedicationRequest": read_medication_request,
    "AllergyIntolerance": read_allergy,
    "Procedure": read_procedure,
    "Immunization": read_immunization,
    "Encounter": read_encounter,
    "CarePlan": read_care_plan,
}


def latest_date(fact: Fact) -> datetime | None:
    """The latest time a fact mentions (its date, end, abatement, issue time)."""
    best = fact.date
    for name in ("end", "abatement", "issued", "recorded", "deceased_at"):
        value = getattr(fact, name, None)
        if value is not None and (best is None or value > best):
            best = value
    return best
