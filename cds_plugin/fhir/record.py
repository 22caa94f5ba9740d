"""The typed patient record: one dated fact per clinical statement, each with its provenance.

Every fact carries `reference` (the resource as the input names it, `ResourceType/id`; the fullUrl for a
resource without an id), `path` (the element the fact was read from, e.g. `Observation.component[1]`)
and `date` (when it happened or was asserted; None when the input gives no date). Explanations and cards
point back to the EHR through these, so they are never synthesized.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Statuses meaning "no longer so"; `as_of` turns them into "unknown" when the data does not say when.
TERMINAL_CONDITION_STATUSES = frozenset({"inactive", "remission", "resolved"})
TERMINAL_REQUEST_STATUSES = frozenset({"completed", "stopped", "cancelled"})
TERMINAL_PLAN_STATUSES = frozenset({"completed", "revoked"})
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Coding:
    """One code of a CodeableConcept (the system URL is kept here, never shown to the model)."""

    system: str | None
    code: str | None
    display: str | None = None

    @property
    def token(self) -> str | None:
        """`system|code`, the FHIR token search form."""
        if self.code is None:
            return None
        return f"{self.system or ''}|{self.code}"


@dataclass(frozen=True, slots=True)
class Concept:
    """A CodeableConcept: its codings and text."""

    codings: tuple[Coding, ...] = ()
    text: str | None = None

    @property
    def display(self) -> str | None:
        """Human words for the concept: text, else the first coding's display, else its code."""
        if self.text:
            return self.text
        for coding in self.codings:
            if coding.display:
                return coding.display
        for coding in self.codings:
            if coding.code:
                return coding.code
        return None

    @property
    def primary(self) -> Coding | None:
        """The first coding with a code."""
        for coding in self.codings:
            if coding.code:
                return coding
        return None

    def has(self, system: str, code: str) -> bool:
        return any(c.system == system and c.code == code for c in self.codings)

    def codes(self, system: str | None = None) -> tuple[str, ...]:
        return tuple(c.code for c in self.codings if c.code and (system is None or c.system == system))


@dataclass(frozen=True, slots=True, kw_only=True)
class Fact:
    """Provenance shared by every fact."""

    reference: str
    path: str
    date: datetime | None

    @property
    def resource_type(self) -> str:
        """The type of the resource the fact came from (paths start with it)."""
        return self.path.split(".", 1)[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class Patient(Fact):
    """Demographics. `date` is the birth date (as a UTC datetime) when known."""

    id: str | None
    birth_date: date | None = None
    sex: str | None = None  # Patient.gender: male | female | other | unknown
    deceased: bool | None = False  # None: unknown at the as_of time
    deceased_at: datetime | None = None
    race: str | None = None  # US Core race extension: its first OMB category (display), else its text

    def is_deceased_at(self, when: datetime) -> bool:
        """Dead at `when`: `deceasedDateTime` at or before it, or `deceasedBoolean` true (unknown: no)."""
        if self.deceased_at is not None:
            return self.deceased_at <= when
        return self.deceased is True

    def age_at(self, when: datetime) -> float | None:
        """Age in years at `when` (fractional), None without a birth date or before birth."""
        if self.birth_date is None:
            return None
        days = (when.date() - self.birth_date).days
        if days < 0:
            return None
        return days / 365.2425


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition(Fact):
    """A problem or diagnosis. `date` = onset, else recorded date."""

    code: Concept | None
    clinical_status: str | None = None
    verification_status: str | None = None
    categories: tuple[str, ...] = ()
    onset: datetime | None = None
    abatement: datetime | None = None
    abated: bool = False  # abatement[x] present (possibly without a date)
    recorded: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation(Fact):
    """One measured or coded value. A panel's components are separate Observations (path
    `Observation.component[i]`, `panel` = the panel's code). `date` = effective time, else issued."""

    code: Concept | None
    status: str | None = None
    categories: tuple[str, ...] = ()
    value: float | None = None
    unit: str | None = None
    comparator: str | None = None
    value_concept: Concept | None = None
    value_text: str | None = None
    absent_reason: str | None = None
    interpretation: tuple[str, ...] = ()
    ref_low: float | None = None
    ref_high: float | None = None
    panel: Concept | None = None
    issued: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MedicationRequest(Fact):
    """A prescription or order. `code` comes from medicationCodeableConcept or the referenced Medication
    (`medication` then names it: `Medication/id`, or `#id` for a contained one). `date` = authoredOn."""

    code: Concept | None
    medication: str | None = None
    status: str | None = None
    intent: str | None = None
    end: datetime | None = None  # dispenseRequest.validityPeriod.end or the latest dosage boundsPeriod.end
    reasons: tuple[Concept, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Allergy(Fact):
    """An AllergyIntolerance. `date` = onset, else recorded date."""

    code: Concept | None
    clinical_status: str | None = None
    verification_status: str | None = None
    type: str | None = None
    categories: tuple[str, ...] = ()
    criticality: str | None = None
    reactions: tuple[Concept, ...] = ()
    recorded: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Procedure(Fact):
    """`date` = performed start."""

    code: Concept | None
    status: str | None = None
    end: datetime | None = None
    reasons: tuple[Concept, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Immunization(Fact):
    """`date` = occurrence."""

    code: Concept | None
    status: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Encounter(Fact):
    """`date` = period start. `class_code` is the v3 ActCode (AMB, EMER, IMP, ...)."""

    class_code: str | None
    types: tuple[Concept, ...] = ()
    status: str | None = None
    end: datetime | None = None
    reasons: tuple[Concept, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CarePlan(Fact):
    """`date` = period start, else created. `addresses` are the references as the input names them."""

    categories: tuple[Concept, ...] = ()
    status: str | None = None
    intent: str | None = None
    end: datetime | None = None
    activities: tuple[Concept, ...] = ()
    addresses: tuple[str, ...] = ()


FACT_FIELDS: tuple[tuple[str, str], ...] = (
    ("conditions", "Condition"),
    ("observations", "Observation"),
    ("medication_requests", "MedicationRequest"),
    ("allergies", "AllergyIntolerance"),
    ("procedures", "Procedure"),
    ("immunizations", "Immunization"),
    ("encounters", "Encounter"),
    ("care_plans", "CarePlan"),
)
"""PatientRecord field -> FHIR resource type, in the order the linearization uses."""


@dataclass(frozen=True)
class PatientRecord:
    """Everything the model may know about one patient, at `reference_time`.

    Fact tuples are sorted by date (undated first), then reference and path, so a record is reproducible.
    `issues` lists what was skipped or left unresolved, naming resources and elements, never values.
    `resources` counts the input resources and `unread` those that did not become facts, by reason
    (unread.py: nothing is dropped silently); `skipped` counts resources of types the model does not
    use, by type. `data_until` is the latest date found anywhere in the input (kept through `as_of`):
    before it, a terminal status without a date is unknown.
    """

    patient: Patient
    reference_time: datetime
    conditions: tuple[Condition, ...] = ()
    observations: tuple[Observation, ...] = ()
    medication_requests: tuple[MedicationRequest, ...] = ()
    allergies: tuple[Allergy, ...] = ()
    procedures: tuple[Procedure, ...] = ()
    immunizations: tuple[Immunization, ...] = ()
    encounters: tuple[Encounter, ...] = ()
    care_plans: tuple[CarePlan, ...] = ()
    issues: tuple[str, ...] = ()
    skipped: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    resources: int = 0
    unread: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    as_of_time: datetime | None = None
    data_until: datetime | None = None

    @property
    def reference(self) -> str:
        return self.patient.reference

    @property
    def age(self) -> float | None:
        """Age in years at the reference time."""
        return self.patient.age_at(self.reference_time)

    @property
    def deceased(self) -> bool:
        """The patient had died at the reference time (no service offers considerations then)."""
        return self.patient.is_deceased_at(self.reference_time)

    def facts(self) -> Iterator[Fact]:
        """The patient, then every fact, in field order."""
        yield self.patient
        for name, _ in FACT_FIELDS:
            yield from getattr(self, name)

    def references(self) -> set[str]:
        """Every resource some fact came from (including referenced Medications)."""
        refs = {fact.reference for fact in self.facts()}
        refs.update(m.medication for m in self.medication_requests if m.medication and m.medication[0] != "#")
        return refs
