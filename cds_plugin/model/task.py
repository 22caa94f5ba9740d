"""The clinical task, fixed exactly so results compare (docs/model-card.md states it for readers).

For a patient and a reference time T, with the record as of T:

- Diagnosis considerations: conditions that are (a) active at T but not documented in the record, or
  (b) first diagnosed within the year after T.
- Treatment considerations: ingredients that are (a) in use at T (requested within the year before T)
  but not documented, or (b) first started within the year after T.

"Not documented" is taught by masking: some concepts active at T are removed from the input (all
Conditions of that diagnosis, all MedicationRequests of that ingredient, and their mentions as reasons
elsewhere) and become positives of question (a). Concepts left visible are known, not questions: they are
excluded from the loss. A concept seen before T but not active at T that recurs within the year is not
"first diagnosed": it is excluded too. Concepts absent through T + 1 year are negatives.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from cds_plugin.fhir.record import PatientRecord
from cds_plugin.model.concepts import DIAGNOSIS, ConceptKey, diagnosis_key, treatment_key

YEAR = timedelta(days=365)

#: Per-label states of one example.
POSITIVE_UNDOCUMENTED = "undocumented"  # (a): active at T and masked from the input
POSITIVE_NEW = "new"  # (b): first occurrence within the year after T
KNOWN = "known"  # active at T and visible: not a question (excluded from the loss)
EXCLUDED = "excluded"  # seen before T, not active at T, recurs in the year: not a question either
NEGATIVE = "negative"  # absent through T + 1 year

ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
INACTIVE_REQUEST = frozenset({"entered-in-error", "cancelled", "draft"})


def _utc(when: datetime | date) -> datetime:
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return datetime(when.year, when.month, when.day, 23, 59, 59, tzinfo=UTC)


def active_diagnoses(record: PatientRecord) -> dict[str, ConceptKey]:
    """Diagnoses active in the record (read as of its reference time), by concept id."""
    out: dict[str, ConceptKey] = {}
    for condition in record.conditions:
        key = diagnosis_key(condition)
        if key is None or condition.verification_status in ("refuted", "entered-in-error"):
            continue
        status = condition.clinical_status
        if status in ACTIVE_CONDITION or (status is None and not condition.abated):
            out.setdefault(key.id, key)
    return out


def current_treatments(record: PatientRecord, window: timedelta = YEAR) -> dict[str, ConceptKey]:
    """Ingredients requested within `window` before the record's reference time, by concept id."""
    since = record.reference_time - window
    out: dict[str, ConceptKey] = {}
    for request in record.medication_requests:
        key = treatment_key(request)
        if key is None or request.status in INACTIVE_REQUEST:
            continue
        if request.date is None or request.date >= since:
            out.setdefault(key.id, key)
    return out


def documented_concepts(record: PatientRecord) -> dict[str, ConceptKey]:
    """What the record already says at its reference time: active diagnoses and current treatments."""
    return {**active_diagnoses(record), **current_treatments(record)}


def first_occurrences(record: PatientRecord) -> dict[str, tuple[datetime | None, ConceptKey]]:
    """Earliest date each concept appears anywhere in the (uncut) record."""
    first: dict[str, tuple[datetime | None, ConceptKey]] = {}

    def see(key: ConceptKey | None, when: datetime | None) -> None:
        if key is None:
            return
        known = first.get(key.id)
        if known is None or (when is not None and (known[0] is None or when < known[0])):
            first[key.id] = (when, key)

    for condition in record.conditions:
        see(diagnosis_key(condition), condition.onset or condition.date)
    for request in record.medication_requests:
        if request.status not in INACTIVE_REQUEST:
            see(treatment_key(request), request.date)
    return first


def occurring_between(record: PatientRecord, start: datetime, end: datetime) -> set[str]:
    """Concepts with a Condition onset or a MedicationRequest in (start, end]."""
    seen: set[str] = set()
    for condition in record.conditions:
        when = condition.onset or condition.date
        key = diagnosis_key(condition)
        if key is not None and when is not None and start < when <= end:
            seen.add(key.id)
    for request in record.medication_requests:
        key = treatment_key(request)
        if key is not None and request.status not in INACTIVE_REQUEST and request.date is not None:
            if start < request.date <= end:
                seen.add(key.id)
    return seen


def remove_concepts(record: PatientRecord, concept_ids: Iterable[str]) -> PatientRecord:
    """The record without every resource of the given concepts, nor their mentions as reasons."""
    ids = set(concept_ids)
    if not ids:
        return record
    gone_refs = set()
    conditions = []
    for c in record.conditions:
        key = diagnosis_key(c)
        if key is not None and key.id in ids:
            gone_refs.add(c.reference)
        else:
            conditions.append(c)
    masked_codes = {i.split(":", 1)[1] for i in ids if i.startswith(DIAGNOSIS + ":")}
    requests = []
    for m in record.medication_requests:
        key = treatment_key(m)
        if key is not None and key.id in ids:
            continue
        requests.append(_without_reasons(m, masked_codes))

    def keep_reasons(facts):  # type: ignore[no-untyped-def]
        return tuple(_without_reasons(f, masked_codes) for f in facts)

    care_plans = tuple(
        dataclasses.replace(p, addresses=tuple(a for a in p.addresses if a not in gone_refs))
        if p.addresses
        else p
        for p in record.care_plans
    )
    return dataclasses.replace(
        record,
        conditions=tuple(conditions),
        medication_requests=tuple(requests),
        encounters=keep_reasons(record.encounters),
        procedures=keep_reasons(record.procedures),
        care_plans=care_plans,
    )


def _without_reasons(fact, masked_codes: set[str]):  # type: ignore[no-untyped-def]
    reasons = getattr(fact, "reasons", ())
    if not reasons or not masked_codes:
        return fact
    kept = tuple(r for r in reasons if not (set(r.codes()) & masked_codes))
    return fact if len(kept) == len(reasons) else dataclasses.replace(fact, reasons=kept)


@dataclass(frozen=True)
class Example:
    """One training or evaluation example: the input record as of T and a state per concept."""

    patient: str
    reference_time: datetime
    record: PatientRecord  # as of T, masked concepts removed
    states: dict[str, str]  # concept id -> POSITIVE_UNDOCUMENTED | POSITIVE_NEW | KNOWN | EXCLUDED
    concepts: dict[str, ConceptKey]  # every concept id named in `states`
    sex: str | None
    age: float | None

    def state(self, concept_id: str) -> str:
        return self.states.get(concept_id, NEGATIVE)


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


def make_example(
    record: PatientRecord, t: datetime | date, rng: random.Random | None, mask_rate: float = 0.5
) -> Example:
    """Build the example at T. With `rng` None nothing is masked (evaluation of question (b) alone)."""
    t = _utc(t)
    at_t = record.as_of(t)
    documented = documented_concepts(at_t)
    first = first_occurrences(record)
    horizon = t + YEAR
    states: dict[str, str] = {}
    concepts: dict[str, ConceptKey] = dict(documented)
    masked = []
    for cid in sorted(documented):
        if rng is not None and rng.random() < mask_rate:
            states[cid] = POSITIVE_UNDOCUMENTED
            masked.append(cid)
        else:
            states[cid] = KNOWN
    in_window = occurring_between(record, t, horizon)
    for cid, (when, key) in first.items():
        if cid in states or cid not in in_window:
            continue
        # first seen within the year: question (b); seen before T, not current at T, back within the
        # year: neither new nor absent, so not a question
        states[cid] = POSITIVE_NEW if when is not None and when > t else EXCLUDED
        concepts[cid] = key
    return Example(
        patient=record.reference,
        reference_time=t,
        record=remove_concepts(at_t, masked),
        states=states,
        concepts=concepts,
        sex=record.patient.sex,
        age=at_t.age,
    )


__all__ = [
    "EXCLUDED",
    "KNOWN",
    "NEGATIVE",
    "POSITIVE_NEW",
    "POSITIVE_UNDOCUMENTED",
    "Example",
    "documented_concepts",
    "make_example",
    "reference_times",
    "remove_concepts",
]
