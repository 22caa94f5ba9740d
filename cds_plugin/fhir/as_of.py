"""Cutting a record at a reference time, so training and evaluation see only what was known then.

`as_of(record, when)` is the one entry point (`read_record(..., as_of=when)` calls it). This module
depends on cds_plugin.fhir.record, never the reverse.

Rules (times compared in UTC; a date without time is that whole day, see times.py):

- A fact dated after the cut is dropped. So is one recorded or issued after it (a condition entered
  later with an earlier onset was not known at the cut). Undated facts are kept.
- What ended after the cut had not ended then: a condition abated later is `active` (abatement cleared),
  an encounter or procedure still running is `in-progress`, a care plan or medication request whose end
  lies later is `active`.
- A terminal status the data gives no time for (a `resolved` condition without abatement date, a
  `stopped` prescription without an end, a `completed` care plan without period end) is `unknown` when
  the input has data after the cut; when the cut is after all the data, the recorded status stands.
- The patient: a death after the cut is cleared; `deceased: true` without a date becomes unknown (None).
- A resource whose facts were all dropped is counted in `record.unread` as `after-cut` (unread.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import date, datetime
from types import MappingProxyType

from cds_plugin.fhir.record import (
    TERMINAL_CONDITION_STATUSES,
    TERMINAL_PLAN_STATUSES,
    TERMINAL_REQUEST_STATUSES,
    UNKNOWN,
    Allergy,
    CarePlan,
    Condition,
    Encounter,
    Fact,
    MedicationRequest,
    Observation,
    Patient,
    PatientRecord,
    Procedure,
)
from cds_plugin.fhir.times import to_cut
from cds_plugin.fhir.unread import AFTER_CUT

_replace = dataclasses.replace


def as_of(record: PatientRecord, when: datetime | date) -> PatientRecord:
    """The record as it stood at `when`: later facts dropped, statuses read as of then (rules above)."""
    cut = to_cut(when)
    if record.as_of_time is not None and record.as_of_time < cut:
        cut = record.as_of_time  # a record already cut earlier knows nothing later
    # Before the last date of the input, a status without a date may have been set after the cut.
    later_data = record.data_until is not None and record.data_until > cut
    cut_record = _replace(
        record,
        patient=_patient(record.patient, cut, later_data),
        conditions=_keep(record.conditions, cut, later_data, _condition),
        observations=_keep(record.observations, cut, later_data, _observation),
        medication_requests=_keep(record.medication_requests, cut, later_data, _medication_request),
        allergies=_keep(record.allergies, cut, later_data, _allergy),
        procedures=_keep(record.procedures, cut, later_data, _procedure),
        immunizations=_keep(record.immunizations, cut, later_data, _plain),
        encounters=_keep(record.encounters, cut, later_data, _encounter),
        care_plans=_keep(record.care_plans, cut, later_data, _care_plan),
        reference_time=cut,
        as_of_time=cut,
    )
    # resources whose facts all lie after the cut are accounted for (unread.py), not silently gone
    dropped = len(_clinical_references(record) - _clinical_references(cut_record))
    if dropped:
        unread = {**record.unread, AFTER_CUT: record.unread.get(AFTER_CUT, 0) + dropped}
        cut_record = _replace(cut_record, unread=MappingProxyType(unread))
    return cut_record


def _clinical_references(record: PatientRecord) -> set[str]:
    return {fact.reference for fact in record.facts() if fact.resource_type != "Patient"}


def _keep(facts: tuple, cut: datetime, later_data: bool, adjust: Callable) -> tuple:
    out = []
    for fact in facts:
        if fact.date is not None and fact.date > cut:
            continue
        adjusted = adjust(fact, cut, later_data)
        if adjusted is not None:
            out.append(adjusted)
    return tuple(out)


def _plain(fact: Fact, cut: datetime, later_data: bool) -> Fact:
    return fact


def _patient(patient: Patient, cut: datetime, later_data: bool) -> Patient:
    if patient.deceased_at is not None:
        if patient.deceased_at > cut:
            return _replace(patient, deceased=False, deceased_at=None)
        return patient
    if patient.deceased and later_data:
        return _replace(patient, deceased=None)
    return patient


def _condition(fact: Condition, cut: datetime, later_data: bool) -> Condition | None:
    if fact.recorded is not None and fact.recorded > cut:
        return None
    if fact.abatement is not None and fact.abatement > cut:
        status = fact.clinical_status
        if status is None or status in TERMINAL_CONDITION_STATUSES or status == UNKNOWN:
            status = "active"
        return _replace(fact, abatement=None, abated=False, clinical_status=status)
    if fact.abatement is None and later_data and fact.clinical_status in TERMINAL_CONDITION_STATUSES:
        return _replace(fact, clinical_status=UNKNOWN)
    return fact


def _observation(fact: Observation, cut: datetime, later_data: bool) -> Observation | None:
    if fact.issued is not None and fact.issued > cut:
        return None
    return fact


def _medication_request(fact: MedicationRequest, cut: datetime, later_data: bool) -> MedicationRequest:
    if fact.end is not None and fact.end > cut:
        status = "active" if fact.status in TERMINAL_REQUEST_STATUSES else fact.status
        return _replace(fact, end=None, status=status)
    if fact.end is None and later_data and fact.status in TERMINAL_REQUEST_STATUSES:
        return _replace(fact, status=UNKNOWN)
    return fact


def _allergy(fact: Allergy, cut: datetime, later_data: bool) -> Allergy | None:
    if fact.recorded is not None and fact.recorded > cut:
        return None
    if later_data and fact.clinical_status in ("inactive", "resolved"):
        return _replace(fact, clinical_status=UNKNOWN)
    return fact


def _procedure(fact: Procedure, cut: datetime, later_data: bool) -> Procedure:
    if fact.end is not None and fact.end > cut:
        return _replace(fact, end=None, status="in-progress")
    return fact


def _encounter(fact: Encounter, cut: datetime, later_data: bool) -> Encounter:
    if fact.end is not None and fact.end > cut:
        return _replace(fact, end=None, status="in-progress")
    return fact


def _care_plan(fact: CarePlan, cut: datetime, later_data: bool) -> CarePlan:
    if fact.end is not None and fact.end > cut:
        status = "active" if fact.status in TERMINAL_PLAN_STATUSES else fact.status
        return _replace(fact, end=None, status=status)
    if fact.end is None and later_data and fact.status in TERMINAL_PLAN_STATUSES:
        return _replace(fact, status=UNKNOWN)
    return fact
