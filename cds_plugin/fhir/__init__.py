"""FHIR in: bundles, prefetch and NDJSON to a typed PatientRecord with provenance. Knows nothing of HTTP."""

from cds_plugin.fhir.bundle import next_page_url
from cds_plugin.fhir.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH, DEFAULT_MAX_ENTRIES, Limits
from cds_plugin.fhir.linearize import (
    DEFAULT_MAX_FACTS,
    Linearization,
    Segment,
    linearize,
)
from cds_plugin.fhir.ndjson import read_ndjson
from cds_plugin.fhir.prefetch import read_prefetch
from cds_plugin.fhir.reader import read_record, read_records
from cds_plugin.fhir.record import (
    Allergy,
    CarePlan,
    Coding,
    Concept,
    Condition,
    Encounter,
    Fact,
    Immunization,
    MedicationRequest,
    Observation,
    Patient,
    PatientRecord,
    Procedure,
)
from cds_plugin.fhir.references import parse_reference

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_FACTS",
    "Allergy",
    "CarePlan",
    "Coding",
    "Concept",
    "Condition",
    "Encounter",
    "Fact",
    "Immunization",
    "Limits",
    "Linearization",
    "MedicationRequest",
    "Observation",
    "Patient",
    "PatientRecord",
    "Procedure",
    "Segment",
    "linearize",
    "next_page_url",
    "parse_reference",
    "read_ndjson",
    "read_prefetch",
    "read_record",
    "read_records",
]
