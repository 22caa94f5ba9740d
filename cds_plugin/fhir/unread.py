"""Accounting for every input resource: read into facts, or counted as unread with a reason.

Nothing is dropped silently. Each resource of an input (a Bundle entry, a prefetch value, a listed
resource; Bundles themselves are containers, not counted) ends as exactly one of:

- **read**: it became facts of the record, or it is the Patient, or a Medication (looked up through
  `medicationReference`);
- **unread**, with one reason. Three reasons mean the model lost data it should have had (*could not be
  read*): `another-patient` (its subject names a patient that is not in the input, or not this one),
  `unparseable` (an element the reader needs is malformed, or the entry is not a resource), `no-id`
  (neither an id nor a fullUrl to name it by). The others lose nothing the model reads: `not-clinical`
  (administrative types it never reads: Claim, Organization, Provenance...), `unsupported-type` (clinical
  types it does not read: DiagnosticReport, DocumentReference...), `duplicate` (the same resource again,
  read once), `after-cut` (dated after an `as_of` cut: not known yet at T).

`record.resources` is the total and `record.unread` the counts by reason, so
`resources - sum(unread.values())` were read. In a Bulk Data export each patient's record counts the
resources grouped to that patient; export-level problems stay in `issues`. Only the three data-loss
reasons are reported as "could not be read" on cards: a normal Synthea bundle full of Claims is not an
alarm.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cds_plugin.fhir.record import PatientRecord

ANOTHER_PATIENT = "another-patient"
UNPARSEABLE = "unparseable"
NO_ID = "no-id"
NOT_CLINICAL = "not-clinical"
UNSUPPORTED = "unsupported-type"
DUPLICATE = "duplicate"
AFTER_CUT = "after-cut"

#: Reasons meaning the model lost data: only these are said to have "could not be read".
LOST = (ANOTHER_PATIENT, UNPARSEABLE, NO_ID)
#: Every reason, in the order they are shown (also the bounded label values of the metric).
REASONS = (*LOST, UNSUPPORTED, NOT_CLINICAL, DUPLICATE, AFTER_CUT)

#: Words for people (cards, explanation pages, the sandbox).
REASON_WORDS = {
    ANOTHER_PATIENT: "names a patient not in the input",
    UNPARSEABLE: "malformed",
    NO_ID: "no id or fullUrl",
    UNSUPPORTED: "a clinical type the model does not read",
    NOT_CLINICAL: "not clinical: not used",
    DUPLICATE: "duplicate, read once",
    AFTER_CUT: "dated after the reference time",
}

#: Administrative and infrastructure types: never patient facts. Any other type the model does not read
#: counts as a clinical type it does not support.
NOT_CLINICAL_TYPES = frozenset(
    {
        # financial
        "Account",
        "ChargeItem",
        "ChargeItemDefinition",
        "Claim",
        "ClaimResponse",
        "Contract",
        "Coverage",
        "CoverageEligibilityRequest",
        "CoverageEligibilityResponse",
        "EnrollmentRequest",
        "EnrollmentResponse",
        "ExplanationOfBenefit",
        "InsurancePlan",
        "Invoice",
        "PaymentNotice",
        "PaymentReconciliation",
        # who and where
        "CareTeam",
        "Endpoint",
        "Group",
        "HealthcareService",
        "Location",
        "Organization",
        "OrganizationAffiliation",
        "Person",
        "Practitioner",
        "PractitionerRole",
        "RelatedPerson",
        # scheduling and logistics
        "Appointment",
        "AppointmentResponse",
        "Schedule",
        "Slot",
        "SupplyDelivery",
        "SupplyRequest",
        # records about records, definitions, messaging
        "AuditEvent",
        "Basic",
        "Binary",
        "CapabilityStatement",
        "CodeSystem",
        "Composition",
        "ConceptMap",
        "Consent",
        "DocumentManifest",
        "Library",
        "Linkage",
        "MessageHeader",
        "NamingSystem",
        "OperationOutcome",
        "Parameters",
        "PlanDefinition",
        "ActivityDefinition",
        "Provenance",
        "Questionnaire",
        "SearchParameter",
        "StructureDefinition",
        "Subscription",
        "ValueSet",
        "VerificationResult",
    }
)


def not_used_reason(resource_type: str) -> str:
    """Why a resource of a type the model does not read is unread: not clinical, or unsupported."""
    return NOT_CLINICAL if resource_type in NOT_CLINICAL_TYPES else UNSUPPORTED


def could_not_read(record: PatientRecord) -> int:
    """Resources that should have been facts and are not (the data-loss reasons)."""
    return sum(record.unread.get(reason, 0) for reason in LOST)


def readable(record: PatientRecord) -> int:
    """Resources the model reads or should have read: the `m` of "n of m could not be read"."""
    left_out = sum(record.unread.get(reason, 0) for reason in (NOT_CLINICAL, UNSUPPORTED, DUPLICATE))
    return record.resources - left_out


def clinical_facts(record: PatientRecord) -> int:
    """Facts other than the demographics."""
    return sum(1 for fact in record.facts() if fact.resource_type != "Patient")


def summary(record: PatientRecord) -> dict[str, object]:
    """Counts for logs, metrics and pages (no patient data: numbers and fixed reasons only)."""
    unread = {reason: record.unread[reason] for reason in REASONS if record.unread.get(reason)}
    return {
        "resources": record.resources,
        "read": record.resources - sum(unread.values()),
        "could_not_read": could_not_read(record),
        "clinical_facts": clinical_facts(record),
        "unread": unread,
    }


def could_not_read_sentence(record: PatientRecord) -> str | None:
    """`2 of 85 resources could not be read (names a patient not in the input: 2)`, or None."""
    lost = could_not_read(record)
    if not lost:
        return None
    reasons = "; ".join(
        f"{REASON_WORDS[reason]}: {record.unread[reason]}" for reason in LOST if record.unread.get(reason)
    )
    return f"{lost} of {readable(record)} resources could not be read ({reasons})"


def words(unread: Mapping[str, int]) -> list[tuple[str, str, int, bool]]:
    """(reason, words, count, lost?) for each reason with a count, in display order."""
    return [(r, REASON_WORDS[r], unread[r], r in LOST) for r in REASONS if unread.get(r)]
