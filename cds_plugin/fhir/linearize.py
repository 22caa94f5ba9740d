"""The record as model input: one segment per fact, with provenance, most recent first.

A segment is one position of the model (one FHIR fact: a Condition, a medication request, one lab value,
a procedure, ...; with `activities`, a care plan also gives one to each coded activity, with `reasons`, a
fact to each coded reason) and one row of an explanation: its `text` is what a person reads, its `code`,
`value`, `unit`, `value_code` and `status` are what the model encodes, and its `reference` names the
resource, so an attribution per position is an attribution per FHIR resource
(`Linearization.attribute`). Order: demographics (age, sex), then every fact most recent first
(undated facts count as current), at most `max_facts` segments; `omitted` counts, per resource type,
the older facts beyond the cap and the facts never used (entered-in-error, cancelled). The output
depends only on the record and the arguments.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from cds_plugin.fhir.record import (
    FACT_FIELDS,
    Allergy,
    CarePlan,
    Concept,
    Condition,
    Encounter,
    Fact,
    Immunization,
    MedicationRequest,
    Observation,
    PatientRecord,
    Procedure,
)
from cds_plugin.fhir.values import (
    ADULT_RANGES,
    INTERPRETATION_WORDS,
    age_band,
    format_number,
    range_flag,
    relative_time,
)

#: Facts kept at most, most recent first (docs/model-card.md gives the record sizes behind it).
DEFAULT_MAX_FACTS = 1024

#: Record field and resource type, in the order facts of the same date are listed.
LINEAR_ORDER: tuple[tuple[str, str], ...] = tuple(
    sorted(
        FACT_FIELDS,
        key=lambda item: [
            "Condition",
            "MedicationRequest",
            "AllergyIntolerance",
            "Observation",
            "Procedure",
            "Immunization",
            "Encounter",
            "CarePlan",
        ].index(item[1]),
    )
)

_INVISIBLE = re.compile(r"[\u200b-\u200f\u2028-\u202e\u2060\ufeff]")
_SPACES = re.compile(r"\s+")
_MAX_DISPLAY = 100

_ENCOUNTER_CLASSES = {
    "AMB": "ambulatory",
    "EMER": "emergency",
    "IMP": "inpatient",
    "ACUTE": "inpatient acute",
    "NONAC": "inpatient non-acute",
    "OBSENC": "observation",
    "PRENC": "pre-admission",
    "SS": "short stay",
    "VR": "virtual",
    "HH": "home health",
    "FLD": "field",
}
_OBSERVATION_LABELS = {
    "vital-signs": "vital",
    "vital-sign": "vital",
    "laboratory": "lab",
    "survey": "survey",
    "social-history": "social history",
    "exam": "exam",
    "imaging": "imaging",
    "procedure": "procedure result",
    "clinical-test": "clinical test",
    "therapy": "therapy",
    "activity": "activity",
}


@dataclass(frozen=True, slots=True)
class Segment:
    """One fact: one model position and one explanation row, with the provenance to name its resource.

    `display` is the human label of the fact (for cards and explanations); `code` the primary coding as
    `system|code` when there is one; `value` and `unit` a measured quantity (for the patient's age
    segment, the age in years), `value_code` a coded value as `system|code` (for the sex segment, the
    sex), `status` the resource's status.
    """

    text: str
    reference: str
    resource_type: str
    path: str
    date: datetime | None
    display: str
    code: str | None = None
    value: float | None = None
    unit: str | None = None
    value_code: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class Linearization:
    """Segments in model order; `text` joins them with `separator`.

    `omitted` counts facts left out per resource type: beyond the cap, or never used (entered-in-error,
    cancelled).
    """

    segments: tuple[Segment, ...]
    reference_time: datetime
    omitted: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    separator: str = "\n"

    @property
    def text(self) -> str:
        return self.separator.join(s.text for s in self.segments)

    def offsets(self) -> tuple[tuple[int, int], ...]:
        """(start, end) character offsets of each segment in `text`."""
        out = []
        position = 0
        step = len(self.separator)
        for segment in self.segments:
            end = position + len(segment.text)
            out.append((position, end))
            position = end + step
        return tuple(out)

    def segment_at(self, offset: int) -> int | None:
        """Index of the segment covering character `offset` of `text` (None on a separator)."""
        spans = self.offsets()
        i = bisect.bisect_right([start for start, _ in spans], offset) - 1
        if i >= 0 and spans[i][0] <= offset < spans[i][1]:
            return i
        return None

    def attribute(self, scores: Sequence[float]) -> dict[str, float]:
        """Sum per-segment scores (e.g. position attributions) per FHIR reference."""
        if len(scores) != len(self.segments):
            raise ValueError("attribute: one score per segment expected")
        out: dict[str, float] = {}
        for segment, score in zip(self.segments, scores, strict=True):
            out[segment.reference] = out.get(segment.reference, 0.0) + float(score)
        return out

    def references(self) -> tuple[str, ...]:
        """Distinct references in segment order."""
        return tuple(dict.fromkeys(s.reference for s in self.segments))


def linearize(
    record: PatientRecord,
    *,
    max_facts: int = DEFAULT_MAX_FACTS,
    activities: bool = False,
    reasons: bool = False,
    separator: str = "\n",
) -> Linearization:
    """The record as segments with provenance, most recent first (see the module docstring).

    `activities`: a care plan's coded activities are segments of their own; `reasons`: so are the coded
    reasons (`reasonCode`) of encounters and procedures. A model keeps the choices
    it was trained with; without them, activities and reasons are words of a fact's text, which no model
    reads.
    """
    now = record.reference_time
    age = record.age
    dated: list[tuple[float, int, Fact]] = []
    omitted: dict[str, int] = {}
    for order, (name, rtype) in enumerate(LINEAR_ORDER):
        tier_of = _RENDERERS[rtype][1]
        for fact in getattr(record, name):
            if tier_of(fact) is None:
                omitted[rtype] = omitted.get(rtype, 0) + 1
                continue
            when = fact.date.timestamp() if fact.date is not None else float("inf")
            dated.append((-when, order, fact))
    dated.sort(key=lambda item: item[:2])
    segments = _demographics(record)
    kept = 0
    for _, _, fact in dated:
        if kept >= max_facts:
            omitted[fact.resource_type] = omitted.get(fact.resource_type, 0) + 1
            continue
        parts: list[Segment] = []
        if isinstance(fact, CarePlan):
            segments.append(_render_care_plan(fact, now, age, coded_apart=activities))
            if activities:
                parts = _care_plan_activities(fact, now)
        elif isinstance(fact, Encounter):
            segments.append(_render_encounter(fact, now, age, coded_apart=reasons))
        else:
            segments.append(_RENDERERS[fact.resource_type][0](fact, now, age))
        if reasons and isinstance(fact, _REASONED):
            parts = _coded_reasons(fact, now)
        kept += 1
        parts = parts[: max_facts - kept]
        segments.extend(parts)
        kept += len(parts)
    return Linearization(tuple(segments), now, MappingProxyType(omitted), separator)


# --- which facts are used ------------------------------------------------------------------------------


def _condition_tier(fact: Condition) -> int | None:
    if fact.verification_status == "entered-in-error":
        return None
    if fact.verification_status == "refuted":
        return 3
    if fact.clinical_status in ("active", "recurrence", "relapse"):
        return 0
    if fact.clinical_status in (None, "unknown"):
        return 1
    return 2


def _request_tier(fact: MedicationRequest) -> int | None:
    if fact.status == "entered-in-error" or fact.code is None:
        return None
    if fact.status in ("active", "on-hold", "draft"):
        return 0
    if fact.status in (None, "unknown"):
        return 1
    return 2


def _allergy_tier(fact: Allergy) -> int | None:
    if fact.verification_status == "entered-in-error":
        return None
    return 0 if fact.clinical_status in ("active", None) else 1


_OBSERVATION_TIERS = {"vital-signs": 0, "vital-sign": 0, "laboratory": 0, "survey": 2, "social-history": 2}


def _observation_tier(fact: Observation) -> int | None:
    """Measurements first, then other findings, then questionnaires; free text last."""
    if fact.status in ("entered-in-error", "cancelled"):
        return None
    if fact.value_text is not None and fact.value is None and fact.value_concept is None:
        return 3
    tier = 1
    for category in fact.categories:
        tier = min(tier, _OBSERVATION_TIERS.get(category, 1))
    return tier


def _status_tier(excluded: frozenset[str], active: frozenset[str] = frozenset()) -> Callable:
    def tier(fact: Fact) -> int | None:
        status = getattr(fact, "status", None)
        if status in excluded:
            return None
        return 0 if not active or status in active else 1

    return tier


# --- rendering ---------------------------------------------------------------------------------------


def clean(text: str | None) -> str:
    """Display text without invisible characters and runs of spaces, at most 100 characters."""
    if not text:
        return ""
    text = _SPACES.sub(" ", _INVISIBLE.sub("", text)).strip()
    return text if len(text) <= _MAX_DISPLAY else text[: _MAX_DISPLAY - 1].rstrip() + "…"


def _label(concept: Concept | None) -> tuple[str, str | None]:
    if concept is None:
        return "unknown", None
    primary = concept.primary
    return clean(concept.display) or "unknown", (primary.token if primary is not None else None)


def _when(prefix: str, when: datetime | None, now: datetime) -> str:
    return f"; {prefix}{relative_time(when, now)}" if when is not None else ""


def _segment(fact: Fact, text: str, display: str, code: str | None) -> Segment:
    status = getattr(fact, "clinical_status", None) or getattr(fact, "status", None)
    if isinstance(fact, Observation):
        value_code = None
        if fact.value_concept is not None and fact.value_concept.primary is not None:
            value_code = fact.value_concept.primary.token
        elif fact.value_concept is not None and fact.value_concept.text:
            value_code = "text|" + clean(fact.value_concept.text).lower()
        return Segment(
            text,
            fact.reference,
            fact.resource_type,
            fact.path,
            fact.date,
            display,
            code,
            value=fact.value,
            unit=fact.unit,
            value_code=value_code,
            status=status,
        )
    return Segment(
        text, fact.reference, fact.resource_type, fact.path, fact.date, display, code, status=status
    )


def _demographics(record: PatientRecord) -> list[Segment]:
    patient = record.patient
    out = [
        Segment(
            f"age {age_band(record.age)}",
            patient.reference,
            "Patient",
            "Patient.birthDate",
            None,
            "age",
            value=record.age,
        ),
        Segment(
            f"sex {patient.sex or 'unknown'}",
            patient.reference,
            "Patient",
            "Patient.gender",
            None,
            "sex",
            value_code=patient.sex or "unknown",
        ),
    ]
    if patient.deceased:
        path = "Patient.deceasedDateTime" if patient.deceased_at is not None else "Patient.deceasedBoolean"
        out.append(Segment("deceased", patient.reference, "Patient", path, patient.deceased_at, "deceased"))
    return out


def _render_condition(fact: Condition, now: datetime, age: float | None) -> Segment:
    display, code = _label(fact.code)
    parts = [f"condition: {display}"]
    if fact.clinical_status:
        parts.append(fact.clinical_status)
    if fact.verification_status and fact.verification_status != "confirmed":
        parts.append(fact.verification_status)
    text = "; ".join(parts) + _when("onset ", fact.date, now) + _when("ended ", fact.abatement, now)
    return _segment(fact, text, display, code)


def _render_request(fact: MedicationRequest, now: datetime, age: float | None) -> Segment:
    display, code = _label(fact.code)
    parts = [f"medication: {display}"]
    if fact.status:
        parts.append(fact.status)
    if fact.intent and fact.intent != "order":
        parts.append(fact.intent)
    text = "; ".join(parts) + _when("ordered ", fact.date, now)
    return _segment(fact, text, display, code)


def _render_allergy(fact: Allergy, now: datetime, age: float | None) -> Segment:
    display, code = _label(fact.code)
    kind = "intolerance" if fact.type == "intolerance" else "allergy"
    category = f" ({', '.join(fact.categories)})" if fact.categories else ""
    parts = [f"{kind}{category}: {display}"]
    if fact.clinical_status:
        parts.append(fact.clinical_status)
    if fact.criticality in ("high", "low"):
        parts.append(f"{fact.criticality} criticality")
    reactions = [clean(r.display) for r in fact.reactions[:3] if r.display]
    if reactions:
        parts.append("reaction " + ", ".join(reactions))
    text = "; ".join(parts) + _when("", fact.date, now)
    return _segment(fact, text, display, code)


def _unit(unit: str | None) -> str:
    return unit.replace("{", "").replace("}", "") if unit else ""


def observation_value(fact: Observation, age: float | None) -> str:
    """The value as model text: `130 mm[Hg] high`, `Never smoker`, `yes`, `not available`."""
    if fact.value is not None:
        comparator = fact.comparator or ""
        text = f"{comparator}{format_number(fact.value)}"
        unit = _unit(fact.unit)
        if unit:
            text += f" {unit}"
        flag = _flag(fact, age)
        return f"{text} {flag}" if flag else text
    if fact.value_concept is not None:
        return clean(fact.value_concept.display)
    if fact.value_text is not None:
        return clean(fact.value_text)
    if fact.absent_reason is not None:
        return "not available"
    return ""


def _flag(fact: Observation, age: float | None) -> str | None:
    for code in fact.interpretation:
        word = INTERPRETATION_WORDS.get(code)
        if word:
            return word
    value = fact.value
    if value is None:
        return None
    if fact.ref_low is not None or fact.ref_high is not None:
        return range_flag(value, fact.ref_low, fact.ref_high)
    if age is None or age < 18 or fact.code is None:
        return None
    for code in fact.code.codes("http://loinc.org"):
        known = ADULT_RANGES.get(code)
        if known is not None and fact.unit in known[2]:
            return range_flag(value, known[0], known[1])
    return None


def _render_observation(fact: Observation, now: datetime, age: float | None) -> Segment:
    display, code = _label(fact.code)
    label = "observation"
    for category in fact.categories:
        if category in _OBSERVATION_LABELS:
            label = _OBSERVATION_LABELS[category]
            break
    value = observation_value(fact, age)
    text = f"{label}: {display}" + (f" {value}" if value else "")
    if fact.status in ("preliminary", "registered"):
        text += f"; {fact.status}"
    text += _when("", fact.date, now)
    return _segment(fact, text, display, code)


def _render_procedure(fact: Procedure, now: datetime, age: float | None) -> Segment:
    display, code = _label(fact.code)
    text = f"procedure: {display}"
    if fact.status and fact.status != "completed":
        text += f"; {fact.status}"
    text += _when("", fact.date, now)
    return _segment(fact, text, display, code)


def _render_immunization(fact: Immunization, now: datetime, age: float | None) -> Segment:
    display, code = _label(fact.code)
    text = f"vaccine: {display}"
    if fact.status and fact.status != "completed":
        text += f"; {fact.status}"
    text += _when("", fact.date, now)
    return _segment(fact, text, display, code)


def _render_encounter(
    fact: Encounter, now: datetime, age: float | None, coded_apart: bool = False
) -> Segment:
    kind = _ENCOUNTER_CLASSES.get(fact.class_code or "", clean(fact.class_code) or "")
    types = [clean(t.display) for t in fact.types[:2] if t.display]
    display = types[0] if types else (kind or "encounter")
    code = None
    if fact.types and fact.types[0].primary is not None:
        code = fact.types[0].primary.token
    text = "encounter: " + ", ".join(p for p in [kind, *types] if p)
    shown = [r for r in fact.reasons if r.primary is None] if coded_apart else fact.reasons
    reasons = [clean(r.display) for r in shown[:2] if r.display]
    if reasons:
        text += "; reason " + ", ".join(reasons)
    if fact.status == "in-progress":
        text += "; ongoing"
    text += _when("", fact.date, now)
    return _segment(fact, text, display, code)


def _named_categories(fact: CarePlan) -> list[Concept]:
    """A plan's categories with words (US Core's bare `assess-plan` code carries none)."""
    return [c for c in fact.categories if c.text or any(x.display for x in c.codings)]


def _render_care_plan(fact: CarePlan, now: datetime, age: float | None, coded_apart: bool = False) -> Segment:
    named = _named_categories(fact)
    labels = [clean(c.display) for c in named]
    display = labels[0] if labels else "care plan"
    code = named[0].primary.token if named and named[0].primary is not None else None
    parts = ["care plan: " + (", ".join(labels) or "unspecified")]
    if fact.status:
        parts.append(fact.status)
    if coded_apart:  # the coded ones are segments of their own
        named_activities = [clean(a.display) for a in fact.activities if a.display and a.primary is None][:4]
    else:
        named_activities = [clean(a.display) for a in fact.activities[:4] if a.display]
    if named_activities:
        parts.append(", ".join(named_activities))
    text = "; ".join(parts) + _when("", fact.date, now)
    return _segment(fact, text, display, code)


def _care_plan_activities(fact: CarePlan, now: datetime) -> list[Segment]:
    """One segment per coded activity, after its plan: what a plan asks to do ("memory skills",
    "long-term social support") says as much about the problem it addresses as its category does, and
    the model reads segments' codes only. They name the plan's resource, so their attributions add up to
    the plan's. Uncoded activities stay words in the plan's text."""
    plan = next((clean(c.display) for c in _named_categories(fact)), "")
    out = []
    for i, activity in enumerate(fact.activities):
        if activity.primary is None:
            continue
        display = clean(activity.display) or "activity"
        text = f"care plan activity: {display}" + (f"; {plan}" if plan else "") + _when("", fact.date, now)
        out.append(
            Segment(
                text,
                fact.reference,
                fact.resource_type,
                f"{fact.path}.activity[{i}]",
                fact.date,
                display,
                activity.primary.token,
                status=fact.status,
            )
        )
    return out


#: The facts whose coded reasons `linearize(..., reasons=True)` gives segments of their own. Not a
#: medication request's: a model input states at most one consideration, and a request can state one
#: (its drug) while its reason states another (the diagnosis), so hiding either would not hide both.
_REASONED = (Encounter, Procedure)


def reason_path(resource_type: str, index: int) -> str:
    """The path of a fact's `index`-th coded reason (its segment's `path`)."""
    return f"{resource_type}.reasonCode[{index}]"


def is_reason(segment: Segment) -> bool:
    """A coded reason's segment (`reason_path`), not its fact's."""
    return ".reasonCode[" in segment.path


def part_key(reference: str, path: str) -> str:
    """A segment named apart from the other segments of its resource: its reference and path."""
    return f"{reference}#{path}"


def _coded_reasons(fact: Encounter | Procedure, now: datetime) -> list[Segment]:
    """One segment per coded reason, after its fact: an encounter "for symptom" says little until its
    reason says sinusitis, and a reason is often the only trace of a problem nobody put on the list.
    They name the fact's resource, so their attributions add up to the fact's."""
    out = []
    for i, reason in enumerate(fact.reasons):
        if reason.primary is None:
            continue
        display = clean(reason.display) or "reason"
        text = f"reason for {fact.resource_type.lower()}: {display}" + _when("", fact.date, now)
        out.append(
            Segment(
                text,
                fact.reference,
                fact.resource_type,
                reason_path(fact.resource_type, i),
                fact.date,
                display,
                reason.primary.token,
                status=fact.status,
            )
        )
    return out


_RENDERERS: dict[str, tuple[Callable, Callable]] = {
    "Condition": (_render_condition, _condition_tier),
    "MedicationRequest": (_render_request, _request_tier),
    "AllergyIntolerance": (_render_allergy, _allergy_tier),
    "Observation": (_render_observation, _observation_tier),
    "Procedure": (_render_procedure, _status_tier(frozenset({"entered-in-error"}))),
    "Immunization": (_render_immunization, _status_tier(frozenset({"entered-in-error"}))),
    "Encounter": (
        _render_encounter,
        _status_tier(frozenset({"entered-in-error", "cancelled"})),
    ),
    "CarePlan": (
        _render_care_plan,
        _status_tier(frozenset({"entered-in-error"}), frozenset({"active", "on-hold", "draft"})),
    ),
}
