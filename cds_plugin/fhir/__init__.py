"""FHIR in: bundles, prefetch and NDJSON to a typed PatientRecord with provenance. Knows nothing of HTTP."""
