"""A small hand-made FHIR data set on disk, and the loopback FHIR server over it.

Patient p1 has most of the data (a Patient, Conditions, 14 Observations at known dates, three
MedicationRequests, an Encounter, a Procedure and an Immunization, spread over plain bundles, a
single-resource file and nested folders); patient 2 comes as a gzipped transaction bundle with
`urn:uuid:` references only, as generators write them.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cds_plugin.sandbox.fhir_server import FhirServer

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
COND_CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"

P2_UUID = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"
P2_ENCOUNTER_UUID = "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"
P2_OBS_UUID = "6ec0bd7f-11c0-43da-975e-2a8ad9ebae0b"

#: HbA1c results of p1, one per quarter: (id, effectiveDateTime, status)
A1C_DATES = [
    ("a1c-01", "2019-01-15", "final"),
    ("a1c-02", "2019-04-15", "final"),
    ("a1c-03", "2019-07-15", "final"),
    ("a1c-04", "2019-10-15", "final"),
    ("a1c-05", "2020-01-15", "final"),
    ("a1c-06", "2020-04-15", "amended"),
    ("a1c-07", "2020-07-15", "final"),
    ("a1c-08", "2020-10-15", "final"),
    ("a1c-09", "2021-01-15T09:30:00Z", "final"),
    ("a1c-10", "2021-04-15", "final"),
    ("a1c-11", "2021-07-15", "preliminary"),
    ("a1c-12", "2021-10-15", "final"),
]


def cc(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def condition(cid: str, patient: str, code: dict[str, Any], status: str, category: str, **dates: str) -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{patient}"},
        "code": code,
        "clinicalStatus": cc(COND_CLIN, status),
        "category": [cc(COND_CAT, category)],
        **dates,
    }


def observation(oid: str, patient: str, code: str, category: str, status: str = "final", **rest: Any) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "category": [cc(OBS_CAT, category)],
        "code": cc(LOINC, code),
        "subject": {"reference": f"Patient/{patient}"},
        **rest,
    }


def medication_request(mid: str, rxnorm: str, status: str, intent: str, authored: str) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": intent,
        "medicationCodeableConcept": cc(RXNORM, rxnorm),
        "subject": {"reference": "Patient/p1"},
        "authoredOn": authored,
    }


def bundle(kind: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}


def write_data(root: Path) -> Path:
    """Write the data set under `root` and return it."""
    p1 = {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "3"},
        "identifier": [{"system": "urn:example:mrn", "value": "MRN-0001"}],
        "gender": "female",
        "birthDate": "1960-05-17",
    }
    conditions = [
        condition(
            "c-diabetes",
            "p1",
            {"coding": [{"system": SNOMED, "code": "44054006"}, {"system": ICD10, "code": "E11.9"}]},
            "active",
            "problem-list-item",
            onsetDateTime="2015-03-10",
        ),
        # year precision on purpose: the date range of this one is all of 2018
        condition("c-htn", "p1", cc(SNOMED, "38341003"), "active", "problem-list-item", onsetDateTime="2018"),
        condition(
            "c-pharyngitis",
            "p1",
            cc(SNOMED, "195662009"),
            "resolved",
            "encounter-diagnosis",
            recordedDate="2021-11-02",
        ),
    ]
    meds = [
        medication_request("m-metformin", "860975", "active", "order", "2015-03-10"),
        medication_request("m-lisinopril", "314076", "stopped", "order", "2018-06-01"),
        medication_request("m-atorvastatin", "617312", "active", "plan", "2021-01-05"),
    ]
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2021-11-02T09:00:00Z", "end": "2021-11-02T09:30:00Z"},
    }
    (root / "patients").mkdir(parents=True)
    (root / "patients" / "p1.json").write_text(
        json.dumps(bundle("collection", [p1, *conditions, *meds, encounter])), encoding="utf-8"
    )

    labs = [
        observation(oid, "p1", "4548-4", "laboratory", status, effectiveDateTime=d)
        for oid, d, status in A1C_DATES
    ]
    labs.append(
        observation(
            "bp-1", "p1", "85354-9", "vital-signs", effectiveDateTime="2020-06-01T08:30:00+02:00"
        )  # 06:30 UTC
    )
    labs.append(observation("glucose-1", "p1", "2339-0", "laboratory", issued="2022-02-02T10:00:00Z"))
    (root / "observations" / "2019-2022").mkdir(parents=True)
    (root / "observations" / "2019-2022" / "labs.json").write_text(
        json.dumps(bundle("batch", labs)), encoding="utf-8"
    )

    # single resources, not bundles
    procedure = {
        "resourceType": "Procedure",
        "id": "pr1",
        "status": "completed",
        "code": cc(SNOMED, "73761001"),
        "subject": {"reference": "Patient/p1"},
        "performedPeriod": {"start": "2019-07-01T10:00:00Z", "end": "2019-07-01T11:00:00Z"},
    }
    immunization = {
        "resourceType": "Immunization",
        "id": "im1",
        "status": "completed",
        "vaccineCode": cc("http://hl7.org/fhir/sid/cvx", "140"),
        "patient": {"reference": "Patient/p1"},
        "occurrenceDateTime": "2020-10-01",
    }
    (root / "procedure.json").write_text(json.dumps(procedure), encoding="utf-8")
    (root / "immunization.json").write_text(json.dumps(immunization), encoding="utf-8")
    (root / "README.txt").write_text("not FHIR, must be skipped", encoding="utf-8")

    # patient 2: a gzipped transaction bundle, urn:uuid references, resources without ids
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{P2_UUID}",
                "resource": {"resourceType": "Patient", "gender": "male", "birthDate": "1975"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": f"urn:uuid:{P2_ENCOUNTER_UUID}",
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "subject": {"reference": f"urn:uuid:{P2_UUID}"},
                    "period": {"start": "2020-01-01T08:00:00Z"},
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
            {
                "fullUrl": "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
                "resource": {
                    "resourceType": "Condition",
                    "id": "c-p2-diabetes",
                    "subject": {"reference": f"urn:uuid:{P2_UUID}"},
                    "encounter": {"reference": f"urn:uuid:{P2_ENCOUNTER_UUID}"},
                    "code": cc(SNOMED, "44054006"),
                    "clinicalStatus": cc(COND_CLIN, "active"),
                    "category": [cc(COND_CAT, "problem-list-item")],
                    "onsetDateTime": "2019-05-05",
                },
                "request": {"method": "POST", "url": "Condition"},
            },
            {
                "fullUrl": f"urn:uuid:{P2_OBS_UUID}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": cc(LOINC, "4548-4"),
                    "category": [cc(OBS_CAT, "laboratory")],
                    "subject": {"reference": f"urn:uuid:{P2_UUID}"},
                    "encounter": {"reference": f"urn:uuid:{P2_ENCOUNTER_UUID}"},
                    "effectiveDateTime": "2020-01-01",
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {"request": {"method": "DELETE", "url": "Observation/old"}},
        ],
    }
    with gzip.open(root / "patient2.json.gz", "wt", encoding="utf-8") as fh:
        json.dump(transaction, fh)
    return root


@pytest.fixture(scope="session")
def fhir_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("fhir-data"))


@pytest.fixture(scope="module")
def fhir_server(fhir_data: Path) -> Iterator[FhirServer]:
    with FhirServer(fhir_data, page_size_default=50) as server:
        yield server


@pytest.fixture(scope="module")
def base(fhir_server: FhirServer) -> str:
    return fhir_server.base_url


@pytest.fixture(scope="session")
def facts() -> SimpleNamespace:
    """The data set's ids, for assertions (a fixture, so test modules need not import this conftest)."""
    return SimpleNamespace(
        a1c_ids=[oid for oid, _, _ in A1C_DATES],
        p2=P2_UUID,
        p2_encounter=P2_ENCOUNTER_UUID,
        p2_observation=P2_OBS_UUID,
    )
