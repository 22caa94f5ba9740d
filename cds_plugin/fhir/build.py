"""Found resources -> PatientRecord(s): patient grouping, reading each resource, ordering facts.

Shared by every input form (Bundle, prefetch, files, NDJSON): they differ only in how they find the
resources, which arrive here as `Entry`s.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from types import MappingProxyType

from cds_plugin.errors import FhirInputError
from cds_plugin.fhir import elements as el
from cds_plugin.fhir.as_of import as_of
from cds_plugin.fhir.bundle import Entry
from cds_plugin.fhir.elements import ElementError
from cds_plugin.fhir.limits import Limits, check_depth
from cds_plugin.fhir.record import FACT_FIELDS, Fact, Patient, PatientRecord
from cds_plugin.fhir.reference_time import reference_time
from cds_plugin.fhir.references import ID_RE, ResourceIndex
from cds_plugin.fhir.resources import (
    READERS,
    SUBJECT_ELEMENT,
    USED_TYPES,
    Context,
    latest_date,
    read_patient,
)
from cds_plugin.fhir.unread import (
    ANOTHER_PATIENT,
    DUPLICATE,
    NO_ID,
    REASONS,
    UNPARSEABLE,
    not_used_reason,
)
from cds_plugin.fhir.validation import VALIDATION_MODES, validate_full

_FIELD_OF_TYPE = {rtype: name for name, rtype in FACT_FIELDS}


@dataclass(frozen=True, slots=True)
class Options:
    """How to read: shared by every reader of one call. `reference_time` is T for every record the call
    reads (reference_time.py: `as_of` when given, which also cuts, else the time of the call)."""

    limits: Limits
    strict: bool = False
    validation: str = "fast"
    as_of: datetime | None = None
    reference_time: datetime = field(default_factory=reference_time)

    @classmethod
    def make(
        cls,
        *,
        as_of: datetime | date | None,
        strict: bool,
        validation: str,
        max_bytes: int,
        max_entries: int,
        max_depth: int,
    ) -> Options:
        if validation not in VALIDATION_MODES:
            raise ValueError(f"validation: expected one of {VALIDATION_MODES}")
        limits = Limits(max_bytes=max_bytes, max_entries=max_entries, max_depth=max_depth)
        at = reference_time(as_of)
        return cls(limits, bool(strict), validation, at if as_of is not None else None, at)


@dataclass(slots=True)
class Collected:
    """The resources of one input, the notes made while finding them, and the entries found to be no
    readable resource (counted by reason, unread.py)."""

    entries: list[Entry]
    notes: list[str]
    unread: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Tally:
    """Resources accounted to one record (or to every record of the input: `shared`)."""

    read: int = 0
    unread: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.read + sum(self.unread.values())


# --- entries -> records ------------------------------------------------------------------------------


def read_entries(
    collected: Collected, options: Options, *, shared: ResourceIndex | None = None
) -> list[PatientRecord]:
    """Build one record per Patient found among the entries (at least one is required)."""
    index = ResourceIndex(fallback=shared)
    notes = collected.notes
    patients: dict[str, tuple[Entry, list[str]]] = {}
    clinical: list[tuple[Entry, str]] = []
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    limits = options.limits
    # every resource of the input is accounted for (unread.py): to all records, or to its patient's
    shared = _Tally(unread=Counter(collected.unread))
    own: dict[str, _Tally] = {}
    for entry in collected.entries:
        resource = entry.resource
        rtype = resource["resourceType"]
        if rtype not in USED_TYPES:
            skipped[rtype] += 1
            shared.unread[not_used_reason(rtype)] += 1
            continue
        rid = resource.get("id")
        key = None
        if rid is not None:
            if type(rid) is not str or not ID_RE.fullmatch(rid):
                _resource_problem(
                    rtype, f"{rtype} at {entry.where}", "id", "not a valid FHIR id", entry, options, notes
                )
                shared.unread[UNPARSEABLE] += 1
                continue
            key = f"{rtype}/{rid}"
        full_url = entry.full_url
        name = index.add(resource, full_url, key)
        if name is None:
            _resource_problem(
                rtype, f"{rtype} at {entry.where}", "id", "missing (and no fullUrl)", entry, options, notes
            )
            shared.unread[NO_ID] += 1
            continue
        if name in seen:
            shared.unread[DUPLICATE] += 1
            continue  # the same resource again (overlapping prefetch queries, history versions): first wins
        seen.add(name)
        if options.validation == "full":  # pydantic recurses; our own reads have fixed depth
            check_depth(resource, limits, label=name, expression=entry.where)
        if rtype == "Patient":
            patients[name] = (entry, [])
            own[name] = _Tally(read=1)
        elif rtype != "Medication":
            clinical.append((entry, name))
        else:
            shared.read += 1  # looked up through medicationReference
    if not patients:
        raise FhirInputError("input: no Patient resource", expression="Patient")

    built: dict[str, Patient] = {}
    for name, (entry, _) in patients.items():
        try:
            if options.validation == "full":
                validate_full(entry.resource)
            built[name] = read_patient(entry.resource, name)
        except ElementError as exc:
            raise FhirInputError(
                f"{name}: {exc.path}: {exc.problem}", expression=f"{entry.where}.{exc.path}"
            ) from None

    facts: dict[str, dict[str, list[Fact]]] = {name: {} for name in patients}
    only = next(iter(patients)) if len(patients) == 1 else None
    conditional = 0
    for entry, name in clinical:
        resource = entry.resource
        rtype = resource["resourceType"]
        owner_notes = notes
        tally = shared
        try:
            subject_element = SUBJECT_ELEMENT[rtype]
            subject = el.reference(resource.get(subject_element), subject_element)
            owner = only
            if subject is not None:
                kind, target, target_name = index.resolve(subject, resource, want="Patient")
                if target is not None and target.get("resourceType") == "Patient" and target_name in patients:
                    owner = target_name
                elif kind == "conditional":
                    conditional += 1
                else:
                    owner = None
            if owner is None:
                notes.append(f"{name}: {subject_element}: not a patient in the input; skipped")
                shared.unread[ANOTHER_PATIENT] += 1
                continue
            owner_notes = patients[owner][1]
            tally = own[owner]
            if options.validation == "full":
                validate_full(resource)
            read = READERS[rtype](resource, name, Context(index, owner_notes))
        except ElementError as exc:
            message = f"{name}: {exc.path}: {exc.problem}"
            if options.strict:
                raise FhirInputError(message, expression=f"{entry.where}.{exc.path}") from None
            owner_notes.append(message + "; skipped")
            tally.unread[UNPARSEABLE] += 1
            continue
        facts[owner].setdefault(rtype, []).extend(read)
        tally.read += 1
    if conditional:
        notes.append(
            f"{conditional} conditional subject reference(s) kept unresolved (assumed the only patient)"
        )

    records = []
    frozen_skipped = MappingProxyType(dict(sorted(skipped.items())))
    for name, patient in built.items():
        by_type = facts[name]
        fields: dict[str, tuple[Fact, ...]] = {}
        until = None
        for rtype, items in by_type.items():
            items.sort(key=_fact_order)
            fields[_FIELD_OF_TYPE[rtype]] = tuple(items)
            for fact in items:
                latest = latest_date(fact)
                if latest is not None and (until is None or latest > until):
                    until = latest
        if patient.deceased_at is not None and (until is None or patient.deceased_at > until):
            until = patient.deceased_at
        unread = shared.unread + own[name].unread
        record = PatientRecord(
            patient=patient,
            reference_time=options.reference_time,
            issues=tuple(notes + patients[name][1]),
            skipped=frozen_skipped,
            resources=shared.total + own[name].total,
            unread=MappingProxyType({r: unread[r] for r in REASONS if unread[r]}),
            data_until=until,
            **fields,
        )
        if options.as_of is not None:
            record = as_of(record, options.as_of)
        records.append(record)
    return records


def _fact_order(fact: Fact) -> tuple:
    when = fact.date
    return (when is not None, when.timestamp() if when is not None else 0.0, fact.reference, fact.path)


def _resource_problem(
    rtype: str, label: str, path: str, problem: str, entry: Entry, options: Options, notes: list[str]
) -> None:
    message = f"{label}: {path}: {problem}"
    if rtype == "Patient" or options.strict:
        raise FhirInputError(message, expression=f"{entry.where}.{path}")
    notes.append(message + "; skipped")


def pick_record(records: list[PatientRecord], patient_id: str | None) -> PatientRecord:
    """The record of `patient_id` (an id or `Patient/id`), or the only record when no id is given."""
    if patient_id is not None:
        wanted = {patient_id, f"Patient/{patient_id}"}
        matches = [r for r in records if r.patient.id in wanted or r.patient.reference in wanted]
        if not matches:
            raise FhirInputError("input: no Patient with the requested id", expression="Patient.id")
        return matches[0]
    if len(records) != 1:
        raise FhirInputError(
            f"input: holds {len(records)} patients; pass patient_id or use read_records", expression="Patient"
        )
    return records[0]
