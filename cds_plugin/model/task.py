"""The clinical task, fixed exactly so results compare (docs/model-card.md states it for readers).

For a patient and a reference time T, with the record as of T, for each consideration of the label space
(label_space.py):

- Diagnosis considerations: (a) active at T but not documented in the record, or (b) first diagnosed
  within the year after T.
- Treatment considerations: (a) in use at T (an order still active at T, or one requested within the
  year before T) but not documented, or (b) first started within the year after T.

"Not documented" is taught by masking: some considerations documented at T are removed from the input
(every Condition or MedicationRequest of any member code, and their mentions as reasons elsewhere) and
become positives of question (a). Those left visible are known, not questions: excluded from the loss. A
consideration seen before T but not documented at T that recurs within the year is not "first": it is
excluded too. Considerations absent through T + 1 year are negatives. Masks are drawn again every
training epoch (`draw_mask`), so one situation teaches many gaps.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from cds_plugin.fhir.as_of import as_of
from cds_plugin.fhir.linearize import part_key, reason_path
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.model.concepts import DIAGNOSIS
from cds_plugin.model.label_space import LabelSpace

YEAR = timedelta(days=365)

#: Per-label states of one example.
POSITIVE_UNDOCUMENTED = "undocumented"  # (a): documented at T and masked from the input
POSITIVE_NEW = "new"  # (b): first occurrence within the year after T
KNOWN = "known"  # documented at T and visible: not a question (excluded from the loss)
EXCLUDED = "excluded"  # seen before T, not documented at T, recurs in the year: not a question either
NEGATIVE = "negative"  # absent through T + 1 year

ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
INACTIVE_REQUEST = frozenset({"entered-in-error", "cancelled", "draft"})


def utc(when: datetime | date) -> datetime:
    """A datetime in UTC; a date is read as the end of that day."""
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return datetime(when.year, when.month, when.day, 23, 59, 59, tzinfo=UTC)


def active_diagnoses(record: PatientRecord, labels: LabelSpace) -> set[int]:
    """Diagnosis considerations active in the record (read as of its reference time)."""
    out: set[int] = set()
    for condition in record.conditions:
        i = labels.of_condition(condition)
        if i is None or condition.verification_status in ("refuted", "entered-in-error"):
            continue
        status = condition.clinical_status
        if status in ACTIVE_CONDITION or (status is None and not condition.abated):
            out.add(i)
    return out


def current_treatments(record: PatientRecord, labels: LabelSpace, window: timedelta = YEAR) -> set[int]:
    """Treatment considerations in use at the record's reference time: an order active then (the record is
    read as of T, see fhir/as_of.py), or one requested within `window` before it."""
    since = record.reference_time - window
    out: set[int] = set()
    for request in record.medication_requests:
        i = labels.of_request(request)
        if i is None or request.status in INACTIVE_REQUEST:
            continue
        if request.status == "active" or request.date is None or request.date >= since:
            out.add(i)
    return out


def documented_concepts(record: PatientRecord, labels: LabelSpace) -> set[int]:
    """What the record already says at its reference time: active diagnoses and current treatments."""
    return active_diagnoses(record, labels) | current_treatments(record, labels)


def first_occurrences(record: PatientRecord, labels: LabelSpace) -> dict[int, datetime | None]:
    """Earliest date each consideration appears anywhere in the (uncut) record."""
    first: dict[int, datetime | None] = {}

    def see(i: int | None, when: datetime | None) -> None:
        if i is None:
            return
        if i not in first or (when is not None and (first[i] is None or when < first[i])):
            first[i] = when

    for condition in record.conditions:
        see(labels.of_condition(condition), condition.onset or condition.date)
    for request in record.medication_requests:
        if request.status not in INACTIVE_REQUEST:
            see(labels.of_request(request), request.date)
    return first


def occurring_between(record: PatientRecord, labels: LabelSpace, start: datetime, end: datetime) -> set[int]:
    """Considerations with a Condition onset or a MedicationRequest in (start, end]."""
    seen: set[int] = set()
    for condition in record.conditions:
        when = condition.onset or condition.date
        i = labels.of_condition(condition)
        if i is not None and when is not None and start < when <= end:
            seen.add(i)
    for request in record.medication_requests:
        i = labels.of_request(request)
        if i is not None and request.status not in INACTIVE_REQUEST and request.date is not None:
            if start < request.date <= end:
                seen.add(i)
    return seen


def concept_references(record: PatientRecord, labels: LabelSpace) -> dict[str, int]:
    """Reference of every Condition and MedicationRequest that states a consideration -> its index; and
    `part_key` of every coded reason of an encounter or procedure that names a diagnosis -> its index
    (the reasons `remove_concepts` strips, as segments of their own: fhir.linearize `reasons`)."""
    out: dict[str, int] = {}
    diagnoses = {code: i for i in labels.kind_indices(DIAGNOSIS) for code in labels[i].codes}
    for fact in (*record.encounters, *record.procedures):
        for n, reason in enumerate(fact.reasons):
            i = next((diagnoses[c] for c in reason.codes() if c in diagnoses), None)
            if i is not None:
                out[part_key(fact.reference, reason_path(fact.resource_type, n))] = i
    for condition in record.conditions:
        i = labels.of_condition(condition)
        if i is not None:
            out[condition.reference] = i
    for request in record.medication_requests:
        i = labels.of_request(request)
        if i is not None:
            out[request.reference] = i
    return out


def remove_concepts(record: PatientRecord, labels: LabelSpace, masked: Iterable[int]) -> PatientRecord:
    """The record without every resource of the given considerations, nor their mentions as reasons."""
    ids = set(masked)
    if not ids:
        return record
    gone = {ref for ref, i in concept_references(record, labels).items() if i in ids}
    masked_codes = {code for i in ids if labels[i].kind == DIAGNOSIS for code in labels[i].codes}

    def without_reasons(fact):  # type: ignore[no-untyped-def]
        reasons = getattr(fact, "reasons", ())
        if not reasons or not masked_codes:
            return fact
        kept = tuple(r for r in reasons if not (set(r.codes()) & masked_codes))
        return fact if len(kept) == len(reasons) else dataclasses.replace(fact, reasons=kept)

    return dataclasses.replace(
        record,
        conditions=tuple(c for c in record.conditions if c.reference not in gone),
        medication_requests=tuple(
            without_reasons(m) for m in record.medication_requests if m.reference not in gone
        ),
        encounters=tuple(without_reasons(e) for e in record.encounters),
        procedures=tuple(without_reasons(p) for p in record.procedures),
        care_plans=tuple(
            dataclasses.replace(p, addresses=tuple(a for a in p.addresses if a not in gone))
            if p.addresses
            else p
            for p in record.care_plans
        ),
    )


@dataclass(frozen=True)
class Situation:
    """A patient at a reference time T, before any masking: what is documented, what comes in the year."""

    patient: str
    reference_time: datetime
    record: PatientRecord  # as of T, nothing masked
    documented: frozenset[int]
    new: frozenset[int]  # first occurrence within (T, T + 1 year]
    excluded: frozenset[int]  # seen before T, not documented at T, back within the year
    sex: str | None
    age: float | None

    def states(self, masked: Iterable[int]) -> dict[int, str]:
        """Every non-negative state of this situation with `masked` hidden (labels absent: NEGATIVE)."""
        hidden = set(masked)
        out = {i: (POSITIVE_UNDOCUMENTED if i in hidden else KNOWN) for i in self.documented}
        out.update(dict.fromkeys(self.new, POSITIVE_NEW))
        out.update(dict.fromkeys(self.excluded, EXCLUDED))
        return out


def situation_at(record: PatientRecord, t: datetime | date, labels: LabelSpace) -> Situation:
    """The situation at T of a whole (uncut) record."""
    t = utc(t)
    at_t = as_of(record, t)
    documented = documented_concepts(at_t, labels)
    first = first_occurrences(record, labels)
    in_window = occurring_between(record, labels, t, t + YEAR)
    new, excluded = set(), set()
    for i in in_window - documented:
        when = first.get(i)
        (new if when is not None and when > t else excluded).add(i)
    return Situation(
        patient=record.reference,
        reference_time=t,
        record=at_t,
        documented=frozenset(documented),
        new=frozenset(new),
        excluded=frozenset(excluded),
        sex=record.patient.sex,
        age=at_t.age,
    )


def draw_mask(situation: Situation, rng: random.Random | None, rate: float) -> frozenset[int]:
    """Which documented considerations to hide; with `rng` None nothing is hidden."""
    if rng is None:
        return frozenset()
    return frozenset(i for i in sorted(situation.documented) if rng.random() < rate)


@dataclass(frozen=True)
class Example:
    """A situation with a mask drawn: the input record (masked considerations removed) and the states."""

    situation: Situation
    masked: frozenset[int]
    record: PatientRecord

    @property
    def patient(self) -> str:
        return self.situation.patient

    @property
    def reference_time(self) -> datetime:
        return self.situation.reference_time

    @property
    def sex(self) -> str | None:
        return self.situation.sex

    @property
    def age(self) -> float | None:
        return self.situation.age

    @property
    def race(self) -> str | None:
        """US Core race (fhir.resources.us_core_race): for subgroup figures only, never a model input."""
        return self.record.patient.race if self.record.patient is not None else None

    @property
    def states(self) -> dict[int, str]:
        return self.situation.states(self.masked)

    def state(self, label: int) -> str:
        return self.states.get(label, NEGATIVE)


def make_example(
    record: PatientRecord,
    t: datetime | date,
    rng: random.Random | None,
    labels: LabelSpace,
    mask_rate: float = 0.5,
) -> Example:
    """The example at T with one mask drawn (nothing masked with `rng` None: question (b) alone)."""
    situation = situation_at(record, t, labels)
    masked = draw_mask(situation, rng, mask_rate)
    return Example(situation, masked, remove_concepts(situation.record, labels, masked))


def reference_times(
    record: PatientRecord, per_patient: int, rng: random.Random, min_gap: timedelta = timedelta(days=180)
) -> list[datetime]:
    """Encounter dates with a full year of follow-up while alive, spread out, at most `per_patient`."""
    end = record.data_until
    if end is None:
        return []
    death = record.patient.deceased_at
    candidates = sorted(
        {
            e.date
            for e in record.encounters
            if e.date is not None and e.date + YEAR <= end and (death is None or e.date + YEAR < death)
        }
    )
    chosen: list[datetime] = []
    rng.shuffle(candidates)
    for t in candidates:
        if all(abs(t - c) >= min_gap for c in chosen):
            chosen.append(t)
        if len(chosen) >= per_patient:
            break
    return sorted(chosen)


__all__ = [
    "EXCLUDED",
    "KNOWN",
    "NEGATIVE",
    "POSITIVE_NEW",
    "POSITIVE_UNDOCUMENTED",
    "Example",
    "Situation",
    "documented_concepts",
    "draw_mask",
    "make_example",
    "reference_times",
    "remove_concepts",
    "situation_at",
]
